"""The SYNTH data set: AU cues, determinism, label statistics, lists and the generator CLI."""
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from megraphau.synth import (
    AU_REGIONS,
    GENERATOR_VERSION,
    MARKER_NAME,
    SYNTH_AUS,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    neutral_params,
    raster,  # the rasteriser (its exact sample counts)
    render_face,
    sample_identity,
    sample_labels,
    sample_params,
)
from tool.synth_faces import main  # noqa: E402  (the command line)

ZERO = np.zeros(12, dtype=int)
TINY = dict(subjects_per_part=1, tasks=2, frames=4, size=96)


def _one_hot(au):
    labels = ZERO.copy()
    labels[SYNTH_AUS.index(au)] = 1
    return labels


def _upright(rng):
    """A random identity with lighting, background and noise jitter but no pose change, so the
    canonical AU regions apply."""
    p = sample_params(rng)
    return dataclasses.replace(p, angle=0.0, scale=1.0, tx=0.0, ty=0.0)


def test_render_shape_and_determinism():
    rng = np.random.default_rng(0)
    labels, params = sample_labels(rng, 1)[0], sample_params(rng)
    a = render_face(labels, params)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_face(labels, params))
    assert render_face(labels, params, size=128).shape == (128, 128, 3)
    other = dataclasses.replace(params, noise_seed=params.noise_seed + 1)
    assert not np.array_equal(a, render_face(labels, other))


@pytest.mark.parametrize("au", SYNTH_AUS)
def test_au_cue_present_exactly_when_labelled(au):
    """Switching one AU on changes pixels, mostly inside that AU's region; off twice is identical."""
    rng = np.random.default_rng(au)
    for params in (neutral_params(), _upright(rng)):
        off = render_face(ZERO, params).astype(int)
        np.testing.assert_array_equal(off, render_face(ZERO, params))
        diff = np.abs(render_face(_one_hot(au), params).astype(int) - off).max(axis=2)
        x0, y0, x1, y1 = AU_REGIONS[au]
        assert (diff > 8).sum() >= 300, f"AU{au}: cue too small ({(diff > 8).sum()} px)"
        inside = diff[y0:y1, x0:x1].sum() / diff.sum()
        assert inside > 0.9, f"AU{au}: only {inside:.2f} of the change inside {AU_REGIONS[au]}"
    # With full jitter and other AUs on, the AU still changes the image (and only the label does).
    params = sample_params(rng)
    others = sample_labels(rng, 1)[0]
    on, off_labels = others.copy(), others.copy()
    on[SYNTH_AUS.index(au)], off_labels[SYNTH_AUS.index(au)] = 1, 0
    diff = np.abs(render_face(on, params).astype(int) - render_face(off_labels, params).astype(int))
    assert (diff.max(axis=2) > 8).sum() >= 150


# -- the same pixels on every machine

#: SHA-256 of the pixels :func:`_pixel_digests` makes (generator version 2). Same values, checked by
#: hand (tool: render 28 images directly, generate a 12-image set, digest raw pixels, JPEG files,
#: lists and decoded pixels), with opencv-python-headless 4.6.0.66, 4.7.0.72, 4.8.1.78, 4.10.0.84
#: and 4.14.0.94 (libjpeg-turbo 2.1.2 to 3.1.2), numpy 1.23.5, 1.26.4 and 2.4.6, and in 4.14 / 2.4.6
#: with NPY_DISABLE_CPU_FEATURES (all of numpy's dispatched SIMD off), OPENCV_CPU_DISABLE down to
#: SSE3 with OPENCV_IPP=disabled, and OPENBLAS_CORETYPE Prescott / Haswell; on an AVX-512 Xeon.
#: Generator version 1 (OpenCV drawing) gave other pixels in each OpenCV version.
PINNED_PIXELS = {
    "render": "54341b4601667af0b43c2bc290ba7cdd8cc2026fb3282321db25323ebd683a28",
    "decoded": "150463a61928242528a54db5da55a352cc763370d24a06d2f76c5a933e943b7a",
}


def _pixel_digests(tmp) -> dict:
    """SHA-256 of rendered pixels (two random faces for seed 0 at 64 and 256 pixels, the neutral
    face with every AU at 96) and of the decoded pixels of a generated set's JPEG files (seed 0,
    6 images of 64 pixels): pixels, not file bytes (an encoder may write other bytes for the
    same pixels)."""
    import cv2

    render = hashlib.sha256()
    rng = np.random.default_rng(0)
    for size in (64, 256):
        labels, params = sample_labels(rng, 1)[0], sample_params(rng)
        render.update(render_face(labels, params, size=size).tobytes())
    render.update(render_face(np.ones(12, int), neutral_params(), size=96).tobytes())
    root = generate_synthetic_dataset(Path(tmp) / "pinned", subjects_per_part=1, tasks=1, frames=2,
                                      seed=0, size=64)
    decoded = hashlib.sha256()
    for path in sorted((root / "img").rglob("*.jpg")):
        decoded.update(cv2.imread(str(path), cv2.IMREAD_COLOR).tobytes())
    return {"render": render.hexdigest(), "decoded": decoded.hexdigest()}


def test_pixels_pinned(tmp_path):
    """Seed 0 gives these pixels on every machine (see PINNED_PIXELS for what was checked); a
    change of the drawing must bump GENERATOR_VERSION and the digests."""
    assert GENERATOR_VERSION == 2
    assert _pixel_digests(tmp_path) == PINNED_PIXELS


def test_pixels_same_with_simd_dispatch_disabled(tmp_path):
    """A process with OpenCV's and numpy's dispatched SIMD code turned off (older CPUs), IPP off and
    OpenBLAS's generic kernels renders and decodes the same pixels. Where this machine has AVX2,
    the test also checks that the switches took effect."""
    import subprocess
    import sys

    import cv2

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__
    opencv_off = "AVX512-SKX,AVX2,FP16,AVX,FMA3,SSE4.2,SSE4.1,POPCNT,SSSE3"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       str(Path(__file__).resolve().parent)]),
               OPENCV_CPU_DISABLE=opencv_off, OPENCV_IPP="disabled",
               NPY_DISABLE_CPU_FEATURES=" ".join(__cpu_dispatch__),
               OPENBLAS_CORETYPE="Prescott", OPENBLAS_NUM_THREADS="1")
    code = ("import json, sys, cv2\n"
            "try:\n    from numpy._core._multiarray_umath import __cpu_features__ as f\n"
            "except ImportError:\n    from numpy.core._multiarray_umath import __cpu_features__ as f\n"
            "from test_synth_faces import _pixel_digests\n"
            "print(json.dumps(dict(_pixel_digests(sys.argv[1]), opencv_avx2=cv2.checkHardwareSupport(11),"
            " numpy_dispatch=[k for k in sys.argv[2:] if f.get(k)])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), *__cpu_dispatch__], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    if cv2.checkHardwareSupport(11):  # cv2.CPU_AVX2
        assert child["opencv_avx2"] is False, "OPENCV_CPU_DISABLE had no effect"
    assert child["numpy_dispatch"] == [], "NPY_DISABLE_CPU_FEATURES had no effect"
    assert {k: child[k] for k in PINNED_PIXELS} == PINNED_PIXELS


def test_rasteriser_counts_samples_exactly():
    """Coverage is the exact number of the pixel's 4 x 16 samples inside the union of the spans;
    shapes have their analytic areas (to the sampling's resolution)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows, k = 4 * int(rng.integers(1, 5)), int(rng.integers(1, 6))
        box = (3, 5, 3 + int(rng.integers(1, 8)), 5 + rows // 4)
        lo = rng.uniform(0, 12, (rows, k))
        hi = lo + rng.uniform(-1, 5, (rows, k))
        lo[rng.random((rows, k)) < 0.2] = np.inf
        got = raster.coverage(np.stack([lo, hi]), box)
        x0, _, x1, _ = box
        xs = (x0 - 0.5) + (np.arange((x1 - x0) * 16) + 0.5) / 16
        inside = ((xs >= lo[:, :, None]) & (xs < hi[:, :, None])).any(axis=1)
        want = inside.reshape(rows // 4, 4, x1 - x0, 16).sum(axis=(1, 3))
        np.testing.assert_array_equal(np.zeros_like(want) if got is None else got[1], want)
    shape = (200, 200)
    area = lambda cover: cover[1].sum() / 64  # noqa: E731
    assert area(raster.cover_ellipse((100.3, 90.7), (40.5, 20.2), 25.0, shape)) == pytest.approx(
        np.pi * 40.5 * 20.2, rel=2e-3)
    square = np.array([(50.2, 50.1), (150.2, 50.1), (150.2, 150.1), (50.2, 150.1)])
    assert area(raster.cover_polygon(square, shape)) == pytest.approx(100 * 100, rel=1e-3)
    line = np.array([(40.0, 60.3), (160.0, 120.3)])
    length = np.hypot(120, 60)
    assert area(raster.cover_polyline(line, 6.0, shape)) == pytest.approx(6 * length + np.pi * 9, rel=3e-3)


def test_label_statistics_and_cooccurrence():
    labels = sample_labels(np.random.default_rng(0), 20000)
    assert labels.shape == (20000, 12) and set(np.unique(labels)) == {0, 1}
    col = {au: i for i, au in enumerate(SYNTH_AUS)}
    prevalence = labels.mean(0)
    assert np.all(prevalence >= 0.15) and np.all(prevalence <= 0.5), dict(zip(SYNTH_AUS, prevalence))

    def given(a, b):
        return labels[labels[:, col[b]] == 1, col[a]].mean()

    assert given(12, 6) > 0.7                  # cheek raise mostly with a smile
    assert given(25, 26) > 0.85                # jaw drop mostly parts the lips
    assert given(2, 1) > 2 * prevalence[col[2]]  # inner and outer brow raise together
    assert given(15, 12) < 0.1                 # corners rarely up and down at once


def test_sample_params_keeps_identity():
    rng = np.random.default_rng(1)
    ident = sample_identity(rng)
    a, b = sample_params(rng, ident), sample_params(rng, ident)
    assert (a.skin, a.face_w, a.eye_dx) == (b.skin, b.face_w, b.eye_dx)
    assert (a.angle, a.noise_seed) != (b.angle, b.noise_seed)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path):
    return Path(path).read_text().splitlines()


def test_generate_deterministic_and_lists_consistent(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", seed=0, **TINY)
    b = generate_synthetic_dataset(tmp_path / "b", seed=0, **TINY)
    c = generate_synthetic_dataset(tmp_path / "c", seed=1, **TINY)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db                           # same seed: identical bytes
    assert da.keys() == dc.keys() and da != dc  # other seed: same layout, other content
    images = sorted(k for k in da if k.startswith("img/"))
    assert len(images) == 3 * 2 * 4
    assert "img/S01/T1/1.jpg" in images and "img/S03/T2/4.jpg" in images
    lst = a / "list"
    part = {1: ["S01"], 2: ["S02"], 3: ["S03"]}
    test_part = {1: 3, 2: 2, 3: 1}
    all_labels = {}
    for k in (1, 2, 3):
        test_paths = _read(lst / f"SYNTH_test_img_path_fold{k}.txt")
        train_paths = _read(lst / f"SYNTH_train_img_path_fold{k}.txt")
        assert {p.split("/")[0] for p in test_paths} == set(part[test_part[k]])
        assert sorted(test_paths + train_paths) == sorted(p[len("img/"):] for p in images)
        for split, paths in (("train", train_paths), ("test", test_paths)):
            rows = _read(lst / f"SYNTH_{split}_label_fold{k}.txt")
            assert len(rows) == len(paths)
            for p, row in zip(paths, rows):
                values = [int(v) for v in row.split()]
                assert len(values) == 12 and set(values) <= {0, 1}
                assert all_labels.setdefault(p, values) == values  # same label in every fold
        weights = _read(lst / f"SYNTH_weight_fold{k}.txt")[0].split("\t")
        assert len(weights) == 12 and abs(sum(float(w) for w in weights) - 12) < 1e-3
        relations = _read(lst / f"SYNTH_train_AU_relation_fold{k}.txt")
        assert len(relations) == len(train_paths) and len(relations[0].split()) == 144
    marker = json.loads((a / MARKER_NAME).read_text())
    assert marker["num_images"] == 24 and marker["seed"] == 0


def test_ensure_generates_once_and_regenerates_when_incomplete(tmp_path):
    root = tmp_path / "SYNTH"
    assert ensure_synthetic_dataset(root, **TINY) == root
    probe = root / "img" / "S01" / "T1" / "1.jpg"
    mtime = probe.stat().st_mtime_ns
    os.utime(probe, ns=(mtime - 10**9, mtime - 10**9))
    ensure_synthetic_dataset(root, **TINY)                 # complete: nothing rewritten
    assert probe.stat().st_mtime_ns == mtime - 10**9
    (root / MARKER_NAME).unlink()                          # interrupted run: regenerated
    ensure_synthetic_dataset(root, **TINY)
    assert (root / MARKER_NAME).exists() and probe.stat().st_mtime_ns != mtime - 10**9
    ensure_synthetic_dataset(root, **dict(TINY, frames=3))  # other parameters: regenerated
    assert not (root / "img" / "S01" / "T1" / "4.jpg").exists()
    with pytest.raises(TypeError, match="unknown"):
        ensure_synthetic_dataset(root, colour="red")


def test_cli_generates_and_previews(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--output", str(out), "--subjects-per-part", "1", "--tasks", "1", "--frames", "3",
                 "--size", "64"]) == 0
    assert len(_read(out / "list" / "SYNTH_test_img_path_fold1.txt")) == 3
    preview = tmp_path / "preview.png"
    assert main(["--preview", str(preview), "--preview-count", "4", "--size", "96"]) == 0
    assert preview.stat().st_size > 1000


def test_concurrent_ensure_generates_once(tmp_path):
    """Two processes asking for the same set (as distributed ranks do) both get a complete set."""
    import subprocess
    import sys
    code = ("import sys; from megraphau.synth import ensure_synthetic_dataset as e; "
            "e(sys.argv[1], subjects_per_part=1, tasks=1, frames=3, size=64)")
    root = str(tmp_path / "SYNTH")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", code, root], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert json.loads((Path(root) / MARKER_NAME).read_text())["num_images"] == 9
