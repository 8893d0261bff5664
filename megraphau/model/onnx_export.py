"""ONNX export and ONNX Runtime inference for ME-GraphAU / OpenGraphAU models.

    from megraphau.model import load_model
    from megraphau.model.onnx_export import export_onnx, OnnxAUModel

    report = export_onnx(load_model("MEFARG_resnet50_BP4D_fold1.pth"), "me_graphau.onnx")
    onnx_model = OnnxAUModel("me_graphau.onnx", threads=2)
    probs, edge_logits = onnx_model(images)  # as the PyTorch stage-2 model; facts in onnx_model.facts

The exported graph takes ``images`` (B, 3, S, S), ImageNet-normalised float32 RGB (the same
input as the PyTorch model; normalisation is not part of the graph), with a dynamic batch axis,
and returns ``probs`` (B, N) and, for stage-2 ME-GraphAU models, ``edge_logits`` (B, N*N, 4).
The model's facts (AU names, crop, stage, backbone, source checkpoint and its sha256, versions)
are stored in the file's metadata_props: each under its own key, and all of them as one JSON
object under ``megraphau`` (METADATA_KEY), which is what OnnxAUModel reads.

Importing this module needs neither onnx nor onnxruntime: export needs ``onnx`` and
``onnxscript`` (torch's dynamo exporter), inference only ``onnxruntime``.

This module is a little over 500 lines: export, its self-check and the runtime model read
and write one metadata format, kept together so the two sides cannot drift apart.
"""
from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from megraphau.errors import OUTPUT_ERRNOS, UserError, output_write_error
from megraphau.provenance import sha256_file

from .checkpoint import FACT_KEYS, LoadedModel
from .facts import ARCHS

#: ImageNet normalisation of the model's input (the same values as dataset.IMAGENET_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

METADATA_KEY = "megraphau"  # one JSON object holding all of the metadata below
METADATA_FORMAT = "megraphau-onnx/1"
INPUT_NAME = "images"
MIN_OPSET = 18  # the dynamo exporter's own opsets; older ones would need a version conversion
MIN_TORCH = (2, 6)  # torch.onnx.export(dynamo=True) with dynamic_shapes and ONNXProgram.save
VERIFY_BATCHES = (1, 5)
TOLERANCE = 1e-4

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "METADATA_KEY", "MissingDependencyError", "OnnxAUModel",
           "OnnxExportError", "OnnxModelError", "OnnxVerificationError", "export_onnx", "is_onnx_file", "read_metadata",
           "verify_onnx"]


class MissingDependencyError(UserError, ImportError):
    """An optional package (onnx, onnxscript, onnxruntime) is not installed."""


class OnnxVerificationError(UserError, RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's; `.differences` holds what was measured."""

    def __init__(self, message: str, differences: dict):
        super().__init__(message)
        self.differences = differences


class OnnxExportError(UserError, ValueError):
    """The export cannot be made as asked (crop size, opset, model size); one line saying why."""


class OnnxModelError(UserError, ValueError):
    """The file is not a readable ONNX model exported by this module (or does not fit the input)."""


def _require(package: str, pip_name: str | None = None, what: str = "ONNX export"):
    try:
        return __import__(package)
    except ImportError:
        raise MissingDependencyError(f"{what} needs the package '{pip_name or package}': "
                                     f"pip install {pip_name or package}") from None


def _torch_version() -> tuple:
    parts = []
    for piece in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def _plain(value):
    """JSON-friendly copy: tuples to lists, paths and other objects to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------
def build_metadata(facts: dict, crop_size: int, output_names: Sequence[str], opset: int,
                   batch_dynamic: bool, provenance: dict | None = None) -> dict:
    """The JSON object stored under METADATA_KEY (see the module docstring)."""
    facts = _plain({**{k: None for k in (*FACT_KEYS, "source")}, **facts})
    source = facts.get("source")
    source_info = {"path": source, "sha256": None, "bytes": None}
    if source and Path(source).is_file():
        source_info.update(sha256=sha256_file(source), bytes=Path(source).stat().st_size)
    batch = "batch" if batch_dynamic else 1
    n = facts.get("num_classes")
    outputs = {"probs": {"shape": [batch, n], "meaning": "AU occurrence probabilities in [0, 1] (cosine "
                                                         "similarity; threshold 0.5), in the order of au_names"}}
    if "edge_logits" in output_names:
        outputs["edge_logits"] = {
            "shape": [batch, n * n if n else None, 4],
            "meaning": "co-occurrence logits of each ordered AU pair (i, j), row i*N + j, classes "
                       "2*a_i + a_j (softmax over the last axis)"}
    return {
        "format": METADATA_FORMAT,
        "facts": facts,
        "input": {"name": INPUT_NAME, "shape": [batch, 3, crop_size, crop_size], "dtype": "float32",
                  "layout": "NCHW, RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "normalisation": "(pixel / 255 - mean) / std per RGB channel, on a face crop of "
                                   "crop_size x crop_size (crop_preset)"},
        "outputs": outputs,
        "source": source_info,
        "export": {"exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                   "onnxscript": _package_version("onnxscript"), "onnx": _package_version("onnx"),
                   "opset": opset, "batch_dynamic": batch_dynamic},
        "provenance": _plain(provenance) if provenance is not None else None,
    }


def metadata_props(meta: dict) -> dict:
    """metadata_props entries (str -> str): the whole object under METADATA_KEY, and each fact on
    its own key for viewers such as Netron (strings as they are, anything else as JSON)."""
    facts, inp, export = meta["facts"], meta["input"], meta["export"]
    flat = {
        "au_names": facts.get("au_names"), "au_descriptions": facts.get("au_descriptions"),
        "crop_preset": facts.get("crop_preset"), "crop_size": facts.get("crop_size"),
        "input_size": inp["shape"], "mean": inp["mean"], "std": inp["std"],
        "stage": facts.get("stage"), "arc": facts.get("arc"), "variant": facts.get("variant"),
        "num_classes": facts.get("num_classes"), "neighbor_num": facts.get("neighbor_num"),
        "metric": facts.get("metric"), "dataset": facts.get("dataset"), "fold": facts.get("fold"),
        "outputs": list(meta["outputs"]),
        "source": meta["source"]["path"], "source_sha256": meta["source"]["sha256"],
        "exporter": export["exporter"], "torch_version": export["torch"],
        "onnxscript_version": export["onnxscript"], "opset": export["opset"],
        "provenance": meta["provenance"],
    }
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}
    props[METADATA_KEY] = json.dumps(meta, sort_keys=False)
    return props


def read_metadata(path: str | os.PathLike) -> dict:
    """The METADATA_KEY object of an exported file (opens it with onnxruntime)."""
    return OnnxAUModel(path).metadata


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def _model_and_facts(loaded) -> tuple[nn.Module, dict]:
    if isinstance(loaded, LoadedModel):
        return loaded.model, dict(loaded.facts)
    if isinstance(loaded, (tuple, list)) and len(loaded) == 2 and isinstance(loaded[0], nn.Module):
        return loaded[0], dict(loaded[1] or {})
    raise TypeError(f"export_onnx takes a LoadedModel (model.load_model) or a (model, facts) pair, "
                    f"got {type(loaded).__name__}")


def _as_outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _output_names(count: int) -> list[str]:
    if count == 1:
        return ["probs"]
    if count == 2:
        return ["probs", "edge_logits"]
    raise ValueError(f"the model returns {count} outputs; expected probs or (probs, edge_logits)")


def _check_crop(facts: dict, crop_size: int) -> None:
    if crop_size < 32:
        raise OnnxExportError(f"crop size {crop_size}: the backbones need at least 32 x 32 pixels")
    arc = facts.get("arc") or ""
    fixed = ARCHS[arc].crop_size if arc in ARCHS else None
    if fixed is not None and crop_size != fixed:
        raise OnnxExportError(f"--arc {arc} takes {fixed} x {fixed} crops only (its windows and "
                         f"position tables are fixed), got crop size {crop_size}")


def export_onnx(loaded: LoadedModel | tuple, path: str | os.PathLike, opset: int | None = None,
                batch_dynamic: bool = True, verify: bool = True, *, crop_size: int | None = None,
                provenance: dict | None = None, tolerance: float = TOLERANCE) -> dict:
    """Export a model to ONNX with torch's dynamo exporter, store its facts in the file's
    metadata and (verify=True) check ONNX Runtime against PyTorch before reporting success.

    loaded: model.load_model's LoadedModel, or a (model, facts) pair (facts as LoadedModel.facts).
    path: the .onnx file to write (one file: weights inside). It appears only once verified;
        a file that fails verification is left as `path + '.failed'` and OnnxVerificationError
        (with the measured differences) is raised.
    opset: the ONNX opset (>= 18); None: the exporter's default.
    batch_dynamic: a dynamic batch axis (else the graph takes batch 1 only).
    crop_size: the input's height and width; None: facts['crop_size'], else 224. It is stored as
        facts['crop_size'] (the size the graph takes). Swin and ViT backbones take 224 only.
    provenance: any JSON-able dict, stored as it is under 'provenance'.
    tolerance: probabilities within `tolerance` absolute; edge logits within `tolerance` relative
        to their scale, max|a - b| / max(1, max|a|). An output beyond it is checked against a
        float64 copy of the model and passes if ONNX Runtime is about as close to it as PyTorch's
        own float32 result (verify_onnx explains why and how).

    Returns {'path', 'bytes', 'opset', 'outputs', 'crop_size', 'batch_dynamic', 'export_s',
    'verify_s', 'max_diff': {output: worst over batches}, 'batches': {batch: {output: diff}},
    'fp64', 'accepted_by_fp64'} (verify_onnx's; the last four are empty when verify=False).
    """
    if _torch_version() < MIN_TORCH:
        raise MissingDependencyError(f"ONNX export needs torch >= {'.'.join(map(str, MIN_TORCH))} (its dynamo "
                                     f"exporter); this is torch {torch.__version__}")
    _require("onnxscript")
    _require("onnx")
    if opset is not None and int(opset) < MIN_OPSET:
        raise OnnxExportError(f"opset {opset}: the dynamo exporter writes opset {MIN_OPSET} or newer")
    model, facts = _model_and_facts(loaded)
    _check_finite_weights(model, facts)
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weight_bytes > 1.8e9:
        raise OnnxExportError(f"the model holds {weight_bytes / 1e9:.1f} GB of weights; a single .onnx file "
                         f"takes less than 2 GB")
    if crop_size and facts.get("crop_size") and int(crop_size) != int(facts["crop_size"]):
        warnings.warn(f"exporting at crop size {crop_size}, but the model was trained at {facts['crop_size']}: "
                      f"its outputs on {crop_size}-pixel crops are not those it was evaluated with", stacklevel=2)
    crop_size = int(crop_size or facts.get("crop_size") or 224)
    _check_crop(facts, crop_size)
    facts["crop_size"] = crop_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = torch.randn(2 if batch_dynamic else 1, 3, crop_size, crop_size,
                              generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            names = _output_names(len(_as_outputs(model(example))))
        dynamic = ({0: torch.export.Dim("batch")},) if batch_dynamic else None
        start = time.perf_counter()
        program = torch.onnx.export(model, (example,), None, dynamo=True, verbose=False,
                                    input_names=[INPUT_NAME], output_names=names, opset_version=opset,
                                    dynamic_shapes=dynamic, optimize=True)
        used_opset = int(program.model.opset_imports.get("", opset or 0))
        meta = build_metadata(facts, crop_size, names, used_opset, batch_dynamic, provenance)
        program.model.metadata_props.update(metadata_props(meta))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            # one file, weights inside: protobuf's 2 GB limit is far above these models (Swin-B with
            # 41 AUs: about 0.4 GB), so torch never switches to an external data file here
            program.save(tmp, external_data=False)
        except OSError as err:  # a full disk, a read-only folder: one line naming the file
            _remove(tmp)
            if err.errno not in OUTPUT_ERRNOS:
                raise
            raise output_write_error(err, path) from None
        except BaseException:
            _remove(tmp)
            raise
        export_s = time.perf_counter() - start
        result = {"path": str(path), "bytes": tmp.stat().st_size, "opset": used_opset, "outputs": names,
                  "crop_size": crop_size, "batch_dynamic": batch_dynamic, "export_s": export_s,
                  "verify_s": 0.0, "max_diff": {}, "batches": {}, "fp64": {}, "accepted_by_fp64": []}
        if verify:
            start = time.perf_counter()
            try:
                checked = verify_onnx(tmp, model, crop_size=crop_size,
                                      batches=VERIFY_BATCHES if batch_dynamic else (1,), tolerance=tolerance)
            except OnnxVerificationError as err:
                failed = path.with_name(path.name + ".failed")
                os.replace(tmp, failed)
                raise OnnxVerificationError(f"{err} (the file is left as {failed})", err.differences) from None
            except BaseException:
                _remove(tmp)
                raise
            result.update(checked, verify_s=time.perf_counter() - start)
        os.replace(tmp, path)
        return result
    finally:
        model.train(was_training)


def _check_finite_weights(model: nn.Module, facts: dict) -> None:
    """ValueError naming the checkpoint when weights or buffers hold NaN or Inf: every output would
    be NaN, and the verification would blame ONNX Runtime for it."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{facts.get('source') or 'the model'}: {len(bad)} of {len(tensors)} weight tensors hold "
                         f"NaN or Inf (first: {bad[0]}), so its outputs are not finite; not exported")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _differences(name: str, ours: np.ndarray, ref: np.ndarray, scale_of: np.ndarray | None = None) -> float:
    """probs: max |a - b|; edge logits: max |a - b| / max(1, max |a|) (a: `scale_of`, by default
    the reference b, PyTorch's)."""
    if ours.shape != ref.shape or not np.isfinite(ours).all():
        return float("inf")
    if not ref.size:
        return 0.0
    diff = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    if name == "edge_logits":
        diff /= max(1.0, float(np.abs(ref if scale_of is None else scale_of).max()))
    return diff


def verify_onnx(path: str | os.PathLike, model: nn.Module, crop_size: int,
                batches: Sequence[int] = VERIFY_BATCHES, tolerance: float = TOLERANCE, seed: int = 0) -> dict:
    """Run the file with ONNX Runtime and `model` with PyTorch on the same random inputs (one per
    batch size) and compare (see export_onnx for the measures).

    An output that differs by more than `tolerance` gets a second look against the exact result,
    a float64 copy of the model on the same inputs: float32 rounding alone moves stage-2 edge
    logits of a ResNet-50 by about 1e-4 of their scale, in PyTorch as in ONNX Runtime (their
    attention softmaxes and BatchNorms amplify it), so two correct float32 results can differ by
    twice that. The output passes when PyTorch's own float32 result is within 10 x tolerance of
    float64 (else the model is not deterministic or not float32-stable, and nothing is
    accepted) and ONNX Runtime's is within max(tolerance, 2 x PyTorch's error) of it.

    Returns {'max_diff': {output: worst over batches}, 'batches': {batch: {output: diff}},
    'fp64': {batch: {output: {'onnxruntime': err, 'pytorch': err}}} (only where the second look
    ran), 'accepted_by_fp64': [outputs]}; OnnxVerificationError with these when an output fails.
    """
    session = OnnxAUModel(path, require_metadata=False)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    per_batch, worst, runs = {}, {}, []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            images = torch.randn(batch, 3, crop_size, crop_size, generator=generator)
            with torch.no_grad():
                ref = [t.detach().float().cpu().numpy() for t in _as_outputs(model(images.to(device)))]
            broken = [name for name, r in zip(session.output_names, ref) if not np.isfinite(r).all()]
            if broken:  # PyTorch's own result: nothing to compare ONNX Runtime with
                raise OnnxVerificationError(f"the PyTorch model's own {', '.join(broken)} are not finite (NaN or Inf) "
                                            f"at batch {batch}: its weights or outputs are broken, not the ONNX "
                                            f"export", {"batches": per_batch, "non_finite": broken})
            ours = session.run(images.numpy())
            if len(ours) != len(ref):
                raise OnnxVerificationError(f"ONNX model returns {len(ours)} outputs, PyTorch {len(ref)}",
                                            {"batches": per_batch})
            diffs = {name: _differences(name, o, r) for name, o, r in zip(session.output_names, ours, ref)}
            per_batch[batch] = diffs
            runs.append((batch, images, ref, ours))
            for name, value in diffs.items():
                worst[name] = max(worst.get(name, 0.0), value)
        result = {"max_diff": worst, "batches": per_batch, "fp64": {}, "accepted_by_fp64": []}
        bad = sorted(name for name, value in worst.items() if not value <= tolerance)
        if bad:
            result["fp64"] = _fp64_errors(model, session.output_names, runs, bad)
            accepted = [name for name in bad if all(_fp64_accepts(d[name], tolerance) for d in result["fp64"].values())]
            result["accepted_by_fp64"] = accepted
            failing = [name for name in bad if name not in accepted]
            if failing:
                raise OnnxVerificationError(_failure_message(result, tolerance), result)
        return result
    finally:
        model.train(was_training)


def _fp64_errors(model: nn.Module, names: Sequence[str], runs: list, outputs: Sequence[str]) -> dict:
    """{batch: {output: {'onnxruntime': err, 'pytorch': err}}}: each float32 result against a
    float64 copy of the model (measured as _differences, the scale from the float64 result)."""
    exact = copy.deepcopy(model).to("cpu", torch.float64).eval()
    errors = {}
    with torch.no_grad():
        for batch, images, ref, ours in runs:
            ref64 = [t.numpy() for t in _as_outputs(exact(images.double()))]
            errors[batch] = {name: {"onnxruntime": _differences(name, o.astype(np.float64), r64, r64),
                                    "pytorch": _differences(name, r.astype(np.float64), r64, r64)}
                             for name, o, r, r64 in zip(names, ours, ref, ref64) if name in outputs}
    del exact
    return errors


def _fp64_accepts(errors: dict, tolerance: float) -> bool:
    return errors["pytorch"] <= 10 * tolerance and errors["onnxruntime"] <= max(tolerance, 2 * errors["pytorch"])


def _failure_message(result: dict, tolerance: float) -> str:
    measured = "; ".join(f"batch {b}: " + ", ".join(f"{n} {v:.3g}" for n, v in d.items())
                         for b, d in result["batches"].items())
    exact = "; ".join(f"batch {b}: " + ", ".join(f"{n} ONNX Runtime {e['onnxruntime']:.3g}, PyTorch {e['pytorch']:.3g}"
                                                 for n, e in d.items())
                      for b, d in result["fp64"].items())
    return (f"ONNX Runtime disagrees with PyTorch beyond {tolerance:g} (probs: max abs difference; edge_logits: "
            f"relative to max(1, max |logit|)): {measured}; against a float64 copy of the model: {exact}")


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def is_onnx_file(path: str | os.PathLike) -> bool:
    """True for a name ending in .onnx, or a file that starts like an ONNX model (its first
    protobuf field, ir_version); torch checkpoints (zip or pickle) are False."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and 1 <= head[1] <= 0x20


class OnnxAUModel:
    """An exported model run by ONNX Runtime, called like the PyTorch model.

    model = OnnxAUModel("me_graphau.onnx", threads=2)
    probs = model(images)                  # stage 1 / OpenGraphAU: (B, N) torch tensor
    probs, edge_logits = model(images)     # stage-2 ME-GraphAU
    model.facts                            # the same keys as LoadedModel.facts

    images: (B, 3, S, S) ImageNet-normalised float32, a numpy array or torch tensor (S =
    model.crop_size). threads: ONNX Runtime's intra-op threads (None: its default, all cores).
    providers: ONNX Runtime execution providers (None: CPU). session_config: extra session
    config entries, e.g. {"session.intra_op.allow_spinning": "0"} on a CPU shared with others.
    require_metadata: refuse files without this module's metadata (the default).
    """

    training = False

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: Sequence[Any] | None = None, *, session_config: dict | None = None,
                 require_metadata: bool = True):
        ort = _require("onnxruntime", what="running an ONNX model")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # int8: fused QLinear kernels
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one image batch: no inter-op parallelism
        options.enable_mem_pattern = True  # fixed batch shapes: planned memory reused across runs
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            text = str(exc).strip().splitlines()
            raise OnnxModelError(f"{self.path}: not a readable ONNX model ({type(exc).__name__}: "
                                 f"{text[0] if text else ''})") from None
        self.threads = threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxModelError(f"{self.path}: expected one input (images), found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # ('batch', 3, S, S)
        self.output_names = [o.name for o in self.session.get_outputs()]
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY in props:
            try:
                self.metadata = json.loads(props[METADATA_KEY])
            except ValueError as err:
                raise OnnxModelError(f"{self.path}: its '{METADATA_KEY}' metadata is not valid JSON ({err}); "
                                     f"export the model again with tool/export_onnx.py") from None
            if not isinstance(self.metadata, dict) or not isinstance(self.metadata.get("facts", {}), dict):
                raise OnnxModelError(f"{self.path}: its '{METADATA_KEY}' metadata is not a JSON object with "
                                     f"'facts'; export the model again with tool/export_onnx.py")
            if require_metadata:  # loading for inference (verify_onnx compares the raw graph with PyTorch)
                self._check_au_count()
        elif require_metadata:
            raise OnnxModelError(f"{self.path}: no '{METADATA_KEY}' metadata; export the model with "
                                 f"tool/export_onnx.py")
        else:
            self.metadata = {}

    def _check_au_count(self) -> None:
        """The weights decide the AU count: OnnxModelError naming the file when the metadata's
        num_classes or au_names disagree with the graph's probs output (static in exported files)."""
        shape = self.session.get_outputs()[0].shape
        outputs, names = (shape[-1] if shape else None), self.facts.get("au_names")
        claims = {"num_classes": self.facts.get("num_classes"), "au_names": len(names) if names else None}
        wrong = [f"{v} AUs ({k})" for k, v in claims.items() if isinstance(outputs, int) and v not in (None, outputs)]
        if wrong:
            raise OnnxModelError(f"{self.path}: its metadata says {' and '.join(wrong)} but the graph's probs output "
                                 f"has {outputs}: the metadata does not belong to these weights; export the model "
                                 f"again with tool/export_onnx.py")

    # -- facts
    @property
    def facts(self) -> dict:
        return dict(self.metadata.get("facts", {}))

    @property
    def crop_size(self) -> int | None:
        size = self.input_shape[-1]
        return size if isinstance(size, int) else self.facts.get("crop_size")

    @property
    def mean(self) -> tuple:
        return tuple(self.metadata.get("input", {}).get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple:
        return tuple(self.metadata.get("input", {}).get("std", IMAGENET_STD))

    @property
    def providers(self) -> list:
        return self.session.get_providers()

    # -- drop-in for the PyTorch model
    def eval(self) -> OnnxAUModel:
        return self

    def to(self, *args, **kwargs) -> OnnxAUModel:
        """No-op (the device is chosen by `providers`)."""
        return self

    def _array(self, images) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float32).numpy()
        array = np.ascontiguousarray(images, dtype=np.float32)
        expected = self.input_shape
        if array.ndim != 4 or any(isinstance(e, int) and e != a for e, a in zip(expected, array.shape)):
            shown = ", ".join(str(e) if isinstance(e, int) else "B" for e in expected)
            raise OnnxModelError(f"{self.path.name} takes images of shape ({shown}), got {tuple(array.shape)}")
        return array

    def run(self, images) -> list[np.ndarray]:
        """The outputs as numpy arrays, in the order of `output_names`."""
        return self.session.run(None, {self.input_name: self._array(images)})

    def __call__(self, images):
        outputs = [torch.from_numpy(o) for o in self.run(images)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    forward = __call__

    def __repr__(self) -> str:
        facts = self.facts
        return (f"OnnxAUModel({str(self.path)!r}, arc={facts.get('arc')}, stage={facts.get('stage')}, "
                f"num_classes={facts.get('num_classes')}, outputs={self.output_names})")
