"""Stage 2 of ME-GraphAU (Luo et al., IJCAI-ECAI 2022): multi-dimensional edge feature learning
(MEFL).

The graph edge feature extractor (GEM) describes each ordered AU pair (i, j), edge index
p = i*N + j, by cross-attention between the AUs' token features; two gated graph layers then
update node and edge features together, and an edge classifier predicts the pair's
co-occurrence pattern 2*a_i + a_j.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .basic_block import LinearBlock, au_specific_features, cosine_classifier, init_linear_normal


class CrossAttn(nn.Module):
    """The weights of one single-head cross-attention block (keys as in the release): queries
    linear_q(y), keys linear_k(x), values linear_v(x), scores scaled by (C/2)^-0.5. GEM applies
    them to all AUs or all AU pairs at once rather than block by block, so there is no forward."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear_q = nn.Linear(channels, channels // 2)
        self.linear_k = nn.Linear(channels, channels // 2)
        self.linear_v = nn.Linear(channels, channels)
        self.scale = (channels // 2) ** -0.5
        init_linear_normal(self.linear_q, channels // 2)
        init_linear_normal(self.linear_k, channels // 2)
        init_linear_normal(self.linear_v, channels)


class GEM(nn.Module):
    """Graph edge feature extractor: FAM (AU tokens attend to the global tokens), then ARM
    (for each pair (i, j), edge index p = i*N + j, AU j's tokens attend to AU i's), edge
    projection, per-edge BN (BatchNorm2d over the N*N edges) and the mean over tokens.

    Same function and parameters as the paper's straightforward form (bench/reference_mefl.py,
    which builds (B, N*N, D, C) pair tensors and projects every pair), computed without
    materialising any (B, N*N, D, C) tensor:
    - projections are computed once per node and shared by all pairs (q_j, k_i, v_i);
    - edge_proj is folded into the values: attention rows sum to 1, so
      edge_proj(attn @ v) = attn @ edge_proj(v);
    - BN is affine per edge and the output is a mean over the D query tokens, so only the
      token-mean of the attention rows is needed: mean_q(attn @ v') = mean_q(attn) @ v';
    - in training, each edge's batch statistics over (batch, tokens, channels) come from
      moments: sum_{q,c} (attn_q v')^2 = attn_q (v' v'^T) attn_q^T needs (D, D) Gram matrices
      instead of (D, C) outputs. Running statistics are updated exactly as BatchNorm2d does.
    """

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
        fam, arm = self.FAM, self.ARM
        # FAM: every AU's D tokens query the same D global tokens, so all N*D queries form one
        # attention call against D keys (rows are softmaxed independently).
        g = F.scaled_dot_product_attention(
            fam.linear_q(class_feature).reshape(B, 1, N * D, -1),  # (B, 1, N*D, C/2)
            fam.linear_k(global_feature).unsqueeze(1),  # (B, 1, D, C/2)
            fam.linear_v(global_feature).unsqueeze(1),  # (B, 1, D, C)
            scale=fam.scale).reshape(B, N * D, C)  # (B, N*D, C): g, N nodes x D tokens
        # ARM projections once per node; edge_proj folded into the values
        query = arm.linear_q(g) * arm.scale  # (B, N*D, C/2), q_j
        key = arm.linear_k(g)  # (B, N*D, C/2), k_i
        value = self.edge_proj(arm.linear_v(g)).view(B, N, D, C)  # (B, N, D, C), v'_i
        # all pairs' scores in one batched product; rows (j, q), columns (i, k)
        scores = torch.bmm(query, key.transpose(1, 2))  # (B, N*D, N*D)
        # explicit weights (not scaled_dot_product_attention): the token mean and the
        # moments below need the rows themselves, never the (B, N*N, D, C) outputs
        attn = scores.view(B, N, D, N, D).softmax(dim=-1)  # (B, j, q, i, k)
        # the statistics need fp32 even under autocast; these products are small
        with torch.autocast(device_type=value.device.type, enabled=False):
            work = torch.promote_types(value.dtype, torch.float32)  # fp32 or better
            attn, value = attn.to(work), value.to(work)
            bn = self.bn
            if not (bn.training or bn.running_mean is None):
                # eval: per-edge affine BN commutes with the mean over tokens
                mean_attn = attn.mean(dim=2).transpose(1, 2)  # (B, i, j, k)
                edge = (mean_attn @ value).reshape(B, N * N, C)  # (B, N*N, C), token mean of attn @ v'
                edge = F.batch_norm(edge, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                    False, 0.0, bn.eps)
            else:
                edge = self._train_edges(attn, value)
        return edge.to(g.dtype)

    def _train_edges(self, attn: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Batch-statistics BN of the ARM outputs x = attn @ v' per edge, then the token mean.

        attn (B, j, q, i, k) and value (B, N, D, C), fp32 or wider -> (B, N*N, C)."""
        B, N, D, C = value.shape
        bn = self.bn
        attn = attn.permute(0, 3, 1, 2, 4).reshape(B, N, N * D, D)  # (B, i, j*q, k)
        token_mean = attn.view(B, N, N, D, D).mean(dim=3) @ value  # (B, i, j, C) = mean_q x
        # sum over (q, c) of (x - s_i)^2 with a per-node shift s_i (the mean of v'_i) for
        # numerical stability: rows sum to 1, so x - s_i = attn @ (v'_i - s_i)
        shift = value.mean(dim=(2, 3), keepdim=True)  # (B, N, 1, 1)
        centred = value - shift
        gram = centred @ centred.transpose(-1, -2)  # (B, N, D, D)
        sq_sum = ((attn @ gram) * attn).sum(-1).view(B, N, N, D).sum(-1)  # (B, i, j)
        count = D * C  # elements per edge per sample
        mean_b = token_mean.mean(dim=-1)  # (B, i, j): per-sample mean over tokens and channels
        within = sq_sum - count * (mean_b - shift.view(B, N, 1)) ** 2  # squares about mean_b
        mean = mean_b.mean(dim=0)  # (i, j)
        var = ((within.sum(dim=0) + count * ((mean_b - mean) ** 2).sum(dim=0))
               / (B * count)).clamp_min(0.0)  # (i, j), biased, as BN normalises with
        edge = (token_mean - mean[..., None]) * torch.rsqrt(var + bn.eps)[..., None]  # (B, i, j, C)
        if bn.weight is not None:
            edge = edge * bn.weight.view(N, N, 1) + bn.bias.view(N, N, 1)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():  # exactly BatchNorm2d's update (unbiased variance)
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                n = B * count
                bn.running_mean.lerp_(mean.reshape(-1).to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_((var * (n / max(n - 1, 1))).reshape(-1).to(bn.running_var.dtype),
                                     momentum)
        return edge.reshape(B, N * N, C)


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
        return au_specific_features(self.class_linears, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_u = self.au_features(x)  # (B, N, D, C)
        f_v = f_u.mean(dim=-2)  # (B, N, C)
        f_e = self.edge_extractor(f_u, x)  # (B, N*N, C)
        f_v, f_e = self.gnn(f_v, f_e)
        return cosine_classifier(f_v, self.sc), self.edge_fc(f_e)  # (B, N), (B, N*N, 4)
