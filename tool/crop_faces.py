"""Crop raw BP4D / DISFA frames (or any image tree) to the 256x256 face crops ME-GraphAU trains on.

The release's images are 256x256 face crops that the authors made with MTCNN five-point
landmarks and a similarity alignment (docs/data.md). This tool makes them from the raw data with
:mod:`faces` (largest face, its five landmarks warped onto the preset's template, border
replication where the crop leaves the frame):

    python tool/crop_faces.py --dataset BP4D  --input RAW/BP4D/2D+3D --output data/BP4D/img
    python tool/crop_faces.py --dataset DISFA --input RAW/DISFA/Videos_LeftCamera --output data/DISFA/img
    python tool/crop_faces.py --dataset folder --input photos --output crops --preset OpenGraphAU
    python tool/crop_faces.py --preview-presets docs/crop_presets.jpg   # the presets side by side

* BP4D: frames ``{subject}/{task}/{frame}.jpg`` -> the same relative paths under --output.
* DISFA: every video under --input whose file name contains a subject id ``SN<digits>`` and ends
  in .avi or .mp4 (e.g. ``LeftVideoSN001_comp.avi``) -> ``{SN}/{i}.png`` with i counting frames
  from 0 (the image paths of the DISFA lists). When one subject has several videos, the one with
  "Left" in its name is used (the release uses the left camera); otherwise it is an error.
  ``--redetect-every K`` (K > 1) tracks the face between full detections (faces.FaceTracker).
* folder: any image tree (.jpg .jpeg .png .bmp .tif .tiff .webp) -> the same relative paths.

The crop geometry is a preset of :data:`faces.CROP_PRESETS`: by default the dataset's own
(BP4D, DISFA; folder mode: BP4D), any of them with ``--preset``.

Re-running skips outputs that already exist. Frames without a detected face are counted and
listed in ``no_face.txt`` in the output folder; by default they are written as a centre crop so
that the list files stay aligned with the frames (``--skip-no-face`` leaves them out).
An unreadable image or video is an error naming it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from megraphau.inference.faces import CROP_PRESETS, FaceDetector, FaceTracker, align_crop, centre_crop  # noqa: E402

__all__ = ["CropError", "CropSummary", "crop_image", "crop_image_tree", "crop_videos",
           "find_disfa_videos", "preview_presets", "main", "IMAGE_EXTENSIONS",
           "VIDEO_EXTENSIONS", "NO_FACE_FILE", "DATASET_PRESETS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".mp4")
NO_FACE_FILE = "no_face.txt"
#: Longer side (pixels) of the copy that detection runs on; dataset frames hold one large face.
DETECT_SIZE = 640
#: Crop preset used when --preset is not given.
DATASET_PRESETS = {"BP4D": "BP4D", "DISFA": "DISFA", "folder": "BP4D"}
#: The photo --preview-presets crops when no --input is given (public domain, tests/data/README).
PREVIEW_IMAGE = Path(__file__).resolve().parents[1] / "tests" / "data" / "astronaut.jpg"
_SUBJECT_RE = re.compile(r"(SN\d+)", re.IGNORECASE)


class CropError(RuntimeError):
    """Bad input: unreadable image/video, missing folder, ambiguous DISFA videos."""


@dataclass
class CropSummary:
    """What a run did: crops written, outputs that already existed, frames with no face."""

    written: int = 0
    skipped: int = 0
    no_face: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.written} crops written, {self.skipped} already present, "
                f"{len(self.no_face)} frames without a detected face")


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
    if not cv2.imwrite(str(tmp), image, params):
        raise CropError(f"{path}: could not write the crop")
    os.replace(tmp, path)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="img")


def _record_no_face(output: Path, entries: Iterable[str]) -> None:
    """Merge the no-face frames of this run into ``output/no_face.txt`` (sorted, unique)."""
    entries = set(entries)
    path = output / NO_FACE_FILE
    if path.exists():
        entries |= {line for line in path.read_text().splitlines() if line}
    if entries:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{e}\n" for e in sorted(entries)))


def _output_name(rel: Path) -> Path:
    """Same relative path; formats OpenCV cannot write become .png."""
    return rel if rel.suffix.lower() in IMAGE_EXTENSIONS else rel.with_suffix(".png")


def _pool(workers: int, detector: FaceDetector):
    """Process pool whose workers each build a detector like ``detector``. Workers are spawned,
    not forked: a forked child inherits OpenCV's (or torch's) thread pool in an unusable state
    and can hang."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(detector.config,))


_WORKER_DETECTOR: Optional[FaceDetector] = None


def _init_worker(config: dict) -> None:
    global _WORKER_DETECTOR
    import torch
    cv2.setNumThreads(1)  # parallelism comes from the processes
    torch.set_num_threads(1)
    _WORKER_DETECTOR = FaceDetector(**config)


def _crop_file(job, detector: Optional[FaceDetector] = None) -> Tuple[str, bool, bool]:
    """Crop one image file. job = (source, destination, rel, options). Returns
    (rel, face_found, written)."""
    path, out, rel, opt = job
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CropError(f"{path}: cannot read the image (corrupt or not an image file)")
    crop, found = crop_image(detector or _WORKER_DETECTOR, image, opt["size"], opt["preset"],
                             opt["min_face"], opt["detect_size"])
    if not found and opt["skip_no_face"]:
        return rel, False, False
    _write(out, crop)
    return rel, found, True


def crop_image_tree(input_dir, output_dir, detector: Optional[FaceDetector] = None, size: int = 256,
                    preset: str = "BP4D", skip_no_face: bool = False,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS, progress: bool = True,
                    min_face: float = 0.1, detect_size: Optional[int] = DETECT_SIZE,
                    workers: int = 1) -> CropSummary:
    """Crop every image under ``input_dir`` to the same relative path under ``output_dir``
    with crop preset ``preset`` (``workers`` > 1: that many processes)."""
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
               skip_no_face=skip_no_face)
    summary = CropSummary()
    jobs = []
    for path in files:
        rel = _output_name(path.relative_to(input_dir))
        if (output_dir / rel).exists():
            summary.skipped += 1
        else:
            jobs.append((path, output_dir / rel, rel.as_posix(), opt))
    if workers > 1 and len(jobs) > 1:
        with _pool(workers, detector) as pool:
            results = _progress(pool.map(_crop_file, jobs, chunksize=8), len(jobs), "cropping",
                                progress)
            outcomes = list(results)
    else:
        outcomes = [_crop_file(job, detector)
                    for job in _progress(jobs, len(jobs), "cropping", progress)]
    for rel, found, written in outcomes:
        summary.written += written
        if not found:
            summary.no_face.append(rel)
    _record_no_face(output_dir, summary.no_face)
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
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise CropError(f"{video}: cannot open the video (corrupt file or missing codec)")
    bar = None
    if progress:
        from tqdm import tqdm
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
        with _pool(workers, detector) as pool:
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


def _write_preview(image_path: Path, out: Path) -> None:
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise CropError(f"{image_path}: cannot read the image (corrupt or not an image file)")
    preview = preview_presets(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), preview, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise CropError(f"{out}: could not write the preview")
    print(f"wrote {out}: {image_path.name} cropped with {', '.join(CROP_PRESETS)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crop_faces.py", description="Detect, align and crop faces to 256x256 (the crops ME-GraphAU trains on).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tool/crop_faces.py --dataset BP4D --input RAW/BP4D/2D+3D --output data/BP4D/img --workers 2
  python tool/crop_faces.py --dataset DISFA --input RAW/DISFA/Videos_LeftCamera --output data/DISFA/img
  python tool/crop_faces.py --input photos/ --output crops/ --preset OpenGraphAU
  python tool/crop_faces.py --input tests/data/astronaut.jpg --preview-presets presets.jpg
""")
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--dataset", choices=["BP4D", "DISFA", "folder"],
                        help="BP4D: {subject}/{task}/{frame}.jpg frames; DISFA: videos "
                             "(*SN<id>*.avi/.mp4) -> {SN}/{i}.png; folder: any image tree")
    parser.add_argument("--input", help="raw frames / videos folder (--preview-presets: an "
                                        "image, default the test photo tests/data/astronaut.jpg)")
    parser.add_argument("--output", help="crop folder, e.g. data/BP4D/img")
    parser.add_argument("--preset", choices=list(CROP_PRESETS),
                        help="crop geometry (default: the dataset's; folder: BP4D)")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--min-face", type=float, default=0.1,
                        help="smallest face searched, fraction of the frame's shorter side")
    parser.add_argument("--detect-size", type=int, default=DETECT_SIZE,
                        help="detect on a copy with this longer side (default %(default)s; "
                             "0 = full resolution); crops always come from the full frame")
    parser.add_argument("--redetect-every", type=int, default=1, metavar="K",
                        help="DISFA videos: full detection every K frames, the landmark stage "
                             "alone on the frames between (default 1: every frame)")
    parser.add_argument("--skip-no-face", action="store_true",
                        help="do not write frames without a detected face (default: centre crop)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes (image trees: images in parallel; DISFA: videos)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--preview-presets", metavar="OUT.jpg",
                        help="write --input's face cropped with every preset, side by side")
    args = parser.parse_args(argv)
    try:
        if args.preview_presets:
            _write_preview(Path(args.input or PREVIEW_IMAGE), Path(args.preview_presets))
            return 0
        if not (args.dataset and args.input and args.output):
            parser.error("--dataset, --input and --output are required (or --preview-presets)")
        common = dict(size=args.size, preset=args.preset or DATASET_PRESETS[args.dataset],
                      skip_no_face=args.skip_no_face, progress=not args.no_progress,
                      min_face=args.min_face, detect_size=args.detect_size or None,
                      workers=args.workers)
        if args.dataset == "DISFA":
            summary = crop_videos(args.input, args.output, redetect_every=args.redetect_every,
                                  **common)
        else:
            exts = (".jpg", ".jpeg") if args.dataset == "BP4D" else IMAGE_EXTENSIONS
            summary = crop_image_tree(args.input, args.output, extensions=exts, **common)
    except CropError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    if summary.no_face:
        action = "left out" if args.skip_no_face else "written as centre crops"
        print(f"frames without a face ({action}) are listed in "
              f"{Path(args.output) / NO_FACE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
