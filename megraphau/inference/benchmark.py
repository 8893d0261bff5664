"""demo.py --benchmark: the video path (decode, detect/track, crop, model, write) timed on an
input's first frames with PyTorch and ONNX Runtime side by side, each at one or more precisions
(fp32, bf16, int8: inference/precision.py). The engines alternate, each one's fastest pass is
reported with the busy and CPU milliseconds per frame of every stage, and the largest
probability difference to the first row (the float32 reference) tells whether they ran the same
model and what a lower precision moved."""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from megraphau.inference.detector import AUDetector, InferenceError
from megraphau.inference.drawing import annotate
from megraphau.inference.inputs import DemoError, read_bgr_image, video_frames, video_info
from megraphau.inference.pipeline import STAGES, StageTimes, VideoPipeline
from megraphau.inference.precision import unsupported_reason
from megraphau.inference.runner import default_threads, sequential_results
from megraphau.inference.writers import AnnotatedVideo, ResultWriter
from megraphau.model.onnx_export import export_onnx
from megraphau.tables import format_table

__all__ = ["ENGINE_NAMES", "benchmark", "benchmark_detectors", "benchmark_frames", "engine_label", "export_detector",
           "onnx_for_benchmark", "print_benchmark", "row_label", "run_benchmark", "time_run"]

log = logging.getLogger(__name__)

ENGINE_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}


def engine_label(detector: AUDetector) -> str:
    """The engine's name in the tables and the log: PyTorch or ONNX Runtime."""
    return ENGINE_NAMES[detector.backend]


def row_label(detector: AUDetector) -> str:
    """A benchmark row's name: engine and precision, e.g. "ONNX Runtime int8"."""
    return f"{engine_label(detector)} {getattr(detector, 'precision', 'fp32')}"


def benchmark_frames(kind: str, files: list[Path], every_n: int, limit: int) -> tuple[str, object, int]:
    """(description, frames, count) for --benchmark: a video's first `limit` (every_n-th) frames,
    decoded during each timed pass (frames: a function returning a fresh iterator of (index,
    frame) pairs), or the first `limit` images, read beforehand (a list)."""
    if kind == "video":
        path = files[0]
        _, total, (w, h) = video_info(path)
        count = min(limit, math.ceil(total / every_n)) if total else limit
        frames = lambda: itertools.islice(video_frames(path, every_n), limit)  # noqa: E731
        return f"{count} frames of {path.name}, {w}x{h}", frames, count
    images = [read_bgr_image(f) for f in files[:limit]]
    if not images:
        raise DemoError(f"{files[0]}: no image to benchmark")
    h, w = images[0].shape[:2]
    return f"{len(images)} images, {w}x{h}", images, len(images)


def time_run(detector: AUDetector, frames, track: bool, pipelined: bool, out_dir: Path,
             annotate_frames: bool, openface: bool = False, model_workers: int = 1) -> tuple[StageTimes, list]:
    """One timed pass over `frames` (a list of images, or a function returning an iterator of
    (index, frame) pairs: a video decoded as it goes) as demo.py processes a video (outputs
    written to out_dir): its StageTimes and every face's probabilities (to compare engines)."""
    writer = ResultWriter(out_dir, detector, {}, openface=openface)
    times = StageTimes()
    indexed = frames() if callable(frames) else list(enumerate(frames))
    source = (VideoPipeline(detector, indexed, track=track, model_workers=model_workers) if pipelined
              else sequential_results(detector, indexed, track=track, times=times))
    if pipelined:
        source.times = times
    probs, video = [], AnnotatedVideo(out_dir / "benchmark", 25.0)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        for n, (index, frame, faces) in enumerate(source, 1):
            writer.add("benchmark", index, faces, timestamp=index / 25.0)
            probs += [f.probs for f in faces]
            if n % detector.batch_size == 0:
                writer.flush()
            if annotate_frames:
                video.write(annotate(frame, faces, detector.au_names, None, detector.threshold, panel_faces=1))
    finally:
        if pipelined:
            source.close()
        video.release()
        writer.close()
    times.wall = time.perf_counter() - start
    times.cpu = time.process_time() - cpu_start
    return times, probs


def export_detector(detector: AUDetector, path: Path, verify: bool = False) -> dict:
    """The detector's PyTorch model exported to `path` (onnx_export.export_onnx) with the facts
    the detector runs it with (AU names and descriptions, crop preset and size); export_onnx's
    report. verify: compare ONNX Runtime's outputs with PyTorch's (an error if they differ)."""
    facts = {**detector.facts, "au_names": list(detector.au_names), "au_descriptions": detector.au_descriptions,
             "crop_preset": detector.crop_preset, "crop_size": detector.crop_size}
    return export_onnx((detector.model, facts), path, verify=verify, crop_size=detector.crop_size)


def onnx_for_benchmark(detector: AUDetector, workdir: Path, onnx_file: Optional[str | Path] = None) -> Path:
    """`onnx_file` (--benchmark-onnx) when given, else the detector's model exported to
    workdir/model.onnx (not verified: the benchmark compares the two engines' probabilities itself)."""
    if onnx_file:
        return Path(onnx_file)
    path = workdir / "model.onnx"
    start = time.perf_counter()
    log.info("benchmark: exporting the model to ONNX (a temporary file)...")
    export_detector(detector, path)
    log.info("benchmark: exported in %.1f s", time.perf_counter() - start)
    return path


def benchmark(detectors: dict, frames: list, track: bool, pipelined: bool = True, repeats: int = 2,
              annotate_frames: bool = False, workdir: Optional[Path] = None, model_workers: int = 1) -> dict:
    """Frames per second and busy milliseconds per frame of each pipeline stage, per engine
    ({name: AUDetector}), on `frames` processed like a video (outputs written to a temporary
    folder). The engines alternate, their order flipping every repeat, after one warm-up
    frame each; each engine's fastest pass is reported (the least disturbed on a shared machine).
    Also the largest probability difference of each engine's results to the first engine's
    ('max_prob_diff' per engine; None for the first, or when the faces differ) and, for exactly
    two engines, result['max_prob_diff']."""
    with tempfile.TemporaryDirectory(prefix="demo_benchmark_", dir=workdir) as tmp:
        first = [next(iter(frames()))[1]] if callable(frames) else frames[:1]
        for name, det in detectors.items():  # warm-up: lazy initialisation, allocator, MTCNN
            time_run(det, first, track, pipelined, Path(tmp) / f"warm_{name}", False, model_workers=model_workers)
        runs = {name: [] for name in detectors}
        probs = {}
        order = list(detectors)
        for r in range(repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                times, p = time_run(detectors[name], frames, track, pipelined, Path(tmp) / f"{name}_{r}",
                                    annotate_frames, model_workers=model_workers)
                runs[name].append(times)
                probs.setdefault(name, p)
    result = {"engines": {}}
    reference = probs[order[0]]
    for name, times in runs.items():
        best = min(times, key=lambda t: t.wall)
        p = probs[name]
        diff = (float(np.abs(np.stack(p) - np.stack(reference)).max()) if len(p) == len(reference) and p
                else None)  # None: a different number of faces (detection is the same: should not happen)
        result["engines"][name] = {**best.as_dict(), "frames_per_s_all": [t.frames / t.wall for t in times],
                                   "max_prob_diff": None if name == order[0] else diff}
    if len(probs) == 2:
        result["max_prob_diff"] = result["engines"][order[1]]["max_prob_diff"]
    return result


def print_benchmark(result: dict, detectors: dict, what: str, args: argparse.Namespace, workers: bool) -> None:
    """The benchmark's two tables (busy ms per stage, CPU ms per stage) and the engines' agreement.
    args: demo.py's command line (model_workers, no_pipeline, redetect_every, no_annotate,
    benchmark_repeats); workers: several model workers ran."""
    det = next(iter(detectors.values()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"benchmark: {what}; {det.arc} stage {det.stage}, {len(det.au_names)} AUs, batch {det.batch_size}, "
          f"model threads {det.threads or torch.get_num_threads()}"
          + (f" x {args.model_workers} workers" if workers else "")
          + f", MTCNN threads {det.face_detector.threads if det.face_detector else '-'}, "
          f"{'sequential' if args.no_pipeline else 'pipelined'}, redetect every {args.redetect_every}, "
          f"{'annotated video' if not args.no_annotate else 'no annotation'}; {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; best of {args.benchmark_repeats} passes, engines alternating")
    header = ["engine", "precision", "frames/s", "decode", "detect", "crop", "model", "write", "model ms/face",
              "CPU ms/frame", "all passes"]
    rows = []
    for name, r in result["engines"].items():
        ms = r["ms_per_frame"]
        rows.append([engine_label(detectors[name]), detectors[name].precision, f"{r['frames_per_s']:.1f}",
                     *(f"{ms[s]:.1f}" for s in STAGES),
                     "-" if r["model_ms_per_face"] is None else f"{r['model_ms_per_face']:.1f}",
                     "-" if r["cpu_ms_per_frame"] is None else f"{r['cpu_ms_per_frame']:.0f}",
                     " ".join(f"{v:.1f}" for v in r["frames_per_s_all"])])
    print(format_table(header, rows, markdown=False))
    print("(decode .. write: busy ms per frame of each stage, wall clock, so they include time lost to other "
          "threads and processes; pipelined stages overlap, so frames/s can exceed 1000 / their sum. CPU ms/frame: "
          "the process's CPU time, all threads, per frame)")
    cores = default_threads()
    header = ["CPU ms/frame", "precision", "decode", "detect", "crop", "model", "write", "total",
              f"frames/s bound on {cores} free cores"]
    rows = []
    for name, r in result["engines"].items():
        cpu = r["cpu_ms_per_stage"]
        total = r["cpu_ms_per_frame"]
        rows.append([engine_label(detectors[name]), detectors[name].precision, *(f"{cpu[s]:.1f}" for s in STAGES),
                     "-" if total is None else f"{total:.0f}",
                     "-" if not total else f"{cores * 1000 / total:.1f}"])
    print(format_table(header, rows, markdown=False))
    print("(CPU time of the thread of each stage, which other processes do not inflate; model: the process's CPU "
          "time less the other stages', i.e. with its pool threads; the bound assumes the stages overlap perfectly)")
    names = list(result["engines"])
    reference = detectors[names[0]]
    for name in names[1:]:
        diff, det = result["engines"][name]["max_prob_diff"], detectors[name]
        lowered = [d.precision for d in (reference, det) if d.precision != "fp32"]
        note = (f"  ({' and '.join(lowered)})" if lowered else "" if diff is None or diff <= 1e-3
                else "  (not the same model's weights?)")
        print(f"max |probability difference| {row_label(reference)} vs {row_label(det)}: "
              f"{'faces differ' if diff is None else f'{diff:.2g}'}{note}")


def benchmark_detectors(args: argparse.Namespace, detector: AUDetector, workdir: Path,
                        open_detector: Callable[..., AUDetector]) -> tuple[dict, list[str]]:
    """({name: AUDetector} to time, [notes on combinations left out]) for --benchmark: each engine
    of --benchmark-engine at each precision of --benchmark-precisions it offers (default:
    --precision, else the detector's; an engine without it at fp32). A .pth's ONNX Runtime rows run its
    export (--benchmark-onnx, else a temporary one in workdir; int8 is quantised beside it)."""
    explicit = args.benchmark_precisions is not None
    precisions = list(dict.fromkeys(args.benchmark_precisions or [getattr(args, "precision", None)
                                                                  or detector.precision]))
    detectors, notes = {}, []
    engines = [e for e in ("pytorch", "onnxruntime") if args.benchmark_engine in ("both", e)]
    onnx_path = None
    for engine in engines:
        if engine == "pytorch" and detector.backend != "pytorch":
            continue
        for precision in precisions:
            reason = unsupported_reason(engine, precision)
            if reason and explicit:
                notes.append(f"{ENGINE_NAMES[engine]} {precision}: not offered: {reason}")
                continue
            precision = "fp32" if reason else precision
            if f"{engine} {precision}" in detectors:
                continue
            if engine == detector.backend and precision == detector.precision:
                det = detector
            elif engine == "pytorch":
                det = open_detector(args.resume, precision)
            else:
                if onnx_path is None:
                    onnx_path = (Path(args.resume) if detector.backend == "onnxruntime"
                                 else onnx_for_benchmark(detector, workdir, args.benchmark_onnx))
                try:
                    det = open_detector(onnx_path, precision)
                except InferenceError as err:  # e.g. fp32 of an int8 file
                    notes.append(f"{ENGINE_NAMES[engine]} {precision}: {err}")
                    continue
                if (det.arc, det.stage, det.au_names) != (detector.arc, detector.stage, detector.au_names):
                    raise DemoError(f"--benchmark-onnx {onnx_path}: {det.arc} stage {det.stage} "
                                    f"with {len(det.au_names)} AUs, not the model of --resume")
            detectors[f"{engine} {precision}"] = det
    return detectors, notes


def run_benchmark(args: argparse.Namespace, detector: AUDetector, kind: str, files: list[Path],
                  open_detector: Callable[..., AUDetector]) -> int:
    """--benchmark: the engines and precisions side by side on the input's first frames, printed
    (and written to --benchmark-json). args: demo.py's command line (the benchmark_* flags,
    every_n, no_pipeline, model_workers, no_annotate, resume); kind, files: demo's input
    (inputs.list_inputs); open_detector(path, precision): an AUDetector of a model file with the
    command line's settings."""
    what, frames, _ = benchmark_frames(kind, files, args.every_n, args.benchmark_frames)
    with tempfile.TemporaryDirectory(prefix="demo_onnx_") as tmp:
        detectors, notes = benchmark_detectors(args, detector, Path(tmp), open_detector)
        if not detectors:
            raise DemoError(f"--benchmark-engine {args.benchmark_engine}: {args.resume} is an ONNX file"
                            if not notes else "; ".join(notes))
        pipelined = not args.no_pipeline
        result = benchmark(detectors, frames, track=kind == "video", pipelined=pipelined,
                           repeats=args.benchmark_repeats, annotate_frames=not args.no_annotate,
                           model_workers=args.model_workers if pipelined else 1)
    print_benchmark(result, detectors, what, args, pipelined and args.model_workers > 1)
    for note in notes:
        print(note)
    if getattr(args, "benchmark_json", None):
        result.update(what=what, notes=notes, load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                      cpus=os.cpu_count(), threads=detector.threads, batch_size=detector.batch_size)
        for name, det in detectors.items():
            result["engines"][name].update(engine=det.backend, precision=det.precision, label=row_label(det),
                                           guards=det.precision_guards)
        Path(args.benchmark_json).write_text(json.dumps(result, indent=1))
    return 0
