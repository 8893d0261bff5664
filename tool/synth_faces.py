#!/usr/bin/env python
"""Generate the SYNTH facial action unit data set (megraphau.synth): procedurally drawn faces with 12
AUs, a BP4D-style image tree and the 3-fold lists.

    python tool/synth_faces.py --output data/SYNTH --seed 0      # 12 subjects x 2 tasks x 30 frames
    python tool/synth_faces.py --preview synth_preview.png       # a labelled grid of faces
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2

from megraphau.conf import (
    HelpFormatter,  # flags with their defaults, examples kept as written
    one_line_errors,
)
from megraphau.errors import OutputWriteError, check_writable_folder, run_cli
from megraphau.synth import (
    DEFAULT_ROOT,
    MARKER_NAME,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    preview_grid,
)

#: (flag, dest, smallest, largest): the sizes a generation can take (the renderer draws faces of 32
#: pixels and more; 4096 pixels or 10**6 frames are far beyond a test set)
LIMITS = (("--subjects-per-part", "subjects_per_part", 1, 1000), ("--tasks", "tasks", 1, 1000),
          ("--frames", "frames", 1, 10**6), ("--size", "size", 32, 4096), ("--preview-count", "preview_count", 1, 1000))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line through the project's front door (errors.run_cli): 0, 2 (a user error:
    one line), 1 with a traceback (a bug)."""
    return run_cli(run, argv)


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="synth_faces.py", description="Generate the SYNTH facial action unit data set (procedural faces, "
        "12 AUs, BP4D-style tree and 3-fold lists; the same pixels for a seed on every machine).",
        formatter_class=HelpFormatter, epilog="""examples:
  python tool/synth_faces.py --output data/SYNTH --seed 0      # 12 subjects x 2 tasks x 30 frames
  python tool/synth_faces.py --preview synth_preview.png       # a labelled grid of faces""")
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--output", default=str(DEFAULT_ROOT), help="data set root (default data/SYNTH)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identities, labels and jitter")
    parser.add_argument("--subjects-per-part", type=int, default=4,
                        help="subjects in each of the three subject parts (folds)")
    parser.add_argument("--tasks", type=int, default=2, help="tasks (sequences) per subject")
    parser.add_argument("--frames", type=int, default=30, help="frames per subject and task")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    parser.add_argument("--preview", metavar="PNG", help="only write a labelled grid of faces")
    parser.add_argument("--preview-count", type=int, default=12, help="faces in the preview grid")
    args = one_line_errors(parser).parse_args(argv)
    for flag, dest, low, high in LIMITS:
        if not low <= getattr(args, dest) <= high:
            parser.error(f"{flag} must be in {low}..{high}, got {getattr(args, dest)}")
    if args.preview:
        check_writable_folder(Path(args.preview).parent, "folder of --preview")
        grid = preview_grid(args.preview_count, seed=args.seed, size=args.size)
        if not cv2.imwrite(args.preview, grid):
            raise OutputWriteError(f"cannot write {args.preview} (OpenCV could not encode or write it; "
                                   f"use a .png or .jpg name)")
        print(f"wrote {args.preview}")
        return 0
    check_writable_folder(args.output, "--output folder")  # before generating, not after the first image
    kw = dict(subjects_per_part=args.subjects_per_part, tasks=args.tasks, frames=args.frames,
              seed=args.seed, size=args.size)
    if args.force:
        root = generate_synthetic_dataset(args.output, progress=True, **kw)
    else:
        root = ensure_synthetic_dataset(args.output, progress=True, **kw)
    info = json.loads((root / MARKER_NAME).read_text())
    print(f"SYNTH data set ready in {root}: {info['num_images']} images, lists in {root / 'list'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
