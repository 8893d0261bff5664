"""Faces, five facial landmarks and the 256x256 face crops ME-GraphAU was trained on.

ME-GraphAU ("Learning Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action
Unit Recognition", Luo et al., IJCAI-ECAI 2022) and OpenGraphAU work on 256x256 face crops
that the authors made with MTCNN (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", IEEE SPL 2016): five landmarks per face, then a
similarity transform onto a fixed five-point template. This module makes the same crops:

    detector = FaceDetector()
    faces = detector.detect(image_bgr)                       # all faces, largest first
    crop = align_crop(image_bgr, faces[0], preset="BP4D")    # (256, 256, 3) uint8 BGR

    tracker = FaceTracker(detector, redetect_every=10)       # video: landmarks every frame,
    for frame in frames:                                     # a full detection every 10th
        faces = tracker.update(frame)

Detection uses facenet-pytorch's MTCNN (P-, R- and O-Net with the weights shipped inside the
package, so nothing is downloaded). ``FaceTracker`` runs the last MTCNN stage (O-Net: box,
landmarks, face probability from a 48x48 crop) on the previous frame's boxes, which is much
cheaper than the full image pyramid.

Crop presets (``CROP_PRESETS``) are the five-point templates of the authors' own crops, measured
with MTCNN on the release's sample images (``MEASURED_LANDMARKS``): "BP4D" and "DISFA" for
models trained on those datasets (12 and 8 AUs), "OpenGraphAU" for the 41-AU OpenGraphAU
models; ``preset_for(num_classes)`` picks one for a model. "SYNTH" reproduces the framing of
the project's synthetic faces (synth.py), so that a SYNTH-trained model is fed faces as it saw
them.

Coordinates are (x, y) image pixels with pixel centres at integers; landmark order: the eye on
the image's left (the person's right eye), the eye on the image's right, the nose tip, the mouth
corner on the image's left, the mouth corner on the image's right.

This module is a little over 500 lines: the MTCNN cascade it drives (detector and O-Net
tracker), the crop presets and the alignment share one set of box and landmark conventions,
which splitting would scatter.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from megraphau.errors import UserError
from megraphau.model.facts import AU_SET_FOR_NUM_CLASSES

if TYPE_CHECKING:  # torch is imported when a detector is built
    import torch

__all__ = ["Face", "FaceDetector", "FaceTracker", "FaceDetectionError", "CROP_PRESETS",
           "MEASURED_LANDMARKS", "CROP_SIZE", "FIT_WEIGHTS",
           "preset_for", "crop_template", "similarity_transform", "align_matrix", "align_crop",
           "centre_crop"]

#: Side of the crops the presets are defined for (the release's image size).
CROP_SIZE = 256

#: MTCNN landmarks (pixels of the 256x256 crop) measured on one crop of each of the authors'
#: data: BP4D data/BP4D/img/F001/T1/2440.jpg and DISFA data/DISFA/img/SN001/0.png of the
#: release, and OpenGraphAU's demo_imgs/1014.jpg (1024 px, resized to 256).
MEASURED_LANDMARKS: Dict[str, Tuple[Tuple[float, float], ...]] = {
    "BP4D": ((82.5, 75.3), (179.2, 73.6), (130.6, 128.3), (87.6, 178.3), (172.9, 179.3)),
    "DISFA": ((96.1, 72.9), (172.1, 77.2), (137.3, 123.5), (96.0, 155.7), (160.0, 160.8)),
    "OpenGraphAU": ((96.5, 122.2), (162.3, 124.2), (122.3, 169.6), (97.4, 186.0), (161.9, 189.1)),
    # SYNTH's images are generated face crops (a smaller face than BP4D's: eye distance 56 px, not
    # 97): the mean MTCNN landmarks of 360 of them (every other image of all 12 subjects, seed 0,
    # synth.py generator 2), measured the same way as the authors' crops above.
    "SYNTH": ((100.7, 113.9), (156.6, 114.1), (128.8, 151.3), (105.4, 177.6), (151.9, 177.3)),
}


def _level_and_symmetrise(points: np.ndarray) -> np.ndarray:
    """A (5, 2) landmark set rotated about its centroid so that the eyes are level, then made
    mirror-symmetric about the vertical line halfway between the eye and mouth midpoints.

    Why: each measured set is one frame of one subject, whose head roll and yaw are that
    frame's pose, not the crop geometry; a template with that pose would tilt or shift every
    crop the same way. Levelling and mirroring keep what is the crop's geometry (eye distance,
    heights of eyes, nose and mouth, horizontal position) and drop the pose.
    """
    centroid = points.mean(axis=0)
    (lx, ly), (rx, ry) = points[0], points[1]
    angle = math.atan2(ry - ly, rx - lx)  # the eye line's slope (image y points down)
    c, s = math.cos(-angle), math.sin(-angle)
    rotation = np.array([[c, -s], [s, c]])
    level = (points - centroid) @ rotation.T + centroid
    axis = (level[0, 0] + level[1, 0] + level[3, 0] + level[4, 0]) / 4.0
    mirrored = level.copy()
    mirrored[:, 0] = 2 * axis - level[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # a mirror swaps left and right eyes / mouth corners
    return (level + mirrored) / 2.0


#: Five-point templates (5, 2) in pixels of a 256x256 crop, one per preset: the measured
#: landmarks, levelled and symmetrised (see ``_level_and_symmetrise``).
CROP_PRESETS: Dict[str, np.ndarray] = {
    name: _level_and_symmetrise(np.array(points, np.float64))
    for name, points in MEASURED_LANDMARKS.items()}
for _template in CROP_PRESETS.values():
    _template.setflags(write=False)

def preset_for(num_classes: int, default: str = "BP4D") -> str:
    """Crop preset for a model with ``num_classes`` AU outputs: that of the data set it was
    trained on (megraphau.model.facts: 12 BP4D, 8 DISFA, 41 OpenGraphAU; each has a preset of its
    name); ``default`` for any other count (e.g. a model trained on own data)."""
    return AU_SET_FOR_NUM_CLASSES.get(int(num_classes), default)


def crop_template(preset: Union[str, np.ndarray] = "BP4D", size: int = CROP_SIZE) -> np.ndarray:
    """The (5, 2) landmark template of ``preset`` (a name in ``CROP_PRESETS`` or a (5, 2) array
    in pixels of a 256 crop) scaled to a ``size`` x ``size`` crop."""
    if isinstance(preset, str):
        if preset not in CROP_PRESETS:
            raise ValueError(f"unknown crop preset {preset!r}; known: {', '.join(CROP_PRESETS)}")
        template = CROP_PRESETS[preset]
    else:
        template = np.asarray(preset, np.float64)
        if template.shape != (5, 2):
            raise ValueError(f"a crop template is (5, 2) landmarks, got shape {template.shape}")
    # Scale about the pixel-centre origin: pixel (0, 0) spans [-0.5, 0.5] in both crops.
    return (template + 0.5) * (size / CROP_SIZE) - 0.5


class FaceDetectionError(UserError, RuntimeError):
    """The detector cannot run (facenet-pytorch missing) or got an unusable image."""


@dataclass(eq=False)
class Face:
    """One face.

    box: (x, y, w, h) in pixels of the input image (MTCNN's box, after its regression).
    score: MTCNN's face probability (O-Net), 0..1.
    landmarks: (5, 2) float (x, y) in image pixels: eye on the image's left, eye on the image's
        right, nose tip, mouth corner on the image's left, mouth corner on the image's right.
    """

    box: Tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(self.box[2]) * float(self.box[3])

    @property
    def center(self) -> Tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)

    def scaled(self, factor: float) -> Face:
        """The same face in a copy of the image resized by ``factor``."""
        x, y, w, h = self.box
        # Pixel centres sit at integers: a point p maps to (p + 0.5) * factor - 0.5.
        x0, y0 = (x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5
        landmarks = (np.asarray(self.landmarks, np.float64) + 0.5) * factor - 0.5
        return Face(box=(x0, y0, w * factor, h * factor), score=self.score, landmarks=landmarks)


# -- images


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """BGR / BGRA / gray (H, W) or (H, W, 1) image -> contiguous uint8 BGR (H, W, 3)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise FaceDetectionError(
            f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got "
            f"{type(image).__name__} with shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] != 3:
        raise FaceDetectionError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    return np.ascontiguousarray(image)


def centre_crop(image_bgr: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Largest centred square of the image, resized to (size, size, 3): the crop written for
    frames where no face is found (keeps dataset lists aligned with the frames)."""
    image_bgr = _as_bgr(image_bgr)
    h, w = image_bgr.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = image_bgr[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


# -- alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray,
                         weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """(2, 3) matrix of the similarity (uniform scale, rotation, translation; no reflection)
    that maps the points ``src`` (N, 2) onto ``dst`` (N, 2) with the least squared error
    (each point's squared error times its weight when ``weights`` (N,) is given).

    Closed form of Umeyama (IEEE TPAMI 1991): the rotation from the SVD of the cross-covariance
    of the centred point sets, the scale from its singular values over the variance of ``src``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    weights = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(src),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"expected {len(src)} non-negative weights, got {weights.tolist()}")
    weights = weights / weights.sum()
    src_mean, dst_mean = weights @ src, weights @ dst
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = weights @ (src_c ** 2).sum(axis=1)
    if src_var < 1e-12:
        raise ValueError("the source points coincide: no similarity transform is defined")
    covariance = (dst_c * weights[:, None]).T @ src_c  # (2, 2)
    u, singular, vt = np.linalg.svd(covariance)
    # Force a proper rotation: flip the weakest axis when the best orthogonal map reflects.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (singular * d).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


#: Weight of each landmark in the crop's similarity fit: eyes and mouth corners, not the nose
#: tip. Why: those four points lie close to one plane, which a 2-D similarity maps faithfully,
#: while the nose tip stands out of it and moves against them with every head turn or nod.
#: On the astronaut test face it also keeps the eye and mouth midpoints closer to the presets'
#: (measured by bench/bench_faces.py).
FIT_WEIGHTS = (1.0, 1.0, 0.0, 1.0, 1.0)


def align_matrix(face: Face, preset: Union[str, np.ndarray] = "BP4D",
                 size: int = CROP_SIZE) -> np.ndarray:
    """(2, 3) affine matrix from image pixels to the ``size`` x ``size`` crop of ``preset``:
    the least-squares similarity putting the face's landmarks on the template (``FIT_WEIGHTS``)."""
    return similarity_transform(face.landmarks, crop_template(preset, size), FIT_WEIGHTS)


def align_crop(image_bgr: np.ndarray, face: Face, preset: Union[str, np.ndarray] = "BP4D",
               size: int = CROP_SIZE) -> np.ndarray:
    """The face warped onto the five-point template of ``preset``: (size, size, 3) uint8 BGR.

    The crop is sampled from the full-resolution image (bilinear; smoothed first when it
    shrinks the face by more than 2x, against aliasing); pixels outside the image replicate
    its border, as the authors' crops near a frame edge look (no black bars a network could
    key on). ``size`` other than 256 scales the template.
    """
    image_bgr = _as_bgr(image_bgr)
    matrix = align_matrix(face, preset, size)
    scale = math.hypot(matrix[0, 0], matrix[0, 1])  # crop pixels per image pixel
    sigma = 0.5 / scale - 0.5 if scale < 0.5 else 0.0
    # Warp only the source window the crop needs (plus the blur's reach), not the whole frame.
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    inverse = cv2.invertAffineTransform(matrix)
    src = corners @ inverse[:, :2].T + inverse[:, 2]  # (4, 2) crop corners in the image
    pad = int(math.ceil(3 * sigma)) + 2
    h, w = image_bgr.shape[:2]
    x0, y0 = np.clip(np.floor(src.min(0)).astype(int) - pad, 0, (w - 1, h - 1))
    x1, y1 = np.clip(np.ceil(src.max(0)).astype(int) + pad + 1, (x0 + 1, y0 + 1), (w, h))
    # The window touches the frame edge wherever the crop leaves the frame, so replicating the
    # window's border equals replicating the frame's.
    window = image_bgr[y0:y1, x0:x1]
    if sigma > 0:
        window = cv2.GaussianBlur(window, (0, 0), sigmaX=sigma)
    local = matrix.copy()
    local[:, 2] += matrix[:, :2] @ (x0, y0)  # window pixel (u, v) is image pixel (u+x0, v+y0)
    return cv2.warpAffine(window, local, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


# -- MTCNN


def _load_mtcnn(device: str, min_face_size: int, thresholds: Sequence[float], factor: float):
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise FaceDetectionError(
            "face detection needs facenet-pytorch (MTCNN with its weights shipped in the "
            "package): python -m pip install 'facenet-pytorch>=2.5,<2.6'") from err
    import torch

    mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                  keep_all=True, device=device)
    if torch.device(device).type == "cpu":
        # P- and R-Net channels-last: their max pooling takes a vectorised kernel (3x faster than
        # on NCHW) and a full detection takes 10-20% less CPU; boxes and landmarks move by float
        # rounding only (3e-5 px on the test video). O-Net, the tracker's, gains nothing.
        for net in (mtcnn.pnet, mtcnn.rnet):
            net.to(memory_format=torch.channels_last)
    return mtcnn.eval()


def _net_input(crops_rgb: np.ndarray, device) -> torch.Tensor:
    """(N, s, s, 3) uint8 RGB crops -> (N, 3, s, s) float in about -1..1, MTCNN's input scaling
    ((x - 127.5) / 128)."""
    import torch
    data = torch.from_numpy(np.ascontiguousarray(crops_rgb)).permute(0, 3, 1, 2).float()
    return ((data - 127.5) * 0.0078125).to(device)


def _square(box: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 boxes -> squares of side max(w, h) on the same centres (as MTCNN
    squares the boxes it passes to its next stage)."""
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    side = np.maximum(w, h)
    x1 = box[:, 0] + (w - side) / 2
    y1 = box[:, 1] + (h - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _crop_boxes(image_rgb: np.ndarray, boxes: np.ndarray, out: int) -> Tuple[np.ndarray, np.ndarray]:
    """(N, out, out, 3) uint8 crops of the (N, 4) square boxes, zero outside the image, and
    (N, 4) the integer pixel windows (left, top, width, height) they were taken from.

    MTCNN's convention (kept so that landmarks agree with a full detection): box (x1, y1, x2,
    y2) covers pixel columns int(x1) - 1 .. int(x2) - 1.
    """
    h, w = image_rgb.shape[:2]
    crops = np.zeros((len(boxes), out, out, 3), np.uint8)
    windows = np.zeros((len(boxes), 4), np.int64)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        left, top = int(math.floor(x1)) - 1, int(math.floor(y1)) - 1
        width = max(int(math.floor(x2)) - int(math.floor(x1)) + 1, 1)
        height = max(int(math.floor(y2)) - int(math.floor(y1)) + 1, 1)
        windows[i] = (left, top, width, height)
        # The part of the window inside the image, zero padded to the full window.
        cx0, cy0 = max(left, 0), max(top, 0)
        cx1, cy1 = min(left + width, w), min(top + height, h)
        if cx1 <= cx0 or cy1 <= cy0:
            continue  # entirely outside: an all-zero crop, which O-Net scores as no face
        patch = cv2.copyMakeBorder(image_rgb[cy0:cy1, cx0:cx1], cy0 - top, top + height - cy1,
                                   cx0 - left, left + width - cx1, cv2.BORDER_CONSTANT, value=0)
        interp = cv2.INTER_AREA if width > out else cv2.INTER_LINEAR
        crops[i] = cv2.resize(patch, (out, out), interpolation=interp)
    return crops, windows


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MTCNN's box regression: (N, 4) boxes moved by (N, 4) offsets in units of the box size."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, axis=1)
    return boxes + offsets * size


class FaceDetector:
    """All faces in an image with five landmarks each: MTCNN (facenet-pytorch's P-, R- and
    O-Net and its detection cascade).

    Args:
        device: torch device the networks run on ("cpu", "cuda", ...).
        min_face_size: smallest face side searched, in pixels of the image detection runs on
            (after the downscaling to ``detect_size``); the cost grows quickly as it shrinks.
        thresholds: face probability each stage (P-, R-, O-Net) needs (MTCNN's defaults).
        factor: scale step of the image pyramid (MTCNN's default).
        detect_size: detection runs on a copy whose longer side is at most this many pixels
            (None or 0: full resolution); boxes and landmarks are mapped back to the input.
        threads: torch CPU threads while MTCNN runs (restored afterwards; None: torch's
            setting). MTCNN's small convolutions gain nothing from more threads, and on a busy
            machine several threads wait on each other: 1 was 1.5x-30x faster than 2 on this
            project's shared 2-core machine.
    """

    def __init__(self, device: str = "cpu", min_face_size: int = 40,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 detect_size: Optional[int] = 640, threads: Optional[int] = 1):
        if len(thresholds) != 3:
            raise ValueError(f"thresholds: one per MTCNN stage (3), got {list(thresholds)}")
        self.device = str(device)
        self.min_face_size = max(int(min_face_size), 12)  # P-Net's window is 12 px
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.detect_size = int(detect_size) if detect_size else None
        self.threads = int(threads) if threads else None
        self._mtcnn = _load_mtcnn(self.device, self.min_face_size, self.thresholds, self.factor)

    @property
    def config(self) -> dict:
        """Constructor arguments: ``FaceDetector(**detector.config)`` builds an equal detector
        (worker processes rebuild theirs from this)."""
        return dict(device=self.device, min_face_size=self.min_face_size,
                    thresholds=list(self.thresholds), factor=self.factor,
                    detect_size=self.detect_size, threads=self.threads)

    def detect(self, image_bgr: np.ndarray, max_side: Optional[int] = None,
               min_size: Optional[float] = None) -> List[Face]:
        """All faces of a BGR (or gray, or BGRA) uint8 image, largest first.

        ``max_side`` overrides ``detect_size`` for this call (0: full resolution);
        ``min_size`` overrides the smallest face side, in pixels of ``image_bgr``.
        """
        image = _as_bgr(image_bgr)
        max_side = self.detect_size if max_side is None else max_side
        scale = 1.0
        if max_side and max(image.shape[:2]) > max_side:
            scale = max_side / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        min_face = self.min_face_size if min_size is None else max(min_size * scale, 12.0)
        if min(image.shape[:2]) < min_face:
            return []  # no pyramid level fits (MTCNN would fail on an empty pyramid)
        boxes, points = self._run_cascade(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), min_face)
        faces = [Face(box=(x1, y1, x2 - x1, y2 - y1), score=float(p), landmarks=marks)
                 for (x1, y1, x2, y2, p), marks in zip(boxes.tolist(), points)]
        faces = self._fix_border_faces(image, faces)
        if scale != 1.0:
            faces = [face.scaled(1.0 / scale) for face in faces]
        return sorted(faces, key=lambda f: -f.area)

    @contextlib.contextmanager
    def _torch_threads(self):
        """Run with ``self.threads`` torch threads, then restore the caller's setting."""
        import torch
        before = torch.get_num_threads()
        if self.threads is None or self.threads == before:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _run_cascade(self, image_rgb: np.ndarray, min_face: float) -> Tuple[np.ndarray, np.ndarray]:
        """facenet-pytorch's three-stage MTCNN: (N, 5) x1, y1, x2, y2, score and (N, 5, 2)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face
        with torch.inference_mode(), self._torch_threads():
            boxes, points = detect_face(image_rgb, min_face, self._mtcnn.pnet, self._mtcnn.rnet,
                                        self._mtcnn.onet, list(self.thresholds), self.factor,
                                        self._mtcnn.device)
        # detect_face returns one entry per image of its batch; ours is one image.
        boxes = np.asarray(boxes[0], np.float64).reshape(-1, 5)
        points = np.asarray(points[0], np.float64).reshape(-1, 5, 2)
        return boxes, points

    def _fix_border_faces(self, image: np.ndarray, faces: List[Face]) -> List[Face]:
        """Landmarks of faces whose box leaves the image, from O-Net on a zero-padded crop.

        Why: facenet-pytorch's cascade clamps such a box to the image and stretches what is
        left to 48x48 (the original MTCNN pads with zeros), which misplaces the landmarks of a
        face cut by the image edge, e.g. on a tight face crop.
        """
        h, w = image.shape[:2]
        outside = [i for i, f in enumerate(faces)
                   if f.box[0] < 1 or f.box[1] < 1 or f.box[0] + f.box[2] > w or f.box[1] + f.box[3] > h]
        if not outside:
            return faces
        refined = self.refine(image, [faces[i] for i in outside])
        for i, face in zip(outside, refined):
            faces[i] = Face(box=faces[i].box, score=faces[i].score, landmarks=face.landmarks)
        return faces

    def refine(self, image_bgr: np.ndarray, faces: Sequence[Face],
               use_rnet: bool = False) -> List[Face]:
        """MTCNN's landmark stage alone on known faces (e.g. the previous video frame's): each
        face's box, squared, is cropped to 48x48 and O-Net gives the new box, landmarks and
        face probability. ``use_rnet`` first moves the box with R-Net (24x24), as the full
        cascade does. Returns one Face per input face, in the same order; a face that is gone
        has a low ``score``. Runs on the full-resolution image (crops are taken directly)."""
        import torch
        if not faces:
            return []
        image_rgb = cv2.cvtColor(_as_bgr(image_bgr), cv2.COLOR_BGR2RGB)
        boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)],
                         np.float64)  # (N, 4) x1, y1, x2, y2
        net = self._mtcnn
        with torch.inference_mode(), self._torch_threads():
            if use_rnet:
                crops, _ = _crop_boxes(image_rgb, _square(boxes), 24)
                offsets, _probs = net.rnet(_net_input(crops, net.device))
                boxes = _regress(_square(boxes), offsets.cpu().numpy().astype(np.float64))
            squares = _square(boxes)
            crops, windows = _crop_boxes(image_rgb, squares, 48)
            offsets, marks, probs = net.onet(_net_input(crops, net.device))
        offsets = offsets.cpu().numpy().astype(np.float64)  # (N, 4)
        marks = marks.cpu().numpy().astype(np.float64).reshape(-1, 2, 5)  # (N, [x; y], 5)
        scores = probs[:, 1].cpu().numpy().astype(np.float64)
        new_boxes = _regress(squares, offsets)
        refined = []
        for box, mark, score, (left, top, width, height) in zip(new_boxes, marks, scores, windows):
            # O-Net's landmarks are fractions of its crop window.
            landmarks = np.stack([left + mark[0] * width, top + mark[1] * height], axis=1)
            x1, y1, x2, y2 = box.tolist()
            refined.append(Face(box=(x1, y1, x2 - x1, y2 - y1), score=float(score),
                                landmarks=landmarks))
        return refined


class FaceTracker:
    """Faces and landmarks on every frame of a video without a full detection on every frame.

    The first frame, every ``redetect_every``-th frame after the last full detection, and any
    frame where a tracked face is lost (O-Net probability below ``min_score``, e.g. the face
    left the frame) get a full MTCNN detection; the frames in between only run the landmark
    stage (``FaceDetector.refine``) on the previous frame's boxes.

    Args:
        detector: the FaceDetector used for both.
        redetect_every: frames between full detections (1: every frame; new faces entering the
            frame are found at the next full detection).
        min_score: O-Net probability below which a tracked face counts as lost (default: the
            detector's O-Net threshold).
        use_rnet: also run R-Net on the tracked boxes (a little slower, follows faster motion).
    """

    def __init__(self, detector: FaceDetector, redetect_every: int = 10,
                 min_score: Optional[float] = None, use_rnet: bool = False):
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {redetect_every}")
        self.detector = detector
        self.redetect_every = int(redetect_every)
        self.min_score = detector.thresholds[2] if min_score is None else float(min_score)
        self.use_rnet = bool(use_rnet)
        self.frames = 0            #: frames seen
        self.full_detections = 0   #: frames that got a full detection
        self._faces: List[Face] = []
        self._since_detection = 0

    def reset(self) -> None:
        """Forget the tracked faces (e.g. at a cut): the next frame gets a full detection."""
        self._faces, self._since_detection = [], 0

    def update(self, frame_bgr: np.ndarray, max_side: Optional[int] = None,
               min_size: Optional[float] = None) -> List[Face]:
        """The faces of the next frame, largest first (``max_side`` and ``min_size`` go to
        ``FaceDetector.detect`` when this frame gets a full detection)."""
        self.frames += 1
        faces = None
        if self._faces and self._since_detection < self.redetect_every:
            tracked = self.detector.refine(frame_bgr, self._faces, use_rnet=self.use_rnet)
            if all(face.score >= self.min_score for face in tracked):
                faces = tracked
        if faces is None:
            faces = self.detector.detect(frame_bgr, max_side=max_side, min_size=min_size)
            self.full_detections += 1
            self._since_detection = 0
        self._since_detection += 1
        self._faces = sorted(faces, key=lambda f: -f.area)
        return list(self._faces)
