"""Tests of lists from one's own labels (megraphau/data/own_labels.py, prepare_lists.py --from-csv)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from megraphau.data.dataset import AUDataset, load_dataset_config
from megraphau.data.lists import DatasetError, compute_class_weights_coded, relations_from_labels
from megraphau.data.own_labels import AU_SETS, normalise_au_name, prepare_own_lists
from megraphau.paths import CONFIG_DIR
from tool.prepare_lists import main as prepare_main


def _read(path):
    return Path(path).read_text().splitlines()


def _setup(tmp_path, text, images=None):
    """CSV at tmp/labels.csv, tiny images under tmp/own/img, list folder tmp/own/list."""
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(text)
    img = tmp_path / "own" / "img"
    for name in images or []:
        (img / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img / name), np.full((32, 32, 3), 128, dtype=np.uint8))
    return csv_path, tmp_path / "own" / "list"


CSV = """image,AU1,AU02,au12
a/0.png,1,0,1
a/1.png,0,,1
b/0.png,1,1,-1
b/1.png,0,1,0
c/0.png,1,0,0
"""
IMAGES = ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "c/0.png"]


def test_au_names_normalised():
    assert [normalise_au_name(n) for n in ("AU1", "AU01", "au12", "12", "AUL12", "l12", "R 4", "AU_25")] == \
        ["1", "1", "12", "12", "L12", "L12", "R4", "25"]
    assert normalise_au_name("smile") is None and normalise_au_name("AU") is None


def test_au_sets_follow_the_configs():
    for name, aus in AU_SETS.items():
        names = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())["au_names"]
        assert names == [f"AU{a}" for a in aus]


def test_csv_to_disfa_lists(tmp_path, capsys):
    csv_path, out = _setup(tmp_path, CSV, IMAGES)
    assert prepare_main(["--from-csv", str(csv_path), "--output", str(out), "--val-fraction", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "DISFA lists (fold 1)" in printed and "train 3 images, test 2 images" in printed
    assert f"--dataset DISFA --dataset-path {out.parent.resolve()} --fold 1" in printed
    train, test = _read(out / "DISFA_train_img_path_fold1.txt"), _read(out / "DISFA_test_img_path_fold1.txt")
    assert sorted(train + test) == sorted(IMAGES) and len(test) == 2
    assert train == [p for p in IMAGES if p in train]  # CSV order kept
    # DISFA order AU1 AU2 AU4 AU6 AU9 AU12 AU25 AU26; AUs the CSV lacks are -1, blank and -1 too
    by_image = {"a/0.png": "1 0 -1 -1 -1 1 -1 -1", "a/1.png": "0 -1 -1 -1 -1 1 -1 -1",
                "b/0.png": "1 1 -1 -1 -1 -1 -1 -1", "b/1.png": "0 1 -1 -1 -1 0 -1 -1",
                "c/0.png": "1 0 -1 -1 -1 0 -1 -1"}
    assert _read(out / "DISFA_train_label_fold1.txt") == [by_image[p] for p in train]
    assert _read(out / "DISFA_test_label_fold1.txt") == [by_image[p] for p in test]
    labels = np.array([[int(v) for v in by_image[p].split()] for p in train])
    rel = np.loadtxt(out / "DISFA_train_AU_relation_fold1.txt", dtype=np.int64, ndmin=2)
    np.testing.assert_array_equal(rel, relations_from_labels(labels))
    weights = [float(w) for w in _read(out / "DISFA_weight_fold1.txt")[0].split("\t")]
    np.testing.assert_allclose(weights, compute_class_weights_coded(labels, AU_SETS["DISFA"], "x"), atol=1e-6)
    assert weights[2] == 1.0  # AU4: not coded anywhere, weight never used


def test_coded_weights_by_hand():
    labels = np.array([[1, 0, -1], [0, 1, -1], [1, 1, -1], [1, -1, -1]])
    # AU0 3/4, AU1 2/3 (of 3 coded); AU2 never coded -> 1. 1/r = 4/3, 3/2 -> * 2 / (17/6)
    np.testing.assert_allclose(compute_class_weights_coded(labels, ["a", "b", "c"], "x"), [16 / 17, 18 / 17, 1.0])
    with pytest.raises(DatasetError, match="x: b coded but never present"):
        compute_class_weights_coded(np.array([[1, 0], [1, -1]]), ["a", "b"], "x")


def test_training_reads_the_lists(tmp_path):
    csv_path, out = _setup(tmp_path, CSV, IMAGES)
    prepare_own_lists(csv_path, out, val_fraction=0.4)
    cfg = load_dataset_config("DISFA")
    for stage in (1, 2):
        ds = AUDataset(cfg, fold=1, split="train", stage=stage, dataset_path=out.parent, crop_size=28)
        item = ds[0]
        assert len(ds) == 3 and item[0].shape == (3, 28, 28) and item[1].shape == (8,)
    assert len(AUDataset(cfg, fold=1, split="test", dataset_path=out.parent, crop_size=28)) == 2


def test_au_set_choice(tmp_path):
    images = ["x.png", "y.png", "z.png"]
    for columns, want in (("AU7,AU1", "BP4D"), ("AU2,AU1", "DISFA"), ("AU5,AU1", "OpenGraphAU"),
                          ("AUL12,AU12", "OpenGraphAU")):
        csv_path, out = _setup(tmp_path, f"image,{columns}\nx.png,1,0\ny.png,0,1\nz.png,1,1\n", images)
        assert prepare_own_lists(csv_path, out, val_fraction=0.3)["au_set"] == want, columns
    csv_path, out = _setup(tmp_path, "path,AU12,AUR12\nx.png,1,0\ny.png,0,1\nz.png,1,1\n", ["x.png", "y.png", "z.png"])
    summary = prepare_own_lists(csv_path, out, au_set="OpenGraphAU", val_fraction=0.3)
    rows = _read(out / "OpenGraphAU_train_label_fold1.txt") + _read(out / "OpenGraphAU_test_label_fold1.txt")
    assert all(len(r.split()) == 41 for r in rows) and summary["train"] == 2
    assert (out / "OpenGraphAU_train_AU_relation_fold1.txt").read_text() != ""
    with pytest.raises(DatasetError, match=r"labels\.csv:1: AUR12 not in BP4D's AUs"):
        prepare_own_lists(csv_path, out, au_set="BP4D")


def test_other_image_folder_written_absolute(tmp_path):
    csv_path, _ = _setup(tmp_path, "file,AU1\nx.png,1\ny.png,1\n", ["x.png", "y.png"])
    out = tmp_path / "elsewhere" / "list"
    prepare_own_lists(csv_path, out, img_dir=tmp_path / "own" / "img", val_fraction=0.5)
    paths = _read(out / "DISFA_train_img_path_fold1.txt") + _read(out / "DISFA_test_img_path_fold1.txt")
    assert sorted(paths) == [str((tmp_path / "own" / "img" / n).resolve()) for n in ("x.png", "y.png")]


@pytest.mark.parametrize("text, message", [
    ("image,AU1,smile\nx.png,1,0\n", r"labels\.csv:1: column 'smile' is not an AU name"),
    ("image,AU1,AU01\nx.png,1,0\n", r"labels\.csv:1: columns 'AU1' and 'AU01' are both AU1"),
    ("name,AU1\nx.png,1\n", r"labels\.csv:1: expected one image column"),
    ("image,AU1,AU2\nx.png,1,0\ny.png,2,0\n", r"labels\.csv:3: AU1 value '2' is not 1, 0, -1 or blank"),
    ("image,AU1\nx.png,1\ny.png,yes\n", r"labels\.csv:3: AU1 value 'yes'"),
    ("image,AU1\nx.png,1\ny.png\n", r"labels\.csv:3: 1 fields, the header has 2"),
    ("image,AU1\nx.png,1\nmissing.png,0\n",
     r"labels\.csv:3: image missing\.png not found in .*\(1 of 2 images missing\)"),
    ("image,AU1,AU43\nx.png,1,0\n", r"labels\.csv:1: AU43 in none of the models' AU sets"),
    ("image,AU1,AU2\nx.png,1,0\ny.png,0,0\nx.png,1,0\ny.png,1,0\n", r"AU2 coded but never present"),
])
def test_errors_name_csv_and_row(tmp_path, capsys, text, message):
    csv_path, out = _setup(tmp_path, text, ["x.png", "y.png"])
    with pytest.raises(DatasetError, match=message):
        prepare_own_lists(csv_path, out, val_fraction=0.25)
    assert prepare_main(["--from-csv", str(csv_path), "--output", str(out), "--val-fraction", "0.25"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {csv_path}") and err.count("\n") == 1


def test_cli_needs_output_and_one_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_main(["--from-csv", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit):
        prepare_main(["--from-csv", "x.csv", "--dataset", "BP4D", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        prepare_main(["--dataset", "OpenGraphAU"])
    with pytest.raises(DatasetError, match="between 0 and 1"):
        prepare_own_lists(tmp_path / "x.csv", tmp_path / "l", val_fraction=1.0)
