#!/usr/bin/env python
"""Check every image of a data set once, before training: list each missing, truncated or
undecodable file.

    python tool/check_images.py --dataset BP4D --workers 8
    python tool/check_images.py --dataset my.yaml --dataset-path /data/mine
    python tool/check_images.py --list-dir data/BP4D/list --img-dir data/BP4D/img

The image paths come from every fold's train and test lists ({name}_*_img_path_fold*.txt in the
list folder); each distinct file is checked the way training reads it (dataset.decode_image_file:
a JPEG must end with its end-of-image marker FF D9 and a PNG with its IEND chunk, then a full
decode) by a pool of worker processes; an image whose header says more than --max-pixels pixels
is bad without being decoded. Every bad file goes to --output (default: bad_images.txt beside the
list folder, in the data set's root), one "path<TAB>problem" per line, and the first ones are
printed.

Exit code 0: every image is good; 1: some are missing or bad; 2: the lists cannot be read.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from megraphau.data.lists import DatasetError, read_lines  # noqa: E402
from megraphau.errors import check_writable_folder, run_cli
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, pixel_problem


def list_files(list_dir: Path, name: str | None) -> list[Path]:
    """The image-path lists of every fold and split in list_dir (of data set `name` when given)."""
    files = sorted(list_dir.glob(f"{name}_*_img_path_fold*.txt" if name else "*_img_path_fold*.txt"))
    if not files:
        raise DatasetError(f"{list_dir}: no {name or '*'}_*_img_path_fold*.txt lists (write them with "
                           f"tool/prepare_lists.py, see data/README.md)")
    return files


def image_paths(lists: list[Path]) -> list[str]:
    """Every distinct image path of the lists, in list order."""
    return list(dict.fromkeys(path for f in lists for path in read_lines(f)))


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool is the parallelism


def check_one(job: tuple) -> tuple[str, str]:
    """(relative path, '' or why the image cannot be used); job: (root, relative path[, pixel
    limit: a larger image is bad without being decoded; default DEFAULT_MAX_PIXELS, 0: none])."""
    import cv2

    from megraphau.data.dataset import decode_image_file

    root, rel, max_pixels = (*job, DEFAULT_MAX_PIXELS)[:3]
    path = Path(root) / rel
    if max_pixels:
        try:
            with open(path, "rb") as handle:
                problem = pixel_problem(handle.read(), max_pixels)
        except OSError:
            problem = ""  # decode_image_file says why
        if problem:
            return rel, problem
    try:
        return rel, decode_image_file(path)[1]
    except cv2.error as err:  # e.g. OpenCV's own pixel limit
        lines = str(err).strip().splitlines()
        return rel, f"OpenCV cannot decode it ({lines[-1] if lines else 'OpenCV error'})"


def check_images(img_dir: Path, paths: list[str], workers: int, progress: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[str, str]]:
    """[(path, problem)] of the bad images among `paths` (relative to img_dir), in list order;
    images over max_pixels (0: no limit) are bad without being decoded."""
    from tqdm import tqdm

    jobs = [(str(img_dir), p, max_pixels) for p in paths]
    chunk = max(1, min(256, len(jobs) // (max(1, workers) * 16)))
    bar = tqdm(total=len(jobs), unit="img", disable=not progress, dynamic_ncols=True, desc="checking images")
    bad = []
    if workers <= 1:
        _init_worker()
        results = map(check_one, jobs)
        pool = None
    else:
        # spawned workers with an executor: a worker that dies is an error (BrokenProcessPool), not
        # a wait for results that never come, and no state of the caller's threads is inherited
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        results = pool.map(check_one, jobs, chunksize=chunk)
    try:
        for rel, problem in results:
            bar.update()
            if problem:
                bad.append((rel, problem))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return bad


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="check_images.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--dataset", default=None,
                        help="BP4D, DISFA, SYNTH, OpenGraphAU or a dataset .yaml: its list/ and img/ folders")
    parser.add_argument("--dataset-path", default=None, help="overrides the config's dataset_path")
    parser.add_argument("--list-dir", default=None, help="list folder (instead of --dataset)")
    parser.add_argument("--img-dir", default=None, help="image folder of --list-dir (default: ../img beside it)")
    parser.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count() or 2) - 1),
                        help="worker processes (default: the CPU count - 1)")
    parser.add_argument("--output", default=None,
                        help="where the bad files are listed (default: bad_images.txt beside the list folder)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="an image whose header says more than N pixels is bad without being decoded "
                             "(default %(default)s; 0: no limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_folders(args) -> tuple[Path, Path, str | None]:
    """(list folder, image folder, data set name or None) from --dataset or --list-dir."""
    if args.list_dir:
        list_dir = Path(args.list_dir)
        return list_dir, Path(args.img_dir) if args.img_dir else list_dir.parent / "img", None
    if not args.dataset:
        raise DatasetError("give --dataset (BP4D, DISFA, SYNTH or a .yaml) or --list-dir")
    from megraphau.data.dataset import load_dataset_config

    cfg = load_dataset_config(args.dataset)
    root = Path(args.dataset_path or cfg["dataset_path"])
    return root / "list", Path(args.img_dir) if args.img_dir else root / "img", cfg["name"]


def main(argv=None) -> int:
    """The command line through the project's front door (errors.run_cli): 0 (every image is
    good), 1 (some are bad), 2 (a user error: one line), 1 with a traceback (a bug)."""
    return run_cli(run, argv)


def run(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.max_pixels < 0:
        parser.error(f"--max-pixels must be 0 (no limit) or more, got {args.max_pixels}")
    list_dir, img_dir, name = resolve_folders(args)
    lists = list_files(list_dir, name)
    paths = image_paths(lists)
    output = Path(args.output) if args.output else list_dir.resolve().parent / "bad_images.txt"
    check_writable_folder(output.parent, "folder of --output")  # before the long check, not after it
    print(f"checking {len(paths)} images of {len(lists)} lists in {list_dir} under {img_dir} "
          f"with {args.workers} workers")
    bad = check_images(img_dir, paths, args.workers, progress=not args.no_progress, max_pixels=args.max_pixels)
    output.write_text("".join(f"{rel}\t{problem}\n" for rel, problem in bad))
    if not bad:
        print(f"all {len(paths)} images are readable; {output} is empty")
        return 0
    missing = sum(problem == "file not found" for _, problem in bad)
    print(f"{len(bad)} of {len(paths)} images are bad ({missing} missing, {len(bad) - missing} unreadable, "
          f"truncated or not decodable); all listed in {output}", file=sys.stderr)
    for rel, problem in bad[:10]:
        print(f"  {img_dir / rel}: {problem}", file=sys.stderr)
    if len(bad) > 10:
        print(f"  ... {len(bad) - 10} more", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
