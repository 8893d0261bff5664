"""Stage 2 of ME-GraphAU (Luo et al., IJCAI-ECAI 2022): multi-dimensional edge feature learning
(MEFL).

The graph edge feature extractor (GEM) describes each ordered AU pair (i, j), edge index
p = i*N + j, by cross-attention between the AUs' token features; two gated graph layers then
update node and edge features together, and an edge classifier predicts the pair's
co-occurrence pattern 2*a_i + a_j.
"""
from __future__ import annotations

import torch
from torch import nn

from .basic_block import LinearBlock, cosine_classifier, init_linear_normal


class CrossAttn(nn.Module):
    """Single-head cross-attention: queries from y, keys and values from x (keys as in the release)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear_q = nn.Linear(channels, channels // 2)
        self.linear_k = nn.Linear(channels, channels // 2)
        self.linear_v = nn.Linear(channels, channels)
        self.scale = (channels // 2) ** -0.5
        init_linear_normal(self.linear_q, channels // 2)
        init_linear_normal(self.linear_k, channels // 2)
        init_linear_normal(self.linear_v, channels)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # y: (..., Dq, C) queries; x: (..., Dk, C) keys/values
        attn = (self.linear_q(y) @ self.linear_k(x).transpose(-2, -1)) * self.scale  # (..., Dq, Dk)
        return attn.softmax(dim=-1) @ self.linear_v(x)  # (..., Dq, C)


class GEM(nn.Module):
    """Graph edge feature extractor: FAM (AU tokens attend to the global tokens), then ARM
    (for each pair (i, j), AU j's tokens attend to AU i's), edge projection and per-edge BN."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.FAM = CrossAttn(channels)
        self.ARM = CrossAttn(channels)
        self.edge_proj = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm2d(num_classes * num_classes)  # edge index as the channel axis
        init_linear_normal(self.edge_proj, channels)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, class_feature: torch.Tensor, global_feature: torch.Tensor) -> torch.Tensor:
        """class_feature (B, N, D, C), global_feature (B, D, C) -> edge features (B, N*N, C)."""
        B, N, D, C = class_feature.shape
        g = self.FAM(class_feature, global_feature.unsqueeze(1).expand(B, N, D, C))  # (B, N, D, C)
        queries = g.unsqueeze(1).expand(B, N, N, D, C).reshape(B, N * N, D, C)  # p = i*N+j -> g_j
        keys = g.unsqueeze(2).expand(B, N, N, D, C).reshape(B, N * N, D, C)  # p = i*N+j -> g_i
        edge = self.bn(self.edge_proj(self.ARM(queries, keys)))  # (B, N*N, D, C)
        return edge.mean(dim=-2)  # (B, N*N, C)


def gated_graph_step(v: torch.Tensor, e: torch.Tensor, U: nn.Module, V: nn.Module, A: nn.Module,
                     B: nn.Module, E: nn.Module, bne: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One gated graph layer's edge update and node message, for node features v (B, N, C) and
    edge features e (B, N*N, C), edge p = i*N + j:
      e'_ij = e_ij + ReLU(bne(A v_i + B v_j + E e_ij));  g_ij = softmax_j(sigmoid(e'_ij))
    returns (e', U v_i + (1/N) sum_j g_ij * V v_j); the caller applies bnv and the residual.
    """
    batch, n, c = v.shape
    # A v_i + B v_j for every pair: broadcasts, not (N*N, N) incidence matrix products
    pair = (A(v).unsqueeze(2) + B(v).unsqueeze(1)).reshape(batch, n * n, c)  # (B, N*N, C)
    e = e + torch.relu(bne(pair + E(e)))  # (B, N*N, C)
    gate = torch.sigmoid(e).view(batch, n, n, c).softmax(dim=2)  # (B, N, N, C), softmax over j
    message = (gate * V(v).unsqueeze(1)).sum(dim=2) / n  # (B, N, C)
    return e, U(v) + message


class GNN(nn.Module):
    """Two gated graph layers (keys U1..E2, bnv1/2, bne1/2 as in the release):
    v' = ReLU(v + bnv(U v_i + (1/N) sum_j g_ij V v_j))."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        for layer in (1, 2):
            for name in "UVABE":
                lin = nn.Linear(channels, channels, bias=False)
                init_linear_normal(lin, channels)
                setattr(self, f"{name}{layer}", lin)
        for layer in (1, 2):
            setattr(self, f"bnv{layer}", nn.BatchNorm1d(num_classes))
            setattr(self, f"bne{layer}", nn.BatchNorm1d(num_classes * num_classes))  # per edge

    def forward(self, v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for idx in (1, 2):
            linears = [getattr(self, f"{name}{idx}") for name in "UVABE"]
            e, update = gated_graph_step(v, e, *linears, getattr(self, f"bne{idx}"))
            v = torch.relu(v + getattr(self, f"bnv{idx}")(update))
        return v, e


class Head(nn.Module):
    """Stage-2 head: AU-specific features, GEM edge features, gated graph, node and edge classifiers."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.class_linears = nn.ModuleList(LinearBlock(in_channels, in_channels) for _ in range(num_classes))
        self.edge_extractor = GEM(in_channels, num_classes)
        self.gnn = GNN(in_channels, num_classes)
        self.sc = nn.Parameter(torch.empty(num_classes, in_channels))
        nn.init.xavier_uniform_(self.sc)
        self.edge_fc = nn.Linear(in_channels, 4)
        nn.init.xavier_uniform_(self.edge_fc.weight)

    def au_features(self, x: torch.Tensor) -> torch.Tensor:
        """AFG: (B, D, C) global tokens -> (B, N, D, C) AU-specific tokens f_u."""
        return torch.stack([layer(x) for layer in self.class_linears], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_u = self.au_features(x)  # (B, N, D, C)
        f_v = f_u.mean(dim=-2)  # (B, N, C)
        f_e = self.edge_extractor(f_u, x)  # (B, N*N, C)
        f_v, f_e = self.gnn(f_v, f_e)
        return cosine_classifier(f_v, self.sc), self.edge_fc(f_e)  # (B, N), (B, N*N, 4)
