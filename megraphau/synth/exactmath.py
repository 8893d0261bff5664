"""Exact arithmetic for SYNTH: sine/cosine, exp, Gaussian blur weights, bicubic resampling and noise
that give the same bits on every machine.

Why these exist: a seed must give the same pixels on every machine (tests/synth/test_synth_faces.py pins
their SHA-256). Every pixel is computed with IEEE-754 double additions, subtractions,
multiplications, divisions, square roots and comparisons in numpy (each correctly rounded, so the
same bits on every CPU, SIMD width and numpy version), integer arithmetic, and matrix products of
integer-valued matrices small enough to be exact. No OpenCV drawing, blurring or resampling (their
float and fixed-point paths differ between OpenCV versions and CPU dispatch), no libm
transcendentals (sin, cos, exp: the few needed are the series below; libm's results may differ in
the last bit between platforms) and no Gaussian random numbers (numpy draws them with libm's exp
and log): noise and texture come from random bytes.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np


def sin_cos(degrees: float) -> Tuple[float, float]:
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


def exp_neg(t: np.ndarray) -> np.ndarray:
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
def gauss_weights(sigma: float) -> np.ndarray:
    """Integer Gaussian kernel (peak 4096) with OpenCV's size rule for float images (radius ~4 sigma)."""
    radius = max((int(round(sigma * 8 + 1)) | 1) // 2, 1)
    i = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.floor(4096.0 * exp_neg(i * i / (2.0 * sigma * sigma)) + 0.5)
    out.flags.writeable = False
    return out


def band(out0: int, out1: int, in0: int, in1: int, sigma: float) -> np.ndarray:
    """(out1 - out0, in1 - in0) matrix of integer Gaussian weights w[out - in] (zero beyond the
    kernel): a 1-D blur of pixels in0..in1 onto pixels out0..out1 with zeros outside."""
    w = gauss_weights(sigma)
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


def resize_cubic(src: np.ndarray, size: int) -> np.ndarray:
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


def noise(rng: np.random.Generator, shape, sigma: float = 1.0) -> np.ndarray:
    """Approximately normal noise of standard deviation ``sigma`` from random bytes: a sum of 4
    uniform bytes (mean 510, variance 4 * (256**2 - 1) / 12), centred and scaled; exact integer
    draws (numpy's normal draws use libm's exp and log)."""
    count = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(4 * count), np.uint8).reshape(4, count)
    total = raw.sum(axis=0, dtype=np.int16) - 510
    return (total * (sigma / math.sqrt(21845.0))).reshape(shape)
