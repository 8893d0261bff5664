"""Face detection and loose, eye-levelled face crops with OpenCV's Haar cascades.

ME-GraphAU (Luo et al., IJCAI-ECAI 2022) works on 256x256 face crops: the release's BP4D and
DISFA images are loose crops around the face (forehead to chin with some background). This
module makes the same kind of crop from any image, so that raw dataset frames
(``tool/crop_faces.py``) and demo images (``demo.py``) go through one code path:

    detector = FaceDetector()
    faces = detector.detect(image_bgr)            # all faces, largest first
    crop = align_crop(image_bgr, faces[0])       # (256, 256, 3) uint8 BGR, eyes level

Only the cascades shipped inside the OpenCV 4.x wheels are used (``cv2.data.haarcascades``:
frontal face "alt2" and the eye cascade, on a CLAHE-normalised gray image), so nothing is
downloaded; OpenCV 5 wheels no longer ship them and get an error saying what to install.

Crop geometry (``align_crop``): the Haar face box spans roughly brows to mouth, so the crop is
a square of side ``max(w, h) * (1 + 2 * margin)`` (``margin`` = 0.3 of the box on each side by
default) centred on the box centre moved down by ``shift`` (0.1 of the box height) to take in the
chin. When both eyes are found the image is first rotated about that centre so that the eyes are
level. Parts of the crop outside the image are filled by border replication.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np

__all__ = ["Face", "FaceDetector", "FaceDetectionError", "align_matrix", "align_crop",
           "centre_crop", "DEFAULT_MARGIN", "DEFAULT_SHIFT"]

#: Crop margin on each side of the face box, as a fraction of the box size.
DEFAULT_MARGIN = 0.3
#: Downward shift of the crop centre, as a fraction of the box height (the box ends at the mouth).
DEFAULT_SHIFT = 0.1


class FaceDetectionError(RuntimeError):
    """The detector cannot run (missing cascade files) or got an unusable image."""


@dataclass
class Face:
    """One detected face.

    box: (x, y, w, h) in pixels of the input image.
    score: number of raw cascade detections merged into this box (higher = more certain).
    left_eye / right_eye: eye centres (x, y) in image pixels; ``left_eye`` is the eye on the
        image's left (smaller x, i.e. the person's right eye). None when not found.
    """

    box: Tuple[int, int, int, int]
    score: float
    left_eye: Optional[Tuple[float, float]] = None
    right_eye: Optional[Tuple[float, float]] = None

    @property
    def area(self) -> int:
        return int(self.box[2]) * int(self.box[3])

    @property
    def center(self) -> Tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    """Load a Haar cascade shipped with the OpenCV wheel, or fail with an actionable message."""
    if os.path.isfile(name):
        path = name
    else:
        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = os.path.join(base, name) if base else name
    if not os.path.isfile(path):
        raise FaceDetectionError(
            f"Haar cascade file {name!r} not found (looked for {path!r}). Face detection uses the "
            f"cascades shipped in OpenCV 4.x wheels (cv2.data.haarcascades); OpenCV "
            f"{cv2.__version__} does not provide them. Install an OpenCV 4 wheel: "
            f"python -m pip install 'opencv-python-headless>=4.6,<5'")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FaceDetectionError(f"Haar cascade file {path!r} could not be loaded (corrupt file?)")
    return cascade


def _to_gray(image: np.ndarray) -> np.ndarray:
    """BGR / BGRA / gray uint8 image -> gray uint8 image."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise FaceDetectionError(
            f"expected an image array (H, W) or (H, W, 3), got "
            f"{type(image).__name__} with shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        if code is None:
            if image.shape[2] != 1:
                raise FaceDetectionError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
            gray = image[:, :, 0]
        else:
            gray = cv2.cvtColor(image, code)
    else:
        gray = image
    return np.ascontiguousarray(gray)


class FaceDetector:
    """Frontal face + eye detector on OpenCV Haar cascades.

    Args:
        min_size: smallest face side in pixels that is searched for.
        scale_factor: image pyramid step of the cascade search.
        min_neighbors: raw detections a face needs (higher = fewer false positives).
        face_cascade / eye_cascade: cascade file names in ``cv2.data.haarcascades`` (or paths).
        detect_eyes: look for the two eyes in the upper half of each face box.
    """

    def __init__(self, min_size: int = 40, scale_factor: float = 1.1, min_neighbors: int = 5,
                 face_cascade: str = "haarcascade_frontalface_alt2.xml",
                 eye_cascade: str = "haarcascade_eye.xml", detect_eyes: bool = True):
        self.min_size = int(min_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.detect_eyes = bool(detect_eyes)
        self.config = dict(min_size=self.min_size, scale_factor=self.scale_factor,
                           min_neighbors=self.min_neighbors, face_cascade=face_cascade,
                           eye_cascade=eye_cascade, detect_eyes=self.detect_eyes)
        """Constructor arguments: ``FaceDetector(**detector.config)`` builds an equal detector
        (cascades cannot be pickled, so worker processes rebuild theirs from this)."""
        self._face = _load_cascade(face_cascade)
        self._eye = _load_cascade(eye_cascade) if detect_eyes else None
        # Local (CLAHE) rather than global histogram equalisation: robust to dark or washed-out
        # frames without letting a large uniform background flatten the face's contrast.
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def detect(self, image_bgr: np.ndarray, min_size: Optional[int] = None,
               max_side: Optional[int] = None) -> List[Face]:
        """All faces in a BGR (or gray) uint8 image, largest first.

        ``min_size`` overrides the detector's smallest face side (pixels of ``image_bgr``) for
        this call; ``max_side`` searches a copy downscaled so that its longer side is at most
        ``max_side`` pixels (much faster on large frames; boxes and eyes are mapped back).
        """
        gray = _to_gray(image_bgr)
        min_size = self.min_size if min_size is None else max(int(min_size), 1)
        if min(gray.shape[:2]) < min_size:
            return []
        scale = 1.0
        if max_side and max(gray.shape[:2]) > max_side:
            scale = max_side / max(gray.shape[:2])
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = self._clahe.apply(gray)
        search = max(int(round(min_size * scale)), 20)  # the cascades' window is 20-24 px
        rects, counts = self._face.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(search, search))
        faces = []
        for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(counts).reshape(-1)):
            face = Face(box=(int(x), int(y), int(w), int(h)), score=float(n))
            if self._eye is not None:
                face.left_eye, face.right_eye = self._find_eyes(gray, face.box)
            faces.append(_rescale(face, 1.0 / scale) if scale != 1.0 else face)
        faces.sort(key=lambda f: (-f.area, -f.score))
        return _drop_nested(faces)

    def _find_eyes(self, gray: np.ndarray, box) -> Tuple[Optional[Tuple[float, float]],
                                                            Optional[Tuple[float, float]]]:
        """Eye centres in the upper half of the face box: the detection nearest the expected
        position on each side (eyes sit ~0.3 / 0.7 of the width, ~0.38 of the height)."""
        x, y, w, h = box
        top, bottom = y + int(0.1 * h), y + int(0.6 * h)
        roi = gray[max(top, 0):bottom, max(x, 0):x + w]
        if roi.size == 0:
            return None, None
        min_eye = max(8, int(w * 0.1))
        eyes = self._eye.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                          minSize=(min_eye, min_eye),
                                          maxSize=(int(w * 0.45), int(w * 0.45)))
        best = {"left": None, "right": None}
        best_dist = {"left": math.inf, "right": math.inf}
        for ex, ey, ew, eh in np.asarray(eyes).reshape(-1, 4):
            cx = max(x, 0) + ex + ew / 2.0
            cy = max(top, 0) + ey + eh / 2.0
            side = "left" if cx < x + w / 2.0 else "right"
            expected = (x + (0.3 if side == "left" else 0.7) * w, y + 0.38 * h)
            dist = math.hypot(cx - expected[0], cy - expected[1])
            if dist < best_dist[side]:
                best[side], best_dist[side] = (float(cx), float(cy)), dist
        left, right = best["left"], best["right"]
        if left is not None and right is not None:
            # Reject implausible pairs (too close, or tilted by more than 30 degrees).
            dx, dy = right[0] - left[0], right[1] - left[1]
            if dx < 0.2 * w or abs(math.degrees(math.atan2(dy, dx))) > 30:
                return None, None
        return left, right


def _rescale(face: Face, factor: float) -> Face:
    """The same face in an image ``factor`` times larger."""
    def point(p):
        return None if p is None else (p[0] * factor, p[1] * factor)
    box = tuple(int(round(v * factor)) for v in face.box)
    return Face(box=box, score=face.score, left_eye=point(face.left_eye),
                right_eye=point(face.right_eye))


def _drop_nested(faces: List[Face], max_overlap: float = 0.5) -> List[Face]:
    """Drop boxes mostly inside a larger kept face (the cascade sometimes also fires on a
    sub-part of a face). ``faces`` must be sorted largest first."""
    kept: List[Face] = []
    for face in faces:
        x, y, w, h = face.box
        inside = False
        for big in kept:
            bx, by, bw, bh = big.box
            iw = max(0, min(x + w, bx + bw) - max(x, bx))
            ih = max(0, min(y + h, by + bh) - max(y, by))
            if iw * ih > max_overlap * w * h:
                inside = True
                break
        if not inside:
            kept.append(face)
    return kept


def align_matrix(face: Face, size: int = 256, margin: float = DEFAULT_MARGIN,
                 shift: float = DEFAULT_SHIFT) -> np.ndarray:
    """2x3 affine matrix mapping image pixels to the ``size`` x ``size`` aligned crop.

    Rotation (about the crop centre) levels the eyes when both are known; the square crop has
    side ``max(w, h) * (1 + 2 * margin)`` and is centred ``shift * h`` below the box centre.
    """
    x, y, w, h = face.box
    cx, cy = x + w / 2.0, y + h / 2.0 + shift * h
    side = max(w, h) * (1.0 + 2.0 * margin)
    angle = 0.0
    if face.left_eye is not None and face.right_eye is not None:
        (lx, ly), (rx, ry) = face.left_eye, face.right_eye
        # Image y points down: a positive angle means the right eye is lower; OpenCV's positive
        # angle rotates the content counter-clockwise on screen, which lifts it back up.
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[:, 2] += (size / 2.0 - cx, size / 2.0 - cy)  # crop centre -> output centre
    return matrix


def align_crop(image_bgr: np.ndarray, face: Face, size: int = 256, margin: float = DEFAULT_MARGIN,
               shift: float = DEFAULT_SHIFT) -> np.ndarray:
    """Loose square face crop (size, size, 3) uint8, eyes level when both are known.

    Pixels outside the image are filled by replicating the border (as loose dataset crops near
    the frame edge would look, without black bars that a network could key on).
    """
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    matrix = align_matrix(face, size=size, margin=margin, shift=shift)
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    sigma = 0.5 / scale - 0.5 if scale < 0.5 else 0.0
    # Work on the source window the crop needs (plus the blur's reach), not the whole frame.
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    inverse = cv2.invertAffineTransform(matrix)
    src = corners @ inverse[:, :2].T + inverse[:, 2]
    pad = int(math.ceil(3 * sigma)) + 2
    h, w = image_bgr.shape[:2]
    x0, y0 = np.clip(np.floor(src.min(0)).astype(int) - pad, 0, (w - 1, h - 1))
    x1, y1 = np.clip(np.ceil(src.max(0)).astype(int) + pad + 1, (x0 + 1, y0 + 1), (w, h))
    # Touching the frame edge keeps BORDER_REPLICATE equal to replicating the frame's border.
    window = image_bgr[y0:y1, x0:x1]
    if sigma > 0:
        # Strong downscaling: smooth first so the bilinear warp does not alias.
        window = cv2.GaussianBlur(window, (0, 0), sigmaX=sigma)
    local = matrix.copy()
    local[:, 2] += matrix[:, :2] @ (x0, y0)  # window pixel (u, v) is frame pixel (u+x0, v+y0)
    return cv2.warpAffine(window, local, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def centre_crop(image_bgr: np.ndarray, size: int = 256) -> np.ndarray:
    """Largest centred square of the image, resized to (size, size): the fallback crop for
    frames where no face is found (keeps dataset lists aligned with the frames)."""
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    h, w = image_bgr.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = image_bgr[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)
