"""demo.py on several inputs and people, without Ray (issue 23): track ids that follow each person
through a video whose face sizes cross (predictions.csv, --per-track), the same rows pipelined and
with --no-pipeline; a folder, glob or list of videos and photos processed in order with a corrupt
file recorded; the manifest and resume of --engine local; a live camera (a stand-in capture)
stopped at its end or by Ctrl-C."""
import csv
import json
import os

import cv2
import numpy as np
import pytest

import demo
from face_videos import WIDTH, compose_video, face_frame, mixed_folder, save_release_checkpoint, write_video  # noqa: E402
from megraphau.inference.inputs import DemoError, resolve_inputs
from megraphau.inference.manifest import MANIFEST, Manifest, ManifestMismatch


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_release_checkpoint(tmp_path_factory.mktemp("ckpt") / "MEFARG_resnet18_BP4D_fold1.pth")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return mixed_folder(tmp_path_factory.mktemp("many"))


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run(*argv):
    return demo.main(demo.parse_args([str(a) for a in argv]))


def prob_columns(rows):
    return np.array([[float(v or "nan") for k, v in r.items() if k.endswith("_prob")] for r in rows])


def assert_same_rows(a, b, tol=1e-6):
    """The same rows: every column but the probabilities equal, probabilities within tol."""
    assert len(a) == len(b)
    assert [{k: v for k, v in r.items() if not k.endswith("_prob")} for r in a] == \
        [{k: v for k, v in r.items() if not k.endswith("_prob")} for r in b]
    np.testing.assert_allclose(prob_columns(a), prob_columns(b), atol=tol, equal_nan=True)


# -- track ids through demo.py


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """24 frames of the two-person video (sizes cross midway) as an .avi."""
    return write_video(compose_video(24), tmp_path_factory.mktemp("people") / "two_people.avi")


@pytest.mark.slow
def test_one_track_id_per_person_through_demo(ckpt, two_people, tmp_path):
    """Each person keeps one track id from the first frame to the last in predictions.csv while
    the largest-first face index swaps; --no-pipeline gives the same rows; --per-track writes one
    CSV and one figure per person."""
    piped, seq = tmp_path / "piped", tmp_path / "seq"
    common = ["--resume", ckpt, "--input", two_people, "--no-annotate", "--detect-size", "480"]
    assert run(*common, "--output", piped, "--per-track") == 0
    assert run(*common, "--output", seq, "--no-pipeline") == 0
    rows = read_rows(piped / "predictions.csv")
    assert_same_rows(rows, read_rows(seq / "predictions.csv"), tol=1e-5)
    people = {"astronaut": [], "camera": []}
    for r in rows:
        side = "astronaut" if int(r["x"]) + int(r["w"]) / 2 < WIDTH / 2 else "camera"
        people[side].append((int(r["frame"]), r["track_id"], r["face"]))
    assert [f for f, _, _ in people["astronaut"]] == list(range(24)) == [f for f, _, _ in people["camera"]]
    assert {t for _, t, _ in people["camera"]} == {"0"} and {t for _, t, _ in people["astronaut"]} == {"1"}
    assert {i for _, _, i in people["camera"]} == {"0", "1"}  # the largest-first index swaps, the id does not
    jsonl = [json.loads(line) for line in (piped / "predictions.jsonl").read_text().splitlines()]
    assert {f["track_id"] for e in jsonl for f in e["faces"]} == {0, 1}
    for track in (0, 1):
        person = read_rows(piped / "tracks" / f"person_{track}.csv")
        assert [int(r["frame"]) for r in person] == list(range(24))
        mine = [r for r in rows if r["track_id"] == str(track)]
        assert [r["AU1_prob"] for r in person] == [r["AU1_prob"] for r in mine]
        assert cv2.imread(str(piped / "tracks" / f"person_{track}.png")) is not None


def test_openface_face_id_is_the_track_id(ckpt, two_people, tmp_path):
    """OpenFace's face_id is the person in videos (every 2nd frame: the faces still overlap from one
    processed frame to the next; a larger stride moves them too far for the tracker)."""
    assert run("--resume", ckpt, "--input", two_people, "--no-annotate", "--detect-size", "480", "--every-n", "2",
               "--openface-columns", "--output", tmp_path) == 0
    rows = read_rows(tmp_path / "predictions.csv")
    assert len(rows) == 2 * 12
    for r in rows:
        left = int(r["box_x"]) + int(r["box_w"]) / 2 < WIDTH / 2
        assert r["face_id"] == ("1" if left else "0")


# -- a folder, a glob, a list


def test_a_folder_of_videos_and_photos(ckpt, folder, tmp_path, capsys):
    """Videos and photos in the listing's order, the corrupt video recorded by name, the rest
    processed; videos' faces carry track ids, photos' none."""
    assert run("--resume", ckpt, "--input", folder, "--output", tmp_path / "out", "--per-track") == 0
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "1 errors" in captured.out
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    files = list(dict.fromkeys(r["file"] for r in rows))
    assert files == ["a.avi", "photo.jpg", "sub/b.avi", "sub/camera.png"]
    assert [r["frame"] for r in rows if r["file"] == "a.avi"] == ["0", "1", "2"]
    assert all(r["no_face"] == "0" for r in rows), [(r["file"], r["frame"]) for r in rows if r["no_face"] != "0"]
    assert {r["track_id"] for r in rows if r["file"].endswith(".avi")} == {"0"}
    assert {r["track_id"] for r in rows if not r["file"].endswith(".avi")} == {""}
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [e["file"] for e in result["errors"]] == ["broken.mp4"] and result["complete"]
    assert (tmp_path / "out" / "tracks" / "a.avi" / "person_0.csv").is_file()
    assert (tmp_path / "out" / "tracks" / "sub" / "b.avi" / "person_0.png").is_file()
    assert (tmp_path / "out" / "annotated" / "sub" / "camera.png").is_file()
    assert list((tmp_path / "out" / "annotated").glob("a.*"))  # the annotated video


def test_glob_and_list_inputs(folder, tmp_path):
    found = resolve_inputs(str(folder / "**" / "*.avi"))
    assert found.kind == "folder" and [found.rel(p).as_posix() for p in found.files] == ["a.avi", "sub/b.avi"]
    listing = tmp_path / "inputs.txt"
    relative = os.path.relpath(folder / "a.avi", tmp_path)  # relative to the list's folder
    listing.write_text(f"# two inputs\n{folder / 'sub' / 'camera.png'}\n\n{relative}\n")
    listed = resolve_inputs(str(listing))
    assert [listed.rel(p).as_posix() for p in listed.files] == ["sub/camera.png", "a.avi"]
    assert resolve_inputs("3").kind == "camera" and resolve_inputs("3").camera == 3
    with pytest.raises(DemoError, match="matches no images or videos"):
        resolve_inputs(str(folder / "*.mkv"))
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DemoError, match="names no inputs"):
        resolve_inputs(str(tmp_path / "empty.txt"))


# -- --engine local: per-input parts, the manifest, resume


def test_local_engine_matches_and_resumes(ckpt, folder, tmp_path, capsys):
    """--engine local gives the single-process rows; a run stopped after some inputs (here: a
    list of two of them) and started again on all does only the rest."""
    single = tmp_path / "single"
    assert run("--resume", ckpt, "--input", folder, "--output", single, "--no-annotate") == 0
    out = tmp_path / "local"
    listing = tmp_path / "first.txt"
    listing.write_text(f"{folder / 'photo.jpg'}\n{folder / 'a.avi'}\n")
    # the same names as in the folder: the list's root is the inputs' common folder
    assert run("--resume", ckpt, "--input", listing, "--output", out, "--no-annotate", "--engine", "local") == 0
    first = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [r.get("input") for r in first[1:]] == ["photo.jpg", "a.avi"]  # the list's order
    stamp = (out / "results" / "a.avi.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert run("--resume", ckpt, "--input", folder, "--output", out, "--no-annotate", "--engine", "local") == 0
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "processed 5 of 5 inputs" in captured.out
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    done = [r["input"] for r in lines[1:]]
    assert sorted(done) == ["a.avi", "broken.mp4", "photo.jpg", "sub/b.avi", "sub/camera.png"]  # each once
    assert (out / "results" / "a.avi.csv").stat().st_mtime_ns == stamp  # not done again
    assert [r["status"] for r in lines[1:] if r["input"] == "broken.mp4"] == ["error"]
    assert_same_rows(read_rows(out / "predictions.csv"), read_rows(single / "predictions.csv"))
    merged, ref = (json.loads((d / "predictions.json").read_text()) for d in (out, single))
    assert merged["summary"] == ref["summary"] and merged["errors"] == ref["errors"] and merged["complete"]
    # another model into the same folder is refused (its rows would not match)
    assert run("--resume", ckpt, "--input", folder, "--output", out, "--no-annotate", "--engine", "local",
               "--threshold", "0.7") == 2
    assert "other settings (detector)" in capsys.readouterr().err


def test_manifest_ignores_a_torn_last_line(tmp_path):
    with Manifest(tmp_path, {"a": 1}) as manifest:
        manifest.record({"input": "x.jpg", "status": "ok"})
    with open(tmp_path / MANIFEST, "a", encoding="utf-8") as fh:
        fh.write('{"input": "y.jpg", "sta')  # killed mid-write
    with Manifest(tmp_path, {"a": 1}) as manifest:
        assert set(manifest.done) == {"x.jpg"}
        manifest.record({"input": "y.jpg", "status": "ok"})
    assert [json.loads(line).get("input") for line in (tmp_path / MANIFEST).read_text().splitlines()] == \
        [None, "x.jpg", "y.jpg"]
    with pytest.raises(ManifestMismatch, match="other settings"):
        Manifest(tmp_path, {"a": 2})


# -- a live camera


class FakeCamera:
    """cv2.VideoCapture's stand-in: `frames` frames of a real photograph, then the end; or a
    KeyboardInterrupt (Ctrl-C) when frame `interrupt_at` is asked for."""
    frames, interrupt_at = 5, None

    def __init__(self, index):
        assert index == 0
        self.k = 0
        self.image = face_frame()

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        if self.interrupt_at is not None and self.k == self.interrupt_at:
            raise KeyboardInterrupt
        if self.k >= self.frames:
            return False, None
        self.k += 1
        return True, self.image.copy()

    def release(self):
        pass


def test_camera_runs_live(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    assert demo.cli(["--resume", str(ckpt), "--input", "0", "--output", str(tmp_path), "--per-track"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("frame ")] == \
        [f"frame {k}" for k in range(5)]
    assert "person 0" in out
    rows = read_rows(tmp_path / "predictions.csv")
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3", "4"] and {r["file"] for r in rows} == {"camera0"}
    assert {r["track_id"] for r in rows} == {"0"}
    assert json.loads((tmp_path / "predictions.json").read_text())["complete"]
    assert (tmp_path / "tracks" / "person_0.csv").is_file() and list((tmp_path / "annotated").glob("camera0.*"))


@pytest.mark.parametrize("pipeline", [True, False])
def test_camera_stopped_with_ctrl_c_leaves_complete_files(ckpt, tmp_path, monkeypatch, capsys, pipeline):
    camera = type("InterruptedCamera", (FakeCamera,), {"frames": 100, "interrupt_at": 4})
    monkeypatch.setattr(cv2, "VideoCapture", camera)
    argv = ["--resume", str(ckpt), "--input", "0", "--output", str(tmp_path), "--no-annotate"]
    assert demo.cli(argv + ([] if pipeline else ["--no-pipeline"])) == 130
    assert "interrupted" in capsys.readouterr().err
    rows = read_rows(tmp_path / "predictions.csv")
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3"]
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2, 3]
    result = json.loads((tmp_path / "predictions.json").read_text())
    assert result["complete"] is False and len(result["results"]) == 4
