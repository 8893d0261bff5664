"""Facts about the models, in one place: the backbones (--arc), the variants, the AU sets a model's
AU count stands for, OpenGraphAU's node counts, and which models predict edge logits.

Plain Python without torch: every other module of megraphau.model imports from here, never the
other way round, and code outside the package (inference, demo, tools) can rely on these names
(also exported from megraphau.model).
"""
from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# backbones
# --------------------------------------------------------------------------------------------
FAMILIES = ("resnet", "swin", "mae_vit")


@dataclass(frozen=True)
class ArcSpec:
    family: str  # one of FAMILIES
    in_channels: int  # C_in of the tokens
    pretrained_file: str  # the ImageNet file name looked for in checkpoints/
    url: str  # where that file is published
    resnet_layers: tuple[int, ...] = ()
    resnet_block: str = ""
    swin_embed_dim: int = 0
    swin_depths: tuple[int, ...] = ()
    swin_heads: tuple[int, ...] = ()
    vit_depth: int = 0  # MAE ViT: transformer blocks (width: in_channels)
    vit_heads: int = 0
    vit_patch: int = 0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown backbone family {self.family!r}; one of {FAMILIES}")

    @property
    def out_channels(self) -> int:
        """C, the width of the AU head: C_in / 4 for ResNets, C_in / 2 for Swins and the MAE ViT
        (as in the release)."""
        return self.in_channels // 4 if self.family == "resnet" else self.in_channels // 2

    @property
    def crop_size(self) -> int | None:
        """The only input size the backbone takes (Swin windows and the ViT's position table are
        fixed to 224 x 224); None: any size (ResNets)."""
        return None if self.family == "resnet" else 224


_TV = "https://download.pytorch.org/models/"
_MS = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
_MAE = "https://dl.fbaipublicfiles.com/mae/pretrain/"
ARCHS: dict[str, ArcSpec] = {
    "resnet18": ArcSpec("resnet", 512, "resnet18-5c106cde.pth", _TV + "resnet18-5c106cde.pth",
                        resnet_layers=(2, 2, 2, 2), resnet_block="basic"),
    "resnet50": ArcSpec("resnet", 2048, "resnet50-19c8e357.pth", _TV + "resnet50-19c8e357.pth",
                        resnet_layers=(3, 4, 6, 3), resnet_block="bottleneck"),
    "resnet101": ArcSpec("resnet", 2048, "resnet101-5d3b4d8f.pth", _TV + "resnet101-5d3b4d8f.pth",
                         resnet_layers=(3, 4, 23, 3), resnet_block="bottleneck"),
    "swin_transformer_tiny": ArcSpec(
        "swin", 768, "swin_tiny_patch4_window7_224.pth", _MS + "swin_tiny_patch4_window7_224.pth",
        swin_embed_dim=96, swin_depths=(2, 2, 6, 2), swin_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "swin_transformer_small": ArcSpec(
        "swin", 768, "swin_small_patch4_window7_224.pth", _MS + "swin_small_patch4_window7_224.pth",
        swin_embed_dim=96, swin_depths=(2, 2, 18, 2), swin_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "swin_transformer_base": ArcSpec(
        "swin", 1024, "swin_base_patch4_window7_224.pth", _MS + "swin_base_patch4_window7_224.pth",
        swin_embed_dim=128, swin_depths=(2, 2, 18, 2), swin_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    # OpenGraphAU's MAE encoder (ViT-B/16, no class token, fixed 1-D sine-cosine positions)
    "mae_vit_base": ArcSpec("mae_vit", 768, "mae_pretrain_vit_base.pth", _MAE + "mae_pretrain_vit_base.pth",
                            vit_depth=12, vit_heads=12, vit_patch=16),
}


def arc_spec(arc: str) -> ArcSpec:
    if arc not in ARCHS:
        raise ValueError(f"unknown --arc {arc!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arc]


#: Backbone stages that --grad-checkpointing counts (ResNet stages, Swin stages; the ViT's blocks
#: in four equal groups).
NUM_STAGES = 4


def checkpoint_stages(stages: int | bool) -> int:
    """Number of leading backbone stages to recompute: True = all, False = none."""
    stages = NUM_STAGES if stages is True else int(stages)
    if not 0 <= stages <= NUM_STAGES:
        raise ValueError(f"gradient checkpointing covers 0..{NUM_STAGES} backbone stages, got {stages}")
    return stages


# --------------------------------------------------------------------------------------------
# variants and AU sets
# --------------------------------------------------------------------------------------------
VARIANTS = ("megraphau", "opengraphau")  # the paper's model (N AUs) | OpenGraphAU (41 AUs)

#: OpenGraphAU: one graph node per main AU; the left/right side AUs are read from their main AU's node.
OPENGRAPHAU_NUM_MAIN = 27
OPENGRAPHAU_NUM_SIDE = 14
OPENGRAPHAU_NUM_CLASSES = OPENGRAPHAU_NUM_MAIN + OPENGRAPHAU_NUM_SIDE  # 41

#: The dataset (AU set, crop preset) a model with that many AU outputs belongs to.
AU_SET_FOR_NUM_CLASSES = {12: "BP4D", 8: "DISFA", OPENGRAPHAU_NUM_CLASSES: "OpenGraphAU"}


def au_set_for(num_classes: int, default: str | None = None) -> str | None:
    """The known AU set (dataset name) of a model with `num_classes` outputs, else `default`."""
    return AU_SET_FOR_NUM_CLASSES.get(int(num_classes), default)


def variant_for(num_classes: int) -> str:
    """The variant a model with `num_classes` outputs is, when nothing else says: 41 AUs are OpenGraphAU."""
    return "opengraphau" if int(num_classes) == OPENGRAPHAU_NUM_CLASSES else "megraphau"


def graph_nodes(num_classes: int, variant: str | None) -> int:
    """Nodes of the model's AU graph: OpenGraphAU's 27 main AUs, else one node per AU."""
    return OPENGRAPHAU_NUM_MAIN if variant == "opengraphau" else int(num_classes)


def has_edge_logits(stage: int, variant: str | None) -> bool:
    """Whether a model predicts edge logits (B, N*N, 4) besides its probabilities: stage-2
    ME-GraphAU only (stage 1 has no edge classifier; OpenGraphAU's stage 2 returns probabilities
    only). variant None means ME-GraphAU."""
    return int(stage) == 2 and (variant or "megraphau") != "opengraphau"
