"""List files from one's own labels: a CSV of image paths and AU columns -> one fold of lists.

The CSV has a header row: one image column (named image, image_path, img, img_path, path, file,
filename or file_name) and any number of AU columns (AU1, AU01, au12, 12, AUL12, L12: the AU
number, optionally "AU" before it and L/R for a side). A value is 1 (present), 0 (absent), or
blank / -1 (not coded: left out of the loss and the metrics). The labels are written in the AU
order of a model's set (BP4D 12 AUs, DISFA 8, OpenGraphAU 41) so that a released model of that
set can be fine-tuned on them; AUs of the set that the CSV lacks are -1 everywhere.

The images are split at random (a seeded shuffle) into fold 1's training and test lists, the
format of lists.py, with the class weights and the AU-pair relations of the training part.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from megraphau.data.hybrid import HYBRID_AUS
from megraphau.data.lists import DatasetError, compute_class_weights_coded, write_split_lists

#: AU sets of the released models, in their label order (the configs' au_names without "AU").
AU_SETS = {
    "DISFA": ("1", "2", "4", "6", "9", "12", "25", "26"),
    "BP4D": ("1", "2", "4", "6", "7", "10", "12", "14", "15", "17", "23", "24"),
    "OpenGraphAU": HYBRID_AUS,
}
IMAGE_COLUMNS = ("image", "image_path", "img", "img_path", "path", "file", "filename", "file_name")
_AU_NAME = re.compile(r"^(?:AU)?[ _-]?([LR])?[ _-]?0*(\d+)$", re.IGNORECASE)
_VALUES = {"": -1, "-1": -1, "0": 0, "1": 1, "-1.0": -1, "0.0": 0, "1.0": 1}


def normalise_au_name(name: str) -> Optional[str]:
    """'AU01' -> '1', 'au12' -> '12', 'AUL12' / 'l12' -> 'L12'; None when it is no AU name."""
    match = _AU_NAME.match(name.strip())
    if not match:
        return None
    side, number = match.groups()
    return f"{(side or '').upper()}{int(number)}"


def read_labels_csv(csv_path) -> tuple[list[str], list[int], list[str], np.ndarray]:
    """(image paths, CSV line numbers, AU names as in AU_SETS, labels (M, A) in -1 / 0 / 1)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: label CSV not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{csv_path}:1: empty file, expected a header row")
    header = [h.strip() for h in rows[0]]
    image_columns = [i for i, h in enumerate(header) if h.lower() in IMAGE_COLUMNS]
    if len(image_columns) != 1:
        raise DatasetError(f"{csv_path}:1: expected one image column named one of {', '.join(IMAGE_COLUMNS)}, "
                           f"found {len(image_columns)} in {', '.join(header)}")
    image_column = image_columns[0]
    au_columns, aus = [], []
    for i, h in enumerate(header):
        if i == image_column:
            continue
        au = normalise_au_name(h)
        if au is None:
            raise DatasetError(f"{csv_path}:1: column {h!r} is not an AU name (AU1, AU01, 12, AUL12, R12, ...)")
        if au in aus:
            raise DatasetError(f"{csv_path}:1: columns {header[au_columns[aus.index(au)]]!r} and {h!r} are both AU{au}")
        au_columns.append(i)
        aus.append(au)
    if not aus:
        raise DatasetError(f"{csv_path}:1: no AU columns besides {header[image_column]!r}")
    paths, line_numbers, labels = [], [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{csv_path}:{line_no}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: {len(row)} fields, the header has {len(header)}")
        path = row[image_column].strip()
        if not path:
            raise DatasetError(f"{where}: empty image path")
        values = []
        for c in au_columns:
            text = row[c].strip()
            if text not in _VALUES:
                raise DatasetError(f"{where}: {header[c]} value {text!r} is not 1, 0, -1 or blank (not coded)")
            values.append(_VALUES[text])
        paths.append(path)
        line_numbers.append(line_no)
        labels.append(values)
    if not paths:
        raise DatasetError(f"{csv_path}: no image rows after the header")
    return paths, line_numbers, aus, np.asarray(labels, dtype=np.int64)


def choose_au_set(aus: list[str], requested: str, csv_path) -> str:
    """The AU set to write: `requested`, or for 'auto' the smallest set (DISFA, BP4D,
    OpenGraphAU) that holds every AU of the CSV."""
    if requested != "auto":
        if requested not in AU_SETS:
            raise DatasetError(f"unknown AU set {requested!r} (BP4D, DISFA, OpenGraphAU or auto)")
        outside = [f"AU{a}" for a in aus if a not in AU_SETS[requested]]
        if outside:
            raise DatasetError(f"{csv_path}:1: {', '.join(outside)} not in {requested}'s AUs "
                               f"({' '.join('AU' + a for a in AU_SETS[requested])})")
        return requested
    for name in ("DISFA", "BP4D", "OpenGraphAU"):
        if all(a in AU_SETS[name] for a in aus):
            return name
    outside = [f"AU{a}" for a in aus if a not in AU_SETS["OpenGraphAU"]]
    raise DatasetError(f"{csv_path}:1: {', '.join(outside)} in none of the models' AU sets (OpenGraphAU has "
                       f"{' '.join('AU' + a for a in AU_SETS['OpenGraphAU'])})")


def prepare_own_lists(csv_path, list_dir, au_set: str = "auto", val_fraction: float = 0.2, seed: int = 0,
                      img_dir=None) -> dict:
    """Write fold 1's lists of `csv_path` into `list_dir` under the AU set's name.

    Relative image paths are looked up in `img_dir` (default: img/ beside `list_dir`, where the
    training reads them) and written as they are; with another `img_dir` they are written as
    absolute paths. `val_fraction` of the images (at least one) become the test list.
    Returns a summary: {'au_set', 'train', 'test', 'uncoded_aus', 'files'}.
    """
    csv_path, list_dir = Path(csv_path), Path(list_dir)
    if not 0 < val_fraction < 1:
        raise DatasetError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    paths, line_numbers, aus, values = read_labels_csv(csv_path)
    name = choose_au_set(aus, au_set, csv_path)
    target = AU_SETS[name]
    labels = np.full((len(paths), len(target)), -1, dtype=np.int64)  # (M, N) in the set's order
    labels[:, [target.index(a) for a in aus]] = values

    default_img = list_dir.parent / "img"
    img_dir = Path(img_dir) if img_dir is not None else default_img
    absolute = img_dir.resolve() != default_img.resolve()
    written_paths, missing = [], []
    for path, line_no in zip(paths, line_numbers):
        full = Path(path) if os.path.isabs(path) else img_dir / path
        if not full.is_file():
            missing.append((line_no, path))
        written_paths.append(str(full.resolve()) if absolute and not os.path.isabs(path) else path)
    if missing:
        line_no, path = missing[0]
        raise DatasetError(f"{csv_path}:{line_no}: image {path} not found in {img_dir} "
                           f"({len(missing)} of {len(paths)} images missing)")
    if len(paths) < 2:
        raise DatasetError(f"{csv_path}: {len(paths)} image; a training and a test list need at least 2")

    order = np.random.default_rng(seed).permutation(len(paths))
    n_test = min(max(1, round(val_fraction * len(paths))), len(paths) - 1)
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])  # CSV order within each list
    au_names = [f"AU{a}" for a in target]
    try:
        weights = compute_class_weights_coded(labels[train_idx], au_names,
                                              f"{csv_path} (training part, {len(train_idx)} images)")
    except DatasetError as err:
        raise DatasetError(f"{err} (leave it blank where it is not coded, or drop the column)") from None
    files = write_split_lists(list_dir, name, 1,
                              ([written_paths[i] for i in train_idx], labels[train_idx]),
                              ([written_paths[i] for i in test_idx], labels[test_idx]), weights)
    uncoded = [au_names[i] for i in np.flatnonzero((labels[train_idx] < 0).all(axis=0))]
    return {"au_set": name, "train": len(train_idx), "test": len(test_idx), "uncoded_aus": uncoded,
            "files": files, "aus": [f"AU{a}" for a in aus]}
