"""OpenGraphAU's MAE encoder (--arc mae_vit_base): a ViT-B/16 that returns all its patch tokens.

The release's OpenGraphAU backbone `pretrain_mae_base_patch16_224` is the encoder of an MAE
(masked autoencoder) without its decoder, run on the whole image:

    tokens = PatchEmbed(x) + P          (B, 196, 768); P a fixed 1-D sine-cosine table
    tokens = Block(tokens) x 12         LN -> attention -> residual -> LN -> MLP (GELU) -> residual
    tokens = LayerNorm(tokens)          (B, 196, 768) to global_linear and the AU head

There is no class token and no pooling; LayerNorms use eps 1e-6. Attention projects q, k, v with
one weight and biases for q and v only (the key bias is zero, as in BEiT and MAE-pytorch), which
is timm's BEiT block without relative positions; the patch embedding is timm's PatchEmbed.
P is the release's table, sin/cos of position / 10000^(2 floor(j/2) / 768) in dims 2i / 2i+1 over
the 196 patches in raster order, computed in float64 and stored as float32; it is not saved in
state dicts (the release's is a plain tensor attribute).

State-dict keys are the release's (`encoder.patch_embed.proj`, `encoder.blocks.{i}.attn.q_bias`,
..., `encoder.norm`), so the release's OpenGraphAU checkpoints load as they are.
`mae_vit_filter_fn` maps the MAE pretraining files to them as well (see there).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.beit import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .facts import NUM_STAGES, checkpoint_stages
from .statedict import sub_state_dict

LAYER_NORM_EPS = 1e-6
MLP_RATIO = 4.0
IMAGE_SIZE = 224


def sinusoid_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, num_positions, dim) float32: sin(p / 10000^(2 floor(j/2) / dim)) in even dims j,
    cos of the same angle in odd dims (the 1-D table of "Attention is all you need", as the
    release builds it: float64, then float32)."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    exponent = 2 * (torch.arange(dim, dtype=torch.int64) // 2).to(torch.float64) / dim  # (dim,)
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)  # (P, dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class MAEEncoder(nn.Module):
    """patch_embed -> + fixed positions -> blocks -> norm; module names as in the release."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size=IMAGE_SIZE, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        # a buffer so that it follows .to(device / dtype); not saved, as in the release
        self.register_buffer("pos_embed", sinusoid_position_table(num_patches, embed_dim), persistent=False)
        norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
        # stochastic depth rising linearly over the blocks, as the release (0 for every block there)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, qkv_bias=True, mlp_ratio=MLP_RATIO, drop_path=rate, init_values=None,
                  norm_layer=norm) for rate in rates)
        self.norm = norm(embed_dim)
        self.apply(_init_weights)


def _init_weights(module: nn.Module) -> None:
    """The release's initialisation of its MAE encoder: Xavier-uniform linear weights, zero
    biases, unit LayerNorms (the patch convolution keeps PyTorch's default)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MAEViTTokens(nn.Module):
    """The MAE ViT encoder: (B, 3, 224, 224) -> (B, 196, embed_dim) tokens after the final LayerNorm.

    Loading accepts the release's keys and MAE pretraining files (mae_vit_filter_fn)."""

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 16,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.encoder = MAEEncoder(embed_dim, depth, num_heads, patch_size, drop_path_rate)
        self.embed_dim = embed_dim
        self.grad_checkpointing = 0  # leading blocks recomputed in backward
        self._register_load_state_dict_pre_hook(MAEViTTokens._from_any_layout)

    def set_grad_checkpointing(self, stages: int | bool = True) -> None:
        """Recompute the blocks of the first `stages` of NUM_STAGES equal groups of blocks (True:
        all) in the backward pass instead of storing their activations. There is no BatchNorm or
        dropout in the encoder, so torch's checkpointing is exact as it is."""
        self.grad_checkpointing = checkpoint_stages(stages) * len(self.encoder.blocks) // NUM_STAGES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(x) + enc.pos_embed  # (B, 196, D)
        recompute = self.grad_checkpointing if self.training and torch.is_grad_enabled() else 0
        for index, block in enumerate(enc.blocks):
            x = checkpoint(block, x, use_reentrant=False) if index < recompute else block(x)
        return enc.norm(x)  # (B, 196, D)

    @staticmethod
    def _from_any_layout(state_dict, prefix, *args):
        for k, v in mae_vit_filter_fn(sub_state_dict(state_dict, prefix)).items():
            state_dict[prefix + k] = v


# --------------------------------------------------------------------------------------------
# state-dict layouts
# --------------------------------------------------------------------------------------------
#: Parts of MAE pretraining files that the encoder does not have: the decoder, its mask token
#: and the facebookresearch layout's class token and position table (the encoder's is fixed).
_PRETRAINING_ONLY = re.compile(r"^(decoder[._]|encoder_to_decoder\.|mask_token$|cls_token$|pos_embed$)")
_QKV_BIAS = re.compile(r"^(encoder\.blocks\.\d+\.attn\.)qkv\.bias$")


def mae_vit_layout(state_dict: dict) -> str:
    """Which layout a backbone state dict is in: 'release' (the release's OpenGraphAU backbone
    and this project's, `encoder.*`), 'mae_pytorch' (the same encoder inside an MAE pretraining
    file with its decoder) or 'timm' (facebookresearch's MAE files: timm ViT keys, `blocks.*`,
    a class token and full q/k/v biases)."""
    if any(k.startswith(("blocks.", "patch_embed.")) for k in state_dict):
        return "timm"
    if any(k.startswith(("decoder.", "encoder_to_decoder.")) or k == "mask_token" for k in state_dict):
        return "mae_pytorch"
    return "release"


def mae_vit_filter_fn(state_dict: dict) -> OrderedDict:
    """Pure key conversion (like timm's checkpoint_filter_fn) of a backbone state dict to
    MAEViTTokens' keys, which are the release's; the input is not modified.

    - release / this project (`encoder.*`, the backbone part of the release's stage-1 and stage-2
      OpenGraphAU checkpoints): unchanged;
    - MAE-pytorch pretraining files (the release's starting point): the decoder,
      `encoder_to_decoder` and `mask_token` are dropped;
    - facebookresearch MAE files (e.g. mae_pretrain_vit_base.pth, timm's ViT layout): keys get
      the `encoder.` prefix, each `attn.qkv.bias` (3D) becomes `attn.q_bias` (first D) and
      `attn.v_bias` (last D), and the decoder, mask token, class token and position table are
      dropped. Dropping the key bias is exact: it adds q_i . b_k to every score of query i,
      which the softmax cancels. The class token and the file's 2-D position table are not
      part of this encoder; such weights start the encoder from a slightly different function
      than they were pretrained as.
    Any other key is kept as it is, so strict loading names it.
    """
    timm_layout = mae_vit_layout(state_dict) == "timm"
    out = OrderedDict()
    for key, value in state_dict.items():
        if _PRETRAINING_ONLY.match(key):
            continue
        if timm_layout and key.startswith(("blocks.", "patch_embed.", "norm.")):
            key = "encoder." + key
        m = _QKV_BIAS.match(key)
        if m:  # (3D,) = [q | k | v]
            dim = value.shape[0] // 3
            out[m.group(1) + "q_bias"] = value[:dim]
            out[m.group(1) + "v_bias"] = value[2 * dim:]
            continue
        out[key] = value
    return out
