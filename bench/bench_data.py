"""Images per second of one data-loader worker (num_workers=0: decode and transform in this one
process) for ME-GraphAU's train and test image pipelines:

- ours: dataset.read_image (OpenCV decode to a uint8 (3, H, W) tensor), dataset.build_transform
  on uint8 tensors, and for training the horizontal flip (p 0.5) that AUDataset applies;
- release-style: PIL open/convert, Resize(256), RandomCrop(224), RandomHorizontalFlip,
  ColorJitter(0.4, 0.4, 0.4, 0), ToTensor, Normalize (test: Resize, CenterCrop, ToTensor,
  Normalize), written here after the release's training and test transforms.

The bench writes its own 256x256 JPEG face-sized images (random smooth colour fields) to a
temporary folder; both pipelines read the same files, alternating rounds.

  python bench/bench_data.py --images 64 --rounds 3 [--markdown] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from megraphau.provenance import collect  # noqa: E402
from megraphau.tables import format_table, script_argv  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> list[Path]:
    """`count` JPEGs of size x size: smooth random colour fields with noise (JPEG-typical content)."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        path = folder / f"{k}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def release_style_transform(train: bool, crop_size: int = 224, resize: int = 256):
    """PIL pipeline in the release's style, flip included for training."""
    if train:
        steps = [T.Resize(resize), T.RandomCrop(crop_size), T.RandomHorizontalFlip(),
                 T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)]
    else:
        steps = [T.Resize(resize), T.CenterCrop(crop_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def release_style_loader(train: bool):
    transform = release_style_transform(train)

    def load(path: Path) -> torch.Tensor:
        with open(path, "rb") as f:
            return transform(Image.open(f).convert("RGB"))
    return load


def project_loader(train: bool):
    """dataset.read_image + dataset.build_transform (+ AUDataset's flip when training)."""
    from megraphau.data.dataset import build_transform, read_image
    transform = build_transform(train=train, crop_size=224, resize=256)

    def load(path: Path) -> torch.Tensor:
        image = transform(read_image(path))
        if train and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)  # AUDataset's horizontal flip
        return image
    return load


def project_available() -> str:
    """'' when dataset.build_transform and read_image import, else the reason."""
    try:
        from megraphau.data.dataset import build_transform, read_image  # noqa: F401
    except Exception as error:  # noqa: BLE001 - report any import problem, do not crash the bench
        return f"dataset.build_transform unavailable: {type(error).__name__}: {error}"
    return ""


def time_loaders(loaders: dict, paths: list[Path], rounds: int) -> dict[str, list[float]]:
    """Images/s of each loader per round over all paths; loaders alternate, order flipping per round."""
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for name in names:  # warm-up: imports, first-call caches
        loaders[name](paths[0])
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            load = loaders[name]
            start = time.perf_counter()
            for path in paths:
                out = load(path)
            rates[name].append(len(paths) / (time.perf_counter() - start))
            assert out.shape == (3, 224, 224) and out.dtype == torch.float32, (name, out.shape, out.dtype)
    return rates


def benchmark(args: argparse.Namespace) -> tuple[list[dict], str]:
    note = project_available()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        for split in args.splits:
            train = split == "train"
            loaders = {"release-style PIL": release_style_loader(train)}
            if not note:
                loaders["ours (dataset.py)"] = project_loader(train)
            rates = time_loaders(loaders, paths, args.rounds)
            base = statistics.median(rates["release-style PIL"])
            for name, values in rates.items():
                median = statistics.median(values)
                rows.append({"split": split, "pipeline": name, "images_per_s": median,
                             "ms_per_image": 1e3 / median, "speedup": median / base, "rounds": values})
    return rows, note


def render(rows: list[dict], markdown: bool) -> str:
    header = ["split", "pipeline", "img/s", "ms/img", "x release-style"]
    table = [header] + [[r["split"], r["pipeline"], f"{r['images_per_s']:.1f}", f"{r['ms_per_image']:.2f}",
                         f"{r['speedup']:.2f}"] for r in rows]
    return format_table(table[0], table[1:], markdown)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="256x256 JPEGs to write and load per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per pipeline (median reported)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as in a DataLoader worker)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--images, --rounds and --threads must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # a DataLoader worker runs OpenCV single-threaded too
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    rows, note = benchmark(args)
    print(f"one process (num_workers=0), {args.threads} torch thread(s), {args.images} 256x256 JPEGs, "
          f"decode included, median of {args.rounds} rounds")
    if note:
        print(f"note: {note}; only the release-style pipeline was measured")
    print(render(rows, args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"provenance": collect("cpu", argv=script_argv(__file__, argv)),
                                         "torch": torch.__version__, "note": note, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
