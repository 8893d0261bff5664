"""OpenGraphAU (41 AUs) through the training and test scripts: a dataset YAML with
`variant: opengraphau`, labels with -1 (unknown) and left/right pairs swapped by the flip.

The images are tiny SYNTH faces; the 41 labels are random (this checks the mechanics, not learning).
"""
import json

import numpy as np
import pytest
import yaml

import test as test_script
import train_stage1
import train_stage2
from megraphau import (
    conf,  # noqa: I001
)
from megraphau.data.lists import write_fold_lists
from megraphau.paths import CONFIG_DIR
from megraphau.synth import generate_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="module")
def ogau_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ogau")
    generate_synthetic_dataset(root, subjects_per_part=1, tasks=1, frames=6, seed=1, size=64)
    list_dir = root / "list"
    # the SYNTH test lists of folds 3, 2, 1 are parts 1, 2, 3
    parts = [(list_dir / f"SYNTH_test_img_path_fold{k}.txt").read_text().split() for k in (3, 2, 1)]
    rng = np.random.default_rng(0)
    labelled = []
    for paths in parts:
        rows = rng.integers(0, 2, size=(len(paths), 41))
        rows[rng.random(rows.shape) < 0.1] = -1  # unknown labels, as in OpenGraphAU's merged data
        rows[:, :3] = [1, 0, 1]  # every AU present somewhere in every training set
        rows[0, :] = 1
        labelled.append(list(zip(paths, rows.tolist())))
    write_fold_lists(list_dir, "OpenGraphAU", labelled)
    cfg = yaml.safe_load((CONFIG_DIR / "OpenGraphAU.yaml").read_text())
    cfg["dataset_path"] = str(root)
    cfg["protocol"] = "folds"  # fold lists of the 41 AUs (the hybrid protocol: tests/test_hybrid_protocol.py)
    config = root / "OpenGraphAU_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def _args(module, section, config, out, *extra):
    argv = ["--dataset", str(config), "--output-dir", str(out), "--arc", "resnet18", "--pretrained", "none",
            "--crop-size", "48", "-b", "4", "-e", "1", "-j", "0", "--no-progress", "--save-every", "0", *extra]
    return conf.parse_args(module.get_args_parser(), argv, section=section)


def test_opengraphau_stage1_stage2_and_test(ogau_dataset, tmp_path):
    s1 = train_stage1.main(_args(train_stage1, "stage1", ogau_dataset, tmp_path, "--exp-name", "s1",
                                 "-lr", "0.001"))
    best1 = s1["run_dir"] / "best.pth"
    assert best1.exists() and len(s1["history"][-1]["f1"]) == 41
    s2 = train_stage2.main(_args(train_stage2, "stage2", ogau_dataset, tmp_path, "--exp-name", "s2",
                                 "--resume", str(best1)))
    best2 = s2["run_dir"] / "best.pth"
    assert best2.exists()
    test_script.main(_args(test_script, "test", ogau_dataset, tmp_path, "--exp-name", "t",
                           "--resume", str(best2)))
    results = list((tmp_path / "t").rglob("results.json"))
    assert len(results) == 1
    res = json.loads(results[0].read_text())
    assert len(res["au_names"]) == 41 and res["au_names"][27:29] == ["AUL1", "AUR1"]
    assert len(res["f1"]) == 41 and 0 <= res["mean_f1"] <= 100
