"""Loading ME-GraphAU checkpoints: this project's, the public release's, and stage 1 into stage 2.

Every key must match: a missing, unexpected or mis-shaped key is an error that names the keys,
so a wrong --arc or file never yields a silently half-random model. The one tolerated
difference is a stage-1 checkpoint loaded into a stage-2 model (the paper's recipe): the
shared keys load, the edge and graph parts start fresh, and both lists are logged.
"""
from __future__ import annotations

import logging
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .backbone import SwinTokens, _sub_state_dict, swin_timm_to_microsoft

log = logging.getLogger(__name__)

# keys of a stage-2 model that a stage-1 checkpoint cannot provide, and the stage-1 keys it drops
STAGE2_ONLY = ("head.edge_extractor.", "head.gnn.", "head.edge_fc.")
STAGE1_ONLY = ("head.gnn.",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DDP, torch.compile


class CheckpointMismatchError(ValueError):
    pass


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Returns (state_dict with wrapper prefixes removed, the whole checkpoint object)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights_only" not in str(exc):
                raise
            warnings.warn(f"{path} holds Python objects besides tensors; loading it with full "
                          f"unpickling (only do this for files you trust)")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, or not a torch file at all
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a checkpoint: expected a dict, got {type(obj).__name__}")
    state_dict = obj
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state_dict = obj[key]
            break
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict (keys: {sorted(obj)[:10]})")
    clean = {}
    for k, v in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        clean[k] = v
    return clean, obj


def _count_blocks(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(idx) + 1 if idx else 0


def infer_config(state_dict: dict) -> dict:
    """What a state dict was trained as: {'arc', 'stage', 'num_classes', 'variant'} (None where unknown)."""
    arc = None
    if "backbone.conv1.weight" in state_dict:
        blocks = _count_blocks(state_dict, "backbone.layer3.")
        bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
        arc = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50",
               (23, True): "resnet101", (36, True): "resnet152"}.get((blocks, bottleneck))
    elif "backbone.patch_embed.proj.weight" in state_dict:
        dim = state_dict["backbone.patch_embed.proj.weight"].shape[0]
        depth = _count_blocks(state_dict, "backbone.layers.2.blocks.")
        arc = {(96, 6): "swin_transformer_tiny", (96, 18): "swin_transformer_small",
               (128, 18): "swin_transformer_base"}.get((dim, depth))
    stage = 2 if "head.edge_extractor.FAM.linear_q.weight" in state_dict else 1
    if "head.main_sc" in state_dict:
        variant = "opengraphau"
        num_classes = state_dict["head.main_sc"].shape[0] + state_dict.get("head.sub_sc", torch.empty(0)).shape[0]
    elif "head.sc" in state_dict:
        variant, num_classes = "megraphau", state_dict["head.sc"].shape[0]
    else:
        variant, num_classes = None, None
    return {"arc": arc, "stage": stage, "num_classes": num_classes, "variant": variant}


def _describe(cfg: dict) -> str:
    variant = " (OpenGraphAU)" if cfg.get("variant") == "opengraphau" else ""
    return f"stage {cfg.get('stage')}, --arc {cfg.get('arc')}, {cfg.get('num_classes')} AUs{variant}"


def _model_config(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    return {k: getattr(cfg, k, None) for k in ("arc", "stage", "num_classes", "variant")}


def _key_list(keys: list, limit: int = 8) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load `path` into `model`; see the module docstring for what is accepted.

    Returns {'path', 'epoch', 'fresh_keys', 'skipped_keys', 'checkpoint_config', 'checkpoint'}
    (fresh/skipped are non-empty only for a stage-1 checkpoint loaded into a stage-2 model).
    """
    state_dict, obj = read_checkpoint(path)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, SwinTokens) and "backbone.layers.0.downsample.reduction.weight" not in state_dict \
            and "backbone.layers.1.downsample.reduction.weight" in state_dict:
        # a Swin saved in timm's layout: compare keys in the release's (Microsoft) layout
        timm_backbone = _sub_state_dict(state_dict, "backbone.")
        try:
            converted = swin_timm_to_microsoft(timm_backbone, backbone)
        except AttributeError:  # blocks the model does not have: reported as unexpected keys below
            converted = timm_backbone
        state_dict = {**{"backbone." + k: v for k, v in converted.items()}, **state_dict}

    expected = model.state_dict()
    ckpt_cfg = infer_config(state_dict)
    model_cfg = _model_config(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]

    stage1_into_stage2 = ckpt_cfg["stage"] == 1 and model_cfg["stage"] == 2
    fresh, skipped = [], []
    if stage1_into_stage2:
        fresh = [k for k in missing if k.startswith(STAGE2_ONLY)]
        skipped = [k for k in unexpected if k.startswith(STAGE1_ONLY)]
        missing = [k for k in missing if k not in fresh]
        unexpected = [k for k in unexpected if k not in skipped]

    if missing or unexpected or mismatched:
        lines = [f"checkpoint {path} does not fit the model ({_describe(model_cfg)}); "
                 f"the checkpoint looks like {_describe(ckpt_cfg)}."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_key_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_key_list(unexpected)}")
        if mismatched:
            shapes = [f"{k} checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                      for k in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_key_list(shapes)}")
        lines.append("  Check --arc, --stage and the dataset (number of AUs) against the file.")
        raise CheckpointMismatchError("\n".join(lines))

    if stage1_into_stage2:
        shared = {k: v for k, v in state_dict.items() if k not in skipped}
        model.load_state_dict(shared, strict=False)
        log.info("loaded stage-1 checkpoint %s into a stage-2 model: %d shared keys loaded; "
                 "%d stage-1 keys skipped (%s); %d stage-2 keys start fresh (%s)",
                 path, len(shared), len(skipped), _key_list(skipped, 4), len(fresh), _key_list(fresh, 4))
    else:
        model.load_state_dict(state_dict, strict=True)
    return {"path": str(path), "epoch": obj.get("epoch"), "fresh_keys": fresh, "skipped_keys": skipped,
            "checkpoint_config": ckpt_cfg, "checkpoint": obj}
