"""Faults of the training scripts and the tools (issue 20 item 5 and 10, issue 22): every script and
tool goes through one front door (errors.run_cli): a user error is one line and exit code 2, a bug
its traceback and exit code 1; one case per cause below."""
import errno
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import demo
import train_stage1
from cli_runs import (
    eval_argv,
    eval_cli,
    exit_code,
    one_error_line,
    stage1_cli,
    stage2_cli,
    train_argv,
)
from megraphau import conf, errors, utils
from megraphau.engine import cli as engine_cli
from megraphau.engine import training
from megraphau.model import build_model
from release_files import save_release_checkpoint
from tool import check_images, crop_faces, export_onnx, plot_runs, prepare_lists, synth_faces

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1_file(tmp_path_factory):
    """A stage-1 ResNet-18 (12 AUs) in the release's layout."""
    path = tmp_path_factory.mktemp("ckpt") / "MEFARG_resnet18_SYNTH_fold1.pth"
    torch.manual_seed(0)
    model = build_model(1, "resnet18", 12, 4, "dots", pretrained=False)
    return save_release_checkpoint(model, path)


def bug(*args, **kwargs):
    raise ZeroDivisionError("an injected bug")


# --------------------------------------------------------------------------------------------
# one front door: every script and tool
# --------------------------------------------------------------------------------------------
#: name -> (entry(argv, tmp_path) -> exit code, argv of a user error, its message, (module, name) to break)
ENTRIES = {
    "train_stage1.py": (lambda a: stage1_cli(a),
                        lambda t: ["--dataset", "BP4D", "--dataset-path", str(t / "nowhere"), "--output-dir", str(t)],
                        "BP4D_train_img_path_fold1.txt: list file not found", (utils, "init_distributed_mode")),
    "train_stage2.py": (lambda a: stage2_cli(a),
                        lambda t: ["--dataset", "BP4D", "--resume", str(t / "missing.pth"), "--output-dir", str(t)],
                        "missing.pth: checkpoint not found", (utils, "init_distributed_mode")),
    "test.py": (lambda a: eval_cli(a),
                lambda t: ["--dataset", "BP4D", "--resume", str(t / "missing.pth"), "--output-dir", str(t)],
                "--resume " + "{t}/missing.pth: checkpoint not found", (utils, "init_distributed_mode")),
    "demo.py": (lambda a: exit_code(demo.cli, a),
                lambda t: ["--resume", str(t / "missing.pth"), "--input", str(REPO / "tests" / "data" / "camera.jpg"),
                           "--output", str(t / "demo")],
                "missing.pth", (demo, "resolve_inputs")),
    "tool/check_images.py": (lambda a: exit_code(check_images.main, a), lambda t: ["--list-dir", str(t / "none")],
                             "no *_*_img_path_fold*.txt lists", (check_images, "resolve_folders")),
    "tool/crop_faces.py": (lambda a: exit_code(crop_faces.main, a),
                           lambda t: ["--dataset", "folder", "--input", str(t / "none"), "--output", str(t / "out")],
                           "input folder not found", (crop_faces, "crop_image_tree")),
    "tool/export_onnx.py": (lambda a: exit_code(export_onnx.main, a),
                            lambda t: ["--resume", str(t / "missing.pth"), "--output", str(t / "x.onnx")],
                            "missing.pth: checkpoint not found", (export_onnx, "check_args")),
    "tool/plot_runs.py": (lambda a: exit_code(plot_runs.main, a), lambda t: [str(t / "nope")],
                          "nope: no such run folder", (plot_runs, "default_output")),
    "tool/prepare_lists.py": (lambda a: exit_code(prepare_lists.main, a),
                              lambda t: ["--dataset", "BP4D", "--label-dir", str(t / "nope"), "--list-dir",
                                         str(t / "l")],
                              "label directory not found", (prepare_lists, "read_bp4d_parts")),
    "tool/synth_faces.py": (lambda a: exit_code(synth_faces.main, a), lambda t: ["--output", str(t / "a_file")],
                            "cannot write to the --output folder", (synth_faces, "ensure_synthetic_dataset")),
}


def user_error_setup(name: str, tmp_path: Path) -> None:
    if name == "tool/synth_faces.py":
        (tmp_path / "a_file").write_text("in the way")


@pytest.mark.parametrize("name", list(ENTRIES))
def test_user_error_is_one_line_exit_2(name, tmp_path, capsys):
    entry, argv, message, _ = ENTRIES[name]
    user_error_setup(name, tmp_path)
    assert entry(argv(tmp_path)) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: ") and message.format(t=tmp_path) in line, line


@pytest.mark.parametrize("name", list(ENTRIES))
def test_bug_is_a_traceback_exit_1(name, tmp_path, capsys, monkeypatch):
    entry, argv, _, (module, function) = ENTRIES[name]
    monkeypatch.setattr(module, function, bug)
    args = argv(tmp_path)
    if name == "tool/plot_runs.py":  # a real run folder, so the error is the bug's
        (tmp_path / "nope").mkdir()
    if name == "tool/export_onnx.py":
        (tmp_path / "missing.pth").write_bytes(b"")
    if name == "tool/prepare_lists.py":
        (tmp_path / "nope").mkdir()
    if name in ("train_stage1.py", "train_stage2.py", "test.py"):
        args = ["--dataset", "SYNTH", "--output-dir", str(tmp_path)] + (["--resume", "x.pth"] if name == "test.py"
                                                                         else [])
    assert entry(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: an injected bug" in err, err


def test_front_door_maps_disks_and_ctrl_c(tmp_path, capsys):
    def full_disk(_):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.bin"))

    def ctrl_c(_):
        raise KeyboardInterrupt

    assert errors.run_cli(full_disk) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'out.bin'}: No space left on device" + \
        errors.disk_hint(OSError(errno.ENOSPC, "x"), tmp_path / "out.bin")
    assert errors.run_cli(ctrl_c, interrupted=lambda: "interrupted: kept X") == 130
    assert one_error_line(capsys) == "interrupted: kept X"
    assert errors.run_cli(lambda _: 1) == 1 and errors.run_cli(lambda _: None) == 0


def test_errors_and_utils_import_no_data_or_model_module():
    code = ("import sys; import megraphau.errors, megraphau.utils; "
            "bad = [m for m in sys.modules if m.startswith(('megraphau.data', 'megraphau.model'))]; print(bad)")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == "[]", proc.stderr


def test_error_classes_keep_their_other_bases():
    from megraphau.data.dataset import DatasetError
    from megraphau.inference.detector import InferenceError
    from megraphau.model import CheckpointFileError, CheckpointMismatchError, MissingWeightsError
    from megraphau.model.onnx_export import MissingDependencyError, OnnxModelError
    from megraphau.model.statedict import UnsafeCheckpointError

    for cls, other in ((DatasetError, ValueError), (CheckpointFileError, ValueError),
                       (UnsafeCheckpointError, ValueError), (CheckpointMismatchError, ValueError),
                       (MissingWeightsError, FileNotFoundError),
                       (InferenceError, RuntimeError), (OnnxModelError, ValueError),
                       (MissingDependencyError, ImportError), (plot_runs.RunFolderError, ValueError),
                       (prepare_lists.ListPreparationError, ValueError)):
        assert issubclass(cls, errors.UserError) and issubclass(cls, other), cls


# --------------------------------------------------------------------------------------------
# a checkpoint whose pickle calls os.system: refused as unsafe at every entry, no warning above
# --------------------------------------------------------------------------------------------
class SystemCall:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("entry", ["test.py", "demo.py", "export_onnx", "--resume", "--resume-training"])
def test_os_system_checkpoint_is_refused_as_unsafe(entry, protocol, tiny_synth, stage1_file, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    obj = torch.load(stage1_file, weights_only=True)
    obj["optimizer"] = SystemCall(f"touch {marker}")
    evil = tmp_path / "evil.pth"
    torch.save(obj, evil, pickle_protocol=protocol)
    out = tmp_path / "out"
    code = {"test.py": lambda: eval_cli(eval_argv(tiny_synth, out, evil)),
            "demo.py": lambda: exit_code(demo.cli, ["--resume", str(evil), "--input", str(evil), "--output", str(out)]),
            "export_onnx": lambda: exit_code(export_onnx.main, ["--resume", str(evil), "--output",
                                                                str(out / "x.onnx")]),
            "--resume": lambda: stage2_cli(train_argv(tiny_synth, out, "--resume", str(evil))),
            "--resume-training": lambda: stage1_cli(train_argv(tiny_synth, out, "--resume-training", str(evil))),
            }[entry]()
    assert code == 2
    line = one_error_line(capsys)  # no "Detected pickle protocol 4" warning above it
    if protocol == 2:  # torch 2.14: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"
        assert "evil.pth: refused, NOT loaded" in line and "could run code" in line and "damaged" not in line
    else:  # protocol 4's opcodes are beyond torch's weights-only unpickler: never loaded either
        assert "evil.pth" in line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# ranges: upper bounds, and the YAML's defaults blamed on the YAML
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--crop-size", "100000"], "--crop-size must be at most 1024 pixels"),
    (["-b", "100000"], "-b/--batch-size must be at most 4096"),
    (["-e", "10000000"], "-e/--epochs must be at most 10000"),
    (["-j", "100000"], "-j/--num_workers must be at most 256"),
    (["--N-fold", "1000"], "--N-fold must be at most 100"),
])
def test_sizes_have_upper_bounds(argv, message, tmp_path, capsys):
    assert stage1_cli(["--dataset", "SYNTH", "--output-dir", str(tmp_path)] + argv) == 2
    assert message in one_error_line(capsys)
    assert not any(tmp_path.iterdir())


def synth_yaml(tmp_path: Path, replace: tuple[str, str] | None = None, extra: str = "") -> Path:
    text = (REPO / "megraphau" / "configs" / "SYNTH.yaml").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "mine.yaml"
    path.write_text(text + extra)
    return path


@pytest.mark.parametrize("case, message", [
    ("out of range", "default from {path}: crop_size (for --crop-size) must be at most 1024"),
    ("wrong type", "default from {path}: defaults.stage1.crop_size must be an integer, got 'big'"),
    ("not a choice", "default from {path}: defaults.stage1.arc must be one of"),
])
def test_bad_yaml_default_names_the_yaml_not_the_flag(case, message, tmp_path, capsys):
    value = {"out of range": "crop_size: 100000", "wrong type": "crop_size: big", "not a choice": "arc: vgg"}[case]
    cfg = yaml.safe_load((REPO / "megraphau" / "configs" / "SYNTH.yaml").read_text())
    cfg["defaults"]["stage1"] = dict(cfg["defaults"]["stage1"], **yaml.safe_load(value))
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert stage1_cli(["--dataset", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert message.format(path=path) in line and "train_stage1.py: error: --crop-size" not in line, line
    # the same value on the command line is blamed on the flag
    if case == "out of range":
        assert stage1_cli(["--dataset", str(path), "--crop-size", "100000", "--output-dir", str(tmp_path)]) == 2
        assert "--crop-size must be at most 1024" in one_error_line(capsys)


def test_unknown_top_level_yaml_key_is_an_error(tmp_path, capsys):
    path = synth_yaml(tmp_path, extra="\nlamm: 0.1\n")
    assert stage1_cli(["--dataset", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert f"{path}: unknown key 'lamm'; did you mean 'lam'?" in line


# --------------------------------------------------------------------------------------------
# input checks before the run folder: nothing left behind
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing --resume (stage 2)", "missing --resume-training", "missing --pretrained",
                                  "missing --resume (test.py)", "missing lists"])
def test_failed_input_check_leaves_no_run_folder(case, tiny_synth, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.pth"
    code = {"missing --resume (stage 2)": lambda: stage2_cli(train_argv(tiny_synth, out, "--resume", str(missing))),
            "missing --resume-training": lambda: stage1_cli(train_argv(tiny_synth, out, "--resume-training",
                                                                       str(missing))),
            "missing --pretrained": lambda: stage1_cli([a if a != "none" else str(missing)
                                                        for a in train_argv(tiny_synth, out)]),
            "missing --resume (test.py)": lambda: eval_cli(eval_argv(tiny_synth, out, missing)),
            "missing lists": lambda: stage1_cli(["--dataset", "BP4D", "--dataset-path", str(tmp_path / "nowhere"),
                                                 "--output-dir", str(out), "--arc", "resnet18"]),
            }[case]()
    assert code == 2
    line = one_error_line(capsys)
    assert ("list file not found" if case == "missing lists" else "missing.pth: checkpoint not found") in line
    assert not out.exists(), sorted(out.rglob("*"))


def test_mistyped_synth_path_is_not_filled_with_a_new_set(tmp_path, capsys):
    other = tmp_path / "my_data"  # an existing folder that holds something else
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert stage1_cli(["--dataset", "SYNTH", "--dataset-path", str(other), "--output-dir", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert f"{other} holds no SYNTH lists" in line and f"python tool/synth_faces.py --output {other}" in line
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and not (tmp_path / "o").exists()


def test_synth_generation_only_where_asked(tmp_path):
    args = conf.parse_args(train_stage1.get_args_parser(), ["--dataset", "SYNTH"], section="stage1")
    assert engine_cli.synth_generation_allowed(args)  # the default folder
    for given, path, allowed in ((True, tmp_path / "new", True), (False, tmp_path / "new", False),
                                 (True, tmp_path, False)):
        (tmp_path / "x").touch()
        args.dataset_given, args.dataset_path = given, str(path)
        assert engine_cli.synth_generation_allowed(args) == allowed, (given, path)


# --------------------------------------------------------------------------------------------
# torchrun: a bad flag is said by rank 0 alone
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_bad_flag_is_printed_by_rank_0_only(rank, lines, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", rank)
    assert stage1_cli(["--dataset", "SYNTH", "-b", "-4", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.strip()]) == lines, err


# --------------------------------------------------------------------------------------------
# full disks and read-only folders
# --------------------------------------------------------------------------------------------
def test_full_disk_in_epoch_2_keeps_epoch_1_checkpoint(tiny_synth, tmp_path, capsys, monkeypatch):
    saves = []
    real_save = torch.save

    def full_after_epoch_1(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        saves.append(obj.get("epoch") if isinstance(obj, dict) else None)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_epoch_1)
    argv = train_argv(tiny_synth, tmp_path, epochs=2)
    assert stage1_cli(argv) == 2
    line = one_error_line(capsys)
    last = conf.run_dir(conf.parse_args(train_stage1.get_args_parser(), argv, section="stage1")) / "last.pth"
    hint = errors.disk_hint(OSError(errno.ENOSPC, ""), last)
    assert line == f"error: cannot write {last} (No space left on device{hint}); the previous last.pth is kept"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp*"))


class FullDiskProgram:
    """Stands for torch.onnx.export's ONNXProgram whose save meets a full disk."""

    class model:
        opset_imports = {"": 18}
        metadata_props: dict = {}

    def save(self, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_export_keeps_the_earlier_file(stage1_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the earlier export")
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: FullDiskProgram())
    assert exit_code(export_onnx.main, ["--resume", str(stage1_file), "--output", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: cannot write {out} (No space left on device") and \
        line.endswith("the previous model.onnx is kept")
    assert out.read_bytes() == b"the earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("fault", ["a file in the way", "read-only file system"])
def test_export_into_unwritable_folder_fails_before_the_export(fault, stage1_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_onnx, "run_export", bug)  # never reached
    if fault == "a file in the way":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "model.onnx"
    else:
        out = tmp_path / "ro" / "model.onnx"
        real_write = Path.write_bytes

        def read_only(self, data):
            if self.parent == out.parent:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_write(self, data)

        monkeypatch.setattr(Path, "write_bytes", read_only)
    assert exit_code(export_onnx.main, ["--resume", str(stage1_file), "--output", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"cannot write to the folder of --output {out.parent}" in line
    assert ("a file is in the way" if fault == "a file in the way" else "Read-only file system") in line


def test_export_bad_crop_size_is_refused_before_loading(stage1_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_onnx, "run_export", bug)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the nonsense size first
        assert exit_code(export_onnx.main, ["--resume", str(stage1_file), "--output", str(tmp_path / "x.onnx"),
                                            "--crop-size", "-3"]) == 2
    assert "--crop-size must be in 32..1024 pixels, got -3" in one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames must be in 1..1000000, got 0"),
    (["--size", "-1"], "--size must be in 32..4096, got -1"),
    (["--output", "{tmp}/file/synth"], "cannot write to the --output folder"),
    (["--preview", "{tmp}/file/p.png"], "cannot write to the folder of --preview"),
])
def test_synth_faces_bad_input_is_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("in the way")
    assert exit_code(synth_faces.main, [a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in one_error_line(capsys)


def test_synth_faces_read_only_output_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert exit_code(synth_faces.main, ["--output", str(tmp_path / "synth")]) == 2
    assert f"cannot write to the --output folder {tmp_path / 'synth'} (Read-only file system)" in \
        one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# the thread count of a resumed run
# --------------------------------------------------------------------------------------------
def test_resume_with_another_thread_count_warns(tiny_synth, tmp_path, monkeypatch):
    argv = train_argv(tiny_synth, tmp_path, epochs=2)
    real_epoch = training.train_one_epoch

    def interrupted_in_epoch_2(args, net, loader, optimizer, scaler, criterion, state, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(args, net, loader, optimizer, scaler, criterion, state, epoch, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "train_one_epoch", interrupted_in_epoch_2)
        assert stage1_cli(argv) == 130
    folder = conf.run_dir(conf.parse_args(train_stage1.get_args_parser(), argv, section="stage1"))
    recorded = yaml.safe_load((folder / "args.yaml").read_text())["provenance"]["device"]["torch_threads"]
    assert recorded == torch.get_num_threads() and recorded >= 1
    threads = torch.get_num_threads()
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: (0.5, 1e-3))  # the epoch itself is not needed
    torch.set_num_threads(threads + 1)
    try:
        with pytest.warns(UserWarning, match=f"the run used {threads} CPU threads, this process {threads + 1}"):
            assert stage1_cli(argv + ["--resume-training", str(folder / "last.pth")]) == 0
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# tools' outputs: never the repository root by default
# --------------------------------------------------------------------------------------------
def test_check_images_writes_beside_the_lists(tiny_synth, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exit_code(check_images.main, ["--list-dir", str(tiny_synth / "list"), "--workers", "1",
                                         "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{tiny_synth / 'bad_images.txt'} is empty" in out and not any(tmp_path.iterdir())
    (tiny_synth / "bad_images.txt").unlink()


def test_plot_runs_labels_by_experiment_and_writes_beside_the_runs(tmp_path, capsys, monkeypatch):
    folders = []
    for exp, stage in (("synth_stage1", 1), ("synth_stage2", 2)):
        folder = tmp_path / "results" / exp / "bs_16_seed_0_lr_0.001"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,lr,train_loss,mean_f1,mean_acc,f1_AU1,time_s\n"
                                            "1,0.1,0.5,0.4,0.8,0.4,1\n")
        (folder / "args.yaml").write_text(yaml.safe_dump({"exp_name": exp, "stage": stage, "fold": 1}))
        folders.append(folder)
    assert plot_runs.default_labels(folders) == ["synth_stage1 stage 1 fold 1", "synth_stage2 stage 2 fold 1"]
    monkeypatch.chdir(tmp_path)
    assert exit_code(plot_runs.main, [str(f) for f in folders]) == 0
    assert f"wrote {tmp_path / 'results' / 'runs.png'}" in capsys.readouterr().out
    assert (tmp_path / "results" / "runs.png").is_file() and not (tmp_path / "runs.png").exists()
    labels = {row.split(",")[0] for row in (tmp_path / "results" / "runs.csv").read_text().splitlines()[1:]}
    assert labels == {"synth_stage1 stage 1 fold 1", "synth_stage2 stage 2 fold 1"}
    assert json.dumps(sorted(labels))
