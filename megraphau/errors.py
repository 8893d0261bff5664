"""The project's error classes and the one front door of every script and tool (run_cli).

Three outcomes, the same everywhere (train_stage1.py, train_stage2.py, test.py, demo.py, tool/*.py):

- a user error (bad input: a flag, a file, a folder, a full or read-only disk) prints
  ``error: <one line naming the file and the problem>`` on stderr and exits with code 2;
- Ctrl-C exits with code 130 after one line saying what was kept (and how to continue, where the
  script knows: the training scripts print the command that resumes the run);
- anything else is a bug: its traceback, exit code 1.

A user error is an instance of UserError (every class the project raises on purpose for bad input
subclasses it, keeping its other bases, e.g. DatasetError is also a ValueError), a
FileNotFoundError (a path the user named that does not exist), or an OSError of the disks and
folders (OUTPUT_ERRNOS: full, over quota, read-only, no permission, ...).

This module imports nothing from the package: every other module can import it.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

#: exit codes of every script and tool
EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

#: OSError numbers that describe the machine's disks and folders, not a bug: one line, exit 2.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                 errno.EISDIR, errno.EEXIST, errno.EFBIG}


class UserError(Exception):
    """Bad input from the user (a flag, a folder, a file): the scripts print the one-line message
    and exit with code 2, no traceback. Subclasses keep their other bases (ValueError, ...)."""


class DeviceUnavailableError(UserError, RuntimeError):
    """--device names a device this machine does not have."""


class OutputWriteError(UserError, OSError):
    """An output could not be written (full disk, read-only file system, no permission)."""


class ConfigError(UserError, ValueError):
    """A flag or a dataset YAML's default holds a value outside its range; the message names
    which (the flag, or the YAML file and key)."""


def disk_hint(err: OSError, path: Path) -> str:
    """': the disk holding FOLDER is full, N MiB free' for a full disk (which disk to clean up), else ''."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    try:
        free = shutil.disk_usage(folder).free / 2**20
    except OSError:
        return f": the disk holding {folder} is full"
    return f": the disk holding {folder} is full, {free:.0f} MiB free"


def output_write_error(err: OSError, dst: str | Path) -> OutputWriteError:
    """The one-line error of a failed write of `dst` (err.errno in OUTPUT_ERRNOS): which file,
    why, which disk is full, and whether an earlier `dst` is kept (writers replace atomically)."""
    dst = Path(dst)
    kept = f"the previous {dst.name} is kept" if dst.exists() else f"no {dst.name} was written"
    error = OutputWriteError(f"cannot write {dst} ({os.strerror(err.errno)}{disk_hint(err, dst)}); {kept}")
    error.errno = err.errno
    return error


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and make sure a file can be written in it, BEFORE long work
    (an export, a data set generation): OutputWriteError naming it otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way"
        error = OutputWriteError(f"cannot write to the {what} {folder} ({reason}{disk_hint(err, folder / 'x')})")
        error.errno = err.errno
        raise error from None
    return folder


def is_user_error(exc: BaseException) -> bool:
    """A UserError, a FileNotFoundError, or an OSError of the disks and folders (OUTPUT_ERRNOS)."""
    return isinstance(exc, (UserError, FileNotFoundError)) or (
        isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS)


def user_error_message(exc: BaseException) -> str:
    """The one line to print for a user error.

    A DataLoader re-raises a worker's exception with the worker's whole traceback as its message;
    the original one-line message is its last line (after "module.ClassName: "). An OSError of
    the system ('[Errno 28] No space left on device: 'x'') becomes 'x: No space left on device'
    (with the full disk's free space)."""
    text = str(exc)
    if "in DataLoader worker process" in text.split("\n", 1)[0]:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^(?:\w+\.)*" + re.escape(type(exc).__name__) + r": ", "", last.strip())
    elif isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.strerror:
        where = Path(str(exc.filename)) if exc.filename else None
        text = (f"{where}: " if where else "") + exc.strerror + (disk_hint(exc, where) if where else "")
    return " ".join(text.split()) or type(exc).__name__


def process_rank() -> int:
    """This process's rank under torchrun (its RANK variable), 0 for a single process."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def report_user_error(exc: BaseException) -> None:
    """Print a user error: 'error: MESSAGE' on rank 0 (and in a single process). Under torchrun a
    rank > 0 prints a short note when every rank stopped on the same error (utils.agree_on_errors
    marked it `reported_by_rank0`), or its own message when the error was its alone."""
    rank = process_rank()
    if rank == 0:
        line = f"error: {user_error_message(exc)}"
    elif getattr(exc, "reported_by_rank0", False):
        line = f"rank {rank}: stopped (see rank 0's message)"
    else:
        line = f"rank {rank}: error: {user_error_message(exc)}"
    sys.stderr.write(line + "\n")  # one write: lines of several ranks do not interleave
    sys.stderr.flush()


def run_cli(main: Callable[[Any], int | None], argv: Any = None, *,
            interrupted: Callable[[], str] | None = None,
            outcome: Callable[[BaseException], int | None] | None = None) -> int:
    """Run `main(argv)` and turn what happens into the exit code of the module docstring.

    main returns its exit code (None: 0). interrupted() says, after Ctrl-C, what was kept and how
    to continue (default 'interrupted'); rank 0 prints it. outcome(exc), when given, sees every
    exception first and may claim it with an exit code of its own, having printed what it needs
    (training: 3 for a non-finite loss; torchrun: a rank whose peer ended). argparse's SystemExit
    passes through. The exit code is returned (the scripts sys.exit it); a bug's traceback is
    printed here, so that a caller in the same process gets code 1 as a shell would."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if process_rank() == 0:
            message = interrupted() if interrupted is not None else "interrupted"
            print(f"\n{message}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        special = outcome(exc) if outcome is not None else None
        if special is not None:
            return special
        if is_user_error(exc):
            report_user_error(exc)
            return EXIT_USER_ERROR
        traceback.print_exc()  # a bug: the whole story
        sys.stderr.flush()
        return EXIT_BUG
    return EXIT_OK if code is None else int(code)
