"""Shared plumbing of the scripts and the engine:

- distributed set-up for torchrun (`init_distributed_mode`, `is_main_process`, ...) and
  gathering per-rank results so that every test image counts exactly once;
- seeding, RNG capture/restore (exact resumption) and autocast;
- atomic checkpoint writing (a full disk or read-only folder is one line; the previous file is kept);
- torchrun's side of the user errors (errors.py: one line, exit code 2): every rank stops together
  (agree_on_errors), rank 0 prints the message, the other ranks a short note (torchrun_outcome).

The loss lives in engine/losses.py, the metrics in engine/metrics.py, the training and evaluation
loops in engine/loop.py (the package's modules: engine/__init__.py).
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from megraphau.errors import (  # noqa: F401  (UserError, DeviceUnavailableError: re-exported for the engine)
    EXIT_BUG,
    EXIT_USER_ERROR,
    OUTPUT_ERRNOS,
    DeviceUnavailableError,
    OutputWriteError,
    UserError,
    disk_hint,
    is_user_error,
    output_write_error,
    report_user_error,
    user_error_message,
)

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
            raise DeviceUnavailableError("--device cuda was requested but no CUDA device is available "
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
# checkpoints and RNG
# --------------------------------------------------------------------------------------------
def _atomic_write(dst: Path, write_tmp) -> Path:
    """Call write_tmp(tmp) on a temporary name beside dst, then os.replace it onto dst: a crash
    mid-write never leaves a truncated file under the final name."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_tmp(tmp)
        os.replace(tmp, dst)
    except OSError as err:
        if err.errno not in OUTPUT_ERRNOS:
            raise
        raise output_write_error(err, dst) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """torch.save atomically (temporary file + os.replace)."""
    def write(tmp: Path) -> None:
        # through a Python file: a full disk is then an OSError (ENOSPC), not torch's anonymous
        # "enforce fail" RuntimeError from its own C++ writer
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return _atomic_write(Path(path), write)


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
# distributed evaluation and mixed precision
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


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank, so that all ranks
    evaluate the model rank 0 saves (without SyncBatchNorm each rank's statistics drift)."""
    if not is_dist_initialized():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src)


class StoppedWithOtherRank(UserError):
    """This rank stops because another rank hit a user error (rank 0 prints that message)."""


def agree_on_errors(run, *args):
    """Run `run(*args)` on every rank; if a user error stops any rank, every rank stops with it.

    Under torchrun the ranks exchange their errors (this is also a barrier): rank 0 raises its own
    error, or the first failing rank's message; the other ranks raise errors marked
    `reported_by_rank0`, so each prints one short note (report_user_error) instead of hanging in
    the next collective or printing a Gloo traceback when rank 0 exits. `run` must not fail
    between collectives of its own on some ranks only. Single process: just `run(*args)`.
    """
    error, result = None, None
    try:
        result = run(*args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        error = exc
    if not is_dist_initialized():
        if error is not None:
            raise error
        return result
    messages = [None] * get_world_size()
    dist.all_gather_object(messages, None if error is None else user_error_message(error))
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if not failed:
        return result
    if error is None or (get_rank() == 0 and failed[0][0] != 0):
        first_rank, message = failed[0]
        error = StoppedWithOtherRank(f"rank {first_rank}: {message}" if first_rank else message)
    error.reported_by_rank0 = True
    raise error


def peer_is_gone(exc: BaseException) -> bool:
    """A collective failed because another rank's process ended (Gloo: 'Connection closed by peer')."""
    return isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and ("closed by peer" in str(exc) or "reset by peer" in str(exc)))


def torchrun_outcome(exc: BaseException) -> int | None:
    """errors.run_cli's `outcome` under torchrun (None elsewhere: the default rule applies).

    A user error every rank stopped on (agree_on_errors): this rank's line, then wait until rank 0
    has printed its message (torchrun terminates the other ranks when the first one exits); exit 2.
    A collective that failed because another rank's process ended: one line instead of the
    backend's traceback; exit 1."""
    if not is_dist_initialized():
        return None
    if is_user_error(exc):
        if not getattr(exc, "reported_by_rank0", False):
            return None
        report_user_error(exc)
        dist.barrier()
        return EXIT_USER_ERROR
    if peer_is_gone(exc):
        sys.stderr.write(f"rank {get_rank()}: stopped: another process of this run ended; see its message\n")
        sys.stderr.flush()
        return EXIT_BUG
    return None
