"""The hybrid SYNTH set (megraphau/synth/hybrid.py): OpenGraphAU's 41-AU list files, -1 exactly where
a source does not code an AU, subject-disjoint splits, the weight file, determinism, the config and
the command line."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from megraphau.data.dataset import AUDataset, load_dataset_config
from megraphau.data.hybrid import HYBRID_AUS, MAIN_AUS, SPLITS
from megraphau.data.lists import compute_class_weights_coded
from megraphau.paths import CONFIG_DIR
from megraphau.synth import (
    HYBRID_MARKER,
    SOURCES,
    SYNTH_AUS,
    ensure_hybrid_synthetic_dataset,
    generate_hybrid_synthetic_dataset,
)
from megraphau.synth.hybrid import DRAWN_COLUMNS, HYBRID_PREFIX, coded_mask, to_hybrid_rows
from tool.synth_faces import main  # noqa: E402  (the command line)

TINY = dict(subjects=(1, 1, 1), tasks=1, frames=4, size=64)
#: SHA-256 of the three hybrid label files (train, val, test) of TINY with seed 0. A change of the
#: label sampling or of the sources must change this digest on purpose (and HYBRID_VERSION).
PINNED_LABELS = "12ed485692e0960854a96d382d1566897b649da59d9532747d1add74d2855f71"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_hybrid_synthetic_dataset(tmp_path_factory.mktemp("hybrid") / "H", seed=0, **TINY)


def _lines(path):
    return Path(path).read_text().splitlines()


def _labels(root, split):
    return np.array([[int(v) for v in line.split(" ")] for line in _lines(root / "list" / f"hybrid_{split}_label.txt")])


def _label_digest(root) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update((root / "list" / f"hybrid_{split}_label.txt").read_bytes())
    return h.hexdigest()


def test_drawn_aus_are_main_aus():
    assert [HYBRID_AUS[c] for c in DRAWN_COLUMNS] == [str(a) for a in SYNTH_AUS]
    assert all(c < len(MAIN_AUS) for c in DRAWN_COLUMNS)
    rows = to_hybrid_rows(np.ones((2, 12), int), coded_mask((1, 26)))
    assert rows.shape == (2, 41) and set(np.flatnonzero(rows[0] >= 0)) == {0, 22}  # AU1, AU26
    with pytest.raises(ValueError, match="not drawn"):
        coded_mask((1, 10))


def test_lists_format_and_coding(tiny):
    """41 ints a line; -1 exactly where the frame's source does not code the AU (never an undrawn or
    left/right AU); each coded AU present in each source's split; paths exist."""
    coded_cols = {name: {DRAWN_COLUMNS[SYNTH_AUS.index(a)] for a in aus} for name, aus in SOURCES}
    for split in SPLITS:
        text = (tiny / "list" / f"hybrid_{split}_label.txt").read_text()
        assert re.fullmatch(r"((-1|0|1)( (-1|0|1)){40}\n)+", text)
        paths = _lines(tiny / "list" / f"hybrid_{split}_img_path.txt")
        labels = _labels(tiny, split)
        assert len(paths) == len(labels) == 4 * 4  # 4 sources x 1 subject x 1 task x 4 frames
        sources = np.array([p.split("/")[0] for p in paths])
        assert list(dict.fromkeys(sources)) == [name for name, _ in SOURCES]  # concatenated in source order
        for name, cols in coded_cols.items():
            block = labels[sources == name]
            want = np.zeros(41, bool)
            want[sorted(cols)] = True
            np.testing.assert_array_equal(block >= 0, np.broadcast_to(want, block.shape))
            assert (block[:, sorted(cols)] == 1).any(axis=0).all(), f"{split} {name}: a coded AU never present"
        assert all((tiny / "img" / p).is_file() for p in paths)
    assert all(sum(a in aus for _, aus in SOURCES) >= 2 for a in SYNTH_AUS)  # each drawn AU coded twice or more
    assert len({aus for _, aus in SOURCES}) == len(SOURCES)  # each source its own subset


def test_splits_subject_disjoint(tiny):
    subjects = {s: {"/".join(p.split("/")[:2]) for p in _lines(tiny / "list" / f"hybrid_{s}_img_path.txt")}
                for s in SPLITS}
    assert len(subjects["train"]) == len(subjects["val"]) == len(subjects["test"]) == 4
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])


def test_weights_file_and_fold1_lists(tiny):
    text = (tiny / "list" / "hybrid_train_weight.txt").read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    fields = text.rstrip("\n").split("\t")
    assert len(fields) == 41 and all(re.fullmatch(r"\d+\.\d{6}", f) for f in fields)
    train = _labels(tiny, "train")
    want = compute_class_weights_coded(train, [f"AU{a}" for a in HYBRID_AUS], "x")
    np.testing.assert_allclose([float(f) for f in fields], want, atol=1e-6)
    uncoded = [i for i in range(41) if i not in DRAWN_COLUMNS]
    assert all(fields[i] == "1.000000" for i in uncoded)
    assert sum(float(fields[i]) for i in DRAWN_COLUMNS) == pytest.approx(12, abs=1e-4)
    # fold 1 for the training scripts: train = hybrid train, test = hybrid test, the same weights
    lst = tiny / "list"
    for split in ("train", "test"):
        for kind in ("img_path", "label"):
            fold1 = lst / f"{HYBRID_PREFIX}_{split}_{kind}_fold1.txt"
            assert _lines(fold1) == _lines(lst / f"hybrid_{split}_{kind}.txt")
    assert (lst / f"{HYBRID_PREFIX}_weight_fold1.txt").read_text() == text
    marker = json.loads((tiny / HYBRID_MARKER).read_text())
    assert (marker["num_images"], marker["num_train"], marker["seed"]) == (48, 16, 0)


def test_deterministic_and_pinned(tiny, tmp_path):
    again = generate_hybrid_synthetic_dataset(tmp_path / "again", seed=0, **TINY)
    other = generate_hybrid_synthetic_dataset(tmp_path / "other", seed=1, **TINY)

    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(tiny) == digest(again)
    assert digest(tiny).keys() == digest(other).keys() and _label_digest(tiny) != _label_digest(other)
    assert _label_digest(tiny) == PINNED_LABELS


def test_config_and_dataset(tiny):
    cfg = load_dataset_config("SYNTH_OpenGraphAU")
    og = yaml.safe_load((CONFIG_DIR / "OpenGraphAU.yaml").read_text())
    assert cfg["name"] == HYBRID_PREFIX and cfg["num_classes"] == 41 and cfg["variant"] == "opengraphau"
    assert cfg["au_names"] == og["au_names"] == [f"AU{a}" for a in HYBRID_AUS]
    assert cfg["flip_label_pairs"] == og["flip_label_pairs"]
    assert cfg["dataset_path"].endswith("data/SYNTH_OpenGraphAU")
    assert cfg["defaults"]["stage1"]["crop_size"] == 80 and cfg["defaults"]["stage1"]["arc"] == "resnet18"
    ds = AUDataset(cfg, fold=1, split="train", crop_size=48, dataset_path=tiny)
    image, labels = ds[0]
    assert image.shape == (3, 48, 48) and labels.shape == (41,) and len(ds) == 16


def test_ensure_generates_once(tmp_path):
    root = tmp_path / "H"
    small = dict(TINY, frames=2)
    assert ensure_hybrid_synthetic_dataset(root, **small) == root
    probe = root / "list" / "hybrid_train_label.txt"
    before = probe.stat().st_mtime_ns
    ensure_hybrid_synthetic_dataset(root, **small)  # complete: nothing rewritten
    assert probe.stat().st_mtime_ns == before
    ensure_hybrid_synthetic_dataset(root, **dict(small, frames=3))  # other parameters: regenerated
    assert json.loads((root / HYBRID_MARKER).read_text())["frames"] == 3
    with pytest.raises(TypeError, match="unknown"):
        ensure_hybrid_synthetic_dataset(root, colour="red")
    with pytest.raises(ValueError, match="subject counts"):
        generate_hybrid_synthetic_dataset(root, subjects=(1, 0, 1))


def test_cli_hybrid(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--hybrid", "--output", str(out), "--hybrid-subjects", "1", "1", "1", "--tasks", "1",
                 "--frames", "2", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "hybrid SYNTH data set ready" in printed and "SynDISFA: codes AU1" in printed
    assert len(_lines(out / "list" / "hybrid_val_img_path.txt")) == 4 * 2
    assert (out / "list" / f"{HYBRID_PREFIX}_train_label_fold1.txt").is_file()
