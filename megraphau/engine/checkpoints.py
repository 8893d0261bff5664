"""What a training run writes and reads back: the facts every checkpoint carries, the training
state (last.pth, for --resume-training), the model files (best.pth, epoch files, a finished
run's last.pth), metrics.csv and curves.png.

A checkpoint states its facts once, under "facts" (model.checkpoint_facts reads them; older
files also have "model_config", which the readers still accept)."""
from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megraphau import conf, utils
from megraphau.analysis.plots import plot_curves
from megraphau.data.dataset import CONFIG_DIR
from megraphau.model import load_checkpoint, model_config_dict, read_checkpoint
from megraphau.utils import log


# --------------------------------------------------------------------------------------------
# the facts of a checkpoint file
# --------------------------------------------------------------------------------------------
def fold_of_file_name(path: str | Path) -> int | None:
    """The fold a release-style file name states (MEFARG_resnet50_BP4D_fold2.pth -> 2)."""
    match = re.search(r"fold(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_for_fold(pattern: str, fold: int | None) -> str:
    """--resume 'MEFARG_resnet50_BP4D_fold{fold}.pth' -> the file of one fold (fold None: the
    hybrid protocol, the name as given)."""
    return pattern if fold is None else pattern.replace("{fold}", str(fold))


def warn_if_other_fold(path, saved_fold, fold: int, testing: bool) -> None:
    """A checkpoint of fold k used on another fold mixes training and test subjects."""
    if saved_fold is None or fold is None or int(saved_fold) == int(fold):
        return
    if testing:
        warnings.warn(f"{path} was trained on fold {saved_fold} but is tested on fold {fold}: the "
                      f"test subjects of fold {fold} were training data for it, so the numbers are wrong", stacklevel=2)
    else:
        warnings.warn(f"{path} was trained on fold {saved_fold} but this run trains fold {fold}: its "
                      f"test subjects were training data there", stacklevel=2)


def dataset_reference(args) -> str:
    """How a checkpoint names its dataset config: a built-in name, or the .yaml's absolute path."""
    path = Path(args.dataset_config["config_path"]).resolve()
    return path.stem if path.parent == CONFIG_DIR.resolve() else str(path)


def run_facts(args, model) -> dict:
    """The facts every checkpoint of a run carries (model.checkpoint_facts reads them back):
    the model's configuration, the dataset, its AU names and descriptions, crop preset and
    size, the protocol and the fold (None under the hybrid protocol)."""
    cfg = args.dataset_config
    fold = None if args.fold is None else int(args.fold)
    return {**model_config_dict(model), "dataset": args.dataset_name, "dataset_config": dataset_reference(args),
            "au_names": list(cfg["au_names"]), "au_descriptions": cfg.get("au_descriptions"),
            "crop_preset": cfg.get("crop_preset"), "crop_size": int(args.crop_size), "fold": fold,
            "protocol": getattr(args, "protocol", "folds")}


def fold_suffix(args) -> str:
    """'_fold{k}' in the release's file names of a fold run; '' under the hybrid protocol (the
    release's OpenGraphAU writes cur_model.pth)."""
    return "" if args.fold is None else f"_fold{args.fold}"


# --------------------------------------------------------------------------------------------
# the training state
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
    for key in ("epochs", "batch_size", "learning_rate", "fold", "dataset_name", "world_size", "protocol",
                "optimizer", "sam_rho", "sam_adaptive"):
        if key in saved and saved[key] != getattr(args, key):
            warnings.warn(f"--resume-training: {key} was {saved[key]!r}, now {getattr(args, key)!r}; "
                          f"the continued run will differ from an uninterrupted one", stacklevel=2)
    threads = ((ckpt.get("provenance") or {}).get("device") or {}).get("torch_threads")
    if threads is not None and threads != torch.get_num_threads():
        warnings.warn(f"--resume-training: the run used {threads} CPU threads, this process {torch.get_num_threads()}; "
                      f"float sums depend on the thread count, so the continued run will differ from an "
                      f"uninterrupted one (set OMP_NUM_THREADS={threads} to match)", stacklevel=2)
    log.info("resumed %s after epoch %d (global step %d)", args.resume_training, state.epoch, state.step)
    return state


# --------------------------------------------------------------------------------------------
# the files of a run
# --------------------------------------------------------------------------------------------
def write_history_csv(history: list[dict], au_names, path: Path) -> None:
    """metrics.csv: one row per epoch (epoch, lr, train loss, mean F1/accuracy, F1 and accuracy
    per AU, the means over the AUs the evaluated split codes, time)."""
    fields = (["epoch", "lr", "train_loss", "mean_f1", "mean_acc"] + [f"f1_{n}" for n in au_names]
              + [f"acc_{n}" for n in au_names] + ["mean_f1_coded", "mean_acc_coded", "time_s"])
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in history:
            out = {k: row.get(k, "") for k in fields if not k.startswith(("f1_", "acc_"))}
            for kind in ("f1", "acc"):
                for name, value in zip(au_names, row.get(kind) or [""] * len(au_names)):
                    out[f"{kind}_{name}"] = value
            writer.writerow(out)
    tmp.replace(path)


def model_file(model, state: TrainState, facts: dict, args) -> dict:
    """What best.pth, epoch files and a finished run's last.pth hold: the weights, the facts, the
    run's arguments, history and provenance; no optimizer state."""
    own = {k: v for k, v in facts.items() if k != "provenance"}
    return {"epoch": state.epoch, "state_dict": model.state_dict(), "facts": own, "fold": own["fold"],
            "best_f1": state.best_f1, "args": conf.serialisable_args(args), "history": state.history,
            "provenance": facts.get("provenance")}


def save_epoch_checkpoints(args, model, optimizer, scaler, state: TrainState, facts: dict, out_dir: Path,
                           improved: bool) -> None:
    """After an epoch: last.pth (the whole training state, for --resume-training) and its release
    name cur_model_fold{k}.pth (hybrid: cur_model.pth; a hard link), best.pth when `improved` and
    epoch{E}_model_fold{k}.pth (hybrid: epoch{E}_model.pth) every --save-every epochs (model files:
    no optimizer state), metrics.csv and curves.png. Every file is written atomically."""
    weights = model_file(model, state, facts, args)
    training = {**weights, "step": state.step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": utils.capture_rng_state()}
    utils.save_checkpoint(training, out_dir / "last.pth")
    # the release's name for the current model (its files held the optimizer too)
    utils.copy_checkpoint(out_dir / "last.pth", out_dir / f"cur_model{fold_suffix(args)}.pth")
    if improved:
        utils.save_checkpoint(weights, out_dir / "best.pth")
    if args.save_every > 0 and state.epoch % args.save_every == 0:
        utils.save_checkpoint(weights, out_dir / f"epoch{state.epoch}_model{fold_suffix(args)}.pth")
    write_history_csv(state.history, facts["au_names"], out_dir / "metrics.csv")
    plot_curves(state.history, out_dir / "curves.png")


def finish_run_files(args, model, state: TrainState, facts: dict, out_dir: Path) -> None:
    """A run that has trained all its epochs has nothing left to resume: last.pth drops the
    optimizer state (two thirds of an AdamW checkpoint) and keeps the model, facts and history;
    best.pth becomes a hard link to it when the last epoch was the best (or was never
    evaluated), and cur_model_fold{k}.pth stays its hard link."""
    last = out_dir / "last.pth"
    utils.save_checkpoint(model_file(model, state, facts, args), last)
    utils.copy_checkpoint(last, out_dir / f"cur_model{fold_suffix(args)}.pth")
    last_row = state.history[-1] if state.history else {}
    if not (out_dir / "best.pth").exists() or (last_row.get("mean_f1") is not None
                                               and last_row["mean_f1"] >= state.best_f1):
        utils.copy_checkpoint(last, out_dir / "best.pth")
