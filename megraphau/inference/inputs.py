"""The inputs of AU detection on files: an image, a folder of images (recursive) or a video, read
as OpenCV BGR uint8 arrays. Every problem with an input is a DemoError naming the file, so a
command line can print it as one line (and a folder run can skip the file and go on)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from megraphau.inference.detector import InferenceError
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, ImageFileError, display_name, opencv_path, read_image

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "DemoError", "VideoStats", "list_inputs", "read_bgr_image",
           "video_frames", "video_info"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class DemoError(InferenceError):
    """A problem with the demo's input or options; the message names the file."""


def read_bgr_image(path: Path, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as OpenCV's BGR uint8 array (dataset.read_image gives the training
    pipeline's RGB tensor), whatever its name (imagefiles.read_image); DemoError naming the file
    when it cannot be read or decoded, or its header claims more than max_pixels pixels (None or
    0: no limit), checked before decoding."""
    try:
        return read_image(path, max_pixels)
    except ImageFileError as err:
        raise DemoError(str(err)) from None


def list_inputs(path: Path, exclude: Optional[Path] = None) -> tuple[str, list[Path]]:
    """('image' | 'video' | 'folder', files). A folder lists its images recursively, sorted,
    leaving out anything under `exclude` (an output folder inside the input folder)."""
    if path.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not (skip is not None and p.resolve().is_relative_to(skip)))
        if not files:
            raise DemoError(f"{display_name(path)}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return "folder", files
    if not path.exists():
        raise DemoError(f"{display_name(path)}: input not found")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return "video", [path]
    return "image", [path]


@dataclass
class VideoStats:
    """What video_frames saw while decoding: each yielded frame's time in seconds, from the
    decoder (popped by the consumer, so it stays small), and the frames that could not be
    decoded."""
    timestamps: dict = field(default_factory=dict)  # frame index -> seconds
    decoded: int = 0
    undecodable: int = 0


#: Reads that may fail in a row before a damaged video is given up (a healthy file fails once, at its end).
MAX_FAILED_READS = 1000


def video_frames(path: Path, every_n: int = 1, stats: Optional[VideoStats] = None
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) for every every_n-th decoded frame; DemoError naming the file if
    unreadable. Frame indices count decoded frames.

    stats (a VideoStats) receives each yielded frame's timestamp: the decoder's presentation time
    (CAP_PROP_POS_MSEC after the read), right for variable-frame-rate videos, or index / fps
    where the container gives none; and the frames that could not be decoded: reads that failed
    before a later one succeeded, plus, at the end, the frames the container's length (frame
    count / fps) holds beyond the last decoded frame's time (more than two frames' worth: the
    count of some containers is an estimate)."""
    cap = cv2.VideoCapture(_opencv_path(path))
    if not cap.isOpened():
        raise DemoError(f"{display_name(path)}: cannot open video")
    stats = VideoStats() if stats is None else stats
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    index, failed, last_time = 0, 0, None
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                # a damaged frame fails its read, later ones may decode again; at the end every read fails
                failed += 1
                if failed > MAX_FAILED_READS or index + failed > total:
                    break
                continue
            stats.undecodable += failed
            failed = 0
            msec = cap.get(cv2.CAP_PROP_POS_MSEC)
            seconds = msec / 1000.0 if math.isfinite(msec) and (msec > 0 or index == 0) else index / fps
            last_time = seconds
            stats.decoded += 1
            if index % every_n == 0:
                stats.timestamps[index] = seconds
                yield index, frame
            index += 1
    finally:
        cap.release()
    if not index:
        raise DemoError(f"{display_name(path)}: no frame could be decoded (not a video, or an unsupported codec)")
    missing = round((total / fps - last_time) * fps) - 1 if total else 0
    if missing > 2:
        stats.undecodable += missing


def _opencv_path(path: Path) -> str:
    try:
        return opencv_path(path)
    except ImageFileError as err:
        raise DemoError(str(err)) from None


def video_info(path: Path) -> tuple[float, int, tuple[int, int]]:
    """(frames per second, frame count as the container says (0: unknown), (width, height))."""
    cap = cv2.VideoCapture(_opencv_path(path))
    if not cap.isOpened():
        raise DemoError(f"{display_name(path)}: cannot open video")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    return fps, max(total, 0), size
