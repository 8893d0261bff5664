"""Reference (straightforward) form of MEFL's graph edge feature extractor (GEM), Luo et al.,
IJCAI-ECAI 2022 — the only other copy of GEM, kept for tests and benchmarks.

It builds every ordered AU pair's queries and keys by expanding the node features to
(B, N*N, D, C) and projects each pair separately, exactly as the paper describes the
computation. `model.mefl.GEM` computes the same function (same parameters and state-dict keys)
without materialising those pair tensors; tests/model/test_mefl_fast.py checks they agree.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from megraphau.model.mefl import GEM, CrossAttn


def reference_cross_attn(block: CrossAttn, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Single-head cross-attention with a CrossAttn block's weights: queries from y (..., Dq, C),
    keys and values from x (..., Dk, C) -> (..., Dq, C)."""
    attn = (block.linear_q(y) @ block.linear_k(x).transpose(-2, -1)) * block.scale  # (..., Dq, Dk)
    return attn.softmax(dim=-1) @ block.linear_v(x)  # (..., Dq, C)


class ReferenceGEM(nn.Module):
    """GEM in the straightforward repeat form. Same submodules, parameters and keys as
    `model.mefl.GEM` (FAM, ARM, edge_proj, bn), so state dicts transfer both ways."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        fast = GEM(channels, num_classes)  # same construction and initialisation
        self.num_classes = num_classes
        self.FAM, self.ARM, self.edge_proj, self.bn = fast.FAM, fast.ARM, fast.edge_proj, fast.bn

    @classmethod
    def sharing(cls, gem: GEM) -> ReferenceGEM:
        """A ReferenceGEM that uses `gem`'s own submodules (parameters and BN buffers shared)."""
        ref = cls.__new__(cls)
        nn.Module.__init__(ref)
        ref.num_classes = gem.num_classes
        ref.FAM, ref.ARM, ref.edge_proj, ref.bn = gem.FAM, gem.ARM, gem.edge_proj, gem.bn
        ref.train(gem.training)
        return ref

    def forward(self, class_feature: torch.Tensor, global_feature: torch.Tensor) -> torch.Tensor:
        """class_feature (B, N, D, C), global_feature (B, D, C) -> edge features (B, N*N, C)."""
        B, N, D, C = class_feature.shape
        g = reference_cross_attn(self.FAM, class_feature,
                                 global_feature.unsqueeze(1).expand(B, N, D, C))  # (B, N, D, C)
        queries = g.unsqueeze(1).expand(B, N, N, D, C).reshape(B, N * N, D, C)  # p = i*N+j -> g_j
        keys = g.unsqueeze(2).expand(B, N, N, D, C).reshape(B, N * N, D, C)  # p = i*N+j -> g_i
        edge = self.bn(self.edge_proj(reference_cross_attn(self.ARM, queries, keys)))  # (B, N*N, D, C)
        return edge.mean(dim=-2)  # (B, N*N, C)


def reference_stage2_model(model: nn.Module, share_weights: bool = True) -> nn.Module:
    """The same stage-2 MEFARG with its GEM replaced by ReferenceGEM.

    share_weights=True: every parameter and buffer is the fast model's own (no copy; for
    benchmarks that alternate the two forms with one optimizer). False: an independent deep
    copy with equal weights (for tests that compare updates such as BN running statistics).
    """
    gem = getattr(getattr(model, "head", None), "edge_extractor", None)
    if not isinstance(gem, GEM):
        raise TypeError(f"expected a stage-2 model whose head.edge_extractor is a GEM, got "
                        f"{type(gem).__name__}")
    if not share_weights:
        ref = copy.deepcopy(model)
        ref.head.edge_extractor = ReferenceGEM.sharing(ref.head.edge_extractor)
        return ref
    # shallow copies: new module objects for the model and head, the same children and tensors
    ref = copy.copy(model)
    ref._modules = dict(model._modules)
    head = copy.copy(model.head)
    head._modules = dict(model.head._modules)
    head.edge_extractor = ReferenceGEM.sharing(gem)
    ref.head = head
    return ref
