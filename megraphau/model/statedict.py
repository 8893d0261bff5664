"""Reading weight files and slicing state dicts: the bottom of megraphau.model's imports (next to
facts.py). backbone.py, mae_vit.py and checkpoint.py build on this; it imports none of them.
"""
from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from megraphau.errors import UserError


class CheckpointMismatchError(UserError, ValueError):
    """The file does not fit the model (keys, shapes) or contradicts what was asked for."""


class CheckpointFileError(UserError, ValueError):
    """The file is not a readable checkpoint (truncated, not a torch file, no state dict)."""


class UnsafeCheckpointError(CheckpointFileError):
    """The file needs full unpickling (it could run code); it is never loaded."""


def load_weights_only(path: str | Path, mmap: bool = False):
    """torch.load(path, weights_only=True) and nothing else: every .pth this project reads goes
    through here. A file that needs full unpickling (which can run arbitrary code) is refused with
    UnsafeCheckpointError, never loaded; a truncated or non-torch file is a CheckpointFileError.
    Both messages are one line naming the file. mmap: tensors stay on disk until used (to read a
    checkpoint's facts without reading its weights; zip-format files only)."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise above the refusal line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch names a global it refuses ("Unsupported global: GLOBAL builtins.print", "Trying to
        # load unsupported GLOBAL posix.system whose module posix is blocked"): the file wants to
        # import and call something; any other unpickling failure is a damaged file
        text = str(exc).lower()
        if "unsupported global" in text or "not an allowed global" in text:
            raise UnsafeCheckpointError(
                f"{path}: refused, NOT loaded: the file holds Python objects besides tensors and plain "
                f"values, and unpickling them could run code. Only load such a file in your own code, "
                f"with torch.load(weights_only=False), if you trust its source.") from None
        # torch's own text here suggests weights_only=False, which is exactly what must not be done
        raise CheckpointFileError(f"{path}: not a readable checkpoint (damaged, truncated or not a torch "
                                  f"file: the unpickler stopped)") from None
    except Exception as exc:  # truncated, or not a torch file at all
        raise CheckpointFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                                  f"{first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sub_state_dict(state_dict: dict, prefix: str) -> OrderedDict:
    """Pop the keys under `prefix` out of `state_dict`, returned without the prefix."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    return OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in keys)
