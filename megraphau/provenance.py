"""Provenance of a run: which code, packages, device, command and input files produced a result.

`collect()` returns one plain dict (str, int, float, bool, None, lists and dicts only) that can
be written to results.json or args.yaml and stored inside a checkpoint that is read back with
`torch.load(weights_only=True)`; `header_line()` turns it into the one line a script prints
first. Nothing here raises into the caller's run: a fact that cannot be found is None.

The module imports only the standard library, never the project's scripts or tool/, and reads
package versions from installed metadata, so importing it and calling `collect()` does not pull
in torch, cv2 or onnxruntime when the caller has not already imported them.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

__version__ = "0.2.0"
PROJECT = "ME-GraphAU"
from megraphau.paths import REPO_ROOT  # noqa: E402

# Label -> (import name, distribution names to try in order). The import name is used only for
# a module that is already imported (its __version__ wins over metadata: it is what runs).
PACKAGES = {
    "torch": ("torch", ("torch",)),
    "torchvision": ("torchvision", ("torchvision",)),
    "timm": ("timm", ("timm",)),
    "numpy": ("numpy", ("numpy",)),
    "opencv": ("cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                       "opencv-contrib-python")),
    "onnx": ("onnx", ("onnx",)),
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "facenet_pytorch": ("facenet_pytorch", ("facenet-pytorch",)),
}

# Environment variables that change numbers or speed; recorded only when set.
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG",
            "PYTHONHASHSEED")

_GIT_TIMEOUT_S = 10


def _git(repo_root: Path, *args: str, raw: bool = False):
    """stdout of `git -C repo_root args` (stripped text, or bytes if `raw`), or None on any
    failure; git's stderr is never shown."""
    try:
        done = subprocess.run(["git", "-C", str(repo_root), "--no-optional-locks", *args],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout if raw else done.stdout.decode("utf-8", "replace").strip()


def git_info(repo_root: str | os.PathLike | None = None) -> dict | None:
    """The checkout holding `repo_root` (default: this project): commit (full sha), short sha,
    dirty (tracked files differ from the commit, staged or not; untracked files do not count),
    diff_sha256 (of `git diff HEAD` when dirty, so two dirty runs can be told apart), branch
    (None when detached) and root (the checkout's top folder).

    None when git is not installed, `repo_root` is not inside a git checkout, or the checkout has
    no commit yet."""
    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    if shutil.which("git") is None or not root.is_dir():
        return None
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if not commit:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status)
    diff_sha256 = None
    if dirty:
        diff = _git(root, "diff", "HEAD", "--binary", raw=True)
        diff_sha256 = hashlib.sha256(diff).hexdigest() if diff is not None else None
    branch = _git(root, "symbolic-ref", "-q", "--short", "HEAD") or None
    return {"commit": commit, "short": _git(root, "rev-parse", "--short", commit) or commit[:7],
            "dirty": dirty, "diff_sha256": diff_sha256, "branch": branch,
            "root": _git(root, "rev-parse", "--show-toplevel")}


def _dist_version(*names: str) -> str | None:
    """Installed version of the first distribution among `names` that is installed, else None."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except Exception:  # PackageNotFoundError, or broken metadata
            continue
    return None


def package_versions() -> dict:
    """python and the packages of PACKAGES (None when not installed). A module that is already
    imported reports its own __version__; the others are read from installed metadata without
    importing them."""
    versions = {"python": platform.python_version()}
    for label, (module_name, dists) in PACKAGES.items():
        module = sys.modules.get(module_name)
        version = getattr(module, "__version__", None) if module is not None else None
        versions[label] = str(version) if version is not None else _dist_version(*dists)
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def device_info(device=None) -> dict:
    """What `device` (None, 'cpu', 'cuda', 'cuda:1' or a torch.device) is: its type and index,
    name (the GPU's, or the CPU model), the CPU model and core counts (all logical cores and the
    ones this process may use), torch's CPU threads, and where torch is imported its CUDA and
    cuDNN versions, GPU count and, for a CUDA device, its memory and compute capability.

    torch is imported only for a non-CPU device (a caller running on one has imported it)."""
    spec = "cpu" if device is None else str(device)
    kind, _, index = spec.partition(":")
    info = {"type": kind, "index": int(index) if index.isdigit() else None, "name": None,
            "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "cpu_cores_usable": _usable_cores(),
            "torch_threads": None, "cuda": None, "cudnn": None, "gpu_count": None,
            "gpu_memory_bytes": None, "gpu_capability": None}
    torch = sys.modules.get("torch")
    if torch is None and kind != "cpu":
        try:
            import torch
        except Exception:
            torch = None
    if torch is not None:
        import warnings

        with warnings.catch_warnings():  # a broken CUDA driver warns on these queries
            warnings.simplefilter("ignore")
            info["torch_threads"] = _call(torch.get_num_threads)
            info["cuda"] = _call(lambda: torch.version.cuda)
            info["cudnn"] = _call(torch.backends.cudnn.version) if info["cuda"] else None
            info["gpu_count"] = _call(torch.cuda.device_count) if info["cuda"] else 0
            if kind == "cuda" and info["gpu_count"]:
                if info["index"] is None:
                    info["index"] = _call(torch.cuda.current_device)
                if info["index"] is not None and info["index"] < info["gpu_count"]:
                    props = _call(torch.cuda.get_device_properties, info["index"])
                    if props is not None:
                        info["name"] = str(props.name)
                        info["gpu_memory_bytes"] = int(props.total_memory)
                        info["gpu_capability"] = f"{props.major}.{props.minor}"
    if kind == "cpu":
        info["name"] = info["cpu"]
    return info


def _call(fn, *args):
    """fn(*args), or None if it raises."""
    try:
        return fn(*args)
    except Exception:
        return None


_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in `chunk`-byte pieces. Cached within the process by (absolute
    path, size, modification time), so hashing the same large checkpoint or list twice costs one
    read. Raises OSError for a missing or unreadable file."""
    p = os.path.abspath(os.fspath(path))
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            digest.update(block)
    hexdigest = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = hexdigest
    return hexdigest


def file_info(path: str | os.PathLike) -> dict:
    """{'path', 'sha256', 'bytes'} of one file; sha256/bytes None and 'error' set when it cannot
    be read."""
    entry = {"path": os.fspath(path), "sha256": None, "bytes": None}
    try:
        entry["bytes"] = os.path.getsize(path)
        entry["sha256"] = sha256_file(path)
    except OSError as error:
        entry["bytes"] = None
        entry["error"] = f"{type(error).__name__}: {error.strerror or error}"
    return entry


def command_line(argv=None) -> str:
    """The interpreter's file name and argv (default sys.argv), shell-quoted."""
    argv = sys.argv if argv is None else argv
    return shlex.join([Path(sys.executable).name or "python", *(str(a) for a in argv)])


def collect(device=None, files: dict | None = None, argv=None, precision: dict | None = None) -> dict:
    """Everything needed to trace a result back: project and version, git checkout (or None),
    package versions, device, the exact command, working folder, UTC time, host name, the set
    reproducibility environment variables, and for each `files` label its path, SHA-256 and size.
    precision: the numeric precision the outputs were computed in (inference.precision's
    precision_facts), recorded under "precision" when given.

    Never raises; every value is a plain JSON/YAML type."""
    files = files or {}
    record = {
        "project": PROJECT,
        "version": __version__,
        "git": _call(git_info, REPO_ROOT),
        "packages": _call(package_versions) or {},
        "device": _call(device_info, device) or {"type": None if device is None else str(device)},
        "command": _call(command_line, argv),
        "cwd": _call(os.getcwd),
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": _call(socket.gethostname),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "files": {str(label): _call(file_info, path) or {"path": str(path), "sha256": None, "bytes": None}
                  for label, path in files.items()},
    }
    if precision is not None:
        record["precision"] = precision
    return record


def _device_summary(device: dict) -> str:
    kind = device.get("type") or "?"
    if kind == "cpu":
        cores = device.get("cpu_cores_usable") or device.get("cpu_cores")
        return f"cpu ({cores} cores)" if cores else "cpu"
    name = kind if device.get("index") is None else f"{kind}:{device['index']}"
    details = [d for d in (device.get("name"), device.get("cuda") and f"CUDA {device['cuda']}") if d]
    return f"{name} ({', '.join(details)})" if details else name


def add_version_flag(parser) -> None:
    """--version on an argparse parser: the project, its version and (in a git checkout) the
    commit, e.g. `ME-GraphAU 0.2.0 (git 89c6eab, dirty)`."""
    import argparse

    class VersionAction(argparse.Action):  # the git lookup runs only when --version is asked for
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                             help="print the project's version (and git commit) and exit")

        def __call__(self, parser, namespace, values, option_string=None):
            git = _call(git_info, REPO_ROOT) or {}
            commit = f" (git {git['short']}{', dirty' if git.get('dirty') else ''})" if git.get("short") else ""
            print(f"{PROJECT} {__version__}{commit}")  # stdout, as argparse's own version action
            parser.exit()

    parser.add_argument("--version", action=VersionAction)


def header_line(prov: dict) -> str:
    """One line naming what produced a result, e.g.
    `ME-GraphAU 0.2.0 @ 271d590 (dirty) | torch 2.4.1 | cpu (2 cores) | python test.py --dataset SYNTH`.
    Tolerates missing fields (a provenance dict from an older version)."""
    git = prov.get("git") or {}
    where = "no git" if not git.get("short") else git["short"] + (" (dirty)" if git.get("dirty") else "")
    torch_version = (prov.get("packages") or {}).get("torch") or "not installed"
    parts = [f"{prov.get('project', PROJECT)} {prov.get('version', '?')} @ {where}", f"torch {torch_version}",
             _device_summary(prov.get("device") or {})]
    if prov.get("command"):
        parts.append(prov["command"])
    return " | ".join(parts)


if __name__ == "__main__":  # `python provenance.py`: this checkout's provenance as JSON
    import json

    record = collect()
    print(header_line(record))
    print(json.dumps(record, indent=2))
