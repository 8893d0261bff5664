"""Unit tests of losses.py, metrics.py, the recipe in engine/recipe.py (lr), utils.py (checkpoints, RNG)
and conf.py (flags)."""
import math
import random
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from megraphau import (
    conf,
    utils,
)
from megraphau.engine import checkpoints, losses, metrics, recipe
from megraphau.model import build_model, load_model, model_config_dict
from megraphau.paths import REPO_ROOT


def _probs_labels(m=40, n=5, unknown=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(m, n, generator=g).clamp(0.01, 0.99)
    labels = (torch.rand(m, n, generator=g) < 0.4).float()
    labels[torch.rand(m, n, generator=g) < unknown] = -1
    return probs, labels


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
def test_asymmetric_loss_matches_formula_and_masks_unknown():
    probs, labels = _probs_labels()
    weight = torch.linspace(0.5, 2.0, probs.shape[1])
    loss = losses.WeightedAsymmetricLoss(weight)(probs, labels)
    expected, count = 0.0, 0
    for b in range(probs.shape[0]):
        for i in range(probs.shape[1]):
            y, p = float(labels[b, i]), float(probs[b, i])
            if y < 0:
                continue
            expected -= float(weight[i]) * (y * math.log(max(p, 1e-8)) + (1 - y) * p * math.log(max(1 - p, 1e-8)))
            count += 1
    assert loss.item() == pytest.approx(expected / count, rel=1e-5)


def test_asymmetric_loss_all_known_is_mean_over_batch_and_aus():
    probs, labels = _probs_labels(unknown=0.0)
    w = torch.rand(probs.shape[1]) + 0.5
    term = w * (labels * torch.log(probs) + (1 - labels) * probs * torch.log(1 - probs))
    assert losses.WeightedAsymmetricLoss(w)(probs, labels).item() == pytest.approx(-term.mean().item(), rel=1e-6)


def test_asymmetric_loss_gradient_treats_p_factor_as_constant():
    probs, labels = _probs_labels()
    w = torch.rand(probs.shape[1]) + 0.5
    p = probs.clone().requires_grad_(True)
    losses.WeightedAsymmetricLoss(w)(p, labels).backward()
    known = (labels >= 0).float()
    y = labels.clamp(min=0)
    # d/dp of -w [y log p + (1-y) c log(1-p)] with c = p held constant
    expected = -w * (y / probs - (1 - y) * probs / (1 - probs)) * known / known.sum()
    torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)
    # a gradient through the factor would add -(1-y) log(1-p): not there
    full = -w * (y / probs - (1 - y) * (probs / (1 - probs) - torch.log(1 - probs))) * known / known.sum()
    assert not torch.allclose(p.grad, full)


def test_asymmetric_loss_leaves_autograd_mode_alone():
    probs, labels = _probs_labels()
    with torch.no_grad():
        losses.WeightedAsymmetricLoss()(probs, labels)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_edge_loss_ignores_unknown_and_is_zero_when_nothing_known():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 16, 4, generator=g)
    rel = torch.randint(0, 4, (3, 16), generator=g)
    rel[0, :5] = -1
    keep = rel.reshape(-1) >= 0
    expected = F.cross_entropy(logits.reshape(-1, 4)[keep], rel.reshape(-1)[keep])
    assert losses.edge_loss(logits, rel).item() == pytest.approx(expected.item(), rel=1e-6)
    zero = losses.edge_loss(logits.requires_grad_(True), torch.full((3, 16), -1))
    assert zero.item() == 0.0 and torch.isfinite(zero)
    zero.backward()


def test_cosine_lr():
    assert recipe.cosine_lr(0, 100, 1e-4) == pytest.approx(1e-4)
    assert recipe.cosine_lr(50, 100, 1e-4) == pytest.approx(5e-5)
    assert recipe.cosine_lr(100, 100, 1e-4) == pytest.approx(0.0, abs=1e-20)
    assert recipe.cosine_lr(25, 100, 2.0) == pytest.approx(1 + math.cos(math.pi / 4))
    values = [recipe.cosine_lr(t, 10, 1.0) for t in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------------------------
# metrics and table
# ---------------------------------------------------------------------------------------------
def test_metrics_match_sklearn_per_au_with_unknown_labels():
    probs, labels = _probs_labels(m=300, n=6, unknown=0.15, seed=3)
    labels[:, 5] = torch.where(labels[:, 5] >= 0, torch.zeros_like(labels[:, 5]), labels[:, 5])
    probs[:, 5] = 0.1  # AU never present, never predicted: TP + FP + FN = 0 -> F1 0
    out = metrics.compute_au_metrics(probs, labels)
    p, y = probs.numpy(), labels.numpy()
    for i in range(p.shape[1]):
        known = y[:, i] >= 0
        pred = (p[known, i] >= 0.5).astype(int)
        assert out["f1"][i] == pytest.approx(f1_score(y[known, i].astype(int), pred, zero_division=0))
        assert out["acc"][i] == pytest.approx(accuracy_score(y[known, i].astype(int), pred))
    assert out["f1"][5] == 0.0
    assert out["mean_f1"] == pytest.approx(out["f1"].mean())
    assert out["mean_acc"] == pytest.approx(out["acc"].mean())
    # numpy and torch inputs agree; the threshold is inclusive (p >= 0.5)
    np_out = metrics.compute_au_metrics(p, y)
    np.testing.assert_allclose(np_out["f1"], out["f1"])
    edge = metrics.compute_au_metrics(np.array([[0.5], [0.49]]), np.array([[1], [0]]))
    assert edge["f1"][0] == 1.0 and edge["acc"][0] == 1.0


def test_metrics_full_fold_size_runs_vectorised():
    rng = np.random.default_rng(0)
    probs = rng.random((46034, 12), dtype=np.float32)
    labels = (rng.random((46034, 12)) < 0.3).astype(np.int64)
    out = metrics.compute_au_metrics(probs, labels)
    assert out["f1"].shape == (12,) and 0 <= out["mean_f1"] <= 1
    for i in (0, 11):
        assert out["f1"][i] == pytest.approx(f1_score(labels[:, i], probs[:, i] >= 0.5))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        metrics.compute_au_metrics(np.zeros((4, 3)), np.zeros((4, 2)))


def test_format_au_table():
    table = metrics.format_au_table(["AU1", "AU2", "AU4"], [0.5, 0.25, 1.0], [0.9, 0.8, 0.7], title="fold 1")
    lines = table.splitlines()
    assert lines[0] == "fold 1"
    assert "AU1" in lines[1] and "Avg" in lines[1]
    assert lines[3].split() == ["F1", "|", "50.0", "25.0", "100.0", "58.3"]
    assert "80.0" in lines[4]  # mean accuracy


# ---------------------------------------------------------------------------------------------
# checkpoints, RNG, gathering
# ---------------------------------------------------------------------------------------------
def test_save_checkpoint_is_atomic_and_weights_only_loadable(tmp_path):
    path = tmp_path / "sub" / "last.pth"
    obj = {"epoch": 2, "state_dict": {"w": torch.ones(3)}, "rng": utils.capture_rng_state(),
           "history": [{"epoch": 1, "mean_f1": None, "f1": [0.5]}]}
    utils.save_checkpoint(obj, path)
    utils.save_checkpoint({**obj, "epoch": 3}, path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary left
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))


def test_checkpoint_facts_written_once_and_older_files_with_both_still_load(tmp_path):
    """A model file states its facts once ("facts"); files that also hold the older
    "model_config" load the same, and so do files with only "model_config"."""
    model = build_model(1, "resnet18", 12, 3, "cosine", pretrained=False)
    facts = {**model_config_dict(model), "dataset": "SYNTH", "au_names": [f"AU{k}" for k in range(12)], "fold": 2}
    args = types.SimpleNamespace(seed=0)
    written = checkpoints.model_file(model, checkpoints.TrainState(epoch=1), facts, args)
    assert written["facts"] == facts and "model_config" not in written
    cfg = {k: facts[k] for k in ("stage", "arc", "num_classes", "neighbor_num", "metric", "variant")}
    files = {"facts": {k: v for k, v in written.items() if k != "args"},
             "both": {"state_dict": model.state_dict(), "facts": facts, "model_config": cfg},
             "model_config only": {"state_dict": model.state_dict(), "model_config": cfg}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        loaded = load_model(tmp_path / f"{name}.pth")
        assert (loaded.facts["neighbor_num"], loaded.facts["metric"]) == (3, "cosine"), name
    assert load_model(tmp_path / "both.pth").facts["fold"] == load_model(tmp_path / "facts.pth").facts["fold"] == 2


def test_rng_capture_restore_roundtrip(tmp_path):
    utils.set_seed(5)
    state = utils.capture_rng_state()
    path = tmp_path / "rng.pth"
    utils.save_checkpoint({"rng": state}, path)
    first = (random.random(), np.random.rand(), torch.rand(2))
    utils.set_seed(99)
    utils.restore_rng_state(torch.load(path, weights_only=True)["rng"])
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_gather_by_index_single_process_counts_each_item_once():
    values = np.arange(10, dtype=float).reshape(5, 2)
    out = utils.gather_by_index(values[[4, 0, 2, 1, 3, 4]], [4, 0, 2, 1, 3, 4], 5)  # one duplicate (padding)
    np.testing.assert_array_equal(out, values)
    with pytest.raises(RuntimeError, match="missed 1 of 5"):
        utils.gather_by_index(values[:4], [0, 1, 2, 3], 5)


def test_resolve_device():
    assert utils.resolve_device("cpu").type == "cpu"
    assert utils.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            utils.resolve_device("cuda")


# ---------------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------------
def _parser():
    import argparse

    return argparse.ArgumentParser(parents=[conf.get_conf_parser()])


def test_release_flag_defaults():
    args = conf.parse_args(_parser(), [])  # no --dataset and no --resume: the release's BP4D
    assert (args.dataset, args.fold, args.N_fold, args.batch_size, args.learning_rate, args.epochs) == \
        ("BP4D", 1, 3, 64, 1e-4, 20)
    assert (args.num_workers, args.weight_decay, args.optimizer_eps, args.crop_size, args.evaluate) == \
        (4, 5e-4, 1e-8, 224, False)
    assert (args.arc, args.metric, args.lam, args.gpu_ids, args.seed, args.exp_name, args.resume) == \
        ("swin_transformer_base", "dots", 0.001, "0", 0, "Test", "")
    # per-epoch files only when asked for (--save-every E)
    assert (args.device, args.amp, args.output_dir, args.eval_every, args.save_every) == \
        ("auto", "none", "results", 1, 0)


def test_release_short_and_long_flags_parse():
    argv = ("--dataset DISFA -f 2 --N-fold 3 -b 8 -lr 0.001 -e 3 -j 0 -wd 0.01 --optimizer-eps 1e-6 "
            "--crop-size 112 --evaluate --arc resnet50 --metric cosine --lam 0.05 --gpu_ids 1 --seed 7 "
            "--exp-name run --resume a.pth").split()
    args = _parser().parse_args(argv)
    assert (args.dataset, args.fold, args.batch_size, args.learning_rate, args.epochs, args.num_workers) == \
        ("DISFA", 2, 8, 1e-3, 3, 0)
    assert (args.weight_decay, args.optimizer_eps, args.crop_size, args.evaluate, args.arc, args.metric) == \
        (0.01, 1e-6, 112, True, "resnet50", "cosine")
    assert (args.lam, args.gpu_ids, args.seed, args.exp_name, args.resume) == (0.05, "1", 7, "run", "a.pth")
    long_form = _parser().parse_args("--fold 3 --batch-size 4 --learning-rate 0.1 --epochs 1 --num_workers 2 "
                                     "--weight-decay 0".split())
    assert (long_form.fold, long_form.batch_size, long_form.learning_rate, long_form.epochs,
            long_form.num_workers, long_form.weight_decay) == (3, 4, 0.1, 1, 2, 0.0)
    assert _parser().parse_args(["-f", "all"]).fold == "all"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--arc", "vgg16"])


def test_scripts_expose_parsers():
    import train_stage1
    import train_stage2

    assert train_stage1.get_args_parser().parse_args([]).learning_rate == 1e-4
    assert train_stage2.get_args_parser().parse_args([]).learning_rate == 1e-5  # the paper's stage-2 learning rate
    import test as test_mod  # tests/ runs with the repository first on sys.path

    assert test_mod.get_args_parser().parse_args([]).arc is None  # the checkpoint decides


def test_dataset_defaults_feed_parser_and_command_line_wins(tmp_path):
    pytest.importorskip("dataset")
    import train_stage1

    args = conf.parse_args(train_stage1.get_args_parser(), ["--dataset", "SYNTH"], section="stage1")
    assert args.arc == "resnet18" and args.num_classes == 12 and args.neighbor_num == 4
    assert args.dataset_path.endswith("SYNTH")
    args = conf.parse_args(train_stage1.get_args_parser(), ["--dataset", "SYNTH", "-lr", "0.5", "--arc",
                                                            "resnet50"], section="stage1")
    assert args.learning_rate == 0.5 and args.arc == "resnet50"
    conf.write_args(args, tmp_path)
    import yaml

    saved = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert saved["learning_rate"] == 0.5 and saved["num_classes"] == 12


def test_dataset_defaults_unknown_key_is_an_error(tmp_path):
    pytest.importorskip("dataset")
    import train_stage1

    src = (REPO_ROOT / "megraphau" / "configs" / "SYNTH.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(src.replace("learning_rate: 0.001", "learnin_rate: 0.001"))
    with pytest.raises(ValueError, match="learnin_rate"):
        conf.parse_args(train_stage1.get_args_parser(), ["--dataset", str(bad)], section="stage1")


def test_copy_checkpoint_survives_replacing_the_source(tmp_path):
    utils.save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    utils.copy_checkpoint(tmp_path / "last.pth", tmp_path / "best.pth")
    utils.save_checkpoint({"epoch": 2}, tmp_path / "last.pth")  # os.replace: best.pth keeps epoch 1
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


def test_scripts_report_bad_input_without_a_traceback(tmp_path):
    """A missing list file or checkpoint: exit status 2, one message naming the file."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(repo / "train_stage1.py"), "--dataset", "BP4D", "--dataset-path",
                          str(tmp_path / "nowhere"), "--arc", "resnet18", "--pretrained", "none",
                          "--output-dir", str(tmp_path / "out"), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "BP4D_train_img_path_fold1.txt" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, str(repo / "test.py"), "--dataset", "BP4D", "--resume",
                          str(tmp_path / "missing.pth"), "--output-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "missing.pth" in run.stderr and "Traceback" not in run.stderr
