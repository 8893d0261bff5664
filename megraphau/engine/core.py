"""The engine behind train_stage1.py, train_stage2.py and test.py (ME-GraphAU, Luo et al.,
IJCAI-ECAI 2022): data, the training recipe, the training loop with resume, NaN stop and
checkpoints, and evaluation.

A training run (`run_training`) follows the paper's recipe: the fold's class weights in the
weighted asymmetric loss (losses.py), plus --lam x the edge loss in stage 2; AdamW (betas
0.9/0.999, --optimizer-eps, weight decay on all parameters); a cosine learning rate set before
every step; an evaluation on the test fold every --eval-every epochs. Outputs go to the run
folder results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/: train.log, args.yaml, metrics.csv,
curves.png, last.pth (the training state, resumable with --resume-training), best.pth and the
release's cur_model_fold{k}.pth / epoch{E}_model_fold{k}.pth.

Testing (`test_checkpoints`, used by test.py and by --evaluate) evaluates one checkpoint per fold
with `evaluate_checkpoint`, averages the folds as the papers do (metrics.average_folds) and
writes results.json / results.csv and the figures beside them (f1_bars, pr_curves_fold{k},
cooccurrence_fold{k}: PNG + CSV; see fold_figures). Under torchrun every rank trains / tests its
share; every test image counts exactly once (utils.gather_by_index; a stage-2 model's pair
probabilities are summed over the ranks, all_reduce_pair_meter).

Every run claims its folder first (run_folder.py: a lock, and no new run replaces an earlier
run's files without --overwrite). The command-line entries (train_cli, test_cli) turn user errors
into one line and exit code 2 (utils.exit_on_user_error), a NaN loss into 3 and Ctrl-C into 130
with the command that continues the run; under torchrun the set-up's errors stop every rank
together (utils.agree_on_errors).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from megraphau import conf, provenance, utils
from megraphau.engine import run_folder
from megraphau.engine.losses import WeightedAsymmetricLoss, edge_loss
from megraphau.engine.metrics import average_folds, compute_au_metrics, format_au_table
from megraphau.utils import log


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops, the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------
def setup_logging(folder: Path | None, filename: str) -> None:
    """Log to stdout and folder/filename on rank 0; only warnings elsewhere."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    main = utils.is_main_process()
    log.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if main and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(folder / filename)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    # the model package logs stage-1 -> stage-2 loading; show it in the same places
    model_log = logging.getLogger("megraphau.model")
    model_log.handlers = list(log.handlers)
    model_log.setLevel(log.level)
    model_log.propagate = False


def check_amp(args) -> None:
    if args.amp != "none" and args.device.type != "cuda":
        warnings.warn(f"--amp {args.amp} applies to CUDA only; running in float32 on {args.device}", stacklevel=2)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def prepare_data(args, folds) -> None:
    """Generate the synthetic set when the run names it and its lists are missing (rank 0 does,
    the others wait). Real data sets are prepared by the tools (data/README.md)."""
    from megraphau.data.lists import list_file

    cfg = args.dataset_config
    if not cfg.get("synthetic"):
        return
    list_dir = Path(args.dataset_path) / "list"
    needed = [list_file(list_dir, cfg["name"], "label", k, split) for k in folds for split in ("train", "test")]

    def generate_on_main():
        if utils.is_main_process() and not all(p.is_file() for p in needed):
            from megraphau.synth import ensure_synthetic_dataset

            log.info("generating the synthetic data set %s in %s (once)", cfg["name"], args.dataset_path)
            ensure_synthetic_dataset(args.dataset_path)

    utils.agree_on_errors(generate_on_main)  # the others wait, and stop with rank 0 if it cannot


def list_files_of_run(args, splits=("train", "test"), folds=None, stage: int = 1) -> dict:
    """{label: path} of the list files a run of `args` reads (for the provenance record)."""
    from megraphau.data.lists import list_file

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
    """AUDataset objects of the fold (the test split always stage 1: images and labels)."""
    from megraphau.data.dataset import AUDataset

    fold = args.fold if fold is None else fold
    prepare_data(args, [fold])
    return {split: AUDataset(args.dataset_config, fold, split, stage=stage if split == "train" else 1,
                             crop_size=args.crop_size, dataset_path=args.dataset_path)
            for split in splits}


def build_train_loader(dataset, args) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    """Shuffled loader over this rank's share; reseed the generator and set the sampler's epoch
    before each epoch (run_training does) for the same order with or without interruption."""
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True,
                                 seed=args.seed, drop_last=False)
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=args.device.type == "cuda", drop_last=False, generator=generator)
    return loader, sampler, generator


def build_eval_loader(dataset, args) -> DataLoader:
    """Test-fold loader; under DDP each rank takes a strided share (see utils.gather_by_index)."""
    sampler = None
    if utils.is_dist_initialized():
        sampler = DistributedSampler(dataset, num_replicas=utils.get_world_size(), rank=utils.get_rank(),
                                     shuffle=False, drop_last=False)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=args.device.type == "cuda")


# --------------------------------------------------------------------------------------------
# models and the facts a checkpoint carries
# --------------------------------------------------------------------------------------------
def fold_of_file_name(path: str | Path) -> int | None:
    """The fold a release-style file name states (MEFARG_resnet50_BP4D_fold2.pth -> 2)."""
    match = re.search(r"fold(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def warn_if_other_fold(path, saved_fold, fold: int, testing: bool) -> None:
    """A checkpoint of fold k used on another fold mixes training and test subjects."""
    if saved_fold is None or int(saved_fold) == int(fold):
        return
    if testing:
        warnings.warn(f"{path} was trained on fold {saved_fold} but is tested on fold {fold}: the "
                      f"test subjects of fold {fold} were training data for it, so the numbers are wrong", stacklevel=2)
    else:
        warnings.warn(f"{path} was trained on fold {saved_fold} but this run trains fold {fold}: its "
                      f"test subjects were training data there", stacklevel=2)


def pretrained_arg(args):
    """What build_model's `pretrained` gets: no ImageNet file when a checkpoint follows."""
    if args.pretrained is not None and args.pretrained.lower() == "none":
        return False
    if args.resume or args.resume_training:
        return False
    return args.pretrained


def dataset_reference(args) -> str:
    """How a checkpoint names its dataset config: a built-in name, or the .yaml's absolute path."""
    from megraphau.data.dataset import CONFIG_DIR

    path = Path(args.dataset_config["config_path"]).resolve()
    return path.stem if path.parent == CONFIG_DIR.resolve() else str(path)


def run_facts(args, model) -> dict:
    """The facts every checkpoint of a run carries (model.checkpoint_facts reads them back):
    the model's configuration, the dataset, its AU names and descriptions, crop preset and
    size, and the fold."""
    from megraphau.model import model_config_dict

    cfg = args.dataset_config
    return {**model_config_dict(model), "dataset": args.dataset_name, "dataset_config": dataset_reference(args),
            "au_names": list(cfg["au_names"]), "au_descriptions": cfg.get("au_descriptions"),
            "crop_preset": cfg.get("crop_preset"), "crop_size": int(args.crop_size), "fold": int(args.fold)}


def build_training_model(args, stage: int):
    """The model a training run starts from: ImageNet backbone, or --resume (a stage-1 file
    initialises stage 2: shared keys load, the graph head starts fresh)."""
    from megraphau.model import build_model, load_model

    variant = args.dataset_config.get("variant", "megraphau")  # OpenGraphAU: 41 AUs
    if args.resume and not args.resume_training:
        loaded = load_model(args.resume, arc=args.arc, stage=stage, num_classes=args.num_classes,
                            variant=variant, neighbor_num=args.neighbor_num, metric=args.metric,
                            stage1_into_stage2=True)
        warn_if_other_fold(args.resume, loaded.facts["fold"], args.fold, testing=False)
        log.info("initialised from %s", args.resume)
        return loaded.model
    if stage == 2 and not args.resume_training:
        warnings.warn("stage 2 without --resume: the paper starts stage 2 from a stage-1 checkpoint", stacklevel=2)
    return build_model(stage, args.arc, args.num_classes, args.neighbor_num, args.metric,
                       pretrained=pretrained_arg(args), variant=variant)


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------
def cosine_lr(step: int, total_steps: int, lr0: float) -> float:
    """lr0 * (1 + cos(pi * t / T)) / 2: the release's per-step cosine schedule (no warm-up)."""
    if total_steps <= 0:
        return lr0
    return lr0 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0


def build_optimizer(args, model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.999),
                             eps=args.optimizer_eps, weight_decay=args.weight_decay)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch, rank): data order, augmentation and any
    model randomness are then the same whether or not a run was interrupted before it."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**31


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a run stands after `epoch` epochs: what last.pth stores and --resume-training restores."""
    epoch: int = 0
    step: int = 0  # global optimisation step (drives the cosine schedule)
    best_f1: float = -1.0
    history: list = field(default_factory=list)  # one row per epoch (metrics.csv)


def resume_training_state(args, model, optimizer, scaler) -> TrainState:
    """Model, optimizer, scaler and RNG from args.resume_training (a last.pth)."""
    from megraphau.model import load_checkpoint, read_checkpoint

    _, ckpt = read_checkpoint(args.resume_training)
    missing = [k for k in ("epoch", "step", "state_dict", "optimizer") if k not in ckpt]
    if missing:
        finished = "history" in ckpt and "state_dict" in ckpt
        raise utils.UserError(
            f"{args.resume_training} holds no training state (missing {missing}): "
            + ("it is a finished run's model file (a run that completes keeps only the model); "
               if finished else "it is not a last.pth of this project; ")
            + "to train further start from its weights with --resume")
    load_checkpoint(model, args.resume_training)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt.get("best_f1", -1.0)),
                       list(ckpt.get("history", [])))
    if ckpt.get("rng"):
        utils.restore_rng_state(ckpt["rng"])
    saved = ckpt.get("args", {})
    for key in ("epochs", "batch_size", "learning_rate", "fold", "dataset_name", "world_size"):
        if key in saved and saved[key] != getattr(args, key):
            warnings.warn(f"--resume-training: {key} was {saved[key]!r}, now {getattr(args, key)!r}; "
                          f"the continued run will differ from an uninterrupted one", stacklevel=2)
    log.info("resumed %s after epoch %d (global step %d)", args.resume_training, state.epoch, state.step)
    return state


class ProgressLog:
    """A line in the log every `every` steps, as torchvision's MetricLogger prints: step, loss,
    learning rate, images/s, ETA of the epoch and of the run, peak memory. It goes to
    train.log as well, so a run without a terminal can be followed."""

    def __init__(self, every: int, epoch: int, epochs: int, steps_per_epoch: int, device: torch.device):
        self.every, self.epoch, self.epochs, self.steps = every, epoch, epochs, steps_per_epoch
        self.device = device
        self.start = time.perf_counter()
        self.images = 0

    def step(self, i: int, images: int, loss: float, lr: float) -> None:
        self.images += images
        if self.every <= 0 or (i + 1) % self.every:
            return
        elapsed = time.perf_counter() - self.start
        per_step = elapsed / (i + 1)
        left_epoch = per_step * (self.steps - i - 1)
        left_run = left_epoch + per_step * self.steps * (self.epochs - self.epoch - 1)
        log.info("epoch %d/%d step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA epoch %s, run %s  peak mem %s",
                 self.epoch + 1, self.epochs, i + 1, self.steps, loss, lr, self.images / max(elapsed, 1e-9),
                 _duration(left_epoch), _duration(left_run), _peak_memory(self.device))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _peak_memory(device: torch.device) -> str:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return f"{kib / 2**20:.2f} GiB (RSS)"
    except (ImportError, OSError):
        return "n/a"


def train_one_epoch(args, net, loader, optimizer, scaler, criterion, state: TrainState, epoch: int,
                    out_dir: Path, show_bar: bool) -> tuple[float, float]:
    """One pass over `loader`, advancing state.step; returns (mean training loss over all ranks,
    the last learning rate). Raises NonFiniteLossError on a NaN/inf loss, on every rank."""
    from tqdm import tqdm

    steps_per_epoch = len(loader)
    total_steps = args.epochs * steps_per_epoch
    net.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=args.device)  # (sum of loss * n, n)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not show_bar,
               dynamic_ncols=True, leave=False)
    progress = ProgressLog(getattr(args, "log_every", 0), epoch, args.epochs, steps_per_epoch, args.device)
    lr = args.learning_rate
    for i, batch in enumerate(bar):
        lr = cosine_lr(state.step, total_steps, args.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = batch[0].to(args.device, non_blocking=True)
        labels = batch[1].to(args.device, non_blocking=True)
        with utils.autocast_context(args.device, args.amp):
            out = net(images)
        if not isinstance(out, tuple):  # stage 1, and OpenGraphAU's stage 2 (no edge classifier)
            loss = criterion(out, labels)
        else:
            probs, edge_logits = out
            relations = batch[2].to(args.device, non_blocking=True)
            loss = criterion(probs, labels) + args.lam * edge_loss(edge_logits, relations)
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if args.distributed:  # every rank stops together
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):
            last = out_dir / "last.pth"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            msg = (f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {i + 1}/{steps_per_epoch} "
                   f"(global step {state.step}, lr {lr:.3g}); training stopped, {kept}. Try a lower "
                   f"--learning-rate or --amp none.")
            log.error(msg)
            raise NonFiniteLossError(msg)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        loss_sum += torch.stack([loss.detach().double() * len(images),
                                 torch.tensor(float(len(images)), dtype=torch.float64, device=args.device)])
        if show_bar and i % 5 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        progress.step(i, len(images) * args.world_size, float(loss.detach()), lr)
    bar.close()
    if args.distributed:
        torch.distributed.all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1].clamp(min=1)), lr


def write_history_csv(history: list[dict], au_names, path: Path) -> None:
    """metrics.csv: one row per epoch (epoch, lr, train loss, mean F1/accuracy, F1 per AU, time)."""
    fields = ["epoch", "lr", "train_loss", "mean_f1", "mean_acc"] + [f"f1_{n}" for n in au_names] + ["time_s"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in history:
            out = {k: row.get(k, "") for k in fields if not k.startswith("f1_")}
            for name, value in zip(au_names, row.get("f1") or [""] * len(au_names)):
                out[f"f1_{name}"] = value
            writer.writerow(out)
    tmp.replace(path)


def model_file(model, state: TrainState, facts: dict, args) -> dict:
    """What best.pth, epoch files and a finished run's last.pth hold: the weights, the facts, the
    run's arguments, history and provenance; no optimizer state."""
    own = {k: v for k, v in facts.items() if k != "provenance"}
    return {"epoch": state.epoch, "state_dict": model.state_dict(), "model_config": facts_model_config(own),
            "facts": own, "fold": own["fold"], "best_f1": state.best_f1, "args": conf.serialisable_args(args),
            "history": state.history, "provenance": facts.get("provenance")}


def save_epoch_checkpoints(args, model, optimizer, scaler, state: TrainState, facts: dict, out_dir: Path,
                           improved: bool) -> None:
    """After an epoch: last.pth (the whole training state, for --resume-training) and its release
    name cur_model_fold{k}.pth (a hard link), best.pth when `improved` and
    epoch{E}_model_fold{k}.pth every --save-every epochs (model files: no optimizer state),
    metrics.csv and curves.png. Every file is written atomically."""
    from megraphau.analysis.plots import plot_curves

    weights = model_file(model, state, facts, args)
    training = {**weights, "step": state.step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": utils.capture_rng_state()}
    utils.save_checkpoint(training, out_dir / "last.pth")
    # the release's name for the current model (its files held the optimizer too)
    utils.copy_checkpoint(out_dir / "last.pth", out_dir / f"cur_model_fold{args.fold}.pth")
    if improved:
        utils.save_checkpoint(weights, out_dir / "best.pth")
    if args.save_every > 0 and state.epoch % args.save_every == 0:
        utils.save_checkpoint(weights, out_dir / f"epoch{state.epoch}_model_fold{args.fold}.pth")
    write_history_csv(state.history, facts["au_names"], out_dir / "metrics.csv")
    plot_curves(state.history, out_dir / "curves.png")


def finish_run_files(args, model, state: TrainState, facts: dict, out_dir: Path) -> None:
    """A run that has trained all its epochs has nothing left to resume: last.pth drops the
    optimizer state (two thirds of an AdamW checkpoint) and keeps the model, facts and history;
    best.pth becomes a hard link to it when the last epoch was the best (or was never
    evaluated), and cur_model_fold{k}.pth stays its hard link."""
    last = out_dir / "last.pth"
    utils.save_checkpoint(model_file(model, state, facts, args), last)
    utils.copy_checkpoint(last, out_dir / f"cur_model_fold{args.fold}.pth")
    last_row = state.history[-1] if state.history else {}
    if not (out_dir / "best.pth").exists() or (last_row.get("mean_f1") is not None
                                               and last_row["mean_f1"] >= state.best_f1):
        utils.copy_checkpoint(last, out_dir / "best.pth")


def facts_model_config(facts: dict) -> dict:
    """The model_config entry of a checkpoint (kept beside the facts for older readers)."""
    return {k: facts[k] for k in ("stage", "arc", "num_classes", "neighbor_num", "metric", "variant")}


@contextmanager
def claim_run_folder(args, out_dir: Path, kind: str):
    """Rank 0 claims the run folder for a run of `kind` (run_folder.claim: the lock, the
    earlier-run rule) and writes args.yaml ('evaluate' adds results only); every rank stops with it
    when the folder cannot be used. The lock is held until the block ends."""
    def claim_on_main():
        if not utils.is_main_process():
            return None  # under torchrun only rank 0 locks and decides; the others follow
        lock = run_folder.claim(out_dir, kind, overwrite=getattr(args, "overwrite", False),
                                inputs=[args.resume, getattr(args, "resume_training", None)])
        try:
            if kind != "evaluate":
                conf.write_args(args, out_dir,
                                provenance=provenance.collect(device=args.device) if kind == "test" else None)
        except BaseException:
            lock.release()
            raise
        return lock

    lock = utils.agree_on_errors(claim_on_main)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def log_removed(lock) -> None:
    if lock is not None and lock.removed:
        log.warning("--overwrite: removed the earlier run's %s", ", ".join(p.name for p in lock.removed))


def run_training(args, stage: int) -> dict:
    """Train stage `stage` (1 or 2) as configured by `args`; see the module docstring.

    Returns {'run_dir', 'best_f1', 'history', 'last_metrics'} ('--evaluate': test_checkpoints'
    summary). Raises NonFiniteLossError on a NaN/inf loss (after keeping the last good checkpoint).
    """
    if args.fold == "all":
        raise utils.UserError("training takes one fold (--fold 1, 2 or 3); 'all' is for test.py")
    if args.evaluate and not args.resume:
        raise utils.UserError("--evaluate needs --resume CHECKPOINT")
    out_dir = conf.run_dir(args)
    kind = "evaluate" if args.evaluate else "resume" if args.resume_training else "train"
    with claim_run_folder(args, out_dir, kind) as lock:
        if args.evaluate:  # a test run: results.json/csv and test.log beside the run's files
            setup_logging(out_dir, "test.log")
            check_amp(args)
            return test_checkpoints(args, out_dir=out_dir, folds=[int(args.fold)])
        setup_logging(out_dir, "train.log")
        log_removed(lock)
        return train_in_folder(args, stage, out_dir)


@dataclass
class TrainingParts:
    """A training run once set up: data, model (not yet DDP-wrapped), optimizer, state."""
    train_ds: object
    test_ds: object
    train_loader: DataLoader
    train_sampler: DistributedSampler
    loader_gen: torch.Generator
    test_loader: DataLoader
    model: torch.nn.Module
    facts: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    state: TrainState


def set_up_training(args, stage: int, out_dir: Path) -> TrainingParts:
    """Everything of a run that bad input can break (lists, images, checkpoints, --resume-training),
    before any rank waits for another: train_in_folder runs it through utils.agree_on_errors."""
    data = build_datasets(args, stage)
    train_ds, test_ds = data["train"], data["test"]
    log.info("train images %d, test images %d, class weights %s", len(train_ds), len(test_ds),
             " ".join(f"{w:.3f}" for w in train_ds.class_weights.tolist()))
    train_loader, train_sampler, loader_gen = build_train_loader(train_ds, args)
    test_loader = build_eval_loader(test_ds, args)
    files = list_files_of_run(args, stage=stage)
    if args.resume and not args.resume_training:
        files["init_checkpoint"] = Path(args.resume)
    prov = provenance.collect(device=args.device, files=files)
    if utils.is_main_process():
        conf.write_args(args, out_dir, provenance=prov)
    log.info("provenance: %s", provenance.header_line(prov))

    model = build_training_model(args, stage)
    model.set_grad_checkpointing(args.grad_checkpointing)  # memory for time; same results
    model.to(args.device)
    facts = {**run_facts(args, model), "provenance": prov}  # the checkpoints' own record
    optimizer = build_optimizer(args, model)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16" and args.device.type == "cuda")
    criterion = WeightedAsymmetricLoss(train_ds.class_weights).to(args.device)
    state = resume_training_state(args, model, optimizer, scaler) if args.resume_training else TrainState()
    return TrainingParts(train_ds, test_ds, train_loader, train_sampler, loader_gen, test_loader, model, facts,
                         optimizer, scaler, criterion, state)


def train_in_folder(args, stage: int, out_dir: Path) -> dict:
    """The training of run_training in its claimed folder (logging already set up)."""
    main_proc = utils.is_main_process()
    check_amp(args)
    log.info("stage %d training: dataset %s fold %d, --arc %s, device %s, world size %d, run folder %s",
             stage, args.dataset_name, args.fold, args.arc, args.device, args.world_size, out_dir)
    utils.set_seed(args.seed + args.rank)
    parts = utils.agree_on_errors(set_up_training, args, stage, out_dir)
    test_ds, model, facts = parts.test_ds, parts.model, parts.facts
    train_loader, train_sampler, loader_gen, test_loader = (parts.train_loader, parts.train_sampler,
                                                            parts.loader_gen, parts.test_loader)
    optimizer, scaler, criterion, state = parts.optimizer, parts.scaler, parts.criterion, parts.state
    net = model
    if args.distributed:
        net = DistributedDataParallel(model, device_ids=[args.local_rank] if args.device.type == "cuda" else None)
    last_metrics = None
    show_bar = main_proc and not args.no_progress
    for epoch in range(state.epoch, args.epochs):
        t0 = time.time()
        seed = epoch_seed(args.seed, epoch, args.rank)
        utils.set_seed(seed)
        loader_gen.manual_seed(seed)
        train_sampler.set_epoch(epoch)
        train_loss, lr = train_one_epoch(args, net, train_loader, optimizer, scaler, criterion, state, epoch,
                                         out_dir, show_bar)

        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "mean_f1": None, "mean_acc": None,
               "f1": None}
        is_last = epoch + 1 == args.epochs
        if args.eval_every > 0 and ((epoch + 1) % args.eval_every == 0 or is_last):
            utils.broadcast_buffers(model)
            probs = predict(model, test_loader, args.device, args.amp, progress=show_bar, desc="test fold")
            last_metrics = compute_au_metrics(probs, test_ds.labels)
            row.update(mean_f1=last_metrics["mean_f1"], mean_acc=last_metrics["mean_acc"],
                       f1=[float(v) for v in last_metrics["f1"]])
        row["time_s"] = time.time() - t0
        state.history.append(row)
        state.epoch = epoch + 1

        improved = row["mean_f1"] is not None and row["mean_f1"] > state.best_f1
        if improved:
            state.best_f1 = row["mean_f1"]
        if main_proc:
            f1_text = "-" if row["mean_f1"] is None else f"{100 * row['mean_f1']:.2f}"
            acc_text = "-" if row["mean_acc"] is None else f"{100 * row['mean_acc']:.2f}"
            log.info("epoch %d/%d  lr %.3g  train loss %.5f  test mean F1 %s  mean acc %s  (%.1f s)%s",
                     epoch + 1, args.epochs, lr, train_loss, f1_text, acc_text, row["time_s"],
                     "  (best)" if improved else "")
            if row["f1"] is not None:
                log.info("\n%s", format_au_table(facts["au_names"], last_metrics["f1"], last_metrics["acc"]))
            save_epoch_checkpoints(args, model, optimizer, scaler, state, facts, out_dir, improved)
        utils.barrier()

    if main_proc and state.epoch == args.epochs and state.history:
        finish_run_files(args, model, state, facts, out_dir)
    log.info("done: best test mean F1 %s; checkpoints in %s",
             "-" if state.best_f1 < 0 else f"{100 * state.best_f1:.2f}", out_dir)
    return {"run_dir": out_dir, "best_f1": state.best_f1, "history": state.history, "last_metrics": last_metrics}


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device, amp: str = "none",
            progress: bool = False, desc: str = "eval", pair_meter=None) -> np.ndarray:
    """AU probabilities (M, N) for every item of loader.dataset, in dataset order.

    Works with a plain loader or one whose sampler is a DistributedSampler(shuffle=False,
    drop_last=False): the loader's order is the sampler's, and the rows of all ranks are
    gathered by dataset index (see utils.gather_by_index). The model is put in eval mode.

    pair_meter: a relations.PairProbabilityMeter that also accumulates the pair probabilities
    of a stage-2 model's edge logits, with the batch's labels (frames count for a pair where
    both AUs are known), every item once (the sampler's padding repeats are left out); under
    DDP it holds the sums of all ranks when predict returns (all_reduce_pair_meter). None (the
    training-time evaluation): the edge logits are dropped, nothing else is done.
    """
    from tqdm import tqdm

    model.eval()
    sampler = getattr(loader, "sampler", None)
    indices = list(iter(sampler)) if sampler is not None else list(range(len(loader.dataset)))
    rows, done = [], 0
    for batch in tqdm(loader, desc=desc, disable=not (progress and utils.is_main_process()), leave=False,
                      dynamic_ncols=True):
        images = batch[0].to(device, non_blocking=True)
        with utils.autocast_context(device, amp):
            out = model(images)
        probs = out[0] if isinstance(out, (tuple, list)) else out
        if pair_meter is not None:
            update_pair_meter(pair_meter, out, batch[1], first_row=done, sampler=sampler,
                              num_items=len(loader.dataset))
        rows.append(probs.float().cpu())
        done += len(probs)
    values = torch.cat(rows).numpy() if rows else np.zeros((0, 0))
    if pair_meter is not None:
        all_reduce_pair_meter(pair_meter, device, num_aus=getattr(loader.dataset, "num_classes", None))
    return utils.gather_by_index(values, indices, len(loader.dataset))


def first_occurrences(sampler, first_row: int, count: int, num_items: int) -> np.ndarray:
    """(count,) bool: which of this rank's rows first_row .. first_row + count - 1 are not the
    padding repeats of a DistributedSampler(shuffle=False, drop_last=False). Its padded list
    holds total_size = ceil(M / W) * W items, rank r takes positions r, r + W, ...; positions
    >= M repeat earlier items. All True for any other sampler."""
    rows = np.arange(first_row, first_row + count)
    if not isinstance(sampler, DistributedSampler) or getattr(sampler, "drop_last", False):
        return np.ones(count, dtype=bool)
    return sampler.rank + rows * sampler.num_replicas < num_items


def update_pair_meter(meter, out, labels, first_row: int = 0, sampler=None, num_items: int | None = None) -> None:
    """Add one batch's stage-2 output (probs, edge logits (B, N*N, 4)) to a PairProbabilityMeter,
    with its labels (B, N), padding repeats of a DistributedSampler left out."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError("a pair meter needs a stage-2 ME-GraphAU model (output: probs, edge logits); "
                         "this model returns probabilities only")
    edge_logits = out[1].float()
    keep = first_occurrences(sampler, first_row, len(edge_logits),
                             len(edge_logits) + first_row if num_items is None else num_items)
    if not keep.all():
        keep_t = torch.from_numpy(keep).to(edge_logits.device)
        edge_logits, labels = edge_logits[keep_t], labels[torch.from_numpy(keep)]
    meter.update(edge_logits, labels)


def all_reduce_pair_meter(meter, device: torch.device, num_aus: int | None = None) -> None:
    """Sum a PairProbabilityMeter's sums and counts over the DDP ranks (in place; a no-op
    without torch.distributed). A rank that saw no batch takes part with zeros (num_aus)."""
    if not utils.is_dist_initialized():
        return
    import torch.distributed as dist

    if meter.sums is None:
        if num_aus is None:
            raise ValueError("all_reduce_pair_meter: this rank saw no batch; pass num_aus")
        meter.sums, meter.counts = np.zeros((4, num_aus, num_aus)), np.zeros((num_aus, num_aus))
    flat = np.concatenate([meter.sums.ravel(), meter.counts.ravel()])
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.from_numpy(flat).to(backend_device, torch.float64)
    dist.all_reduce(total)
    total = total.cpu().numpy()
    meter.sums = total[:meter.sums.size].reshape(meter.sums.shape)
    meter.counts = total[meter.sums.size:].reshape(meter.counts.shape)


def checkpoint_for_fold(pattern: str, fold: int) -> str:
    """--resume 'MEFARG_resnet50_BP4D_fold{fold}.pth' -> the file of one fold."""
    return pattern.replace("{fold}", str(fold))


def has_edge_logits(facts: dict) -> bool:
    """Whether a model predicts stage-2 edge logits: ME-GraphAU stage 2 (OpenGraphAU's stage 2
    returns probabilities only)."""
    return int(facts["stage"]) == 2 and (facts.get("variant") or "megraphau") != "opengraphau"


#: random AU relabellings behind the permutation p-values of results.json's "cooccurrence"
PERMUTATIONS = 2000


def agreement(pred: np.ndarray, truth: np.ndarray, permutations: int = PERMUTATIONS) -> dict:
    """Pearson r of two (N, N) matrices' off-diagonal entries and its permutation p-value."""
    from megraphau.analysis.relations import correlation_with, permutation_p_value

    def number(v: float):
        return None if not np.isfinite(v) else round(float(v), 6)

    return {"r": number(correlation_with(pred, truth)),
            "p_value": number(permutation_p_value(pred, truth, permutations))}


def fold_figures(out_dir: Path, fold: int, au_names: list, probs: np.ndarray, labels: np.ndarray,
                 threshold: float, pair_meter=None, label: str = "") -> dict:
    """The figures of one tested fold in out_dir (each PNG with the CSV of its numbers):
    pr_curves_fold{k}: per-AU precision-recall curves, the operating point p >= threshold marked;
    cooccurrence_fold{k}: the test fold's ground-truth P(AU i and AU j) beside the co-occurrence
    of the predicted AUs and, for stage 2 (pair_meter), the model's mean P(both) from its edge
    logits. Returns {"figures": [file names], "cooccurrence": {comparison: {"r", "p_value"}}}:
    Pearson r over the off-diagonal pairs, permutation p (small: closer than chance)."""
    from megraphau.analysis import plots
    from megraphau.analysis.relations import (
        cooccurrence_from_labels,
        excess_cooccurrence,
        precision_recall_curves,
        predicted_cooccurrence,
    )

    files = []
    curves = precision_recall_curves(probs, labels, threshold)
    pr = plots.plot_pr_curves(au_names, curves, out_dir / f"pr_curves_fold{fold}.png", threshold=threshold,
                              title=f"{label}fold {fold}: precision-recall per AU, {len(labels)} test images "
                                    f"(dot: p >= {threshold:g}; dashed: positive rate)")
    files += [pr["png"].name, pr["csv"].name]

    truth = cooccurrence_from_labels(labels)
    predicted = predicted_cooccurrence(probs, threshold, labels)
    matrices = {"ground truth": truth["both"]}
    stats = {"predicted_aus_vs_truth": agreement(predicted["both"], truth["both"])}
    if pair_meter is not None:
        model = pair_meter.result()
        matrices["model: mean P(both) of the edges"] = model["p_both"]
        stats["model_p_both_vs_truth"] = agreement(model["p_both"], truth["both"])
        stats["model_excess_vs_truth"] = agreement(
            excess_cooccurrence(model["p_both"], model["p_i_without_j"], model["p_j_without_i"]),
            excess_cooccurrence(truth["both"], truth["i_without_j"], truth["j_without_i"]))
    matrices[f"predicted AUs (p >= {threshold:g})"] = predicted["both"]
    key = "model_p_both_vs_truth" if pair_meter is not None else "predicted_aus_vs_truth"
    r, p = stats[key]["r"], stats[key]["p_value"]
    versus = "model edges" if pair_meter is not None else "predicted AUs"
    cooc = plots.plot_cooccurrence(
        au_names, matrices, out_dir / f"cooccurrence_fold{fold}.png",
        title=f"{label}fold {fold}: P(AU i and AU j), {len(labels)} test images; {versus} vs truth: "
              f"r = {'nan' if r is None else f'{r:.2f}'}, permutation p = {'nan' if p is None else f'{p:.3g}'}")
    files += [cooc["png"].name, cooc["csv"].name]
    stats["permutations"] = PERMUTATIONS
    return {"figures": files, "cooccurrence": stats}


def evaluate_checkpoint(args, fold: int, path: str, figures_dir: Path | None = None) -> dict:
    """Test one checkpoint on one fold; returns the fold's result dict (percentages).

    figures_dir: also draw the fold's figures there (fold_figures; rank 0), adding "figures"
    and "cooccurrence" to the result. For a stage-2 ME-GraphAU model the prediction then also
    accumulates the mean pair probabilities of its edge logits (predict's pair_meter)."""
    from megraphau.analysis.relations import PairProbabilityMeter
    from megraphau.model import load_model

    loaded = load_model(path, arc=args.arc, stage=getattr(args, "stage", None), num_classes=args.num_classes,
                        neighbor_num=args.neighbor_num, metric=getattr(args, "metric", None))
    facts = loaded.facts
    saved_fold = facts["fold"] if facts["fold"] is not None else fold_of_file_name(path)
    warn_if_other_fold(path, saved_fold, fold, testing=True)
    model = loaded.model.to(args.device)
    test_ds = build_datasets(args, stage=1, splits=("test",), fold=fold)["test"]
    loader = build_eval_loader(test_ds, args)
    meter = PairProbabilityMeter() if figures_dir is not None and has_edge_logits(facts) else None
    probs = predict(model, loader, args.device, args.amp, progress=not args.no_progress, desc=f"test fold {fold}",
                    pair_meter=meter)
    threshold = getattr(args, "threshold", 0.5)
    metrics = compute_au_metrics(probs, test_ds.labels, threshold=threshold)
    au_names = list(test_ds.au_names)
    log.info("fold %d, %s (stage %d, --arc %s), %d images\n%s", fold, path, facts["stage"], facts["arc"],
             len(test_ds), format_au_table(au_names, metrics["f1"], metrics["acc"]))
    result = {"dataset": args.dataset_name, "fold": int(fold), "arc": facts["arc"], "stage": facts["stage"],
              "checkpoint": str(path), "au_names": au_names, "f1": [round(100 * float(v), 4) for v in metrics["f1"]],
              "acc": [round(100 * float(v), 4) for v in metrics["acc"]],
              "mean_f1": round(100 * metrics["mean_f1"], 4), "mean_acc": round(100 * metrics["mean_acc"], 4),
              "num_images": len(test_ds), "threshold": threshold}
    if figures_dir is not None and utils.is_main_process():
        result.update(fold_figures(Path(figures_dir), fold, au_names, probs, test_ds.labels, threshold, meter,
                                   label=f"{args.dataset_name} "))
        for key, value in result["cooccurrence"].items():
            if isinstance(value, dict):
                log.info("fold %d co-occurrence, %s: r = %s, permutation p = %s", fold, key, value["r"],
                         value["p_value"])
    return result


def f1_figure(out_dir: Path, results: list[dict], dataset_config: dict) -> list[str]:
    """f1_bars.png/.csv: per-AU F1 of each tested fold, their mean (several folds) and, for BP4D
    and DISFA, the paper's numbers (plots.paper_f1_series)."""
    from megraphau.analysis import plots

    first = results[0]
    paper = plots.paper_f1_series(dataset_config) if list(dataset_config.get("au_names") or []) == \
        list(first["au_names"]) else {}
    out = plots.plot_f1_bars(first["au_names"], {f"fold {r['fold']}": r["f1"] for r in results},
                             out_dir / "f1_bars.png", paper=paper,
                             title=f"{first['dataset']}: per-AU F1 on the test fold{'s' if len(results) > 1 else ''}"
                                   f" (stage {first['stage']}, {first['arc']}, p >= {first['threshold']:g})")
    return [out["png"].name, out["csv"].name]


def mean_agreement(results: list[dict]) -> dict:
    """--fold all: each comparison's mean r over the folds and the largest of their p-values."""
    out = {}
    for key in results[0].get("cooccurrence", {}):
        values = [r["cooccurrence"][key] for r in results if isinstance(r.get("cooccurrence", {}).get(key), dict)]
        if len(values) != len(results):
            continue
        rs, ps = [v["r"] for v in values], [v["p_value"] for v in values]
        out[key] = {"mean_r": None if None in rs else round(float(np.mean(rs)), 6),
                    "max_p_value": None if None in ps else max(ps)}
    return out


def write_results(summary: dict, rows: list[dict], out_dir: Path) -> None:
    """results.json (the summary) and results.csv (one row per fold, plus the mean)."""
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


def test_checkpoints(args, out_dir: Path, folds: list[int]) -> dict:
    """Test --resume on each of `folds` ({fold} in the name is filled in), average over the
    folds as the papers do, write results.json / results.csv to out_dir; returns the summary
    (with 'run_dir').

    Figures in out_dir, each a PNG with the CSV of its numbers, listed in results.json's
    "figures": f1_bars (per-AU F1 of each fold, their mean, the paper's for BP4D / DISFA),
    pr_curves_fold{k} and cooccurrence_fold{k} (fold_figures). results.json's "cooccurrence":
    Pearson r and permutation p of the predicted AUs' co-occurrence (and, stage 2, of the
    model's mean P(both) and of its excess over independence) against the ground truth's; with
    several folds each fold's are under per_fold and the top level has their mean r and largest p.
    """
    if not args.resume:
        raise SystemExit("test.py needs --resume CHECKPOINT (use {fold} in the name with --fold all)")
    if len(folds) > 1 and "{fold}" not in args.resume:
        warnings.warn(f"--fold all with one checkpoint ({args.resume}) tests it on every fold, "
                      f"including the folds it was trained on; use a name with {{fold}}", stacklevel=2)
    checkpoints = {f"checkpoint_fold{k}": Path(checkpoint_for_fold(args.resume, k)) for k in folds}
    prepare_data(args, folds)  # the synthetic set's lists exist before they are hashed
    prov = provenance.collect(device=args.device, files={**checkpoints, **list_files_of_run(args, ("test",), folds)})
    log.info("provenance: %s", provenance.header_line(prov))
    results = [evaluate_checkpoint(args, k, checkpoint_for_fold(args.resume, k), figures_dir=out_dir) for k in folds]
    summary = results[0] if len(results) == 1 else average_folds(results)
    if utils.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = f1_figure(out_dir, results, args.dataset_config)
        summary["figures"] = figures + [name for r in results for name in r.get("figures", [])]
        if len(results) > 1:
            summary["cooccurrence"] = mean_agreement(results)
        log.info("figures written to %s: %s", out_dir, " ".join(n for n in summary["figures"] if n.endswith(".png")))
    summary["provenance"] = prov
    if len(results) > 1:
        log.info("mean over folds %s\n%s", folds,
                 format_au_table(summary["au_names"], np.array(summary["f1"]) / 100, np.array(summary["acc"]) / 100))
    if utils.is_main_process():
        write_results(summary, results + ([summary] if len(results) > 1 else []), out_dir)
        log.info("results written to %s", out_dir / "results.json")
    summary["run_dir"] = str(out_dir)
    return summary




# --------------------------------------------------------------------------------------------
# what the scripts' main() and __main__ call
# --------------------------------------------------------------------------------------------
def train_main(args, stage: int) -> dict:
    """Set up the process (torchrun or single), train stage `stage`, tear down."""
    utils.init_distributed_mode(args)
    result = run_training(args, stage)
    # only after success: a failed rank exits without waiting on peers that may be gone
    utils.cleanup_distributed()
    return result


def without_option(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def resume_command(script: str, argv: list[str], args) -> str:
    """The command line that continues an interrupted run from its last.pth."""
    last = conf.run_dir(args) / "last.pth"
    rest = [a for a in without_option(argv, "--resume-training") if a != "--overwrite"]
    world = getattr(args, "world_size", 1) or 1
    launcher = ["torchrun", "--nproc_per_node", str(world)] if world > 1 else ["python"]
    return shlex.join([*launcher, script, *rest, "--resume-training", str(last)])


def interrupted_message(script: str, argv: list[str], args) -> str:
    """What Ctrl-C leaves: the last checkpoint and how to continue from it."""
    if args is None:
        return "interrupted before the run started; nothing was written"
    last = conf.run_dir(args) / "last.pth"
    if not last.is_file():
        return "interrupted before the first epoch ended: no checkpoint was written; start again with the same command"
    return (f"interrupted: the last checkpoint is {last} (written at the end of the last finished epoch); "
            f"continue with: {resume_command(script, argv, args)}")


def train_cli(parser, stage: int, argv=None) -> int:
    """Command-line entry of the training scripts: parse (the dataset's defaults of section
    stage{stage}), train; exit code 0, 2 (a user error: one line), 3 (non-finite loss),
    130 (Ctrl-C: the last checkpoint and the command that continues from it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = []

    def parse_and_train():
        parsed.append(conf.parse_args(parser, argv, section=f"stage{stage}"))
        return train_main(parsed[0], stage)

    try:
        utils.exit_on_user_error(parse_and_train)
    except NonFiniteLossError:
        return 3
    except KeyboardInterrupt:
        if utils.is_main_process():
            print(f"\n{interrupted_message(parser.prog, argv, parsed[0] if parsed else None)}", file=sys.stderr,
                  flush=True)
        return 130
    return 0


def test_main(args) -> dict:
    """test.py's main: the checkpoint(s) of --resume on --fold (or every fold with 'all'), in a
    claimed run folder (run_folder.py: a test run refuses earlier results without --overwrite)."""
    if not args.resume:
        raise utils.UserError("test.py needs --resume CHECKPOINT (use {fold} in the name with --fold all)")
    utils.init_distributed_mode(args)
    out_dir = conf.run_dir(args)
    with claim_run_folder(args, out_dir, "test") as lock:
        setup_logging(out_dir, "test.log")
        log_removed(lock)
        check_amp(args)
        folds = list(range(1, args.N_fold + 1)) if args.fold == "all" else [int(args.fold)]
        summary = test_checkpoints(args, out_dir, folds)
    utils.cleanup_distributed()  # only after success, as in train_main
    return summary


def test_cli(parser, argv=None) -> int:
    """Command-line entry of test.py: exit code 0, 2 (a user error: one line), 130 (Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        utils.exit_on_user_error(lambda: test_main(conf.parse_args(parser, argv, section="test")))
    except KeyboardInterrupt:
        if utils.is_main_process():
            print("\ninterrupted: no results were written; run the same command again", file=sys.stderr, flush=True)
        return 130
    return 0
