"""The posed drawing surface of SYNTH faces: canonical face coordinates -> image pixels.

All geometry is in "canonical units": pixels of a 256x256 image of an upright face centred at
(CX, CY) before the pose jitter. :class:`Canvas` applies the pose (rotation, scale, shift) and the
output size to the shapes' coordinates and draws them with the exact rasteriser (raster) and
exact Gaussian shading (exactmath).
"""
from __future__ import annotations

import numpy as np

from megraphau.synth import raster
from megraphau.synth.exactmath import band, gauss_weights, sin_cos
from megraphau.synth.params import FaceParams

# render_face scales canonical units to the requested size.
CANON = 256.0
CX, CY = 128.0, 124.0


def pose_matrix(p: FaceParams, size: int) -> np.ndarray:
    """Canonical coordinates scaled to the image (``size / CANON`` per unit) -> output image:
    rotation/scale about the face centre + shift (cv2.getRotationMatrix2D's convention)."""
    u = size / CANON
    s, c = sin_cos(p.angle)
    al, be = p.scale * c, p.scale * s
    cx, cy = CX * u, CY * u
    return np.array([[al, be, (1 - al) * cx - be * cy + p.tx * u],
                     [-be, al, be * cx + (1 - al) * cy + p.ty * u]])


class Canvas:
    """The float64 BGR image being drawn, addressed in canonical units of the upright face: the
    pose (rotation, scale, shift about the face centre) is applied to the shapes' coordinates,
    so everything is drawn once, in place, with the exact anti-aliasing of raster.

    Drawing calls take canonical coordinates; ``img`` (default: the image) is any array on the
    image's pixel grid, ``origin`` the image pixel of its top-left element (for windows).
    """

    def __init__(self, img: np.ndarray, p: FaceParams):
        self.img = img
        self.size = img.shape[0]
        self.u = self.size / CANON
        self.scale = p.scale
        self.angle = p.angle
        m = pose_matrix(p, self.size)
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
        return raster.cover_polygon(self.px(pts, origin), self._target(img))

    # Sizes as generator version 1 drew them (the strength of its cues): cv2 drew its
    # "anti-aliased" shapes on float canvases without anti-aliasing, thick lines of integer
    # thickness t as t + 1 pixels wide (t + 2 for odd t) and fills over every pixel whose centre
    # the shape touches (half a pixel more all round: done here for ellipses, which carry small
    # cues such as nostrils and chin dimples; polygons are drawn to their outline).

    def cover_polyline(self, pts, thick, closed=False, img=None, origin=(0, 0)):
        t = max(1, int(round(thick * self.u)))  # whole pixels at the upright size, as cv2's
        width = (t + 1 + t % 2 if t > 1 else 1) * self.scale
        return raster.cover_polyline(self.px(pts, origin), width, self._target(img), closed)

    def cover_ellipse(self, c, axes, angle=0.0, img=None, origin=(0, 0)):
        k = self.u * self.scale
        return raster.cover_ellipse(self.px(c, origin)[0], (axes[0] * k + 0.5, axes[1] * k + 0.5),
                              angle - self.angle, self._target(img))

    def paint(self, cover, color, img=None):
        raster.paint(self.img if img is None else img, cover, color)

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
        weights = gauss_weights(sigma)
        radius = len(weights) // 2
        bx0, by0 = max(x0 - radius, 0), max(y0 - radius, 0)
        bx1, by1 = min(x1 + radius, self.size), min(y1 + radius, self.size)
        rows = band(by0, by1, y0, y1, sigma)
        cols = band(bx0, bx1, x0, x1, sigma)
        blurred = rows @ counts.astype(np.float64) @ cols.T
        gain = blurred * (amount / (raster.SAMPLES * float(weights.sum()) ** 2))
        gain += 1.0
        self.img[by0:by1, bx0:bx1] *= gain[:, :, None]

    def blob(self, c, axes, amount, angle=0.0, blur=6.0):
        """Soft elliptical shading (amount < 0 darkens, > 0 lightens)."""
        self._shade(self.cover_ellipse(c, axes, angle), amount, blur)

    def soft_line(self, pts, amount, thick, blur=1.2):
        """Soft shading along a polyline (wrinkles, folds, shadows)."""
        self._shade(self.cover_polyline(pts, thick), amount, blur)
