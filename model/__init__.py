"""ME-GraphAU models. Stable public API: `from model import build_model, load_checkpoint`."""
from .backbone import ARCHS, CHECKPOINT_DIR, MissingWeightsError, arc_spec
from .checkpoint import CheckpointMismatchError, infer_config, load_checkpoint, read_checkpoint
from .megraphau import MEFARG, VARIANTS, MEFARGConfig, build_model, model_config_dict

__all__ = ["ARCHS", "CHECKPOINT_DIR", "CheckpointMismatchError", "MEFARG", "MEFARGConfig",
           "MissingWeightsError", "arc_spec", "build_model", "infer_config", "load_checkpoint",
           "model_config_dict", "read_checkpoint", "VARIANTS"]
