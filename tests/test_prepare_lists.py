"""Tests of tool/prepare_lists.py: list formats, folds, weights, relations, raw-label parsing."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tool.prepare_lists import (BP4D_AUS, BP4D_PARTS, BP4D_TASKS, DISFA_AUS, DISFA_PARTS,
                                ListPreparationError, compute_class_weights, compute_relations,
                                write_fold_lists)

REPO = Path(__file__).resolve().parents[1]


def _read(path):
    return Path(path).read_text().splitlines()


# ----------------------------------------------------------------------------- write_fold_lists
def _tiny_parts():
    # 3 AUs; part sizes 2, 1, 2; one unknown label in part2.
    part1 = [("a/0.jpg", [1, 0, 0]), ("a/1.jpg", [1, 1, 0])]
    part2 = [("b/0.jpg", [0, -1, 1])]
    part3 = [("c/0.jpg", [0, 1, 1]), ("c/1.jpg", [1, 0, 0])]
    return [part1, part2, part3]


def test_write_fold_lists_membership_order_and_formats(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    expect = {1: (["a/0.jpg", "a/1.jpg", "b/0.jpg"], ["c/0.jpg", "c/1.jpg"]),
              2: (["a/0.jpg", "a/1.jpg", "c/0.jpg", "c/1.jpg"], ["b/0.jpg"]),
              3: (["b/0.jpg", "c/0.jpg", "c/1.jpg"], ["a/0.jpg", "a/1.jpg"])}
    for k, (train, test) in expect.items():
        assert _read(tmp_path / f"TINY_train_img_path_fold{k}.txt") == train
        assert _read(tmp_path / f"TINY_test_img_path_fold{k}.txt") == test
    assert _read(tmp_path / "TINY_train_label_fold1.txt") == ["1 0 0", "1 1 0", "0 -1 1"]
    assert _read(tmp_path / "TINY_test_label_fold1.txt") == ["0 1 1", "1 0 0"]
    assert _read(tmp_path / "TINY_test_label_fold2.txt") == ["0 -1 1"]


def test_weights_exact_tiny_case_ignore_unknown(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    # fold1 train: AU0 2/3 present, AU1 1/2 known present (one -1), AU2 1/3.
    inv = np.array([3 / 2, 2.0, 3.0])
    expected = inv / inv.sum() * 3  # 0.692308 0.923077 1.384615
    line = _read(tmp_path / "TINY_weight_fold1.txt")
    assert len(line) == 1
    fields = line[0].split("\t")
    assert fields == ["0.692308", "0.923077", "1.384615"]
    np.testing.assert_allclose([float(f) for f in fields], expected, atol=1e-6)


def test_relation_values(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    rows = [list(map(int, r.split())) for r in _read(tmp_path / "TINY_train_AU_relation_fold1.txt")]
    assert len(rows) == 3 and all(len(r) == 9 for r in rows)
    # frame [1, 1, 0]: pair (i, j) -> 2*a_i + a_j at i*3 + j
    assert rows[1] == [3, 3, 2, 3, 3, 2, 1, 1, 0]
    # frame [0, -1, 1]: anything touching AU1 is -1
    assert rows[2] == [0, -1, 1, -1, -1, -1, 2, -1, 3]


def test_compute_relations_matches_formula():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 2, size=(7, 5))
    rel = compute_relations(labels)
    for m in range(7):
        for i in range(5):
            for j in range(5):
                a, b = labels[m, i], labels[m, j]
                assert rel[m, i * 5 + j] == (-1 if a < 0 or b < 0 else 2 * a + b)


def test_weights_formula_random():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(50, 6))
    labels[0] = 1
    w = compute_class_weights(labels)
    r = labels.mean(axis=0)
    np.testing.assert_allclose(w, (1 / r) / (1 / r).sum() * 6)
    assert w.sum() == pytest.approx(6)


def test_au_never_present_is_an_error(tmp_path):
    parts = _tiny_parts()
    parts = [[(p, [l[0], l[1], 0]) for p, l in part] for part in parts]
    with pytest.raises(ListPreparationError, match="never present"):
        write_fold_lists(tmp_path, "TINY", parts)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_label_value_and_part_count(tmp_path):
    parts = _tiny_parts()
    parts[0][0] = ("a/0.jpg", [1, 9, 0])
    with pytest.raises(ListPreparationError, match="a/0.jpg"):
        write_fold_lists(tmp_path, "TINY", parts)
    with pytest.raises(ListPreparationError, match="3 subject parts"):
        write_fold_lists(tmp_path, "TINY", _tiny_parts()[:2])
