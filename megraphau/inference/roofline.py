"""A compute roofline for AU inference: how close a measured per-face model time comes to the
machine's matrix-product peak, and the frames/s that peak would allow.

    from megraphau.inference import roofline as R
    flops = R.model_flops(model, crop_size=224)           # FLOPs of one face (FlopCounterMode)
    peak = R.matmul_peak("bf16", "pytorch", threads=2)    # FLOP/s of a square matmul, measured
    R.roofline(flops, seconds_per_face, peak)             # achieved fraction, frames/s bound

Peaks are measured, not read from a data sheet: a timed loop of square matrix products with the
engine that runs the model (torch.mm for PyTorch fp32/bf16; a one-node ONNX Runtime MatMul for
its fp32 and MatMulInteger, uint8 x int8, for its int8) at the thread count the model uses.
The convolutions of a CNN reach a part of it (im2col / direct kernels, memory traffic of
activations), so a fraction well below 1 is expected; the bound is what the compute alone would
allow. FLOPs count multiply-adds as 2 (torch.utils.flop_counter: convolutions and matrix
products; element-wise work, pooling and normalisation are not counted).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

PEAK_SIZE = 1024  # square matrices: large enough for the kernels' full speed, small for a quick loop


def model_flops(model: torch.nn.Module, crop_size: int = 224, batch: int = 1) -> int:
    """FLOPs of one face through `model` (counted on a batch of `batch` random inputs, divided)."""
    model = model.eval()
    images = torch.randn(batch, 3, crop_size, crop_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return int(counter.get_total_flops() // batch)


def arc_flops(arc: str, stage: int, num_classes: int = 12, crop_size: int = 224, neighbor_num: int = 4) -> int:
    """model_flops of a randomly initialised model of this backbone and stage (the weights do not
    change the count)."""
    from megraphau.model import build_model

    return model_flops(build_model(stage, arc, num_classes, neighbor_num, pretrained=False), crop_size)


def _best_rate(step, flops: float, seconds: float) -> float:
    """FLOP/s of the fastest call of `step` over a loop of about `seconds` (after one warm-up)."""
    step()
    best, end = float("inf"), time.perf_counter() + seconds
    calls = 0
    while calls < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return flops / best


def _torch_peak(dtype: torch.dtype, threads: int | None, size: int, seconds: float) -> float:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        return _best_rate(lambda: torch.mm(a, b, out=out), 2.0 * size ** 3, seconds)
    finally:
        torch.set_num_threads(before)


def _ort_peak(int8: bool, threads: int | None, size: int, seconds: float) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:  # what a QDQ model's quantised products run: uint8 activations x int8 weights
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        w = rng.integers(-127, 127, (size, size), dtype=np.int8)
        node, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.standard_normal((size, size), dtype=np.float32)
        w = rng.standard_normal((size, size), dtype=np.float32)
        node, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(node, ["a", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", a_type, [size, size])],
                              [helper.make_tensor_value_info("y", y_type, [size, size])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, {"a": a}), 2.0 * size ** 3, seconds)


def matmul_peak(precision: str = "fp32", engine: str = "pytorch", threads: int | None = None,
                size: int = PEAK_SIZE, seconds: float = 0.5) -> float | None:
    """The measured matrix-product peak in FLOP/s (int8: operations/s) of `engine` at `precision`
    with `threads` (None: the engine's default); None for a combination without a kernel to time
    (PyTorch int8)."""
    if engine == "pytorch":
        if precision == "int8":
            return None
        return _torch_peak(torch.bfloat16 if precision == "bf16" else torch.float32, threads, size, seconds)
    if engine == "onnxruntime":
        if precision == "bf16":
            return None
        return _ort_peak(precision == "int8", threads, size, seconds)
    raise ValueError(f"engine {engine!r}: pytorch or onnxruntime")


def roofline(flops_per_face: float, seconds_per_face: float, peak_flops: float | None) -> dict:
    """{'gflop_per_face', 'measured_fps' (faces/s), 'achieved_gflops', 'peak_gflops', 'fraction'
    (achieved / peak), 'bound_fps' (peak / FLOPs: faces/s if every FLOP ran at the peak)}; the
    peak's entries are None without a peak."""
    achieved = flops_per_face / seconds_per_face if seconds_per_face > 0 else float("nan")
    out = {"gflop_per_face": flops_per_face / 1e9, "measured_fps": 1.0 / seconds_per_face if seconds_per_face > 0
           else float("nan"), "achieved_gflops": achieved / 1e9, "peak_gflops": None, "fraction": None,
           "bound_fps": None}
    if peak_flops:
        out.update(peak_gflops=peak_flops / 1e9, fraction=achieved / peak_flops, bound_fps=peak_flops / flops_per_face)
    return out
