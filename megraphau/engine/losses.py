"""Losses of ME-GraphAU (Luo et al., IJCAI-ECAI 2022): the weighted asymmetric loss on the AU
probabilities (both stages) and the stage-2 edge loss on the co-occurrence classes 2*a_i + a_j.

Training minimises WeightedAsymmetricLoss(class weights of the fold)(p, y) in stage 1, plus
lam * edge_loss(edge_logits, relations) in stage 2. Unknown labels (-1) are left out of both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
