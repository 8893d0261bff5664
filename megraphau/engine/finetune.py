"""--init CHECKPOINT: fine-tuning from a released or trained model (ME-GraphAU or OpenGraphAU).

The run builds the model its dataset asks for (AU count, variant, stage) and takes from the
file what fits:

- the same AU set (same count and variant, and the same AU names where the file states them):
  every key present in both with the same shape loads. Between stages the paper's rule holds
  (stage-only parts start fresh: a stage-1 file's graph into stage 2, or a stage-2 file's edge
  and graph parts into stage 1); within one stage every key must load.
- another AU set (e.g. a 12-AU BP4D model fine-tuned on one's own 41-AU OpenGraphAU labels, or
  SYNTH's 12 AUs into BP4D's 12): the backbone and global_linear load, the AU head starts fresh.

The backbone must be the file's (--arc); the keys loaded, skipped and left fresh are logged.
Unlike --resume (the model a stage starts from, every key checked), --init is for a different
task or AU set; unlike --resume-training nothing but weights is taken over.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from megraphau import utils
from megraphau.model import checkpoint_facts, read_checkpoint
from megraphau.utils import log

#: the parts of a model that do not depend on the AU set
TRUNK = ("backbone.", "global_linear.")


def _keys(keys: list, limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def same_au_set(model_cfg: dict, file_facts: dict, au_names) -> bool:
    """Whether the file's AU head predicts the run's AUs: count and variant agree and, where the
    file names its AUs, the names too (the release's files do not: their order is assumed)."""
    if file_facts["num_classes"] != model_cfg["num_classes"]:
        return False
    if (file_facts.get("variant") or "megraphau") != (model_cfg.get("variant") or "megraphau"):
        return False
    return file_facts.get("au_names") is None or list(file_facts["au_names"]) == list(au_names)


def init_from_checkpoint(model: nn.Module, path: str | Path, au_names) -> dict:
    """Load what fits of `path` into `model` (see the module docstring); returns {'loaded',
    'skipped', 'fresh' (key lists), 'same_au_set', 'facts' (the file's)}. utils.UserError when the
    backbone differs or the file is not an AU model."""
    state_dict, obj = read_checkpoint(path)
    facts = checkpoint_facts(obj, state_dict)
    cfg = model.config
    model_cfg = {"arc": cfg.arc, "stage": cfg.stage, "num_classes": cfg.num_classes, "variant": cfg.variant}
    if facts["num_classes"] is None:
        raise utils.UserError(f"--init {path}: no AU classifier (head.sc / head.main_sc) in it; not a ME-GraphAU "
                              f"or OpenGraphAU model")
    if facts["arc"] != model_cfg["arc"]:
        raise utils.UserError(f"--init {path} holds a {facts['arc']} backbone but the run builds "
                              f"{model_cfg['arc']}: pass --arc {facts['arc']}")
    same = same_au_set(model_cfg, facts, au_names)
    expected = model.state_dict()
    candidates = state_dict if same else {k: v for k, v in state_dict.items() if k.startswith(TRUNK)}
    loaded = {k: v for k, v in candidates.items() if k in expected and v.shape == expected[k].shape}
    bad_trunk = [k for k in expected if k.startswith(TRUNK) and k not in loaded]
    if bad_trunk:
        raise utils.UserError(f"--init {path}: {len(bad_trunk)} backbone keys do not fit the model "
                              f"({_keys(bad_trunk)}); is it a {model_cfg['arc']} model?")
    skipped = [k for k in state_dict if k not in loaded]
    fresh = [k for k in expected if k not in loaded]
    if same and facts["stage"] == model_cfg["stage"] and (skipped or fresh):
        raise utils.UserError(f"--init {path}: a stage-{facts['stage']} model of the same AUs that does not "
                              f"load whole ({len(skipped)} keys unused: {_keys(skipped)}; {len(fresh)} missing: "
                              f"{_keys(fresh)})")
    model.load_state_dict(loaded, strict=False)  # only keys of the model, each of its shape (above)
    what = ("the same AUs: every shared key" if same else
            f"another AU set ({facts['num_classes']} AUs, {facts.get('variant') or 'megraphau'}) than the run's "
            f"({model_cfg['num_classes']}): the backbone and global_linear")
    log.info("--init %s (stage %s, %s): %s; %d keys loaded, %d skipped (%s), %d start fresh (%s)", path,
             facts["stage"], facts["arc"], what, len(loaded), len(skipped), _keys(skipped), len(fresh), _keys(fresh))
    return {"loaded": list(loaded), "skipped": skipped, "fresh": fresh, "same_au_set": same, "facts": facts}
