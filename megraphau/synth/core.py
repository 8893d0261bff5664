"""SYNTH: a procedurally drawn facial action unit data set that every command can run on.

Real AU data sets (BP4D, DISFA) are licensed and cannot be shipped, so this module draws
cartoon-like but shaded faces in numpy in which each of 12 action units (FACS, as in
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

Cue sizes are chosen so that they survive the CPU quickstart's 91-pixel resize (80-pixel crops,
megraphau/configs/SYNTH.yaml): there a ResNet-18 from scratch (train_stage1.py, fold 1, 8 epochs) reaches a
test-fold mean F1 of 72-82 over seeds (all-positive baseline 42); every AU beats its all-positive
F1, AU5 and AU7 are the hardest cues (F1 59-65 in every seed), AU9 and AU15 the least stable ones.

Faces vary by identity (skin tone, face shape, hair, feature sizes) and by frame (pose rotation,
scale, translation, lighting gradient, background colour and texture, sensor noise, gaze) — all
in :class:`FaceParams`, drawn by :func:`sample_params`. Labels are drawn with realistic
co-occurrence by :func:`sample_labels`. :func:`generate_synthetic_dataset` writes a BP4D-style
tree ``img/{subject}/{task}/{frame}.jpg`` plus the 3-fold lists (lists.py); MTCNN
(:class:`faces.FaceDetector`) finds the drawn faces.
:func:`ensure_synthetic_dataset` generates it once, on first use, for whoever asks (the engine
when a run names the SYNTH config, or the command line).

Same pixels on every machine: the drawing (anti-aliased shapes by exact supersampling, Gaussian
shading blurs and the bicubic background as products of integer matrices, noise from random
bytes) uses only correctly rounded double arithmetic and integers in numpy, no OpenCV drawing,
blurring or resampling (those differ between OpenCV versions and CPU dispatch: generator version
1 drew with them, and its images differed by up to 180 grey levels at anti-aliased edges between
OpenCV 4.6-4.10 and 4.14). The JPEG files are written by OpenCV's libjpeg-turbo, whose output
was the same bytes in every wheel tried (tests/test_synth_faces.py pins a digest of the pixels).

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

from megraphau.paths import DATA_DIR  # noqa: E402

DEFAULT_ROOT = DATA_DIR / "SYNTH"
MARKER_NAME = ".synth_complete.json"
GENERATOR_VERSION = 2  # 2: exact numpy drawing, same pixels on every machine

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


@functools.cache
def _unit_steps(n: int) -> np.ndarray:
    """(n, 1) parameters 0, 1/(n-1), ..., 1 (read-only)."""
    t = (np.arange(n) / (n - 1))[:, None]
    t.flags.writeable = False
    return t


def _quad_curve(p0, p1, p2, n: int = 16) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control p1 -> (n, 2) float points."""
    t = _unit_steps(n)
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) * (1 - t) * p0 + 2 * (1 - t) * t * p1 + t * t * p2


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
    u = size / CANON
    return {k: np.array([m[0, 0] * x * u + m[0, 1] * y * u + m[0, 2],
                         m[1, 0] * x * u + m[1, 1] * y * u + m[1, 2]]) for k, (x, y) in pts.items()}


# ----------------------------------------------------------------------------- exact arithmetic
#
# Every pixel is computed with IEEE-754 double additions, subtractions, multiplications,
# divisions, square roots and comparisons in numpy (each correctly rounded, so the same bits on
# every CPU, SIMD width and numpy version), integer arithmetic, and matrix products of
# integer-valued matrices small enough to be exact. No OpenCV drawing, blurring or resampling
# (their float and fixed-point paths differ between OpenCV versions and CPU dispatch), no libm
# transcendentals (sin, cos, exp: the few needed are the series below) and no Gaussian random
# numbers (numpy's draws them with libm's exp/log): noise and texture come from random bytes.

def _sin_cos(degrees: float) -> Tuple[float, float]:
    """(sin, cos) of an angle in degrees from a Taylor series in plain double arithmetic."""
    d = math.fmod(float(degrees), 360.0)  # fmod is exact
    quadrant = int(round(d / 90.0))
    x = (d - 90.0 * quadrant) * (math.pi / 180.0)  # |x| <= pi/4
    x2 = x * x
    s = term_s = x
    c = term_c = 1.0
    for k in range(1, 12):
        term_s *= -x2 / ((2 * k) * (2 * k + 1))
        term_c *= -x2 / ((2 * k - 1) * (2 * k))
        s += term_s
        c += term_c
    return [(s, c), (c, -s), (-s, -c), (-c, s)][quadrant % 4]


def _exp_neg(t: np.ndarray) -> np.ndarray:
    """exp(-t) for an array 0 <= t <= ~10: exp(t / 16) by its Taylor series, squared four times,
    inverted; plain double arithmetic elementwise."""
    x = np.asarray(t, np.float64) / 16.0
    total = np.ones_like(x)
    term = np.ones_like(x)
    for k in range(1, 20):
        term = term * x / k
        total = total + term
    for _ in range(4):
        total = total * total
    return 1.0 / total


@functools.lru_cache(maxsize=256)
def _gauss_weights(sigma: float) -> np.ndarray:
    """Integer Gaussian kernel (peak 4096) with OpenCV's size rule for float images (radius ~4 sigma)."""
    radius = max((int(round(sigma * 8 + 1)) | 1) // 2, 1)
    i = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.floor(4096.0 * _exp_neg(i * i / (2.0 * sigma * sigma)) + 0.5)
    out.flags.writeable = False
    return out


def _band(out0: int, out1: int, in0: int, in1: int, sigma: float) -> np.ndarray:
    """(out1 - out0, in1 - in0) matrix of integer Gaussian weights w[out - in] (zero beyond the
    kernel): a 1-D blur of pixels in0..in1 onto pixels out0..out1 with zeros outside."""
    w = _gauss_weights(sigma)
    radius = len(w) // 2
    n_in = in1 - in0
    # g[k] = weight of offset (out - in) = k + first; row i of the matrix is g[i .. i + n_in) reversed.
    first = out0 - in1 + 1
    g = np.zeros(out1 - out0 + n_in - 1)
    lo, hi = max(-radius - first, 0), min(radius - first + 1, len(g))
    if hi > lo:
        g[lo:hi] = w[lo + first + radius:hi + first + radius]
    return np.lib.stride_tricks.as_strided(g[n_in - 1:], (out1 - out0, n_in), (g.strides[0], -g.strides[0]),
                                           writeable=False)


# ----------------------------------------------------------------------------- rasterising
#
# Anti-aliasing by exact supersampling: each pixel (centre at integer coordinates, covering
# [i - 0.5, i + 0.5)) has _SY sample rows; along a row a shape covers spans [lo, hi), cut at
# 1/_SX pixel. A pixel's coverage is the integer number of covered samples out of _SY * _SX.
_SY, _SX = 4, 16
_SAMPLES = _SY * _SX


def _box(xmin, ymin, xmax, ymax, shape) -> Optional[Tuple[int, int, int, int]]:
    """Pixels (x0, y0, x1, y1) of an array of ``shape`` touched by the extent [xmin, xmax] x
    [ymin, ymax] (pixel coordinates), or None."""
    h, w = shape[:2]
    x0, y0 = max(math.floor(xmin + 0.5), 0), max(math.floor(ymin + 0.5), 0)
    x1, y1 = min(math.floor(xmax + 0.5) + 1, w), min(math.floor(ymax + 0.5) + 1, h)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def _sample_rows(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (y0 - 0.5) + (np.arange((y1 - y0) * _SY) + 0.5) / _SY


def _coverage(spans: np.ndarray, box, disjoint: bool = False):
    """(box, covered samples per pixel of ``box``, int64 0.._SAMPLES) for the union of the spans
    [lo, hi) = spans[0], spans[1] (each (sample rows, k); spans with lo >= hi are empty; ends may
    be infinite), or None when nothing is covered. ``disjoint``: a row's spans do not overlap."""
    x0, y0, x1, y1 = box
    w = x1 - x0
    n = w * _SX
    # Sample j of a row lies at x0 - 0.5 + (j + 0.5) / _SX; a span covers samples js <= j < je.
    c = (x0 - 0.5) * _SX + 0.5
    spans = np.ceil(spans * _SX - c)
    np.maximum(spans, 0, out=spans)
    np.minimum(spans, n, out=spans)
    spans = spans.astype(np.int64)
    js, je = spans[0], spans[1]
    R, K = js.shape
    if not disjoint and K > 1:
        # Union: in order of start, each span keeps only what lies beyond the spans before it
        # (their running maximum end); the pieces are disjoint, whatever the order of ties.
        order = np.argsort(js, axis=1, kind="stable")
        r = np.arange(R)[:, None]
        js, je = js[r, order], je[r, order]
        reach = np.maximum.accumulate(je, axis=1)
        np.maximum(js[:, 1:], reach[:, :-1], out=js[:, 1:])
        np.maximum(je[:, 1:], reach[:, :-1], out=je[:, 1:])
    valid = je > js
    rows = valid.nonzero()[0]
    if not len(rows):
        return None
    # Coverage per pixel as the running sum along the row of a difference array: a span [s, e)
    # adds _SX - s % _SX at its first pixel and s % _SX at the next, the opposite at its end
    # (the _SY sample rows of a pixel row share one array: sums commute with the running sum).
    (ps, rs), (pe, re) = np.divmod(js[valid], _SX), np.divmod(je[valid], _SX)
    width = w + 2
    base = rows // _SY * width
    idx = np.concatenate([base + ps, base + ps + 1, base + pe, base + pe + 1])
    diff = np.bincount(idx, np.concatenate([_SX - rs, rs, re - _SX, -re]).astype(np.float64),
                       minlength=(y1 - y0) * width)
    return box, diff.reshape(-1, width).cumsum(axis=1)[:, :w].astype(np.int64)


def _edge_crossings(xa, ya, xb, yb, ys) -> np.ndarray:
    """x where the edges (xa, ya)-(xb, yb) cross the rows ys (half-open in y), inf elsewhere:
    (rows,) + edges' shape."""
    ys = ys.reshape((-1,) + (1,) * np.ndim(xa))
    cross = (ya <= ys) != (yb <= ys)
    dy = yb - ya
    slope = (xb - xa) / np.where(dy == 0, 1.0, dy)
    return np.where(cross, xa + (ys - ya) * slope, np.inf)


def _cover_polygon(pts, shape):
    """(box, counts) of a filled polygon (even-odd rule; pixel coordinates) or None."""
    box = _box(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max(), shape)
    if box is None:
        return None
    nxt = np.roll(pts, -1, axis=0)
    x = np.sort(_edge_crossings(pts[:, 0], pts[:, 1], nxt[:, 0], nxt[:, 1], _sample_rows(box)), axis=1)
    k = int(np.isfinite(x).sum(axis=1).max())  # even: a closed outline crosses a row in pairs
    if k == 0:
        return None
    return _coverage(x[:, :k].reshape(len(x), k // 2, 2).transpose(2, 0, 1), box, disjoint=True)


def _cover_polyline(pts, width: float, shape, closed: bool = False):
    """(box, counts) of a polyline of ``width`` pixels with round joins and caps (the union of
    discs at the vertices and rectangles along the segments), or None."""
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    r = width / 2
    (xmin, ymin), (xmax, ymax) = pts.min(axis=0), pts.max(axis=0)
    box = _box(xmin - r, ymin - r, xmax + r, ymax + r, shape)
    if box is None:
        return None
    ys = _sample_rows(box)
    a, d = pts[:-1], pts[1:] - pts[:-1]
    length = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
    keep = length > 0
    a, d, length = a[keep], d[keep], length[keep]
    nd, ns = len(pts), len(a)
    spans = np.empty((2, len(ys), nd + ns))
    # Discs: half-chord at each row (-1 where the row misses the disc: an empty span).
    dy = ys[:, None] - pts[:, 1]
    h2 = r * r - dy * dy
    half = np.sqrt(np.maximum(h2, 0.0))
    half[h2 < 0] = -1.0
    np.subtract(pts[:, 0], half, out=spans[0, :, :nd])
    np.add(pts[:, 0], half, out=spans[1, :, :nd])
    if ns:  # rectangles: crossings of their 4 edges with each row; min..max of those
        n = d[:, ::-1] * (r / length)[:, None]
        n[:, 0] = -n[:, 0]
        b = a + d
        cx = np.array([a[:, 0] + n[:, 0], b[:, 0] + n[:, 0], b[:, 0] - n[:, 0], a[:, 0] - n[:, 0]])
        cy = np.array([a[:, 1] + n[:, 1], b[:, 1] + n[:, 1], b[:, 1] - n[:, 1], a[:, 1] - n[:, 1]])
        nxt = [1, 2, 3, 0]
        x = _edge_crossings(cx, cy, cx[nxt], cy[nxt], ys)  # (rows, 4, segments)
        x.min(axis=1, out=spans[0, :, nd:])
        x[np.isinf(x)] = -np.inf
        x.max(axis=1, out=spans[1, :, nd:])  # rows that miss: lo = inf > hi = -inf, empty
    return _coverage(spans, box)


def _cover_ellipse(c, axes, angle: float, shape):
    """(box, counts) of a filled ellipse (centre, half-axes, rotation in degrees as cv2.ellipse),
    or None."""
    a, b = float(axes[0]), float(axes[1])
    if a <= 0 or b <= 0:
        return None
    s, co = _sin_cos(angle)
    ex = math.sqrt(a * a * co * co + b * b * s * s)
    ey = math.sqrt(a * a * s * s + b * b * co * co)
    cx, cy = float(c[0]), float(c[1])
    box = _box(cx - ex, cy - ey, cx + ex, cy + ey, shape)
    if box is None:
        return None
    # Points (cx + t, y) inside: qa t^2 + qb t + qc <= 0 (axes: t cos + dy sin, -t sin + dy cos).
    ia, ib = 1.0 / (a * a), 1.0 / (b * b)
    qa = co * co * ia + s * s * ib
    dy = _sample_rows(box)[:, None] - cy
    qb = (2.0 * co * s * (ia - ib)) * dy
    qc = (s * s * ia + co * co * ib) * dy * dy - 1.0
    disc = qb * qb - 4.0 * qa * qc
    root = np.sqrt(np.maximum(disc, 0.0))
    root[disc < 0] = -1.0  # rows that miss: lo > hi, empty
    return _coverage(cx + (_PLUS_MINUS * root - qb) / (2.0 * qa), box)


_PLUS_MINUS = np.array([-1.0, 1.0])[:, None, None]
_PLUS_MINUS.flags.writeable = False


def _paint(img: np.ndarray, cover, color) -> None:
    """Blend ``color`` into ``img`` by the coverage (``img`` = img + (color - img) * coverage)."""
    if cover is None:
        return
    (x0, y0, x1, y1), counts = cover
    a = counts * (1.0 / _SAMPLES)
    win = img[y0:y1, x0:x1]
    if img.ndim == 3:
        win += (np.asarray(color, np.float64) - win) * a[:, :, None]
    else:
        win += (float(color) - win) * a


def _pose_matrix(p: FaceParams, size: int) -> np.ndarray:
    """Canonical coordinates scaled to the image (``size / CANON`` per unit) -> output image:
    rotation/scale about the face centre + shift (cv2.getRotationMatrix2D's convention)."""
    u = size / CANON
    s, c = _sin_cos(p.angle)
    al, be = p.scale * c, p.scale * s
    cx, cy = CX * u, CY * u
    return np.array([[al, be, (1 - al) * cx - be * cy + p.tx * u],
                     [-be, al, be * cx + (1 - al) * cy + p.ty * u]])


def _resize_cubic(src: np.ndarray, size: int) -> np.ndarray:
    """(h, w, c) -> (size, size, c) bicubic (Keys, a = -0.75, replicated border, pixel-centre
    alignment: cv2.resize INTER_CUBIC's kernel and mapping), in integers: the source in 1/64
    levels, the weights in 1/2048 (as OpenCV's 8-bit path), so the matrix products are exact."""
    h, w, ch = src.shape

    def weights(n):  # (size, n) integer interpolation matrix
        pos = (np.arange(size) + 0.5) * (n / size) - 0.5
        base = np.floor(pos)
        t = pos - base
        a = -0.75
        t1, u = t + 1.0, 1.0 - t
        k = [((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a,
             ((a + 2) * t - (a + 3)) * t * t + 1,
             ((a + 2) * u - (a + 3)) * u * u + 1]
        k = [np.floor(v * 2048.0 + 0.5) for v in k]
        k.append(2048.0 - k[0] - k[1] - k[2])
        m = np.zeros((size, n))
        rows = np.arange(size)
        for j in range(4):
            np.add.at(m, (rows, np.clip(base + (j - 1), 0, n - 1).astype(np.intp)), k[j])
        return m

    levels = np.floor(src * 64.0 + 0.5)
    rows = np.einsum("xk,ykc->yxc", weights(w), levels)                  # (h, size, ch)
    out = np.einsum("yk,kxc->yxc", weights(h), rows)                    # (size, size, ch)
    return out / (2048.0 * 2048.0 * 64.0)


def _noise(rng: np.random.Generator, shape, sigma: float = 1.0) -> np.ndarray:
    """Approximately normal noise of standard deviation ``sigma`` from random bytes: a sum of 4
    uniform bytes (mean 510, variance 4 * (256**2 - 1) / 12), centred and scaled; exact integer
    draws (numpy's normal draws use libm's exp and log)."""
    count = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(4 * count), np.uint8).reshape(4, count)
    total = raw.sum(axis=0, dtype=np.int16) - 510
    return (total * (sigma / math.sqrt(21845.0))).reshape(shape)


# ----------------------------------------------------------------------------- drawing

# Contrast of the features the Haar face cascade keys on (dark eye band, bright bridge).
_STYLE = dict(brow_shadow=-0.25, socket=-0.28, socket_h=11.0, sclera=(225, 228, 232), lash=2.6,
              mouth_shadow=0.0)


class _Canvas:
    """The float64 BGR image being drawn, addressed in canonical units of the upright face: the
    pose (rotation, scale, shift about the face centre) is applied to the shapes' coordinates,
    so everything is drawn once, in place, with the exact anti-aliasing above.

    Drawing calls take canonical coordinates; ``img`` (default: the image) is any array on the
    image's pixel grid, ``origin`` the image pixel of its top-left element (for windows).
    """

    def __init__(self, img: np.ndarray, p: FaceParams):
        self.img = img
        self.size = img.shape[0]
        self.u = self.size / CANON
        self.scale = p.scale
        self.angle = p.angle
        m = _pose_matrix(p, self.size)
        self.m = np.concatenate([m[:, :2] * self.u, m[:, 2:]], axis=1)  # canonical -> image
        (a, b, tx), (c, d, ty) = m.tolist()
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        u = self.u  # image -> canonical
        self.inv = [[ia / u, ib / u, -(ia * tx + ib * ty) / u], [ic / u, id_ / u, -(ic * tx + id_ * ty) / u]]

    def px(self, pts, origin=(0, 0)) -> np.ndarray:
        """Image pixel coordinates (minus ``origin``) of canonical points: (n, 2)."""
        q = np.asarray(pts, np.float64).reshape(-1, 2)
        m = self.m
        out = np.empty_like(q)
        out[:, 0] = m[0, 0] * q[:, 0] + m[0, 1] * q[:, 1] + (m[0, 2] - origin[0])
        out[:, 1] = m[1, 0] * q[:, 0] + m[1, 1] * q[:, 1] + (m[1, 2] - origin[1])
        return out

    def canonical(self, xs, ys):
        """Canonical coordinates of image pixel coordinates (arrays)."""
        v = self.inv
        return v[0][0] * xs + v[0][1] * ys + v[0][2], v[1][0] * xs + v[1][1] * ys + v[1][2]

    def _target(self, img):
        return (self.img if img is None else img).shape

    def cover_polygon(self, pts, img=None, origin=(0, 0)):
        return _cover_polygon(self.px(pts, origin), self._target(img))

    # Sizes as generator version 1 drew them (the strength of its cues): cv2 drew its
    # "anti-aliased" shapes on float canvases without anti-aliasing, thick lines of integer
    # thickness t as t + 1 pixels wide (t + 2 for odd t) and fills over every pixel whose centre
    # the shape touches (half a pixel more all round: done here for ellipses, which carry small
    # cues such as nostrils and chin dimples; polygons are drawn to their outline).

    def cover_polyline(self, pts, thick, closed=False, img=None, origin=(0, 0)):
        t = max(1, int(round(thick * self.u)))  # whole pixels at the upright size, as cv2's
        width = (t + 1 + t % 2 if t > 1 else 1) * self.scale
        return _cover_polyline(self.px(pts, origin), width, self._target(img), closed)

    def cover_ellipse(self, c, axes, angle=0.0, img=None, origin=(0, 0)):
        k = self.u * self.scale
        return _cover_ellipse(self.px(c, origin)[0], (axes[0] * k + 0.5, axes[1] * k + 0.5),
                              angle - self.angle, self._target(img))

    def paint(self, cover, color, img=None):
        _paint(self.img if img is None else img, cover, color)

    def polyline(self, pts, color, thick, closed=False, img=None, origin=(0, 0)):
        self.paint(self.cover_polyline(pts, thick, closed, img, origin), color, img)

    def fill(self, pts, color, img=None, origin=(0, 0)):
        self.paint(self.cover_polygon(pts, img, origin), color, img)

    def ellipse(self, c, axes, color, angle=0.0, img=None, origin=(0, 0)):
        self.paint(self.cover_ellipse(c, axes, angle, img, origin), color, img)

    def _roi(self, pts, pad: float):
        """Pixel box (x0, y0, x1, y1) around canonical points, padded by ``pad`` canonical units."""
        px = self.px(pts)
        r = pad * self.u * self.scale
        x0, y0 = np.floor(px.min(0) - r).astype(int)
        x1, y1 = np.ceil(px.max(0) + r).astype(int) + 1
        return max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)

    def _shade(self, cover, amount, blur):
        """Multiply the image by (1 + amount * soft mask), the mask being the shape's coverage
        blurred by a Gaussian of ``blur`` canonical units (in the shape's window only: shading is
        applied to dozens of small features). The blur is a product of integer matrices: exact."""
        if cover is None:
            return
        (x0, y0, x1, y1), counts = cover
        sigma = blur * self.u * self.scale
        weights = _gauss_weights(sigma)
        radius = len(weights) // 2
        bx0, by0 = max(x0 - radius, 0), max(y0 - radius, 0)
        bx1, by1 = min(x1 + radius, self.size), min(y1 + radius, self.size)
        rows = _band(by0, by1, y0, y1, sigma)
        cols = _band(bx0, bx1, x0, x1, sigma)
        blurred = rows @ counts.astype(np.float64) @ cols.T
        gain = blurred * (amount / (_SAMPLES * float(weights.sum()) ** 2))
        gain += 1.0
        self.img[by0:by1, bx0:bx1] *= gain[:, :, None]

    def blob(self, c, axes, amount, angle=0.0, blur=6.0):
        """Soft elliptical shading (amount < 0 darkens, > 0 lightens)."""
        self._shade(self.cover_ellipse(c, axes, angle), amount, blur)

    def soft_line(self, pts, amount, thick, blur=1.2):
        """Soft shading along a polyline (wrinkles, folds, shadows)."""
        self._shade(self.cover_polyline(pts, thick), amount, blur)


#: Unit circle points (cos, sin) every 5 degrees from 0 to 360.
_CIRCLE = np.array([_sin_cos(a)[::-1] for a in range(0, 365, 5)])
_CIRCLE.flags.writeable = False


def _draw_head(cv: _Canvas, au, lay, p: FaceParams) -> None:
    """Head, hair, ears, neck and skin shading."""
    skin = np.array(p.skin, np.float64)
    hair = tuple(float(v) for v in p.hair)
    # Neck and ears behind the face.
    neck = [(CX - p.face_w * 0.55, CY + 40), (CX + p.face_w * 0.55, CY + 40),
            (CX + p.face_w * 0.62, CANON + 20), (CX - p.face_w * 0.62, CANON + 20)]
    cv.fill(neck, skin * 0.72)
    for s in (-1, 1):
        cv.ellipse((CX + s * (p.face_w + 2), lay["eye_y"] + 12), (9, 17), skin * 0.85)
    # Hair mass behind the head.
    cv.ellipse((CX, CY - 22), (p.face_w + 10, p.face_h * 0.85), hair)
    # Face: upper half-ellipse + lower half-ellipse stretched by the jaw drop (unit circle points
    # every 5 degrees, as cv2.ellipse2Poly).
    bottom, top = _CIRCLE[:37], _CIRCLE[36:]
    face = np.concatenate([bottom * (p.face_w, p.face_h + lay["jaw"]), top * (p.face_w, p.face_h)])
    face += (CX, CY)
    # Skin shading: darker towards the face outline (a rounded surface). Computed in the face's
    # bounding window only, in canonical coordinates of each pixel.
    x0, y0, x1, y1 = cv._roi(face, 1)
    fm = np.zeros((y1 - y0, x1 - x0))
    cv.fill(face, 1.0, img=fm, origin=(x0, y0))
    ys, xs = _grid(cv.size)
    xs, ys = cv.canonical(xs[y0:y1, x0:x1], ys[y0:y1, x0:x1])
    ry = (ys - CY) / np.where(ys > CY, p.face_h + lay["jaw"], p.face_h)
    rx = (xs - CX) / p.face_w
    r2 = rx * rx + ry * ry
    skin_col = skin * np.clip(1.08 - 0.38 * r2 * np.sqrt(r2), 0.55, 1.1)[:, :, None]
    win = cv.img[y0:y1, x0:x1]
    win += (skin_col - win) * fm[:, :, None]
    # Hair fringe over the top of the forehead, clipped to the face: it replaces the skin just
    # painted (also in the part of an edge pixel the face covers).
    fringe = np.zeros_like(fm)
    cv.ellipse((CX, CY - p.face_h * 1.04), (p.face_w * 1.05, p.face_h * 0.33), 1.0, img=fringe,
               origin=(x0, y0))
    win += (np.array(hair) - skin_col) * (fringe * fm)[:, :, None]


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
        o = (x0, y0)
        mask = np.zeros((y1 - y0, x1 - x0))
        cv.fill(opening, 1.0, img=mask, origin=o)
        eye = np.empty((y1 - y0, x1 - x0, 3))
        eye[:] = _STYLE['sclera']
        ic = c + np.array(p.gaze)
        cv.ellipse(ic, (iris_r, iris_r), tuple(float(v) for v in p.iris), img=eye, origin=o)
        cv.ellipse(ic, (2.6, 2.6), (15, 15, 15), img=eye, origin=o)
        cv.ellipse(ic + (-1.5, -2), (1.2, 1.2), (245, 245, 245), img=eye, origin=o)
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
                sin_a, cos_a = _sin_cos(ang)
                end = corner + (s * 10 * cos_a, 10 * sin_a)
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
    """Pixel row and column coordinates (size, size) float64, cached (read-only)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _background(p: FaceParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """Flat colour plus low-frequency texture (a 6x6 random grid, smoothly upsampled)."""
    coarse = np.empty((6, 6, 3))
    coarse[:] = p.bg_color
    if p.bg_texture > 0:
        coarse += _noise(rng, (6, 6, 3), p.bg_texture)
    return _resize_cubic(coarse, size)


def render_face(labels: Sequence[int], params: Optional[FaceParams] = None, size: int = 256) -> np.ndarray:
    """Draw one face: (size, size, 3) uint8 BGR.

    ``labels``: 12 ints (0/1) for :data:`SYNTH_AUS`; each AU's cue is drawn iff its label is 1.
    ``params``: identity and jitter (:func:`sample_params`); the same params and labels always
    give the same pixels, on every machine (noise comes from ``params.noise_seed``; the drawing
    is exact, see "exact arithmetic" above).
    """
    p = neutral_params() if params is None else params
    au = _labels_dict(labels)
    lay = _face_layout(au, p)
    rng = np.random.default_rng(p.noise_seed)
    # The face is drawn over the background, posed (rotation/scale/shift) as it is drawn.
    cv = _Canvas(_background(p, size, rng), p)
    _draw_head(cv, au, lay, p)
    _draw_brows(cv, au, lay, p)
    _draw_eyes(cv, au, lay, p)
    _draw_nose(cv, au, lay, p)
    _draw_mouth(cv, au, lay, p)
    img = cv.img
    # Lighting: a linear gradient across the image in direction light_dir (separable in x, y).
    if p.light_strength > 0:
        s, c = _sin_cos(p.light_dir)
        ramp = (np.arange(size) + 0.5) / size - 0.5
        k = 2 * p.light_strength
        gain = 1 + (k * s) * ramp[:, None] + (k * c) * ramp[None, :]
        img *= gain[:, :, None]
    if p.noise_sigma > 0:
        img += _noise(rng, img.shape, p.noise_sigma)
    np.clip(img, 0, 255, out=img)
    return np.floor(img + 0.5).astype(np.uint8)


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
    each frame fresh labels and jitter) and the subject-independent 3-fold lists in ``root/list/`` with prefix
    "SYNTH" (written by ``lists.write_fold_lists``). Identical bytes for the same
    arguments, on every machine tried (module docstring). A marker file with the parameters is
    written last.
    """
    from megraphau.data.lists import write_fold_lists

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
