"""Backbones of ME-GraphAU (Luo et al., IJCAI-ECAI 2022): torchvision ResNets and timm Swins,
and OpenGraphAU's MAE ViT-B/16 (mae_vit.py).

Each backbone maps an ImageNet-normalised (B, 3, 224, 224) batch to tokens (B, T, C_in), with
no pooling and no classifier: T = 49 (7 x 7 maps) for ResNets and Swins, 196 for the ViT. The
facts of each --arc (ARCHS) are in facts.py.

State dicts follow the public release: ResNets in torchvision's layout without `fc`; Swins in
Microsoft's original layout (each stage's patch merging at the end of that stage, with the
`relative_position_index` and `attn_mask` buffers saved). Internally the Swin is timm's model;
a state-dict hook writes Microsoft's layout, and loading goes through timm's own
`checkpoint_filter_fn`, so both layouts load.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from megraphau.errors import UserError
from megraphau.paths import CHECKPOINT_DIR

from .facts import ARCHS, ArcSpec, arc_spec, checkpoint_stages
from .mae_vit import MAEViTTokens, mae_vit_layout
from .statedict import CheckpointFileError, CheckpointMismatchError, load_weights_only, sub_state_dict

__all__ = ["ARCHS", "ArcSpec", "CHECKPOINT_DIR", "MAEViTTokens", "MissingWeightsError", "ResNetTokens", "SwinTokens",
           "arc_spec", "build_backbone", "load_imagenet_weights", "swin_timm_to_microsoft"]


@contextlib.contextmanager
def batchnorm_statistics_frozen(module: nn.Module):
    """Within the block, BatchNorm layers under `module` still normalise with batch statistics
    but leave their running statistics and batch counts as they were.

    Momentum 0 keeps the buffers bit for bit (r = 1 * r + 0 * batch) while the same operation
    runs with the same inputs, which torch's checkpointing verifies on recomputation."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def recompute_in_backward(function, x: torch.Tensor, norms_owner: nn.Module) -> torch.Tensor:
    """function(x) through torch's (non-reentrant) activation checkpointing: nothing inside is
    stored for backward; it runs again there. The rerun must not update BatchNorm running
    statistics a second time, so it runs with them frozen: the results, gradients and buffers
    equal those of a plain call."""
    calls = 0

    def run(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(inputs)
        with batchnorm_statistics_frozen(norms_owner):
            return function(inputs)

    return checkpoint(run, x, use_reentrant=False)


class ResNetTokens(torchvision.models.ResNet):
    """torchvision ResNet without its classifier; returns layer4's map as tokens."""

    def __init__(self, spec: ArcSpec):
        block = torchvision.models.resnet.BasicBlock if spec.resnet_block == "basic" \
            else torchvision.models.resnet.Bottleneck
        super().__init__(block, list(spec.resnet_layers))
        del self.fc  # the release's backbones have no classifier keys
        del self.avgpool
        self.grad_checkpointing = 0  # leading residual stages recomputed in backward

    def set_grad_checkpointing(self, stages: int | bool = True) -> None:
        """Recompute each residual block of the first `stages` stages (the stem goes with the
        first) in the backward pass instead of storing its activations (True: all four)."""
        self.grad_checkpointing = checkpoint_stages(stages)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # early stages hold most activations per FLOP: checkpointing them saves the most
        # memory for the least recomputation
        stages = self.grad_checkpointing if self.training and torch.is_grad_enabled() else 0
        x = recompute_in_backward(self._stem, x, self.bn1) if stages else self._stem(x)
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            for block in layer:
                x = recompute_in_backward(block, x, block) if index < stages else block(x)
        return x.flatten(2).transpose(1, 2)  # (B, 49, C_in) from (B, C_in, 7, 7)


_TIMM_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def swin_timm_to_microsoft(state_dict: dict, model: SwinTransformer) -> OrderedDict:
    """Pure inverse of timm's `checkpoint_filter_fn` for a headless Swin: timm layout -> Microsoft's.

    Moves each stage's leading patch merging (timm) to the end of the previous stage, and adds
    the `relative_position_index` and `attn_mask` buffers that Microsoft's checkpoints carry,
    in Microsoft's key order.
    """
    out = OrderedDict()
    downsample = []
    for key, value in state_dict.items():
        m = _TIMM_DOWNSAMPLE.match(key)
        if m:
            # timm: stage s opens with the merging of stage s-1's output; Microsoft: stage s-1 ends with it
            new_key = f"layers.{int(m.group(1)) - 1}.downsample." + key[m.end():]
            downsample.append((new_key, value))
            continue
        if downsample:  # Microsoft saves `reduction` before `norm`
            for k, v in sorted(downsample, key=lambda kv: "reduction" not in kv[0]):
                out[k] = v
            downsample = []
        block = re.match(r"^(layers\.\d+\.blocks\.\d+)\.norm1\.weight$", key)
        if block:
            mask = model.get_submodule(block.group(1)).attn_mask
            if mask is not None:  # blocks with shifted windows; Microsoft saves it first
                out[block.group(1) + ".attn_mask"] = mask
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            attn = model.get_submodule(key[: -len(".relative_position_bias_table")])
            out[key.replace("relative_position_bias_table", "relative_position_index")] = \
                attn.relative_position_index
    for k, v in downsample:
        out[k] = v
    return out


class SwinTokens(SwinTransformer):
    """timm's Swin Transformer (patch 4, window 7, 224) returning the last stage's tokens after
    the final LayerNorm, with state dicts in Microsoft's layout (see module docstring)."""

    def __init__(self, spec: ArcSpec):
        super().__init__(img_size=224, patch_size=4, window_size=7, embed_dim=spec.swin_embed_dim,
                         depths=spec.swin_depths, num_heads=spec.swin_heads, num_classes=0,
                         drop_path_rate=spec.drop_path_rate)
        self._register_state_dict_hook(SwinTokens._to_microsoft_layout)
        self._register_load_state_dict_pre_hook(SwinTokens._from_any_layout, with_module=True)

    @torch.jit.ignore
    def set_grad_checkpointing(self, stages: int | bool = True) -> None:
        """timm's gradient checkpointing (each block of a stage recomputed in backward) for the
        first `stages` stages (True: all four). Swin has no BatchNorm, so timm's own is exact."""
        stages = checkpoint_stages(stages)
        for index, stage in enumerate(self.layers):
            stage.grad_checkpointing = index < stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)  # (B, 7, 7, C_in), after the final norm
        return x.flatten(1, 2)  # (B, 49, C_in)

    @staticmethod
    def _to_microsoft_layout(module, state_dict, prefix, local_metadata):
        for k, v in swin_timm_to_microsoft(sub_state_dict(state_dict, prefix), module).items():
            state_dict[prefix + k] = v
        return state_dict

    @staticmethod
    def _from_any_layout(module, state_dict, prefix, *args):
        local = sub_state_dict(state_dict, prefix)
        # timm's own converter: moves Microsoft's merging layers, drops the derived buffers
        for k, v in checkpoint_filter_fn(local, module).items():
            state_dict[prefix + k] = v


def build_backbone(arc: str) -> nn.Module:
    spec = arc_spec(arc)
    if spec.family == "mae_vit":
        return MAEViTTokens(spec.in_channels, spec.vit_depth, spec.vit_heads, spec.vit_patch, spec.drop_path_rate)
    return ResNetTokens(spec) if spec.family == "resnet" else SwinTokens(spec)


class MissingWeightsError(UserError, FileNotFoundError):
    """The backbone's pretrained weights file is not there; the message says where to get it."""


def missing_weights_message(arc: str, path: Path) -> str:
    spec = arc_spec(arc)
    what = "MAE ImageNet-1k pretraining weights" if spec.family == "mae_vit" else "ImageNet weights"
    text = (f"{what} for --arc {arc} not found: {path}. Download {spec.url} and save it "
            f"as {CHECKPOINT_DIR / spec.pretrained_file} (see checkpoints/checkpoints.txt), or pass "
            f"--pretrained PATH.")
    if spec.family == "mae_vit":
        text += (" An MAE-pytorch pretraining checkpoint (the release's starting point, keys 'encoder.*') "
                 "loads as well.")
    return text


def load_imagenet_weights(backbone: nn.Module, arc: str, path: str | Path | None = None) -> Path | None:
    """Initialise `backbone` from the original ImageNet file of `arc`.

    path=None looks for the release's file name in checkpoints/ and, if it is absent, warns
    loudly and leaves the backbone random (returns None). An explicit path that does not exist
    is an error. Keys are checked strictly: a file of another architecture is refused.
    """
    spec = arc_spec(arc)
    explicit = path is not None
    path = Path(path) if explicit else CHECKPOINT_DIR / spec.pretrained_file
    if not path.is_file():
        if explicit:
            raise MissingWeightsError(missing_weights_message(arc, path))
        warnings.warn("\n" + "!" * 80 + "\n" + missing_weights_message(arc, path)
                      + "\nTraining starts from a RANDOM backbone: expect much lower accuracy.\n"
                      + "!" * 80, stacklevel=2)
        return None
    obj = load_weights_only(path)  # weights only: a file that could run code is refused, never loaded
    state_dict = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else obj
    if not isinstance(state_dict, dict):
        raise CheckpointFileError(f"{path}: holds no state dict ({type(obj).__name__}); expected ImageNet "
                                  f"weights of {arc}")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    # the ImageNet classifiers are not part of the backbone
    state_dict = {k: v for k, v in state_dict.items() if not re.match(r"^(fc|head)\.", k)}
    if isinstance(backbone, MAEViTTokens) and mae_vit_layout(state_dict) == "timm":
        warnings.warn(f"{path}: facebookresearch MAE weights; their class token and 2-D position table are "
                      f"dropped (the release's encoder has a fixed 1-D table and no class token), so the "
                      f"encoder starts close to, not exactly at, the pretrained function", stacklevel=2)
    try:
        result = backbone.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shapes of another architecture
        first = str(err).strip().splitlines()
        raise CheckpointMismatchError(f"{path} does not hold ImageNet weights of {arc}: "
                                      f"{' '.join(first[1:3]).strip() or first[0]:.300}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{path} does not hold ImageNet weights of {arc}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}")
    return path
