"""Facial action unit detection on images, folders and videos with a ME-GraphAU / OpenGraphAU
checkpoint (Luo et al., IJCAI-ECAI 2022).

The checkpoint decides the AU set: 12 AUs -> BP4D's names, 8 -> DISFA's, 41 -> OpenGraphAU's
(or the names a project checkpoint stores, or --dataset CONFIG). Faces are found with
tool.face_detection (all faces, largest first), cropped exactly like the training crops
(align_crop, 256 x 256), put through the test transform (resize 256, centre crop 224, ImageNet
normalisation) and classified in batches.

    python demo.py --arc resnet50 --stage 2 --resume OpenGprahAU-ResNet50_second_stage.pth \\
        --input photo.jpg --draw_text
    python demo.py --resume MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
    python demo.py --resume model.pth --input clip.mp4 --every-n 5
    python demo.py --arc resnet18 --stage 2 --dataset OpenGraphAU --input photo.jpg --benchmark

Outputs in --output: predictions.csv (one row per face, or one no_face row per image/frame),
predictions.json, and annotated/ (images, or one .mp4/.avi per video).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch

from dataset import build_transform, load_dataset_config
from model import build_model, infer_config, load_checkpoint, read_checkpoint
from model.checkpoint import CheckpointMismatchError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# the AU set a checkpoint's output count stands for, in this order of preference
KNOWN_AU_SETS = {12: "BP4D", 8: "DISFA", 41: "OpenGraphAU"}

log = logging.getLogger("demo")


class DemoError(RuntimeError):
    """A problem with the demo's input, checkpoint or options; the message names the file."""


# ----------------------------------------------------------------------------- configuration
def load_au_config(name_or_path: str) -> dict:
    """A dataset config (config/{name}.yaml or a .yaml path) with au_names, au_descriptions,
    num_classes and neighbor_num; a bad one is a DemoError naming the file."""
    try:
        return load_dataset_config(name_or_path)
    except ValueError as err:
        raise DemoError(str(err)) from None


def test_transform(crop_size: int = 224):
    """The release's test transform (resize 256, centre crop 224, ImageNet normalisation) at the
    checkpoint's crop size: uint8 RGB (3, H, W) -> float32 (3, crop, crop)."""
    return build_transform(False, crop_size=crop_size)


# ----------------------------------------------------------------------------- detector API
@dataclass
class FaceResult:
    """One face: box (x, y, w, h) in the input image, probabilities (N,) and 0/1 labels (N,)."""
    index: int
    box: tuple
    probs: np.ndarray
    labels: np.ndarray
    score: Optional[float] = None

    def as_dict(self, au_names: Sequence[str]) -> dict:
        return {"face": self.index, "box": [int(v) for v in self.box], "detector_score": self.score,
                "probs": {n: round(float(p), 6) for n, p in zip(au_names, self.probs)},
                "active": [n for n, a in zip(au_names, self.labels) if a]}


class AUDetector:
    """Face detection + AU recognition with one checkpoint.

    checkpoint: a release-style or project checkpoint, or None with `arc`, `stage` and `dataset`
        (a randomly initialised model, for timing only).
    arc / stage: checked against the checkpoint (a mismatch raises load_checkpoint's error
        naming the keys); None: taken from the checkpoint.
    dataset: a dataset config name/path whose au_names name the outputs (needed when the AU
        count matches no known set).
    detect: False treats every image as one face crop (no detection).
    """

    def __init__(self, checkpoint: Optional[str | Path], arc: Optional[str] = None,
                 stage: Optional[int] = None, device: str | torch.device = "cpu",
                 dataset: Optional[str] = None, threshold: float = 0.5, detect: bool = True,
                 max_faces: Optional[int] = None, batch_size: int = 16, metric: Optional[str] = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DemoError(f"--device {device}: CUDA is not available here (use --device cpu)")
        self.threshold = float(threshold)
        self.max_faces = max_faces
        self.batch_size = max(1, int(batch_size))
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        au_cfg = load_au_config(dataset) if dataset else None
        stored: dict = {}
        if checkpoint is not None:
            state_dict, obj = read_checkpoint(checkpoint)
            found = infer_config(state_dict)
            stored = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else {}
            num_classes, variant = found["num_classes"], found["variant"]
            if num_classes is None:
                raise DemoError(f"{checkpoint}: no AU classifier (head.sc / head.main_sc) in the "
                                f"state dict; not a ME-GraphAU checkpoint")
            arc = arc or found["arc"]
            if arc is None:
                raise DemoError(f"{checkpoint}: cannot tell the backbone from the keys; pass --arc")
            stage = stage or found["stage"]
            names = obj.get("au_names") if isinstance(obj.get("au_names"), list) else None
            trained_args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
            crop_size = int(trained_args.get("crop_size") or 224)  # the release trained at 224
        else:
            crop_size = 224
            if au_cfg is None or arc is None or stage is None:
                raise DemoError("without --resume, give --arc, --stage and --dataset (random weights)")
            num_classes = au_cfg["num_classes"]
            variant = au_cfg.get("variant") or ("opengraphau" if num_classes == 41 else "megraphau")
            names = None
        self.au_names, self.au_descriptions, neighbor_num = self._au_set(num_classes, au_cfg, names, checkpoint)
        neighbor_num = stored.get("neighbor_num", neighbor_num)
        metric = metric or stored.get("metric", "dots")
        self.model = build_model(int(stage), arc, num_classes, neighbor_num=neighbor_num, metric=metric,
                                 pretrained=False, variant=variant or "megraphau")
        if checkpoint is not None:
            info = load_checkpoint(self.model, checkpoint)  # strict: CheckpointMismatchError names the keys
            if info["fresh_keys"]:  # training may start stage 2 from stage 1; inference must not
                raise CheckpointMismatchError(
                    f"{checkpoint} is a stage-1 checkpoint but --stage {stage} was asked for: its edge and "
                    f"graph parts ({len(info['fresh_keys'])} keys, e.g. {info['fresh_keys'][0]}) would be "
                    f"random. Drop --stage or pass --stage 1.")
        self.model.to(self.device).eval()
        self.arc, self.stage, self.variant = arc, int(stage), variant or "megraphau"
        self.crop_size = crop_size
        self.transform = test_transform(crop_size)
        self.face_detector = None
        if detect:
            from tool.face_detection import FaceDetector
            self.face_detector = FaceDetector()

    @staticmethod
    def _au_set(num_classes: int, au_cfg: Optional[dict], names: Optional[list], checkpoint):
        """(au_names, au_descriptions, neighbor_num) for a model with num_classes outputs."""
        if au_cfg is not None:
            if len(au_cfg["au_names"]) != num_classes:
                raise DemoError(f"--dataset {au_cfg.get('config_path', au_cfg.get('name'))} names "
                                f"{len(au_cfg['au_names'])} AUs but {checkpoint} predicts {num_classes}")
            return list(au_cfg["au_names"]), au_cfg.get("au_descriptions"), au_cfg.get("neighbor_num", 4)
        if num_classes in KNOWN_AU_SETS:
            cfg = load_au_config(KNOWN_AU_SETS[num_classes])
            if names and len(names) == num_classes:  # a project checkpoint's own names win
                same = list(names) == list(cfg["au_names"])
                return list(names), cfg.get("au_descriptions") if same else None, cfg.get("neighbor_num", 4)
            return list(cfg["au_names"]), cfg.get("au_descriptions"), cfg.get("neighbor_num", 4)
        if names and len(names) == num_classes:
            return list(names), None, 4
        known = ", ".join(f"{n} ({d})" for n, d in KNOWN_AU_SETS.items())
        raise DemoError(f"{checkpoint} predicts {num_classes} AUs, which matches no known AU set "
                        f"({known}); pass --dataset CONFIG whose au_names name them")

    # -- detection and cropping
    def faces_and_crops(self, image_bgr: np.ndarray) -> tuple[list, list]:
        """[(box, score)], [256 x 256 BGR crop] for each face, largest first."""
        if self.face_detector is None:
            h, w = image_bgr.shape[:2]
            return [((0, 0, w, h), None)], [image_bgr]  # the transform resizes and centre-crops
        from tool.face_detection import align_crop
        faces = self.face_detector.detect(image_bgr)[: self.max_faces]
        return ([(f.box, f.score) for f in faces],
                [align_crop(image_bgr, f, size=256) for f in faces])

    def _to_tensor(self, crop_bgr: np.ndarray) -> torch.Tensor:
        if crop_bgr.ndim == 2:
            crop_bgr = cv2.cvtColor(crop_bgr, cv2.COLOR_GRAY2BGR)
        rgb = np.ascontiguousarray(crop_bgr[:, :, 2::-1])  # BGR(A) -> RGB
        return self.transform(torch.from_numpy(rgb).permute(2, 0, 1))  # (3, crop, crop)

    @torch.inference_mode()
    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Face crops (BGR uint8) -> AU probabilities (len(crops), N), in batches."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([self._to_tensor(c) for c in crops[start:start + self.batch_size]])
            probs = self.model(batch.to(self.device))
            probs = probs[0] if isinstance(probs, tuple) else probs  # stage 2: (probs, edge logits)
            out.append(probs.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.au_names)), np.float32)

    def predict_images(self, images: Sequence[np.ndarray]) -> list[list[FaceResult]]:
        """Faces of several images, classified together (one list of faces per image)."""
        per_image, crops = [], []
        for image in images:
            boxes, image_crops = self.faces_and_crops(image)
            per_image.append(boxes)
            crops += image_crops
        probs = self.classify(crops)
        results, k = [], 0
        for boxes in per_image:
            faces = []
            for i, (box, score) in enumerate(boxes):
                p = probs[k]
                faces.append(FaceResult(i, tuple(int(v) for v in box), p, (p >= self.threshold).astype(np.uint8), score))
                k += 1
            results.append(faces)
        return results

    def predict_image(self, image_bgr: np.ndarray) -> list[FaceResult]:
        """All faces of one BGR image, largest first (empty when no face is found)."""
        return self.predict_images([image_bgr])[0]


# ----------------------------------------------------------------------------- drawing
AU_ON = (60, 200, 60)  # BGR
AU_OFF = (150, 150, 150)
BOX_COLOURS = [(0, 200, 255), (255, 160, 0), (200, 0, 255), (0, 255, 120), (255, 80, 80)]


def annotate(image_bgr: np.ndarray, faces: Sequence[FaceResult], au_names: Sequence[str],
             descriptions: Optional[Sequence[str]] = None, threshold: float = 0.5) -> np.ndarray:
    """The image with face boxes, plus a panel on its right listing, for each face, every AU
    (name, description if given) with a probability bar; AUs at or above the threshold in green.

    Small images are enlarged first (to 540 px high) and the font follows the image height, so
    the text stays readable whatever the input size.
    """
    image = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    image = image[:, :, :3].copy()
    h0 = image.shape[0]
    zoom = max(1.0, 540.0 / h0)
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    rows = max(len(au_names), 1) + 1
    row_h = int(np.clip(h / rows, 16, 40))  # pixels per AU line
    scale = row_h / 36.0  # HERSHEY_SIMPLEX at scale 1 is ~22 px high plus descenders
    thick = max(1, round(row_h / 16))
    for k, face in enumerate(faces):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        x, y, bw, bh = (int(round(v * zoom)) for v in face.box)
        cv2.rectangle(image, (x, y), (x + bw, y + bh), colour, max(2, thick + 1))
        cv2.putText(image, f"face {k}", (x + 2, max(row_h, y - 4)), font, scale * 1.2, colour, thick + 1, cv2.LINE_AA)
    if not faces:
        cv2.putText(image, "no face", (row_h // 2, row_h + 4), font, scale * 1.5, (0, 0, 255), thick + 1, cv2.LINE_AA)
        return image
    labels = [f"{n} {d}" if descriptions else n for n, d in zip(au_names, descriptions or au_names)]
    text_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels)
    bar_w = max(6 * row_h, 90)
    col_w = text_w + bar_w + 3 * row_h + cv2.getTextSize("0.00", font, scale, thick)[0][0]
    panel_h = max(h, rows * row_h + row_h)
    panel = np.full((panel_h, col_w * len(faces), 3), 30, np.uint8)
    for k, face in enumerate(faces):
        x0 = k * col_w + row_h // 2
        cv2.putText(panel, f"face {k}", (x0, row_h - 4), font, scale * 1.1,
                    BOX_COLOURS[k % len(BOX_COLOURS)], thick, cv2.LINE_AA)
        for i, (text, p) in enumerate(zip(labels, face.probs)):
            y_base = (i + 2) * row_h - row_h // 4
            on = p >= threshold
            cv2.putText(panel, text, (x0, y_base), font, scale, AU_ON if on else AU_OFF, thick, cv2.LINE_AA)
            bx = x0 + text_w + row_h // 2
            top, bottom = y_base - int(row_h * 0.6), y_base
            cv2.rectangle(panel, (bx, top), (bx + bar_w, bottom), (80, 80, 80), -1)
            fill = int(round(bar_w * float(np.clip(p, 0, 1))))
            cv2.rectangle(panel, (bx, top), (bx + fill, bottom), AU_ON if on else AU_OFF, -1)
            cv2.putText(panel, f"{p:.2f}", (bx + bar_w + row_h // 3, y_base), font, scale,
                        (230, 230, 230), thick, cv2.LINE_AA)
    if panel_h > h:
        image = cv2.copyMakeBorder(image, 0, panel_h - h, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.hstack([image, panel])


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit an image into (width, height) keeping its aspect ratio (video frames must all match)."""
    w, h = size
    ih, iw = image.shape[:2]
    if (iw, ih) == (w, h):
        return image
    s = min(w / iw, h / ih)
    resized = cv2.resize(image, (max(1, int(iw * s)), max(1, int(ih * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - resized.shape[0]) // 2, (w - resized.shape[1]) // 2
    out[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return out


# ----------------------------------------------------------------------------- inputs
def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image; DemoError naming the file when it cannot be decoded."""
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
                     "au_descriptions": detector.au_descriptions, "threshold": detector.threshold,
                     "results": [], "errors": []}
        self.n_items = self.n_faces = self.n_no_face = 0

    def add(self, file: str, frame: Optional[int], faces: Sequence[FaceResult]) -> None:
        self.n_items += 1
        frame_text = "" if frame is None else frame
        if not faces:
            self.n_no_face += 1
            self.csv.writerow([file, frame_text, "", "", "", "", "", 1] + [""] * (2 * len(self.names)))
        for face in faces:
            self.n_faces += 1
            values = [v for p, a in zip(face.probs, face.labels) for v in (f"{p:.6f}", int(a))]
            self.csv.writerow([file, frame_text, face.index, *face.box, 0] + values)
        self.json["results"].append({"file": file, "frame": frame, "no_face": not faces,
                                     "faces": [f.as_dict(self.names) for f in faces]})

    def error(self, file: str, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.json["errors"].append({"file": file, "error": message})

    def close(self) -> None:
        self.csv_file.close()
        self.json["summary"] = {"items": self.n_items, "faces": self.n_faces,
                                "no_face": self.n_no_face, "errors": len(self.json["errors"])}
        (self.out_dir / "predictions.json").write_text(json.dumps(self.json, indent=1))


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


def process_images(detector: AUDetector, files: list[Path], root: Path, writer: ResultWriter,
                   out_dir: Path, draw_text: bool, annotate_images: bool = True) -> None:
    """Images in batches (faces of several images share one model batch); unreadable files are
    reported and skipped."""
    show = _progress(files, total=len(files), desc="images") if len(files) > 1 else files
    it = iter(show)
    for chunk in _batched(it, max(1, detector.batch_size)):
        loaded = []
        for path in chunk:
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            try:
                loaded.append((rel, read_image(path)))
            except DemoError as err:
                writer.error(str(rel), str(err))
        results = detector.predict_images([img for _, img in loaded])
        for (rel, image), faces in zip(loaded, results):
            writer.add(rel.as_posix(), None, faces)
            if annotate_images:
                drawn = annotate(image, faces, detector.au_names,
                                 detector.au_descriptions if draw_text else None, detector.threshold)
                cv2.imwrite(str(annotated_path(out_dir, rel)), drawn)


def process_video(detector: AUDetector, path: Path, writer: ResultWriter, out_dir: Path,
                  draw_text: bool, every_n: int = 1) -> Optional[Path]:
    """Every every_n-th frame of a video; writes annotated/{stem}.mp4 (or .avi)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: cannot open video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    video_writer, video_path, size = None, None, None
    frames = _progress(video_frames(path, every_n), total=math.ceil(total / every_n) or None, desc="video")
    try:
        for chunk in _batched(frames, max(1, detector.batch_size)):
            results = detector.predict_images([frame for _, frame in chunk])
            for (index, frame), faces in zip(chunk, results):
                writer.add(path.name, index, faces)
                drawn = annotate(frame, faces, detector.au_names,
                                 detector.au_descriptions if draw_text else None, detector.threshold)
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
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arc", default=None, help="backbone; default: read from the checkpoint (checked against it)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None, help="default: read from the checkpoint")
    p.add_argument("--resume", default=None, help="checkpoint (release .pth or this project's)")
    p.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a video")
    p.add_argument("--draw_text", "--draw-text", action="store_true", help="add AU descriptions to the annotations")
    p.add_argument("--output", default=None, help="output folder (default: results/{--exp-name}, "
                   "i.e. results/demo)")
    p.add_argument("--exp-name", default="demo", help="the release's flag: output folder results/EXP_NAME")
    p.add_argument("--no-detect", action="store_true", help="inputs are face crops already: no detection")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="faces per model batch")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at which an AU counts as present")
    p.add_argument("--dataset", default=None, help="dataset config naming the AUs (BP4D, DISFA, "
                   "OpenGraphAU, SYNTH or a .yaml path); default: chosen by the checkpoint's AU count")
    p.add_argument("--metric", default=None, choices=("dots", "cosine", "l1"),
                   help="stage-1 graph similarity (default: the checkpoint's, else dots)")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces per image (largest)")
    p.add_argument("--every-n", type=int, default=1, help="videos: process every n-th frame")
    p.add_argument("--no-annotate", action="store_true", help="write only predictions.csv/json")
    p.add_argument("--benchmark", action="store_true",
                   help="time detection and model on the input images instead of writing outputs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = str(Path("results") / args.exp_name)
    if args.every_n < 1:
        p.error("--every-n must be at least 1")
    if args.max_faces is not None and args.max_faces < 1:
        p.error("--max-faces must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        detector = AUDetector(args.resume, arc=args.arc, stage=args.stage, device=args.device,
                              dataset=args.dataset, threshold=args.threshold, detect=not args.no_detect,
                              max_faces=args.max_faces, batch_size=args.batch_size, metric=args.metric)
        kind, files = list_inputs(Path(args.input), exclude=Path(args.output))
    except (DemoError, CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("model: %s stage %d (%s), %d AUs: %s", detector.arc, detector.stage, detector.variant,
             len(detector.au_names), " ".join(detector.au_names))

    if args.benchmark:
        if kind == "video":
            images = [f for _, f in zip(range(16), (fr for _, fr in video_frames(files[0], args.every_n)))]
        else:
            images = [read_image(f) for f in files[:16]]
        r = benchmark(detector, images)
        print(f"benchmark {detector.arc} stage {detector.stage} on {r['device']} ({r['threads']} threads), "
              f"{r['frames']} frames, {r['faces']} faces: detection {r['detect_ms_per_frame']:.1f} ms/frame, "
              f"model {r['model_ms_per_face']:.1f} ms/face (batch {detector.batch_size}), "
              f"total {r['frames_per_s']:.2f} frames/s")
        return 0

    out_dir = Path(args.output)
    summary = {"checkpoint": args.resume, "arc": detector.arc, "stage": detector.stage,
               "variant": detector.variant, "input": str(args.input)}
    try:
        writer = ResultWriter(out_dir, detector, summary)
    except OSError as err:
        print(f"error: cannot write to {out_dir}: {err}", file=sys.stderr)
        return 2
    video_path = None
    try:
        if kind == "video":
            try:
                video_path = process_video(detector, files[0], writer, out_dir, args.draw_text, args.every_n)
            except DemoError as err:
                writer.error(files[0].name, str(err))
        else:
            root = Path(args.input) if kind == "folder" else files[0].parent
            process_images(detector, files, root, writer, out_dir, args.draw_text, not args.no_annotate)
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


if __name__ == "__main__":
    sys.exit(main())
