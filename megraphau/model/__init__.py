"""ME-GraphAU models. Stable public API: `from model import build_model, load_checkpoint, load_model`.

Imports inside the package go one way: facts, statedict <- mae_vit <- backbone <- heads <-
megraphau (build_model) <- checkpoint (load_model) <- onnx_export.
"""
from .backbone import CHECKPOINT_DIR, MissingWeightsError
from .checkpoint import (
                         LoadedModel,
                         checkpoint_facts,
                         infer_config,
                         load_checkpoint,
                         load_model,
                         read_checkpoint,
)
from .facts import (
                    ARCHS,
                    AU_SET_FOR_NUM_CLASSES,
                    NUM_STAGES,
                    OPENGRAPHAU_NUM_CLASSES,
                    OPENGRAPHAU_NUM_MAIN,
                    OPENGRAPHAU_NUM_SIDE,
                    VARIANTS,
                    ArcSpec,
                    arc_spec,
                    au_set_for,
                    graph_nodes,
                    has_edge_logits,
                    variant_for,
)
from .mae_vit import mae_vit_filter_fn
from .megraphau import MEFARG, MEFARGConfig, build_model, model_config_dict
from .statedict import CheckpointFileError, CheckpointMismatchError, UnsafeCheckpointError

__all__ = ["ARCHS", "AU_SET_FOR_NUM_CLASSES", "ArcSpec", "CHECKPOINT_DIR", "CheckpointFileError",
           "CheckpointMismatchError", "LoadedModel", "MEFARG", "MEFARGConfig", "MissingWeightsError", "NUM_STAGES",
           "OPENGRAPHAU_NUM_CLASSES", "OPENGRAPHAU_NUM_MAIN", "OPENGRAPHAU_NUM_SIDE", "UnsafeCheckpointError",
           "VARIANTS", "arc_spec", "au_set_for", "build_model", "checkpoint_facts", "graph_nodes", "has_edge_logits",
           "infer_config", "load_checkpoint", "load_model", "mae_vit_filter_fn", "model_config_dict",
           "read_checkpoint", "variant_for"]
