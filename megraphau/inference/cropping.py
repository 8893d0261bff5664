"""Face crops of raw frames and image trees, the way the training crops are made: the largest face
found by MTCNN (faces.FaceDetector), its five landmarks warped onto a crop preset's template
(faces.CROP_PRESETS), border replication where the crop leaves the frame; a centre crop where no
face is found. crop_image_tree (any image tree, in worker processes with workers > 1) and
crop_videos (DISFA's videos -> {SN}/{i}.png) skip outputs that exist, write atomically and list
the frames without a face in no_face.txt. Files are read and written whatever their names (not
UTF-8 included: imagefiles), and an image whose header claims more than max_pixels pixels is not
decoded. A bad image in a tree is an error for that file: the others are cropped, then
crop_image_tree raises one CropError listing them. tool/crop_faces.py is their command line."""
from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from megraphau.errors import UserError
from megraphau.inference.faces import CROP_PRESETS, FaceDetector, FaceTracker, align_crop, centre_crop
from megraphau.inference.imagefiles import (
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    display_name,
    opencv_path,
    read_image,
    write_image,
)

__all__ = ["CropError", "CropSummary", "DETECT_SIZE", "IMAGE_EXTENSIONS", "NO_FACE_FILE", "VIDEO_EXTENSIONS",
           "crop_file", "crop_image", "crop_image_tree", "crop_videos", "find_disfa_videos", "preview_presets",
           "worker_pool"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".mp4")
NO_FACE_FILE = "no_face.txt"
#: Longer side (pixels) of the copy that detection runs on; dataset frames hold one large face.
DETECT_SIZE = 640
#: Crop preset used when --preset is not given.
_SUBJECT_RE = re.compile(r"(SN\d+)", re.IGNORECASE)



class CropError(UserError, RuntimeError):
    """Bad input: unreadable image/video, missing folder, ambiguous DISFA videos. `summary`: what
    a tree run did before it raised (its bad files in summary.errors), else None."""

    def __init__(self, message: str, summary: Optional[CropSummary] = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class CropSummary:
    """What a run did: crops written, outputs that already existed, frames with no face."""

    written: int = 0
    skipped: int = 0
    no_face: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # one line per image that could not be cropped

    def __str__(self) -> str:
        return (f"{self.written} crops written, {self.skipped} already present, "
                f"{len(self.no_face)} frames without a detected face"
                + (f", {len(self.errors)} images could not be read" if self.errors else ""))


def crop_image(detector: FaceDetector, image: np.ndarray, size: int = 256, preset: str = "BP4D",
               min_face: float = 0.1, detect_size: Optional[int] = DETECT_SIZE,
               tracker: Optional[FaceTracker] = None) -> Tuple[np.ndarray, bool]:
    """(crop (size, size, 3) uint8, face_found). The largest face is cropped with ``preset``;
    without a face the centre crop is returned with face_found False. ``min_face``: smallest
    face side searched, as a fraction of the frame's shorter side; ``detect_size``: detection
    runs on a copy whose longer side is at most this many pixels (None: full resolution); the
    crop itself is always taken from the full-resolution frame. ``tracker``: find the faces
    with it instead (video frames in order)."""
    min_size = min_face * min(image.shape[:2])
    max_side = detect_size or 0
    if tracker is not None:
        faces = tracker.update(image, max_side=max_side, min_size=min_size)
    else:
        faces = detector.detect(image, max_side=max_side, min_size=min_size)
    if not faces:
        return centre_crop(image, size), False
    return align_crop(image, faces[0], preset=preset, size=size), True


def _write(path: Path, image: np.ndarray) -> None:
    """Write atomically (a temporary name, then rename), so an interrupted run never leaves a
    truncated file that a re-run would skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not write_image(tmp, image, params):  # any file name (imagefiles)
        raise CropError(f"{display_name(path)}: could not write the crop")
    os.replace(tmp, path)


def _progress(iterable, total, desc, enabled):
    """A progress bar over `iterable` when enabled."""
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img")


def _record_no_face(output: Path, entries: Iterable[str]) -> None:
    """Merge the no-face frames of this run into ``output/no_face.txt`` (sorted, unique)."""
    entries = {display_name(e) for e in entries}  # names that are not UTF-8 as \xNN: the list stays UTF-8
    path = output / NO_FACE_FILE
    if path.exists():
        entries |= {line for line in path.read_text(encoding="utf-8").splitlines() if line}
    if entries:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{e}\n" for e in sorted(entries)), encoding="utf-8")


def _output_name(rel: Path) -> Path:
    """Same relative path; formats OpenCV cannot write become .png."""
    return rel if rel.suffix.lower() in IMAGE_EXTENSIONS else rel.with_suffix(".png")


def worker_pool(workers: int, detector: FaceDetector):
    """Process pool whose workers each build a detector like ``detector``. Workers are spawned,
    not forked: a forked child inherits OpenCV's (or torch's) thread pool in an unusable state
    and can hang."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(detector.config,))


_WORKER_DETECTOR: Optional[FaceDetector] = None


def _init_worker(config: dict) -> None:
    """A pool worker's start: one thread, its own detector (used when crop_file gets none)."""
    global _WORKER_DETECTOR
    import torch  # here, not at the top: like faces.py, importing this module does not load torch
    cv2.setNumThreads(1)  # parallelism comes from the processes
    torch.set_num_threads(1)
    _WORKER_DETECTOR = FaceDetector(**config)


def crop_file(job, detector: Optional[FaceDetector] = None) -> Tuple[str, bool, bool]:
    """Crop one image file. job = (source, destination, rel, options). Returns
    (rel, face_found, written)."""
    path, out, rel, opt = job
    try:
        image = read_image(path, opt.get("max_pixels", DEFAULT_MAX_PIXELS))
    except ImageFileError as err:
        raise CropError(str(err)) from None
    crop, found = crop_image(detector or _WORKER_DETECTOR, image, opt["size"], opt["preset"],
                             opt["min_face"], opt["detect_size"])
    if not found and opt["skip_no_face"]:
        return rel, False, False
    _write(out, crop)
    return rel, found, True


def _crop_job(job, detector: Optional[FaceDetector] = None) -> Tuple[str, bool, bool, str]:
    """crop_file, its CropError returned as text: (rel, face_found, written, error or '')."""
    try:
        return (*crop_file(job, detector), "")
    except CropError as err:
        return job[2], True, False, str(err)


def crop_image_tree(input_dir, output_dir, detector: Optional[FaceDetector] = None, size: int = 256,
                    preset: str = "BP4D", skip_no_face: bool = False,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS, progress: bool = True,
                    min_face: float = 0.1, detect_size: Optional[int] = DETECT_SIZE,
                    workers: int = 1, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> CropSummary:
    """Crop every image under ``input_dir`` to the same relative path under ``output_dir``
    with crop preset ``preset`` (``workers`` > 1: that many processes). ``max_pixels``: images
    whose header claims more pixels are not decoded (None or 0: no limit). An image that cannot
    be read is an error for that file: every other image is cropped, then CropError (its
    message: the first bad file and how many more; .summary.errors: one line per file)."""
    _check_preset(preset)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise CropError(f"{input_dir}: input folder not found")
    files = sorted(p for p in input_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in extensions
                   and output_dir.resolve() not in p.resolve().parents)
    if not files:
        raise CropError(f"{input_dir}: no images with extension {'/'.join(extensions)} found")
    detector = detector or FaceDetector()
    opt = dict(size=size, preset=preset, min_face=min_face, detect_size=detect_size,
               skip_no_face=skip_no_face, max_pixels=max_pixels)
    summary = CropSummary()
    jobs = []
    for path in files:
        rel = _output_name(path.relative_to(input_dir))
        if (output_dir / rel).exists():
            summary.skipped += 1
        else:
            jobs.append((path, output_dir / rel, rel.as_posix(), opt))
    if workers > 1 and len(jobs) > 1:
        with worker_pool(workers, detector) as pool:
            results = _progress(pool.map(_crop_job, jobs, chunksize=8), len(jobs), "cropping",
                                progress)
            outcomes = list(results)
    else:
        outcomes = [_crop_job(job, detector)
                    for job in _progress(jobs, len(jobs), "cropping", progress)]
    for rel, found, written, error in outcomes:
        summary.written += written
        if error:
            summary.errors.append(error)
        elif not found:
            summary.no_face.append(rel)
    _record_no_face(output_dir, summary.no_face)
    if summary.errors:
        more = f" (and {len(summary.errors) - 1} more images)" if len(summary.errors) > 1 else ""
        raise CropError(summary.errors[0] + more, summary)
    return summary


def find_disfa_videos(input_dir) -> List[Tuple[str, Path]]:
    """(subject id, video path) for every DISFA video under ``input_dir``, sorted by subject.

    A video is a file ending in .avi/.mp4 whose name contains ``SN<digits>``; several videos of one
    subject resolve to the one named "Left..." (the left camera, as the release uses)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise CropError(f"{input_dir}: input folder not found")
    by_subject = {}
    for path in sorted(input_dir.rglob("*")):
        if not (path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS):
            continue
        match = _SUBJECT_RE.search(path.name)
        if match:
            by_subject.setdefault(match.group(1).upper(), []).append(path)
    if not by_subject:
        raise CropError(f"{input_dir}: no DISFA videos found (expected names like "
                        f"LeftVideoSN001_comp.avi: .avi/.mp4 files containing SN<number>)")
    result = []
    for subject in sorted(by_subject):
        paths = by_subject[subject]
        if len(paths) > 1:
            left = [p for p in paths if "left" in p.name.lower()]
            if len(left) != 1:
                raise CropError(f"{input_dir}: several videos for {subject} "
                                f"({', '.join(str(p) for p in paths)}); keep one per subject")
            paths = left
        result.append((subject, paths[0]))
    return result


def _crop_video(subject: str, video: Path, output_dir: Path, opt: dict, progress: bool,
                detector: Optional[FaceDetector] = None) -> CropSummary:
    """One subject's video -> ``output_dir/{subject}/{i}.png``."""
    detector = detector or _WORKER_DETECTOR
    tracker = None
    if opt["redetect_every"] > 1:
        tracker = FaceTracker(detector, redetect_every=opt["redetect_every"])
    summary = CropSummary()
    try:
        cap = cv2.VideoCapture(opencv_path(video))
    except ImageFileError as err:
        raise CropError(str(err)) from None
    if not cap.isOpened():
        raise CropError(f"{video}: cannot open the video (corrupt file or missing codec)")
    bar = None
    if progress:
        bar = tqdm(total=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None, desc=subject,
                   unit="frame")
    index = 0
    try:
        while True:
            out = output_dir / subject / f"{index}.png"
            if out.exists():
                # Already cropped: advance without decoding.
                if not cap.grab():
                    break
                summary.skipped += 1
                if tracker is not None:
                    tracker.reset()  # the next decoded frame is not this one's successor
            else:
                ok, frame = cap.read()
                if not ok:
                    break
                crop, found = crop_image(detector, frame, opt["size"], opt["preset"],
                                         opt["min_face"], opt["detect_size"], tracker)
                if not found:
                    summary.no_face.append(f"{subject}/{index}.png")
                if found or not opt["skip_no_face"]:
                    _write(out, crop)
                    summary.written += 1
            index += 1
            if bar is not None:
                bar.update()
    finally:
        cap.release()
        if bar is not None:
            bar.close()
    if index == 0:
        raise CropError(f"{video}: no frame could be decoded (corrupt file or missing codec)")
    return summary


def crop_videos(input_dir, output_dir, detector: Optional[FaceDetector] = None, size: int = 256,
                preset: str = "DISFA", skip_no_face: bool = False, progress: bool = True,
                min_face: float = 0.1, detect_size: Optional[int] = DETECT_SIZE,
                workers: int = 1, redetect_every: int = 1) -> CropSummary:
    """DISFA: every subject's video -> ``output_dir/{SN}/{i}.png``, i counting frames from 0,
    with crop preset ``preset`` (``workers`` > 1: that many videos at once, one process each;
    ``redetect_every`` > 1: track the face between full detections, see faces.FaceTracker)."""
    _check_preset(preset)
    if redetect_every < 1:
        raise CropError(f"redetect_every must be >= 1, got {redetect_every}")
    output_dir = Path(output_dir)
    detector = detector or FaceDetector()
    videos = find_disfa_videos(input_dir)
    opt = dict(size=size, preset=preset, min_face=min_face, detect_size=detect_size,
               skip_no_face=skip_no_face, redetect_every=redetect_every)
    if workers > 1 and len(videos) > 1:
        with worker_pool(workers, detector) as pool:
            futures = [pool.submit(_crop_video, subject, video, output_dir, opt, False)
                       for subject, video in videos]
            parts = [f.result() for f in _progress(futures, len(futures), "videos", progress)]
    else:
        parts = [_crop_video(subject, video, output_dir, opt, progress, detector)
                 for subject, video in videos]
    summary = CropSummary()
    for part in parts:
        summary.written += part.written
        summary.skipped += part.skipped
        summary.no_face += part.no_face
    _record_no_face(output_dir, summary.no_face)
    return summary


def _check_preset(preset: str) -> None:
    if preset not in CROP_PRESETS:
        raise CropError(f"unknown crop preset {preset!r}; known: {', '.join(CROP_PRESETS)}")


def preview_presets(image: np.ndarray, detector: Optional[FaceDetector] = None,
                    size: int = 256) -> np.ndarray:
    """The image's largest face cropped with every preset, side by side and labelled:
    (size + 28, len(CROP_PRESETS) * size, 3) uint8 BGR."""
    faces = (detector or FaceDetector()).detect(image)
    if not faces:
        raise CropError("no face found in the preview image")
    tiles = []
    for name in CROP_PRESETS:
        tile = cv2.copyMakeBorder(align_crop(image, faces[0], preset=name, size=size), 0, 28, 0, 0,
                                  cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(tile, name, (8, size + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
    return np.hstack(tiles)
