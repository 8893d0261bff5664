"""Fault injection (issue 12): one parametrised test per class of fault, each checking what the user
sees (one line, the exit code) and what is kept on disk.

Classes: bad flags (in-process through the command-line entries, a few through the real scripts),
bad input files (checkpoints, YAML), unusable output folders, malicious checkpoints (their code
never runs), published checkpoint formats (they load weights-only), concurrent runs, earlier runs
(kept without --overwrite), DISFA label gaps (never shift labels), bad images (also from data-loader
workers), a full disk, Ctrl-C, and torchrun (one message from rank 0).

Tiny SYNTH sets in tmp, ResNet-18 at 48 pixels on the CPU; about a minute on 2 idle cores.
"""
import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import demo
import test as test_mod
import train_stage1
import train_stage2
from cli_runs import (
    demo_cli,
    eval_argv,
    eval_cli,
    one_error_line,
    stage1_cli,
    stage2_cli,
    train_argv,
)
from megraphau import conf, errors, utils
from megraphau.data.dataset import AUDataset, load_dataset_config
from megraphau.engine import cli as engine_cli
from megraphau.engine import run_folder, training
from megraphau.model import build_model, load_model
from release_files import save_release_checkpoint

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1_release_file(tmp_path_factory):
    """A stage-1 ResNet-18 (12 AUs) in the release's format, AdamW state after one step included."""
    path = tmp_path_factory.mktemp("release") / "MEFARG_resnet18_SYNTH_fold1.pth"
    torch.manual_seed(0)
    model = build_model(1, "resnet18", 12, 4, "dots", pretrained=False)
    save_release_format(model, path)
    return path


def save_release_format(model, path):
    """{'state_dict': {'module.' + key: tensor}, 'epoch', 'optimizer'}: the published files' layout."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = model.train()(torch.randn(2, 3, 48, 48))
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    optimizer.step()
    model.eval()
    save_release_checkpoint(model, path, optimizer=optimizer.state_dict())


# --------------------------------------------------------------------------------------------
# bad flags: one line, exit code 2
# --------------------------------------------------------------------------------------------
BAD_FLAGS = [
    (stage1_cli, ["-b", "-4"], "-b/--batch-size must be at least 1, got -4"),
    (stage1_cli, ["-lr", "nan"], "-lr/--learning-rate must be a finite number above 0, got nan"),
    (stage1_cli, ["-lr", "-0.1"], "must be a finite number above 0"),
    (stage1_cli, ["--crop-size", "0"], "--crop-size must be a positive number of pixels"),
    (stage1_cli, ["-j", "-1"], "-j/--num_workers must be 0 or more, got -1"),
    (stage1_cli, ["-e", "0"], "-e/--epochs must be at least 1, got 0"),
    (stage1_cli, ["--fold", "4"], "--fold must be in 1..3"),
    (stage1_cli, ["--dataset", "NOPE"], "unknown dataset 'NOPE' (known: BP4D, DISFA"),
    (stage1_cli, ["--dataset", "SYNHT"], "unknown dataset 'SYNHT'; did you mean SYNTH?"),
    (stage1_cli, ["--dataset", "bp4"], "did you mean BP4D?"),
    (stage1_cli, ["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
    (stage1_cli, ["--fold", "all"], "training takes one fold"),
    (eval_cli, ["--threshold", "2"], "--threshold must be between 0 and 1 (both excluded), got 2.0"),
    (eval_cli, ["--threshold", "0"], "--threshold must be between 0 and 1"),
    (eval_cli, ["-b", "0"], "-b/--batch-size must be at least 1"),
    (eval_cli, [], "test.py needs --resume CHECKPOINT"),
    (demo_cli, ["--input", "x.jpg", "--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
    (demo_cli, ["--input", "x.jpg", "--threshold", "2"], "--threshold must be between 0 and 1"),
]


@pytest.mark.parametrize("cli, argv, message", BAD_FLAGS, ids=[" ".join(a) or "none" for _, a, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_exit_2(cli, argv, message, tmp_path, capsys):
    base = [] if cli is demo_cli else ["--output-dir", str(tmp_path), "--dataset-path", str(tmp_path / "none")]
    if cli is stage1_cli and "--dataset" not in argv:
        base += ["--dataset", "SYNTH"]
    assert cli(base + argv) == 2
    assert message in one_error_line(capsys)
    assert not any(tmp_path.rglob("*.yaml")), "nothing is written for a bad flag"


def test_dataset_names_are_case_insensitive():
    args = conf.parse_args(train_stage1.get_args_parser(), ["--dataset", "bp4d"], section="stage1")
    assert args.dataset == "BP4D" and args.dataset_name == "BP4D" and args.num_classes == 12
    assert conf.parse_args(test_mod.get_args_parser(), ["--dataset", "synth"], section="test").dataset == "SYNTH"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cli", [stage1_cli, eval_cli], ids=["train", "test"])
def test_device_cuda_without_cuda_is_one_line(cli, tiny_synth, stage1_release_file, tmp_path, capsys):
    argv = (train_argv(tiny_synth, tmp_path) if cli is stage1_cli
            else eval_argv(tiny_synth, tmp_path, stage1_release_file)) + ["--device", "cuda"]
    assert cli(argv) == 2
    assert "--device cuda was requested but no CUDA device is available" in one_error_line(capsys)


@pytest.mark.parametrize("script, argv, message", [
    ("train_stage1.py", ["--dataset", "SYNTH", "-b", "-4"], "-b/--batch-size must be at least 1"),
    ("demo.py", ["--input", "x.jpg", "--device", "gpu"], "invalid choice: 'gpu'"),
])
def test_bad_flags_through_the_real_scripts(script, argv, message, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------------------------
# bad input files: checkpoints, YAML
# --------------------------------------------------------------------------------------------
def bad_file(kind: str, tmp_path: Path, good: Path) -> tuple[Path, str]:
    """A bad input file of `kind` and the message it must give."""
    if kind == "truncated .pth":
        path = tmp_path / "truncated.pth"
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return path, "truncated.pth: not a readable checkpoint"
    if kind == "not a checkpoint":
        path = tmp_path / "notes.pth"
        path.write_text("these are my notes\n")
        return path, "notes.pth: not a readable checkpoint"
    if kind == "tensor, no state dict":
        path = tmp_path / "tensor.pth"
        torch.save(torch.ones(3), path)
        return path, "tensor.pth is not a checkpoint: expected a dict, got Tensor"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated .pth", "not a checkpoint", "tensor, no state dict"])
@pytest.mark.parametrize("entry", ["test.py", "--resume-training", "--resume", "demo.py"])
def test_bad_checkpoint_files_are_one_line(entry, kind, tiny_synth, stage1_release_file, tmp_path, capsys):
    path, message = bad_file(kind, tmp_path, stage1_release_file)
    out = tmp_path / "out"
    code = {"test.py": lambda: eval_cli(eval_argv(tiny_synth, out, path)),
            "--resume-training": lambda: stage1_cli(train_argv(tiny_synth, out, "--resume-training", str(path))),
            "--resume": lambda: stage2_cli(train_argv(tiny_synth, out, "--resume", str(path))),
            "demo.py": lambda: demo_cli(["--resume", str(path), "--input", str(path), "--output", str(out)])}[entry]()
    assert code == 2
    assert message in one_error_line(capsys)


def test_stage_must_agree_with_the_checkpoint(tiny_synth, stage1_release_file, tmp_path, capsys):
    """test.py --stage 2 with a stage-1 file would report F1 of a random graph head: refused."""
    assert eval_cli(eval_argv(tiny_synth, tmp_path, stage1_release_file, "--stage", "2")) == 2
    line = one_error_line(capsys)
    assert "--stage 2 contradicts" in line and "which holds stage 1" in line


def test_yaml_with_an_unknown_tag_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "yaml_payload_ran"
    config = tmp_path / "evil.yaml"
    config.write_text((REPO / "megraphau" / "configs" / "SYNTH.yaml").read_text()
                      + f"\nextra: !!python/object/apply:os.system ['touch {marker}']\n")
    assert stage1_cli(["--dataset", str(config), "--output-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "evil.yaml: not a valid dataset config" in line and "python/object/apply:os.system" in line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# malicious checkpoints: refused, their code never runs
# --------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls exec(code): a checkpoint that runs code when loaded unsafely."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def malicious_checkpoint(folder: Path, good: Path) -> tuple[Path, Path]:
    """(a release-looking checkpoint whose pickle creates `marker`, marker), the payload checked live."""
    marker = folder / "payload_ran"
    obj = torch.load(good, weights_only=True)
    obj["optimizer"] = Payload(f"open({str(marker)!r}, 'w').close()")
    path = folder / "MEFARG_resnet18_SYNTH_fold1_evil.pth"
    torch.save(obj, path)
    torch.load(path, weights_only=False)  # the payload is real: loading the file unsafely runs it ...
    assert marker.exists()
    marker.unlink()  # ... and every entry below must leave no trace of it
    return path, marker


@pytest.mark.parametrize("entry", ["test.py", "demo.py", "train_stage2.py --resume", "--resume-training",
                                   "--pretrained"])
def test_malicious_checkpoint_is_refused_and_never_runs(entry, tiny_synth, stage1_release_file, tmp_path, capsys):
    evil, marker = malicious_checkpoint(tmp_path, stage1_release_file)
    out = tmp_path / "out"
    code = {"test.py": lambda: eval_cli(eval_argv(tiny_synth, out, evil)),
            "demo.py": lambda: demo_cli(["--resume", str(evil), "--input", str(evil), "--output", str(out)]),
            "train_stage2.py --resume": lambda: stage2_cli(train_argv(tiny_synth, out, "--resume", str(evil))),
            "--resume-training": lambda: stage1_cli(train_argv(tiny_synth, out, "--resume-training", str(evil))),
            "--pretrained": lambda: stage1_cli([a if a != "none" else str(evil) for a in train_argv(tiny_synth, out)]),
            }[entry]()
    assert code == 2
    line = one_error_line(capsys)
    assert evil.name in line and "refused, NOT loaded" in line and "could run code" in line
    assert not marker.exists()


def test_malicious_checkpoint_through_test_py_script(tiny_synth, stage1_release_file, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, stage1_release_file)
    proc = subprocess.run([sys.executable, str(REPO / "test.py"), *eval_argv(tiny_synth, tmp_path / "out", evil)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert proc.returncode == 2 and "refused, NOT loaded" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# published and own checkpoint formats load weights-only
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, stage, num_classes", [("megraphau", 2, 12), ("opengraphau", 2, 41)])
def test_published_formats_load_weights_only(variant, stage, num_classes, tmp_path):
    torch.manual_seed(0)
    model = build_model(stage, "resnet18", num_classes, 4, "dots", pretrained=False, variant=variant)
    path = tmp_path / "published.pth"
    save_release_format(model, path)
    torch.load(path, weights_only=True)  # the format itself needs nothing else
    loaded = load_model(path)
    facts = loaded.facts
    assert (facts["stage"], facts["num_classes"], facts["variant"]) == (stage, num_classes, variant)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


# --------------------------------------------------------------------------------------------
# unusable output folders
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["a file", "read-only (chmod)", "read-only file system"])
def test_unusable_output_folder_is_one_line(fault, tiny_synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    if fault == "a file":
        out.parent.mkdir(exist_ok=True)
        out.write_text("not a folder")
        message = "is a file"
    elif fault == "read-only (chmod)":
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        message = "Permission denied"
    else:
        def read_only(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(self))

        monkeypatch.setattr(Path, "mkdir", read_only)
        message = "Read-only file system"
    try:
        assert stage1_cli(train_argv(tiny_synth, out)) == 2
        line = one_error_line(capsys)
        assert "run folder" in line and message in line
    finally:
        if out.is_dir():
            out.chmod(0o755)


# --------------------------------------------------------------------------------------------
# concurrent runs and earlier runs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cli", [stage1_cli, eval_cli], ids=["train", "test"])
def test_second_run_in_a_locked_folder_refuses_naming_the_first(cli, tiny_synth, stage1_release_file, tmp_path,
                                                                capsys):
    argv = (train_argv(tiny_synth, tmp_path) if cli is stage1_cli
            else eval_argv(tiny_synth, tmp_path, stage1_release_file))
    parser = train_stage1.get_args_parser() if cli is stage1_cli else test_mod.get_args_parser()
    folder = conf.run_dir(conf.parse_args(parser, argv, section="stage1" if cli is stage1_cli else "test"))
    folder.mkdir(parents=True)
    with run_folder.RunLock(folder).acquire("python train_stage1.py --exp-name first"):
        assert cli(argv) == 2
    line = one_error_line(capsys)
    assert f"{folder} is in use by another run (PID {os.getpid()} on" in line
    assert "python train_stage1.py --exp-name first" in line
    assert {p.name for p in folder.iterdir()} <= set(run_folder.LOCK_FILES)  # the second wrote nothing


def test_lock_of_a_killed_run_does_not_block(tmp_path):
    """A run killed while it holds its folder (SIGKILL: no clean-up) leaves no stale lock."""
    folder = tmp_path / "run"
    code = ("import os, signal, sys; from megraphau.engine import run_folder; "
            "run_folder.claim(sys.argv[1], 'train', command='killed run'); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "killed run" in (folder / run_folder.HOLDER_NAME).read_text()  # its note is left behind ...
    with run_folder.claim(folder, "train", command="next run") as lock:  # ... and the lock is free
        assert "next run" in (folder / run_folder.HOLDER_NAME).read_text()
    assert lock.removed == []


def test_run_folder_imports_without_fcntl(tmp_path):
    """run_folder imports where fcntl does not exist (Windows): the lock is filelock's."""
    code = ("import sys; sys.modules['fcntl'] = None; from megraphau.engine import run_folder; "
            "lock = run_folder.claim(sys.argv[1], 'train'); lock.release(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def earlier_training_run(folder: Path) -> dict:
    """A finished run's files (contents stand for the real ones); returns {name: bytes}."""
    folder.mkdir(parents=True)
    utils.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(1)}}, folder / "last.pth")
    utils.copy_checkpoint(folder / "last.pth", folder / "best.pth")
    utils.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.zeros(1)}}, folder / "epoch1_model_fold1.pth")
    (folder / "metrics.csv").write_text("epoch,lr\n1,0.1\n2,0.05\n")
    (folder / "args.yaml").write_text("exp_name: earlier\n")
    (folder / "train.log").write_text("the earlier run's log\n")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("kind", ["train", "test"])
def test_earlier_run_is_kept_unless_overwrite(kind, tiny_synth, stage1_release_file, tmp_path, capsys, monkeypatch):
    argv = train_argv(tiny_synth, tmp_path) if kind == "train" else eval_argv(tiny_synth, tmp_path, stage1_release_file)
    parser = train_stage1.get_args_parser() if kind == "train" else test_mod.get_args_parser()
    folder = conf.run_dir(conf.parse_args(parser, argv, section="stage1" if kind == "train" else "test"))
    before = earlier_training_run(folder)
    if kind == "test":
        (folder / "results.json").write_text('{"mean_f1": 61.5}')
        before["results.json"] = (folder / "results.json").read_bytes()
    cli = stage1_cli if kind == "train" else eval_cli
    assert cli(argv) == 2
    line = one_error_line(capsys)
    assert f"{folder} holds an earlier run" in line and "--overwrite" in line
    if kind == "train":
        assert f"--resume-training {folder / 'last.pth'}" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in run_folder.LOCK_FILES} == before

    # --overwrite: the run starts (its work stubbed out here) on a folder without the earlier run's outputs
    seen = {}
    stub = "train_in_folder" if kind == "train" else "test_checkpoints"
    monkeypatch.setattr(training if kind == "train" else engine_cli, stub,
                        lambda *a, **k: seen.update(files=sorted(p.name for p in folder.iterdir())) or {})
    assert cli(argv + ["--overwrite"]) == 0
    if kind == "train":  # everything of the earlier run is gone; this run's args.yaml and log begin
        assert seen["files"] == sorted([*run_folder.LOCK_FILES, "args.yaml", "train.log"])
        assert "exp_name: Test" in (folder / "args.yaml").read_text()
    else:  # a test run replaces the test outputs only: checkpoints and training files stay
        assert "results.json" not in seen["files"] and {"last.pth", "best.pth", "epoch1_model_fold1.pth",
                                                          "metrics.csv", "train.log"} <= set(seen["files"])


def test_overwrite_never_deletes_the_checkpoint_a_run_reads(tiny_synth, tmp_path, capsys):
    argv = train_argv(tiny_synth, tmp_path)
    folder = conf.run_dir(conf.parse_args(train_stage2.get_args_parser(), argv, section="stage2"))
    earlier_training_run(folder)
    assert stage2_cli(argv + ["--overwrite", "--resume", str(folder / "best.pth")]) == 2
    assert "--overwrite would delete" in one_error_line(capsys) and (folder / "best.pth").is_file()


# --------------------------------------------------------------------------------------------
# DISFA label gaps never shift labels
# --------------------------------------------------------------------------------------------
def write_disfa_subject(folder: Path, lines_of) -> Path:
    """SN001's eight AU files, lines_of(au) giving each file's lines."""
    from tool.prepare_lists import DISFA_AUS

    subject = folder / "SN001"
    subject.mkdir(parents=True)
    for au in DISFA_AUS:
        (subject / f"SN001_au{au}.txt").write_text("".join(f"{line}\n" for line in lines_of(au)))
    return subject


def intensity(frame: int, au: int) -> int:
    return (frame * 7 + au) % 6


@pytest.mark.parametrize("gap", ["one AU file lacks frame 3", "no AU file has frame 3", "lines out of order",
                                 "frame 3 repeated", "BOM and CRLF"])
def test_disfa_gaps_never_shift_labels(gap, tmp_path):
    from tool.prepare_lists import DISFA_AUS, ListPreparationError, read_disfa_subject

    frames = range(1, 7)

    def lines(au):
        rows = [f"{f},{intensity(f, au)}" for f in frames]
        if gap == "one AU file lacks frame 3" and au == 4 or gap == "no AU file has frame 3":
            rows = [r for r in rows if not r.startswith("3,")]
        if gap == "lines out of order":
            rows = rows[::-1]
        if gap == "frame 3 repeated" and au == 9:
            rows.insert(3, "3,5")
        return rows

    subject = write_disfa_subject(tmp_path, lines)
    if gap == "BOM and CRLF":
        for path in subject.iterdir():
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    if gap == "frame 3 repeated":
        with pytest.raises(ListPreparationError, match=r"SN001_au9\.txt:4: frame 3 repeated \(first on line 3\)"):
            read_disfa_subject(subject, "SN001")
        return
    labels = read_disfa_subject(subject, "SN001")  # row i = label frame i + 1 = image SN001/{i}.png
    expected = np.array([[int(intensity(f, au) >= 2) for au in DISFA_AUS] for f in frames])
    if gap == "one AU file lacks frame 3":
        expected[2, DISFA_AUS.index(4)] = -1
    if gap == "no AU file has frame 3":
        expected[2] = -1
    np.testing.assert_array_equal(labels, expected)


def test_list_files_with_bom_and_crlf_read_like_plain_ones(tiny_synth, tmp_path):
    copy = Path(shutil.copytree(tiny_synth / "list", tmp_path / "list"))
    (tmp_path / "img").symlink_to(tiny_synth / "img")
    for path in copy.iterdir():
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    cfg = load_dataset_config("SYNTH")
    plain = AUDataset(cfg, 1, "train", stage=2, dataset_path=tiny_synth)
    windows = AUDataset(cfg, 1, "train", stage=2, dataset_path=tmp_path)
    assert windows.img_paths == plain.img_paths
    np.testing.assert_array_equal(windows.labels, plain.labels)
    assert torch.equal(windows.class_weights, plain.class_weights) and torch.equal(windows.relations, plain.relations)


# --------------------------------------------------------------------------------------------
# bad images: an error naming the file, in the main process's words, also from workers
# --------------------------------------------------------------------------------------------
def spoil(path: Path, fault: str) -> str:
    data = path.read_bytes()
    path.write_bytes({"truncated JPEG": data[: len(data) // 2], "garbage": b"\x00garbage" * 50,
                      "empty": b""}[fault])
    return {"truncated JPEG": "truncated JPEG: no end-of-image marker FF D9 at its end",
            "garbage": "not a decodable image", "empty": "empty file"}[fault]


@pytest.mark.parametrize("fault", ["truncated JPEG", "garbage", "empty"])
def test_bad_image_in_a_loader_worker_is_one_line(fault, tiny_synth, tmp_path, capsys):
    root = Path(shutil.copytree(tiny_synth, tmp_path / "synth"))
    ds = AUDataset(load_dataset_config("SYNTH"), 1, "test", crop_size=48, dataset_path=root)
    bad = ds.img_paths[5]
    reason = spoil(root / "img" / bad, fault)
    batches = iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2))
    try:
        code = errors.run_cli(lambda _: [batch for batch in batches] and None)
    finally:
        # a failed iterator is otherwise left to the garbage collector, where torch's shutdown of
        # its workers waits 5 s per worker (a script's exit ends them at once)
        batches._shutdown_workers()
    assert code == 2
    line = one_error_line(capsys)
    assert line == f"error: {root / 'img' / bad}: cannot read image ({reason}); tool/check_images.py lists " \
                   f"every bad image of a data set"


def test_check_images_lists_every_bad_file(tiny_synth, tmp_path, capsys):
    from tool.check_images import main as check_images

    root = Path(shutil.copytree(tiny_synth, tmp_path / "synth"))
    paths = AUDataset(load_dataset_config("SYNTH"), 1, "test", dataset_path=root).img_paths
    spoil(root / "img" / paths[1], "truncated JPEG")
    (root / "img" / paths[2]).unlink()
    report = tmp_path / "bad_images.txt"
    assert check_images(["--dataset", "SYNTH", "--dataset-path", str(root), "--workers", "2", "--no-progress",
                         "--output", str(report)]) == 1
    assert report.read_text().splitlines() == [f"{paths[1]}\ttruncated JPEG: no end-of-image marker FF D9 at its end",
                                               f"{paths[2]}\tfile not found"]
    assert "2 of 24 images are bad (1 missing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------------------------
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["torch.save", "os.replace"])
def test_full_disk_keeps_the_previous_checkpoint(failing, tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pth"
    utils.save_checkpoint({"epoch": 1}, path)
    monkeypatch.setattr(*(("torch.save", disk_full) if failing == "torch.save" else ("os.replace", disk_full)))
    with pytest.raises(utils.OutputWriteError) as caught:
        utils.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    message = str(caught.value)
    assert f"cannot write {path} (No space left on device: the disk holding {path.parent} is full" in message
    assert message.endswith("the previous last.pth is kept") and "\n" not in message
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary file left


def test_full_disk_during_training_is_one_line(tiny_synth, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", disk_full)
    assert stage1_cli(train_argv(tiny_synth, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "last.pth (No space left on device: the disk holding" in err and "no last.pth was written" in err


# --------------------------------------------------------------------------------------------
# Ctrl-C: stops at once, says how to continue, exit code 130
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_run(tiny_synth, tmp_path_factory):
    """A 2-epoch run interrupted (KeyboardInterrupt) at the start of epoch 2: (code, stderr, argv)."""
    argv = train_argv(tiny_synth, tmp_path_factory.mktemp("ctrl_c"), epochs=2)
    train_one_epoch = training.train_one_epoch

    def interrupted_in_epoch_2(args, net, loader, optimizer, scaler, criterion, state, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_one_epoch(args, net, loader, optimizer, scaler, criterion, state, epoch, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "train_one_epoch", interrupted_in_epoch_2)
        err_file = tmp_path_factory.mktemp("ctrl_c_err") / "stderr"
        with open(err_file, "w") as fh, pytest.MonkeyPatch.context() as stderr:
            stderr.setattr(sys, "stderr", fh)
            code = stage1_cli(argv)
    return code, err_file.read_text(), argv


def test_ctrl_c_in_training_names_the_checkpoint_and_the_resume_command(interrupted_run):
    code, err, argv = interrupted_run
    assert code == 130
    folder = conf.run_dir(conf.parse_args(train_stage1.get_args_parser(), argv, section="stage1"))
    last = folder / "last.pth"
    command = f"python train_stage1.py {shlex.join(argv)} --resume-training {last}"
    assert err.strip() == f"interrupted: the last checkpoint is {last} (written at the end of the last finished " \
                          f"epoch); continue with: {command}"
    saved = torch.load(last, weights_only=True)  # the training state is plain data: weights-only loads it
    assert saved["epoch"] == 1 and {"optimizer", "scaler", "rng", "args", "provenance"} <= saved.keys()
    # the printed command continues the run in place and finishes it
    assert stage1_cli(shlex.split(command)[2:]) == 0
    assert torch.load(last, weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("entry", ["test.py", "demo.py"])
def test_ctrl_c_in_test_and_demo(entry, tiny_synth, stage1_release_file, tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if entry == "test.py":
        monkeypatch.setattr(engine_cli, "test_checkpoints", interrupt)
        assert eval_cli(eval_argv(tiny_synth, tmp_path, stage1_release_file)) == 130
        assert one_error_line(capsys) == "interrupted: no results were written; run the same command again"
    else:
        monkeypatch.setattr(demo, "process_inputs", interrupt)  # the name demo.main calls
        image = next((tiny_synth / "img").rglob("*.jpg"))
        assert demo_cli(["--resume", str(stage1_release_file), "--input", str(image), "--no-detect",
                         "--output", str(tmp_path / "demo")]) == 130
        assert capsys.readouterr().err.strip() == \
            f"interrupted: the predictions so far are in {tmp_path / 'demo' / 'predictions.csv'}"


def test_demo_bug_is_a_traceback_not_a_user_error(stage1_release_file, tmp_path, monkeypatch, capsys):
    """A ValueError from a bug (not one of the user-error classes) is not turned into exit 2: its
    traceback is printed and the exit code is 1."""
    def bug(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(demo, "make_detector", bug)
    assert demo_cli(["--resume", str(stage1_release_file), "--input", str(stage1_release_file),
                     "--output", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a bug, not bad input" in err


# --------------------------------------------------------------------------------------------
# torchrun: one message from rank 0, a short note from the others
# --------------------------------------------------------------------------------------------
def test_torchrun_user_error_is_one_message_from_rank_0(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "train_stage1.py"), "--dataset", "BP4D", "--dataset-path", str(tmp_path / "nowhere"),
           "--arc", "resnet18", "--pretrained", "none", "--output-dir", str(tmp_path / "out"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    ours = [line for line in lines if line.startswith(("error:", "rank "))]
    assert sorted(ours) == [f"error: {tmp_path / 'nowhere' / 'list' / 'BP4D_train_img_path_fold1.txt'}: list file "
                            f"not found (write the lists with tool/prepare_lists.py, see data/README.md)",
                            "rank 1: stopped (see rank 0's message)"], proc.stderr
    # no rank prints a traceback: the only one is torchrun's own summary of the failed child, after ours
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    assert len(tracebacks) <= 1 and all(lines.index(line) < min(tracebacks, default=len(lines)) for line in ours)
    assert "gloo" not in proc.stderr.lower() and "DistBackendError" not in proc.stderr, proc.stderr
