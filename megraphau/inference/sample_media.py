"""Media for benchmarks and tests, made from the public-domain photograph in tests/data: a video
of one real face moving, and a random-weight model saved the release's way. Used by
bench/bench_video.py, bench/bench_scale.py and the tests (one copy instead of one per script)."""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch

from megraphau.model import build_model
from megraphau.paths import REPO_ROOT

PHOTO = REPO_ROOT / "tests" / "data" / "astronaut.jpg"


def write_face_video(path: str | os.PathLike, frames: int, size: tuple[int, int] = (640, 480), fps: float = 25.0,
                     fourcc: str = "MJPG", photo: str | os.PathLike = PHOTO, blank: tuple = ()) -> Path:
    """A video of the astronaut photograph (256 px on a 640x480 frame, scaled 0.92-1.08x over 3 s)
    moving across a textured background (±9% of the width over 4 s, ±6% of the height over 5 s):
    one real face in every frame, except the frame numbers in `blank` (background only)."""
    path = Path(path)
    face = cv2.imread(str(photo))
    if face is None:
        raise FileNotFoundError(f"{photo}: cannot read the photograph")
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.clip(90 + 40 * np.sin(xx / 53.0) + 20 * np.cos(yy / 37.0), 0, 255).astype(np.uint8)
    background = np.repeat(background[:, :, None], 3, axis=2)
    side0 = min(256, int(0.8 * min(w, h)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} with codec {fourcc}")
    try:
        for k in range(frames):
            t = k / fps
            side = int(round(side0 * (1.0 + 0.08 * math.sin(2 * math.pi * t / 3.0))))
            scaled = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA if side < 256 else cv2.INTER_LINEAR)
            cx = w / 2 + 0.09 * w * math.sin(2 * math.pi * t / 4.0)
            cy = h / 2 + 0.06 * h * math.sin(2 * math.pi * t / 5.0)
            x0 = int(np.clip(round(cx - side / 2), 0, w - side))
            y0 = int(np.clip(round(cy - side / 2), 0, h - side))
            frame = background.copy()
            if k not in blank:
                frame[y0:y0 + side, x0:x0 + side] = scaled
            writer.write(frame)
    finally:
        writer.release()
    return path


def save_random_checkpoint(path: Path, arc: str, stage: int, num_classes: int = 12) -> Path:
    """A random-weight model saved the release's way ({'state_dict': {'module.' + key: tensor}})."""
    torch.manual_seed(0)
    model = build_model(stage, arc, num_classes, neighbor_num=4, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(2, 3, 224, 224))
    state = OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)
    return path


