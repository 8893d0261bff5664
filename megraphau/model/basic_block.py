"""Building blocks shared by both stages of ME-GraphAU (Luo et al., IJCAI-ECAI 2022)."""
import math

import torch
from torch import nn


def init_linear_normal(linear: nn.Linear, fan: int) -> None:
    """The release's initialisation of its graph and projection layers: N(0, sqrt(2 / fan))."""
    nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / fan))


class LinearBlock(nn.Module):
    """Dropout -> Linear -> BatchNorm1d over channels (statistics over batch and tokens) -> ReLU.

    Keys `fc` and `bn` as in the release.
    """

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop)
        init_linear_normal(self.fc, out_features)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, in)
        x = self.fc(self.drop(x)).transpose(1, 2)  # (B, out, T): BatchNorm1d wants channels second
        return self.relu(self.bn(x)).transpose(1, 2)  # (B, T, out)


def cosine_classifier(node_features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """p_i = <normalize(v_i), normalize(relu(s_i))>: the paper's similarity classifier.

    node_features (B, N, C), class_vectors (N, C) -> (B, N). Node features are non-negative
    after the ReLUs, so p lies in [0, 1] without a sigmoid.
    """
    sc = nn.functional.normalize(torch.relu(class_vectors), p=2, dim=-1)
    v = nn.functional.normalize(node_features, p=2, dim=-1)
    return (v * sc.unsqueeze(0)).sum(-1)


def au_specific_features(class_linears: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """AFG: one LinearBlock per AU on the (B, D, C) global tokens -> (B, N, D, C) AU tokens f_u."""
    return torch.stack([layer(x) for layer in class_linears], dim=1)
