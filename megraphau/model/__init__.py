"""ME-GraphAU models. Stable public API: `from model import build_model, load_checkpoint, load_model`."""
from .backbone import ARCHS, CHECKPOINT_DIR, MissingWeightsError, arc_spec
from .checkpoint import (
                         CheckpointFileError,
                         CheckpointMismatchError,
                         LoadedModel,
                         UnsafeCheckpointError,
                         checkpoint_facts,
                         infer_config,
                         load_checkpoint,
                         load_model,
                         read_checkpoint,
)
from .megraphau import MEFARG, VARIANTS, MEFARGConfig, build_model, model_config_dict

__all__ = ["ARCHS", "CHECKPOINT_DIR", "CheckpointFileError", "CheckpointMismatchError", "LoadedModel", "MEFARG",
           "MEFARGConfig", "MissingWeightsError", "UnsafeCheckpointError", "VARIANTS", "arc_spec", "build_model",
           "checkpoint_facts", "infer_config", "load_checkpoint", "load_model", "model_config_dict",
           "read_checkpoint"]
