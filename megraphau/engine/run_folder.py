"""Run folders: one run at a time, and no run silently replaces another run's files.

A run (training or test) claims its folder results/{exp-name}/bs_{b}_seed_{s}_lr_{lr}/ before it
writes anything:

- the folder is locked on `.run.lock` for as long as the run lives (the `filelock` library: flock
  on POSIX, msvcrt on Windows); `.run.holder` names the holder's PID, host, start time and
  command. A second run with the same folder refuses, naming the first one's process. The
  operating system drops the lock when the process ends, however it ends, so a killed run leaves
  no stale lock (a stale `.run.holder` is only read while the lock is held, and the holder
  rewrites it first). The note is a file of its own because filelock may truncate, or on Windows
  lock against reading, its lock file.
- a new training run refuses a folder that holds an earlier run's results (checkpoints,
  metrics.csv, curves.png, results.json/csv) unless --overwrite is given; --overwrite deletes the
  earlier run's outputs first, so no file of it (a stale best.pth or epoch file) mixes with the
  new run's. A folder with only args.yaml and logs (a run that stopped before its first epoch
  ended) is simply reused. --resume-training continues in place.
- a test run (test.py) refuses such a folder too unless --overwrite, which replaces the test
  outputs (results.json, results.csv, test.log, args.yaml) and deletes nothing else: a test run
  never removes a checkpoint. --evaluate in the training scripts adds its results to the folder
  of the run it evaluates, refusing only earlier results there.
- a demo (demo.py, kind 'demo') locks its --output folder the same way and refuses one that holds
  an earlier demo's predictions unless --overwrite, which deletes them and its pictures first.

Why test runs refuse too instead of timestamping results: a results.json is what people quote;
replacing it silently loses a number someone may rely on, and the refusal costs one flag.

Under torchrun only rank 0 claims the folder (claim_run_folder); the others follow.
"""
from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import filelock

from megraphau import conf, provenance, utils
from megraphau.utils import UserError, log

LOCK_NAME = ".run.lock"
#: the lock holder's description (PID, host, start time, command), read by a refused run
HOLDER_NAME = ".run.holder"
#: the run's own files in its folder, besides its outputs
LOCK_FILES = (LOCK_NAME, HOLDER_NAME)
#: results of a training run (docs/training.md, "What a run writes"): how an earlier run is recognised
TRAINING_RESULTS = ("last.pth", "best.pth", "cur_model*.pth", "epoch*_model*.pth", "metrics.csv",
                    "curves.png")
#: results of a test run (test.py, --evaluate)
TEST_RESULTS = ("results.json", "results.csv")
#: what every run writes first; alone they mean a run that stopped before it had results
LOGS = ("args.yaml", "train.log", "test.log")
#: results of demo.py: an earlier demo is recognised by its prediction files; --overwrite also
#: deletes its annotated/ and graphs/ pictures
DEMO_RESULTS = ("predictions.csv", "predictions.jsonl", "predictions.json")
DEMO_PICTURES = ("annotated/**/*", "graphs/**/*")
KINDS = ("train", "resume", "test", "evaluate", "demo")


class RunFolderError(UserError):
    """The run folder cannot be used: in use, holding an earlier run, a file, or not writable."""


def outputs_in(folder: Path, patterns) -> list[Path]:
    """Files of `folder` matching the output name patterns, sorted."""
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def make_folder(folder: Path) -> None:
    """Create the run folder; RunFolderError saying why it cannot be (a file, read-only, ...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"{folder}: cannot be the run folder, it is a file; choose another "
                             f"--exp-name or --output-dir") from None
    except NotADirectoryError:
        parent = next((p for p in folder.parents if p.is_file()), folder.parent)
        raise RunFolderError(f"cannot create the run folder {folder}: {parent} is a file") from None
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {folder}: {err.strerror}; choose a writable "
                             f"--output-dir") from None
    if not os.access(folder, os.W_OK):
        raise RunFolderError(f"the run folder {folder} is not writable (read-only file system or no "
                             f"permission); choose a writable --output-dir")


class RunLock:
    """An exclusive lock on FOLDER/.run.lock (filelock), held until release() or the process ends."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.holder = self.folder / HOLDER_NAME
        self.lock = filelock.FileLock(self.path, timeout=0)  # never waits: a busy folder is refused
        self.removed: list[Path] = []  # the earlier run's files that --overwrite deleted

    def acquire(self, command: str | None = None) -> RunLock:
        try:
            self.lock.acquire()
        except filelock.Timeout:
            try:
                holder = self.holder.read_text(encoding="utf-8", errors="replace").strip().replace("\n", ", ")
            except OSError:
                holder = ""
            raise RunFolderError(f"{self.folder} is in use by another run ({holder or 'process unknown'}); "
                                 f"wait for it to end, or choose another --exp-name or --output-dir") from None
        except OSError as err:
            raise RunFolderError(f"cannot write to the run folder {self.folder} ({err.strerror}); choose a "
                                 f"writable --output-dir") from None
        command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            self.holder.write_text(f"PID {os.getpid()} on {socket.gethostname()}\nstarted {started}\n{command}\n",
                                   encoding="utf-8")
        except OSError as err:
            self.lock.release()
            raise RunFolderError(f"cannot write to the run folder {self.folder} ({err.strerror}); choose a "
                                 f"writable --output-dir") from None
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            self.holder.unlink(missing_ok=True)  # before the lock goes: a next holder's note stays
            self.lock.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_earlier_run(folder: Path, kind: str, overwrite: bool, inputs=()) -> list[Path]:
    """Apply the rule of the module docstring to a locked folder; returns the files removed."""
    if kind == "resume":
        return []
    if kind == "demo":
        return check_earlier_demo(folder, overwrite, inputs)
    earlier = outputs_in(folder, TEST_RESULTS if kind == "evaluate" else TRAINING_RESULTS + TEST_RESULTS)
    removable = outputs_in(folder, TRAINING_RESULTS + TEST_RESULTS + LOGS if kind == "train"
                           else TEST_RESULTS + ("test.log",))
    if not earlier:
        return []
    names = ", ".join(p.name for p in earlier[:6]) + (", ..." if len(earlier) > 6 else "")
    if not overwrite:
        hint = (f"continue it with --resume-training {folder / 'last.pth'}, "
                if kind == "train" and (folder / "last.pth").is_file() else "")
        raise RunFolderError(f"{folder} holds an earlier run ({names}) that this {'test ' if kind != 'train' else ''}"
                             f"run would replace; {hint}choose another --exp-name or --output-dir, or pass "
                             f"--overwrite to replace it")
    return delete_for_overwrite(folder, removable, inputs, "--exp-name")


def check_earlier_demo(folder: Path, overwrite: bool, inputs=()) -> list[Path]:
    """demo.py's rule: an earlier demo's results are kept unless --overwrite, which deletes them
    (and its pictures) first; returns the files removed."""
    earlier = outputs_in(folder, DEMO_RESULTS)
    if not earlier:
        return []
    if not overwrite:
        raise RunFolderError(f"{folder} holds an earlier demo's results ({', '.join(p.name for p in earlier)}) "
                             f"that this run would replace; choose another --output, or pass --overwrite to "
                             f"replace them")
    removable = outputs_in(folder, DEMO_RESULTS + DEMO_PICTURES)
    return delete_for_overwrite(folder, removable, inputs, "--output")


def delete_for_overwrite(folder: Path, removable: list[Path], inputs, where_flag: str) -> list[Path]:
    """--overwrite: delete the earlier run's files, unless this run reads one of them (`inputs`);
    returns the files removed."""
    removable_set = {f.resolve() for f in removable}
    needed = [Path(p) for p in inputs if p and Path(p).resolve() in removable_set]
    if needed:
        raise RunFolderError(f"--overwrite would delete {needed[0]}, which this run reads; copy it out of "
                             f"{folder} or choose another {where_flag}")
    for path in removable:
        path.unlink()
    return removable


def claim(folder: str | Path, kind: str, overwrite: bool = False, inputs=(), command: str | None = None) -> RunLock:
    """Create and lock `folder` for a run of `kind` ('train', 'resume', 'test', 'evaluate', 'demo') and apply
    the earlier-run rule; returns the held RunLock (release it when the run ends). RunFolderError
    (one line) when the folder cannot be used."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    make_folder(folder)
    lock = RunLock(folder).acquire(command)
    try:
        lock.removed = check_earlier_run(folder, kind, overwrite, inputs)
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def claim_run_folder(args, out_dir: Path, kind: str):
    """Rank 0 claims the run folder for a run of `kind` (claim: the lock, the earlier-run rule)
    and writes args.yaml ('evaluate' adds results only); every rank stops with it when the folder
    cannot be used. The lock is held until the block ends."""
    def claim_on_main():
        if not utils.is_main_process():
            return None  # under torchrun only rank 0 locks and decides; the others follow
        lock = claim(out_dir, kind, overwrite=getattr(args, "overwrite", False),
                     inputs=[args.resume, getattr(args, "resume_training", None)])
        try:
            if kind != "evaluate":
                conf.write_args(args, out_dir,
                                provenance=provenance.collect(device=args.device) if kind == "test" else None)
        except BaseException:
            lock.release()
            raise
        return lock

    lock = utils.agree_on_errors(claim_on_main)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def log_removed(lock) -> None:
    """Say which of an earlier run's files --overwrite deleted."""
    if lock is not None and lock.removed:
        log.warning("--overwrite: removed the earlier run's %s", ", ".join(p.name for p in lock.removed))
