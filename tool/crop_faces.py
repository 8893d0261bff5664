"""Crop raw BP4D / DISFA frames (or any image tree) to the 256x256 face crops ME-GraphAU trains on.

The release's images are 256x256 face crops that the authors made with MTCNN five-point
landmarks and a similarity alignment (docs/data.md). This tool makes them from the raw data with
megraphau.inference.cropping (largest face, its five landmarks warped onto the preset's template, border
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
An unreadable image or video is an error naming it; in an image tree every other image is
still cropped, and each bad file is one line. File names need not be UTF-8. An image whose header
claims more than --max-pixels pixels is not decoded (an error for that file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2

from megraphau import provenance
from megraphau.conf import one_line_errors
from megraphau.errors import check_writable_folder, run_cli
from megraphau.inference.cropping import (
    DETECT_SIZE,
    IMAGE_EXTENSIONS,
    NO_FACE_FILE,
    CropError,
    crop_image_tree,
    crop_videos,
    preview_presets,
)
from megraphau.inference.faces import CROP_PRESETS
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, ImageFileError, read_image, write_image

#: Crop preset used when --preset is not given.
DATASET_PRESETS = {"BP4D": "BP4D", "DISFA": "DISFA", "folder": "BP4D"}
#: The photo --preview-presets crops when no --input is given (public domain, tests/data/README).
PREVIEW_IMAGE = Path(__file__).resolve().parents[1] / "tests" / "data" / "astronaut.jpg"


def _write_preview(image_path: Path, out: Path) -> None:
    try:
        image = read_image(image_path)
    except ImageFileError as err:
        raise CropError(str(err)) from None
    preview = preview_presets(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not write_image(out, preview, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise CropError(f"{out}: could not write the preview")
    print(f"wrote {out}: {image_path.name} cropped with {', '.join(CROP_PRESETS)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line through the project's front door (errors.run_cli): 0, 2 (a user error:
    one line), 1 with a traceback (a bug)."""
    return run_cli(run, argv)


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crop_faces.py", description="Detect, align and crop faces to 256x256 (the crops ME-GraphAU trains on).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tool/crop_faces.py --dataset BP4D --input RAW/BP4D/2D+3D --output data/BP4D/img --workers 2
  python tool/crop_faces.py --dataset DISFA --input RAW/DISFA/Videos_LeftCamera --output data/DISFA/img
  python tool/crop_faces.py --dataset folder --input photos/ --output crops/ --preset OpenGraphAU
  python tool/crop_faces.py --input tests/data/astronaut.jpg --preview-presets presets.jpg

--dataset, --input and --output are required, except with --preview-presets.
""")
    provenance.add_version_flag(parser)
    parser.add_argument("--dataset", choices=["BP4D", "DISFA", "folder"],
                        help="required (except with --preview-presets); BP4D: {subject}/{task}/{frame}.jpg "
                             "frames; DISFA: videos (*SN<id>*.avi/.mp4) -> {SN}/{i}.png; folder: any image tree")
    parser.add_argument("--input", help="raw frames / videos folder (--preview-presets: an "
                                        "image, default the test photo tests/data/astronaut.jpg)")
    parser.add_argument("--output", help="required (except with --preview-presets): the crop folder, e.g. "
                                         "data/BP4D/img")
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
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="image trees: an image whose header says more than N pixels (width x height) "
                             "is an error for that file, not decoded (default %(default)s; 0: no limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--preview-presets", metavar="OUT.jpg",
                        help="write --input's face cropped with every preset, side by side")
    args = one_line_errors(parser).parse_args(argv)
    for flag, value, low, high in (("--size", args.size, 16, 4096), ("--workers", args.workers, 1, 256),
                                   ("--redetect-every", args.redetect_every, 1, 10**6),
                                   ("--detect-size", args.detect_size, 0, 16384)):
        if not low <= value <= high:
            parser.error(f"{flag} must be in {low}..{high}, got {value}")
    if not 0 < args.min_face <= 1:
        parser.error(f"--min-face must be a fraction in (0, 1], got {args.min_face}")
    if args.max_pixels < 0:
        parser.error(f"--max-pixels must be 0 (no limit) or more, got {args.max_pixels}")
    if args.preview_presets:
        _write_preview(Path(args.input or PREVIEW_IMAGE), Path(args.preview_presets))
        return 0
    if not (args.dataset and args.input and args.output):
        parser.error("--dataset, --input and --output are required (or --preview-presets)")
    check_writable_folder(args.output, "--output folder")  # before detecting faces in every frame
    common = dict(size=args.size, preset=args.preset or DATASET_PRESETS[args.dataset],
                  skip_no_face=args.skip_no_face, progress=not args.no_progress,
                  min_face=args.min_face, detect_size=args.detect_size or None,
                  workers=args.workers)
    try:
        if args.dataset == "DISFA":
            summary = crop_videos(args.input, args.output, redetect_every=args.redetect_every, **common)
        else:
            exts = (".jpg", ".jpeg") if args.dataset == "BP4D" else IMAGE_EXTENSIONS
            summary = crop_image_tree(args.input, args.output, extensions=exts, max_pixels=args.max_pixels,
                                      **common)
    except CropError as err:
        if err.summary is None:
            raise  # the front door prints its one line
        for line in err.summary.errors:  # one line per bad image; every other image was cropped
            print(f"error: {line}", file=sys.stderr)
        print(err.summary)
        return 2
    print(summary)
    if summary.no_face:
        action = "left out" if args.skip_no_face else "written as centre crops"
        print(f"frames without a face ({action}) are listed in "
              f"{Path(args.output) / NO_FACE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
