"""SYNTH: a procedurally drawn facial action unit data set that every command can run on.

Real AU data sets (BP4D, DISFA) are licensed and cannot be shipped, so this module draws
cartoon-like but shaded faces with OpenCV in which each of 12 action units (FACS, as in
ME-GraphAU's BP4D/DISFA setting) has a visible, learnable cue that is present exactly when
its label is 1:

    AU1 inner brow raiser    inner brow ends up + central forehead lines
    AU2 outer brow raiser    outer brow ends up + lateral forehead lines
    AU4 brow lowerer         brows down and drawn together + vertical glabella lines
    AU5 upper lid raiser     upper lids up: sclera above the iris, crease near the lashes
    AU6 cheek raiser         cheek bulges + infraorbital furrow + crow's-feet lines
    AU7 lid tightener        lower lids raised, straightened and darkened + tension line, bulge
    AU9 nose wrinkler        wrinkles across the nose bridge + raised nostrils
    AU12 lip corner puller   lip corners up + nasolabial (smile) folds
    AU15 lip corner depressor lip corners down + creases below them
    AU17 chin raiser         chin boss: bulge, mentolabial furrow, dimpled chin
    AU25 lips part           dark gap with teeth between the lips
    AU26 jaw drop            longer chin and jaw (gap taller when lips part, closed mouth
                             lower when they do not)

Cue sizes are chosen so that they survive the 128-pixel resize of the CPU quickstart (crop 112):
a ResNet-18 from scratch (train_stage1.py, fold 1, batch 16, lr 1e-3, crop 112, one seed, on a GPU)
reached test-fold mean F1 68 after 6 epochs and 93 after 20 (all-positive baseline 42); AU7 is
the hardest cue (F1 57 / 68).

Faces vary by identity (skin tone, face shape, hair, feature sizes) and by frame (pose rotation,
scale, translation, lighting gradient, background colour and texture, sensor noise, gaze) — all
in :class:`FaceParams`, drawn by :func:`sample_params`. Labels are drawn with realistic
co-occurrence by :func:`sample_labels`. :func:`generate_synthetic_dataset` writes a BP4D-style
tree ``img/{subject}/{task}/{frame}.jpg`` plus the 3-fold lists (lists.py); MTCNN
(:class:`faces.FaceDetector`) finds the drawn faces.
:func:`ensure_synthetic_dataset` generates it once, on first use, for whoever asks (the engine
when a run names the SYNTH config, or the command line).

Command line (tool/synth_faces.py)::

    python tool/synth_faces.py --output data/SYNTH --seed 0
    python tool/synth_faces.py --preview synth_preview.png
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["SYNTH_AUS", "AU_REGIONS", "FaceParams", "sample_identity", "sample_params",
           "neutral_params", "render_face", "landmarks", "sample_labels",
           "generate_synthetic_dataset", "ensure_synthetic_dataset", "preview_grid",
           "DEFAULT_ROOT"]

#: The 12 AUs of the synthetic set, in label order.
SYNTH_AUS = [1, 2, 4, 5, 6, 7, 9, 12, 15, 17, 25, 26]

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_ROOT = REPO_ROOT / "data" / "SYNTH"
MARKER_NAME = ".synth_complete.json"
GENERATOR_VERSION = 1

# All geometry is in "canonical units": pixels of a 256x256 image of an upright face centred
# at (CX, CY) before the pose jitter. render_face scales to the requested size.
CANON = 256.0
CX, CY = 128.0, 124.0

#: Image region (x0, y0, x1, y1, canonical units, upright pose) where each AU's cue is drawn.
AU_REGIONS: Dict[int, Tuple[int, int, int, int]] = {
    1: (80, 52, 176, 112),
    2: (62, 52, 194, 112),
    4: (70, 70, 186, 122),
    5: (74, 88, 182, 126),
    6: (58, 96, 198, 164),
    7: (76, 94, 180, 132),
    9: (100, 100, 156, 174),
    12: (82, 144, 174, 196),
    15: (88, 156, 168, 212),
    17: (94, 168, 162, 230),
    25: (94, 164, 162, 212),
    26: (50, 124, 206, 246),
}


@dataclass
class FaceParams:
    """Everything except the AU labels that decides how a face is drawn.

    Identity (fixed per subject): skin, hair, iris colours (BGR), face half-width/height,
    eye spacing/size, brow thickness, mouth width, nose length.
    Frame jitter: rotation (degrees), scale, translation (canonical px), lighting gradient
    (direction in degrees, strength), background colour/texture, noise sigma and seed, gaze.
    """

    skin: Tuple[float, float, float] = (120.0, 150.0, 200.0)
    hair: Tuple[float, float, float] = (30.0, 35.0, 45.0)
    iris: Tuple[float, float, float] = (40.0, 60.0, 90.0)
    face_w: float = 66.0
    face_h: float = 88.0
    eye_dx: float = 29.0
    eye_w: float = 14.0
    brow_thick: float = 6.0
    mouth_w: float = 23.0
    nose_len: float = 38.0
    angle: float = 0.0
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0
    light_dir: float = 0.0
    light_strength: float = 0.0
    bg_color: Tuple[float, float, float] = (150.0, 150.0, 150.0)
    bg_texture: float = 0.0
    noise_sigma: float = 0.0
    noise_seed: int = 0
    gaze: Tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IDENTITY_FIELDS = ("skin", "hair", "iris", "face_w", "face_h", "eye_dx", "eye_w", "brow_thick",
                   "mouth_w", "nose_len")

# Skin tones (BGR), light to dark; identities interpolate between neighbours.
_SKIN_TONES = np.array([[185, 205, 240], [150, 180, 225], [120, 150, 200], [95, 125, 175],
                        [75, 100, 145], [60, 82, 122]], dtype=np.float64)
_HAIR_COLOURS = np.array([[20, 22, 25], [30, 40, 60], [40, 70, 110], [90, 140, 180],
                          [120, 120, 125]], dtype=np.float64)


def sample_identity(rng: np.random.Generator) -> dict:
    """Identity fields of :class:`FaceParams` for one subject."""
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[i + 1] * (t - i)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    iris = np.array([40, 60, 90]) * rng.uniform(0.6, 1.4, 3)
    return dict(skin=tuple(float(v) for v in skin), hair=tuple(float(v) for v in hair),
                iris=tuple(float(v) for v in iris),
                face_w=float(rng.uniform(62, 71)), face_h=float(rng.uniform(84, 93)),
                eye_dx=float(rng.uniform(27, 31)), eye_w=float(rng.uniform(12.5, 15)),
                brow_thick=float(rng.uniform(5, 7.5)), mouth_w=float(rng.uniform(21, 26)),
                nose_len=float(rng.uniform(34, 40)))


def sample_params(rng: np.random.Generator, identity: Optional[dict] = None) -> FaceParams:
    """Random :class:`FaceParams`: a new identity unless ``identity`` (from
    :func:`sample_identity`) is given, plus fresh frame jitter."""
    ident = sample_identity(rng) if identity is None else identity
    bg = rng.uniform(40, 220, 3)
    return FaceParams(
        **ident,
        angle=float(rng.uniform(-6, 6)), scale=float(rng.uniform(0.93, 1.05)),
        tx=float(rng.uniform(-7, 7)), ty=float(rng.uniform(-6, 6)),
        light_dir=float(rng.uniform(0, 360)), light_strength=float(rng.uniform(0, 0.25)),
        bg_color=tuple(float(v) for v in bg), bg_texture=float(rng.uniform(0, 40)),
        noise_sigma=float(rng.uniform(1, 5)), noise_seed=int(rng.integers(2**31 - 1)),
        gaze=(float(rng.uniform(-3, 3)), float(rng.uniform(-1.5, 1.5))))


def neutral_params() -> FaceParams:
    """A default identity with no pose, lighting or noise jitter (for tests and figures)."""
    return FaceParams()


# ----------------------------------------------------------------------------- geometry

def _labels_dict(labels: Sequence[int]) -> Dict[int, bool]:
    labels = [int(v) for v in labels]
    if len(labels) != len(SYNTH_AUS):
        raise ValueError(f"render_face: expected {len(SYNTH_AUS)} labels for AUs {SYNTH_AUS}, "
                         f"got {len(labels)}")
    return {au: v == 1 for au, v in zip(SYNTH_AUS, labels)}


def _quad_curve(p0, p1, p2, n: int = 16) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control p1 -> (n, 2) float points."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _through(p0, pm, p2, n: int = 16) -> np.ndarray:
    """Quadratic curve from p0 to p2 passing through pm at its middle."""
    p0, pm, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, pm, p2))
    return _quad_curve(p0, 2 * pm - (p0 + p2) / 2, p2, n)


def _face_layout(au: Dict[int, bool], p: FaceParams) -> dict:
    """Canonical positions of every feature for these labels (units of a 256 image)."""
    jaw = 18.0 if au[26] else 0.0
    eye_y = CY - 10
    brow_y = eye_y - 20
    mouth_y = CY + p.nose_len + 12
    return dict(jaw=jaw, eye_y=eye_y, brow_y=brow_y, mouth_y=mouth_y,
                chin_y=CY + p.face_h + jaw, nose_tip_y=CY + p.nose_len - 6)


def landmarks(labels: Sequence[int], params: FaceParams, size: int = 256) -> Dict[str, np.ndarray]:
    """Image positions (after the pose jitter) of the eye centres and mouth centre, for tests."""
    au = _labels_dict(labels)
    lay = _face_layout(au, params)
    pts = {"left_eye": (CX - params.eye_dx, lay["eye_y"]),
           "right_eye": (CX + params.eye_dx, lay["eye_y"]),
           "mouth": (CX, lay["mouth_y"])}
    m = _pose_matrix(params, size)
    return {k: m[:, :2] @ np.array(v) + m[:, 2] for k, v in pts.items()}


def _pose_matrix(p: FaceParams, size: int) -> np.ndarray:
    """Canonical (size-scaled) layer -> output image: rotation/scale about the face centre + shift."""
    u = size / CANON
    m = cv2.getRotationMatrix2D((CX * u, CY * u), p.angle, p.scale)
    m[:, 2] += (p.tx * u, p.ty * u)
    return m


# ----------------------------------------------------------------------------- drawing

# Contrast of the features the Haar face cascade keys on (dark eye band, bright bridge).
_STYLE = dict(brow_shadow=-0.25, socket=-0.28, socket_h=11.0, sclera=(225, 228, 232), lash=2.6,
              mouth_shadow=0.0)

class _Canvas:
    """Float BGR canvas addressed in canonical units, with anti-aliased OpenCV drawing."""

    SHIFT = 4  # sub-pixel bits for cv2 drawing

    def __init__(self, size: int):
        self.size = size
        self.u = size / CANON
        self.img = np.zeros((size, size, 3), np.float32)

    def pts(self, pts) -> np.ndarray:
        return np.round(np.asarray(pts, np.float64) * self.u * (1 << self.SHIFT)).astype(np.int32)

    def polyline(self, pts, color, thick, closed=False, img=None):
        cv2.polylines(self.img if img is None else img, [self.pts(pts)], closed, color,
                      max(1, int(round(thick * self.u))), cv2.LINE_AA, self.SHIFT)

    def fill(self, pts, color, img=None):
        cv2.fillPoly(self.img if img is None else img, [self.pts(pts)], color, cv2.LINE_AA,
                     self.SHIFT)

    def ellipse(self, c, axes, color, angle=0.0, thick=-1, img=None, arc=(0, 360)):
        cx, cy = self.pts(c)
        ax = tuple(int(v) for v in self.pts(axes))
        t = -1 if thick < 0 else max(1, int(round(thick * self.u)))
        cv2.ellipse(self.img if img is None else img, (int(cx), int(cy)), ax, angle, arc[0],
                    arc[1], color, t, cv2.LINE_AA, self.SHIFT)

    def _roi(self, pts, pad: float):
        """Pixel box (x0, y0, x1, y1) around canonical points, padded by ``pad`` canonical units."""
        px = np.asarray(pts, np.float64).reshape(-1, 2) * self.u
        r = pad * self.u
        x0, y0 = np.floor(px.min(0) - r).astype(int)
        x1, y1 = np.ceil(px.max(0) + r).astype(int) + 1
        return max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)

    def _shade(self, draw, pts, pad, amount, blur):
        """Multiply the canvas by (1 + amount * soft mask) where the mask is drawn by ``draw``
        (into a local window only: shading is applied to dozens of small features)."""
        x0, y0, x1, y1 = self._roi(pts, pad + 3 * blur)
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        draw(mask, (x0 / self.u, y0 / self.u))
        mask = cv2.GaussianBlur(mask, (0, 0), blur * self.u)
        self.img[y0:y1, x0:x1] *= (1.0 + amount * mask)[:, :, None]

    def blob(self, c, axes, amount, angle=0.0, blur=6.0):
        """Soft elliptical shading (amount < 0 darkens, > 0 lightens)."""
        c = np.asarray(c, np.float64)
        self._shade(lambda m, o: self.ellipse(c - o, axes, 1.0, angle, img=m),
                    [c], max(axes), amount, blur)

    def soft_line(self, pts, amount, thick, blur=1.2):
        """Soft shading along a polyline (wrinkles, folds, shadows)."""
        pts = np.asarray(pts, np.float64)
        self._shade(lambda m, o: self.polyline(pts - o, 1.0, thick, img=m), pts, thick, amount, blur)


def _draw_head(cv: _Canvas, au, lay, p: FaceParams) -> np.ndarray:
    """Head, hair, ears, neck and skin shading. Returns the face-layer alpha mask."""
    skin = np.array(p.skin, np.float32)
    alpha = np.zeros((cv.size, cv.size), np.float32)
    hair = tuple(float(v) for v in p.hair)
    # Neck and ears behind the face.
    neck = [(CX - p.face_w * 0.55, CY + 40), (CX + p.face_w * 0.55, CY + 40),
            (CX + p.face_w * 0.62, CANON + 20), (CX - p.face_w * 0.62, CANON + 20)]
    cv.fill(neck, tuple(float(v) for v in skin * 0.72))
    cv.fill(neck, 1.0, img=alpha)
    for s in (-1, 1):
        ear = (CX + s * (p.face_w + 2), lay["eye_y"] + 12)
        cv.ellipse(ear, (9, 17), tuple(float(v) for v in skin * 0.85))
        cv.ellipse(ear, (9, 17), 1.0, img=alpha)
    # Hair mass behind the head.
    cv.ellipse((CX, CY - 22), (p.face_w + 10, p.face_h * 0.85), hair)
    cv.ellipse((CX, CY - 22), (p.face_w + 10, p.face_h * 0.85), 1.0, img=alpha)
    # Face: upper half-ellipse + lower half-ellipse stretched by the jaw drop.
    top = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 180, 360, 5).astype(np.float64) / 1000
    bottom = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 0, 180, 5).astype(np.float64) / 1000
    face = np.concatenate([bottom * (p.face_w, p.face_h + lay["jaw"]), top * (p.face_w, p.face_h)])
    face += (CX, CY)
    face_mask = np.zeros_like(alpha)
    cv.fill(face, 1.0, img=face_mask)
    np.maximum(alpha, face_mask, out=alpha)
    # Skin shading: darker towards the face outline (a rounded surface). Computed in the face's
    # bounding window only.
    x0, y0, x1, y1 = cv._roi(face, 1)
    fm = face_mask[y0:y1, x0:x1, None]
    ys, xs = _grid(cv.size)
    ys, xs = ys[y0:y1, x0:x1] / cv.u, xs[y0:y1, x0:x1] / cv.u
    ry = (ys - CY) / np.where(ys > CY, p.face_h + lay["jaw"], p.face_h).astype(np.float32)
    r2 = ((xs - CX) / p.face_w) ** 2 + ry ** 2
    shade = np.clip(1.08 - 0.38 * r2 * np.sqrt(r2), 0.55, 1.1)[:, :, None]
    win = cv.img[y0:y1, x0:x1]
    win += (skin * shade - win) * fm
    # Hair fringe over the top of the forehead, clipped to the face.
    fringe_c, fringe_ax = (CX, CY - p.face_h * 1.04), (p.face_w * 1.05, p.face_h * 0.33)
    x0, y0, x1, y1 = cv._roi([fringe_c], max(fringe_ax) + 1)
    o = np.array([x0, y0]) / cv.u
    fringe = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv.ellipse(np.array(fringe_c) - o, fringe_ax, 1.0, img=fringe)
    fringe = (fringe * face_mask[y0:y1, x0:x1])[:, :, None]
    win = cv.img[y0:y1, x0:x1]
    win += (np.array(hair, np.float32) - win) * fringe
    return alpha


def _draw_brows(cv: _Canvas, au, lay, p: FaceParams):
    by = lay["brow_y"]
    for s in (-1, 1):  # s = -1 image-left brow, +1 image-right brow
        inner = np.array([CX + s * 11.0, by + 2])
        mid = np.array([CX + s * 27.0, by - 5])
        outer = np.array([CX + s * 44.0, by + 1])
        if au[1]:
            inner[1] -= 10
            mid[1] -= 3
        if au[2]:
            outer[1] -= 11
            mid[1] -= 5
        if au[4]:
            inner += (-s * 5, 7)
            mid[1] += 5
            outer[1] += 3
        curve = _through(inner, mid, outer, 20)
        cv.soft_line(curve, _STYLE['brow_shadow'], p.brow_thick + 8, blur=4)  # shadow under/around the brow
        # Brows are always much darker than the skin (light hair still gives dark-ish brows).
        colour = tuple(float(v) for v in np.minimum(np.array(p.hair) * 0.8, np.array(p.skin) * 0.4))
        # Thicker at the inner end, like real brows.
        cv.polyline(curve[:12], colour, p.brow_thick)
        cv.polyline(curve[10:], colour, p.brow_thick * 0.75)
    if au[1]:  # central forehead lines
        for dy in (0, 6, 12):
            y = by - 16 - dy
            cv.soft_line(_through((CX - 16, y + 3), (CX, y), (CX + 16, y + 3)), -0.55, 2.8)
    if au[2]:  # lateral forehead lines above the outer brows
        for s in (-1, 1):
            for dy in (0, 6):
                y = by - 18 - dy
                cv.soft_line(_through((CX + s * 24, y + 1), (CX + s * 36, y - 2), (CX + s * 48, y + 4)),
                             -0.55, 2.8)
    if au[4]:  # vertical glabella lines between the brows
        for s in (-1, 1):
            cv.soft_line([(CX + s * 4, by - 4), (CX + s * 5, by + 14)], -0.6, 3.0)


def _draw_eyes(cv: _Canvas, au, lay, p: FaceParams):
    ey = lay["eye_y"]
    up = 6.5 + (7.0 if au[5] else 0.0) - (1.5 if au[7] else 0.0)
    low = 1.5 if au[7] else 5.0
    iris_r = 6.2
    for s in (-1, 1):
        c = np.array([CX + s * p.eye_dx, ey])
        # Eye socket shadow (the darker band Haar features respond to).
        cv.blob(c + (0, -3), (p.eye_w + 8, _STYLE['socket_h']), _STYLE['socket'], blur=5)
        inner = c + (-s * p.eye_w, 1)
        outer = c + (s * p.eye_w, -1)
        upper = _through(inner, c + (0, -up), outer, 20)
        lower = _through(outer, c + (0, low), inner, 20)
        opening = np.concatenate([upper, lower])
        # Sclera + iris + pupil drawn in a local window, then pasted through the lid opening.
        x0, y0, x1, y1 = cv._roi(opening, 2)
        o = np.array([x0, y0]) / cv.u
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv.fill(opening - o, 1.0, img=mask)
        eye = np.empty((y1 - y0, x1 - x0, 3), np.float32)
        eye[:] = _STYLE['sclera']
        ic = c + np.array(p.gaze) - o
        cv.ellipse(ic, (iris_r, iris_r), tuple(float(v) for v in p.iris), img=eye)
        cv.ellipse(ic, (2.6, 2.6), (15, 15, 15), img=eye)
        cv.ellipse(ic + (-1.5, -2), (1.2, 1.2), (245, 245, 245), img=eye)
        win = cv.img[y0:y1, x0:x1]
        win += (eye - win) * mask[:, :, None]
        lash = (25, 25, 30)
        cv.polyline(upper, lash, _STYLE['lash'])
        cv.polyline(lower, tuple(float(v) for v in np.array(p.skin) * 0.55), 1.2)
        # Upper lid crease, closer to the lid line when it is raised.
        crease_gap = 4.0 if au[5] else 5.0
        cv.soft_line(_through(inner + (s * 2, -2), c + (0, -up - crease_gap), outer + (-s * 1, -3)),
                     -0.3, 1.6)
        if au[7]:  # lower-lid tension line
            cv.soft_line(_through(inner + (s * 2, 4), c + (0, low + 5), outer + (-s * 2, 3)), -0.7, 3.2)
            cv.polyline(lower, tuple(float(v) for v in np.array(p.skin) * 0.45), 2.2)  # tense lid
            cv.blob(c + (0, low + 9), (p.eye_w * 0.8, 3.5), 0.18, blur=2)  # bulging lower lid
        if au[6]:  # crow's feet and a raised cheek with the furrow above it
            corner = outer + (s * 3, 0)
            for ang in (-25, 0, 25):
                a = math.radians(ang)
                end = corner + (s * 10 * math.cos(a), 10 * math.sin(a))
                cv.soft_line([corner, end], -0.6, 2.4)
            cheek = c + (s * 4, 26)
            cv.blob(cheek, (17, 11), 0.16, blur=4)
            cv.soft_line(_through(c + (-s * 10, 12), c + (s * 4, 15), c + (s * 18, 10)), -0.45, 2.6)


def _draw_nose(cv: _Canvas, au, lay, p: FaceParams):
    ey, tip = lay["eye_y"], lay["nose_tip_y"]
    lift = 4.0 if au[9] else 0.0
    # Bright bridge, darker sides.
    cv.soft_line([(CX, ey - 6), (CX, tip - 4)], 0.12, 6, blur=3)
    for s in (-1, 1):
        side = _through((CX + s * 7, ey + 4), (CX + s * 9, (ey + tip) / 2), (CX + s * 13, tip - 2 - lift))
        cv.soft_line(side, -0.22, 4, blur=3)
        # Nostril wing and nostril.
        wing = _through((CX + s * 13, tip - 4 - lift), (CX + s * 17, tip + 3 - lift), (CX + s * 10, tip + 7 - lift))
        cv.soft_line(wing, -0.3, 2.0)
        cv.ellipse((CX + s * 7, tip + 5 - lift), (4.5 if au[9] else 3.8, 2.3), (30, 30, 40),
                   angle=s * 15)
    cv.blob((CX, tip), (8, 6), 0.08, blur=3)  # tip highlight
    if au[9]:  # wrinkles across the upper nose
        for k in range(3):
            y = ey + 2 + k * 5
            cv.soft_line(_through((CX - 11, y + 2), (CX, y), (CX + 11, y + 2)), -0.6, 2.6)
        for s in (-1, 1):  # diagonal "bunny lines" on the sides of the bridge
            cv.soft_line([(CX + s * 7, ey + 3), (CX + s * 15, ey + 13)], -0.6, 2.4)


def _draw_mouth(cv: _Canvas, au, lay, p: FaceParams):
    my, w = lay["mouth_y"], p.mouth_w
    # Corner heights: up for AU12, down for AU15.
    dc = (-10.0 if au[12] else 0.0) + (9.0 if au[15] else 0.0)
    dw = 4.0 if au[12] else 0.0
    gap = (7.0 if au[25] else 0.0) + (11.0 if (au[25] and au[26]) else 0.0)
    # Jaw drop without parted lips lowers the closed mouth a little (lips stretch with the jaw).
    # (with parted lips the drop shows as the taller gap instead).
    up_shift = lay["jaw"] * 0.3 if not au[25] else 0.0
    push = -3.0 if au[17] else 0.0  # chin raise pushes the lower lip up
    lc = np.array([CX - w - dw, my + dc + up_shift])
    rc = np.array([CX + w + dw, my + dc + up_shift])
    mid_y = my + up_shift
    lip = np.array(p.skin) * np.array([0.72, 0.68, 1.0])
    lip_col = tuple(float(v) for v in np.clip(lip, 0, 255))
    # Upper lip: cupid's bow on top, the lip line below.
    top = np.concatenate([_through(lc, (CX - w * 0.45, mid_y - 6), (CX, mid_y - 4), 10),
                          _through((CX, mid_y - 4), (CX + w * 0.45, mid_y - 6), rc, 10)])
    line_up = _through(rc, (CX, mid_y + 1 + dc * 0.35), lc, 20)
    lower_top = line_up[::-1] + (0, gap)
    lower_top[0], lower_top[-1] = lc, rc
    lower_bottom = _through(rc, (CX, mid_y + 10 + gap + push), lc, 20)
    if gap > 0:  # open mouth: dark cavity with upper teeth
        cavity = np.concatenate([line_up[::-1], lower_top[::-1]])
        cv.fill(cavity, (35, 30, 55))
        teeth = np.concatenate([line_up[::-1][2:-2], (line_up[::-1] + (0, min(gap * 0.45, 6)))[2:-2][::-1]])
        cv.fill(teeth, (215, 222, 228))
    cv.fill(np.concatenate([top, line_up]), lip_col)
    cv.fill(np.concatenate([lower_top, lower_bottom]), tuple(float(v) * 1.05 for v in lip_col))
    cv.polyline(line_up, (40, 35, 60), 1.6)
    if gap > 0:
        cv.polyline(lower_top, (40, 35, 60), 1.2)
    cv.soft_line(lower_bottom[3:-3] + (0, 3), -0.25, 3, blur=2)  # shadow under the lower lip
    if au[12]:  # nasolabial folds deepen with the smile
        for s in (-1, 1):
            cv.soft_line(_through((CX + s * 15, lay["nose_tip_y"] + 2), (CX + s * (w + 4), my - 8),
                                  (CX + s * (w + 10), my + 4)), -0.55, 3.0)
    if au[15]:  # creases below the pulled-down corners
        for s in (-1, 1):
            c = (lc if s < 0 else rc)
            cv.soft_line([c + (s * 1, 4), c + (s * 5, 21)], -0.65, 3.2)
    if au[17]:  # chin boss: mentolabial furrow, bulge and dimples
        lip_bottom = mid_y + 10 + gap + push
        chin_c = np.array([CX, (lip_bottom + lay["chin_y"]) / 2 + 4])
        cv.soft_line(_through((CX - 15, lip_bottom + 4), (CX, lip_bottom + 8), (CX + 15, lip_bottom + 4)),
                     -0.7, 3.2)
        cv.blob(chin_c, (16, 11), 0.28, blur=3)
        for dx, dy in ((-7, -3), (0, 2), (7, -3), (-4, 5), (4, 5)):
            cv.ellipse(chin_c + (dx * 1.3, dy * 1.2), (2.2, 2.2),
                       tuple(float(v) for v in np.array(p.skin) * 0.5))
    if au[26]:  # jaw-drop shading: longer chin shadow
        chin_y = lay["chin_y"]
        cv.soft_line(_through((CX - 26, chin_y - 8), (CX, chin_y - 2), (CX + 26, chin_y - 8)),
                     -0.3, 6, blur=3)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (size, size) float32, cached (read-only)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _background(p: FaceParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """Flat colour plus low-frequency texture (a 6x6 random grid, smoothly upsampled)."""
    coarse = np.empty((6, 6, 3), np.float32)
    coarse[:] = p.bg_color
    if p.bg_texture > 0:
        coarse += np.float32(p.bg_texture) * rng.standard_normal((6, 6, 3), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def render_face(labels: Sequence[int], params: Optional[FaceParams] = None, size: int = 256) -> np.ndarray:
    """Draw one face: (size, size, 3) uint8 BGR.

    ``labels``: 12 ints (0/1) for :data:`SYNTH_AUS`; each AU's cue is drawn iff its label is 1.
    ``params``: identity and jitter (:func:`sample_params`); the same params and labels always
    give the same bytes (noise comes from ``params.noise_seed``).
    """
    p = neutral_params() if params is None else params
    au = _labels_dict(labels)
    lay = _face_layout(au, p)
    rng = np.random.default_rng(p.noise_seed)
    cv = _Canvas(size)
    alpha = _draw_head(cv, au, lay, p)
    _draw_brows(cv, au, lay, p)
    _draw_eyes(cv, au, lay, p)
    _draw_nose(cv, au, lay, p)
    _draw_mouth(cv, au, lay, p)
    # Pose: rotate/scale/shift the face layer and its mask, then composite over the background.
    m = _pose_matrix(p, size)
    face = cv2.warpAffine(cv.img, m, (size, size), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, m, (size, size), flags=cv2.INTER_LINEAR)[:, :, None]
    img = _background(p, size, rng)
    face -= img
    face *= alpha
    img += face  # background + alpha * (face - background)
    # Lighting: a linear gradient across the image in direction light_dir (separable in x, y).
    if p.light_strength > 0:
        a = math.radians(p.light_dir)
        ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        k = 2 * p.light_strength
        gain = 1 + k * math.sin(a) * ramp[:, None] + k * math.cos(a) * ramp[None, :]
        img *= gain[:, :, None]
    if p.noise_sigma > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(p.noise_sigma)
    np.clip(img, 0, 255, out=img)
    return (img + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- labels

# Expression prototypes: (weight, {AU: probability}). A frame mixes 0-2 prototypes, then each AU
# may also switch on alone; this gives the co-occurrence structure AU graphs are meant to learn
# (AU6 with AU12, AU1 with AU2, AU26 with AU25, AU12 rarely with AU15).
_PROTOTYPES = [
    (0.30, {6: 0.8, 12: 0.95, 25: 0.35, 26: 0.15}),              # smile / laugh
    (0.18, {1: 0.9, 2: 0.9, 5: 0.75, 25: 0.65, 26: 0.65}),         # surprise
    (0.15, {1: 0.55, 4: 0.75, 15: 0.85, 17: 0.6}),                 # sadness
    (0.15, {4: 0.9, 7: 0.85, 5: 0.3, 17: 0.45, 25: 0.15}),         # anger
    (0.12, {9: 0.9, 4: 0.6, 7: 0.45, 15: 0.3, 17: 0.4, 25: 0.3}),  # disgust
    (0.10, {25: 0.85, 26: 0.45, 17: 0.2}),                         # talking
]
_N_PROTOTYPES_P = (0.15, 0.55, 0.30)  # P(0, 1, 2 prototypes in a frame)
_SPONTANEOUS_P = 0.06


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 12) int64 0/1 labels for :data:`SYNTH_AUS` with realistic co-occurrence.

    Prevalences lie between ~15% and ~50%; P(AU12 | AU6), P(AU25 | AU26) and P(AU2 | AU1)
    are high, AU12 and AU15 rarely occur together.
    """
    col = {au: i for i, au in enumerate(SYNTH_AUS)}
    weights = np.array([w for w, _ in _PROTOTYPES])
    probs = np.zeros((len(_PROTOTYPES), len(SYNTH_AUS)))
    for k, (_, table) in enumerate(_PROTOTYPES):
        for au, pr in table.items():
            probs[k, col[au]] = pr
    n_proto = rng.choice(3, size=n, p=_N_PROTOTYPES_P)
    labels = rng.random((n, len(SYNTH_AUS))) < _SPONTANEOUS_P
    for slot in range(2):
        active = n_proto > slot
        proto = rng.choice(len(_PROTOTYPES), size=n, p=weights / weights.sum())
        labels |= active[:, None] & (rng.random((n, len(SYNTH_AUS))) < probs[proto])
    # Lip corners cannot go up and down at once: AU12 mostly wins over AU15.
    both = labels[:, col[12]] & labels[:, col[15]]
    drop = rng.random(n) < 0.85
    labels[both & drop, col[15]] = False
    # A dropped jaw mostly parts the lips.
    jaw_only = labels[:, col[26]] & ~labels[:, col[25]]
    labels[jaw_only & (rng.random(n) < 0.85), col[25]] = True
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------- data set

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
    each frame fresh labels and jitter) and the SPEC §2 fold lists in ``root/list/`` with prefix
    "SYNTH" (written by ``lists.write_fold_lists``). Identical bytes for the same
    arguments. A marker file with the parameters is written last.
    """
    from lists import write_fold_lists

    if min(subjects_per_part, tasks, frames) < 1:
        raise ValueError(f"generate_synthetic_dataset: subjects_per_part, tasks and frames must be "
                         f">= 1, got {subjects_per_part}, {tasks}, {frames}")
    root = Path(root)
    config = _generation_config(subjects_per_part, tasks, frames, seed, size)
    marker = root / MARKER_NAME
    if marker.exists():  # an older SYNTH set of ours: replace it wholesale
        marker.unlink()
        for sub in ("img", "list"):
            shutil.rmtree(root / sub, ignore_errors=True)
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
        from tqdm import tqdm
        bar = tqdm(total=len(sequences) * frames, desc="SYNTH images", unit="img")
    for part, subject, task, identity, labels, rng in sequences:
        folder = root / "img" / subject / task
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            image = render_face(labels[f], sample_params(rng, identity), size=size)
            rel = f"{subject}/{task}/{f + 1}.jpg"
            if not cv2.imwrite(str(root / "img" / rel), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OSError(f"could not write {root / 'img' / rel}")
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
    root = DEFAULT_ROOT if root is None else Path(root)
    sig = inspect.signature(generate_synthetic_dataset)
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        raise TypeError(f"ensure_synthetic_dataset: unknown arguments {sorted(unknown)}")
    args = {k: v.default for k, v in sig.parameters.items() if k != "root"}
    args.update(kwargs)
    wanted = _generation_config(args["subjects_per_part"], args["tasks"], args["frames"],
                                args["seed"], args["size"])
    if _marker_matches(root, wanted):
        return root
    # Several processes (e.g. distributed ranks) may ask at once: one generates, the others wait
    # on the lock and then find the marker.
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.parent / f".{root.name}.lock"):
        if _marker_matches(root, wanted):
            return root
        return generate_synthetic_dataset(root, **args)


def _marker_matches(root: Path, wanted: dict) -> bool:
    try:
        have = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return {k: have.get(k) for k in wanted} == wanted


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (POSIX flock; no locking where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: single-process use assumed
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def preview_grid(n: int = 12, cols: int = 6, seed: int = 0, size: int = 256) -> np.ndarray:
    """A BGR grid of random SYNTH faces, each captioned with its active AUs (for the README)."""
    rng = np.random.default_rng(seed)
    labels = sample_labels(rng, n)
    tiles = []
    for i in range(n):
        img = render_face(labels[i], sample_params(rng), size=size)
        caption = " ".join(str(au) for au, v in zip(SYNTH_AUS, labels[i]) if v) or "neutral"
        bar = np.full((22, size, 3), 255, np.uint8)
        cv2.putText(bar, "AU " + caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        tiles.append(np.vstack([img, bar]))
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)]
    return np.vstack(rows)
