"""Stage 1 of ME-GraphAU (Luo et al., IJCAI-ECAI 2022): the AU relationship-aware node feature
learning module (ANFL).

AU-specific feature generation (AFG) gives each AU its own token features and node feature;
facial graph generation (FGG) connects each node to its K most similar nodes and refines the
node features with one graph convolution.
"""
from __future__ import annotations

import torch
from torch import nn

from .basic_block import LinearBlock, au_specific_features, cosine_classifier, init_linear_normal

METRICS = ("dots", "cosine", "l1")


def knn_adjacency(node_features: torch.Tensor, k: int, metric: str = "dots") -> torch.Tensor:
    """A_ij = 1 when node j is among the k nearest of node i (ties may add ones). (B, N, C) -> (B, N, N)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    x = node_features.detach()  # the graph's topology carries no gradient
    if metric == "l1":
        if torch.onnx.is_in_onnx_export():
            # the same sum_c |x_ic - x_jc| (cdist has no ONNX translation); eager code keeps
            # cdist, whose rounding (and so near-tie neighbour choices) trained models saw
            dist = (x.unsqueeze(2) - x.unsqueeze(1)).abs().sum(-1)  # (B, N, N)
        else:
            dist = torch.cdist(x, x, p=1)  # (B, N, N), smaller is closer
        kth = dist.topk(k, dim=-1, largest=False).values[..., -1:]  # (B, N, 1)
        return (dist <= kth).to(x.dtype)
    if metric == "cosine":
        x = nn.functional.normalize(x, p=2, dim=-1)
    sim = x @ x.transpose(1, 2)  # (B, N, N)
    kth = sim.topk(k, dim=-1, largest=True).values[..., -1:]  # (B, N, 1)
    return (sim >= kth).to(x.dtype)


def normalize_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """Â = D^-1/2 A D^-1/2 with D the row sums (every row has at least k ones)."""
    d = adj.sum(-1).rsqrt()  # (B, N)
    return d.unsqueeze(-1) * adj * d.unsqueeze(-2)


class GNN(nn.Module):
    """Facial graph generation + one graph convolution: f_v' = ReLU(f_v + bnv(Â V f_v + U f_v))."""

    def __init__(self, channels: int, num_nodes: int, neighbor_num: int = 4, metric: str = "dots"):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        if not 1 <= neighbor_num <= num_nodes:
            raise ValueError(f"neighbor_num must be in 1..{num_nodes}, got {neighbor_num}")
        self.neighbor_num = neighbor_num
        self.metric = metric
        self.U = nn.Linear(channels, channels)
        self.V = nn.Linear(channels, channels)
        self.bnv = nn.BatchNorm1d(num_nodes)  # node index as channel: statistics over batch and C
        self.relu = nn.ReLU(inplace=True)
        init_linear_normal(self.U, channels)
        init_linear_normal(self.V, channels)
        nn.init.ones_(self.bnv.weight)
        nn.init.zeros_(self.bnv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, C)
        adj = normalize_adjacency(knn_adjacency(x, self.neighbor_num, self.metric))  # (B, N, N)
        aggregate = adj.to(x.dtype) @ self.V(x)  # (B, N, C)
        return self.relu(x + self.bnv(aggregate + self.U(x)))


class Head(nn.Module):
    """Stage-1 head: AU-specific features, the facial graph, and the cosine classifier."""

    def __init__(self, in_channels: int, num_classes: int, neighbor_num: int = 4, metric: str = "dots"):
        super().__init__()
        self.num_classes = num_classes
        self.class_linears = nn.ModuleList(LinearBlock(in_channels, in_channels) for _ in range(num_classes))
        self.gnn = GNN(in_channels, num_classes, neighbor_num=neighbor_num, metric=metric)
        self.sc = nn.Parameter(torch.empty(num_classes, in_channels))
        nn.init.xavier_uniform_(self.sc)

    def au_features(self, x: torch.Tensor) -> torch.Tensor:
        """AFG: (B, D, C) global tokens -> (B, N, D, C) AU-specific tokens f_u."""
        return au_specific_features(self.class_linears, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_v = self.au_features(x).mean(dim=-2)  # (B, N, C)
        return cosine_classifier(self.gnn(f_v), self.sc)  # (B, N)
