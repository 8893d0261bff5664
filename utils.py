"""Training and evaluation utilities of ME-GraphAU (Luo et al., IJCAI-ECAI 2022).

- distributed set-up for torchrun (`init_distributed_mode`, `is_main_process`, ...);
- the paper's weighted asymmetric loss and the stage-2 edge loss;
- the per-step cosine learning rate;
- per-AU F1 / accuracy, vectorised, and the paper's result table;
- atomic checkpoint saving and RNG capture/restore (exact resumption);
- distributed evaluation in which every test image counts exactly once.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("megraphau")


# --------------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------------
def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_initialized():
        dist.barrier()


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but no CUDA device is available "
                               "(use --device cpu or --device auto)")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device("cpu")


def init_distributed_mode(args) -> None:
    """Set up torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Sets args.distributed, args.rank, args.world_size, args.local_rank and args.device.
    Without those variables (or WORLD_SIZE=1) this is a plain single process. Backend: NCCL on
    CUDA, Gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args.distributed = "RANK" in os.environ and world_size > 1
    args.rank = int(os.environ.get("RANK", "0")) if args.distributed else 0
    args.world_size = world_size if args.distributed else 1
    args.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if args.distributed else 0
    args.device = resolve_device(getattr(args, "device", "auto") or "auto", args.local_rank)
    if not args.distributed:
        return
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    backend = "nccl" if args.device.type == "cuda" else "gloo"
    if not is_dist_initialized():
        dist.init_process_group(backend=backend, init_method="env://",
                                world_size=args.world_size, rank=args.rank)
    barrier()


def cleanup_distributed() -> None:
    if is_dist_initialized():
        dist.destroy_process_group()


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# losses and learning rate (SPEC §4)
# --------------------------------------------------------------------------------------------
class WeightedAsymmetricLoss(nn.Module):
    """The paper's weighted asymmetric loss on probabilities p in [0, 1]:

        L = -mean_{known (b, i)} w_i [ y log(max(p, eps)) + (1 - y) * sg(p) * log(max(1 - p, eps)) ]

    sg(p) = p.detach(): the factor that down-weights easy negatives carries no gradient (the
    release toggled autograd globally for it; detaching is the same maths without side effects).
    Labels of -1 (unknown) are left out; the mean runs over the known entries only, so with
    every label known it is the paper's mean over batch and AUs.
    """

    def __init__(self, weight: torch.Tensor | None = None, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.eps = eps

    def forward(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs, labels = probs.float(), labels.float()  # (B, N) both
        known = labels >= 0
        y = labels.clamp(min=0)
        pos = y * torch.log(probs.clamp(min=self.eps))
        neg = (1 - y) * probs.detach() * torch.log((1 - probs).clamp(min=self.eps))
        loss = -(pos + neg)
        if self.weight is not None:
            loss = loss * self.weight.to(loss.device)
        loss = torch.where(known, loss, torch.zeros_like(loss))
        return loss.sum() / known.sum().clamp(min=1)


def edge_loss(edge_logits: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the stage-2 edge logits (B, N*N, 4) against the co-occurrence classes
    2*a_i + a_j (B, N*N); -1 (an unknown AU in the pair) is ignored. 0 when nothing is known."""
    logits = edge_logits.float().reshape(-1, edge_logits.shape[-1])  # (B*N*N, 4)
    target = relations.long().reshape(-1)  # (B*N*N,)
    if not bool((target >= 0).any()):
        return logits.sum() * 0.0  # keeps the graph; CE would give nan here
    return F.cross_entropy(logits, target, ignore_index=-1)


def cosine_lr(step: int, total_steps: int, lr0: float) -> float:
    """lr0 * (1 + cos(pi * t / T)) / 2: the release's per-step cosine schedule (no warm-up)."""
    if total_steps <= 0:
        return lr0
    return lr0 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0


# --------------------------------------------------------------------------------------------
# metrics and tables (SPEC §1)
# --------------------------------------------------------------------------------------------
def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def compute_au_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """Per-AU F1 and accuracy over a whole test fold, vectorised.

    probs (M, N) in [0, 1]; labels (M, N) in {0, 1, -1} (-1 = unknown, left out).
    Occurrence is p >= threshold. F1_i = 2 TP / (2 TP + FP + FN) with TP/FP/FN summed over all
    frames; an AU with TP + FP + FN = 0 (never present, never predicted) gets F1 = 0, like
    scikit-learn's f1_score with zero_division=0. Accuracy = correct / known frames (0 when an AU
    has no known frame). Returns {'f1': (N,), 'acc': (N,), 'mean_f1', 'mean_acc'} in [0, 1].
    """
    p, y = _to_numpy(probs), _to_numpy(labels)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must both be (M, N)")
    known = y >= 0
    pred = p >= threshold
    pos = y == 1
    tp = (pred & pos).sum(0)
    fp = (pred & known & ~pos).sum(0)
    fn = (~pred & pos).sum(0)
    correct = ((pred == pos) & known).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(p.shape[1]), where=denom > 0)
    n_known = known.sum(0)
    acc = np.divide(correct, n_known, out=np.zeros(p.shape[1]), where=n_known > 0)
    return {"f1": f1, "acc": acc, "mean_f1": float(f1.mean()), "mean_acc": float(acc.mean())}


def format_au_table(au_names: Sequence[str], f1, acc=None, title: str | None = None) -> str:
    """The paper's result table: one column per AU and 'Avg', F1 (and accuracy) in percent."""
    f1 = np.asarray(f1, dtype=float) * 100
    cols = list(au_names) + ["Avg"]
    width = max(6, max(len(c) for c in cols) + 1)
    rows = [("AU", cols), ("F1", [f"{v:.1f}" for v in f1] + [f"{f1.mean():.1f}"])]
    if acc is not None:
        acc = np.asarray(acc, dtype=float) * 100
        rows.append(("Acc", [f"{v:.1f}" for v in acc] + [f"{acc.mean():.1f}"]))
    lines = [title] if title else []
    for name, cells in rows:
        lines.append(f"{name:<4}|" + "".join(f"{c:>{width}}" for c in cells))
        if name == "AU":
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# checkpoints and RNG
# --------------------------------------------------------------------------------------------
def _atomic_write(dst: Path, write_tmp) -> Path:
    """Call write_tmp(tmp) on a temporary name beside dst, then os.replace it onto dst: a crash
    mid-write never leaves a truncated file under the final name."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        write_tmp(tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """torch.save atomically (temporary file + os.replace)."""
    return _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def _link_or_copy(src: Path, tmp: Path) -> None:
    try:
        os.link(src, tmp)  # no second write of a large file
    except OSError:
        shutil.copyfile(src, tmp)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Atomically make `dst` a copy of the finished file `src` (a hard link when the file
    system allows; a later os.replace of `src` leaves it intact)."""
    return _atomic_write(Path(dst), lambda tmp: _link_or_copy(Path(src), tmp))


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain lists, so checkpoints
    stay loadable with torch.load(weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state (CUDA states are restored only when devices match)."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.int64).astype(np.uint32), np_pos,
                         np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# evaluation (single process or distributed)
# --------------------------------------------------------------------------------------------
def gather_by_index(values: np.ndarray, indices: Iterable[int], num_items: int) -> np.ndarray:
    """Reassemble per-rank rows into the dataset order, each item exactly once.

    values (m, ...) are this rank's rows for dataset `indices` (m,). DistributedSampler pads the
    last ranks with repeated items (drop_last=False); writing by index makes those duplicates
    overwrite the same row, so nothing is counted twice and nothing is lost.
    """
    indices = np.asarray(list(indices), dtype=np.int64)
    if len(indices) != len(values):
        raise ValueError(f"{len(values)} rows for {len(indices)} indices")
    if is_dist_initialized():
        parts = [None] * get_world_size()
        dist.all_gather_object(parts, (indices, np.asarray(values)))
    else:
        parts = [(indices, np.asarray(values))]
    out = np.full((num_items,) + np.asarray(values).shape[1:], np.nan, dtype=np.float64)
    seen = np.zeros(num_items, dtype=bool)
    for idx, vals in parts:
        out[idx] = vals
        seen[idx] = True
    if not seen.all():
        raise RuntimeError(f"evaluation missed {int((~seen).sum())} of {num_items} items")
    return out


def autocast_context(device: torch.device, amp: str = "none"):
    """torch.autocast for --amp bf16/fp16 on CUDA; a no-op elsewhere."""
    enabled = amp in ("bf16", "fp16") and device.type == "cuda"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: str = "none",
            progress: bool = False, desc: str = "eval") -> np.ndarray:
    """AU probabilities (M, N) for every item of loader.dataset, in dataset order.

    Works with a plain loader or one whose sampler is a DistributedSampler(shuffle=False,
    drop_last=False): the loader's order is the sampler's, and the rows of all ranks are
    gathered by dataset index (see gather_by_index). The model is put in eval mode.
    """
    from tqdm import tqdm

    model.eval()
    sampler = getattr(loader, "sampler", None)
    indices = list(iter(sampler)) if sampler is not None else list(range(len(loader.dataset)))
    rows = []
    for batch in tqdm(loader, desc=desc, disable=not (progress and is_main_process()), leave=False,
                      dynamic_ncols=True):
        images = batch[0].to(device, non_blocking=True)
        with autocast_context(device, amp):
            out = model(images)
        probs = out[0] if isinstance(out, (tuple, list)) else out
        rows.append(probs.float().cpu())
    values = torch.cat(rows).numpy() if rows else np.zeros((0, 0))
    return gather_by_index(values, indices, len(loader.dataset))


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank, so that all ranks
    evaluate the model rank 0 saves (without SyncBatchNorm each rank's statistics drift)."""
    if not is_dist_initialized():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src)


def user_errors() -> tuple:
    """Exceptions that describe bad input (a file, a flag, a dataset): the scripts print their
    message, which names the file and the problem, instead of a traceback."""
    from dataset import DatasetError
    from model import CheckpointMismatchError, MissingWeightsError

    return DatasetError, CheckpointMismatchError, MissingWeightsError, FileNotFoundError


def exit_on_user_error(run, *args):
    """Run `run(*args)`; a user error (see user_errors) exits with status 2 and its message."""
    import sys

    try:
        return run(*args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
