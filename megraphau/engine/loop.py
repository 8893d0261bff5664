"""The loops: one training epoch (train_one_epoch) and prediction over a loader (predict), as
ConvNeXt's engine.py holds train_one_epoch and evaluate. The run around them (set-up, epochs,
checkpoints) is training.py; testing a checkpoint is evaluation.py."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megraphau import utils
from megraphau.engine.checkpoints import TrainState
from megraphau.engine.logs import ProgressLog
from megraphau.engine.losses import edge_loss
from megraphau.engine.pair_meters import all_reduce_pair_meter, update_pair_meter
from megraphau.engine.recipe import cosine_lr
from megraphau.engine.sam import SAM, sam_step
from megraphau.utils import log


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops, the last good checkpoint is kept."""


def check_finite_loss(loss: torch.Tensor, args, out_dir: Path, where: str) -> None:
    """NonFiniteLossError (logged, on every rank together) when `loss` is NaN or infinite."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if args.distributed:  # every rank stops together
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if not bool(finite):
        last = out_dir / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        msg = (f"non-finite loss ({loss.item()}) {where}; training stopped, {kept}. Try a lower "
               f"--learning-rate or --amp none.")
        log.error(msg)
        raise NonFiniteLossError(msg)


def batch_loss(args, criterion):
    """loss_fn(net, batch) of one training step: the forward under --amp's autocast, then
    criterion(probs, labels), plus --lam x the edge loss for a stage-2 ME-GraphAU model
    (OpenGraphAU's stage 2 predicts no edges: the AU loss alone)."""
    def loss_fn(net, batch):
        images = batch[0].to(args.device, non_blocking=True)
        labels = batch[1].to(args.device, non_blocking=True)
        with utils.autocast_context(args.device, args.amp):
            out = net(images)
        if not isinstance(out, tuple):  # stage 1, and OpenGraphAU's stage 2 (no edge classifier)
            return criterion(out, labels)
        probs, edge_logits = out
        relations = batch[2].to(args.device, non_blocking=True)
        return criterion(probs, labels) + args.lam * edge_loss(edge_logits, relations)

    return loss_fn


def train_one_epoch(args, net, loader, optimizer, scaler, criterion, state: TrainState, epoch: int,
                    out_dir: Path, show_bar: bool) -> tuple[float, float]:
    """One pass over `loader`, advancing state.step; returns (mean training loss over all ranks,
    the last learning rate). The learning rate follows recipe.cosine_lr, set before every step;
    the loss is batch_loss's. A SAM optimizer (--optimizer sam) takes sam.sam_step's two-pass
    step (the logged loss is that of the unperturbed weights), anything else one backward and
    scaler.step. Raises NonFiniteLossError on a NaN/inf loss, on every rank."""
    steps_per_epoch = len(loader)
    total_steps = args.epochs * steps_per_epoch
    net.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=args.device)  # (sum of loss * n, n)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not show_bar,
               dynamic_ncols=True, leave=False)
    progress = ProgressLog(getattr(args, "log_every", 0), epoch, args.epochs, steps_per_epoch, args.device)
    loss_fn = batch_loss(args, criterion)
    lr = args.learning_rate
    for i, batch in enumerate(bar):
        lr = cosine_lr(state.step, total_steps, args.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr

        where = (f"at epoch {epoch + 1}, step {i + 1}/{steps_per_epoch} (global step {state.step}, "
                 f"lr {lr:.3g})")
        check_loss = partial(check_finite_loss, args=args, out_dir=out_dir, where=where)
        if isinstance(optimizer, SAM):
            loss = sam_step(net, loss_fn, batch, optimizer, scaler, check_loss=check_loss).loss
        else:
            loss = loss_fn(net, batch)
            check_loss(loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        state.step += 1
        n = len(batch[0])
        loss_sum += torch.stack([loss.detach().double() * n,
                                 torch.tensor(float(n), dtype=torch.float64, device=args.device)])
        if show_bar and i % 5 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        progress.step(i, n * args.world_size, float(loss.detach()), lr)
    bar.close()
    if args.distributed:
        torch.distributed.all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1].clamp(min=1)), lr


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
    DDP it holds the sums of all ranks when predict returns (pair_meters.all_reduce_pair_meter).
    None (the training-time evaluation): the edge logits are dropped, nothing else is done.
    """
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
