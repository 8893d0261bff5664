"""Facial action unit detection on images, folders and videos with a ME-GraphAU / OpenGraphAU
checkpoint (Luo et al., IJCAI-ECAI 2022).

The checkpoint decides the model and the AU set (inference.AUDetector, the Python API): a
project checkpoint names its AUs; a released file's AU count picks them (12 -> BP4D, 8 -> DISFA,
41 -> OpenGraphAU), or --dataset CONFIG names them. Faces (all, largest first) are cropped
exactly like the training crops, put through the test transform and classified in batches.
This file holds the inputs (images, folders, videos), the output writers and the command line;
drawing is visualize.py.

    python demo.py --arc resnet50 --stage 2 --resume OpenGprahAU-ResNet50_second_stage.pth \\
        --input photo.jpg --draw_text
    python demo.py --resume MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
    python demo.py --resume model.pth --input clip.mp4 --every-n 5
    python demo.py --arc resnet18 --stage 2 --dataset OpenGraphAU --input photo.jpg --benchmark

Outputs in --output: predictions.csv (one row per face, or one no_face row per image/frame),
predictions.json, and annotated/ (images, or one .mp4/.avi per video). For a stage-2 ME-GraphAU
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
import json
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch

import provenance
from inference import AUDetector, FaceResult, InferenceError
from model import CheckpointMismatchError
from visualize import annotate, letterbox

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
class ResultWriter:
    """predictions.csv (one row per face or per face-less image/frame) and predictions.json."""

    def __init__(self, out_dir: Path, detector: AUDetector, args_summary: dict):
        self.out_dir = out_dir
        self.names = detector.au_names
        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_file = open(out_dir / "predictions.csv", "w", newline="")
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(["file", "frame", "face", "x", "y", "w", "h", "no_face"]
                          + [c for n in self.names for c in (f"{n}_prob", n)])
        self.json = {**args_summary, "au_names": list(self.names),
                     "au_descriptions": detector.au_descriptions, "threshold": detector.threshold}
        if getattr(detector, "has_edges", False):
            self.json["pair_probs_note"] = PAIR_PROBS_NOTE
        self.json.update(results=[], errors=[])
        self.n_items = self.n_faces = self.n_no_face = 0

    def add(self, file: str, frame: Optional[int], faces: Sequence[FaceResult],
            graphs: Optional[dict] = None) -> None:
        """One image or frame; graphs: {face index: path of its --graph picture, relative to the
        output folder}."""
        self.n_items += 1
        frame_text = "" if frame is None else frame
        if not faces:
            self.n_no_face += 1
            self.csv.writerow([file, frame_text, "", "", "", "", "", 1] + [""] * (2 * len(self.names)))
        for face in faces:
            self.n_faces += 1
            values = [v for p, a in zip(face.probs, face.labels) for v in (f"{p:.6f}", int(a))]
            self.csv.writerow([file, frame_text, face.index, *face.box, 0] + values)
        entries = [f.as_dict(self.names) for f in faces]
        for face, entry in zip(faces, entries):
            if graphs and face.index in graphs:
                entry["graph"] = graphs[face.index]
        self.json["results"].append({"file": file, "frame": frame, "no_face": not faces, "faces": entries})

    def error(self, file: str, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.json["errors"].append({"file": file, "error": message})

    def close(self) -> None:
        self.csv_file.close()
        self.json["summary"] = {"items": self.n_items, "faces": self.n_faces,
                                "no_face": self.n_no_face, "errors": len(self.json["errors"])}
        (self.out_dir / "predictions.json").write_text(compact_json(self.json))


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
    from plots import draw_au_graph

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


def process_video(detector: AUDetector, path: Path, writer: ResultWriter, out_dir: Path,
                  draw_text: bool, every_n: int = 1, annotate_video: bool = True,
                  crops_dir: Optional[Path] = None, graphs_dir: Optional[Path] = None,
                  graph_every: int = 1) -> Optional[Path]:
    """Every every_n-th frame of a video; writes annotated/{stem}.mp4 (or .avi) unless
    annotate_video is False. Every frame of the annotated video has one size: the panel shows
    --max-faces face columns (default: as many faces as the first frames hold, at least one).
    graphs_dir: the AU graphs of every graph_every-th processed frame (save_graphs)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: cannot open video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    video_writer, video_path, size, columns = None, None, None, detector.max_faces
    if detector.tracker is not None:
        detector.tracker.reset()
    frames = _progress(video_frames(path, every_n), total=math.ceil(total / every_n) or None, desc="video")
    processed = 0
    try:
        for chunk in _batched(frames, max(1, detector.batch_size)):
            # consecutive frames: the face tracker's landmark stage, a full detection every few frames
            results = detector.predict_images([frame for _, frame in chunk], track=detector.tracker is not None,
                                              keep_crops=crops_dir is not None)
            if columns is None:
                columns = max(1, max(len(faces) for faces in results))
            for (index, frame), faces in zip(chunk, results):
                graphs = save_graphs(graphs_dir, out_dir, Path(path.name), index, faces, detector) \
                    if processed % graph_every == 0 else {}
                processed += 1
                writer.add(path.name, index, faces, graphs)
                save_crops(crops_dir, Path(path.name), index, faces)
                if not annotate_video:
                    continue
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
        if video_writer is not None:
            video_writer.release()
    return video_path


# ----------------------------------------------------------------------------- benchmark
def benchmark(detector: AUDetector, images: list[np.ndarray], repeats: int = 3) -> dict:
    """Frames per second of detection + cropping, of the model alone, and of both, on `images`
    (after one warm-up pass)."""
    detector.predict_images(images[:1])  # warm-up (lazy init, allocator)
    t0 = time.perf_counter()
    crops = []
    for _ in range(repeats):
        crops = [c for img in images for c in detector.faces_and_crops(img)[1]]
    t_detect = (time.perf_counter() - t0) / repeats
    crops = crops or [cv2.resize(images[0], (256, 256))]
    t0 = time.perf_counter()
    for _ in range(repeats):
        detector.classify(crops)
    t_model = (time.perf_counter() - t0) / repeats
    n = len(images)
    return {"frames": n, "faces": len(crops), "detect_ms_per_frame": 1000 * t_detect / n,
            "model_ms_per_face": 1000 * t_model / len(crops),
            "frames_per_s": n / (t_detect + t_model),
            "threads": torch.get_num_threads(), "device": str(detector.device)}


# ----------------------------------------------------------------------------- CLI
EXAMPLES = """examples:
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input photo.jpg
  python demo.py --arc resnet50 --stage 2 --resume checkpoints/OpenGprahAU-ResNet50_second_stage.pth \\
      --input photo.jpg --draw_text                               # the release's demo command
  python demo.py --resume checkpoints/MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --max-faces 1
  python demo.py --resume model.pth --input frames/ --benchmark --threads 2
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input face.png --graph
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --graph --graph-every 10
"""


def get_args_parser() -> argparse.ArgumentParser:
    from conf import HelpFormatter

    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=HelpFormatter)
    p.add_argument("--resume", default=None, metavar="CKPT", help="checkpoint: a released .pth or this project's")
    p.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a video")
    p.add_argument("--arc", default=None, help="backbone (default: the checkpoint's; a different value is an error)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="model stage (default: the checkpoint's; a different value is an error)")
    p.add_argument("--draw_text", "--draw-text", action="store_true", help="add AU descriptions to the annotations")
    p.add_argument("--output", default=None, help="output folder (default: results/EXP_NAME)")
    p.add_argument("--exp-name", default="demo", help="the release's flag: output folder results/EXP_NAME")
    p.add_argument("--no-detect", action="store_true", help="inputs are face crops already: no detection")
    p.add_argument("--preset", default=None, choices=("BP4D", "DISFA", "OpenGraphAU"),
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
    p.add_argument("--no-annotate", action="store_true", help="write only predictions.csv/json")
    p.add_argument("--graph", action="store_true",
                   help="also draw each face's AU graph to OUTPUT/graphs/{file}[_frame{n}]_face{k}.png: nodes "
                        "coloured by AU probability, edges by the predicted P(both) of a stage-2 ME-GraphAU "
                        "model (stage 1 and OpenGraphAU: nodes only). About 0.2-0.5 s per face on a CPU core, "
                        "more than the model: for videos see --graph-every")
    p.add_argument("--graph-every", type=int, default=1, metavar="K",
                   help="videos with --graph: a graph for every K-th processed frame only (default 1: every "
                        "processed frame, i.e. every --every-n-th frame)")
    p.add_argument("--benchmark", action="store_true",
                   help="time detection and model on the input images instead of writing outputs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked: a bad value is one line and exit code 2."""
    from conf import one_line_errors

    p = one_line_errors(get_args_parser())
    args = p.parse_args(argv)
    if args.output is None:
        args.output = str(Path("results") / args.exp_name)
    if args.every_n < 1:
        p.error("--every-n must be at least 1")
    if args.redetect_every < 1:
        p.error("--redetect-every must be at least 1")
    if args.max_faces is not None and args.max_faces < 1:
        p.error("--max-faces must be at least 1")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if not 0.0 < args.threshold < 1.0:
        p.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.graph_every < 1:
        p.error("--graph-every must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return args


def main(args: argparse.Namespace) -> int:
    """Run the demo as `args` (from parse_args) say; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        detector = AUDetector(args.resume, arc=args.arc, stage=args.stage, device=args.device,
                              dataset=args.dataset, threshold=args.threshold, detect=not args.no_detect,
                              max_faces=args.max_faces, batch_size=args.batch_size, metric=args.metric,
                              preset=args.preset, redetect_every=args.redetect_every)
        kind, files = list_inputs(Path(args.input), exclude=Path(args.output))
    except (InferenceError, CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("model: %s stage %d (%s), %d AUs: %s", detector.arc, detector.stage, detector.variant,
             len(detector.au_names), " ".join(detector.au_names))

    if args.benchmark:
        if kind == "video":
            images = [f for _, f in zip(range(16), (fr for _, fr in video_frames(files[0], args.every_n)))]
        else:
            images = [read_bgr_image(f) for f in files[:16]]
        r = benchmark(detector, images)
        print(f"benchmark {detector.arc} stage {detector.stage} on {r['device']} ({r['threads']} threads), "
              f"{r['frames']} frames, {r['faces']} faces: detection {r['detect_ms_per_frame']:.1f} ms/frame, "
              f"model {r['model_ms_per_face']:.1f} ms/face (batch {detector.batch_size}), "
              f"total {r['frames_per_s']:.2f} frames/s")
        return 0

    out_dir = Path(args.output)
    summary = {"checkpoint": args.resume, "arc": detector.arc, "stage": detector.stage,
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
        writer = ResultWriter(out_dir, detector, summary)
    except OSError as err:
        print(f"error: cannot write to {out_dir}: {err}", file=sys.stderr)
        return 2
    video_path = None
    try:
        if kind == "video":
            try:
                video_path = process_video(detector, files[0], writer, out_dir, args.draw_text, args.every_n,
                                           not args.no_annotate, crops_dir, graphs_dir, args.graph_every)
            except DemoError as err:
                writer.error(files[0].name, str(err))
        else:
            root = Path(args.input) if kind == "folder" else files[0].parent
            process_images(detector, files, root, writer, out_dir, args.draw_text, not args.no_annotate, crops_dir,
                           graphs_dir)
    finally:
        writer.close()
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
