"""OpenGraphAU's hybrid protocol and recipe through the scripts, on tiny hybrid SYNTH sets (CPU,
ResNet-18, small crops): train / val / test lists without folds, validation every epoch and the
best validation epoch kept, test.py on the test split with per-AU F1 and accuracy (-1 left out),
SAM (--optimizer sam) with exact resume and with gradient checkpointing, and --fold refused with a
hint. The learning run is marked slow."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import test as test_mod
import train_stage1
import train_stage2
from megraphau import conf
from megraphau.engine import metrics, training
from megraphau.paths import REPO_ROOT
from megraphau.synth import generate_hybrid_synthetic_dataset

TINY = dict(subjects=(1, 1, 1), tasks=1, frames=4, size=64)  # 16 images per split (4 sources x 4)


@pytest.fixture(scope="module")
def tiny_hybrid(tmp_path_factory):
    return generate_hybrid_synthetic_dataset(tmp_path_factory.mktemp("hyb") / "H", seed=0, **TINY)


def _argv(root, out, *extra, epochs=2):
    return ["--dataset", "SYNTH_OpenGraphAU", "--dataset-path", str(root), "--output-dir", str(out),
            "--pretrained", "none", "--crop-size", "48", "-b", "8", "-e", str(epochs), "--no-progress", *extra]


def _parse(module, argv, section):
    return conf.parse_args(module.get_args_parser(), argv, section=section)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_dataset_defaults_say_protocol_and_recipe():
    args = _parse(train_stage1, ["--dataset", "OpenGraphAU"], "stage1")
    assert args.protocol == "hybrid" and args.fold is None and args.optimizer == "sam"
    assert args.sam_rho == 2.0 and args.sam_adaptive and args.learning_rate == 2e-5 and args.epochs == 20
    assert args.dataset_config["list_prefix"] == "hybrid"
    args2 = _parse(train_stage2, ["--dataset", "OpenGraphAU"], "stage2")
    assert args2.optimizer == "sam" and args2.learning_rate == 1e-5
    folds = _parse(train_stage1, ["--dataset", "OpenGraphAU", "--protocol", "folds", "--fold", "1"], "stage1")
    assert folds.protocol == "folds" and folds.fold == 1
    bp4d = _parse(train_stage1, ["--dataset", "BP4D"], "stage1")
    assert bp4d.protocol == "folds" and bp4d.fold == 1 and bp4d.optimizer == "adamw"


@pytest.mark.parametrize("flag", [["--fold", "2"], ["-f", "1"], ["--fold=all"]])
def test_fold_with_a_hybrid_dataset_is_one_line_hint(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(test_mod, ["--dataset", "OpenGraphAU", *flag], "test")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "hybrid protocol" in err and "hybrid_{train,val,test}" in err and "--protocol folds" in err


def test_metrics_follow_the_release_statistics():
    """compute_au_metrics against a loop restatement of OpenGraphAU's utils.py statistics /
    calc_f1_score / calc_acc (-1 frames count nowhere; an AU without a known frame counts 0)."""
    rng = np.random.default_rng(0)
    probs = rng.random((50, 6))
    labels = rng.integers(0, 2, (50, 6))
    labels[rng.random(labels.shape) < 0.3] = -1
    labels[:, 5] = -1  # never coded
    out = metrics.compute_au_metrics(probs, labels)
    f1s, accs = [], []
    for j in range(6):
        tp = fp = fn = tn = 0
        for i in range(50):
            pred, y = probs[i, j] >= 0.5, labels[i, j]
            if y == -1:
                continue
            tp += pred and y == 1
            fp += pred and y == 0
            fn += (not pred) and y == 1
            tn += (not pred) and y == 0
        p, r = tp / (tp + fp + 1e-20), tp / (tp + fn + 1e-20)
        f1s.append(2 * p * r / (p + r + 1e-20))
        accs.append((tp + tn) / (tp + tn + fp + fn + 1e-20))
    np.testing.assert_allclose(out["f1"], f1s, atol=1e-12)
    np.testing.assert_allclose(out["acc"], accs, atol=1e-12)
    assert out["mean_f1"] == pytest.approx(np.mean(f1s)) and out["mean_acc"] == pytest.approx(np.mean(accs))
    assert out["coded"].tolist() == [True] * 5 + [False]
    assert out["mean_f1_coded"] == pytest.approx(np.mean(f1s[:5]))
    base = metrics.all_positive_f1(labels)
    known = labels[:, 0] >= 0
    rate = (labels[known, 0] == 1).mean()
    assert base[0] == pytest.approx(2 * rate / (1 + rate)) and base[5] == 0


@pytest.mark.slow  # about 3 minutes on 2 busy CPU cores
def test_hybrid_training_keeps_best_val_epoch_and_tests_on_test(tiny_hybrid, tmp_path, capsys):
    s1 = train_stage1.main(_parse(train_stage1, _argv(tiny_hybrid, tmp_path, "--exp-name", "s1",
                                                          "-lr", "0.001", "--save-every", "1", epochs=2),
                                      "stage1"))
    run = s1["run_dir"]
    history = s1["history"]
    assert len(history) == 2 and all(len(h["f1"]) == 41 and len(h["acc"]) == 41 for h in history)
    # the release's names without folds; the model files of each epoch to compare best.pth with
    for name in ("last.pth", "best.pth", "cur_model.pth", "epoch1_model.pth", "metrics.csv"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*fold*"))
    best_epoch = int(np.argmax([h["mean_f1"] for h in history])) + 1  # the first of equal ones
    best = _state(run / "best.pth")
    assert best["epoch"] == best_epoch and best["best_f1"] == pytest.approx(max(h["mean_f1"] for h in history))
    for k, v in _state(run / f"epoch{best_epoch}_model.pth")["state_dict"].items():
        assert torch.equal(v, best["state_dict"][k]), k
    assert best["facts"]["fold"] is None and best["facts"]["protocol"] == "hybrid"
    log = (run / "train.log").read_text()
    assert "hybrid protocol" in log and "val images 16" in log and "sam (AdamW, rho 2, adaptive)" in log
    assert "val mean F1" in log and "coded AUs" in log
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "acc_AU1" in header and "mean_f1_coded" in header
    # the val split's images are the ones evaluated (their labels, their count)
    val_labels = np.loadtxt(tiny_hybrid / "list" / "hybrid_val_label.txt")
    assert val_labels.shape == (16, 41)

    # stage 2 (OpenGraphAU: no edge classifier, the AU loss alone), SAM from the dataset's defaults
    s2 = train_stage2.main(_parse(train_stage2, _argv(tiny_hybrid, tmp_path, "--exp-name", "s2",
                                                          "--resume", str(run / "best.pth"), epochs=1),
                                      "stage2"))
    assert _state(s2["run_dir"] / "best.pth")["facts"]["stage"] == 2

    # test.py: the test split, per-AU F1 and accuracy printed and written, -1 left out
    capsys.readouterr()
    res = test_mod.main(_parse(test_mod, _argv(tiny_hybrid, tmp_path, "--exp-name", "t", "--resume",
                                               str(s2["run_dir"] / "best.pth")), "test"))
    assert res["fold"] is None and res["split"] == "test" and res["num_images"] == 16
    saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert len(saved["f1"]) == len(saved["acc"]) == 41 and saved["protocol"] == "hybrid"
    test_labels = np.loadtxt(tiny_hybrid / "list" / "hybrid_test_label.txt")
    coded = (test_labels >= 0).any(0)
    assert saved["coded"] == coded.tolist() and not coded[27:].any()  # no side AU coded in SYNTH
    assert all(a == 0 for a, c in zip(saved["acc"], coded) if not c)
    assert saved["mean_acc_coded"] == pytest.approx(np.mean(np.array(saved["acc"])[coded]), abs=1e-3)
    text = capsys.readouterr().out  # what test.py prints (the log's stream handler)
    assert "test split" in text and "\nF1  |" in text and "\nAcc |" in text
    rows = (Path(res["run_dir"]) / "results.csv").read_text().splitlines()
    assert rows[1].startswith("test,") and "acc_AUR14" in rows[0]
    assert (Path(res["run_dir"]) / "pr_curves_test.png").is_file()


class Killed(Exception):
    pass


@pytest.mark.slow  # about 3 minutes on 2 busy CPU cores
def test_sam_resume_continues_exactly(tiny_hybrid, tmp_path, monkeypatch):
    """SAM's state (AdamW's moments under the wrapper) round-trips through last.pth: a run killed
    after epoch 1 and resumed ends with the uninterrupted run's weights."""
    argv = _argv(tiny_hybrid, tmp_path / "full", "-lr", "0.001", "--eval-every", "0")
    full = train_stage1.main(_parse(train_stage1, argv, "stage1"))
    argv2 = _argv(tiny_hybrid, tmp_path / "part", "-lr", "0.001", "--eval-every", "0")
    save = training.save_epoch_checkpoints

    def save_then_die(args, model, optimizer, scaler, state, *rest):
        save(args, model, optimizer, scaler, state, *rest)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(training, "save_epoch_checkpoints", save_then_die)
        with pytest.raises(Killed):
            train_stage1.main(_parse(train_stage1, argv2, "stage1"))
    part_dir = conf.run_dir(_parse(train_stage1, argv2, "stage1"))
    saved = _state(part_dir / "last.pth")
    assert saved["optimizer"]["param_groups"][0]["rho"] == 2.0 and saved["optimizer"]["state"]
    resumed = train_stage1.main(_parse(train_stage1, argv2 + ["--resume-training", str(part_dir / "last.pth")],
                                           "stage1"))
    a, b = _state(full["run_dir"] / "last.pth")["state_dict"], _state(resumed["run_dir"] / "last.pth")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


@pytest.mark.slow  # about 1.5 minutes on 2 busy CPU cores
def test_sam_with_gradient_checkpointing_trains_to_the_same_weights(tiny_hybrid, tmp_path):
    common = ["-lr", "0.001", "--eval-every", "0"]
    plain = train_stage1.main(_parse(train_stage1, _argv(tiny_hybrid, tmp_path / "a", *common, epochs=1),
                                         "stage1"))
    recomputed = train_stage1.main(_parse(train_stage1, _argv(tiny_hybrid, tmp_path / "b", *common,
                                                                  "--grad-checkpointing", "4", epochs=1),
                                              "stage1"))
    a = _state(plain["run_dir"] / "last.pth")["state_dict"]
    b = _state(recomputed["run_dir"] / "last.pth")["state_dict"]
    for k in a:  # recomputation may reorder float sums; BN batch counts (once per SAM step) exactly
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert int(a["global_linear.bn.num_batches_tracked"]) == 2  # 16 images, batch 8: 2 steps, counted once each


@pytest.mark.slow
def test_hybrid_synth_with_sam_learns(tmp_path):
    """The recipe on a small hybrid SYNTH set (SYNTH_OpenGraphAU's defaults, ResNet-18 from scratch,
    SAM rho 2.0 adaptive; batch 8 for 16 epochs: 576 steps): the test split's mean F1 over the coded
    AUs beats predicting every coded AU present by 5 points."""
    root = generate_hybrid_synthetic_dataset(tmp_path / "H", seed=0, subjects=(3, 1, 1), tasks=2, frames=12,
                                             size=96)  # 288 train / 96 val / 96 test images
    common = ["--dataset", "SYNTH_OpenGraphAU", "--dataset-path", str(root), "--output-dir", str(tmp_path),
              "--no-progress"]
    # SAM learns more slowly than AdamW from scratch: on this set AdamW's val mean F1 over the coded
    # AUs was 50.6 after 8 epochs of batch 8, SAM's 38.6; SAM's reached 64.3 after 12 of 16
    s1 = train_stage1.main(_parse(train_stage1, common + ["--exp-name", "s1", "--pretrained", "none", "-b", "8",
                                                          "-e", "16"], "stage1"))
    assert s1["best_f1"] == max(h["mean_f1"] for h in s1["history"])
    res = test_mod.main(_parse(test_mod, common + ["--exp-name", "t", "--resume", str(s1["run_dir"] / "best.pth")],
                               "test"))
    labels = np.loadtxt(root / "list" / "hybrid_test_label.txt")
    coded = (labels >= 0).any(0)
    baseline = 100 * float(metrics.all_positive_f1(labels)[coded].mean())
    print(f"hybrid SYNTH test split: mean F1 over the {int(coded.sum())} coded AUs {res['mean_f1_coded']:.1f} "
          f"(all 41: {res['mean_f1']:.1f}), mean accuracy {res['mean_acc_coded']:.1f}; all-positive baseline "
          f"{baseline:.1f}; best val epoch {int(np.argmax([h['mean_f1'] for h in s1['history']])) + 1}")
    assert yaml.safe_load((Path(res["run_dir"]) / "args.yaml").read_text())["protocol"] == "hybrid"
    assert res["mean_f1_coded"] >= baseline + 5.0, (res["mean_f1_coded"], baseline)


@pytest.mark.slow
def test_torchrun_two_processes_with_sam(tiny_hybrid, tmp_path):
    """torchrun, 2 Gloo ranks on CPU: a SAM run (the dataset's default optimizer) on the hybrid lists
    trains and validates to the end (both SAM passes all-reduce; tests/test_sam.py checks that two
    ranks take the one-process step)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = _argv(tiny_hybrid, tmp_path / "out", "--exp-name", "ddp", "-lr", "0.001", "-j", "0", epochs=1)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO_ROOT / "train_stage1.py"), *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout and "--optimizer sam" in proc.stdout
    last = conf.run_dir(_parse(train_stage1, argv, "stage1")) / "last.pth"
    history = _state(last)["history"]
    assert len(history) == 1 and len(history[0]["f1"]) == 41
