"""Stage 1 of ME-GraphAU: backbone + ANFL (AU-specific features and the facial graph).

    python train_stage1.py --dataset BP4D --arc resnet50 --exp-name resnet_first_stage -b 64 -lr 0.0001 --fold 1
    torchrun --nproc_per_node 4 train_stage1.py ...      # several GPUs (DDP)

The training loop below (`run_training`) is shared with train_stage2.py. It follows the
paper's recipe (SPEC §4): the fold's class weights in the weighted asymmetric loss, AdamW
(betas 0.9/0.999, --optimizer-eps, weight decay on all parameters), a cosine learning rate set
before every step, and an evaluation on the test fold after each epoch. Outputs go to
results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/: train.log, args.yaml, metrics.csv, curves.png,
last.pth / best.pth (resumable with --resume-training) and the release's
cur_model_fold{k}.pth / epoch{E}_model_fold{k}.pth.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import conf
import utils
from utils import log


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops, the last good checkpoint is kept."""


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser("ME-GraphAU stage 1 (ANFL) training", parents=[conf.get_conf_parser()])


# --------------------------------------------------------------------------------------------
# set-up helpers (also used by train_stage2.py and test.py)
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
    model_log = logging.getLogger("model")
    model_log.handlers = list(log.handlers)
    model_log.setLevel(log.level)
    model_log.propagate = False


def build_datasets(args, stage: int, splits=("train", "test"), fold=None):
    """AUDataset objects of the fold; rank 0 first, so a synthetic set is generated once."""
    from dataset import AUDataset

    fold = args.fold if fold is None else fold

    def make():
        out = {}
        for split in splits:
            out[split] = AUDataset(args.dataset_config, fold, split, stage=stage if split == "train" else 1,
                                   crop_size=args.crop_size, dataset_path=args.dataset_path)
        return out

    if utils.is_main_process():
        datasets = make()
    utils.barrier()
    if not utils.is_main_process():
        datasets = make()
    return datasets


def build_eval_loader(dataset, args) -> DataLoader:
    """Test-fold loader; under DDP each rank takes a strided share (see utils.predict)."""
    sampler = None
    if utils.is_dist_initialized():
        sampler = DistributedSampler(dataset, num_replicas=utils.get_world_size(), rank=utils.get_rank(),
                                     shuffle=False, drop_last=False)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=args.device.type == "cuda")


def load_test_module():
    """This repository's test.py, by path: `import test` could find Python's own test package."""
    import importlib.util

    name = "megraphau_test_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, conf.REPO_ROOT / "test.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pretrained_arg(args):
    """What build_model's `pretrained` gets: no ImageNet file when a checkpoint follows."""
    if args.pretrained is not None and args.pretrained.lower() == "none":
        return False
    if args.resume or args.resume_training:
        return False
    return args.pretrained


def check_amp(args) -> None:
    if args.amp != "none" and args.device.type != "cuda":
        warnings.warn(f"--amp {args.amp} applies to CUDA only; running in float32 on {args.device}")


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch, rank): data order, augmentation and any
    model randomness are then the same whether or not a run was interrupted before it."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**31


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def write_history_csv(history: list[dict], au_names, path: Path) -> None:
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


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    evaluated = [h for h in history if h.get("mean_f1") not in (None, "")]
    ax2.plot([h["epoch"] for h in evaluated], [100 * h["mean_f1"] for h in evaluated], "o-", color="C1")
    ax2.set(xlabel="epoch", ylabel="mean F1 (%)", title="test fold mean F1")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    """Model, optimizer, scaler and RNG from args.resume_training (a last.pth / best.pth)."""
    from model import load_checkpoint

    ckpt = torch.load(args.resume_training, map_location="cpu", weights_only=True)
    missing = [k for k in ("epoch", "step", "state_dict", "optimizer") if k not in ckpt]
    if missing:
        raise SystemExit(f"{args.resume_training} is not a last.pth/best.pth of this project "
                         f"(missing {missing}); use --resume to start from weights only")
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
                          f"the continued run will differ from an uninterrupted one")
    log.info("resumed %s after epoch %d (global step %d)", args.resume_training, state.epoch, state.step)
    return state


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
    lr = args.learning_rate
    for i, batch in enumerate(bar):
        lr = utils.cosine_lr(state.step, total_steps, args.learning_rate)
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
            loss = criterion(probs, labels) + args.lam * utils.edge_loss(edge_logits, relations)
        if args.inject_nan_step is not None and state.step == args.inject_nan_step:
            loss = loss * float("nan")
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
    bar.close()
    if args.distributed:
        torch.distributed.all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1].clamp(min=1)), lr


def save_epoch_checkpoints(args, model, optimizer, scaler, state: TrainState, au_names, out_dir: Path,
                           improved: bool) -> None:
    """last.pth (and best.pth when `improved`), the release's file names, metrics.csv, curves.png."""
    from model import model_config_dict

    epoch = state.epoch
    ckpt = {"epoch": epoch, "step": state.step, "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "best_f1": state.best_f1,
            "args": conf.serialisable_args(args), "rng": utils.capture_rng_state(),
            "model_config": model_config_dict(model), "fold": int(args.fold), "history": state.history,
            "au_names": au_names}
    utils.save_checkpoint(ckpt, out_dir / "last.pth")
    if improved:
        utils.copy_checkpoint(out_dir / "last.pth", out_dir / "best.pth")
    # the release's file names (with the right fold; its stage 2 used fold + 1)
    release = {"epoch": epoch, "state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer"],
               "fold": int(args.fold), "model_config": ckpt["model_config"]}
    utils.save_checkpoint(release, out_dir / f"cur_model_fold{args.fold}.pth")
    if args.save_every > 0 and epoch % args.save_every == 0:
        utils.save_checkpoint(release, out_dir / f"epoch{epoch}_model_fold{args.fold}.pth")
    write_history_csv(state.history, au_names, out_dir / "metrics.csv")
    plot_curves(state.history, out_dir / "curves.png")


def run_training(args, stage: int) -> dict:
    """Train stage `stage` (1 or 2) as configured by `args`; see the module docstring.

    Returns {'run_dir', 'best_f1', 'history', 'last_metrics'}. Raises NonFiniteLossError on a
    NaN/inf loss (after keeping the last good checkpoint).
    """
    from dataset import AUDataset  # noqa: F401  (fail early with a clear ImportError)
    from model import build_model, load_checkpoint

    if args.fold == "all":
        raise SystemExit("training takes one fold (--fold 1, 2 or 3); 'all' is for test.py")
    out_dir = conf.run_dir(args)
    main_proc = utils.is_main_process()
    if main_proc:
        out_dir.mkdir(parents=True, exist_ok=True)
        conf.write_args(args, out_dir)
    setup_logging(out_dir, "train.log")
    check_amp(args)
    if args.evaluate:
        if not args.resume:
            raise SystemExit("--evaluate needs --resume CHECKPOINT")
        return load_test_module().evaluate_checkpoint(args, args.fold, args.resume, out_dir)
    log.info("stage %d training: dataset %s fold %d, --arc %s, device %s, world size %d, run folder %s",
             stage, args.dataset_name, args.fold, args.arc, args.device, args.world_size, out_dir)

    utils.set_seed(args.seed + args.rank)
    data = build_datasets(args, stage)
    train_ds, test_ds = data["train"], data["test"]
    au_names = list(train_ds.au_names)
    log.info("train images %d, test images %d, class weights %s", len(train_ds), len(test_ds),
             " ".join(f"{w:.3f}" for w in train_ds.class_weights.tolist()))

    train_sampler = DistributedSampler(train_ds, num_replicas=args.world_size, rank=args.rank, shuffle=True,
                                       seed=args.seed, drop_last=False)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler,
                              num_workers=args.num_workers, pin_memory=args.device.type == "cuda",
                              drop_last=False, generator=loader_gen)
    test_loader = build_eval_loader(test_ds, args)

    model = build_model(stage, args.arc, args.num_classes, args.neighbor_num, args.metric,
                        pretrained=pretrained_arg(args),
                        variant=args.dataset_config.get("variant", "megraphau"))  # OpenGraphAU: 41 AUs
    if args.resume and not args.resume_training:
        info = load_checkpoint(model, args.resume)
        saved_fold = info["checkpoint"].get("fold")
        if saved_fold is not None and int(saved_fold) != int(args.fold):
            warnings.warn(f"{args.resume} was trained on fold {saved_fold} but this run trains fold "
                          f"{args.fold}: its test subjects were training data there")
        log.info("initialised from %s", args.resume)
    elif stage == 2 and not args.resume_training:
        warnings.warn("stage 2 without --resume: the paper starts stage 2 from a stage-1 checkpoint")
    model.set_grad_checkpointing(args.grad_checkpointing)  # memory for time; same results
    model.to(args.device)
    net = model
    if args.distributed:
        net = DistributedDataParallel(model, device_ids=[args.local_rank] if args.device.type == "cuda" else None)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.999),
                                  eps=args.optimizer_eps, weight_decay=args.weight_decay)
    use_scaler = args.amp == "fp16" and args.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    criterion = utils.WeightedAsymmetricLoss(train_ds.class_weights).to(args.device)

    state = resume_training_state(args, model, optimizer, scaler) if args.resume_training else TrainState()
    last_metrics = None
    show_bar = main_proc and not args.no_progress
    for epoch in range(state.epoch, args.epochs):
        if args.stop_after_epoch is not None and epoch >= args.stop_after_epoch:
            log.info("stopping after epoch %d as asked (--stop-after-epoch)", epoch)
            break
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
            probs = utils.predict(model, test_loader, args.device, args.amp, progress=show_bar, desc="test fold")
            last_metrics = utils.compute_au_metrics(probs, test_ds.labels)
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
                log.info("\n%s", utils.format_au_table(au_names, last_metrics["f1"], last_metrics["acc"]))
            save_epoch_checkpoints(args, model, optimizer, scaler, state, au_names, out_dir, improved)
        utils.barrier()

    if main_proc and not (out_dir / "best.pth").exists() and (out_dir / "last.pth").exists():
        # never evaluated: best.pth is the last model, so stage 2 / test.py always find one
        utils.copy_checkpoint(out_dir / "last.pth", out_dir / "best.pth")
    log.info("done: best test mean F1 %s; checkpoints in %s",
             "-" if state.best_f1 < 0 else f"{100 * state.best_f1:.2f}", out_dir)
    return {"run_dir": out_dir, "best_f1": state.best_f1, "history": state.history, "last_metrics": last_metrics}


def main(args, stage: int = 1) -> dict:
    utils.init_distributed_mode(args)
    try:
        return run_training(args, stage)
    finally:
        utils.cleanup_distributed()


def cli(stage: int, parser: argparse.ArgumentParser, argv=None) -> int:
    """Command-line entry: parse (dataset defaults of section stage{stage}), train, exit code."""
    args = conf.parse_args(parser, argv, section=f"stage{stage}")
    try:
        utils.exit_on_user_error(main, args, stage)  # bad files/flags: message, exit 2
    except NonFiniteLossError:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(cli(1, get_args_parser()))
