"""The inputs of AU detection on files: an image, a video, a folder of images and videos
(recursive), a glob pattern, a text file listing inputs (one path a line) or a camera index, read
as OpenCV BGR uint8 arrays. Every problem with an input is a DemoError naming the file, so a
command line can print it as one line (and a folder run can skip the file and go on)."""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from megraphau.inference.detector import InferenceError
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, ImageFileError, display_name, opencv_path, read_image

__all__ = ["IMAGE_EXTENSIONS", "LIST_EXTENSIONS", "VIDEO_EXTENSIONS", "DemoError", "InputSet", "VideoStats",
           "camera_frames", "is_video", "list_inputs", "read_bgr_image", "resolve_inputs", "video_frames",
           "video_info"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
#: a file with one of these suffixes lists the inputs, one path a line
LIST_EXTENSIONS = {".txt", ".lst", ".list"}


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


def is_video(path: Path) -> bool:
    """Whether the file is read as a video (by its suffix)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def list_inputs(path: Path, exclude: Optional[Path] = None) -> tuple[str, list[Path]]:
    """('image' | 'video' | 'folder', files). A folder lists its images and videos recursively,
    sorted, leaving out anything under `exclude` (an output folder inside the input folder)."""
    if path.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known
                       and not (skip is not None and p.resolve().is_relative_to(skip)))
        if not files:
            raise DemoError(f"{display_name(path)}: folder holds no images or videos ({', '.join(sorted(known))})")
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


@dataclass
class InputSet:
    """What --input names: kind 'image', 'video', 'camera' (files empty, `camera` its index) or
    'folder' (a folder, a glob or a list file: several files); files in order; root: the folder
    the files' names in the outputs are relative to."""
    kind: str
    files: list
    root: Path
    camera: Optional[int] = None

    def rel(self, path: Path) -> Path:
        """The name of `path` in the outputs: relative to root (a single input: its file name)."""
        if self.kind != "folder":
            return Path(path.name)
        try:
            return path.relative_to(self.root)
        except ValueError:
            return Path(os.path.relpath(path, self.root))


def _common_root(files: list) -> Path:
    """The deepest folder holding every file (their names in the outputs are relative to it)."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in files]))


def resolve_inputs(spec: str, exclude: Optional[Path] = None) -> InputSet:
    """--input read as: a camera index ('0', when no such file exists), a folder (its images and
    videos, recursive), a list file (.txt/.lst/.list: one path a line, relative to the list's
    folder; blank lines and lines starting with # skipped), a glob pattern (*, ?, [...]: the
    matching images and videos, sorted), or one image or video. DemoError when nothing is found;
    a listed file that does not exist is kept (its error is recorded when it is read)."""
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        return InputSet("camera", [], Path("."), camera=int(spec))
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DemoError(f"{display_name(path)}: cannot read the list of inputs ({err})") from None
        files = [Path(line) if Path(line).is_absolute() else path.parent / line
                 for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
        if not files:
            raise DemoError(f"{display_name(path)}: the list names no inputs")
        return InputSet("folder", files, _common_root(files))
    if not path.exists() and glob.has_magic(spec):
        known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
        skip = exclude.resolve() if exclude is not None else None
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in known
                       and not (skip is not None and Path(p).resolve().is_relative_to(skip)))
        if not files:
            raise DemoError(f"{display_name(spec)}: the pattern matches no images or videos")
        return InputSet("folder", files, _common_root(files))
    kind, files = list_inputs(path, exclude)
    return InputSet(kind, files, path if kind == "folder" else files[0].parent)


def camera_frames(index: int, every_n: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) of a live camera (cv2.VideoCapture(index)) until it stops giving
    frames (or the caller stops: Ctrl-C); DemoError when it cannot be opened."""
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise DemoError(f"camera {index}: cannot open it (no such camera, or it is in use)")
    index_ = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index_ % every_n == 0:
                yield index_, frame
            index_ += 1
    finally:
        cap.release()
