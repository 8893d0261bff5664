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
    row_h = int(np.clip(h / rows, 16, 40))  # pixels per AU line
    scale = row_h / 36.0  # HERSHEY_SIMPLEX at scale 1 is ~22 px high plus descenders
    thick = max(1, round(row_h / 16))
    for k, face in enumerate(faces):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        x, y, bw, bh = (int(round(v * zoom)) for v in face.box)
        cv2.rectangle(image, (x, y), (x + bw, y + bh), colour, max(2, thick + 1))
        cv2.putText(image, f"face {k}", (x + 2, max(row_h, y - 4)), font, scale * 1.2, colour, thick + 1, cv2.LINE_AA)
    if not faces:
        cv2.putText(image, "no face", (row_h // 2, row_h + 4), font, scale * 1.5, (0, 0, 255), thick + 1, cv2.LINE_AA)
        if not panel_faces:
            return image
    columns = len(faces) if panel_faces is None else panel_faces
    faces = list(faces)[:columns]
    labels = [f"{n} {d}" if descriptions else n for n, d in zip(au_names, descriptions or au_names)]
    text_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels)
    bar_w = max(6 * row_h, 90)
    col_w = text_w + bar_w + 3 * row_h + cv2.getTextSize("0.00", font, scale, thick)[0][0]
    panel_h = max(h, rows * row_h + row_h)
    panel = np.full((panel_h, col_w * columns, 3), 30, np.uint8)
    for k, face in enumerate(faces):
        x0 = k * col_w + row_h // 2
        cv2.putText(panel, f"face {k}", (x0, row_h - 4), font, scale * 1.1,
                    BOX_COLOURS[k % len(BOX_COLOURS)], thick, cv2.LINE_AA)
        for i, (text, p) in enumerate(zip(labels, face.probs)):
            y_base = (i + 2) * row_h - row_h // 4
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
