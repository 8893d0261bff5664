"""Writing the SYNTH data set: a BP4D-style image tree plus the 3-fold lists
(:func:`generate_synthetic_dataset`), generated once on first use (:func:`ensure_synthetic_dataset`,
a marker file with the parameters, a file lock against concurrent generators)."""
from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
from filelock import FileLock
from tqdm import tqdm

from megraphau.data.lists import write_fold_lists
from megraphau.errors import OutputWriteError
from megraphau.paths import DATA_DIR
from megraphau.synth.draw import render_face
from megraphau.synth.params import SYNTH_AUS, sample_identity, sample_labels, sample_params

DEFAULT_ROOT = DATA_DIR / "SYNTH"
MARKER_NAME = ".synth_complete.json"
GENERATOR_VERSION = 2  # 2: exact numpy drawing, same pixels on every machine


def _subject_names(subjects_per_part: int) -> List[List[str]]:
    n = 3 * subjects_per_part
    width = max(2, len(str(n)))
    names = [f"S{i + 1:0{width}d}" for i in range(n)]
    return [names[k * subjects_per_part:(k + 1) * subjects_per_part] for k in range(3)]


def _generation_config(subjects_per_part, tasks, frames, seed, size) -> dict:
    return dict(version=GENERATOR_VERSION, subjects_per_part=int(subjects_per_part),
                tasks=int(tasks), frames=int(frames), seed=int(seed), size=int(size),
                aus=list(SYNTH_AUS))


def generate_synthetic_dataset(root, subjects_per_part: int = 4, tasks: int = 2, frames: int = 30,
                               seed: int = 0, size: int = 256, quality: int = 95,
                               progress: bool = False) -> Path:
    """Write the SYNTH data set under ``root`` and return ``root`` as a Path.

    ``root/img/{subject}/{task}/{frame}.jpg`` (subjects S01.. in three parts of
    ``subjects_per_part``, tasks T1.., frames 1..``frames``; each subject one fixed identity,
    each frame fresh labels and jitter) and the subject-independent 3-fold lists in ``root/list/``
    with prefix "SYNTH" (written by ``lists.write_fold_lists``). Identical bytes for the same
    arguments, on every machine tried (package docstring). A marker file with the parameters is
    written last.
    """
    if min(subjects_per_part, tasks, frames) < 1:
        raise ValueError(f"generate_synthetic_dataset: subjects_per_part, tasks and frames must be "
                         f">= 1, got {subjects_per_part}, {tasks}, {frames}")
    root = Path(root)
    config = _generation_config(subjects_per_part, tasks, frames, seed, size)
    marker = clear_earlier_set(root, MARKER_NAME)
    # Pass 1: labels of every sequence. Seeds per subject and per task, so a subject's images do
    # not depend on how many other subjects there are.
    sequences = []  # (part, subject, task, labels (frames, 12), rng for the frames' jitter)
    for index, (part, subject) in enumerate(
            (k, s) for k, names in enumerate(_subject_names(subjects_per_part)) for s in names):
        identity = sample_identity(np.random.default_rng([seed, index]))
        for t in range(tasks):
            rng = np.random.default_rng([seed, index, t + 1])
            sequences.append((part, subject, f"T{t + 1}", identity, sample_labels(rng, frames), rng))
    # Every AU must occur in every part (class weights divide by the training prevalence): in
    # tiny sets switch a missing AU on in one frame of the part.
    fix_rng = np.random.default_rng([seed, 10**6])
    for part in range(3):
        seqs = [seq for seq in sequences if seq[0] == part]
        stacked = np.concatenate([seq[4] for seq in seqs])
        for col in np.flatnonzero(stacked.sum(0) == 0):
            seq = seqs[fix_rng.integers(len(seqs))]
            seq[4][fix_rng.integers(frames), col] = 1
    # Pass 2: render and write.
    parts: List[List[Tuple[str, List[int]]]] = [[], [], []]
    bar = None
    if progress:
        bar = tqdm(total=len(sequences) * frames, desc="SYNTH images", unit="img")
    for part, subject, task, identity, labels, rng in sequences:
        folder = root / "img" / subject / task
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            image = render_face(labels[f], sample_params(rng, identity), size=size)
            rel = f"{subject}/{task}/{f + 1}.jpg"
            if not cv2.imwrite(str(root / "img" / rel), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OutputWriteError(f"cannot write {root / 'img' / rel} (OpenCV could not write it: a full "
                                       f"disk or a read-only folder?)")
            parts[part].append((rel, [int(v) for v in labels[f]]))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    write_fold_lists(root / "list", "SYNTH", parts)
    config["num_images"] = sum(len(p) for p in parts)
    marker.write_text(json.dumps(config, indent=1) + "\n")
    return root


def ensure_synthetic_dataset(root=None, **kwargs) -> Path:
    """Return the SYNTH root (default ``<repo>/data/SYNTH``), generating it first when it is
    missing, incomplete (no marker: an interrupted run) or made with other parameters."""
    return ensure_generated(generate_synthetic_dataset, DEFAULT_ROOT if root is None else Path(root), kwargs,
                            lambda a: _generation_config(a["subjects_per_part"], a["tasks"], a["frames"],
                                                         a["seed"], a["size"]), MARKER_NAME)


def clear_earlier_set(root: Path, marker_name: str) -> Path:
    """Remove an earlier generated set of ours under ``root`` (its marker, img/ and list/: it is
    replaced wholesale) and return the marker's path, written when the new set is complete."""
    marker = root / marker_name
    if marker.exists():
        marker.unlink()
        for sub in ("img", "list"):
            shutil.rmtree(root / sub, ignore_errors=True)
    return marker


def ensure_generated(generate, root: Path, kwargs: dict, wanted_config, marker_name: str) -> Path:
    """``generate(root, **kwargs)`` unless ``root``'s marker records a complete set made with the
    same parameters (``wanted_config(all arguments)``); returns ``root``."""
    sig = inspect.signature(generate)
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        raise TypeError(f"{generate.__name__.replace('generate_', 'ensure_')}: unknown arguments {sorted(unknown)}")
    args = {k: v.default for k, v in sig.parameters.items() if k != "root"}
    args.update(kwargs)
    wanted = wanted_config(args)
    if _marker_matches(root, wanted, marker_name):
        return root
    # Several processes (e.g. distributed ranks) may ask at once: one generates, the others wait
    # on the lock (an OS file lock: flock on POSIX, msvcrt on Windows) and then find the marker.
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):
        if _marker_matches(root, wanted, marker_name):
            return root
        return generate(root, **args)


def _marker_matches(root: Path, wanted: dict, marker: str = MARKER_NAME) -> bool:
    """Whether ``root/marker`` records a complete set made with the ``wanted`` parameters."""
    try:
        have = json.loads((root / marker).read_text())
    except (OSError, ValueError):
        return False
    return {k: have.get(k) for k in wanted} == wanted
