"""The list-file format of ME-GraphAU's data sets (Luo et al., IJCAI-ECAI 2022): one module owns
the file names, the AU-pair relations, the class weights, and reading and writing the lists.

A data set folder holds ``list/`` and ``img/``; for fold k of a data set named D:

    D_{train|test}_img_path_fold{k}.txt   one image path per line, relative to img/
    D_{train|test}_label_fold{k}.txt      N space-separated ints per image (0, 1; -1 = unknown)
    D_weight_fold{k}.txt                  N tab-separated class weights (%f), from the training labels
    D_train_AU_relation_fold{k}.txt       N*N ints per image: 2*a_i + a_j at index i*N + j (-1 unknown)

Fold k trains on two subject parts and tests on the third (subject-independent 3-fold protocol):
fold1 = part1+part2 / part3, fold2 = part1+part3 / part2, fold3 = part2+part3 / part1.

The hybrid protocol (OpenGraphAU, a dataset config with ``protocol: hybrid``) has no folds but
three fixed splits, under the config's ``list_prefix`` P (the release's ``hybrid``):
P_{train|val|test}_img_path.txt, P_{train|val|test}_label.txt and P_train_weight.txt.

Writers: ``tool/prepare_lists.py`` (BP4D, DISFA) and the SYNTH generator (``synth.py``) call
:func:`write_fold_lists`. Reader: ``dataset.AUDataset`` calls :func:`read_lines`,
:func:`read_int_matrix` and :func:`read_class_weights`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megraphau.errors import UserError

# (train parts, test part) per fold, 0-based part indices, in the protocol's order.
FOLD_PARTS = {1: ((0, 1), 2), 2: ((0, 2), 1), 3: ((1, 2), 0)}
# The release's BP4D lists keep the raw "not coded" value 9; it is read as unknown (-1).
RELEASE_UNCODED = 9


class DatasetError(UserError, ValueError):
    """Bad dataset config, list file or image; the message names the file (and line).
    (Defined here, the lowest data module; ``dataset.DatasetError`` is the same class.)"""


# ----------------------------------------------------------------------------- names
def list_file(list_dir: str | Path, name: str, kind: str, fold: int | None, split: str | None = None) -> Path:
    """Path of one list file. kind: 'img_path', 'label', 'weight' (no split) or 'AU_relation'
    (split 'train'); e.g. list_file(d, 'BP4D', 'label', 1, 'test') -> d/BP4D_test_label_fold1.txt.

    fold None: the hybrid protocol's names (OpenGraphAU's train/val/test lists, no folds), where
    `name` is the list prefix: list_file(d, 'hybrid', 'label', None, 'val') -> d/hybrid_val_label.txt;
    the class weights and relations are those of the training split, hybrid_train_weight.txt."""
    if fold is None:
        split = "train" if kind in ("weight", "AU_relation") else split
        return Path(list_dir) / f"{name}_{split}_{kind}.txt"
    middle = f"{split}_{kind}" if split else kind
    return Path(list_dir) / f"{name}_{middle}_fold{fold}.txt"


# ----------------------------------------------------------------------------- maths
def relations_from_labels(labels):
    """AU-pair classes (..., N*N): 2*a_i + a_j at index i*N + j, -1 where a_i or a_j is unknown.

    Works on NumPy arrays and torch tensors alike (returns the same kind, int64).
    """
    if hasattr(labels, "unsqueeze"):  # a torch tensor: same maths, tensor in, tensor out
        import torch

        return torch.from_numpy(relations_from_labels(labels.detach().cpu().numpy()))
    labels = np.asarray(labels, dtype=np.int64)
    a_i = labels[..., :, None]  # (..., N, 1)
    a_j = labels[..., None, :]  # (..., 1, N)
    rel = np.where((a_i < 0) | (a_j < 0), -1, 2 * a_i + a_j)  # (..., N, N)
    return rel.reshape(*labels.shape[:-1], labels.shape[-1] ** 2)  # (..., N*N)


def compute_class_weights(labels: np.ndarray, source: str = "training labels") -> np.ndarray:
    """Class weights of the release: w_i = (1/r_i) / sum_j(1/r_j) * N.

    r_i is the fraction of frames with AU i present among the frames where AU i is KNOWN
    (entries -1 are left out). An AU that is never present has no finite weight: that is a
    DatasetError naming `source`.
    """
    labels = np.asarray(labels)
    positives = (labels == 1).sum(axis=0)
    known_counts = (labels >= 0).sum(axis=0)
    bad = np.flatnonzero(positives == 0)
    if bad.size:
        raise DatasetError(
            f"{source}: AU column(s) {bad.tolist()} (0-based) never present among "
            f"{labels.shape[0]} training frames; its class weight 1/r would be infinite")
    rate = positives / known_counts
    inverse = 1.0 / rate
    return inverse / inverse.sum() * labels.shape[1]


# ----------------------------------------------------------------------------- reading
def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a list file (trailing blank lines allowed, a blank line inside is an error)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found (write the lists with "
                              f"tool/prepare_lists.py, see data/README.md)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError(f"{path}:{i}: empty line")
    if not lines:
        raise DatasetError(f"{path}: empty list file")
    return lines


def read_int_matrix(path: Path, width: int, what: str) -> np.ndarray:
    """Rows of `width` whitespace-separated ints; DatasetError naming file:line on a bad row."""
    lines = read_lines(path)
    try:  # fast path (numpy's C parser)
        arr = np.loadtxt(lines, dtype=np.int64, ndmin=2)
        if arr.shape == (len(lines), width):
            return arr
    except ValueError:
        pass
    for i, line in enumerate(lines, start=1):  # slow path: find the first bad line
        fields = line.split()
        if len(fields) != width:
            raise DatasetError(f"{path}:{i}: {len(fields)} {what} values, expected {width}")
        try:
            [int(f) for f in fields]
        except ValueError:
            raise DatasetError(f"{path}:{i}: non-integer {what} value in {line.strip()!r:.80}") from None
    raise DatasetError(f"{path}: cannot parse as rows of {width} integers")  # pragma: no cover


def check_values(path: Path, arr: np.ndarray, allowed_max: int, what: str) -> np.ndarray:
    """Values must be -1..allowed_max; the release's "not coded" markers become -1 with a warning."""
    bad = (arr < -1) | (arr > allowed_max)
    if not bad.any():
        return arr
    # The release's BP4D lists hold 9 for "not coded": labels 9, relations 2*9+a or 2*a+9 (>= 9).
    legacy = arr == RELEASE_UNCODED if what == "label" else arr >= RELEASE_UNCODED
    if (bad & ~legacy).any():
        r, c = np.argwhere(bad & ~legacy)[0]
        raise DatasetError(f"{path}:{r + 1}: {what} value {arr[r, c]} in column {c + 1} is "
                              f"not in -1..{allowed_max}")
    warnings.warn(f"{path}: {int(bad.sum())} {what} values of 'not coded' (9, as in the "
                  f"release's BP4D lists) are read as unknown (-1)", stacklevel=3)
    return np.where(bad, -1, arr)


def read_class_weights(path: Path, num_classes: int) -> np.ndarray:
    """The N positive finite class weights of a weight file."""
    try:  # read as text first: a byte-order mark or CRLF line ends are fine
        weights = np.loadtxt(read_lines(path), dtype=np.float64).reshape(-1)
    except ValueError as err:
        raise DatasetError(f"{path}: not a row of numbers ({err})") from None
    if weights.shape != (num_classes,) or not np.isfinite(weights).all() or (weights <= 0).any():
        raise DatasetError(f"{path}: expected {num_classes} positive finite class weights, "
                              f"got {weights.size} values {weights.tolist()!s:.120}")
    return weights


# ----------------------------------------------------------------------------- writing
def _as_label_array(part: Sequence, part_index: int, prefix: str) -> tuple[list[str], np.ndarray]:
    paths, rows = [], []
    for path, labels in part:
        paths.append(str(path))
        rows.append([int(v) for v in labels])
    if not rows:
        return paths, np.zeros((0, 0), dtype=np.int64)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DatasetError(f"{prefix} part{part_index + 1}: label rows of different lengths {sorted(widths)}")
    arr = np.asarray(rows, dtype=np.int64)
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DatasetError(f"{prefix} part{part_index + 1}, frame {r} ({paths[r]}): label {arr[r, c]} "
                              f"in column {c} is not 0, 1 or -1")
    return paths, arr


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def _write_int_rows(path: Path, rows: np.ndarray) -> None:
    if rows.shape[0] == 0:
        path.write_text("")
        return
    np.savetxt(path, rows.reshape(rows.shape[0], -1), fmt="%d", delimiter=" ")


def write_fold_lists(list_dir, prefix: str, parts: Sequence[Sequence]) -> None:
    """Write the 3-fold list files (see the module docstring) into `list_dir` (created if needed).

    parts: exactly 3 lists (part1, part2, part3) of (rel_image_path, labels) in protocol order;
    labels are ints in {0, 1, -1} (-1 = unknown), the same count N for every frame. Every fold
    is computed before anything is written, so an error leaves no half-written set.
    """
    if len(parts) != 3:
        raise DatasetError(f"{prefix}: expected 3 subject parts, got {len(parts)}")
    converted = [_as_label_array(part, i, prefix) for i, part in enumerate(parts)]
    widths = {arr.shape[1] for _, arr in converted if arr.shape[0]}
    if len(widths) != 1:
        raise DatasetError(f"{prefix}: parts have different AU counts {sorted(widths)}"
                              if widths else f"{prefix}: all three parts are empty")
    num_aus = widths.pop()
    list_dir = Path(list_dir)
    list_dir.mkdir(parents=True, exist_ok=True)

    def gather(indices):
        paths = [p for i in indices for p in converted[i][0]]
        arrays = [converted[i][1] for i in indices if converted[i][1].shape[0]]
        labels = np.concatenate(arrays) if arrays else np.zeros((0, num_aus), dtype=np.int64)
        return paths, labels

    folds = {}
    for k, (train_idx, test_idx) in FOLD_PARTS.items():
        train_paths, train_labels = gather(train_idx)
        test_paths, test_labels = gather((test_idx,))
        weights = compute_class_weights(
            train_labels, f"{prefix} fold{k} training labels (parts {'+'.join(str(i + 1) for i in train_idx)})")
        folds[k] = (train_paths, train_labels, test_paths, test_labels, weights)

    for k, (train_paths, train_labels, test_paths, test_labels, weights) in folds.items():
        _write_lines(list_file(list_dir, prefix, "img_path", k, "train"), train_paths)
        _write_lines(list_file(list_dir, prefix, "img_path", k, "test"), test_paths)
        _write_int_rows(list_file(list_dir, prefix, "label", k, "train"), train_labels)
        _write_int_rows(list_file(list_dir, prefix, "label", k, "test"), test_labels)
        _write_lines(list_file(list_dir, prefix, "weight", k), ["\t".join(f"{w:f}" for w in weights)])
        _write_int_rows(list_file(list_dir, prefix, "AU_relation", k, "train"), relations_from_labels(train_labels))


# ----------------------------------------------------------------------------- one fold, own labels
def compute_class_weights_coded(labels: np.ndarray, au_names: Sequence[str], source: str) -> np.ndarray:
    """Class weights of the release's formula over the AUs that have coded training labels.

    Lists of one's own labels (tool/prepare_lists.py --from-csv) may leave AUs of a model's set
    uncoded (-1) in every frame: those are left out of the loss, so their weight is never used
    and is written as 1; the others get w_i = (1/r_i) / sum_j(1/r_j) * n over the n coded AUs
    (r_i among the frames where AU i is coded). A coded AU that is never present would get an
    infinite weight: a DatasetError naming it and `source`.
    """
    labels = np.asarray(labels)
    coded = (labels >= 0).sum(axis=0) > 0
    never = [au_names[i] for i in np.flatnonzero(coded & ((labels == 1).sum(axis=0) == 0))]
    if never:
        raise DatasetError(f"{source}: {', '.join(never)} coded but never present in the {labels.shape[0]} "
                           f"training images; its class weight 1/r would be infinite")
    weights = np.ones(labels.shape[1])
    if coded.any():
        weights[coded] = compute_class_weights(labels[:, coded], source)
    return weights


def write_split_lists(list_dir, prefix: str, fold: int, train: tuple, test: tuple,
                      weights: np.ndarray, relations: bool = True) -> list[Path]:
    """Write one fold's files (see the module docstring) from (paths, labels (M, N)) of the
    training and test images and the N class weights; returns the paths written. Without
    `relations` no relation file is written (the dataset then computes them from the labels)."""
    list_dir = Path(list_dir)
    list_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (paths, labels) in (("train", train), ("test", test)):
        labels = np.asarray(labels, dtype=np.int64).reshape(len(paths), -1)
        written += [list_file(list_dir, prefix, kind, fold, split) for kind in ("img_path", "label")]
        _write_lines(written[-2], paths)
        _write_int_rows(written[-1], labels)
        if split == "train" and relations:
            written.append(list_file(list_dir, prefix, "AU_relation", fold, "train"))
            _write_int_rows(written[-1], relations_from_labels(labels))
    written.append(list_file(list_dir, prefix, "weight", fold))
    _write_lines(written[-1], ["\t".join(f"{w:f}" for w in weights)])
    return written
