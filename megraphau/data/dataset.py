"""AU data sets of ME-GraphAU (IJCAI-ECAI 2022): configs, image transforms and the Dataset.

Public API (stable; the training, test and demo scripts code against exactly this):

- :class:`DatasetError` (a ``ValueError``): bad config, list file or image; the message
  names the file (and line).
- :func:`load_dataset_config`: ``'BP4D'``, ``'DISFA'``, ``'SYNTH'``, ``'OpenGraphAU'`` or a
  path to a ``.yaml`` -> a validated dict.
- :func:`build_transform`: the release's train / test transforms (docs/training.md) without the flip,
  on uint8 tensors.
- :class:`AUDataset`: one split of one fold, from ``{dataset_path}/list/`` (the format of
  lists.py, written by ``tool/prepare_lists.py``) and ``{dataset_path}/img/``.

Labels are 0 / 1 and -1 for "unknown"; -1 entries are meant to be left out of the loss and
the metrics (the paper's protocol).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from torchvision.transforms import v2

from megraphau.data.lists import (
    DatasetError,
    check_values,
    list_file,
    read_class_weights,
    read_int_matrix,
    read_lines,
    relations_from_labels,  # noqa: F401  (part of this module's API)
)
from megraphau.paths import CONFIG_DIR, REPO_ROOT  # noqa: E402

NAMED_CONFIGS = ("BP4D", "DISFA", "SYNTH", "OpenGraphAU")
#: How a data set is split: 'folds' (subject-independent k-fold lists, ME-GraphAU) or 'hybrid'
#: (fixed train / val / test lists, OpenGraphAU): a config's `protocol`.
PROTOCOLS = ("folds", "hybrid")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["AUDataset", "DatasetError", "IMAGENET_MEAN", "IMAGENET_STD", "NAMED_CONFIGS", "PROTOCOLS",
           "build_transform", "load_dataset_config", "decode_image_file", "read_image", "relations_from_labels",
           "truncation_problem"]


# ----------------------------------------------------------------------------- config
def load_dataset_config(name_or_path: Union[str, os.PathLike]) -> dict:
    """Read and validate a dataset config.

    A known name (``BP4D``, ``DISFA``, ``SYNTH``, ``OpenGraphAU``, or any ``configs/{name}.yaml``
    of this package) reads ``megraphau/configs/{name}.yaml`` whatever the working directory; a
    path to a ``.yaml``/``.yml`` file reads that file.

    Returned keys: name, dataset_path (absolute; relative paths are taken from the repo root),
    num_classes, neighbor_num, au_names, au_descriptions (list or None), lam (float or None),
    crop_preset (a faces.CROP_PRESETS name or None: how demo.py crops faces for its models),
    flip_label_pairs (list of [i, j], default []), synthetic (bool, default False), defaults
    (mapping of parser defaults per script, default {}), protocol ('folds', default, or 'hybrid':
    train / val / test lists without folds), list_prefix (the lists' file-name prefix, default
    the name; OpenGraphAU's hybrid lists use the release's 'hybrid'), variant and paper_f1
    unchanged; any other key is an error (a typo would otherwise be ignored), with a "did you mean".
    ``name`` falls back to a ``dataset`` key, then to the file name.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise DatasetError(f"{path}: dataset config file not found")
    else:
        path = named_config_path(text)
    try:
        with open(path, "rb") as fh:  # a file, so that YAML errors name it
            raw = yaml.safe_load(fh)  # safe: a tag such as !!python/object is an error, never code
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not a valid dataset config ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return _validate_config(dict(raw), path)


def named_config_path(name: str) -> Path:
    """megraphau/configs/{name}.yaml of a built-in dataset, the name matched case-insensitively ('bp4d');
    DatasetError with a "did you mean" for a typo ('SYNHT')."""
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) or list(NAMED_CONFIGS)
    by_lower = {k.lower(): k for k in known}
    if name.lower() in by_lower:
        return CONFIG_DIR / f"{by_lower[name.lower()]}.yaml"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"; did you mean {by_lower[close[0]]}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}{hint} (known: {', '.join(known)}, or a path to a .yaml file)")


#: the keys a dataset config may hold (load_dataset_config's docstring); any other is a typo
CONFIG_KEYS = ("name", "dataset", "dataset_path", "num_classes", "neighbor_num", "au_names", "au_descriptions",
               "lam", "crop_preset", "flip_label_pairs", "synthetic", "defaults", "variant", "paper_f1",
               "protocol", "list_prefix")


def _validate_config(cfg: dict, path: Path) -> dict:
    unknown = [k for k in cfg if k not in CONFIG_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), CONFIG_KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DatasetError(f"{path}: unknown key {unknown[0]!r}{hint} (known: {', '.join(CONFIG_KEYS)})")
    cfg.setdefault("name", cfg.get("dataset", path.stem))
    for key in ("dataset_path", "num_classes", "neighbor_num", "au_names"):
        if key not in cfg:
            raise DatasetError(f"{path}: missing key '{key}'")
    for key in ("num_classes", "neighbor_num"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise DatasetError(f"{path}: '{key}' must be a positive integer, got {cfg[key]!r}")
    names = cfg["au_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: 'au_names' must be a list of strings like AU1")
    n = cfg["num_classes"]
    if len(names) != n:
        raise DatasetError(f"{path}: num_classes is {n} but au_names has {len(names)} entries")
    desc = cfg.get("au_descriptions")
    if desc is not None and (not isinstance(desc, list) or len(desc) != n):
        raise DatasetError(f"{path}: au_descriptions must be a list of {n} entries "
                           f"(one per AU), got {desc!r:.80}")
    cfg["au_descriptions"] = desc
    lam = cfg.get("lam")
    if lam is not None and not isinstance(lam, (int, float)):
        raise DatasetError(f"{path}: 'lam' must be a number, got {lam!r}")
    cfg["lam"] = None if lam is None else float(lam)
    pairs = cfg.get("flip_label_pairs") or []
    if not isinstance(pairs, list):
        raise DatasetError(f"{path}: flip_label_pairs must be a list of [i, j] pairs")
    seen = set()
    for pair in pairs:
        ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
              and all(isinstance(i, int) and 0 <= i < n for i in pair) and pair[0] != pair[1])
        if not ok or seen & set(pair):
            raise DatasetError(f"{path}: flip_label_pairs entry {pair!r} must be two different "
                               f"label indices in 0..{n - 1}, each index in at most one pair")
        seen.update(pair)
    cfg["flip_label_pairs"] = [list(p) for p in pairs]
    preset = cfg.get("crop_preset")
    if preset is not None:
        from megraphau.inference.faces import CROP_PRESETS

        if preset not in CROP_PRESETS:
            raise DatasetError(f"{path}: crop_preset {preset!r} is not one of {', '.join(CROP_PRESETS)}")
    cfg["crop_preset"] = preset
    cfg["synthetic"] = bool(cfg.get("synthetic", False))
    protocol = cfg.get("protocol", "folds")
    if protocol not in PROTOCOLS:
        raise DatasetError(f"{path}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    cfg["protocol"] = protocol
    prefix = cfg.get("list_prefix", cfg["name"])
    if not isinstance(prefix, str) or not prefix or "/" in prefix:
        raise DatasetError(f"{path}: list_prefix must be a file-name prefix such as hybrid, got {prefix!r}")
    cfg["list_prefix"] = prefix
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise DatasetError(f"{path}: 'defaults' must be a mapping, got {defaults!r:.80}")
    cfg["defaults"] = defaults
    dataset_path = Path(str(cfg["dataset_path"]))
    cfg["dataset_path"] = str(dataset_path if dataset_path.is_absolute()
                              else REPO_ROOT / dataset_path)
    cfg["config_path"] = str(path)
    return cfg


# ----------------------------------------------------------------------------- transforms
def resize_for_crop(crop_size: int) -> int:
    """Shorter-side resize before cropping: the release's 256 for 224 crops, scaled alike for
    other crop sizes (e.g. 128 for 112) so a crop always covers the same part of the face."""
    return round(crop_size * 256 / 224)


def build_transform(train: bool, crop_size: int = 224, resize: Optional[int] = None) -> Callable:
    """The release's image transform without the horizontal flip.

    Input: a uint8 tensor (3, H, W) (a PIL image or HWC uint8 array also works). Output: float32
    (3, crop_size, crop_size), ImageNet-normalised.
    train: Resize(resize) of the shorter side -> RandomCrop(crop_size) drawn on the RESIZED image
    -> ColorJitter(brightness, contrast, saturation 0.4, hue 0) -> float -> Normalize.
    test: Resize(resize) -> CenterCrop(crop_size) -> float -> Normalize.
    Resizing and jitter run on uint8 (like PIL does), which is several times faster than on
    float; the flip is left to :class:`AUDataset` because it may have to swap L/R labels.
    Randomness comes from torch's RNG (reproducible under ``torch.manual_seed`` and DataLoader
    worker seeding). The pipeline runs single-threaded (see :class:`SingleThreaded`); the
    torchvision ``Compose`` is its ``.transform``.
    """
    resize = resize_for_crop(crop_size) if resize is None else resize  # 256 for crop 224
    steps = [v2.ToImage(), v2.Resize(resize, antialias=True)]
    if train:
        steps += [v2.RandomCrop(crop_size),
                  v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)]
    else:
        steps += [v2.CenterCrop(crop_size)]
    steps += [v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    return SingleThreaded(v2.Compose(steps))


class SingleThreaded:
    """Run a per-image transform with one intra-op thread.

    DataLoader workers already use one thread; in the main process (num_workers=0) several
    threads on one small image mostly synchronise: on a busy 2-core machine the transform is
    ~8x slower with 2 threads than with 1. The thread count is restored afterwards.
    """

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        threads = torch.get_num_threads()
        if threads == 1:
            return self.transform(image)
        torch.set_num_threads(1)
        try:
            return self.transform(image)
        finally:
            torch.set_num_threads(threads)

    def __repr__(self) -> str:
        return f"SingleThreaded({self.transform!r})"


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # IEND chunk: type + its fixed CRC


def truncation_problem(data: bytes) -> Optional[str]:
    """Why an encoded image is cut short, judged on its bytes (cheap), or None.

    libjpeg decodes a truncated JPEG into an image whose missing rows are grey and only prints an
    anonymous "Premature end of JPEG file": such a file would be trained on. A complete JPEG ends
    with the end-of-image marker FF D9 (zero padding after it is allowed), a complete PNG with its
    IEND chunk."""
    if not data:
        return "empty file"
    if data.startswith(JPEG_START) and not data.rstrip(b"\0").endswith(JPEG_END):
        return "truncated JPEG: no end-of-image marker FF D9 at its end"
    if data.startswith(PNG_START) and not data.endswith(PNG_END):
        return "truncated PNG: no IEND chunk at its end"
    return None


def decode_image_file(path: Union[str, os.PathLike]) -> tuple[Optional[np.ndarray], str]:
    """(BGR uint8 image (H, W, 3), '') or (None, why it cannot be used: missing, unreadable,
    truncated (truncation_problem) or not decodable)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return None, "file not found" if isinstance(err, FileNotFoundError) else err.strerror
    problem = truncation_problem(data)
    if problem:
        return None, problem
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return (image, "") if image is not None else (None, "not a decodable image")


def read_image(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W); DatasetError naming it if it is
    missing, truncated or not decodable (decode_image_file).

    OpenCV decodes (torchvision's decoders are deprecated since 0.29); grey images get 3 channels.
    """
    image, problem = decode_image_file(path)
    if image is None:
        raise DatasetError(f"{path}: cannot read image ({problem}); tool/check_images.py lists every bad "
                           f"image of a data set")
    # BGR -> RGB by reversing the channel axis while transposing to (3, H, W): one copy, and no
    # OpenCV thread pool inside DataLoader workers.
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[::-1]))  # (3, H, W) uint8


class AUDataset(Dataset):
    """One split of one fold of an AU data set (BP4D / DISFA / SYNTH / OpenGraphAU lists).

    Files: ``{dataset_path}/list/{name}_{split}_img_path_fold{fold}.txt`` (paths relative to
    ``{dataset_path}/img/``), ``..._{split}_label_fold{fold}.txt`` (N ints per row, -1 unknown),
    ``{name}_weight_fold{fold}.txt`` (needed for split 'train'; the test split uses it when
    present, else all ones) and, for stage 2, ``{name}_train_AU_relation_fold{fold}.txt``.
    fold None: the hybrid protocol (config ``protocol: hybrid``): split 'train', 'val' or 'test'
    of ``{list_prefix}_{split}_img_path.txt`` / ``_label.txt`` and ``{list_prefix}_train_weight.txt``
    (lists.list_file).

    Items: stage 1 ``(image float (3, crop, crop), labels float (N,))``; stage 2 adds
    ``relation long (N*N,)`` (2*a_i + a_j at i*N + j, -1 where unknown; from the relation file
    for the train split when it exists, else from the labels). The train split flips
    horizontally with p 0.5 (torch RNG) and then swaps the config's ``flip_label_pairs``.
    ``transform`` (default :func:`build_transform`) gets the uint8 (3, H, W) image; the default
    resize is 256 for crop 224 and scales with other crop sizes (crop * 8/7).
    """

    def __init__(self, config: Union[dict, str], fold: int, split: str, stage: int = 1,
                 crop_size: int = 224, transform: Optional[Callable] = None,
                 dataset_path: Optional[Union[str, os.PathLike]] = None, validate: bool = True):
        if not isinstance(config, dict):
            config = load_dataset_config(config)
        splits = ("train", "test") if fold is not None else ("train", "val", "test")
        if split not in splits:
            raise DatasetError(f"split must be {' or '.join(map(repr, splits))}, got {split!r}")
        if stage not in (1, 2):
            raise DatasetError(f"stage must be 1 or 2, got {stage!r}")
        self.config = config
        self.name = config["name"]
        self.fold = None if fold is None else int(fold)
        self.split, self.stage, self.train = split, stage, split == "train"
        self.num_classes = int(config["num_classes"])
        self.au_names = list(config["au_names"])
        self.dataset_path = Path(dataset_path if dataset_path is not None
                                 else config["dataset_path"])
        self.list_dir = self.dataset_path / "list"
        self.img_dir = self.dataset_path / "img"
        self.crop_size = crop_size
        self.transform = transform if transform is not None else build_transform(
            self.train, crop_size)

        prefix = self.name if self.fold is not None else config.get("list_prefix", self.name)
        img_file = list_file(self.list_dir, prefix, "img_path", self.fold, split)
        label_file = list_file(self.list_dir, prefix, "label", self.fold, split)
        weight_file = list_file(self.list_dir, prefix, "weight", self.fold)
        relation_file = list_file(self.list_dir, prefix, "AU_relation", self.fold, "train")

        n = self.num_classes
        self.img_paths = read_lines(img_file)
        labels = read_int_matrix(label_file, n, "label")
        self.labels = check_values(label_file, labels, 1, "label")
        if len(self.labels) != len(self.img_paths):
            raise DatasetError(f"{label_file}: {len(self.labels)} label rows but {img_file} has "
                               f"{len(self.img_paths)} image paths")

        if weight_file.is_file():
            self.class_weights = torch.tensor(read_class_weights(weight_file, n), dtype=torch.float32)
        elif self.train:
            raise DatasetError(f"{weight_file}: class weight file not found (written by "
                               f"tool/prepare_lists.py with the lists)")
        else:
            self.class_weights = torch.ones(n)

        self.relations = None  # (M, N*N) int8 from the file, else computed per item
        if stage == 2 and self.train and relation_file.is_file():
            rel = read_int_matrix(relation_file, n * n, "relation")
            rel = check_values(relation_file, rel, 3, "relation")
            if len(rel) != len(self.img_paths):
                raise DatasetError(f"{relation_file}: {len(rel)} relation rows but {img_file} "
                                   f"has {len(self.img_paths)} image paths")
            self.relations = torch.from_numpy(rel.astype(np.int8))

        self.flip_label_pairs = [tuple(p) for p in config.get("flip_label_pairs") or []]
        perm = torch.arange(n)
        for i, j in self.flip_label_pairs:
            perm[i], perm[j] = j, i
        self._flip_perm = perm  # labels_after_flip = labels[perm]
        self._labels_t = torch.from_numpy(self.labels).float()  # (M, N)

        if validate:
            root = str(self.img_dir)  # os.path: ~4x faster than pathlib over 100k paths
            missing = [p for p in self.img_paths if not os.path.isfile(os.path.join(root, p))]
            if missing:
                shown = ", ".join(missing[:5])
                raise DatasetError(
                    f"{img_file}: {len(missing)} of {len(self.img_paths)} images missing under "
                    f"{self.img_dir} (first: {shown}); crop the faces with tool/crop_faces.py "
                    f"(see data/README.md)")

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, index: int):
        path = self.img_dir / self.img_paths[index]
        image = self.transform(read_image(path))
        labels = self._labels_t[index].clone()  # (N,)
        flipped = self.train and bool(torch.rand(()) < 0.5)
        if flipped:
            image = image.flip(-1)  # horizontal flip of (3, H, W); commutes with the jitter
            if self.flip_label_pairs:
                labels = labels[self._flip_perm]
        if self.stage == 1:
            return image, labels
        if self.relations is not None and not (flipped and self.flip_label_pairs):
            relation = self.relations[index].long()  # (N*N,)
        else:
            relation = relations_from_labels(labels)
        return image, labels, relation

    def __repr__(self) -> str:
        where = f"fold {self.fold}" if self.fold is not None else "hybrid"
        return (f"AUDataset({self.name}, {where}, {self.split}, stage {self.stage}: "
                f"{len(self)} images, {self.num_classes} AUs, {self.dataset_path})")
