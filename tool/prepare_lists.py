#!/usr/bin/env python
"""Write the list files of BP4D / DISFA (3 folds), OpenGraphAU's hybrid, or one's own labels.

Raw label layouts read by the command line (the datasets are licensed; see data/README.md):

BP4D   --label-dir AUCoding/AU_OCC
         {subject}_{task}.csv for every subject of the protocol and tasks T1..T8: one header
         row, the first column is the frame number, the other columns are named by AU number
         ('1', '2', '4', ...). Values 0 / 1, and 9 for "not coded". The 12 AUs
         1 2 4 6 7 10 12 14 15 17 23 24 are taken by header name. Image path of a frame:
         {subject}/{task}/{frame}.jpg. A frame number twice in one file is an error.
DISFA  --label-dir ActionUnit_Labels
         {SN}/{SN}_au{k}.txt for k in 1 2 4 6 9 12 25 26, lines "frame,intensity" with
         intensity 0..5; occurrence = intensity >= 2. Frames count from 1; label frame f is
         video frame f-1 (from 0), image {SN}/{f-1}.png. Each row is placed by its frame number,
         never by its line: a frame that an AU file lacks (up to the subject's last frame) gets
         -1 (unknown) for that AU, and the summary counts them; a frame number twice in one file
         is an error naming both lines.
Both   UTF-8 with or without a byte-order mark, LF or CRLF line ends.

Outputs in --list-dir (default data/{DATASET}/list), for k = 1, 2, 3 and D = BP4D / DISFA:
  D_train_img_path_foldk.txt, D_test_img_path_foldk.txt   one image path per line
  D_train_label_foldk.txt,    D_test_label_foldk.txt      N space-separated ints (-1 = unknown)
  D_weight_foldk.txt          N tab-separated class weights (%f)
  D_train_AU_relation_foldk.txt  N*N ints per image: 2*a_i + a_j at index i*N + j (-1 unknown)

Fold k trains on two subject parts and tests on the third: fold1 = part1+part2 / part3,
fold2 = part1+part3 / part2, fold3 = part2+part3 / part1.

OpenGraphAU  --dataset OpenGraphAU --raw-root RAW [--output OUT] [--img-dir IMG]
  RAW is the release's working directory (megraphau/data/hybrid.py lists the layout):
  BP4D/AUCoding/AU_OCC, DISFA/ActionUnit_Labels, CK+/FACS, RAF-AU/RAFAU_label.txt with
  RAF-AU-{train,val,test}_ids.txt, CASME2/CASME2-coding-20140508.xlsx,
  AFFW-2/list/AU_Set/{TrainFromTrain_Set,ValFromTrain_Set,Validation_Set}. Data sets not there
  are skipped (noted). Writes into OUT (default data/OpenGraphAU/list), byte for byte as the
  release's tools: hybrid_{train,val,test}_img_path.txt, hybrid_{train,val,test}_label.txt
  (41 AUs, -1 = not coded) and hybrid_train_weight.txt; and, for train_stage1.py /
  train_stage2.py --dataset OpenGraphAU --fold 1, the same lists as
  OpenGraphAU_{train,test}_{img_path,label}_fold1.txt and OpenGraphAU_weight_fold1.txt.
  CK+ frames count when their image is in IMG/CK+ (default: img/ beside OUT), else in
  CK+/cohn-kanade-images.

Own labels   --from-csv labels.csv --output OUT [--au-set auto] [--val-fraction 0.2] [--seed 0]
  A CSV with an image column (image, path, file, ...) and AU columns (AU1, AU01, 12, AUL12, ...)
  holding 1, 0, or blank / -1 for "not coded". Writes fold 1 of the AU set (BP4D, DISFA,
  OpenGraphAU; auto = the smallest holding every AU of the CSV): {SET}_{train,test}_img_path_fold1.txt,
  _label_fold1.txt, {SET}_weight_fold1.txt, {SET}_train_AU_relation_fold1.txt. Images are
  looked up in --img-dir (default: img/ beside OUT); train with --dataset SET --dataset-path
  (the folder holding OUT) --fold 1.

The list format itself (file names, relations, class weights, writing) lives in lists.py.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from megraphau.data import hybrid, own_labels
from megraphau.data.dataset import load_dataset_config
from megraphau.data.lists import (
    FOLD_PARTS,
    DatasetError,
    compute_class_weights_coded,
    write_fold_lists,
    write_split_lists,
)
from megraphau.errors import run_cli

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
BP4D_TASKS = tuple(f"T{t}" for t in range(1, 9))
BP4D_PARTS = (
    "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split(),
    "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split(),
    "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split(),
)
DISFA_PARTS = (
    "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016".split(),
    "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024".split(),
    "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004".split(),
)
BP4D_UNCODED = 9
DISFA_OCCURRENCE_THRESHOLD = 2

# Fold-1 values computed by the release from the full training labels, for --check.
KNOWN_FOLD1 = {
    "BP4D": {"weights": [1.342985, 1.689665, 1.248091, 0.561356, 0.433044, 0.435894, 0.457287,
                         0.541004, 1.408054, 0.722762, 1.493145, 1.666711], "test_size": 46034},
    "DISFA": {"weights": [1.422290, 2.347771, 0.399672, 0.795021, 1.878217, 0.440125, 0.195583,
                          0.521322], "test_size": 43605},
}


class ListPreparationError(DatasetError):
    """Bad or missing raw label data; the message names the file (and line)."""


# ----------------------------------------------------------------------------- raw label readers
def _parse_int(text: str, where: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ListPreparationError(f"{where}: {what} {text.strip()!r} is not an integer") from None


def read_bp4d_sequence(csv_path, aus: Sequence[int] = BP4D_AUS) -> tuple[list[int], np.ndarray]:
    """Read one BP4D AU_OCC csv: (frame numbers, labels (M, len(aus)) with 9 kept as 9).

    The AU columns are found by header name; the first column is the frame number.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # BOM and CRLF are fine
        rows = list(csv.reader(f))
    if not rows:
        raise ListPreparationError(f"{csv_path}:1: empty file, expected a header row")
    header = [h.strip() for h in rows[0]]
    columns = []
    for au in aus:
        if str(au) not in header[1:]:
            raise ListPreparationError(
                f"{csv_path}:1: missing AU column '{au}' in the header (columns: "
                f"{', '.join(header[:30])}{' ...' if len(header) > 30 else ''})")
        columns.append(header.index(str(au), 1))
    frames, labels, line_of_frame = [], [], {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # blank line (e.g. trailing)
        where = f"{csv_path}:{line_no}"
        if len(row) != len(header):
            raise ListPreparationError(
                f"{where}: {len(row)} fields, the header has {len(header)}")
        frame = _parse_int(row[0], where, "frame number")
        values = []
        for au, c in zip(aus, columns):
            v = _parse_int(row[c], where, f"AU{au} value")
            if v not in (0, 1, BP4D_UNCODED):
                raise ListPreparationError(f"{where}: AU{au} value {v} is not 0, 1 or 9")
            values.append(v)
        if frame in line_of_frame:  # two label rows for one image: which is right is unknowable
            raise ListPreparationError(f"{where}: frame {frame} repeated (first on line {line_of_frame[frame]})")
        line_of_frame[frame] = line_no
        frames.append(frame)
        labels.append(values)
    return frames, np.asarray(labels, dtype=np.int64).reshape(len(labels), len(aus))


def read_bp4d_parts(label_dir, drop_uncoded: bool = False, parts=BP4D_PARTS,
                    tasks=BP4D_TASKS) -> tuple[list[list], dict]:
    """BP4D parts for write_fold_lists from AUCoding/AU_OCC, plus counts for the summary.

    Value 9 ("not coded") becomes -1 (unknown), or with drop_uncoded the frame is dropped.
    """
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise ListPreparationError(f"{label_dir}: label directory not found (expected AUCoding/AU_OCC)")
    out_parts, stats = [], {"uncoded_frames": 0, "uncoded_labels": 0, "dropped_frames": 0}
    for subjects in parts:
        items = []
        for subject in subjects:
            for task in tasks:
                path = label_dir / f"{subject}_{task}.csv"
                if not path.is_file():
                    raise ListPreparationError(f"{path}: missing sequence file of subject "
                                               f"{subject}, task {task}")
                frames, labels = read_bp4d_sequence(path)
                uncoded = labels == BP4D_UNCODED
                frame_uncoded = uncoded.any(axis=1)
                stats["uncoded_frames"] += int(frame_uncoded.sum())
                stats["uncoded_labels"] += int(uncoded.sum())
                labels = np.where(uncoded, -1, labels)
                for frame, row, skip in zip(frames, labels, frame_uncoded):
                    if drop_uncoded and skip:
                        stats["dropped_frames"] += 1
                        continue
                    items.append((f"{subject}/{task}/{frame}.jpg", row.tolist()))
        out_parts.append(items)
    return out_parts, stats


def read_disfa_au_file(path: Path) -> dict[int, int]:
    """{frame number: intensity} of one DISFA AU file ("frame,intensity" lines, frames from 1)."""
    frames, line_of_frame = {}, {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (trailing ones, or left by an editor)
        where = f"{path}:{line_no}"
        fields = line.split(",")
        if len(fields) != 2:
            raise ListPreparationError(f"{where}: expected 'frame,intensity', got {line.strip()!r}")
        frame = _parse_int(fields[0], where, "frame number")
        value = _parse_int(fields[1], where, "intensity")
        if frame < 1:
            raise ListPreparationError(f"{where}: frame number {frame}; DISFA's label files count frames from 1")
        if not 0 <= value <= 5:
            raise ListPreparationError(f"{where}: intensity {value} is not in 0..5")
        if frame in line_of_frame:
            raise ListPreparationError(f"{where}: frame {frame} repeated (first on line {line_of_frame[frame]})")
        frames[frame], line_of_frame[frame] = value, line_no
    return frames


def read_disfa_subject(subject_dir, subject: str, aus: Sequence[int] = DISFA_AUS) -> np.ndarray:
    """Occurrence labels (M, len(aus)) of one DISFA subject: intensity >= 2 -> 1; row f-1 holds
    label frame f (image {subject}/{f-1}.png), M = the last frame any AU file has. A frame that an
    AU file lacks is -1 (unknown) in that AU's column: rows follow frame numbers, not lines."""
    subject_dir = Path(subject_dir)
    per_au = []
    for au in aus:
        path = subject_dir / f"{subject}_au{au}.txt"
        if not path.is_file():
            raise ListPreparationError(f"{path}: missing AU{au} label file of subject {subject}")
        per_au.append(read_disfa_au_file(path))
    num_frames = max((max(frames) for frames in per_au if frames), default=0)
    if num_frames == 0:
        raise ListPreparationError(f"{subject_dir}: the AU files of {subject} hold no frames")
    labels = np.full((num_frames, len(aus)), -1, dtype=np.int64)
    for column, frames in enumerate(per_au):
        index = np.fromiter(frames.keys(), dtype=np.int64, count=len(frames)) - 1  # frame f -> row f-1
        values = np.fromiter(frames.values(), dtype=np.int64, count=len(frames))
        labels[index, column] = (values >= DISFA_OCCURRENCE_THRESHOLD).astype(np.int64)
    return labels


def read_disfa_parts(label_dir, parts=DISFA_PARTS) -> tuple[list[list], dict]:
    """DISFA parts for write_fold_lists from ActionUnit_Labels (image {SN}/{i}.png, i = frame - 1),
    plus counts of the labels the AU files lack (written as -1)."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise ListPreparationError(f"{label_dir}: label directory not found (expected ActionUnit_Labels)")
    out_parts = []
    stats = {"missing_labels": 0, "frames_with_missing": 0, "frames_missing_everywhere": 0, "first_missing": None}
    for subjects in parts:
        items = []
        for subject in subjects:
            subject_dir = label_dir / subject
            if not subject_dir.is_dir():
                raise ListPreparationError(f"{subject_dir}: missing subject directory")
            labels = read_disfa_subject(subject_dir, subject)
            unknown = labels < 0
            stats["missing_labels"] += int(unknown.sum())
            stats["frames_with_missing"] += int(unknown.any(axis=1).sum())
            stats["frames_missing_everywhere"] += int(unknown.all(axis=1).sum())
            if unknown.any() and stats["first_missing"] is None:
                row, column = np.argwhere(unknown)[0]
                stats["first_missing"] = f"{subject}_au{DISFA_AUS[column]}.txt frame {row + 1}"
            items.extend((f"{subject}/{i}.png", row.tolist()) for i, row in enumerate(labels))
        out_parts.append(items)
    return out_parts, stats


# ----------------------------------------------------------------------------- command line
def _read(path: Path) -> list[str]:
    return Path(path).read_text().splitlines()


def release_style_weights(labels: np.ndarray) -> np.ndarray:
    """Class weights the way the release computed them, to check the raw data against it.

    The release kept BP4D's "not coded" 9 in its lists and counted it as present (label > 0)
    over all frames; in our lists those entries are -1, so r_i = mean(label != 0).
    """
    rate = (np.asarray(labels) != 0).mean(axis=0)
    inverse = 1.0 / rate
    return inverse / inverse.sum() * rate.shape[0]


def check_against_known(list_dir, dataset: str, tol: float = 2e-6,
                        known: dict | None = None) -> list[str]:
    """Compare fold 1 with the release's weights and test size; returns problems.

    The weights are recomputed from the fold-1 training labels the release's way
    (:func:`release_style_weights`), so the check tests the raw data, not our -1 convention.
    Lists written with --drop-uncoded cannot match (frames are missing). `known` defaults to
    KNOWN_FOLD1[dataset] ({"weights": [...], "test_size": int}).
    """
    known = KNOWN_FOLD1[dataset] if known is None else known
    list_dir = Path(list_dir)
    problems = []
    labels = np.loadtxt(list_dir / f"{dataset}_train_label_fold1.txt", dtype=np.int64, ndmin=2)
    weights = release_style_weights(labels)
    if weights.shape != (len(known["weights"]),) or np.abs(weights - known["weights"]).max() > tol:
        problems.append(f"fold1 weights (computed the release's way) "
                        f"{' '.join(f'{w:f}' for w in weights)} differ from the release's "
                        f"{' '.join(f'{w:f}' for w in known['weights'])}")
    n_test = len(_read(list_dir / f"{dataset}_test_img_path_fold1.txt"))
    if n_test != known["test_size"]:
        problems.append(f"fold1 test size {n_test} differs from the release's {known['test_size']}")
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].rsplit("\n\nThe list format", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("--dataset", choices=("BP4D", "DISFA", "OpenGraphAU"),
                        help="the data set whose raw labels to read (or --from-csv)")
    parser.add_argument("--label-dir", default=None,
                        help="BP4D: AUCoding/AU_OCC; DISFA: ActionUnit_Labels")
    parser.add_argument("--raw-root", default=None,
                        help="OpenGraphAU: the folder holding BP4D/, DISFA/, CK+/, RAF-AU/, CASME2/, AFFW-2/")
    parser.add_argument("--list-dir", "--output", dest="list_dir", default=None,
                        help="output folder (default: data/{DATASET}/list of this repository; "
                             "required with --from-csv)")
    parser.add_argument("--img-dir", default=None,
                        help="face crops (default: img/ beside the output folder): OpenGraphAU looks "
                             "for CK+ frames in its CK+/, --from-csv for the CSV's images")
    parser.add_argument("--drop-uncoded", action="store_true",
                        help="BP4D: drop frames with any 'not coded' (9) label instead of "
                             "writing -1 (unknown) for them")
    parser.add_argument("--check", action="store_true",
                        help="compare fold 1 with the release (class weights computed its way, "
                             "test size); full real data without --drop-uncoded; exit 1 on a "
                             "mismatch")
    parser.add_argument("--from-csv", default=None, metavar="CSV",
                        help="own labels: a CSV of image paths and AU columns (1, 0, blank or -1)")
    parser.add_argument("--au-set", default="auto", choices=("auto", "BP4D", "DISFA", "OpenGraphAU"),
                        help="--from-csv: the model's AU set to write (default auto: the smallest set "
                             "holding every AU of the CSV)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="--from-csv: fraction of the images held out as fold 1's test list (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="--from-csv: seed of the random split (default 0)")
    return parser


def main(argv=None) -> int:
    """The command line through the project's front door (errors.run_cli): 0, 1 (--check found a
    difference), 2 (a user error: one line), 1 with a traceback (a bug)."""
    return run_cli(run, argv)


def run(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.from_csv is None):
        parser.error("give either --dataset or --from-csv")
    if args.from_csv is not None:
        if args.list_dir is None:
            parser.error("--from-csv needs --output (the list folder to write)")
        return main_own_labels(args)
    if args.dataset == "OpenGraphAU":
        if args.raw_root is None:
            parser.error("--dataset OpenGraphAU needs --raw-root")
        return main_hybrid(args)
    if args.label_dir is None:
        parser.error(f"--dataset {args.dataset} needs --label-dir")
    repo = Path(__file__).resolve().parents[1]
    list_dir = Path(args.list_dir) if args.list_dir else repo / "data" / args.dataset / "list"
    # raw label and list-format problems are DatasetErrors: errors.run_cli says them in one line
    if args.dataset == "BP4D":
        parts, stats = read_bp4d_parts(args.label_dir, drop_uncoded=args.drop_uncoded)
    else:
        if args.drop_uncoded:
            print("note: --drop-uncoded has no effect on DISFA (every frame is coded)")
        parts, stats = read_disfa_parts(args.label_dir)
    write_fold_lists(list_dir, args.dataset, parts)
    sizes = [len(p) for p in parts]
    print(f"{args.dataset}: wrote lists to {list_dir}")
    print(f"  frames per part: {sizes[0]} / {sizes[1]} / {sizes[2]}")
    for k, (train_idx, test_idx) in FOLD_PARTS.items():
        n_train = sum(sizes[i] for i in train_idx)
        print(f"  fold{k}: train {n_train} frames, test {sizes[test_idx]} frames")
    if args.dataset == "BP4D":
        if args.drop_uncoded:
            print(f"  uncoded (9): dropped {stats['dropped_frames']} frames")
        else:
            print(f"  uncoded (9): {stats['uncoded_labels']} labels in {stats['uncoded_frames']} "
                  f"frames written as -1 (unknown)")
    elif stats["missing_labels"]:
        print(f"  frames missing from AU files: {stats['missing_labels']} labels in {stats['frames_with_missing']} "
              f"frames written as -1 (unknown), {stats['frames_missing_everywhere']} of these frames in no AU "
              f"file (first: {stats['first_missing']})")
    if args.check:
        problems = check_against_known(list_dir, args.dataset)
        for p in problems:
            print(f"check: {p}", file=sys.stderr)
        if problems:
            return 1
        print("check: fold1 weights and test size match the release")
    return 0


def main_hybrid(args) -> int:
    """--dataset OpenGraphAU: the release's hybrid lists, then fold 1 in this repository's format."""
    repo = Path(__file__).resolve().parents[1]
    list_dir = Path(args.list_dir) if args.list_dir else repo / "data" / "OpenGraphAU" / "list"
    merged, notes = hybrid.prepare_hybrid(args.raw_root, list_dir, img_dir=args.img_dir)
    print(f"OpenGraphAU: wrote the hybrid lists to {list_dir}")
    for note in notes:
        print(f"  {note}")
    print("  hybrid: " + ", ".join(f"{s} {len(merged[s][0])}" for s in hybrid.SPLITS) + " frames")
    train_labels = merged["train"][1]
    names = [f"AU{a}" for a in hybrid.HYBRID_AUS]
    absent = [names[i] for i in np.flatnonzero((train_labels > 0).sum(axis=0) == 0)]
    if absent:
        print(f"  note: never present in the training frames: {' '.join(absent)}; the release's "
              f"formula gives them no finite class weight (hybrid_train_weight.txt has nan/inf)")
    try:
        weights = compute_class_weights_coded(train_labels, names, f"{list_dir}/hybrid_train_label.txt")
    except DatasetError as err:
        print(f"  fold-1 lists (OpenGraphAU_*_fold1.txt) not written: {err}")
        return 0
    if not merged["test"][0]:
        print("  fold-1 lists (OpenGraphAU_*_fold1.txt) not written: the test split is empty")
        return 0
    # no relation file: 41*41 ints per frame; the training computes them from the labels instead
    write_split_lists(list_dir, "OpenGraphAU", 1, merged["train"], merged["test"], weights, relations=False)
    print("  train_stage1.py / train_stage2.py --dataset OpenGraphAU read the hybrid lists (val every epoch, "
          "test.py on test); with --protocol folds --fold 1 they read OpenGraphAU_*_fold1.txt "
          "(train = hybrid train, test = hybrid test)")
    return 0


def main_own_labels(args) -> int:
    """--from-csv: fold 1 of one's own labels."""
    summary = own_labels.prepare_own_lists(args.from_csv, args.list_dir, au_set=args.au_set,
                                           val_fraction=args.val_fraction, seed=args.seed, img_dir=args.img_dir)
    name, folder = summary["au_set"], Path(args.list_dir).resolve().parent
    print(f"{args.from_csv}: {name} lists (fold 1) written to {args.list_dir}")
    print(f"  AUs in the CSV: {' '.join(summary['aus'])}; written in {name}'s order of "
          f"{len(own_labels.AU_SETS[name])} AUs")
    print(f"  train {summary['train']} images, test {summary['test']} images")
    if summary["uncoded_aus"]:
        print(f"  not coded in any training image (-1, left out of the loss): {' '.join(summary['uncoded_aus'])}")
    # a set whose config follows the hybrid protocol (OpenGraphAU) reads fold lists with --protocol folds
    protocol = " --protocol folds" if load_dataset_config(name)["protocol"] != "folds" else ""
    print(f"  train: python train_stage1.py --dataset {name} --dataset-path {folder}{protocol} --fold 1 ... "
          f"(--init MODEL.pth to fine-tune a released or trained model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
