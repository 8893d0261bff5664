"""--init CHECKPOINT (megraphau/engine/finetune.py): fine-tuning from a released or trained model.

The same AU set loads every shared key; another AU set loads the backbone and global_linear and
starts the AU head fresh, and the log says which keys were loaded, skipped and left fresh. End to
end: a 12-AU model fine-tuned on one's own labels (a CSV of SYNTH images through
tool/prepare_lists.py --from-csv, written as OpenGraphAU's 41 AUs) for one epoch.
"""
import csv
import logging

import numpy as np
import pytest
import torch

import train_stage1
from megraphau import conf, utils
from megraphau.engine.finetune import init_from_checkpoint
from megraphau.model import build_model
from megraphau.synth import SYNTH_AUS, generate_synthetic_dataset
from tool.prepare_lists import main as prepare_main

SYNTH_NAMES = [f"AU{a}" for a in SYNTH_AUS]
BP4D_NAMES = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


def _save(model, path, **extra):
    """A checkpoint as the release writes them ('module.' keys under state_dict), plus `extra`."""
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}, **extra}, path)
    return path


def _randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


class Lines(logging.Handler):
    """The messages of megraphau's log (the scripts set it not to propagate, so caplog misses it)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_other_au_set_loads_backbone_and_global_linear_only(tmp_path):
    source = _randomised(build_model(1, "resnet18", 12, 4, pretrained=False))
    path = _save(source, tmp_path / "bp4d.pth")
    target = build_model(1, "resnet18", 41, 4, pretrained=False, variant="opengraphau")
    head_before = target.head.main_sc.detach().clone()
    lines, level = Lines(), utils.log.level
    utils.log.addHandler(lines)
    utils.log.setLevel(logging.INFO)
    try:
        info = init_from_checkpoint(target, path, [f"AU{i}" for i in range(41)])
    finally:
        utils.log.removeHandler(lines)
        utils.log.setLevel(level)
    text = "\n".join(lines.lines)
    assert not info["same_au_set"]
    assert info["loaded"] and all(k.startswith(("backbone.", "global_linear.")) for k in info["loaded"])
    assert all(k.startswith("head.") for k in info["skipped"] + info["fresh"])
    for k, v in source.state_dict().items():
        if k.startswith(("backbone.", "global_linear.")):
            assert torch.equal(target.state_dict()[k], v), k
    assert torch.equal(target.head.main_sc, head_before)  # the AU head starts fresh
    assert "another AU set (12 AUs, megraphau)" in text and "start fresh (head." in text


def test_same_au_set_loads_everything_and_names_decide(tmp_path):
    source = _randomised(build_model(1, "resnet18", 12, 4, pretrained=False))
    path = _save(source, tmp_path / "synth.pth", facts={"au_names": SYNTH_NAMES})
    same = build_model(1, "resnet18", 12, 4, pretrained=False)
    info = init_from_checkpoint(same, path, SYNTH_NAMES)
    assert info["same_au_set"] and not info["skipped"] and not info["fresh"]
    for k, v in source.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    # 12 AUs but other ones (SYNTH's into BP4D's): the head is not theirs
    other = build_model(1, "resnet18", 12, 4, pretrained=False)
    assert not init_from_checkpoint(other, path, BP4D_NAMES)["same_au_set"]
    # a release file names no AUs: the same count and variant are taken as the same set
    release = _save(source, tmp_path / "release.pth")
    assert init_from_checkpoint(build_model(1, "resnet18", 12, 4, pretrained=False), release,
                                BP4D_NAMES)["same_au_set"]
    # stage 1 into stage 2 of the same AUs: the shared keys, the graph parts fresh
    stage2 = build_model(2, "resnet18", 12, 4, pretrained=False)
    info2 = init_from_checkpoint(stage2, path, SYNTH_NAMES)
    assert info2["fresh"] and all(k.startswith("head.") for k in info2["fresh"])
    assert torch.equal(stage2.head.sc, source.head.sc)
    # another backbone: refused in one line that names the file's
    with pytest.raises(utils.UserError, match="holds a resnet18 backbone.*--arc resnet18"):
        init_from_checkpoint(build_model(1, "resnet50", 12, 4, pretrained=False), path, SYNTH_NAMES)


@pytest.fixture(scope="module")
def own_labels(tmp_path_factory):
    """A tiny SYNTH set and a CSV of one's own labels for its images (SYNTH's 12 AUs, some blank)."""
    root = tmp_path_factory.mktemp("own")
    generate_synthetic_dataset(root, subjects_per_part=1, tasks=2, frames=4, seed=0, size=64)
    list_dir = root / "list"
    paths = (list_dir / "SYNTH_train_img_path_fold1.txt").read_text().split() + \
        (list_dir / "SYNTH_test_img_path_fold1.txt").read_text().split()
    labels = np.concatenate([np.loadtxt(list_dir / f"SYNTH_{s}_label_fold1.txt", dtype=int) for s in ("train", "test")])
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image"] + SYNTH_NAMES)
        for i, (path, row) in enumerate(zip(paths, labels)):
            cells = [str(v) for v in row]
            if i % 5 == 1:
                cells[3] = ""  # not coded in this image: -1, left out of the loss
            writer.writerow([path] + cells)
    assert prepare_main(["--from-csv", str(csv_path), "--output", str(list_dir), "--val-fraction", "0.25"]) == 0
    return root


def test_finetune_a_12_au_model_on_own_labels_end_to_end(own_labels, tmp_path, capsys):
    source = _randomised(build_model(1, "resnet18", 12, 4, pretrained=False))
    ckpt = _save(source, tmp_path / "MEFARG_resnet18_BP4D_fold1.pth")
    # the CSV's AUs (SYNTH's) are OpenGraphAU's set: 41-AU fold-1 lists, read with --protocol folds
    argv = ["--dataset", "OpenGraphAU", "--dataset-path", str(own_labels), "--protocol", "folds", "--fold", "1",
            "--init", str(ckpt), "--arc", "resnet18", "--optimizer", "adamw", "-lr", "0.001", "-e", "1", "-b", "8",
            "--crop-size", "48", "-j", "0", "--no-progress", "--output-dir", str(tmp_path), "--exp-name", "ft"]
    result = train_stage1.main(conf.parse_args(train_stage1.get_args_parser(), argv, section="stage1"))
    run = result["run_dir"]
    log = (run / "train.log").read_text()
    assert f"--init {ckpt}" in log and "the backbone and global_linear" in log and "start fresh (head." in log
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["facts"]["num_classes"] == 41 and best["facts"]["variant"] == "opengraphau"
    assert best["provenance"]["files"]["init_checkpoint"]["path"] == str(ckpt)
    assert len(result["history"][-1]["f1"]) == 41
    # the fine-tuned weights moved away from the file's backbone, which they started from
    moved = best["state_dict"]["backbone.layer4.1.conv2.weight"]
    start = source.state_dict()["backbone.layer4.1.conv2.weight"]
    assert not torch.equal(moved, start) and torch.allclose(moved, start, atol=0.1)
    # --init and --resume together name two starting models
    with pytest.raises(utils.UserError, match="--init and --resume"):
        train_stage1.main(conf.parse_args(train_stage1.get_args_parser(), argv + ["--exp-name", "x", "--resume",
                                                                                  str(ckpt)], section="stage1"))
