"""Evaluate ME-GraphAU checkpoints on a test fold: per-AU F1 and accuracy (SPEC §1).

    python test.py --dataset BP4D --resume MEFARG_resnet50_BP4D_fold1.pth --fold 1
    python test.py --dataset BP4D --resume 'MEFARG_resnet50_BP4D_fold{fold}.pth' --fold all

The checkpoint decides the stage and --arc (model.infer_config); a --arc given on the command
line that disagrees with the file gives load_checkpoint's error. --fold all tests folds 1..N
({fold} in --resume is replaced by each fold number) and prints the per-AU table averaged over
the folds, as the papers report. A checkpoint whose saved fold differs from the tested fold
gets a warning (its test subjects were training data). Outputs in
results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/: results.json, results.csv and test.log.
Under torchrun each rank tests a share of the images; every image counts exactly once.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np

import conf
import train_stage1
import utils
from utils import log


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ME-GraphAU testing", parents=[conf.get_conf_parser()])
    parser.add_argument("--stage", default=None, type=int, choices=[1, 2],
                        help="model stage (default: read from the checkpoint)")
    parser.add_argument("--threshold", default=0.5, type=float, help="occurrence threshold on p")
    # the checkpoint decides the backbone unless one is given explicitly
    parser.set_defaults(arc=None)
    return parser


def checkpoint_for_fold(pattern: str, fold: int) -> str:
    return pattern.replace("{fold}", str(fold))


def _fold_in_name(path: str):
    match = re.search(r"fold(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def build_model_for_checkpoint(args, path: str):
    """Build the model the checkpoint describes and load it strictly."""
    from model import build_model, infer_config, load_checkpoint, read_checkpoint

    state_dict, obj = read_checkpoint(path)
    found = infer_config(state_dict)
    saved_cfg = obj.get("model_config") or {}
    stage = getattr(args, "stage", None) or found["stage"]
    arc = args.arc or found["arc"] or saved_cfg.get("arc")
    if arc is None:
        raise SystemExit(f"cannot tell the backbone of {path}; pass --arc")
    if found["num_classes"] is not None and found["num_classes"] != args.num_classes:
        raise SystemExit(f"{path} predicts {found['num_classes']} AUs but --dataset {args.dataset_name} "
                         f"has {args.num_classes}: test it on the dataset it was trained on")
    variant = found["variant"] or args.dataset_config.get("variant", "megraphau")
    model = build_model(stage, arc, args.num_classes, args.neighbor_num,
                        saved_cfg.get("metric", args.metric), pretrained=False, variant=variant)
    info = load_checkpoint(model, path)  # a disagreeing --arc/--stage raises here, naming the keys
    return model, info, arc, stage


def evaluate_checkpoint(args, fold: int, path: str, out_dir: Path | None = None) -> dict:
    """Test one checkpoint on one fold; returns the fold's result dict (percentages)."""
    model, info, arc, stage = build_model_for_checkpoint(args, path)
    saved_fold = info["checkpoint"].get("fold")
    if saved_fold is None:
        saved_fold = _fold_in_name(path)
    if saved_fold is not None and int(saved_fold) != int(fold):
        warnings.warn(f"{path} was trained on fold {saved_fold} but is tested on fold {fold}: the "
                      f"test subjects of fold {fold} were training data for it, so the numbers are wrong")
    model.to(args.device)
    datasets = train_stage1.build_datasets(args, stage=1, splits=("test",), fold=fold)
    test_ds = datasets["test"]
    loader = train_stage1.build_eval_loader(test_ds, args)
    probs = utils.predict(model, loader, args.device, args.amp,
                          progress=not args.no_progress, desc=f"test fold {fold}")
    threshold = getattr(args, "threshold", 0.5)
    metrics = utils.compute_au_metrics(probs, test_ds.labels, threshold=threshold)
    au_names = list(test_ds.au_names)
    log.info("fold %d, %s (stage %d, --arc %s), %d images\n%s", fold, path, stage, arc, len(test_ds),
             utils.format_au_table(au_names, metrics["f1"], metrics["acc"]))
    return {"dataset": args.dataset_name, "fold": int(fold), "arc": arc, "stage": stage, "checkpoint": str(path),
            "au_names": au_names, "f1": [round(100 * float(v), 4) for v in metrics["f1"]],
            "acc": [round(100 * float(v), 4) for v in metrics["acc"]],
            "mean_f1": round(100 * metrics["mean_f1"], 4), "mean_acc": round(100 * metrics["mean_acc"], 4),
            "num_images": len(test_ds), "threshold": threshold}


def average_folds(results: list[dict]) -> dict:
    """The papers' protocol: per-AU F1/accuracy averaged over the folds."""
    f1 = np.mean([r["f1"] for r in results], axis=0)
    acc = np.mean([r["acc"] for r in results], axis=0)
    first = results[0]
    return {"dataset": first["dataset"], "fold": "all", "arc": first["arc"], "stage": first["stage"],
            "checkpoint": [r["checkpoint"] for r in results], "au_names": first["au_names"],
            "f1": [round(float(v), 4) for v in f1], "acc": [round(float(v), 4) for v in acc],
            "mean_f1": round(float(f1.mean()), 4), "mean_acc": round(float(acc.mean()), 4),
            "num_images": int(sum(r["num_images"] for r in results)), "threshold": first["threshold"],
            "per_fold": results}


def write_results(summary: dict, rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    names = summary["au_names"]
    fields = ["fold", "checkpoint", "num_images", "mean_f1", "mean_acc"] + \
        [f"f1_{n}" for n in names] + [f"acc_{n}" for n in names]
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            row = {k: r[k] for k in ("fold", "num_images", "mean_f1", "mean_acc")}
            row["checkpoint"] = r["checkpoint"] if isinstance(r["checkpoint"], str) else ";".join(r["checkpoint"])
            row.update({f"f1_{n}": v for n, v in zip(names, r["f1"])})
            row.update({f"acc_{n}": v for n, v in zip(names, r["acc"])})
            writer.writerow(row)


def run_test(args) -> dict:
    if not args.resume:
        raise SystemExit("test.py needs --resume CHECKPOINT (use {fold} in the name with --fold all)")
    out_dir = conf.run_dir(args)
    if utils.is_main_process():
        conf.write_args(args, out_dir)
    train_stage1.setup_logging(out_dir, "test.log")
    train_stage1.check_amp(args)
    folds = list(range(1, args.N_fold + 1)) if args.fold == "all" else [int(args.fold)]
    if len(folds) > 1 and "{fold}" not in args.resume:
        warnings.warn(f"--fold all with one checkpoint ({args.resume}) tests it on every fold, "
                      f"including the folds it was trained on; use a name with {{fold}}")
    results = [evaluate_checkpoint(args, k, checkpoint_for_fold(args.resume, k), out_dir) for k in folds]
    summary = results[0] if len(results) == 1 else average_folds(results)
    if len(results) > 1:
        log.info("mean over folds %s\n%s", folds,
                 utils.format_au_table(summary["au_names"], np.array(summary["f1"]) / 100,
                                       np.array(summary["acc"]) / 100))
    if utils.is_main_process():
        write_results(summary, results + ([summary] if len(results) > 1 else []), out_dir)
        log.info("results written to %s", out_dir / "results.json")
    summary["run_dir"] = str(out_dir)
    return summary


def main(args) -> dict:
    utils.init_distributed_mode(args)
    try:
        return run_test(args)
    finally:
        utils.cleanup_distributed()


if __name__ == "__main__":
    utils.exit_on_user_error(main, conf.parse_args(get_args_parser(), section="test"))
