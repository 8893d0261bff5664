"""Loading ME-GraphAU checkpoints: this project's, the public release's, and stage 1 into stage 2.

Every key must match: a missing, unexpected or mis-shaped key is an error that names the keys,
so a wrong --arc or file never yields a silently half-random model. The one tolerated
difference is a stage-1 checkpoint loaded into a stage-2 model (the paper's recipe): the
shared keys load, the edge and graph parts start fresh, and both lists are logged.

A file is refused before any of that when its weights hold NaN or Inf (NonFiniteWeightsError)
or when the facts it stores contradict its weights (checkpoint_facts says which facts refuse).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .backbone import SwinTokens, swin_timm_to_microsoft
from .facts import ARCHS
from .megraphau import build_model
from .statedict import (  # noqa: F401  (the errors and load_weights_only are this module's API too)
    CheckpointFileError,
    CheckpointMismatchError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load_weights_only,
    non_finite_tensors,
    sub_state_dict,
)

log = logging.getLogger(__name__)

# keys of a stage-2 model that a stage-1 checkpoint cannot provide, and the stage-1 keys it drops
STAGE2_ONLY = ("head.edge_extractor.", "head.gnn.", "head.edge_fc.")
STAGE1_ONLY = ("head.gnn.",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DDP, torch.compile


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Returns (state_dict with wrapper prefixes removed, the whole checkpoint object).

    The file is read with ``torch.load(weights_only=True)`` and nothing else: a checkpoint that
    needs full unpickling (which can run arbitrary code) is refused, never loaded. A state dict
    with NaN or Inf in a floating-point tensor is refused (NonFiniteWeightsError naming the
    first tensors): a model that computes NaN would only report F1 0 or draw nothing. Only the
    weights are checked, never the optimizer state, so --resume-training needs no way around it.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointFileError(f"{path}: is a folder, not a checkpoint file")
        raise FileNotFoundError(f"checkpoint not found: {path} (checkpoints/checkpoints.txt lists the "
                                f"published files and where to get them)")
    obj = load_weights_only(path)
    if not isinstance(obj, dict):
        raise CheckpointFileError(f"{path} is not a checkpoint: expected a dict, got {type(obj).__name__}")
    state_dict = obj
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state_dict = obj[key]
            break
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointFileError(f"{path} holds no state dict (keys: {sorted(map(str, obj))[:10]})")
    clean = {}
    for k, v in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        clean[k] = v
    bad = non_finite_tensors(clean)
    if bad:
        raise NonFiniteWeightsError(f"{path}: refused: {len(bad)} weight tensor(s) hold NaN or Inf "
                                    f"({_key_list(bad, 3)}); the run that wrote it diverged or the file is "
                                    f"damaged: use an earlier checkpoint of the run")
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
    elif "backbone.encoder.patch_embed.proj.weight" in state_dict:  # the MAE ViT (mae_vit.py)
        dim, _, patch, _ = state_dict["backbone.encoder.patch_embed.proj.weight"].shape
        depth = _count_blocks(state_dict, "backbone.encoder.blocks.")
        arc = next((name for name, spec in ARCHS.items() if spec.family == "mae_vit"
                    and (spec.in_channels, spec.vit_patch, spec.vit_depth) == (dim, patch, depth)), None)
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
    checkpoint_facts(obj, state_dict, path)  # refuses facts that contradict the weights
    return load_state_dict_into(model, state_dict, obj, path)


def load_state_dict_into(model: nn.Module, state_dict: dict, obj: dict, path: str | Path) -> dict:
    """load_checkpoint for a file already read with read_checkpoint."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, SwinTokens) and "backbone.layers.0.downsample.reduction.weight" not in state_dict \
            and "backbone.layers.1.downsample.reduction.weight" in state_dict:
        # a Swin saved in timm's layout: compare keys in the release's (Microsoft) layout
        timm_backbone = sub_state_dict(state_dict, "backbone.")
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


# --------------------------------------------------------------------------------------------
# one way from a file to a model
# --------------------------------------------------------------------------------------------
#: What a checkpoint can say about itself besides its weights (None where it does not say).
FACT_KEYS = ("arc", "stage", "num_classes", "variant", "neighbor_num", "metric", "dataset", "dataset_config",
             "au_names", "au_descriptions", "crop_preset", "crop_size", "fold")


def checkpoint_facts(obj: dict, state_dict: dict | None = None, path: str | Path | None = None) -> dict:
    """The facts a checkpoint carries: this project's files store them under 'facts' (older ones
    under 'model_config', 'args', 'au_names', 'fold'); the release's files only have weights, so
    the model's facts come from the keys (infer_config) and the rest is None.

    Given the state dict, the weights decide the model's facts and the stored ones are checked
    against them (`path` names the file in the messages):
      num_classes, au_names (their count): a contradiction is refused (CheckpointFileError naming
        both values): the facts describe another model, and the AU names say what each output
        means, so outputs cannot be labelled from them.
      arc, stage, variant: the weights decide, with a warning; the model built from the weights
        is the one the file holds and the stored value is only a description of it.
      au_descriptions of another count: dropped with a warning (display text only).
    neighbor_num, metric and the dataset's facts leave no trace in the weights: taken as stored.
    """
    stored = obj.get("facts") if isinstance(obj.get("facts"), dict) else {}
    model_cfg = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else {}
    args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
    found = infer_config(state_dict) if state_dict is not None else {}
    legacy = {"dataset": args.get("dataset_name"), "dataset_config": args.get("dataset"),
              "au_names": obj.get("au_names"),
              "crop_size": args.get("crop_size"), "fold": obj.get("fold")}
    if state_dict is not None:
        _check_facts_against_weights(path if path is not None else "the checkpoint", found,
                                     (stored, model_cfg, legacy))
    facts = {}
    for key in FACT_KEYS:
        # the weights themselves are the truth for the model's shape; then what the file stores
        for source in (found, stored, model_cfg, legacy):
            if source.get(key) is not None:
                facts[key] = source[key]
                break
        else:
            facts[key] = None
    descriptions, n = facts["au_descriptions"], facts["num_classes"]
    if state_dict is not None and isinstance(descriptions, (list, tuple)) and n is not None \
            and len(descriptions) != n:
        log.warning("%s: its facts hold %d AU descriptions for %d AUs; the descriptions are not used",
                    path, len(descriptions), n)
        facts["au_descriptions"] = None
    return facts


def _check_facts_against_weights(path, found: dict, sources: tuple) -> None:
    """checkpoint_facts' check of the stored facts (`sources`, in the order they are read) against
    what the weights show (`found`, infer_config's)."""
    n = found.get("num_classes")
    for source in sources:
        stored_n = source.get("num_classes")
        if n is not None and stored_n is not None and stored_n != n:
            raise CheckpointFileError(f"{path}: its facts say num_classes {stored_n} but its weights predict {n} "
                                      f"AUs: the facts belong to another model; refused")
        names = source.get("au_names")
        if n is not None and isinstance(names, (list, tuple)) and len(names) != n:
            shown = ", ".join(map(str, names[:4])) + (", ..." if len(names) > 4 else "")
            raise CheckpointFileError(f"{path}: its facts name {len(names)} AUs ({shown}) but its weights predict "
                                      f"{n}: the outputs cannot be labelled; refused")
    for key, flag in (("arc", "--arc"), ("stage", "--stage"), ("variant", "variant")):
        stored = next((s[key] for s in sources if s.get(key) is not None), None)
        if found.get(key) is not None and stored is not None and stored != found[key]:
            log.warning("%s: its facts say %s %s but its weights are %s %s; the weights decide",
                        path, flag, stored, flag, found[key])


@dataclass
class LoadedModel:
    """A model built from a checkpoint file and loaded strictly (eval mode, on the CPU).

    facts: checkpoint_facts of the file, completed with what was used to build the model
    (arc, stage, num_classes, variant, neighbor_num, metric); 'source' is the file's path.
    info: load_checkpoint's return value (fresh/skipped keys, the whole checkpoint object).
    """
    model: nn.Module
    facts: dict
    info: dict = field(repr=False)

    @property
    def checkpoint(self) -> dict:
        return self.info["checkpoint"]


def agree_with_file(path, what: str, flag: str, given, in_file):
    """The file's value, unless a value was asked for that contradicts it (an error naming both)."""
    if given is not None and in_file is not None and given != in_file:
        raise CheckpointMismatchError(f"{flag} {given} contradicts {path}, which holds {what} {in_file}; "
                                      f"drop {flag} (the file decides) or use a file that fits")
    return in_file if in_file is not None else given


def load_model(path: str | Path, *, arc: str | None = None, stage: int | None = None,
               num_classes: int | None = None, variant: str | None = None,
               neighbor_num: int | Callable[[int], int] | None = None, metric: str | None = None,
               stage1_into_stage2: bool = False) -> LoadedModel:
    """Read a checkpoint, build the model it describes and load it strictly.

    The file decides the backbone, stage, AU count and variant (from its keys) and, for this
    project's files, the stage-1 graph's neighbor_num and metric. Anything passed here fills in
    what the file does not say; a value that contradicts the file is a CheckpointMismatchError
    naming both. `neighbor_num`/`metric` are defaults for files that do not store them (the
    release's): pass the dataset's neighbor_num, or a function of the file's AU count that
    returns it (e.g. 3 for DISFA's 8 AUs, 4 otherwise).

    stage1_into_stage2: the training recipe's initialisation of stage 2 from a stage-1 file (the
    shared keys load, the edge and graph parts start fresh). Otherwise a stage-1 file asked for
    as stage 2 is refused (its graph head would be random).
    """
    state_dict, obj = read_checkpoint(path)
    facts = checkpoint_facts(obj, state_dict, path)
    file_stage = facts["stage"]
    if stage1_into_stage2 and file_stage == 1 and stage == 2:
        build_stage = 2
    else:
        build_stage = agree_with_file(path, "stage", "--stage", stage, file_stage)
    build_arc = agree_with_file(path, "the backbone", "--arc", arc, facts["arc"])
    if build_arc is None:
        raise CheckpointMismatchError(f"cannot tell the backbone of {path} from its keys; pass --arc")
    n = facts["num_classes"]
    if num_classes is not None and n is not None and num_classes != n:
        raise CheckpointMismatchError(f"{path} predicts {n} AUs but the dataset asked for has {num_classes}: "
                                      f"use it with the dataset it was trained on (or drop --dataset)")
    if n is None:
        raise CheckpointMismatchError(f"{path}: no AU classifier (head.sc / head.main_sc) in the state dict; "
                                      f"not a ME-GraphAU or OpenGraphAU checkpoint")
    build_variant = agree_with_file(path, "the variant", "variant", variant, facts["variant"]) or "megraphau"
    stored_cfg = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else {}
    stored_facts = obj.get("facts") if isinstance(obj.get("facts"), dict) else {}
    if callable(neighbor_num):
        neighbor_num = neighbor_num(n)
    k = stored_facts.get("neighbor_num", stored_cfg.get("neighbor_num", neighbor_num or 4))
    build_metric = agree_with_file(path, "the graph metric", "--metric", metric,
                          stored_facts.get("metric", stored_cfg.get("metric"))) or "dots"
    model = build_model(build_stage, build_arc, n, int(k), build_metric, pretrained=False, variant=build_variant)
    info = load_state_dict_into(model, state_dict, obj, path)
    model.eval()
    facts.update(arc=build_arc, stage=build_stage, num_classes=n, variant=build_variant, neighbor_num=int(k),
                 metric=build_metric, source=str(path))
    return LoadedModel(model, facts, info)
