"""Drawing SYNTH faces: head, brows, eyes, nose and mouth with each AU's cue, :func:`render_face`,
:func:`landmarks` and :func:`preview_grid`.

Coordinates are canonical units of the upright face (canvas); the cues of the AUs are listed in
the package docstring (megraphau/synth/__init__.py).
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from megraphau.synth.canvas import CANON, CX, CY, Canvas, pose_matrix
from megraphau.synth.exactmath import noise, resize_cubic, sin_cos
from megraphau.synth.params import SYNTH_AUS, FaceParams, labels_dict, neutral_params, sample_labels, sample_params

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
    au = labels_dict(labels)
    lay = _face_layout(au, params)
    pts = {"left_eye": (CX - params.eye_dx, lay["eye_y"]),
           "right_eye": (CX + params.eye_dx, lay["eye_y"]),
           "mouth": (CX, lay["mouth_y"])}
    m = pose_matrix(params, size)
    u = size / CANON
    return {k: np.array([m[0, 0] * x * u + m[0, 1] * y * u + m[0, 2],
                         m[1, 0] * x * u + m[1, 1] * y * u + m[1, 2]]) for k, (x, y) in pts.items()}


# Contrast of the features the Haar face cascade keys on (dark eye band, bright bridge).
_STYLE = dict(brow_shadow=-0.25, socket=-0.28, socket_h=11.0, sclera=(225, 228, 232), lash=2.6,
              mouth_shadow=0.0)


#: Unit circle points (cos, sin) every 5 degrees from 0 to 360.
_CIRCLE = np.array([sin_cos(a)[::-1] for a in range(0, 365, 5)])
_CIRCLE.flags.writeable = False


def _draw_head(cv: Canvas, au, lay, p: FaceParams) -> None:
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


def _draw_brows(cv: Canvas, au, lay, p: FaceParams):
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


def _draw_eyes(cv: Canvas, au, lay, p: FaceParams):
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
                sin_a, cos_a = sin_cos(ang)
                end = corner + (s * 10 * cos_a, 10 * sin_a)
                cv.soft_line([corner, end], -0.6, 2.4)
            cheek = c + (s * 4, 26)
            cv.blob(cheek, (17, 11), 0.16, blur=4)
            cv.soft_line(_through(c + (-s * 10, 12), c + (s * 4, 15), c + (s * 18, 10)), -0.45, 2.6)


def _draw_nose(cv: Canvas, au, lay, p: FaceParams):
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


def _draw_mouth(cv: Canvas, au, lay, p: FaceParams):
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
        coarse += noise(rng, (6, 6, 3), p.bg_texture)
    return resize_cubic(coarse, size)


def render_face(labels: Sequence[int], params: Optional[FaceParams] = None, size: int = 256) -> np.ndarray:
    """Draw one face: (size, size, 3) uint8 BGR.

    ``labels``: 12 ints (0/1) for :data:`SYNTH_AUS`; each AU's cue is drawn iff its label is 1.
    ``params``: identity and jitter (:func:`sample_params`); the same params and labels always
    give the same pixels, on every machine (noise comes from ``params.noise_seed``; the drawing
    is exact, see megraphau/synth/exactmath.py).
    """
    p = neutral_params() if params is None else params
    au = labels_dict(labels)
    lay = _face_layout(au, p)
    rng = np.random.default_rng(p.noise_seed)
    # The face is drawn over the background, posed (rotation/scale/shift) as it is drawn.
    cv = Canvas(_background(p, size, rng), p)
    _draw_head(cv, au, lay, p)
    _draw_brows(cv, au, lay, p)
    _draw_eyes(cv, au, lay, p)
    _draw_nose(cv, au, lay, p)
    _draw_mouth(cv, au, lay, p)
    img = cv.img
    # Lighting: a linear gradient across the image in direction light_dir (separable in x, y).
    if p.light_strength > 0:
        s, c = sin_cos(p.light_dir)
        ramp = (np.arange(size) + 0.5) / size - 0.5
        k = 2 * p.light_strength
        gain = 1 + (k * s) * ramp[:, None] + (k * c) * ramp[None, :]
        img *= gain[:, :, None]
    if p.noise_sigma > 0:
        img += noise(rng, img.shape, p.noise_sigma)
    np.clip(img, 0, 255, out=img)
    return np.floor(img + 0.5).astype(np.uint8)


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
