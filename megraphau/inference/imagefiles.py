"""Reading and writing image files safely, whatever their names and sizes: the demo's inputs
(inputs.py), the crop tool (cropping.py) and tool/check_images.py use these.

- File names need not be UTF-8: on Linux a name is bytes, which Python keeps as a str with
  surrogate escapes. OpenCV's imread/imwrite/VideoCapture take a UTF-8 str and fail (or crash)
  on such names, so files are read and written by Python (np.fromfile, open) and decoded or
  encoded in memory (cv2.imdecode / cv2.imencode). display_name() gives the name to show or to
  write into a CSV or JSON file: valid UTF-8, the undecodable bytes as \\xNN escapes.
- A pixel limit, checked from the file's header before decoding (PIL reads the size without the
  pixels): an image header can claim 100000 x 100000 pixels, which OpenCV refuses with an
  assertion, and a real 20000 x 20000 image takes gigabytes and minutes to decode.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image

__all__ = ["DEFAULT_MAX_PIXELS", "ImageFileError", "check_pixels", "decode_image", "display_name", "header_size",
           "opencv_path", "pixel_problem", "read_image", "write_image"]

#: Default pixel limit of one image (width x height): 50 megapixels, ~150 MB as BGR uint8.
DEFAULT_MAX_PIXELS = 50_000_000

PathLike = Union[str, os.PathLike]


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file (display_name) and why."""


def display_name(path: Union[PathLike, bytes]) -> str:
    """The name as valid UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogate
    escapes) become \\xNN, so a CSV, JSON file or terminal line can hold it."""
    raw = path if isinstance(path, bytes) else os.fsencode(os.fspath(path))
    return raw.decode("utf-8", "backslashreplace")


def opencv_path(path: PathLike) -> str:
    """The path as OpenCV's VideoCapture/VideoWriter take it (UTF-8); ImageFileError naming the
    file when its name is not UTF-8 (OpenCV cannot open such a name)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageFileError(f"{display_name(text)}: the file name is not valid UTF-8, which OpenCV's video "
                             f"reader and writer cannot open; rename the file") from None
    return text


_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the image's header without decoding its pixels; None where PIL does
    not know the format (OpenCV may still decode it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError as err:  # over twice PIL's own limit: the size is in the message
            match = _BOMB_SIZE.search(str(err))
            pixels = int(match[1]) if match else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
            return pixels, 1
        except Exception:  # noqa: BLE001 - PIL's errors for unknown or broken headers
            return None


def pixel_problem(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> str:
    """'' or why the image is not decoded: its header says more than max_pixels pixels (None or
    0: no limit)."""
    if not max_pixels:
        return ""
    size = header_size(data)
    if size is None or size[0] * size[1] <= max_pixels:
        return ""
    shown = f"{size[0]} x {size[1]} pixels" if size[1] > 1 else f"{size[0]} pixels"
    return f"the image is {shown}, over the limit of {max_pixels} (--max-pixels; 0: no limit); not decoded"


def check_pixels(data: bytes, name: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> None:
    """ImageFileError naming `name` when the header says more than max_pixels pixels (pixel_problem)."""
    problem = pixel_problem(data, max_pixels)
    if problem:
        raise ImageFileError(f"{name}: {problem}")


def decode_image(data: bytes, name: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Encoded image bytes -> OpenCV array (BGR uint8 for IMREAD_COLOR), after the pixel limit;
    ImageFileError naming `name` when the image is too large or cannot be decoded."""
    check_pixels(data, name, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if len(data) else None
    except cv2.error as err:  # e.g. OpenCV's own pixel limit (CV_IO_MAX_IMAGE_PIXELS)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "OpenCV error"
        raise ImageFileError(f"{name}: OpenCV cannot decode the image ({reason})") from None
    if image is None:
        raise ImageFileError(f"{name}: not a readable image (empty, truncated or unknown format)")
    return image


def read_image(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """An image file -> OpenCV array, whatever its name (read by Python, decoded in memory);
    ImageFileError naming the file when it cannot be read, is over max_pixels or cannot be decoded."""
    name = display_name(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ImageFileError(f"{name}: cannot read file ({err.strerror})") from None
    return decode_image(data, name, max_pixels, flags)


def write_image(path: PathLike, image: np.ndarray, params: Optional[list] = None) -> bool:
    """Write `image` in the format of path's suffix, whatever the path's name (encoded in memory,
    written by Python); False when OpenCV cannot encode it in that format."""
    suffix = Path(path).suffix or ".png"
    if not suffix.isascii():
        return False
    try:
        ok, encoded = cv2.imencode(suffix, image, params or [])
    except cv2.error:  # no encoder for this suffix
        return False
    if not ok:
        return False
    with open(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return True
