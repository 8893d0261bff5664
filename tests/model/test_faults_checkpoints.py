"""Fault injection for checkpoint files (issue 22): one case per cause, each checking the one-line
message and that nothing in the file ran.

Causes: pickles that would run code (os.system, subprocess.Popen, eval, exec, a user's class) in
torch's zip and legacy formats and as bare pickles (protocols 0 and 4); a pickle protocol torch's
weights-only reader does not execute; a TorchScript archive; damaged files; a zip bomb; NaN/Inf
weights; facts that contradict the weights. ResNet-18 (12 AUs) files; a few seconds in all.
"""
import builtins
import logging
import os
import pickle
import shlex
import subprocess
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import demo
from megraphau.model import build_model, load_checkpoint, load_model, model_config_dict, read_checkpoint, statedict
from megraphau.model.statedict import (
    CheckpointFileError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load_weights_only,
)


# --------------------------------------------------------------------------------------------
# payloads: objects whose unpickling creates a marker file
# --------------------------------------------------------------------------------------------
class Call:
    """Unpickling this calls func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class UserClass:
    """A user's own class in a checkpoint: unpickling it imports this module and runs __setstate__."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        self.__dict__.update(state)


PAYLOADS = {  # name -> (the object given the marker path, the global the refusal must name)
    "os.system": (lambda m: Call(os.system, f"touch {shlex.quote(m)}"), f"{os.system.__module__}.system"),
    "subprocess.Popen": (lambda m: Call(subprocess.Popen, ["touch", m]), "subprocess.Popen"),
    "eval": (lambda m: Call(builtins.eval, f"open({m!r}, 'w').close()"), "builtins.eval"),
    "exec": (lambda m: Call(builtins.exec, f"open({m!r}, 'w').close()"), "builtins.exec"),
    "a user's class": (lambda m: UserClass(m), f"{UserClass.__module__}.UserClass"),
}
FORMATS = ["torch zip", "torch legacy", "bare pickle, protocol 0", "bare pickle, protocol 4"]


def write(obj, path: Path, fmt: str) -> Path:
    if fmt == "torch zip":
        torch.save(obj, path)
    elif fmt == "torch legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(fmt[-1])))
    return path


def marker_appears(marker: Path, wait_s: float) -> bool:
    """Whether `marker` exists within `wait_s` (subprocess.Popen's child creates it a little later)."""
    deadline = time.monotonic() + wait_s
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return marker.exists()


def evil_file(tmp_path: Path, payload: str, fmt: str) -> tuple[Path, Path]:
    """(a checkpoint-looking file whose unpickling creates `marker`, marker); the payload is run
    once here with a full unpickler, proving it real, and the marker removed."""
    marker = tmp_path / "payload_ran"
    make, _ = PAYLOADS[payload]
    obj = {"state_dict": {"head.sc": torch.ones(12, 4)}, "epoch": 3, "optimizer": make(str(marker))}
    path = write(obj, tmp_path / "evil.pth", fmt)
    if fmt.startswith("torch"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker_appears(marker, 10), "the payload does not work: the test would prove nothing"
    marker.unlink()
    return path, marker


def assert_never_ran(marker: Path, payload: str) -> None:
    assert not marker_appears(marker, 0.5 if payload == "subprocess.Popen" else 0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_code_in_a_checkpoint_is_refused_by_name_and_never_runs(payload, fmt, tmp_path, monkeypatch):
    evil, marker = evil_file(tmp_path, payload, fmt)
    # refused on the file's own contents: torch.load is never reached, whatever its wording
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(evil)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{evil}: refused, NOT loaded")
    assert "would import and call" in message and PAYLOADS[payload][1] in message and "could run code" in message
    assert_never_ran(marker, payload)


def test_code_in_a_checkpoint_is_one_line_from_demo(tmp_path, capsys):
    evil, marker = evil_file(tmp_path, "os.system", "torch zip")
    try:
        code = demo.cli(["--resume", str(evil), "--input", str(evil), "--output", str(tmp_path / "out")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "warn" not in err.lower(), err
    assert "refused, NOT loaded" in lines[0] and f"import and call {os.system.__module__}.system" in lines[0]
    assert_never_ran(marker, "os.system")


# --------------------------------------------------------------------------------------------
# refused without code: a protocol torch does not read, TorchScript, a zip bomb
# --------------------------------------------------------------------------------------------
def test_pickle_protocol_4_is_refused_without_torch_warnings(tmp_path, capsys):
    path = tmp_path / "protocol4.pth"
    torch.save({"state_dict": {"head.sc": torch.ones(12, 4)}}, path, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeCheckpointError, match=r"refused, NOT loaded: it was pickled with instructions "
                                                        r"torch's weights-only reader does not execute \(FRAME"):
            read_checkpoint(path)
    assert not caught and capsys.readouterr().err == ""  # torch's protocol warning is not shown


def test_torchscript_archive_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent torch
        try:
            scripted = torch.jit.script(torch.nn.Linear(2, 2))
        except Exception as exc:  # a torch without TorchScript
            pytest.skip(f"torch.jit.script: {exc}")
    path = tmp_path / "scripted.pth"
    scripted.save(str(path))
    with pytest.raises(UnsafeCheckpointError, match=r"scripted.pth: refused, NOT loaded: a TorchScript archive"):
        load_model(path)


def test_zip_bomb_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("bomb/data/0", bytes(8 << 20))  # 8 MiB of zeros: ~8 KiB deflated
    monkeypatch.setattr(statedict, "UNPACK_RATIO_FLOOR", 0)  # a small bomb stands for a big one
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointFileError, match=r"bomb.pth: refused, NOT loaded: its zip entries unpack to "
                                                  r"8.0 MiB from a 0.0 MiB file .*zip bomb"):
        load_weights_only(path)


# --------------------------------------------------------------------------------------------
# damaged files: not readable, never called unsafe
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """A stage-1 ResNet-18 (12 AUs) with its facts, in torch's zip and legacy formats."""
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = build_model(1, "resnet18", 12, 4, "dots", pretrained=False)
    facts = {**model_config_dict(model), "dataset": "BP4D", "au_names": [f"AU{k}" for k in range(12)]}
    obj = {"state_dict": model.state_dict(), "facts": facts, "epoch": 1}
    torch.save(obj, folder / "zip.pth")
    torch.save(obj, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    return {"zip": folder / "zip.pth", "legacy": folder / "legacy.pth", "obj": obj}


def damaged(kind: str, good: dict, tmp_path: Path) -> Path:
    path = tmp_path / "damaged.pth"
    if kind == "truncated zip":
        path.write_bytes(good["zip"].read_bytes()[:100_000])
    elif kind == "data.pkl cut inside a whole zip":
        with zipfile.ZipFile(good["zip"]) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("data.pkl") else data)
    elif kind == "truncated legacy, in the pickle":
        path.write_bytes(good["legacy"].read_bytes()[:500])
    elif kind == "truncated legacy, in the tensors":
        path.write_bytes(good["legacy"].read_bytes()[:100_000])
    elif kind == "text":
        path.write_text("cat these are my notes\n")
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, detail", ids=lambda v: v if " " not in v or len(v) < 40 else "", argvalues=[
    ("truncated zip", "damaged or truncated zip archive"),
    ("data.pkl cut inside a whole zip", "damaged, truncated or not a torch file: zip/data.pkl breaks at byte"),
    ("truncated legacy, in the pickle", "damaged, truncated or not a torch file: the pickle breaks at byte"),
    ("truncated legacy, in the tensors", "RuntimeError"),
    ("text", "neither a zip archive nor a pickle"),
    ("empty", "an empty file"),
])
def test_damaged_files_are_not_readable_and_not_called_unsafe(kind, detail, good_files, tmp_path):
    path = damaged(kind, good_files, tmp_path)
    with pytest.raises(CheckpointFileError) as info:
        load_model(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable checkpoint (") and detail in message, message
    assert "\n" not in message and "weights_only=False" not in message


# --------------------------------------------------------------------------------------------
# NaN/Inf weights
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("bad, shown", ids=["one NaN", "four Inf"], argvalues=[
    ({"backbone.conv1.weight": float("nan")}, "1 weight tensor(s) hold NaN or Inf (backbone.conv1.weight)"),
    ({f"backbone.layer1.{i}.conv{j}.weight": float("inf") for i in (0, 1) for j in (1, 2)},
     "4 weight tensor(s) hold NaN or Inf (backbone.layer1.0.conv1.weight, backbone.layer1.0.conv2.weight, "
     "backbone.layer1.1.conv1.weight, ... (1 more))"),
])
@pytest.mark.parametrize("loader", ["load_model", "load_checkpoint"])
def test_non_finite_weights_are_refused_naming_the_tensors(loader, bad, shown, fmt, good_files, tmp_path):
    obj = good_files["obj"]
    state_dict = {k: (torch.full_like(v, bad[k]) if k in bad else v) for k, v in obj["state_dict"].items()}
    path = tmp_path / "diverged.pth"
    torch.save({**obj, "state_dict": state_dict}, path, _use_new_zipfile_serialization=fmt == "zip")
    model = build_model(1, "resnet18", 12, 4, "dots", pretrained=False)
    with pytest.raises(NonFiniteWeightsError) as info:
        load_model(path) if loader == "load_model" else load_checkpoint(model, path)
    assert str(info.value) == f"{path}: refused: {shown}; the run that wrote it diverged or the file is damaged: " \
                              f"use an earlier checkpoint of the run"


def test_non_finite_optimizer_state_is_not_checked(good_files, tmp_path):
    """Only the weights are checked: --resume-training reads optimizer state as it is."""
    path = tmp_path / "last.pth"
    torch.save({**good_files["obj"], "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}}}, path)
    _, obj = read_checkpoint(path)
    assert torch.isnan(obj["optimizer"]["state"][0]["exp_avg"]).all()


# --------------------------------------------------------------------------------------------
# facts against weights
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", ids=["8 AU names", "num_classes 8"], argvalues=[
    ({"au_names": [f"AU{k}" for k in range(8)]},
     "its facts name 8 AUs (AU0, AU1, AU2, AU3, ...) but its weights predict 12: the outputs cannot be labelled; "
     "refused"),
    ({"num_classes": 8}, "its facts say num_classes 8 but its weights predict 12 AUs: the facts belong to another "
                         "model; refused"),
])
@pytest.mark.parametrize("loader", ["load_model", "load_checkpoint"])
def test_facts_that_contradict_the_outputs_are_refused(loader, change, message, good_files, tmp_path):
    obj = good_files["obj"]
    path = tmp_path / "mislabelled.pth"
    torch.save({**obj, "facts": {**obj["facts"], **change}}, path)
    model = build_model(1, "resnet18", 12, 4, "dots", pretrained=False)
    with pytest.raises(CheckpointFileError) as info:
        load_model(path) if loader == "load_model" else load_checkpoint(model, path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("change, warning, fact", ids=["arc", "stage", "au_descriptions"], argvalues=[
    ({"arc": "resnet50"}, "its facts say --arc resnet50 but its weights are --arc resnet18; the weights decide",
     ("arc", "resnet18")),
    ({"stage": 2}, "its facts say --stage 2 but its weights are --stage 1; the weights decide", ("stage", 1)),
    ({"au_descriptions": ["brow"] * 8}, "its facts hold 8 AU descriptions for 12 AUs; the descriptions are not used",
     ("au_descriptions", None)),
])
def test_descriptive_facts_give_way_to_the_weights_with_a_warning(change, warning, fact, good_files, tmp_path,
                                                                  caplog):
    obj = good_files["obj"]
    path = tmp_path / "described.pth"
    torch.save({**obj, "facts": {**obj["facts"], **change}}, path)
    with caplog.at_level(logging.WARNING, logger="megraphau.model.checkpoint"):
        loaded = load_model(path)
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {warning}"]
    assert loaded.facts[fact[0]] == fact[1]


def test_good_files_load_in_both_formats_with_mmap_where_possible(good_files):
    for fmt in ("zip", "legacy"):
        loaded = load_model(good_files[fmt])
        assert loaded.facts["num_classes"] == 12 and loaded.facts["au_names"] == [f"AU{k}" for k in range(12)]
        assert load_weights_only(good_files[fmt], mmap=True)["epoch"] == 1  # a legacy file is read normally
