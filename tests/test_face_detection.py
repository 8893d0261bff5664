"""Face detection and alignment on procedurally drawn faces (tool/synth_faces.py)."""
import dataclasses

import cv2
import numpy as np
import pytest

from tool.face_detection import (Face, FaceDetectionError, FaceDetector, align_crop, align_matrix,
                                 centre_crop)
from synth import landmarks, neutral_params, render_face, sample_labels, sample_params

ZERO = [0] * 12


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def _paste(canvas, image, scale, x, y):
    """Resize ``image`` by ``scale`` and paste it at (x, y) into ``canvas``; returns the mapping."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    canvas[y:y + h, x:x + w] = small
    return lambda pt: (pt[0] * scale + x, pt[1] * scale + y)


def _inside(box, pt, pad=0):
    x, y, w, h = box
    return x - pad <= pt[0] <= x + w + pad and y - pad <= pt[1] <= y + h + pad


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.6])
def test_detects_one_face_at_several_scales(detector, scale):
    params = neutral_params()
    face_img = render_face(ZERO, params)
    canvas = np.full((480, 480, 3), (150, 150, 150), np.uint8)
    to_canvas = _paste(canvas, face_img, scale, 30, 20)
    faces = detector.detect(canvas)
    assert len(faces) == 1, faces
    marks = landmarks(ZERO, params)
    for name in ("left_eye", "right_eye", "mouth"):
        assert _inside(faces[0].box, to_canvas(marks[name])), (name, faces[0])
    # The box is about the size of the drawn face (which spans ~150 px of the 256 image).
    assert 100 * scale < faces[0].box[2] < 220 * scale


def test_two_faces_largest_first(detector):
    big_params = neutral_params()
    small_params = dataclasses.replace(neutral_params(), skin=(95.0, 125.0, 175.0), hair=(20.0, 22.0, 25.0))
    canvas = np.full((360, 640, 3), (120, 140, 160), np.uint8)
    big = _paste(canvas, render_face(ZERO, big_params), 1.2, 10, 20)
    small = _paste(canvas, render_face(ZERO, small_params), 0.7, 400, 80)
    faces = detector.detect(canvas)
    assert len(faces) == 2, faces
    assert faces[0].area > faces[1].area
    assert _inside(faces[0].box, big(landmarks(ZERO, big_params)["mouth"]))
    assert _inside(faces[1].box, small(landmarks(ZERO, small_params)["mouth"]))


def test_no_face_in_blank_or_noise(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.zeros((240, 320, 3), np.uint8)) == []
    assert detector.detect(np.full((240, 320, 3), 200, np.uint8)) == []
    for sigma in (0, 2):
        noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        if sigma:
            noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        assert detector.detect(noise) == []
    assert detector.detect(np.zeros((20, 20, 3), np.uint8)) == []  # smaller than min_size


def test_detection_rate_on_random_synthetic_faces(detector):
    rng = np.random.default_rng(11)
    n, hits, eyes = 30, 0, 0
    for _ in range(n):
        labels, params = sample_labels(rng, 1)[0], sample_params(rng)
        faces = detector.detect(render_face(labels, params))
        if faces:
            hits += 1
            truth = landmarks(labels, params)
            f = faces[0]
            if f.left_eye and f.right_eye:
                eyes += (np.hypot(*np.subtract(f.left_eye, truth["left_eye"])) < 6
                         and np.hypot(*np.subtract(f.right_eye, truth["right_eye"])) < 6)
    print(f"faces found in {hits}/{n} images, both eyes within 6 px in {eyes}")
    assert hits >= 0.9 * n
    assert eyes >= 0.7 * n


@pytest.mark.parametrize("angle", [-10.0, 9.0])
def test_align_crop_levels_rotated_face(detector, angle):
    params = dataclasses.replace(neutral_params(), angle=angle)
    image = render_face(ZERO, params)
    truth = landmarks(ZERO, params)
    assert abs(truth["left_eye"][1] - truth["right_eye"][1]) > 8  # tilted before alignment
    faces = detector.detect(image)
    assert faces and faces[0].left_eye and faces[0].right_eye, faces
    matrix = align_matrix(faces[0], size=256)
    left = matrix[:, :2] @ truth["left_eye"] + matrix[:, 2]
    right = matrix[:, :2] @ truth["right_eye"] + matrix[:, 2]
    assert abs(left[1] - right[1]) < 3.0, (left, right)
    assert left[0] < right[0]
    crop = align_crop(image, faces[0], size=256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    # The aligned crop is still a detectable face, with level eyes.
    again = detector.detect(crop)
    assert again and again[0].left_eye and again[0].right_eye
    assert abs(again[0].left_eye[1] - again[0].right_eye[1]) < 5


def test_align_crop_centres_face_and_pads_by_replication():
    image = np.full((100, 120, 3), 200, np.uint8)
    image[:, :5] = 90  # left edge colour is replicated into the padding
    face = Face(box=(0, 0, 40, 40), score=1.0)
    crop = align_crop(image, face, size=64)
    assert crop.shape == (64, 64, 3)
    assert set(np.unique(crop)) <= set(range(90, 201))  # no black bars
    # Without eyes there is no rotation: the box centre maps to the crop centre (shifted by
    # the documented downward shift).
    m = align_matrix(Face(box=(10, 20, 50, 50), score=1.0), size=128, margin=0.3, shift=0.0)
    np.testing.assert_allclose(m[:, :2] @ (35, 45) + m[:, 2], (64, 64), atol=1e-6)
    np.testing.assert_allclose(m[:, :2], np.eye(2) * 128 / 80, atol=1e-9)


def test_centre_crop_shape_and_gray_input():
    out = centre_crop(np.zeros((90, 160), np.uint8), size=32)
    assert out.shape == (32, 32, 3)


def test_missing_cascade_names_the_fix():
    with pytest.raises(FaceDetectionError, match="opencv-python-headless"):
        FaceDetector(face_cascade="no_such_cascade.xml")


def test_bad_image_is_an_error(detector):
    with pytest.raises(FaceDetectionError, match="image"):
        detector.detect("not an image")


def test_detect_on_downscaled_copy_maps_back(detector):
    params = neutral_params()
    canvas = np.full((900, 1200, 3), (150, 150, 150), np.uint8)
    to_canvas = _paste(canvas, render_face(ZERO, params), 2.5, 300, 100)
    full = detector.detect(canvas)
    small = detector.detect(canvas, max_side=480)
    assert len(full) == len(small) == 1
    # Same face: centres agree; sizes within the cascade's 10% scale steps.
    np.testing.assert_allclose(small[0].center, full[0].center, atol=0.05 * full[0].box[2])
    assert abs(small[0].box[2] / full[0].box[2] - 1) < 0.15
    eye = to_canvas(landmarks(ZERO, params)["left_eye"])
    assert small[0].left_eye is not None
    assert np.hypot(*np.subtract(small[0].left_eye, eye)) < 15
