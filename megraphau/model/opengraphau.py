"""OpenGraphAU heads: ME-GraphAU's stage 1 (ANFL) and stage 2 (MEFL) with 41 AU outputs.

OpenGraphAU (Luo et al., the 41-AU successor of "Learning Multi-dimensional Edge Feature-based
AU Relation Graph for Facial Action Unit Recognition", IJCAI-ECAI 2022) keeps one graph node
per *main* AU (27) and reads the 14 left/right *side* AUs (L1 R1 L2 R2 ... L14 R14) from the
node of their main AU, each with its own class vector in `head.sub_sc`. Keys follow the public
release: `head.main_sc`, `head.sub_sc`, `head.main_class_linears.{i}`, stage 1 `head.gnn` as in
ANFL, stage 2 `head.edge_extractor` (GEM) and `head.gnn.graph_layers.{0,1}`; there is no edge
classifier, so both stages return probabilities (B, 41) only.
"""
from __future__ import annotations

import torch
from torch import nn

from . import anfl
from .basic_block import LinearBlock, au_specific_features, cosine_classifier, init_linear_normal
from .facts import OPENGRAPHAU_NUM_CLASSES, OPENGRAPHAU_NUM_MAIN, OPENGRAPHAU_NUM_SIDE
from .mefl import GEM, gated_graph_step

MAIN_AUS = ("1", "2", "4", "5", "6", "7", "9", "10", "11", "12", "13", "14", "15", "16", "17",
            "18", "19", "20", "22", "23", "24", "25", "26", "27", "32", "38", "39")
# main-AU node index that each left/right pair is read from, as in the release. Note: index 8
# is AU11's node, though the pair is named L12/R12 (AU12 is index 9); the released weights were
# trained this way, so it is kept.
SUB_LIST = (0, 1, 2, 4, 7, 8, 11)
SIDE_BASES = ("1", "2", "4", "6", "10", "12", "14")  # the AU each left/right pair is named after
SIDE_AUS = tuple(f"{side}{au}" for au in SIDE_BASES for side in "LR")  # L1 R1 L2 R2 ... L14 R14
NUM_MAIN, NUM_SIDE = len(MAIN_AUS), len(SIDE_AUS)  # 27, 14
NUM_CLASSES = NUM_MAIN + NUM_SIDE  # 41
if (NUM_MAIN, NUM_SIDE, NUM_CLASSES) != (OPENGRAPHAU_NUM_MAIN, OPENGRAPHAU_NUM_SIDE, OPENGRAPHAU_NUM_CLASSES):
    raise ImportError("opengraphau's AU lists disagree with facts.py's OpenGraphAU counts")
AU_NAMES = tuple(f"AU{a}" for a in MAIN_AUS + SIDE_AUS)  # AU1 ... AU39, AUL1, AUR1, ...
MAIN_DESCRIPTIONS = (
    "inner brow raiser", "outer brow raiser", "brow lowerer", "upper lid raiser", "cheek raiser",
    "lid tightener", "nose wrinkler", "upper lip raiser", "nasolabial deepener", "lip corner puller",
    "sharp lip puller", "dimpler", "lip corner depressor", "lower lip depressor", "chin raiser",
    "lip pucker", "tongue show", "lip stretcher", "lip funneler", "lip tightener", "lip pressor",
    "lips part", "jaw drop", "mouth stretch", "lip bite", "nostril dilator", "nostril compressor")
AU_DESCRIPTIONS = MAIN_DESCRIPTIONS + tuple(
    f"{'left' if side == 'L' else 'right'} {MAIN_DESCRIPTIONS[MAIN_AUS.index(au)]}"
    for au in SIDE_BASES for side in "LR")
# (left, right) output indices swapped by a horizontal flip: (27+2k, 28+2k)
FLIP_LABEL_PAIRS = tuple((NUM_MAIN + 2 * k, NUM_MAIN + 2 * k + 1) for k in range(len(SUB_LIST)))


class _OpenGraphAUHead(nn.Module):
    """Shared parts: main/side class vectors, AU-specific features and the 41-way classifier."""

    def __init__(self, in_channels: int):
        super().__init__()
        # parameters first: the release's state dict lists them before the submodules
        self.main_sc = nn.Parameter(torch.empty(NUM_MAIN, in_channels))
        self.sub_sc = nn.Parameter(torch.empty(NUM_SIDE, in_channels))
        nn.init.xavier_uniform_(self.main_sc)
        nn.init.xavier_uniform_(self.sub_sc)
        self.main_class_linears = nn.ModuleList(LinearBlock(in_channels, in_channels) for _ in range(NUM_MAIN))
        # side AU s reads node SUB_LIST[s // 2] (L and R share their main AU's node)
        self.register_buffer("side_nodes", torch.tensor([i for i in SUB_LIST for _ in "LR"]), persistent=False)

    def au_features(self, x: torch.Tensor) -> torch.Tensor:
        """AFG: (B, D, C) global tokens -> (B, 27, D, C) main-AU token features f_u."""
        return au_specific_features(self.main_class_linears, x)

    def classify(self, f_v: torch.Tensor) -> torch.Tensor:
        """Node features (B, 27, C) -> probabilities (B, 41): 27 main AUs, then L1 R1 ... L14 R14."""
        main = cosine_classifier(f_v, self.main_sc)  # (B, 27)
        side = cosine_classifier(f_v.index_select(1, self.side_nodes), self.sub_sc)  # (B, 14)
        return torch.cat([main, side], dim=1)


class Stage1Head(_OpenGraphAUHead):
    """OpenGraphAU stage 1: ANFL's facial graph over the 27 main-AU nodes (K = neighbor_num)."""

    def __init__(self, in_channels: int, neighbor_num: int = 4, metric: str = "dots"):
        super().__init__(in_channels)
        self.gnn = anfl.GNN(in_channels, NUM_MAIN, neighbor_num=neighbor_num, metric=metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_v = self.au_features(x).mean(dim=-2)  # (B, 27, C)
        return self.classify(self.gnn(f_v))  # (B, 41)


class GraphLayer(nn.Module):
    """One gated graph layer (keys U V A B E bnv bne as in the release), OpenGraphAU's node
    update with the residual outside the activation: v' = v + ReLU(bnv(U v_i + mean_j g_ij V v_j))."""

    def __init__(self, channels: int, num_nodes: int):
        super().__init__()
        for name in "UVABE":
            lin = nn.Linear(channels, channels, bias=False)
            init_linear_normal(lin, channels)
            setattr(self, name, lin)
        self.bnv = nn.BatchNorm1d(num_nodes)  # node index as channel
        self.bne = nn.BatchNorm1d(num_nodes * num_nodes)  # edge index as channel

    def forward(self, v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # v (B, N, C), e (B, N*N, C)
        e, update = gated_graph_step(v, e, self.U, self.V, self.A, self.B, self.E, self.bne)
        return v + torch.relu(self.bnv(update)), e


class GNN(nn.Module):
    """Two gated graph layers, `graph_layers.{0,1}`."""

    def __init__(self, channels: int, num_nodes: int, num_layers: int = 2):
        super().__init__()
        self.graph_layers = nn.ModuleList(GraphLayer(channels, num_nodes) for _ in range(num_layers))

    def forward(self, v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.graph_layers:
            v, e = layer(v, e)
        return v, e


class Stage2Head(_OpenGraphAUHead):
    """OpenGraphAU stage 2: GEM edge features over the 27 main AUs and two gated graph layers;
    no edge classifier."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.edge_extractor = GEM(in_channels, NUM_MAIN)
        self.gnn = GNN(in_channels, NUM_MAIN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_u = self.au_features(x)  # (B, 27, D, C)
        f_e = self.edge_extractor(f_u, x)  # (B, 27*27, C)
        f_v, _ = self.gnn(f_u.mean(dim=-2), f_e)  # (B, 27, C)
        return self.classify(f_v)  # (B, 41)
