#!/usr/bin/env python
"""Generate the SYNTH facial action unit data set (megraphau.synth): procedurally drawn faces with 12
AUs, a BP4D-style image tree and the 3-fold lists; or, with --hybrid, the same faces in OpenGraphAU's
41-AU hybrid layout (four sources coding different AUs, -1 elsewhere; the release's hybrid lists).

    python tool/synth_faces.py --output data/SYNTH --seed 0      # 12 subjects x 2 tasks x 30 frames
    python tool/synth_faces.py --hybrid --output data/SYNTH_OpenGraphAU
    python tool/synth_faces.py --preview synth_preview.png       # a labelled grid of faces
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2

from megraphau.synth import (
    DEFAULT_ROOT,
    HYBRID_MARKER,
    HYBRID_ROOT,
    MARKER_NAME,
    SOURCES,
    ensure_hybrid_synthetic_dataset,
    ensure_synthetic_dataset,
    generate_hybrid_synthetic_dataset,
    generate_synthetic_dataset,
    preview_grid,
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from megraphau.conf import HelpFormatter  # flags with their defaults, examples kept as written

    parser = argparse.ArgumentParser(
        prog="synth_faces.py", description="Generate the SYNTH facial action unit data set (procedural faces, "
        "12 AUs, BP4D-style tree and 3-fold lists; or --hybrid: OpenGraphAU's 41-AU hybrid lists; the same "
        "pixels for a seed on every machine).",
        formatter_class=HelpFormatter, epilog="""examples:
  python tool/synth_faces.py --output data/SYNTH --seed 0      # 12 subjects x 2 tasks x 30 frames
  python tool/synth_faces.py --hybrid --output data/SYNTH_OpenGraphAU  # 4 sources x 6 subjects
  python tool/synth_faces.py --preview synth_preview.png       # a labelled grid of faces""")
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--output", help="data set root (default data/SYNTH, with --hybrid data/SYNTH_OpenGraphAU)")
    parser.add_argument("--hybrid", action="store_true",
                        help="OpenGraphAU's 41-AU hybrid layout (config SYNTH_OpenGraphAU): sources "
                        + ", ".join(name for name, _ in SOURCES) + ", each coding some of the drawn AUs")
    parser.add_argument("--hybrid-subjects", type=int, nargs=3, default=[3, 1, 2], metavar=("TRAIN", "VAL", "TEST"),
                        help="with --hybrid: subjects of each source in train, val and test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identities, labels and jitter")
    parser.add_argument("--subjects-per-part", type=int, default=4,
                        help="subjects in each of the three subject parts (folds); not with --hybrid")
    parser.add_argument("--tasks", type=int, default=2, help="tasks (sequences) per subject")
    parser.add_argument("--frames", type=int, default=30, help="frames per subject and task")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    parser.add_argument("--preview", metavar="PNG", help="only write a labelled grid of faces")
    parser.add_argument("--preview-count", type=int, default=12, help="faces in the preview grid")
    args = parser.parse_args(argv)
    if args.preview:
        grid = preview_grid(args.preview_count, seed=args.seed, size=args.size)
        Path(args.preview).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(args.preview, grid):
            parser.error(f"could not write {args.preview}")
        print(f"wrote {args.preview}")
        return 0
    if args.hybrid:
        return _hybrid(args)
    args.output = args.output or str(DEFAULT_ROOT)
    kw = dict(subjects_per_part=args.subjects_per_part, tasks=args.tasks, frames=args.frames,
              seed=args.seed, size=args.size)
    if args.force:
        root = generate_synthetic_dataset(args.output, progress=True, **kw)
    else:
        root = ensure_synthetic_dataset(args.output, progress=True, **kw)
    info = json.loads((root / MARKER_NAME).read_text())
    print(f"SYNTH data set ready in {root}: {info['num_images']} images, lists in {root / 'list'}")
    return 0


def _hybrid(args) -> int:
    """--hybrid: generate (or find complete) the 41-AU hybrid SYNTH set."""
    kw = dict(subjects=args.hybrid_subjects, tasks=args.tasks, frames=args.frames, seed=args.seed,
              size=args.size)
    output = args.output or str(HYBRID_ROOT)
    make = generate_hybrid_synthetic_dataset if args.force else ensure_hybrid_synthetic_dataset
    root = make(output, progress=True, **kw)
    info = json.loads((root / HYBRID_MARKER).read_text())
    print(f"hybrid SYNTH data set ready in {root}: {info['num_images']} images (train {info['num_train']}, "
          f"val {info['num_val']}, test {info['num_test']}), lists in {root / 'list'} "
          f"(hybrid_*.txt; fold 1 as SYNTH_OpenGraphAU_*_fold1.txt)")
    for name, aus in SOURCES:
        print(f"  {name}: codes AU{' AU'.join(str(a) for a in aus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
