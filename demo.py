"""Facial action unit detection on images, folders and videos with a ME-GraphAU / OpenGraphAU
checkpoint (Luo et al., IJCAI-ECAI 2022).

The checkpoint decides the model and the AU set (inference.AUDetector, the Python API): a
project checkpoint names its AUs; a released file's AU count picks them (12 -> BP4D, 8 -> DISFA,
41 -> OpenGraphAU), or --dataset CONFIG names them. Faces (all, largest first) are cropped
exactly like the training crops, put through the test transform and classified in batches.
An ONNX file exported by tool/export_onnx.py runs on ONNX Runtime with the same outputs. Videos
go through a pipeline (pipeline.py): decoding, face detection/tracking + cropping and the model
overlap in their own threads, faces of consecutive frames share model batches. This file holds
the inputs (images, folders, videos), the output writers, the benchmark and the command line;
drawing is visualize.py.

    python demo.py --arc resnet50 --stage 2 --resume OpenGprahAU-ResNet50_second_stage.pth \\
        --input photo.jpg --draw_text
    python demo.py --resume MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
    python demo.py --resume model.pth --input clip.mp4 --every-n 5
    python demo.py --resume model.onnx --input clip.mp4 --openface-columns
    python demo.py --resume model.pth --input clip.mp4 --benchmark      # PyTorch vs ONNX Runtime

Outputs in --output: predictions.csv (one row per face, or one no_face row per image/frame;
--openface-columns: OpenFace's column names), predictions.jsonl (one JSON object per
image/frame), predictions.json (settings, every result, errors, summary), and annotated/
(images, or one .mp4/.avi per video). Rows are flushed to predictions.csv and .jsonl after every
batch, so an interrupted or killed run keeps the rows so far; predictions.json is completed at
the end ("complete": true). For a stage-2 ME-GraphAU
model every face in predictions.json also carries its predicted AU-pair relations from the edge
logits ("pair_probs": P(AU i and AU j active) and P(AU i without AU j), N rows of N values in
au_names' order). With --graph, graphs/{file}[_frame{n}]_face{k}.png draws each face's AU graph
(plots.draw_au_graph): nodes coloured by AU probability (a ring when present), edges by the
predicted co-occurrence P(both). Stage-1 and OpenGraphAU models have no edge logits: their graphs
show the nodes only (OpenGraphAU: its 27 main AUs), and the picture says so.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import math
import os
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch

from megraphau import provenance
from megraphau.conf import RANGE_CHECKS, check_ranges, one_line_errors
from megraphau.inference.detector import AUDetector, FaceResult, InferenceError
from megraphau.inference.drawing import annotate, letterbox
from megraphau.inference.faces import CROP_PRESETS
from megraphau.inference.pipeline import STAGES, FrameResult, StageTimes, VideoPipeline, clock
from megraphau.model import CheckpointMismatchError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}

log = logging.getLogger("demo")


class DemoError(InferenceError):
    """A problem with the demo's input or options; the message names the file."""


# ----------------------------------------------------------------------------- inputs
def read_bgr_image(path: Path) -> np.ndarray:
    """An image file as OpenCV's BGR uint8 array (dataset.read_image gives the training
    pipeline's RGB tensor); DemoError naming the file when it cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # also works for non-ASCII paths
    except OSError as err:
        raise DemoError(f"{path}: cannot read file ({err.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DemoError(f"{path}: not a readable image (empty, truncated or unknown format)")
    return image


def list_inputs(path: Path, exclude: Optional[Path] = None) -> tuple[str, list[Path]]:
    """('image' | 'video' | 'folder', files). A folder lists its images recursively, sorted,
    leaving out anything under `exclude` (an output folder inside the input folder)."""
    if path.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not (skip is not None and p.resolve().is_relative_to(skip)))
        if not files:
            raise DemoError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return "folder", files
    if not path.exists():
        raise DemoError(f"{path}: input not found")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return "video", [path]
    return "image", [path]


def video_frames(path: Path, every_n: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) for every every_n-th frame; DemoError naming the file if unreadable."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: cannot open video")
    index, any_frame = 0, False
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            any_frame = True
            if index % every_n == 0:
                yield index, frame
            index += 1
    finally:
        cap.release()
    if not any_frame:
        raise DemoError(f"{path}: no frame could be decoded (not a video, or an unsupported codec)")


def open_video_writer(path_stem: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An mp4v .mp4 writer, or MJPG .avi where this OpenCV build cannot write mp4."""
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        path = path_stem.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise DemoError(f"cannot write an annotated video at {path_stem}.mp4 / .avi (no usable codec)")


# ----------------------------------------------------------------------------- outputs
def openface_au_name(name: str) -> str:
    """An AU name the way OpenFace writes it: AU1 -> AU01, AUL1 -> AUL01 (OpenGraphAU's left and
    right AUs keep their side letter before the zero-padded number); other names unchanged."""
    match = re.fullmatch(r"AU([LR]?)(\d+)", name)
    return f"AU{match[1]}{int(match[2]):02d}" if match else name


class ResultWriter:
    """predictions.csv (one row per face, or per face-less image/frame), predictions.jsonl (one
    JSON object per image/frame) and predictions.json (the run's settings, AU names, every result
    as in predictions.jsonl, errors and summary).

    Rows are written as they are made: flush() (demo.py calls it after every batch) writes every
    row added since, each file in one piece, so a run that is killed leaves complete rows of a
    prefix of the frames in predictions.csv and predictions.jsonl. Results are not kept in
    memory (it does not grow with a video's length): predictions.json is written at the start
    with "complete": false and no results, and close() writes it again with the results copied
    from predictions.jsonl.

    openface: OpenFace's column names (see OPENFACE_HELP) instead of this project's.
    """

    def __init__(self, out_dir: Path, detector: AUDetector, args_summary: dict, openface: bool = False):
        self.out_dir = out_dir
        self.names = detector.au_names
        self.threshold = detector.threshold
        self.openface = openface
        out_dir.mkdir(parents=True, exist_ok=True)
        # open for the whole run: rows are appended as they are made (close() ends them)
        self.csv_file = open(out_dir / "predictions.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.jsonl_file = open(out_dir / "predictions.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self._csv_text, self._jsonl_text = io.StringIO(), io.StringIO()
        self.csv = csv.writer(self._csv_text)
        if openface:
            codes = [openface_au_name(n) for n in self.names]
            self.csv.writerow(["frame", "face_id", "timestamp", "confidence", "success"]
                              + [f"{c}_c" for c in codes] + [f"{c}_p" for c in codes]
                              + ["file", "box_x", "box_y", "box_w", "box_h"])
        else:
            self.csv.writerow(["file", "frame", "face", "x", "y", "w", "h", "no_face"]
                              + [c for n in self.names for c in (f"{n}_prob", n)])
        self.json = {**args_summary, "au_names": list(self.names),
                     "au_descriptions": detector.au_descriptions, "threshold": detector.threshold}
        if getattr(detector, "has_edges", False):
            self.json["pair_probs_note"] = PAIR_PROBS_NOTE
        self.json.update(csv_columns="openface" if openface else "demo", results_file="predictions.jsonl",
                         complete=False, errors=[])
        self.n_items = self.n_faces = self.n_no_face = 0
        self.flush()
        self._write_json(with_results=False)

    def add(self, file: str, frame: Optional[int], faces: Sequence[FaceResult],
            graphs: Optional[dict] = None, timestamp: Optional[float] = None) -> None:
        """One image (frame None) or video frame and its faces; graphs: {face index: path of its
        --graph picture, relative to the output folder}; timestamp: the frame's time in seconds
        (OpenFace columns)."""
        self.n_items += 1
        if not faces:
            self.n_no_face += 1
        if self.openface:
            self._add_openface(file, frame, faces, timestamp)
        else:
            frame_text = "" if frame is None else frame
            if not faces:
                self.csv.writerow([file, frame_text, "", "", "", "", "", 1] + [""] * (2 * len(self.names)))
            for face in faces:
                values = [v for p, a in zip(face.probs, face.labels) for v in (f"{p:.6f}", int(a))]
                self.csv.writerow([file, frame_text, face.index, *face.box, 0] + values)
        self.n_faces += len(faces)
        entries = [f.as_dict(self.names) for f in faces]
        for face, entry in zip(faces, entries):
            if graphs and face.index in graphs:
                entry["graph"] = graphs[face.index]
        result = {"file": file, "frame": frame, "no_face": not faces, "faces": entries}
        self._jsonl_text.write(json.dumps(result) + "\n")

    def _add_openface(self, file: str, frame: Optional[int], faces: Sequence[FaceResult],
                      timestamp: Optional[float]) -> None:
        # OpenFace numbers frames from 1 (images: their place in the listing) and writes zeros
        # where no face was found (success 0)
        number = (frame if frame is not None else self.n_items - 1) + 1
        stamp = f"{timestamp if timestamp is not None else 0.0:.3f}"
        if not faces:
            self.csv.writerow([number, 0, stamp, 0, 0] + [0] * len(self.names) + ["0.000000"] * len(self.names)
                              + [file, "", "", "", ""])
        for face in faces:
            confidence = 1.0 if face.score is None else face.score  # --no-detect: the image is the face
            self.csv.writerow([number, face.index, stamp, f"{confidence:.4f}", 1]
                              + [int(a) for a in face.labels] + [f"{p:.6f}" for p in face.probs]
                              + [file, *face.box])

    def flush(self) -> None:
        """Write the rows added since the last flush, each file in one write, and flush them."""
        for text, handle in ((self._csv_text, self.csv_file), (self._jsonl_text, self.jsonl_file)):
            data = text.getvalue()
            if data:
                handle.write(data)
                handle.flush()
                text.seek(0)
                text.truncate()

    def error(self, file: str, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.json["errors"].append({"file": file, "error": message})

    def _write_json(self, with_results: bool) -> None:
        """predictions.json (through a temporary file); with_results: "results" copied one by one
        from predictions.jsonl, in compact_json's layout."""
        placeholder = "@@results@@"
        meta = {k: v for k, v in self.json.items() if k not in ("errors", "summary")}
        if with_results:
            meta["results"] = placeholder
        meta.update((k, self.json[k]) for k in ("errors", "summary") if k in self.json)
        head, _, tail = compact_json(meta).partition(f'"{placeholder}"')
        tmp = self.out_dir / ".predictions.json.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(head)
            if with_results:
                out.write("[")
                count = 0
                with open(self.out_dir / "predictions.jsonl", encoding="utf-8") as lines:
                    for line in lines:
                        item = textwrap.indent(compact_json(json.loads(line)), "  ")
                        out.write(("\n" if count == 0 else ",\n") + item)
                        count += 1
                out.write("\n ]" if count else "]")
            out.write(tail)
        os.replace(tmp, self.out_dir / "predictions.json")

    def close(self, complete: bool = True) -> None:
        """Flush and close the files, and write predictions.json with every result ("complete":
        False for a run that was interrupted)."""
        self.flush()
        self.csv_file.close()
        self.jsonl_file.close()
        self.json["complete"] = bool(complete)
        self.json["summary"] = {"items": self.n_items, "faces": self.n_faces,
                                "no_face": self.n_no_face, "errors": len(self.json["errors"])}
        self._write_json(with_results=True)


PAIR_PROBS_NOTE = ("each face's pair_probs: the stage-2 edge logits' softmax as N x N matrices, row i and "
                   "column j = au_names[i], au_names[j]: p_both = P(AU i and AU j active), p_i_without_j = "
                   "P(AU i active, AU j not); P(AU j without AU i) is p_i_without_j transposed")

_NUMBER_LIST = re.compile(r"\[\s+([-+0-9.eE,\snul]*?)\s*\]")  # a list of numbers / nulls, split over lines


def compact_json(obj) -> str:
    """json.dumps(obj, indent=1) with each list of plain numbers on one line (a box, a landmark,
    a matrix row), so the per-face matrices stay one line per row."""
    text = json.dumps(obj, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(iterable, total=None, desc=""):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img" if desc != "video" else "frame",
                dynamic_ncols=True, leave=False)


def annotated_path(out_dir: Path, rel: Path) -> Path:
    path = out_dir / "annotated" / rel
    if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_crops(crops_dir: Optional[Path], rel: Path, frame: Optional[int], faces: Sequence[FaceResult]) -> None:
    """--save-crops: each face's 256x256 crop exactly as fed to the model's transform, named after
    its CSV row: {file}[_frame{frame}]_face{face}.png under the input's relative path."""
    if crops_dir is None:
        return
    stem = rel.with_suffix("").as_posix() + ("" if frame is None else f"_frame{frame}")
    for face in faces:
        path = crops_dir / f"{stem}_face{face.index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), face.crop)


def graph_title(detector: AUDetector, name: str) -> str:
    """The --graph picture's title: the face, and what the model's graph can show."""
    if detector.has_edges:
        return f"{name}: AU relations (stage 2)"
    if detector.variant == "opengraphau":
        return f"{name}: OpenGraphAU, {OPENGRAPHAU_MAIN_AUS} main AUs, nodes only (the model has no edge logits)"
    return f"{name}: stage-1 model, nodes only (no edge logits)"


OPENGRAPHAU_MAIN_AUS = 27  # OpenGraphAU's graph nodes; the 14 left/right side AUs follow them


def save_graphs(graphs_dir: Optional[Path], out_dir: Path, rel: Path, frame: Optional[int],
                faces: Sequence[FaceResult], detector: AUDetector) -> dict:
    """--graph: each face's AU graph as graphs/{file}[_frame{frame}]_face{face}.png (named like
    --save-crops' files): plots.draw_au_graph with the AU probabilities as nodes and, for a
    stage-2 ME-GraphAU model, the predicted P(both) of every AU pair as edges; an OpenGraphAU
    model's 27 main AUs, a stage-1 model's N AUs as nodes only. Returns {face index: path
    relative to out_dir} (for predictions.json)."""
    if graphs_dir is None or not faces:
        return {}
    from megraphau.analysis.plots import draw_au_graph

    stem = rel.with_suffix("").as_posix() + ("" if frame is None else f"_frame{frame}")
    n = OPENGRAPHAU_MAIN_AUS if detector.variant == "opengraphau" else len(detector.au_names)
    written = {}
    for face in faces:
        path = graphs_dir / f"{stem}_face{face.index}.png"
        pairs = face.pair_probs
        draw_au_graph(detector.au_names[:n], face.probs[:n], None if pairs is None else pairs["p_both"], path,
                      title=graph_title(detector, f"{rel.as_posix()}" + ("" if frame is None else f" frame {frame}")
                                        + f" face {face.index}"),
                      threshold=detector.threshold, write_numbers=False)
        written[face.index] = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path)
    return written


def process_images(detector: AUDetector, files: list[Path], root: Path, writer: ResultWriter,
                   out_dir: Path, draw_text: bool, annotate_images: bool = True,
                   crops_dir: Optional[Path] = None, graphs_dir: Optional[Path] = None) -> None:
    """Images in batches (faces of several images share one model batch); unreadable files are
    reported and skipped."""
    show = _progress(files, total=len(files), desc="images") if len(files) > 1 else files
    it = iter(show)
    for chunk in _batched(it, max(1, detector.batch_size)):
        loaded = []
        for path in chunk:
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            try:
                loaded.append((rel, read_bgr_image(path)))
            except DemoError as err:
                writer.error(str(rel), str(err))
        results = detector.predict_images([img for _, img in loaded], keep_crops=crops_dir is not None)
        for (rel, image), faces in zip(loaded, results):
            graphs = save_graphs(graphs_dir, out_dir, rel, None, faces, detector)
            writer.add(rel.as_posix(), None, faces, graphs)
            save_crops(crops_dir, rel, None, faces)
            if annotate_images:
                drawn = annotate(image, faces, detector.au_names,
                                 detector.au_descriptions if draw_text else None, detector.threshold)
                cv2.imwrite(str(annotated_path(out_dir, rel)), drawn)
        writer.flush()


def video_info(path: Path) -> tuple[float, int, tuple[int, int]]:
    """(frames per second, frame count as the container says (0: unknown), (width, height))."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: cannot open video")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    return fps, max(total, 0), size


def sequential_results(detector: AUDetector, frames: Iterable[tuple[int, np.ndarray]], track: bool = True,
                       keep_crops: bool = False, times: Optional[StageTimes] = None) -> Iterator[FrameResult]:
    """FrameResults of (index, frame) pairs in one thread, batch by batch (--no-pipeline): the
    reference the pipeline (pipeline.VideoPipeline) is tested against; the same steps as
    AUDetector.predict_images, timed per stage."""
    times = StageTimes() if times is None else times
    track = track and detector.tracker is not None
    if track:
        detector.tracker.reset()
    t_start = time.perf_counter()
    it = iter(frames)
    while True:
        start = clock()
        chunk = list(itertools.islice(it, max(1, detector.batch_size)))
        times.span("decode", start)
        if not chunk:
            break
        prepared, inputs = [], []
        for index, frame in chunk:
            start = clock()
            found = detector.find_faces(frame, track) if detector.face_detector is not None else [None]
            start = times.span("detect", start)
            crops = detector.crops(frame, found)
            inputs.append(detector.model_inputs(crops))
            times.span("crop", start)
            prepared.append((index, frame, found, crops if keep_crops else None))
        start = clock()
        batch = np.concatenate(inputs)
        outputs = [detector.run_model(batch[k:k + detector.batch_size], edges=True)
                   for k in range(0, max(len(batch), 1), detector.batch_size)]
        probs = np.concatenate([p for p, _ in outputs])
        edge_logits = np.concatenate([e for _, e in outputs]) if detector.has_edges else None
        times.span("model", start)
        times.batches += math.ceil(len(batch) / detector.batch_size)
        k = 0
        for index, frame, found, crops in prepared:
            faces = detector.face_results(frame, found, probs[k:k + len(found)], crops,
                                          None if edge_logits is None else edge_logits[k:k + len(found)])
            k += len(found)
            times.frames += 1
            times.faces += len(faces)
            start = clock()
            yield FrameResult(index, frame, faces)
            times.span("write", start)
    times.wall = time.perf_counter() - t_start


def process_video(detector: AUDetector, path: Path, writer: ResultWriter, out_dir: Path,
                  draw_text: bool, every_n: int = 1, annotate_video: bool = True,
                  crops_dir: Optional[Path] = None, graphs_dir: Optional[Path] = None, graph_every: int = 1,
                  pipelined: bool = True, max_frames: Optional[int] = None, times: Optional[StageTimes] = None,
                  progress: bool = True, model_workers: int = 1) -> Optional[Path]:
    """Every every_n-th frame of a video (at most max_frames of them); writes annotated/{stem}.mp4
    (or .avi) unless annotate_video is False. Every frame of the annotated video has one size:
    the panel shows --max-faces face columns (default: as many faces as the first frame holds, at
    least one). graphs_dir: the AU graphs of every graph_every-th processed frame (save_graphs).

    pipelined: decoding, face detection + cropping and the model in their own threads
    (pipeline.VideoPipeline), faces of consecutive frames batched together, `model_workers`
    batches at a time; False: one thread.
    Rows are flushed to the output files after every batch of frames. times: a StageTimes that
    receives each stage's busy time."""
    fps, total, _ = video_info(path)
    expected = math.ceil(total / every_n) if total else None
    if max_frames is not None:
        expected = min(expected, max_frames) if expected else max_frames
    frames = video_frames(path, every_n)
    if max_frames is not None:
        frames = itertools.islice(frames, max_frames)
    keep = crops_dir is not None
    if pipelined:
        results = VideoPipeline(detector, frames, track=True, keep_crops=keep, model_workers=model_workers)
        if times is not None:
            results.times = times
    else:
        results = sequential_results(detector, frames, track=True, keep_crops=keep, times=times)
    video_writer, video_path, size, columns = None, None, None, detector.max_faces
    shown = _progress(results, total=expected, desc="video") if progress else results
    flush_every = max(1, detector.batch_size)
    try:
        for n, (index, frame, faces) in enumerate(shown, 1):
            graphs = save_graphs(graphs_dir, out_dir, Path(path.name), index, faces, detector) \
                if (n - 1) % graph_every == 0 else {}
            writer.add(path.name, index, faces, graphs, timestamp=index / fps)
            save_crops(crops_dir, Path(path.name), index, faces)
            if n % flush_every == 0:
                writer.flush()
            if not annotate_video:
                continue
            if columns is None:
                columns = max(1, len(faces))
            drawn = annotate(frame, faces, detector.au_names, detector.au_descriptions if draw_text else None,
                             detector.threshold, panel_faces=columns)
            if video_writer is None:
                # the first frame fixes the size; even sides keep every codec happy
                size = (drawn.shape[1] + drawn.shape[1] % 2, drawn.shape[0] + drawn.shape[0] % 2)
                (out_dir / "annotated").mkdir(parents=True, exist_ok=True)
                video_writer, video_path = open_video_writer(out_dir / "annotated" / path.stem,
                                                             max(1.0, fps / every_n), size)
            video_writer.write(letterbox(drawn, size))
    finally:
        if hasattr(shown, "close"):
            shown.close()
        if pipelined:
            results.close()
        writer.flush()
        if video_writer is not None:
            video_writer.release()
    return video_path


# ----------------------------------------------------------------------------- benchmark
ENGINE_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}


def engine_label(detector: AUDetector) -> str:
    return ENGINE_NAMES[detector.backend] + (" bf16" if getattr(detector, "bf16", False) else "")


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
    probs, video = [], None
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        for n, (index, frame, faces) in enumerate(source, 1):
            writer.add("benchmark", index, faces, timestamp=index / 25.0)
            probs += [f.probs for f in faces]
            if n % detector.batch_size == 0:
                writer.flush()
            if annotate_frames:
                drawn = annotate(frame, faces, detector.au_names, None, detector.threshold, panel_faces=1)
                if video is None:
                    size = (drawn.shape[1] + drawn.shape[1] % 2, drawn.shape[0] + drawn.shape[0] % 2)
                    video, _ = open_video_writer(out_dir / "benchmark", 25.0, size)
                video.write(letterbox(drawn, size))
    finally:
        if pipelined:
            source.close()
        if video is not None:
            video.release()
        writer.close()
    times.wall = time.perf_counter() - start
    times.cpu = time.process_time() - cpu_start
    return times, probs


def onnx_for_benchmark(detector: AUDetector, args: argparse.Namespace, workdir: Path) -> Path:
    """--benchmark-onnx, else the detector's model exported to a temporary file (not verified:
    the benchmark compares the two engines' probabilities itself)."""
    if args.benchmark_onnx:
        return Path(args.benchmark_onnx)
    from megraphau.model.onnx_export import export_onnx

    facts = {**detector.facts, "au_names": list(detector.au_names), "au_descriptions": detector.au_descriptions,
             "crop_preset": detector.crop_preset, "crop_size": detector.crop_size}
    path = workdir / "model.onnx"
    start = time.perf_counter()
    log.info("benchmark: exporting the model to ONNX (a temporary file)...")
    export_onnx((detector.model, facts), path, verify=False, crop_size=detector.crop_size)
    log.info("benchmark: exported in %.1f s", time.perf_counter() - start)
    return path


def benchmark(detectors: dict, frames: list, track: bool, pipelined: bool = True, repeats: int = 2,
              annotate_frames: bool = False, workdir: Optional[Path] = None, model_workers: int = 1) -> dict:
    """Frames per second and busy milliseconds per frame of each pipeline stage, per engine
    ({name: AUDetector}), on `frames` processed like a video (outputs written to a temporary
    folder). The engines alternate, their order flipping every repeat, after one warm-up
    frame each; each engine's fastest pass is reported (the least disturbed on a shared machine).
    Also the largest probability difference between the engines' results."""
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
    for name, times in runs.items():
        best = min(times, key=lambda t: t.wall)
        result["engines"][name] = {**best.as_dict(), "frames_per_s_all": [t.frames / t.wall for t in times]}
    if len(probs) == 2:
        a, b = probs.values()
        if len(a) == len(b) and a:
            result["max_prob_diff"] = float(np.abs(np.stack(a) - np.stack(b)).max())
        else:
            result["max_prob_diff"] = None  # a different number of faces (detection is the same: should not happen)
    return result


def _print_table(header: list, rows: list) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def print_benchmark(result: dict, detectors: dict, what: str, args: argparse.Namespace, workers: bool) -> None:
    det = next(iter(detectors.values()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"benchmark: {what}; {det.arc} stage {det.stage}, {len(det.au_names)} AUs, batch {det.batch_size}, "
          f"model threads {det.threads or torch.get_num_threads()}"
          + (f" x {args.model_workers} workers" if workers else "")
          + f", MTCNN threads {det.face_detector.threads if det.face_detector else '-'}, "
          f"{'sequential' if args.no_pipeline else 'pipelined'}, redetect every {args.redetect_every}, "
          f"{'annotated video' if not args.no_annotate else 'no annotation'}; {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; best of {args.benchmark_repeats} passes, engines alternating")
    header = ["engine", "frames/s", "decode", "detect", "crop", "model", "write", "model ms/face", "CPU ms/frame",
              "all passes"]
    rows = []
    for name, r in result["engines"].items():
        ms = r["ms_per_frame"]
        rows.append([engine_label(detectors[name]), f"{r['frames_per_s']:.1f}", *(f"{ms[s]:.1f}" for s in STAGES),
                     "-" if r["model_ms_per_face"] is None else f"{r['model_ms_per_face']:.1f}",
                     "-" if r["cpu_ms_per_frame"] is None else f"{r['cpu_ms_per_frame']:.0f}",
                     " ".join(f"{v:.1f}" for v in r["frames_per_s_all"])])
    _print_table(header, rows)
    print("(decode .. write: busy ms per frame of each stage, wall clock, so they include time lost to other "
          "threads and processes; pipelined stages overlap, so frames/s can exceed 1000 / their sum. CPU ms/frame: "
          "the process's CPU time, all threads, per frame)")
    cores = default_threads()
    header = ["CPU ms/frame", "decode", "detect", "crop", "model", "write", "total",
              f"frames/s bound on {cores} free cores"]
    rows = []
    for name, r in result["engines"].items():
        cpu = r["cpu_ms_per_stage"]
        total = r["cpu_ms_per_frame"]
        rows.append([engine_label(detectors[name]), *(f"{cpu[s]:.1f}" for s in STAGES),
                     "-" if total is None else f"{total:.0f}",
                     "-" if not total else f"{cores * 1000 / total:.1f}"])
    _print_table(header, rows)
    print("(CPU time of the thread of each stage, which other processes do not inflate; model: the process's CPU "
          "time less the other stages', i.e. with its pool threads; the bound assumes the stages overlap perfectly)")
    if "max_prob_diff" in result:
        diff = result["max_prob_diff"]
        bf16 = any(getattr(d, "bf16", False) for d in detectors.values())
        note = ("  (PyTorch in bfloat16)" if bf16 else "" if diff is None or diff <= 1e-3
                else "  (not the same model's weights?)")
        print(f"max |probability difference| PyTorch vs ONNX Runtime: "
              f"{'faces differ' if diff is None else f'{diff:.2g}'}{note}")


# ----------------------------------------------------------------------------- CLI
EXAMPLES = """examples:
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input photo.jpg
  python demo.py --arc resnet50 --stage 2 --resume checkpoints/OpenGprahAU-ResNet50_second_stage.pth \\
      --input photo.jpg --draw_text                               # the release's demo command
  python demo.py --resume checkpoints/MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --max-faces 1
  python demo.py --resume model.pth --input clip.mp4 --openface-columns --no-annotate
  python tool/export_onnx.py --resume model.pth --output model.onnx    # then, on ONNX Runtime:
  python demo.py --resume model.onnx --input clip.mp4
  python demo.py --resume model.pth --input clip.mp4 --benchmark       # PyTorch vs ONNX Runtime
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input face.png --graph
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --graph --graph-every 10
"""

OPENFACE_HELP = ("write predictions.csv with OpenFace's column names, for tools that read OpenFace "
                 "output: frame (from 1), face_id, timestamp (s), confidence (MTCNN's face "
                 "probability), success (0: no face, then zeros), AU01_c ... (0/1 presence, OpenFace's "
                 "_c; OpenGraphAU's left/right AUs as AUL01_c, AUR01_c ...), AU01_p ... (our "
                 "occurrence probabilities; OpenFace's _r intensities are not predicted, so there "
                 "are no _r columns), then file and the face box box_x, box_y, box_w, box_h")


def get_args_parser() -> argparse.ArgumentParser:
    from megraphau.conf import HelpFormatter

    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=HelpFormatter)
    provenance.add_version_flag(p)
    p.add_argument("--resume", default=None, metavar="CKPT", help="checkpoint: a released .pth or this project's")
    p.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a video")
    p.add_argument("--arc", default=None, help="backbone (default: the checkpoint's; a different value is an error)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="model stage (default: the checkpoint's; a different value is an error)")
    p.add_argument("--draw_text", "--draw-text", action="store_true", help="add AU descriptions to the annotations")
    p.add_argument("--output", default=None, help="output folder (default: results/EXP_NAME)")
    p.add_argument("--exp-name", default="demo", help="the release's flag: output folder results/EXP_NAME")
    p.add_argument("--no-detect", action="store_true", help="inputs are face crops already: no detection")
    p.add_argument("--preset", default=None, choices=tuple(CROP_PRESETS),
                   help="face crop geometry (faces.CROP_PRESETS; default: the one the checkpoint was trained "
                        "for, else by AU count: 12 BP4D, 8 DISFA, 41 OpenGraphAU)")
    p.add_argument("--save-crops", default=None, metavar="DIR",
                   help="write each face's 256x256 crop, as fed to the model, to DIR as "
                        "{file}[_frame{n}]_face{k}.png")
    p.add_argument("--redetect-every", type=int, default=10, metavar="K",
                   help="videos: a full face detection every K frames, MTCNN's landmark stage alone "
                        "on the previous faces in between")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when available, else the CPU")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="faces per model batch")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at which an AU counts as present")
    p.add_argument("--dataset", default=None,
                   help="dataset config naming the AUs (BP4D, DISFA, OpenGraphAU, SYNTH or a .yaml path); "
                        "default: the AUs the checkpoint names, else those of its AU count")
    p.add_argument("--metric", default=None, choices=("dots", "cosine", "l1"),
                   help="stage-1 graph similarity (default: the checkpoint's, else dots)")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces per image (largest)")
    p.add_argument("--every-n", type=int, default=1, help="videos: process every n-th frame")
    p.add_argument("--no-annotate", action="store_true", help="write only predictions.csv/jsonl/json")
    p.add_argument("--openface-columns", action="store_true", help=OPENFACE_HELP)
    p.add_argument("--graph", action="store_true",
                   help="also draw each face's AU graph to OUTPUT/graphs/{file}[_frame{n}]_face{k}.png: nodes "
                        "coloured by AU probability, edges by the predicted P(both) of a stage-2 ME-GraphAU "
                        "model (stage 1 and OpenGraphAU: nodes only). About 0.2-0.5 s per face on a CPU core, "
                        "more than the model: for videos see --graph-every")
    p.add_argument("--graph-every", type=int, default=1, metavar="K",
                   help="videos with --graph: a graph for every K-th processed frame only (default 1: every "
                        "processed frame, i.e. every --every-n-th frame)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the AU model: torch's intra-op threads, or ONNX Runtime's "
                        f"(default: {default_threads()}, this machine's cores); MTCNN runs in one thread "
                        "beside it")
    p.add_argument("--detect-size", type=int, default=640, metavar="PX",
                   help="full face detections run on the frame scaled to at most PX pixels on its longer "
                        "side (0: full size); landmarks are always tracked at full size")
    p.add_argument("--model-workers", type=int, default=1, metavar="W",
                   help="videos: model batches run at the same time, each with --threads / W threads "
                        "(the pipeline keeps the frames' order)")
    p.add_argument("--bf16", action="store_true",
                   help="PyTorch models: run under bfloat16 autocast, 2.5x faster on CPUs with AMX (Xeon 4th "
                        "generation and later) and on recent GPUs, probabilities within ~2e-3 of float32; slower "
                        "on CPUs without bfloat16 units")
    p.add_argument("--no-pipeline", action="store_true",
                   help="videos: decode, detect and classify in one thread, batch by batch (default: "
                        "decoding, face detection and the model overlap in their own threads)")
    g = p.add_argument_group("benchmark")
    g.add_argument("--benchmark", action="store_true",
                   help="time the video path (decode, detect/track, crop, model, write) on the input's "
                        "first frames with PyTorch and ONNX Runtime side by side, instead of writing outputs; "
                        "a .pth is exported to a temporary .onnx (or see --benchmark-onnx)")
    g.add_argument("--benchmark-onnx", default=None, metavar="FILE",
                   help="the ONNX export of --resume to benchmark against it (skips the temporary export)")
    g.add_argument("--benchmark-engine", default="both", choices=("both", "pytorch", "onnxruntime"),
                   help="the engines to time")
    g.add_argument("--benchmark-frames", type=int, default=200, metavar="N", help="frames (or images) to time")
    g.add_argument("--benchmark-repeats", type=int, default=2, metavar="R",
                   help="passes per engine, alternating engines; the fastest is reported")
    return p


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _at_least(n: int):
    return lambda v: v >= n


#: demo.py's ranges, checked like the training scripts' (conf.check_ranges)
DEMO_RANGE_CHECKS = (
    ("every_n", "--every-n", _at_least(1), "at least 1"),
    ("redetect_every", "--redetect-every", _at_least(1), "at least 1"),
    ("max_faces", "--max-faces", _at_least(1), "at least 1"),
    ("batch_size", "-b/--batch-size", _at_least(1), "at least 1"),
    ("threads", "--threads", _at_least(1), "at least 1"),
    ("graph_every", "--graph-every", _at_least(1), "at least 1"),
    ("model_workers", "--model-workers", _at_least(1), "at least 1"),
    ("detect_size", "--detect-size", _at_least(0), "0 (full size) or more"),
    ("benchmark_frames", "--benchmark-frames", _at_least(1), "at least 1"),
    ("benchmark_repeats", "--benchmark-repeats", _at_least(1), "at least 1"),
    *(row for row in RANGE_CHECKS if row[0] == "threshold"),
)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked: a bad value is one line and exit code 2."""
    p = one_line_errors(get_args_parser())
    args = p.parse_args(argv)
    if args.output is None:
        args.output = str(Path("results") / args.exp_name)
    check_ranges(p, args, DEMO_RANGE_CHECKS)
    if args.benchmark_onnx and not Path(args.benchmark_onnx).is_file():
        p.error(f"--benchmark-onnx {args.benchmark_onnx}: file not found")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return args


def make_detector(args: argparse.Namespace, checkpoint=None) -> AUDetector:
    return AUDetector(checkpoint or args.resume, arc=args.arc, stage=args.stage, device=args.device,
                      dataset=args.dataset, threshold=args.threshold, detect=not args.no_detect,
                      max_faces=args.max_faces, batch_size=args.batch_size, metric=args.metric,
                      preset=args.preset, redetect_every=args.redetect_every, threads=model_threads(args),
                      detect_size=args.detect_size or None,
                      bf16=args.bf16 and not (checkpoint and str(checkpoint).endswith(".onnx")))


def model_threads(args: argparse.Namespace) -> int:
    """Intra-op threads of each model worker: --threads shared by the --model-workers of the video
    pipeline (images and --no-pipeline: one worker)."""
    workers = args.model_workers if getattr(args, "kind", None) == "video" and not args.no_pipeline else 1
    return max(1, args.threads // workers)


def run_benchmark(args: argparse.Namespace, detector: AUDetector, kind: str, files: list[Path]) -> int:
    """--benchmark: PyTorch and ONNX Runtime side by side on the input's first frames."""
    what, frames, _ = benchmark_frames(kind, files, args.every_n, args.benchmark_frames)
    with tempfile.TemporaryDirectory(prefix="demo_onnx_") as tmp:
        detectors = {}
        if detector.backend == "pytorch" and args.benchmark_engine in ("both", "pytorch"):
            detectors["pytorch"] = detector
        if args.benchmark_engine in ("both", "onnxruntime"):
            if detector.backend == "onnxruntime":
                detectors["onnxruntime"] = detector
            else:
                onnx_path = onnx_for_benchmark(detector, args, Path(tmp))
                onnx_detector = make_detector(args, onnx_path)
                if (onnx_detector.arc, onnx_detector.stage, onnx_detector.au_names) != \
                        (detector.arc, detector.stage, detector.au_names):
                    raise DemoError(f"--benchmark-onnx {onnx_path}: {onnx_detector.arc} stage {onnx_detector.stage} "
                                    f"with {len(onnx_detector.au_names)} AUs, not the model of --resume")
                detectors["onnxruntime"] = onnx_detector
        if not detectors:
            raise DemoError(f"--benchmark-engine {args.benchmark_engine}: {args.resume} is an ONNX file")
        pipelined = not args.no_pipeline
        result = benchmark(detectors, frames, track=kind == "video", pipelined=pipelined,
                           repeats=args.benchmark_repeats, annotate_frames=not args.no_annotate,
                           model_workers=args.model_workers if pipelined else 1)
    print_benchmark(result, detectors, what, args, pipelined and args.model_workers > 1)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the demo as `args` (from parse_args) say; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is None:
        args.threads = default_threads()
    torch.set_num_threads(args.threads)
    try:
        kind, files = list_inputs(Path(args.input), exclude=Path(args.output))
        args.kind = kind
        detector = make_detector(args)
    except (InferenceError, CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("model: %s stage %d (%s), %d AUs, %s: %s", detector.arc, detector.stage, detector.variant,
             len(detector.au_names), engine_label(detector), " ".join(detector.au_names))

    if args.benchmark:
        try:
            return run_benchmark(args, detector, kind, files)
        except (InferenceError, CheckpointMismatchError, ValueError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    out_dir = Path(args.output)
    summary = {"checkpoint": args.resume, "engine": detector.backend, "arc": detector.arc, "stage": detector.stage,
               "variant": detector.variant, "crop_preset": detector.crop_preset, "crop_size": detector.crop_size,
               "input": str(args.input),
               "provenance": provenance.collect(device=detector.device,
                                                files={"checkpoint": args.resume} if args.resume else {})}
    crops_dir = Path(args.save_crops) if args.save_crops else None
    graphs_dir = out_dir / "graphs" if args.graph else None
    if args.graph and not detector.has_edges:
        opengraphau = detector.variant == "opengraphau"
        log.info("--graph: %s predicts no AU relations (no edge logits): the graphs show %s as nodes only",
                 "this OpenGraphAU model" if opengraphau else "this stage-1 model",
                 f"its {OPENGRAPHAU_MAIN_AUS} main AUs" if opengraphau else "the AU probabilities")
    try:
        writer = ResultWriter(out_dir, detector, summary, openface=args.openface_columns)
    except OSError as err:
        print(f"error: cannot write to {out_dir}: {err}", file=sys.stderr)
        return 2
    video_path, completed = None, False
    try:
        if kind == "video":
            try:
                video_path = process_video(detector, files[0], writer, out_dir, args.draw_text, args.every_n,
                                           not args.no_annotate, crops_dir, graphs_dir, args.graph_every,
                                           pipelined=not args.no_pipeline, model_workers=args.model_workers)
            except DemoError as err:
                writer.error(files[0].name, str(err))
        else:
            root = Path(args.input) if kind == "folder" else files[0].parent
            process_images(detector, files, root, writer, out_dir, args.draw_text, not args.no_annotate, crops_dir,
                           graphs_dir)
        completed = True
    finally:
        writer.close(complete=completed)  # also on Ctrl-C: every row so far, "complete": false
    s = writer.json["summary"]
    what = "frames" if kind == "video" else "images"
    print(f"processed {s['items']} {what}: {s['faces']} faces, {s['no_face']} without a face, "
          f"{s['errors']} errors -> {out_dir / 'predictions.csv'}"
          + (f", {video_path}" if video_path else ""))
    if s["errors"] and not s["items"]:
        return 1  # nothing could be read
    return 0


def cli(argv=None) -> int:
    """demo.py's command line; exit code 0, 1 (nothing could be read), 2 (a user error: one line),
    130 (Ctrl-C: what was processed so far is written)."""
    args = parse_args(argv)
    try:
        return main(args)
    except KeyboardInterrupt:
        written = Path(args.output) / "predictions.csv"
        print("\ninterrupted: " + (f"the predictions so far are in {written}" if written.is_file()
                                   else "nothing was written"), file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
