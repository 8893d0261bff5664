"""Annotated images: the panel beside a photo stays in proportion to it, whatever the face count."""
from types import SimpleNamespace

import numpy as np
import pytest

from megraphau.inference.drawing import annotate

AUS = [f"AU{i}" for i in range(12)]
DESCRIPTIONS = ["Inner brow raiser"] * 12


def faces(n):
    rng = np.random.default_rng(0)
    return [SimpleNamespace(box=(10 + 110 * k, 20, 90, 90), probs=rng.random(12)) for k in range(n)]


@pytest.mark.parametrize("count", [2, 5, 8])
def test_many_faces_wrap_into_a_grid_no_wider_than_the_photo(count):
    photo = np.zeros((853, 1280, 3), np.uint8)
    out = annotate(photo, faces(count), AUS, DESCRIPTIONS)
    assert out.shape[0] == 853  # the grid fits beside the photo's height
    assert out.shape[1] <= 2 * 1280  # the panel is at most as wide as the photo


def test_one_face_keeps_the_full_size_rows():
    photo = np.zeros((853, 1280, 3), np.uint8)
    one = annotate(photo, faces(1), AUS, DESCRIPTIONS)
    assert one.shape[0] == 853 and one.shape[1] > 1280


def test_fixed_panel_gives_every_frame_the_same_size():
    frame = np.zeros((480, 640, 3), np.uint8)
    sizes = {annotate(frame, faces(k), AUS, panel_faces=3).shape for k in range(4)}
    assert len(sizes) == 1
