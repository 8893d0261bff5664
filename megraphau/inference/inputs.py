"""The inputs of AU detection on files: an image, a folder of images (recursive) or a video, read
as OpenCV BGR uint8 arrays. Every problem with an input is a DemoError naming the file, so a
command line can print it as one line (and a folder run can skip the file and go on)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from megraphau.inference.detector import InferenceError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "DemoError", "list_inputs", "read_bgr_image", "video_frames",
           "video_info"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class DemoError(InferenceError):
    """A problem with the demo's input or options; the message names the file."""


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
