"""The data of a run: the synthetic set generated as an explicit step (prepare_synth), the list
files a run reads (for its provenance record), the fold's datasets and their loaders.

Building a dataset only reads: a SYNTH run's entry (training.train_in_folder,
evaluation.test_checkpoints) calls prepare_synth first, so generation is never a side effect.
Real data sets are prepared by the tools (data/README.md)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from megraphau import (
    synth,  # looked up at call time: tests stand in for the generator
    utils,
)
from megraphau.data.dataset import AUDataset
from megraphau.data.lists import list_file
from megraphau.utils import log


def prepare_synth(args, folds) -> None:
    """Generate the synthetic set when the run names it and the lists of `folds` are missing
    (rank 0 does, the others wait). Nothing for any other data set."""
    cfg = args.dataset_config
    if not cfg.get("synthetic"):
        return
    list_dir = Path(args.dataset_path) / "list"
    needed = [list_file(list_dir, cfg["name"], "label", k, split) for k in folds for split in ("train", "test")]

    def generate_on_main():
        if utils.is_main_process() and not all(p.is_file() for p in needed):
            log.info("generating the synthetic data set %s in %s (once)", cfg["name"], args.dataset_path)
            synth.ensure_synthetic_dataset(args.dataset_path)

    utils.agree_on_errors(generate_on_main)  # the others wait, and stop with rank 0 if it cannot


def list_files_of_run(args, splits=("train", "test"), folds=None, stage: int = 1) -> dict:
    """{label: path} of the list files a run of `args` reads (for the provenance record)."""
    name, list_dir = args.dataset_config["name"], Path(args.dataset_path) / "list"
    folds = [args.fold] if folds is None else folds
    files = {}
    for k in folds:
        for split in splits:
            for kind in ("img_path", "label"):
                files[f"{split}_{kind}_fold{k}"] = list_file(list_dir, name, kind, k, split)
        if "train" in splits:
            files[f"weight_fold{k}"] = list_file(list_dir, name, "weight", k)
            if stage == 2:
                files[f"train_AU_relation_fold{k}"] = list_file(list_dir, name, "AU_relation", k, "train")
    return {label: path for label, path in files.items() if path.is_file()}


def build_datasets(args, stage: int, splits=("train", "test"), fold=None) -> dict:
    """AUDataset objects of the fold (the test split always stage 1: images and labels). Reads
    only: a missing synthetic set is prepare_synth's to generate."""
    fold = args.fold if fold is None else fold
    return {split: AUDataset(args.dataset_config, fold, split, stage=stage if split == "train" else 1,
                             crop_size=args.crop_size, dataset_path=args.dataset_path)
            for split in splits}


def build_train_loader(dataset, args) -> DataLoader:
    """Shuffled loader over this rank's share. Before each epoch reseed loader.generator and set
    loader.sampler's epoch (training.train_in_folder does) for the same order with or without an
    interruption."""
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True,
                                 seed=args.seed, drop_last=False)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                      pin_memory=args.device.type == "cuda", drop_last=False, generator=torch.Generator())


def build_eval_loader(dataset, args) -> DataLoader:
    """Test-fold loader; under DDP each rank takes a strided share (see utils.gather_by_index)."""
    sampler = None
    if utils.is_dist_initialized():
        sampler = DistributedSampler(dataset, num_replicas=utils.get_world_size(), rank=utils.get_rank(),
                                     shuffle=False, drop_last=False)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=args.device.type == "cuda")
