"""Test inputs made of the real photographs in tests/data (public domain, tests/data/README):

- compose_video: two people whose face sizes cross (the NASA astronaut portrait on the left,
  growing; scikit-image's "camera" photograph on the right, shrinking), so that the detector's
  largest-first order swaps midway while each person stays on their side;
- write_video: frames to an MJPG .avi;
- mixed_folder: short videos, photos, a corrupt video and a file that is no input, in a folder;
- save_release_checkpoint: a tiny ResNet-18 model saved the release's way.
"""
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch

from megraphau.model import build_model

DATA = Path(__file__).resolve().parent / "data"
FRAMES, WIDTH, HEIGHT = 40, 640, 360


def compose_video(frames: int = FRAMES) -> list:
    """`frames` BGR frames of WIDTH x HEIGHT; the astronaut's patch grows from 100 to 220 px while
    moving right, the camera man's shrinks from 220 to 100 px while moving left; they never
    overlap (the astronaut's centre is always on the left half, the camera man's on the right)."""
    astronaut = cv2.imread(str(DATA / "astronaut.jpg"))
    camera = cv2.cvtColor(cv2.imread(str(DATA / "camera.jpg"), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    assert astronaut is not None and camera is not None
    ramp = np.linspace(70, 170, WIDTH, dtype=np.float64)  # a plain horizontal gradient
    background = np.stack([np.tile(ramp, (HEIGHT, 1)), np.full((HEIGHT, WIDTH), 120.0),
                           np.tile(ramp[::-1], (HEIGHT, 1))], axis=2).astype(np.uint8)
    out = []
    for t in np.linspace(0.0, 1.0, frames):
        frame = background.copy()
        for photo, side, left in ((astronaut, 100 + 120 * t, 30 + 60 * t),
                                  (camera, 220 - 120 * t, 610 - 60 * t - (220 - 120 * t))):
            side, left = int(round(side)), int(round(left))
            top = HEIGHT // 2 - side // 2
            frame[top:top + side, left:left + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
        out.append(frame)
    return out


def write_video(frames: list, path: Path, fps: float = 10.0) -> Path:
    """BGR frames (one size) to an MJPG .avi at `path`."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def face_frame(photo: str = "astronaut.jpg", size: tuple = (320, 240), side: int = 150, shift: int = 0) -> np.ndarray:
    """One real face (a photograph of tests/data, `side` px) on a plain frame of `size` (w, h)."""
    image = cv2.imread(str(DATA / photo))
    assert image is not None
    w, h = size
    frame = np.full((h, w, 3), 110, np.uint8)
    top, left = (h - side) // 2, (w - side) // 2 + shift
    frame[top:top + side, left:left + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def mixed_folder(root: Path) -> Path:
    """root/inputs: a.avi (3 frames), sub/b.avi (2 frames), photo.jpg, sub/camera.png, a corrupt
    video broken.mp4 and notes.txt (not an input). Returns the folder."""
    folder = root / "inputs"
    (folder / "sub").mkdir(parents=True)
    write_video([face_frame(shift=k * 6) for k in range(3)], folder / "a.avi")
    write_video([face_frame("camera.jpg", shift=-k * 6) for k in range(2)], folder / "sub" / "b.avi")
    cv2.imwrite(str(folder / "photo.jpg"), face_frame(side=170))
    cv2.imwrite(str(folder / "sub" / "camera.png"), face_frame("camera.jpg", side=160))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (folder / "notes.txt").write_text("not an input")
    return folder


def save_release_checkpoint(path: Path, stage: int = 1, num_classes: int = 12) -> Path:
    """A ResNet-18 model saved the release's way ({'state_dict': {'module.' + key: tensor}})."""
    torch.manual_seed(0)
    model = build_model(stage, "resnet18", num_classes, neighbor_num=4, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(2, 3, 224, 224))
    state = OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)
    return path
