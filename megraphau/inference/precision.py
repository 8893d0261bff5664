"""Numeric precision of AU inference: fp32, bf16 and int8 for the PyTorch and ONNX Runtime
engines, with accuracy guards against float32 and the facts to record in provenance.

    from megraphau.inference import precision as P
    P.check_combination("onnxruntime", "int8")              # PrecisionError (one line) if unsupported
    report = P.quantize_int8("model.onnx")                  # writes model.int8.onnx (static, QDQ)
    ref = P.make_runner("onnxruntime", "fp32", "model.onnx")
    got = P.make_runner("onnxruntime", "int8", report["path"])
    guard = P.probability_guard(ref, got, P.model_inputs(P.guard_crops(), 224), "int8", "onnxruntime")
    print(P.guard_line(guard))
    path, guards, made = P.cached_int8("model.onnx")        # as demo --precision int8: quantised
                                                            # once, guarded, the guard recorded

What each combination is:
- PyTorch fp32: the model as trained. PyTorch bf16: torch.autocast (bfloat16 matrix products
  and convolutions, float32 accumulation and reductions). PyTorch int8: refused; torch.ao's
  quantisation is being retired in favour of the separate torchao package and its dynamic mode
  quantises Linear layers only, which leaves a convolutional backbone in float32.
- ONNX Runtime fp32: the exported graph. ONNX Runtime int8: static quantisation (QDQ format,
  int8 weights per output channel, uint8 activations) calibrated on real face crops: the
  public-domain photograph tests/data/astronaut.jpg cropped with the project's MTCNN cropper and
  perturbed (shifts, scales, small rotations, mirror images), plus any crop folders given.
- ONNX Runtime bf16: refused where the CPU execution provider has no bfloat16 kernels
  (ort_has_bf16_kernels probes it; onnxruntime 1.32's CPU provider has none for MatMul, Add or
  Relu, and ONNX's Conv takes no bfloat16 before opset 22).

Guards: probabilities within PROB_BOUND (max absolute difference) of float32 on real face
crops; test mean F1 within F1_BOUND points of float32 on a data set's test fold (SYNTH).
onnx and onnxruntime are optional packages: they are imported inside the functions that use
them, so the PyTorch side works without them. (A little over 500 lines: an int8 file's whole
life, quantised, guarded, cached and recorded, stays in one place with the guards it uses.)
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from megraphau.data.dataset import build_transform
from megraphau.errors import UserError
from megraphau.paths import REPO_ROOT

PRECISIONS = ("fp32", "bf16", "int8")
ENGINES = ("pytorch", "onnxruntime")
PROB_BOUND = 0.02  # max |p - p_fp32| over the guard's face crops
F1_BOUND = 0.5  # |mean F1 - mean F1_fp32|, percentage points, on a test fold
PHOTO = REPO_ROOT / "tests" / "data" / "astronaut.jpg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CALIBRATION_CROPS = 32
CALIBRATION_METHOD = "minmax"  # see quantize_int8

Runner = Callable[[np.ndarray], np.ndarray]  # (B, 3, S, S) float32 inputs -> (B, N) probabilities


class PrecisionError(UserError, ValueError):
    """A precision the engine does not offer here; the message is one line naming the way out."""


# --------------------------------------------------------------------------------------------
# what is supported
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def ort_has_bf16_kernels() -> bool:
    """Whether ONNX Runtime's CPU provider runs a bfloat16 MatMul (a one-node graph, probed once)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return False
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, None)
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 3], np.zeros(12, np.uint16).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "bf16_probe", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's NOT_IMPLEMENTED
        return False
    return True


def unsupported_reason(engine: str, precision: str) -> str | None:
    """None when `engine` runs `precision` here, else the one-line reason (with the way out)."""
    if engine not in ENGINES:
        return f"engine {engine!r} is not one of {', '.join(ENGINES)}"
    if precision not in PRECISIONS:
        return f"precision {precision!r} is not one of {', '.join(PRECISIONS)}"
    if engine == "pytorch" and precision == "int8":
        return ("int8 is not offered for PyTorch (torch.ao quantisation is being retired and its dynamic mode "
                "covers Linear layers only, not the convolutional backbone); use ONNX Runtime int8: "
                "tool/export_onnx.py --precision int8")
    if engine == "onnxruntime" and precision == "bf16" and not ort_has_bf16_kernels():
        return ("bf16 is not offered for ONNX Runtime (its CPU provider has no bfloat16 kernels); use PyTorch "
                "bf16 (the .pth) or ONNX Runtime int8")
    return None


def check_combination(engine: str, precision: str) -> None:
    """PrecisionError with unsupported_reason's line when `engine` cannot run `precision` here."""
    reason = unsupported_reason(engine, precision)
    if reason is not None:
        raise PrecisionError(reason)


def supported_combinations() -> list[tuple[str, str]]:
    """Every (engine, precision) this installation runs, in ENGINES x PRECISIONS order."""
    return [(e, p) for e in ENGINES for p in PRECISIONS if unsupported_reason(e, p) is None]


def autocast(precision: str, device: str | torch.device = "cpu"):
    """The PyTorch context a forward pass of `precision` runs in (bf16: bfloat16 autocast)."""
    check_combination("pytorch", precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# face crops: calibration and guard inputs
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _photo_face(photo: str):
    """(BGR image, faces.Face) of the largest face of a photograph (MTCNN, once per process)."""
    from megraphau.inference.faces import FaceDetector  # MTCNN's weights load here, not on import

    image = cv2.imread(photo)
    if image is None:
        raise FileNotFoundError(f"{photo}: cannot read the photograph")
    found = FaceDetector(threads=1).detect(image)
    if not found:
        raise PrecisionError(f"{photo}: no face found")
    return image, found[0]


def photo_crops(count: int, seed: int, preset: str = "BP4D", photo: str | os.PathLike = PHOTO,
                plain: bool = False) -> list[np.ndarray]:
    """`count` 256x256 BGR face crops of a photograph (the project's five-point alignment with
    `preset`), each with its landmarks shifted (up to 6 px), scaled (0.92-1.08), rotated (up to
    6 degrees) and, for half of them, mirrored; `plain`: the unperturbed crop and its mirror
    image first. The same `seed` gives the same crops."""
    from megraphau.inference.faces import Face, align_crop

    image, face = _photo_face(str(photo))
    rng = np.random.default_rng(seed)
    centre = face.landmarks.mean(0)
    crops = []
    if plain:
        crop = align_crop(image, face, preset=preset, size=256)
        crops += [crop, np.ascontiguousarray(crop[:, ::-1])]
    while len(crops) < count:
        angle, scale = math.radians(rng.uniform(-6, 6)), rng.uniform(0.92, 1.08)
        rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        marks = (face.landmarks - centre) @ rotation.T + centre + rng.uniform(-6, 6, size=2)  # (5, 2)
        crop = align_crop(image, Face(face.box, face.score, marks), preset=preset, size=256)
        crops.append(np.ascontiguousarray(crop[:, ::-1]) if rng.random() < 0.5 else crop)
    return crops[:count]


def calibration_crops(preset: str = "BP4D", folders: Sequence[str | os.PathLike] = (),
                      count: int = CALIBRATION_CROPS) -> list[np.ndarray]:
    """Calibration faces: `count` perturbed photograph crops (seed 0) and every image in
    `folders` (face crops such as tool/crop_faces.py writes; any size, the test transform
    resizes them)."""
    crops = photo_crops(count, seed=0, preset=preset)
    for folder in folders:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) for calibration")
        for path in files:
            crop = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if crop is None:
                raise PrecisionError(f"{path}: not a readable image")
            crops.append(crop)
    return crops


def guard_crops(preset: str = "BP4D", count: int = 10) -> list[np.ndarray]:
    """The probability guard's faces: the plain photograph crop, its mirror image and perturbed
    crops drawn with another seed than the calibration's (held-out variations of the face)."""
    return photo_crops(count, seed=1, preset=preset, plain=True)


def model_inputs(crops: Sequence[np.ndarray], crop_size: int) -> np.ndarray:
    """BGR face crops -> (len, 3, S, S) float32, the test transform's model inputs."""
    transform = build_transform(False, crop_size=crop_size)
    batch = np.empty((len(crops), 3, crop_size, crop_size), np.float32)
    for i, crop in enumerate(crops):
        rgb = np.ascontiguousarray(crop[:, :, 2::-1])  # BGR -> RGB
        batch[i] = transform(torch.from_numpy(rgb).permute(2, 0, 1)).numpy()
    return batch


# --------------------------------------------------------------------------------------------
# ONNX Runtime int8
# --------------------------------------------------------------------------------------------
def int8_path(float_path: str | os.PathLike) -> Path:
    """model.onnx -> model.int8.onnx, beside it."""
    path = Path(float_path)
    return path.with_name(path.stem + ".int8" + (path.suffix or ".onnx"))


def _input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def quantize_int8(float_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                  inputs: np.ndarray | None = None, *, folders: Sequence[str | os.PathLike] = (),
                  method: str = CALIBRATION_METHOD, per_channel: bool = True,
                  op_types: Sequence[str] | None = None) -> dict:
    """Static int8 quantisation of an exported float32 file (onnxruntime.quantization).

    inputs: calibration model inputs (M, 3, S, S); None: calibration_crops (the photograph's
        crops with the file's crop preset, plus `folders`) through the test transform.
    method: ONNX Runtime's calibration ("minmax", "entropy", "percentile"). Measured on the
        guard crops (random-weight models, 32 calibration crops): ResNet-50 stage 2 max abs diff
        0.008 minmax, 0.009 percentile (4x slower to calibrate); ResNet-18 stage 1 at 224 0.026
        minmax and entropy, 0.022 percentile; at 112 0.018 minmax. Default minmax.
        The activations are uint8 and weights int8 (U8S8), MLAS's fast path on CPUs with VNNI;
        on AVX2/AVX-512 CPUs without VNNI its 16-bit intermediate sums can saturate.
    op_types: the ONNX operators to quantise (None: every one ONNX Runtime can).
    The graph is first pre-processed (quant_pre_process: ORT's graph optimisation and ONNX shape
    inference; the symbolic shape pass is skipped, it fails on the exporter's graphs). The
    float file's metadata is copied, with "precision" added to the megraphau object.
    Returns {'path', 'bytes', 'float_path', 'calibration_faces', 'method', 'preprocessed', 'seconds'}.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from megraphau.model.onnx_export import METADATA_KEY, sha256_file

    start = time.perf_counter()
    float_path = Path(float_path)
    out_path = Path(out_path) if out_path is not None else int8_path(float_path)
    float_model = onnx.load(str(float_path), load_external_data=False)
    props = {p.key: p.value for p in float_model.metadata_props}
    meta = json.loads(props.get(METADATA_KEY, "{}"))
    facts = meta.get("facts", {})
    if (meta.get("precision") or {}).get("precision", "fp32") != "fp32":
        raise PrecisionError(f"{float_path}: already quantised; quantise the float32 export")
    if inputs is None:
        crop_size = int(facts.get("crop_size") or 224)
        inputs = model_inputs(calibration_crops(facts.get("crop_preset") or "BP4D", folders), crop_size)
    name = _input_name(float_path)
    calibrations = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        """One face at a time: the batch axis of a --static-batch export is 1."""

        def __init__(self):
            self._items = iter(inputs[i:i + 1] for i in range(len(inputs)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {name: item}

    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}")
    pre = tmp.with_suffix(".pre.onnx")
    try:
        source, preprocessed = pre, True
        try:
            with _quiet():
                quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # a graph the optimiser or shape inference cannot take: quantise it as it is
            source, preprocessed = float_path, False
        with _quiet():
            quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibrations[method],
                            op_types_to_quantize=None if op_types is None else list(op_types))
        model = onnx.load(str(tmp))
        meta["precision"] = {"precision": "int8", "engine": "onnxruntime", "format": "QDQ",
                             "weights": "int8, per output channel" if per_channel else "int8, per tensor",
                             "activations": "uint8, per tensor", "calibration": method,
                             "calibration_faces": int(len(inputs)), "calibration_folders": [str(f) for f in folders],
                             "float_file": {"path": str(float_path), "sha256": sha256_file(float_path)},
                             "onnxruntime": _version("onnxruntime")}
        props.update({METADATA_KEY: json.dumps(meta), "precision": "int8"})
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
        os.replace(tmp, out_path)
    finally:
        for leftover in (tmp, pre, pre.with_name(pre.name + ".data")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "float_path": str(float_path),
            "calibration_faces": int(len(inputs)), "method": method, "preprocessed": preprocessed,
            "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization's progress prints (stdout) and its root-logger warnings (rank-1
    BatchNorm weights have no channel axis; pre-processing advice) silenced; errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:
        return None


def onnx_metadata(path: str | os.PathLike) -> dict:
    """An exported file's megraphau metadata, read without starting an ONNX Runtime session."""
    import onnx

    from megraphau.model.onnx_export import METADATA_KEY

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get(METADATA_KEY, "{}"))


def onnx_file_precision(path: str | os.PathLike) -> str:
    """The precision an exported file records ("int8" for quantize_int8's files), else "fp32"."""
    return (onnx_metadata(path).get("precision") or {}).get("precision", "fp32")


def record_guards(path: str | os.PathLike, guards: Sequence[dict]) -> None:
    """Store guard results in an int8 file's metadata (its "precision" record's "guards"), so that
    a later run reading the file (AUDetector, provenance) reports them without running them again."""
    import onnx

    from megraphau.model.onnx_export import METADATA_KEY

    path = Path(path)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props.get(METADATA_KEY, "{}"))
    meta.setdefault("precision", {})["guards"] = [dict(g) for g in guards]
    props[METADATA_KEY] = json.dumps(meta)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cached_int8(float_path: str | os.PathLike, threads: int | None = None) -> tuple[Path, list[dict], bool]:
    """The int8 file of a float32 export, quantised on first use and cached beside it
    (int8_path: model.onnx -> model.int8.onnx): (path, guards, made_now).

    A cached file is used when its metadata names this float file by SHA-256 and records a
    passed probability guard; otherwise the float file is quantised (quantize_int8), the guard
    run (probability_guard on guard_crops with the file's crop preset and size) and recorded in
    the int8 file. A failing guard leaves the file as .failed and raises PrecisionError (one
    line). OSError when the folder is not writable."""
    from megraphau.model.onnx_export import sha256_file

    float_path = Path(float_path)
    out = int8_path(float_path)
    digest = sha256_file(float_path)
    if out.is_file():
        with contextlib.suppress(Exception):  # unreadable or foreign file: quantise again
            quant = onnx_metadata(out).get("precision") or {}
            guards = quant.get("guards") or []
            if (quant.get("float_file") or {}).get("sha256") == digest and guards and all(g["passed"] for g in guards):
                return out, guards, False
    report = quantize_int8(float_path, out)
    facts = onnx_metadata(float_path).get("facts", {})
    crop = int(facts.get("crop_size") or 224)
    inputs = model_inputs(guard_crops(facts.get("crop_preset") or "BP4D"), crop)
    guard = probability_guard(make_runner("onnxruntime", "fp32", float_path, threads=threads),
                              make_runner("onnxruntime", "int8", out, threads=threads), inputs, "int8", "onnxruntime")
    if not guard["passed"]:
        failed = out.with_name(out.name + ".failed")
        os.replace(out, failed)
        raise PrecisionError(f"{float_path}: its int8 quantisation fails the accuracy guard ({guard_line(guard)}; "
                             f"left as {failed}); run it in fp32")
    record_guards(report["path"], [guard])
    return out, [guard], True


# --------------------------------------------------------------------------------------------
# running a precision
# --------------------------------------------------------------------------------------------
def make_runner(engine: str, precision: str, source, threads: int | None = None,
                device: str = "cpu") -> Runner:
    """A function (B, 3, S, S) float32 -> (B, N) float32 probabilities running `precision`.

    source: the torch model (PyTorch), or the .onnx file holding that precision (ONNX Runtime:
    the float32 export for fp32, quantize_int8's file for int8; a mismatch is a PrecisionError).
    threads: torch's threads (set when the runner is called), or ONNX Runtime's intra-op threads."""
    check_combination(engine, precision)
    if engine == "onnxruntime":
        from megraphau.model.onnx_export import OnnxAUModel

        model = OnnxAUModel(source, threads=threads, session_config={"session.intra_op.allow_spinning": "0"})
        stored = (model.metadata.get("precision") or {}).get("precision", "fp32")
        if stored != precision:
            raise PrecisionError(f"{source} holds a {stored} model, not {precision}")
        return lambda inputs: model.run(inputs)[0]
    model = source.to(device).eval()
    channels_last = torch.device(device).type == "cpu"  # as AUDetector runs PyTorch on the CPU
    if channels_last:
        model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(inputs: np.ndarray) -> np.ndarray:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        batch = torch.from_numpy(np.ascontiguousarray(inputs)).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            out = model(batch)
        probs = out[0] if isinstance(out, (tuple, list)) else out  # stage 2: (probs, edge logits)
        return probs.float().cpu().numpy()

    return run


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """runner over `inputs` in batches, the rows concatenated."""
    return np.concatenate([runner(inputs[k:k + batch_size]) for k in range(0, len(inputs), batch_size)])


# --------------------------------------------------------------------------------------------
# accuracy guards
# --------------------------------------------------------------------------------------------
def probability_guard(reference: Runner, candidate: Runner, inputs: np.ndarray, precision: str,
                      engine: str | None = None, bound: float = PROB_BOUND, threshold: float = 0.5) -> dict:
    """Probabilities of `candidate` against float32 `reference` on the same face inputs:
    {'guard': 'probs', 'precision', 'engine', 'faces', 'max_abs_diff', 'mean_abs_diff', 'bound',
    'passed' (max_abs_diff <= bound), 'label_flips' (AU decisions at `threshold` that differ)}."""
    ref, got = run_batched(reference, inputs), run_batched(candidate, inputs)
    diff = np.abs(got.astype(np.float64) - ref)
    worst = float(diff.max()) if diff.size else 0.0
    return {"guard": "probs", "precision": precision, "engine": engine, "faces": int(len(inputs)),
            "max_abs_diff": worst, "mean_abs_diff": float(diff.mean()) if diff.size else 0.0, "bound": bound,
            "passed": bool(worst <= bound), "label_flips": int(((got >= threshold) != (ref >= threshold)).sum())}


def f1_guard(reference: Runner, candidate: Runner, dataset_root: str | os.PathLike, precision: str,
             engine: str | None = None, *, dataset: str = "SYNTH", fold: int = 1, crop_size: int = 224,
             bound: float = F1_BOUND, threshold: float = 0.5, batch_size: int = 32) -> dict:
    """Test mean F1 of `candidate` against float32 `reference` on a test fold (AUDataset's test
    split under `dataset_root`, the test transform at `crop_size`): {'guard': 'f1', 'precision',
    'engine', 'images', 'f1_fp32', 'f1' (percent), 'f1_delta' (points), 'bound', 'passed'
    (|f1_delta| <= bound), 'max_abs_diff'}."""
    from megraphau.data.dataset import AUDataset
    from megraphau.engine.metrics import compute_au_metrics

    data = AUDataset(dataset, fold, "test", crop_size=crop_size, dataset_path=dataset_root)
    inputs = np.stack([data[i][0].numpy() for i in range(len(data))])  # (M, 3, S, S)
    ref, got = run_batched(reference, inputs, batch_size), run_batched(candidate, inputs, batch_size)
    f1_ref = 100 * compute_au_metrics(ref, data.labels, threshold)["mean_f1"]
    f1_got = 100 * compute_au_metrics(got, data.labels, threshold)["mean_f1"]
    delta = f1_got - f1_ref
    return {"guard": "f1", "precision": precision, "engine": engine, "dataset": dataset, "fold": int(fold),
            "images": int(len(inputs)), "f1_fp32": f1_ref, "f1": f1_got, "f1_delta": delta, "bound": bound,
            "passed": bool(abs(delta) <= bound), "max_abs_diff": float(np.abs(got - ref).max()) if len(ref) else 0.0}


def guard_line(result: dict) -> str:
    """One line of a guard's result, e.g. `int8 onnxruntime guard probs: max abs diff 0.0081 <= 0.02
    on 10 face crops (0 AU decisions flip): passed`."""
    who = " ".join(v for v in (result["precision"], result.get("engine")) if v)
    verdict = "passed" if result["passed"] else "FAILED"
    if result["guard"] == "f1":
        return (f"{who} guard f1: test mean F1 {result['f1']:.2f} vs float32 {result['f1_fp32']:.2f} "
                f"({result['f1_delta']:+.2f} points, bound {result['bound']:g}) on {result['dataset']} fold "
                f"{result['fold']} ({result['images']} images): {verdict}")
    return (f"{who} guard probs: max abs diff {result['max_abs_diff']:.2g} {'<=' if result['passed'] else '>'} "
            f"{result['bound']:g} on {result['faces']} face crops ({result['label_flips']} AU decisions flip): "
            f"{verdict}")


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------
def precision_facts(engine: str, precision: str, model_file: str | os.PathLike | None = None,
                    guards: Sequence[dict] = ()) -> dict:
    """The `precision` record of an output's provenance (provenance.collect(precision=...)):
    engine, precision, how it computes, an int8 file's quantisation metadata, and the guards'
    results (plain JSON types)."""
    how = {"fp32": "float32", "bf16": "torch.autocast bfloat16 (float32 accumulation)",
           "int8": "ONNX Runtime static int8 (QDQ)"}[precision]
    facts = {"engine": engine, "precision": precision, "computes": how, "quantisation": None,
             "guards": [{k: v for k, v in g.items()} for g in guards]}
    if model_file is not None and engine == "onnxruntime":
        from megraphau.model.onnx_export import OnnxAUModel

        facts["quantisation"] = OnnxAUModel(model_file).metadata.get("precision")
    return facts
