"""provenance.py: git state, package versions, device, file digests, and a record that survives
JSON, YAML and torch.load(weights_only=True)."""
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from megraphau import provenance

REPO = Path(provenance.__file__).resolve().parents[1]
HAS_GIT = shutil.which("git") is not None


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


def in_checkout(path: Path) -> bool:
    return HAS_GIT and subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                      capture_output=True).returncode == 0


needs_checkout = pytest.mark.skipif(not in_checkout(REPO), reason="not running from a git checkout")


@pytest.fixture
def no_git_above(tmp_path, monkeypatch):
    """Keep git from finding a checkout above tmp_path (say, a temporary folder inside a repo)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


@needs_checkout
def test_git_info_of_this_checkout():
    info = provenance.git_info(REPO)
    assert info["commit"] == git(REPO, "rev-parse", "HEAD") and len(info["commit"]) == 40
    assert info["commit"].startswith(info["short"]) and len(info["short"]) >= 7
    assert info["dirty"] == bool(git(REPO, "status", "--porcelain", "--untracked-files=no"))
    detached = subprocess.run(["git", "-C", str(REPO), "symbolic-ref", "-q", "HEAD"], capture_output=True).returncode
    assert info["branch"] == (None if detached else git(REPO, "rev-parse", "--abbrev-ref", "HEAD"))
    assert Path(info["root"]).resolve() == Path(git(REPO, "rev-parse", "--show-toplevel")).resolve()
    assert provenance.git_info() == info  # the default root is this project


@needs_checkout
def test_dirty_flag_follows_tracked_files_in_a_clone(no_git_above):
    clone = no_git_above / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True, capture_output=True)
    clean = provenance.git_info(clone)
    assert clean["commit"] == git(clone, "rev-parse", "HEAD") and clean["dirty"] is False
    assert clean["diff_sha256"] is None

    (clone / "untracked.txt").write_text("not part of any commit\n")
    assert provenance.git_info(clone)["dirty"] is False  # untracked files do not make it dirty

    readme = clone / "README.md"
    readme.write_text(readme.read_text() + "\nlocal edit\n")
    dirty = provenance.git_info(clone)
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"]
    assert len(dirty["diff_sha256"]) == 64
    readme.write_text(readme.read_text() + "another edit\n")
    assert provenance.git_info(clone)["diff_sha256"] != dirty["diff_sha256"]  # a different change

    git(clone, "checkout", "--", "README.md")
    assert provenance.git_info(clone)["dirty"] is False

    git(clone, "add", "untracked.txt")  # staged but not committed: dirty
    assert provenance.git_info(clone)["dirty"] is True


def test_no_git_info_outside_a_checkout(no_git_above, capfd):
    copy = no_git_above / "copy"
    copy.mkdir()
    for name in ("megraphau/provenance.py", "README.md", "requirements.txt"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, copy / name)
    assert provenance.git_info(copy) is None
    assert provenance.git_info(copy / "missing-folder") is None
    assert capfd.readouterr() == ("", "")  # no git noise on the terminal


def test_no_git_info_without_git(tmp_path, monkeypatch, capfd):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert provenance.git_info(REPO) is None
    prov = provenance.collect("cpu")
    assert prov["git"] is None
    assert "@ no git |" in provenance.header_line(prov)
    assert capfd.readouterr() == ("", "")


def test_package_versions():
    versions = provenance.package_versions()
    assert set(versions) == {"python", *provenance.PACKAGES}
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__  # imported: the running module's version
    assert versions["numpy"] == sys.modules["numpy"].__version__  # imported by torch
    assert versions["opencv"] is not None  # a requirement
    for label, version in versions.items():
        assert version is None or isinstance(version, str), label
    assert provenance._dist_version("no-such-distribution-xyz") is None


def test_import_and_collect_leave_heavy_packages_unimported():
    code = ("import sys; from megraphau import provenance; p = provenance.collect('cpu'); provenance.header_line(p); "
            "print([m for m in ('torch', 'cv2', 'numpy', 'onnxruntime', 'facenet_pytorch', 'timm') "
            "if m in sys.modules]); print(p['packages']['torch'] is not None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"  # the version came from metadata


def test_device_info_cpu():
    for device in (None, "cpu", torch.device("cpu")):
        info = provenance.device_info(device)
        assert info["type"] == "cpu" and info["index"] is None
        assert info["name"] == info["cpu"] and isinstance(info["cpu"], str) and info["cpu"]
        assert info["cpu_cores"] == os.cpu_count() and 1 <= info["cpu_cores_usable"] <= info["cpu_cores"]
        assert info["torch_threads"] == torch.get_num_threads()
        assert info["cuda"] == torch.version.cuda


def fake_torch(gpus: int) -> types.ModuleType:
    """A stand-in for a CUDA build of torch with `gpus` devices."""
    module = types.ModuleType("torch")
    module.__version__ = "9.9.9+cu999"
    module.get_num_threads = lambda: 16
    module.version = types.SimpleNamespace(cuda="12.4")
    module.backends = types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 90100))
    props = types.SimpleNamespace(name="Fake GPU 80GB", total_memory=80 * 2**30, major=9, minor=0)

    def get_device_properties(index):
        if index >= gpus:
            raise AssertionError("invalid device ordinal")
        return props

    module.cuda = types.SimpleNamespace(device_count=lambda: gpus, current_device=lambda: 1,
                                        get_device_properties=get_device_properties)
    return module


def test_device_info_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(gpus=2))
    info = provenance.device_info("cuda")
    assert info["type"] == "cuda" and info["index"] == 1  # the current device
    assert info["name"] == "Fake GPU 80GB" and info["gpu_memory_bytes"] == 80 * 2**30
    assert (info["cuda"], info["cudnn"], info["gpu_count"], info["gpu_capability"]) == ("12.4", 90100, 2, "9.0")
    assert info["torch_threads"] == 16 and info["cpu_cores"] == os.cpu_count()
    assert provenance.device_info("cuda:0")["index"] == 0
    missing = provenance.device_info("cuda:5")  # no such GPU: recorded, not raised
    assert missing["index"] == 5 and missing["name"] is None
    prov = provenance.collect("cuda:0", argv=["train_stage1.py"])
    assert prov["packages"]["torch"] == "9.9.9+cu999"
    assert " | cuda:0 (Fake GPU 80GB, CUDA 12.4) | " in provenance.header_line(prov)


def test_sha256_file_streams_and_caches(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    data = os.urandom(3 * (1 << 20) + 12345)  # several chunks and a partial one
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert provenance.sha256_file(path) == expected
    assert provenance.sha256_file(str(path), chunk=4097) == expected  # cached or not, same digest

    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    assert provenance.sha256_file(path) == expected
    assert reads == []  # same path, size and mtime: no second read

    path.write_bytes(data + b"x")  # changed: read again
    assert provenance.sha256_file(path) == hashlib.sha256(data + b"x").hexdigest()
    assert len(reads) == 1

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert provenance.sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        provenance.sha256_file(tmp_path / "missing.txt")


def test_collect_records_files_command_and_environment(tmp_path, monkeypatch):
    listing = tmp_path / "BP4D_test_img_path_fold1.txt"
    listing.write_text("F001/T1/0001.jpg\nF001/T1/0002.jpg\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    prov = provenance.collect("cpu", files={"test_list": listing, "missing": tmp_path / "missing.pth"},
                              argv=["test.py", "--dataset", "SYNTH", "--exp-name", "two words"])
    assert prov["project"] == "ME-GraphAU" and prov["version"] == provenance.__version__
    assert prov["command"] == f"{Path(sys.executable).name} test.py --dataset SYNTH --exp-name 'two words'"
    assert prov["cwd"] == os.getcwd() and prov["hostname"]
    assert prov["env"]["OMP_NUM_THREADS"] == "2"
    assert prov["time"].endswith("Z") and len(prov["time"]) == len("2026-01-01T00:00:00Z")
    assert prov["files"]["test_list"] == {"path": str(listing), "bytes": listing.stat().st_size,
                                          "sha256": hashlib.sha256(listing.read_bytes()).hexdigest()}
    missing = prov["files"]["missing"]
    assert missing["sha256"] is None and missing["bytes"] is None and "FileNotFoundError" in missing["error"]
    assert provenance.collect()["command"] == provenance.command_line()  # default: sys.argv


def plain(value) -> bool:
    """Only str, int, float, bool, None, lists and str-keyed dicts."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_collect_is_plain_data_for_json_yaml_and_weights_only_checkpoints(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a\n")
    prov = provenance.collect(torch.device("cpu"), files={"list": listing}, argv=["x.py"])
    assert plain(prov)
    assert json.loads(json.dumps(prov)) == prov
    assert yaml.safe_load(yaml.safe_dump(prov)) == prov
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "provenance": prov}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["provenance"] == prov


def test_collect_never_raises(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(provenance, "git_info", broken)
    monkeypatch.setattr(provenance, "package_versions", broken)
    monkeypatch.setattr(provenance, "device_info", broken)
    prov = provenance.collect("cuda:3", files={"x": "/nonexistent/x.pth"})
    assert prov["git"] is None and prov["packages"] == {} and prov["device"] == {"type": "cuda:3"}
    assert prov["files"]["x"]["sha256"] is None
    assert provenance.header_line(prov).startswith(f"ME-GraphAU {provenance.__version__} @ no git | torch ")


def test_header_line():
    prov = provenance.collect("cpu", argv=["test.py", "--dataset", "SYNTH"])
    line = provenance.header_line(prov)
    git_part = "no git" if prov["git"] is None else prov["git"]["short"]
    assert line.startswith(f"ME-GraphAU {provenance.__version__} @ {git_part}")
    assert ("(dirty)" in line) == bool(prov["git"] and prov["git"]["dirty"])
    cores = prov["device"]["cpu_cores_usable"]
    assert f" | torch {torch.__version__} | cpu ({cores} cores) | " in line
    assert line.endswith(" test.py --dataset SYNTH") and "\n" not in line
    fake = {**prov, "git": {"short": "271d590", "dirty": True}}
    assert f"ME-GraphAU {provenance.__version__} @ 271d590 (dirty) | " in provenance.header_line(fake)
    assert provenance.header_line({}) == "ME-GraphAU ? @ no git | torch not installed | ?"


def test_module_runs_as_a_script():
    out = subprocess.run([sys.executable, "-m", "megraphau.provenance"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    header, record = out.split("\n", 1)
    assert header == provenance.header_line(json.loads(record))


def load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_one_version_everywhere():
    pyproject = load_pyproject()
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "megraphau.provenance.__version__"}
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert str(citation["version"]) == provenance.__version__
    headings = [line for line in (REPO / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")]
    assert any(provenance.__version__ in line for line in headings)


def requirement_lines(name: str) -> list[str]:
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_dependencies_are_the_runtime_requirements():
    runtime = [r for r in requirement_lines("requirements.txt") if not r.startswith("pytest")]
    assert load_pyproject()["project"]["dependencies"] == runtime
    dev = load_pyproject()["project"]["optional-dependencies"]["dev"]
    assert any(r.startswith("ruff") for r in dev) and any(r.startswith("pytest") for r in dev)


@pytest.mark.parametrize("module, factory", [("train_stage1", "get_args_parser"), ("train_stage2", "get_args_parser"),
                                             ("test", "get_args_parser"), ("demo", "get_args_parser"),
                                             ("tool.prepare_lists", "build_parser"),
                                             ("tool.check_images", "build_parser"),
                                             ("tool.plot_runs", "build_parser"),
                                             ("tool.export_onnx", "get_args_parser")])
def test_every_script_prints_its_version(module, factory, capsys):
    import importlib

    parser = getattr(importlib.import_module(module), factory)()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"ME-GraphAU {provenance.__version__}")
