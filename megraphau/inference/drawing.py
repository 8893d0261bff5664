"""Drawing AU predictions on images (OpenCV): face boxes and, beside the image, every AU's
probability as a bar, present AUs in green. Used by demo.py for annotated images and videos.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

AU_ON = (60, 200, 60)  # BGR
AU_OFF = (150, 150, 150)
BOX_COLOURS = [(0, 200, 255), (255, 160, 0), (200, 0, 255), (0, 255, 120), (255, 80, 80)]


def annotate(image_bgr: np.ndarray, faces: Sequence, au_names: Sequence[str],
             descriptions: Optional[Sequence[str]] = None, threshold: float = 0.5,
             panel_faces: Optional[int] = None) -> np.ndarray:
    """The image with face boxes, plus a panel on its right listing, for each face, every AU
    (name, description if given) with a probability bar; AUs at or above the threshold in green.

    faces: inference.FaceResult objects (box, probs), largest first; a face whose probabilities
    are not all finite (NaN/Inf: a broken model) is not drawn. Small images are enlarged
    first (to 540 px high) and the font follows the image height, so the text stays readable
    whatever the input size. panel_faces: a panel of exactly this many face columns (the largest
    faces; empty columns when fewer), so that every frame of a video has the same size.
    """
    faces = [f for f in faces if np.isfinite(np.asarray(f.probs, np.float64)).all()]
    image = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    image = image[:, :, :3].copy()
    h0 = image.shape[0]
    zoom = max(1.0, 540.0 / h0)
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    rows = max(len(au_names), 1) + 1
    columns = len(faces) if panel_faces is None else panel_faces
    labels = [f"{n} {d}" if descriptions else n for n, d in zip(au_names, descriptions or au_names)]
    row_h, per_row = _panel_layout(h, w, rows, max(columns, 1), labels)
    scale, thick = _font(row_h)
    for k, face in enumerate(faces):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        x, y, bw, bh = (int(round(v * zoom)) for v in face.box)
        cv2.rectangle(image, (x, y), (x + bw, y + bh), colour, max(2, thick + 1))
        cv2.putText(image, f"face {k}", (x + 2, max(row_h, y - 4)), font, scale * 1.2, colour, thick + 1, cv2.LINE_AA)
    if not faces:
        cv2.putText(image, "no face", (row_h // 2, row_h + 4), font, scale * 1.5, (0, 0, 255), thick + 1, cv2.LINE_AA)
        if not panel_faces:
            return image
    faces = list(faces)[:columns]
    text_w, bar_w, col_w = _column_widths(row_h, labels)
    block_h = rows * row_h + row_h  # one face: its title row, a row per AU, a margin
    grid_rows = max(1, -(-columns // per_row))
    panel_h = max(h, grid_rows * block_h)
    panel = np.full((panel_h, col_w * per_row, 3), 30, np.uint8)
    for k, face in enumerate(faces):
        x0 = (k % per_row) * col_w + row_h // 2
        y0 = (k // per_row) * block_h
        cv2.putText(panel, f"face {k}", (x0, y0 + row_h - 4), font, scale * 1.1,
                    BOX_COLOURS[k % len(BOX_COLOURS)], thick, cv2.LINE_AA)
        for i, (text, p) in enumerate(zip(labels, face.probs)):
            y_base = y0 + (i + 2) * row_h - row_h // 4
            on = p >= threshold
            cv2.putText(panel, text, (x0, y_base), font, scale, AU_ON if on else AU_OFF, thick, cv2.LINE_AA)
            bx = x0 + text_w + row_h // 2
            top, bottom = y_base - int(row_h * 0.6), y_base
            cv2.rectangle(panel, (bx, top), (bx + bar_w, bottom), (80, 80, 80), -1)
            fill = int(round(bar_w * float(np.clip(p, 0, 1))))
            cv2.rectangle(panel, (bx, top), (bx + fill, bottom), AU_ON if on else AU_OFF, -1)
            cv2.putText(panel, f"{p:.2f}", (bx + bar_w + row_h // 3, y_base), font, scale,
                        (230, 230, 230), thick, cv2.LINE_AA)
    if panel_h > h:
        image = cv2.copyMakeBorder(image, 0, panel_h - h, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.hstack([image, panel])


def _font(row_h: int) -> tuple[float, int]:
    """HERSHEY_SIMPLEX scale and stroke for text rows of row_h pixels (scale 1 is ~22 px high
    plus descenders)."""
    return row_h / 36.0, max(1, round(row_h / 16))


def _column_widths(row_h: int, labels: Sequence[str]) -> tuple[int, int, int]:
    """(text, bar, whole column) widths of one face's column of AU rows."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, thick = _font(row_h)
    text_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels)
    bar_w = max(6 * row_h, 90)
    return text_w, bar_w, text_w + bar_w + 3 * row_h + cv2.getTextSize("0.00", font, scale, thick)[0][0]


def _panel_layout(h: int, w: int, rows: int, columns: int, labels: Sequence[str]) -> tuple[int, int]:
    """(row height, face columns per grid row) of the panel beside an h x w image.

    One face keeps the image-height rows (16-40 px). Several faces wrap into a grid at most as
    wide as the image, with rows made smaller (down to 12 px) until the grid is no taller than
    the image: a photo with many faces stays the larger part of the picture instead of a strip
    beside a panel many times its width.
    """
    largest = int(np.clip(h / rows, 16, 40))
    if columns == 1:
        return largest, 1
    for row_h in range(largest, 11, -1):
        per_row = max(1, min(columns, w // _column_widths(row_h, labels)[2]))
        if -(-columns // per_row) * (rows + 1) * row_h <= h:
            return row_h, per_row
    return 12, max(1, min(columns, w // _column_widths(12, labels)[2]))


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit an image into (width, height) keeping its aspect ratio (video frames must all match)."""
    w, h = size
    ih, iw = image.shape[:2]
    if (iw, ih) == (w, h):
        return image
    s = min(w / iw, h / ih)
    resized = cv2.resize(image, (max(1, int(iw * s)), max(1, int(ih * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - resized.shape[0]) // 2, (w - resized.shape[1]) // 2
    out[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return out
