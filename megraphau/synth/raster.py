"""SYNTH's rasteriser: anti-aliased coverage of polygons, thick polylines and ellipses, and painting.

Anti-aliasing by exact supersampling: each pixel (centre at integer coordinates, covering
[i - 0.5, i + 0.5)) has _SY sample rows; along a row a shape covers spans [lo, hi), cut at
1/_SX pixel. A pixel's coverage is the integer number of covered samples out of _SY * _SX, so the
same on every machine (see exactmath). Shapes are in pixel coordinates; ``cover_*`` return
``(box, counts)``: the pixel box (x0, y0, x1, y1) they touch and the covered samples per pixel.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from megraphau.synth.exactmath import sin_cos

_SY, _SX = 4, 16
SAMPLES = _SY * _SX


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


def coverage(spans: np.ndarray, box, disjoint: bool = False):
    """(box, covered samples per pixel of ``box``, int64 0..SAMPLES) for the union of the spans
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


def cover_polygon(pts, shape):
    """(box, counts) of a filled polygon (even-odd rule; pixel coordinates) or None."""
    box = _box(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max(), shape)
    if box is None:
        return None
    nxt = np.roll(pts, -1, axis=0)
    x = np.sort(_edge_crossings(pts[:, 0], pts[:, 1], nxt[:, 0], nxt[:, 1], _sample_rows(box)), axis=1)
    k = int(np.isfinite(x).sum(axis=1).max())  # even: a closed outline crosses a row in pairs
    if k == 0:
        return None
    return coverage(x[:, :k].reshape(len(x), k // 2, 2).transpose(2, 0, 1), box, disjoint=True)


def cover_polyline(pts, width: float, shape, closed: bool = False):
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
    return coverage(spans, box)


def cover_ellipse(c, axes, angle: float, shape):
    """(box, counts) of a filled ellipse (centre, half-axes, rotation in degrees as cv2.ellipse),
    or None."""
    a, b = float(axes[0]), float(axes[1])
    if a <= 0 or b <= 0:
        return None
    s, co = sin_cos(angle)
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
    return coverage(cx + (_PLUS_MINUS * root - qb) / (2.0 * qa), box)


_PLUS_MINUS = np.array([-1.0, 1.0])[:, None, None]
_PLUS_MINUS.flags.writeable = False


def paint(img: np.ndarray, cover, color) -> None:
    """Blend ``color`` into ``img`` by the coverage (``img`` = img + (color - img) * coverage)."""
    if cover is None:
        return
    (x0, y0, x1, y1), counts = cover
    a = counts * (1.0 / SAMPLES)
    win = img[y0:y1, x0:x1]
    if img.ndim == 3:
        win += (np.asarray(color, np.float64) - win) * a[:, :, None]
    else:
        win += (float(color) - win) * a
