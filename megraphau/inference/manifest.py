"""manifest.jsonl: which inputs of a many-input run are finished, so that a run stopped by a
crash, Ctrl-C or preemption can be started again and do only the rest.

The first line holds the run's settings ({"settings": {...}}: the checkpoint and everything
that changes the rows); each further line is one finished input, written when its results are
complete on disk:

    {"input": "sub/clip.mp4", "status": "ok", "error": null, "items": 250, "faces": 250,
     "no_face": 0, "image": false, "seconds": 12.3, "worker": "host:pid"}

status "error" carries the input's one-line error (a corrupt file); such an input is finished
too (a rerun does not try it again; delete its line to retry it). Lines are appended and
flushed one at a time (and fsync'ed), so a killed run leaves complete lines, at most a torn last
one, which is ignored. A rerun with other settings into the same folder is refused: its rows
would not match the ones on disk. Ray is not needed here (scale.py uses it for both engines).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from megraphau.inference.inputs import DemoError

__all__ = ["MANIFEST", "Manifest", "ManifestMismatch"]

#: the manifest's file name in the output folder
MANIFEST = "manifest.jsonl"


class ManifestMismatch(DemoError):
    """The output folder holds a run with other settings."""


class Manifest:
    """The manifest of `out_dir` (read if there is one, else started with `settings`).

    done: {input name: its record} of the finished inputs. record() appends one.
    restart: start a new manifest even if one is there (the finished inputs are done again).
    """

    def __init__(self, out_dir: Path, settings: dict, restart: bool = False):
        self.path = Path(out_dir) / MANIFEST
        self.settings = json.loads(json.dumps(settings))  # as it reads back (tuples -> lists)
        self.done: dict = {}
        exists = self.path.is_file() and self.path.stat().st_size > 0 and not restart
        if exists:
            self._read()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if exists else "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        if not exists:
            self._write({"settings": self.settings})

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        keep = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        if keep < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
        lines = data[:keep].decode("utf-8").splitlines()
        try:
            first = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            first = {}
        if first.get("settings") != self.settings:
            differ = sorted(k for k in set(self.settings) | set(first.get("settings") or {})
                            if (first.get("settings") or {}).get(k) != self.settings.get(k))
            raise ManifestMismatch(f"{self.path}: the output folder holds a run with other settings "
                                   f"({', '.join(differ) or 'unreadable'}); use another --output, or delete "
                                   f"{MANIFEST} to start this folder again")
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "input" in record:
                self.done[record["input"]] = record

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def record(self, record: dict) -> None:
        """One finished input: a dict with at least "input" (its name) and "status"."""
        self._write(record)
        self.done[record["input"]] = record

    def get(self, name: str) -> Optional[dict]:
        return self.done.get(name)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
