#!/usr/bin/env python
"""Write the 3-fold list files of BP4D / DISFA (ME-GraphAU, IJCAI-ECAI 2022, SPEC §2).

Raw label layouts read by the command line (the datasets are licensed; see data/README.md):

BP4D   --label-dir AUCoding/AU_OCC
         {subject}_{task}.csv for every subject of the protocol and tasks T1..T8: one header
         row, the first column is the frame number, the other columns are named by AU number
         ('1', '2', '4', ...). Values 0 / 1, and 9 for "not coded". The 12 AUs
         1 2 4 6 7 10 12 14 15 17 23 24 are taken by header name. Image path of a frame:
         {subject}/{task}/{frame}.jpg.
DISFA  --label-dir ActionUnit_Labels
         {SN}/{SN}_au{k}.txt for k in 1 2 4 6 9 12 25 26, lines "frame,intensity" with
         intensity 0..5; occurrence = intensity >= 2. Frame count = line count of au1 (all AU
         files of a subject must agree); image path {SN}/{i}.png with i from 0 in file order.

Outputs in --list-dir (default data/{DATASET}/list), for k = 1, 2, 3 and D = BP4D / DISFA:
  D_train_img_path_foldk.txt, D_test_img_path_foldk.txt   one image path per line
  D_train_label_foldk.txt,    D_test_label_foldk.txt      N space-separated ints (-1 = unknown)
  D_weight_foldk.txt          N tab-separated class weights (%f)
  D_train_AU_relation_foldk.txt  N*N ints per image: 2*a_i + a_j at index i*N + j (-1 unknown)

Fold k trains on two subject parts and tests on the third: fold1 = part1+part2 / part3,
fold2 = part1+part3 / part2, fold3 = part2+part3 / part1.

Library use (e.g. for a synthetic data set): ``write_fold_lists(list_dir, prefix, parts)``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

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
# (train parts, test part) per fold, 0-based part indices, in the protocol's order.
FOLD_PARTS = {1: ((0, 1), 2), 2: ((0, 2), 1), 3: ((1, 2), 0)}
BP4D_UNCODED = 9
DISFA_OCCURRENCE_THRESHOLD = 2

# Fold-1 values computed by the release from the full training labels (SPEC §2), for --check.
KNOWN_FOLD1 = {
    "BP4D": {"weights": [1.342985, 1.689665, 1.248091, 0.561356, 0.433044, 0.435894, 0.457287,
                         0.541004, 1.408054, 0.722762, 1.493145, 1.666711], "test_size": 46034},
    "DISFA": {"weights": [1.422290, 2.347771, 0.399672, 0.795021, 1.878217, 0.440125, 0.195583,
                          0.521322], "test_size": 43605},
}


class ListPreparationError(ValueError):
    """Bad or missing raw label data; the message names the file (and line)."""


# ----------------------------------------------------------------------------- list maths
def compute_class_weights(labels: np.ndarray, source: str = "training labels") -> np.ndarray:
    """Class weights of the release: w_i = (1/r_i) / sum_j(1/r_j) * N.

    r_i is the fraction of frames with AU i present among the frames where AU i is KNOWN
    (entries -1 are left out). An AU that is never present (or never known) has no finite
    weight: that is a ListPreparationError naming `source`.
    """
    labels = np.asarray(labels)
    known = labels >= 0
    positives = (labels == 1).sum(axis=0)
    known_counts = known.sum(axis=0)
    bad = np.flatnonzero(positives == 0)
    if bad.size:
        raise ListPreparationError(
            f"{source}: AU column(s) {bad.tolist()} (0-based) never present among "
            f"{labels.shape[0]} training frames; its class weight 1/r would be infinite")
    rate = positives / known_counts
    inverse = 1.0 / rate
    return inverse / inverse.sum() * labels.shape[1]


def compute_relations(labels: np.ndarray) -> np.ndarray:
    """AU-pair relation classes (M, N*N): 2*a_i + a_j at index i*N + j, -1 if either is unknown."""
    labels = np.asarray(labels, dtype=np.int64)
    m, n = labels.shape
    a_i = labels[:, :, None]  # (M, N, 1)
    a_j = labels[:, None, :]  # (M, 1, N)
    rel = 2 * a_i + a_j  # (M, N, N)
    rel = np.where((a_i < 0) | (a_j < 0), -1, rel)
    return rel.reshape(m, n * n)  # (M, N*N), pair (i, j) at i*N + j


def _as_label_array(part: Sequence, part_index: int, prefix: str) -> tuple[list[str], np.ndarray]:
    paths, rows = [], []
    for item in part:
        path, labels = item
        paths.append(str(path))
        rows.append([int(v) for v in labels])
    if not rows:
        return paths, np.zeros((0, 0), dtype=np.int64)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ListPreparationError(
            f"{prefix} part{part_index + 1}: label rows of different lengths {sorted(widths)}")
    arr = np.asarray(rows, dtype=np.int64)
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ListPreparationError(
            f"{prefix} part{part_index + 1}, frame {r} ({paths[r]}): label {arr[r, c]} "
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
    """Write the 3-fold list files of SPEC §2 into `list_dir` (created if needed).

    parts: exactly 3 lists (part1, part2, part3) of (rel_image_path, labels) in protocol order;
    labels are ints in {0, 1, -1} (-1 = unknown), the same count N for every frame.
    For k = 1..3 writes {prefix}_{train|test}_img_path_fold{k}.txt,
    {prefix}_{train|test}_label_fold{k}.txt, {prefix}_weight_fold{k}.txt and
    {prefix}_train_AU_relation_fold{k}.txt (see the module docstring).
    """
    if len(parts) != 3:
        raise ListPreparationError(f"{prefix}: expected 3 subject parts, got {len(parts)}")
    converted = [_as_label_array(part, i, prefix) for i, part in enumerate(parts)]
    widths = {arr.shape[1] for _, arr in converted if arr.shape[0]}
    if len(widths) != 1:
        raise ListPreparationError(f"{prefix}: parts have different AU counts {sorted(widths)}"
                                   if widths else f"{prefix}: all three parts are empty")
    num_aus = widths.pop()
    list_dir = Path(list_dir)
    list_dir.mkdir(parents=True, exist_ok=True)

    def gather(indices):
        paths = [p for i in indices for p in converted[i][0]]
        arrays = [converted[i][1] for i in indices if converted[i][1].shape[0]]
        labels = np.concatenate(arrays) if arrays else np.zeros((0, num_aus), dtype=np.int64)
        return paths, labels

    # Compute every fold before writing anything, so an error leaves no half-written set.
    folds = {}
    for k, (train_idx, test_idx) in FOLD_PARTS.items():
        train_paths, train_labels = gather(train_idx)
        test_paths, test_labels = gather((test_idx,))
        weights = compute_class_weights(
            train_labels, f"{prefix} fold{k} training labels (parts "
                          f"{'+'.join(str(i + 1) for i in train_idx)})")
        folds[k] = (train_paths, train_labels, test_paths, test_labels, weights)

    for k, (train_paths, train_labels, test_paths, test_labels, weights) in folds.items():
        _write_lines(list_dir / f"{prefix}_train_img_path_fold{k}.txt", train_paths)
        _write_lines(list_dir / f"{prefix}_test_img_path_fold{k}.txt", test_paths)
        _write_int_rows(list_dir / f"{prefix}_train_label_fold{k}.txt", train_labels)
        _write_int_rows(list_dir / f"{prefix}_test_label_fold{k}.txt", test_labels)
        _write_lines(list_dir / f"{prefix}_weight_fold{k}.txt",
                     ["\t".join(f"{w:f}" for w in weights)])
        _write_int_rows(list_dir / f"{prefix}_train_AU_relation_fold{k}.txt",
                        compute_relations(train_labels))
