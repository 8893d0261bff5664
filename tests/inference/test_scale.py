"""--engine ray (megraphau/inference/scale.py) on a local Ray with 2 CPUs: a folder of 2 short
videos, 2 photos and a corrupt video gives the single-process demo's rows (probabilities within
1e-6) and names the corrupt file; a run stopped midway and started again does only the inputs
not yet finished; the driver's memory does not grow with the number of inputs (slow)."""
import csv
import json
import os

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Data is optional: pip install 'ray[data]' (the ray extra)")

import demo  # noqa: E402
from face_videos import face_frame, mixed_folder, save_release_checkpoint  # noqa: E402
from megraphau.inference.manifest import MANIFEST  # noqa: E402
from megraphau.inference.scale import run_ray  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (its start takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_release_checkpoint(tmp_path_factory.mktemp("ckpt") / "MEFARG_resnet18_BP4D_fold1.pth")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return mixed_folder(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def single(ckpt, folder, tmp_path_factory):
    """The single-process demo's outputs on the folder."""
    out = tmp_path_factory.mktemp("single")
    assert run("--resume", ckpt, "--input", folder, "--output", out, "--no-annotate") == 0
    return out


def run(*argv):
    return demo.main(demo.parse_args([str(a) for a in argv]))


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_same_rows(a, b, tol=1e-6):
    assert len(a) == len(b) > 0
    assert [{k: v for k, v in r.items() if not k.endswith("_prob")} for r in a] == \
        [{k: v for k, v in r.items() if not k.endswith("_prob")} for r in b]
    probs = [np.array([[float(v or "nan") for k, v in r.items() if k.endswith("_prob")] for r in rows])
             for rows in (a, b)]
    np.testing.assert_allclose(*probs, atol=tol, equal_nan=True)


def manifest_inputs(out):
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()][1:]


def test_ray_gives_the_single_process_rows(ckpt, folder, single, tmp_path, capsys):
    out = tmp_path / "ray"
    assert run("--resume", ckpt, "--input", folder, "--output", out, "--no-annotate", "--engine", "ray",
               "--workers", "2", "--threads", "1") == 0
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "processed 5 of 5 inputs" in captured.out
    assert_same_rows(read_rows(out / "predictions.csv"), read_rows(single / "predictions.csv"))
    merged, ref = (json.loads((d / "predictions.json").read_text()) for d in (out, single))
    assert merged["summary"] == ref["summary"] and merged["errors"] == ref["errors"]
    assert merged["complete"] and merged["scale"]["engine"] == "ray"
    records = {r["input"]: r for r in manifest_inputs(out)}
    assert set(records) == {"a.avi", "broken.mp4", "photo.jpg", "sub/b.avi", "sub/camera.png"}
    assert records["broken.mp4"]["status"] == "error" and "broken.mp4" in records["broken.mp4"]["error"]
    assert records["a.avi"]["items"] == 3 and (out / "results" / "sub" / "b.avi.jsonl").is_file()


@pytest.mark.slow  # two Ray runs (the manifest and resume are in the fast lane: tests/inference/test_many_inputs.py)
def test_a_stopped_run_resumes_with_the_rest(ckpt, folder, single, tmp_path):
    """Stopped after two inputs (a run on a list of them, as a crash would leave the manifest),
    then started again on the folder from Python: only the other three are done."""
    out = tmp_path / "resumed"
    listing = tmp_path / "first.txt"
    listing.write_text(f"{folder / 'sub' / 'camera.png'}\n{folder / 'a.avi'}\n")
    options = {"detector_options": {"detect_size": 640}, "annotate": False, "workers": 1, "threads": 2}
    first = run_ray(listing, out, ckpt, **options)
    # the list's names are relative to its inputs' common folder, here the folder itself
    assert first["finished"] == first["inputs"] == 2
    stamps = {name: (out / "results" / f"{name}.csv").stat().st_mtime_ns for name in ("a.avi", "sub/camera.png")}
    second = run_ray(folder, out, ckpt, **options)
    assert second["finished"] == second["inputs"] == 5 and second["errors"] == 1
    names = [r["input"] for r in manifest_inputs(out)]
    assert sorted(names) == ["a.avi", "broken.mp4", "photo.jpg", "sub/b.avi", "sub/camera.png"]  # each once
    assert set(names[:2]) == {"a.avi", "sub/camera.png"}  # the first run's
    assert stamps == {name: (out / "results" / f"{name}.csv").stat().st_mtime_ns for name in stamps}
    assert_same_rows(read_rows(out / "predictions.csv"), read_rows(single / "predictions.csv"))


def rss_mb(pid=None):
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@pytest.mark.slow
def test_driver_memory_is_flat_in_the_number_of_inputs(ckpt, tmp_path):
    """The driver's RSS grows by about as much for 40 tiny inputs as for 10 (the rows stream
    through files; the driver keeps one small record per input)."""
    image = face_frame(size=(96, 96), side=64)
    growth = {}
    # a first run imports and allocates what every later run reuses
    run_ray(_tiny_folder(tmp_path / "warm", 10, image), tmp_path / "warm_out", ckpt, annotate=False, workers=2,
            threads=1, progress=False)
    for n in (10, 40):
        before = rss_mb()
        run_ray(_tiny_folder(tmp_path / f"in{n}", n, image), tmp_path / f"out{n}", ckpt, annotate=False, workers=2,
                threads=1, progress=False)
        growth[n] = rss_mb() - before
        assert len(read_rows(tmp_path / f"out{n}" / "predictions.csv")) == n
    print(f"driver RSS growth (MB): {growth}")
    assert growth[40] - growth[10] < 20.0, growth


def _tiny_folder(folder, n, image):
    folder.mkdir(parents=True)
    for k in range(n):
        cv2.imwrite(str(folder / f"img{k:03d}.png"), image)
    return folder
