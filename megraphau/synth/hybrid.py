"""SYNTH in OpenGraphAU's hybrid layout: 41 AU columns, several sources that each code only some AUs.

OpenGraphAU trains on a hybrid of six data sets (megraphau/data/hybrid.py), each of which codes its
own subset of the 41 AUs (27 main AUs, then 14 left/right ones); an AU a data set does not code is
-1 (unknown) in its frames, and the loss and metrics leave it out. This module draws the same
situation with the SYNTH renderer so the 41-AU recipe runs offline:

- The renderer draws the 12 SYNTH AUs, all of them main AUs of OpenGraphAU; they fill their own
  columns (:data:`DRAWN_COLUMNS`). Every other main AU is -1 in every frame: no source codes it,
  since no image could show it.
- The left/right columns (AUL1 ... AUR14) are -1 in every frame: the renderer draws every cue on
  both sides at once, so a one-sided AU cannot be seen and no label is made for it.
- Four sources (:data:`SOURCES`), named after the real data sets whose coding they copy (their
  coded AUs among the drawn ones), each with its own subjects. A frame shows all 12 drawn AUs as
  its labels say, but its source writes only the AUs it codes: the others are -1 although they may
  be visible, as in the real hybrid.
- Subject-disjoint train / val / test splits per source, concatenated in source order into the
  release's files ``list/hybrid_{train,val,test}_img_path.txt``, ``hybrid_{split}_label.txt`` (41
  ints a line) and ``hybrid_train_weight.txt`` (one line of 41 "%f" values, tab-separated). The
  release's weight formula has no finite value for an AU that is never coded, so the weights are
  those of lists.compute_class_weights_coded: the release's formula over the coded AUs, 1 for the
  others (whose weight the loss never uses).
- For the training scripts' fold machinery, fold 1 as ``tool/prepare_lists.py --dataset
  OpenGraphAU`` writes it for the real hybrid: train = hybrid train, test = hybrid test, prefix
  ``SYNTH_OpenGraphAU`` (the config megraphau/configs/SYNTH_OpenGraphAU.yaml).

Images: ``img/{source}/{subject}/{task}/{frame}.jpg``. Same bytes for the same arguments, from
the same drawing as SYNTH (package docstring).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from megraphau.data.hybrid import HYBRID_AUS, SPLITS, write_hybrid_lists
from megraphau.data.lists import compute_class_weights_coded, write_split_lists
from megraphau.paths import DATA_DIR
from megraphau.synth.draw import render_face
from megraphau.synth.params import SYNTH_AUS, sample_identity, sample_labels, sample_params
from megraphau.synth.writer import clear_earlier_set, ensure_generated

HYBRID_ROOT = DATA_DIR / "SYNTH_OpenGraphAU"
HYBRID_MARKER = ".synth_hybrid_complete.json"
HYBRID_VERSION = 1
#: Prefix of the fold-1 lists: the name of megraphau/configs/SYNTH_OpenGraphAU.yaml.
HYBRID_PREFIX = "SYNTH_OpenGraphAU"
#: Column of each drawn AU (SYNTH_AUS order) among OpenGraphAU's 41.
DRAWN_COLUMNS = tuple(HYBRID_AUS.index(str(au)) for au in SYNTH_AUS)
#: (source, AUs it codes): each copies the coding of a real hybrid data set, restricted to the drawn
#: AUs (BP4D: 1 2 4 6 7 10 12 14 15 17 23 24; DISFA: 1 2 4 5 6 9 12 15 17 20 25 26; CK+: 25 AUs,
#: all 12 drawn ones among them; Aff-Wild2: 1 2 4 6 7 10 12 15 23 24 25 26).
SOURCES: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("SynBP4D", (1, 2, 4, 6, 7, 12, 15, 17)),
    ("SynDISFA", (1, 2, 4, 5, 6, 9, 12, 15, 17, 25, 26)),
    ("SynCK", tuple(SYNTH_AUS)),
    ("SynAffW", (1, 2, 4, 6, 7, 12, 15, 25, 26)),
)


def coded_mask(aus: Sequence[int]) -> np.ndarray:
    """(12,) bool over SYNTH_AUS: which drawn AUs a source codes."""
    unknown = set(aus) - set(SYNTH_AUS)
    if unknown:
        raise ValueError(f"AUs {sorted(unknown)} are not drawn by the SYNTH renderer (it draws {SYNTH_AUS})")
    return np.array([au in aus for au in SYNTH_AUS])


def to_hybrid_rows(labels: np.ndarray, coded: np.ndarray) -> np.ndarray:
    """(M, 12) drawn 0/1 labels and a source's (12,) coded mask -> (M, 41) int64 rows: the coded
    AUs in their columns, -1 everywhere else."""
    rows = np.full((labels.shape[0], len(HYBRID_AUS)), -1, dtype=np.int64)
    cols = np.asarray(DRAWN_COLUMNS)[coded]
    rows[:, cols] = labels[:, coded]
    return rows


def _subjects(source: str, counts: Sequence[int]) -> List[Tuple[str, str]]:
    """[(split, subject)] of one source: counts = subjects in train, val, test."""
    names = [f"{source[3]}{i + 1:02d}" for i in range(sum(counts))]  # e.g. B01 for SynBP4D
    splits = [s for s, n in zip(SPLITS, counts) for _ in range(n)]
    return list(zip(splits, names))


def _generation_config(subjects, tasks, frames, seed, size) -> dict:
    return dict(version=HYBRID_VERSION, layout="hybrid", subjects=[int(n) for n in subjects],
                tasks=int(tasks), frames=int(frames), seed=int(seed), size=int(size),
                sources={name: list(aus) for name, aus in SOURCES})


def generate_hybrid_synthetic_dataset(root, subjects: Sequence[int] = (3, 1, 2), tasks: int = 2,
                                      frames: int = 30, seed: int = 0, size: int = 256, quality: int = 95,
                                      progress: bool = False) -> Path:
    """Write the hybrid SYNTH set under ``root`` (module docstring) and return ``root`` as a Path.

    subjects: subjects of each source in train, val and test (each a fixed identity, in one split
    only); tasks x frames images per subject. Every AU a source codes occurs in each of its splits
    (in tiny sets one frame is switched on, in the image too). Identical bytes for the same
    arguments. A marker file with the parameters is written last.
    """
    subjects = tuple(int(n) for n in subjects)
    if len(subjects) != 3 or min(subjects) < 1 or min(tasks, frames) < 1:
        raise ValueError(f"generate_hybrid_synthetic_dataset: need 3 subject counts (train, val, test) >= 1 "
                         f"and tasks, frames >= 1, got {subjects}, {tasks}, {frames}")
    root = Path(root)
    config = _generation_config(subjects, tasks, frames, seed, size)
    marker = clear_earlier_set(root, HYBRID_MARKER)
    # Pass 1: labels of every sequence, seeded per source, subject and task (a subject's images do
    # not depend on how many other subjects there are).
    sequences = []  # (source index, split, rel folder, identity, labels (frames, 12), rng)
    for s, (source, _) in enumerate(SOURCES):
        for index, (split, subject) in enumerate(_subjects(source, subjects)):
            identity = sample_identity(np.random.default_rng([seed, s + 1, index]))
            for t in range(tasks):
                rng = np.random.default_rng([seed, s + 1, index, t + 1])
                sequences.append((s, split, f"{source}/{subject}/T{t + 1}", identity,
                                  sample_labels(rng, frames), rng))
    fix_rng = np.random.default_rng([seed, 10**6])
    for s, (_, aus) in enumerate(SOURCES):
        coded = coded_mask(aus)
        for split in SPLITS:
            seqs = [seq for seq in sequences if seq[0] == s and seq[1] == split]
            stacked = np.concatenate([seq[4] for seq in seqs])
            for col in np.flatnonzero((stacked.sum(0) == 0) & coded):
                seq = seqs[fix_rng.integers(len(seqs))]
                seq[4][fix_rng.integers(frames), col] = 1
    # Pass 2: render and write.
    rows: Dict[str, Tuple[List[str], List[np.ndarray]]] = {split: ([], []) for split in SPLITS}
    bar = tqdm(total=len(sequences) * frames, desc="hybrid SYNTH images", unit="img") if progress else None
    for s, split, folder, identity, labels, rng in sequences:
        (root / "img" / folder).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            image = render_face(labels[f], sample_params(rng, identity), size=size)
            rel = f"{folder}/{f + 1}.jpg"
            if not cv2.imwrite(str(root / "img" / rel), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OSError(f"could not write {root / 'img' / rel}")
            rows[split][0].append(rel)
            if bar is not None:
                bar.update()
        rows[split][1].append(to_hybrid_rows(labels, coded_mask(SOURCES[s][1])))
    if bar is not None:
        bar.close()
    splits = {split: (paths, np.concatenate(labels)) for split, (paths, labels) in rows.items()}
    names = [f"AU{a}" for a in HYBRID_AUS]
    weights = compute_class_weights_coded(splits["train"][1], names, f"{root}/list/hybrid_train_label.txt")
    list_dir = root / "list"
    write_hybrid_lists(list_dir, splits, weights=weights)
    # 41 x 41 relations per frame are not written: the training computes them from the labels
    write_split_lists(list_dir, HYBRID_PREFIX, 1, splits["train"], splits["test"], weights, relations=False)
    config["num_images"] = sum(len(p) for p, _ in splits.values())
    config.update({f"num_{split}": len(splits[split][0]) for split in SPLITS})
    marker.write_text(json.dumps(config, indent=1) + "\n")
    return root


def ensure_hybrid_synthetic_dataset(root=None, **kwargs) -> Path:
    """Return the hybrid SYNTH root (default ``<repo>/data/SYNTH_OpenGraphAU``), generating it first
    when it is missing, incomplete (no marker) or made with other parameters (a file lock keeps
    concurrent callers from generating it twice)."""
    return ensure_generated(generate_hybrid_synthetic_dataset, HYBRID_ROOT if root is None else Path(root), kwargs,
                            lambda a: _generation_config(a["subjects"], a["tasks"], a["frames"], a["seed"], a["size"]),
                            HYBRID_MARKER)
