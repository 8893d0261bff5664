"""MEFARG: the full ME-GraphAU model (Luo et al., "Learning Multi-dimensional Edge Feature-based AU
Relation Graph for Facial Action Unit Recognition", IJCAI-ECAI 2022).

backbone -> tokens (B, T, C_in) -> global_linear (B, T, C) -> stage-1 head (ANFL) or
stage-2 head (ANFL's node features + MEFL's edge features and gated graph); T = 49 tokens
(ResNets, Swins) or 196 (the MAE ViT).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import anfl, mefl, opengraphau
from .backbone import build_backbone, load_imagenet_weights
from .basic_block import LinearBlock
from .facts import VARIANTS, arc_spec


@dataclass
class MEFARGConfig:
    stage: int = 1  # 1: ANFL only; 2: ANFL + MEFL
    arc: str = "swin_transformer_base"
    num_classes: int = 12  # N, the number of AUs
    neighbor_num: int = 4  # K of the stage-1 facial graph
    metric: str = "dots"  # similarity of the stage-1 facial graph: dots | cosine | l1
    variant: str = "megraphau"  # megraphau (N AUs) | opengraphau (27 main + 14 side AUs = 41)

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        arc_spec(self.arc)  # validates the name
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.metric not in anfl.METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {anfl.METRICS}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        if self.variant == "opengraphau" and self.num_classes != opengraphau.NUM_CLASSES:
            raise ValueError(f"OpenGraphAU predicts {opengraphau.NUM_CLASSES} AUs "
                             f"(27 main + 14 side), got num_classes={self.num_classes}")


class MEFARG(nn.Module):
    """Stage 1 returns AU probabilities (B, N); stage 2 returns (probabilities (B, N),
    edge logits (B, N*N, 4)). The OpenGraphAU variant returns probabilities (B, 41) in both stages."""

    def __init__(self, config: MEFARGConfig):
        super().__init__()
        self.config = config
        spec = arc_spec(config.arc)
        self.backbone = build_backbone(config.arc)
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.global_linear = LinearBlock(self.in_channels, self.out_channels)
        if config.variant == "opengraphau":
            self.head = opengraphau.Stage1Head(self.out_channels, config.neighbor_num, config.metric) \
                if config.stage == 1 else opengraphau.Stage2Head(self.out_channels)
        elif config.stage == 1:
            self.head = anfl.Head(self.out_channels, config.num_classes, config.neighbor_num, config.metric)
        else:
            self.head = mefl.Head(self.out_channels, config.num_classes)

    def set_grad_checkpointing(self, stages: int | bool = True) -> None:
        """Trade time for memory in training: recompute the activations of the backbone's first
        `stages` stages (0-4; True: all) in the backward pass instead of storing them. Outputs,
        gradients and BatchNorm statistics are those of the plain model."""
        self.backbone.set_grad_checkpointing(stages)

    def forward(self, x: torch.Tensor):
        x = self.global_linear(self.backbone(x))  # (B, T, C)
        return self.head(x)


def build_model(stage: int, arc: str, num_classes: int, neighbor_num: int = 4, metric: str = "dots",
                pretrained: str | Path | bool | None = None, variant: str = "megraphau") -> MEFARG:
    """Build a ME-GraphAU model.

    pretrained: ImageNet initialisation of the backbone. None: the release's file in
    checkpoints/ if present, else a loud warning and a random backbone. A path: that file
    (an error if missing). False: no ImageNet weights (e.g. before loading a trained checkpoint).
    variant: "megraphau" (the paper's model, N = num_classes AUs) or "opengraphau" (41 AUs:
    27 main + 14 side, num_classes must be 41).
    """
    model = MEFARG(MEFARGConfig(stage=stage, arc=arc, num_classes=num_classes,
                                neighbor_num=neighbor_num, metric=metric, variant=variant))
    if pretrained is not False:
        load_imagenet_weights(model.backbone, arc, None if pretrained in (None, True) else pretrained)
    return model


def model_config_dict(model: nn.Module) -> dict:
    """The model's configuration as a plain dict (saved in checkpoints)."""
    return asdict(model.config)
