"""Reading weight files and slicing state dicts: the bottom of megraphau.model's imports (next to
facts.py). backbone.py, mae_vit.py and checkpoint.py build on this; it imports none of them.

Every .pth this project reads goes through load_weights_only, which looks at the file before
torch does (inspect_checkpoint_file): its size against what its zip entries unpack to, and the
pickle instructions it holds, listed with pickletools without executing any of them. That is how
a refusal names what a file asks for (e.g. posix.system) whatever torch's own message says, and
how a file torch's weights-only reader refuses is told apart from a damaged one.
"""
from __future__ import annotations

import _compat_pickle  # the Python 2 -> 3 name mapping every unpickler (torch's too) applies to GLOBAL
import pickle
import pickletools
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megraphau.errors import UserError

try:  # torch's private allowlist tables: the exact list its weights-only reader checks against
    from torch import _weights_only_unpickler as _torch_weights_only
except ImportError:  # a torch that moved them: allowed_globals falls back to what checkpoints need
    _torch_weights_only = None



class CheckpointMismatchError(UserError, ValueError):
    """The file does not fit the model (keys, shapes) or contradicts what was asked for."""


class CheckpointFileError(UserError, ValueError):
    """The file is not a readable checkpoint (truncated, not a torch file, no state dict, or its
    facts contradict its weights)."""


class UnsafeCheckpointError(CheckpointFileError):
    """The file needs full unpickling (it could run code); it is never loaded."""


class NonFiniteWeightsError(CheckpointFileError):
    """The file's weights hold NaN or Inf values (a run that diverged, or a damaged file)."""


#: refuse a zip whose entries unpack to more than this many times the file's size (torch writes
#: its entries uncompressed, so a real checkpoint unpacks to about its own size) ...
MAX_UNPACK_RATIO = 50
#: ... (the ratio is only looked at above this size, so that tiny files are never refused) ...
UNPACK_RATIO_FLOOR = 64 * 2**20
#: ... or to more than this in all
MAX_UNPACKED_BYTES = 16 * 2**30

_ZIP_MAGIC = b"PK\x03\x04"  # what torch.load looks at to take the zip reader
_LEGACY_PICKLES = 5  # legacy files: magic number, protocol, system info, the object, storage keys
#: the pickle instructions torch's weights-only reader executes (anything else it refuses)
_WEIGHTS_ONLY_OPCODES = frozenset(
    "GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE "
    "NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT "
    "BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP".split())
_STRING_OPCODES = frozenset("SHORT_BINUNICODE BINUNICODE BINUNICODE8 UNICODE STRING BINSTRING SHORT_BINSTRING".split())


@dataclass
class PickleScan:
    """What the pickles of a file ask for, read without executing anything.

    globals: every global (module.name) they import, in order of first use; one that cannot be
    resolved without running the pickle is given as '<...>'. unsupported: instructions torch's
    weights-only reader does not execute. complete: every pickle parsed up to its STOP; problem:
    why not (a damaged, truncated or non-pickle file).
    """
    globals: list = field(default_factory=list)
    unsupported: list = field(default_factory=list)
    complete: bool = True
    problem: str | None = None
    protocol: int | None = None  # the highest pickle protocol a PROTO instruction names

    def add(self, seq: list, item: str) -> None:
        if item not in seq:
            seq.append(item)


def _full_name(module: str, name: str) -> str:
    """module.name as an unpickler resolves it (Python 2 names mapped as pickle and torch do)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def allowed_globals() -> set:
    """The globals torch.load(weights_only=True) imports: its built-in allowlist and whatever the
    process added with torch.serialization.add_safe_globals."""
    try:
        return (set(_torch_weights_only._get_allowed_globals())
                | set(_torch_weights_only._get_user_allowed_globals()))
    except AttributeError:  # a torch without them: what every checkpoint needs
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.FloatStorage", "torch.DoubleStorage", "torch.HalfStorage", "torch.BFloat16Storage",
                "torch.LongStorage", "torch.IntStorage", "torch.ByteStorage", "torch.BoolStorage"}


class _Bounded:
    """A binary stream that never reads past `size` bytes, so a length field in a hostile pickle
    cannot make the scan allocate more than the file holds."""

    def __init__(self, stream, size: int):
        self._stream, self._left, self._pos = stream, size, 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        self._pos += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._stream.readline(min(self._left, 1 << 20))
        self._left -= len(data)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos


def _scan_one_pickle(stream, scan: PickleScan) -> list:
    """Walk one pickle up to its STOP, recording into `scan`; returns [(opcode name, arg), ...] of
    its first three instructions (for the legacy magic-number check)."""
    head, recent, memo = [], [], {}  # recent: what the last instructions pushed (strings, else None)
    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        if len(head) < 3:
            head.append((name, arg))
        if name == "PROTO":
            scan.protocol = max(scan.protocol or 0, arg)
        if name not in _WEIGHTS_ONLY_OPCODES:
            scan.add(scan.unsupported, name)
        if name in ("GLOBAL", "INST"):
            scan.add(scan.globals, _full_name(*str(arg).split(" ", 1)) if " " in str(arg) else str(arg))
        elif name == "STACK_GLOBAL":
            module, attr = recent if len(recent) == 2 else (None, None)
            resolved = isinstance(module, str) and isinstance(attr, str)
            scan.add(scan.globals, _full_name(module, attr) if resolved else "<a global named at run time>")
        elif name in ("EXT1", "EXT2", "EXT4"):
            target = pickle.copyreg._inverted_registry.get(arg)  # the extension registry: a read, not a call
            scan.add(scan.globals, f"{target[0]}.{target[1]}" if target else f"<copyreg extension {arg}>")
        if name in _STRING_OPCODES:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1] if recent else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        elif name not in ("FRAME", "PROTO"):
            recent.append(None)
        del recent[:-2]
    return head


def _scan_legacy(path: Path, size: int) -> PickleScan:
    """A non-zip file: torch's legacy format (5 pickles, then raw tensor bytes) or a bare pickle."""
    scan = PickleScan()
    with open(path, "rb") as fh:
        stream = _Bounded(fh, size)
        looks_like_pickle = fh.peek(1)[:1] == b"\x80"  # a PROTO: pickled by Python, not text read as opcodes
        for index in range(_LEGACY_PICKLES):
            try:
                head = _scan_one_pickle(stream, scan)
            except Exception as exc:  # any parse failure means the same: damaged
                scan.complete = False
                scan.problem = f"the pickle breaks at byte {stream.tell()}: {exc}"
                if not looks_like_pickle and index == 0:  # text or other bytes read as opcodes
                    scan.globals, scan.unsupported = [], []
                    scan.problem = "neither a zip archive nor a pickle"
                break
            magic = [name for name, _ in head[:2]] == ["PROTO", "LONG1"] \
                and head[1][1] == torch.serialization.MAGIC_NUMBER
            if index == 0 and not magic:
                break  # a bare pickle, not torch's legacy format: the one pickle is all there is
    return scan


def inspect_checkpoint_file(path: Path) -> PickleScan:
    """Look at a checkpoint file before torch reads it; nothing in it is executed.

    Raises CheckpointFileError for a zip that unpacks to far more than its size (a zip bomb) or is
    damaged, UnsafeCheckpointError for a TorchScript archive (a program) and for pickles that
    import globals outside torch's weights-only allowlist (naming them). Otherwise returns the scan,
    which load_weights_only uses to tell an unsafe file from a damaged one if torch refuses it.
    """
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"{path}: not a readable checkpoint (an empty file)")
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == _ZIP_MAGIC
    if not is_zip:
        scan = _scan_legacy(path, size)
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                unpacked = sum(info.file_size for info in infos)
                if unpacked > MAX_UNPACKED_BYTES or (unpacked > UNPACK_RATIO_FLOOR
                                                     and unpacked > MAX_UNPACK_RATIO * size):
                    raise CheckpointFileError(
                        f"{path}: refused, NOT loaded: its zip entries unpack to {_size(unpacked)} from a "
                        f"{_size(size)} file (torch stores checkpoints uncompressed; this looks like a zip bomb)")
                records = {info.filename.split("/", 1)[-1] for info in infos}
                if "constants.pkl" in records or any(r.startswith("code/") for r in records):
                    raise UnsafeCheckpointError(
                        f"{path}: refused, NOT loaded: a TorchScript archive (a program, not a checkpoint); "
                        f"load it with torch.jit.load in your own code if you trust its source")
                scan = PickleScan()
                for info in infos:
                    if info.filename.endswith(".pkl"):
                        with zf.open(info) as member:
                            stream = _Bounded(member, info.file_size)
                            try:
                                _scan_one_pickle(stream, scan)
                            except Exception as exc:  # any parse failure: damaged
                                scan.complete = False
                                scan.problem = f"{info.filename} breaks at byte {stream.tell()}: {exc}"
        except CheckpointFileError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            raise CheckpointFileError(f"{path}: not a readable checkpoint (damaged or truncated zip archive: "
                                      f"{first_line(exc)})") from None
    allowed = allowed_globals()
    refused = [g for g in scan.globals if g not in allowed]
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise UnsafeCheckpointError(
            f"{path}: refused, NOT loaded: unpickling it would import and call {', '.join(refused[:3])}{more}, "
            f"which could run code (only tensors and plain values are loaded). Load such a file only in your "
            f"own code, with torch.load(weights_only=False), if you trust its source.")
    return scan


def load_weights_only(path: str | Path, mmap: bool = False):
    """torch.load(path, weights_only=True) and nothing else: every .pth this project reads goes
    through here, after inspect_checkpoint_file (which refuses a file whose pickles import anything
    besides tensors and plain values, naming what, before torch sees it). If torch still refuses
    the file: a pickle that parsed cleanly uses instructions only a full (code-running) unpickler
    executes, an UnsafeCheckpointError; one that did not parse is a damaged file, a
    CheckpointFileError, as is any other failure (a truncated zip, not a torch file). Messages are
    one line naming the file; torch's warnings (e.g. about the pickle protocol) are not shown.
    mmap: tensors stay on disk until used (to read a checkpoint's facts without reading its
    weights); a legacy (non-zip) file, which cannot be mapped, is read normally."""
    path = Path(path)
    scan = inspect_checkpoint_file(path)
    with open(path, "rb") as fh:
        mmap = mmap and fh.read(4) == _ZIP_MAGIC
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        # torch's own text suggests weights_only=False, which is exactly what must not be done: the
        # message comes from what the scan found, not from torch's wording
        if not scan.complete:  # the pickle itself is broken: truncated, damaged or not a torch file
            raise CheckpointFileError(f"{path}: not a readable checkpoint (damaged, truncated or not a torch "
                                      f"file: {scan.problem})") from None
        if isinstance(exc, pickle.UnpicklingError) and scan.unsupported:
            raise UnsafeCheckpointError(
                f"{path}: refused, NOT loaded: it was pickled with instructions torch's weights-only reader "
                f"does not execute ({', '.join(scan.unsupported[:4])}; pickle protocol {scan.protocol}), so "
                f"reading it needs full unpickling, which could run code. If you trust its source, re-save it "
                f"in your own code with torch.save (pickle protocol 2).") from None
        if isinstance(exc, pickle.UnpicklingError):  # the weights-only reader refused what it holds
            raise UnsafeCheckpointError(
                f"{path}: refused, NOT loaded: the file holds Python objects besides tensors and plain "
                f"values, and unpickling them could run code. Only load such a file in your own code, "
                f"with torch.load(weights_only=False), if you trust its source.") from None
        # the pickles are whole but the rest is not (a truncated legacy file's tensor bytes, ...)
        raise CheckpointFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                                  f"{first_line(exc)})") from None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def non_finite_tensors(state_dict: dict) -> list:
    """Names of the floating-point tensors of `state_dict` holding NaN or Inf."""
    return [k for k, v in state_dict.items()
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sub_state_dict(state_dict: dict, prefix: str) -> OrderedDict:
    """Pop the keys under `prefix` out of `state_dict`, returned without the prefix."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    return OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in keys)
