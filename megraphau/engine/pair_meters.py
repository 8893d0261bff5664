"""A stage-2 model's mean pair probabilities during prediction (loop.predict's pair_meter):
add each batch's edge logits to a relations.PairProbabilityMeter, every test item once, and sum
the meter over the DDP ranks. A module of its own: loop.predict uses it and evaluation uses
loop.predict, so neither of those can hold it without an import cycle."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from megraphau import utils


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
