"""Logging of a run: where the log goes (setup_logging) and the progress lines of training
(ProgressLog: loss, learning rate, throughput, ETA and peak memory)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from megraphau import utils
from megraphau.utils import log

try:  # POSIX only: on Windows the CPU's peak memory is not reported
    import resource
except ImportError:
    resource = None


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
                 duration(left_epoch), duration(left_run), peak_memory(self.device))


def duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def peak_memory(device: torch.device) -> str:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    if resource is None:
        return "n/a"
    try:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    except OSError:
        return "n/a"
    return f"{kib / 2**20:.2f} GiB (RSS)"
