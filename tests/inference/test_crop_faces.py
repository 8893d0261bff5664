"""tool/crop_faces.py and megraphau.inference.cropping under it, on a tmp tree of camera-like
frames (the NASA astronaut portrait of tests/data, moved around) and short MJPG videos."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from megraphau.inference.cropping import (
    NO_FACE_FILE,
    CropError,
    crop_image_tree,
    crop_videos,
    find_disfa_videos,
    preview_presets,
)
from megraphau.inference.faces import CROP_PRESETS, FaceDetector
from tool.crop_faces import main  # the command line

PHOTO = cv2.imread(str(Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"))


def _frame(i, size=(240, 320)):
    """A camera-like frame: the photo, scaled, turned and moved a little per frame."""
    h, w = size
    angle, scale = (-4.0, 0.0, 5.0)[i % 3], 0.8 + 0.05 * (i % 2)
    matrix = cv2.getRotationMatrix2D((127.5, 127.5), angle, scale)
    matrix[:, 2] += (w / 2 - 127.5 + 10 * (i % 3 - 1), h / 2 - 127.5 + 4 * (i % 2))
    return cv2.warpAffine(PHOTO, matrix, (w, h), borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(90, 120, 140))


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def _assert_face_crop(detector, path, preset):
    """A 256 crop whose face has its eyes where ``preset`` puts them (within 8 px)."""
    crop = cv2.imread(str(path))
    assert crop is not None and crop.shape == (256, 256, 3)
    faces = detector.detect(crop)
    assert faces, f"no face in {path}"
    eyes = faces[0].landmarks[:2].mean(0)
    expected = CROP_PRESETS[preset][:2].mean(0)
    assert np.hypot(*(eyes - expected)) < 8, (path, preset, eyes, expected)


def test_bp4d_tree_same_paths_no_face_and_rerun(tmp_path, detector, capsys):
    raw, out = tmp_path / "raw", tmp_path / "img"
    rels = ["F001/T1/1.jpg", "F001/T1/2.jpg", "F001/T2/7.jpg", "M002/T1/1.jpg"]
    for i, rel in enumerate(rels):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(raw / rel), _frame(i))
    cv2.imwrite(str(raw / "M002/T1/2.jpg"), np.full((240, 320, 3), 128, np.uint8))  # no face
    assert main(["--dataset", "BP4D", "--input", str(raw), "--output", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 crops written" in printed and "1 frames without a detected face" in printed
    for rel in rels:
        _assert_face_crop(detector, out / rel, "BP4D")
    assert (out / NO_FACE_FILE).read_text().split() == ["M002/T1/2.jpg"]
    blank = cv2.imread(str(out / "M002/T1/2.jpg"))
    assert blank.shape == (256, 256, 3)  # centre crop keeps the lists aligned
    # Re-running skips existing files.
    mtime = (out / rels[0]).stat().st_mtime_ns
    summary = crop_image_tree(raw, out, detector=detector, progress=False)
    assert (summary.written, summary.skipped) == (0, 5)
    assert (out / rels[0]).stat().st_mtime_ns == mtime


def test_skip_no_face_and_folder_mode(tmp_path, detector):
    raw, out = tmp_path / "photos", tmp_path / "crops"
    (raw / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(raw / "a" / "b" / "face.png"), _frame(1, size=(300, 300)))
    cv2.imwrite(str(raw / "a" / "empty.png"), np.zeros((200, 200, 3), np.uint8))
    (raw / "notes.txt").write_text("not an image, ignored")
    summary = crop_image_tree(raw, out, detector=detector, skip_no_face=True, progress=False,
                              preset="OpenGraphAU")
    assert summary.written == 1 and summary.no_face == ["a/empty.png"]
    _assert_face_crop(detector, out / "a" / "b" / "face.png", "OpenGraphAU")
    assert (out / "a" / "b" / "face.png").exists() and not (out / "a" / "empty.png").exists()
    assert (out / NO_FACE_FILE).read_text().split() == ["a/empty.png"]


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0,
                             (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_disfa_video_to_numbered_pngs(tmp_path, detector):
    videos, out = tmp_path / "Videos_LeftCamera", tmp_path / "img"
    videos.mkdir()
    frames = [_frame(i) for i in range(4)] + [np.full((240, 320, 3), 60, np.uint8)]
    _write_video(videos / "LeftVideoSN001_comp.avi", frames)
    _write_video(videos / "RightVideoSN001_comp.avi", frames[:2])  # the left camera wins
    assert [s for s, _ in find_disfa_videos(videos)] == ["SN001"]
    assert main(["--dataset", "DISFA", "--input", str(videos), "--output", str(out),
                 "--no-progress"]) == 0
    written = sorted(p.name for p in (out / "SN001").iterdir())
    assert written == [f"{i}.png" for i in range(5)]
    for i in range(4):
        _assert_face_crop(detector, out / "SN001" / f"{i}.png", "DISFA")
    assert (out / NO_FACE_FILE).read_text().split() == ["SN001/4.png"]
    summary = crop_videos(videos, out, detector=detector, progress=False)  # re-run: all skipped
    assert (summary.written, summary.skipped) == (0, 5)


def test_unreadable_inputs_are_named(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "S1").mkdir(parents=True)
    bad = raw / "S1" / "1.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(CropError, match="1.jpg"):
        crop_image_tree(raw, tmp_path / "out", progress=False)
    assert main(["--dataset", "folder", "--input", str(raw), "--output", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "LeftVideoSN002_comp.avi").write_bytes(b"\x00" * 1000)
    with pytest.raises(CropError, match="SN002"):
        crop_videos(videos, tmp_path / "vout", progress=False)
    with pytest.raises(CropError, match="no DISFA videos"):
        find_disfa_videos(raw)
    with pytest.raises(CropError, match="not found"):
        crop_image_tree(tmp_path / "missing", tmp_path / "out", progress=False)


def test_workers_give_the_same_crops(tmp_path):
    raw = tmp_path / "raw"
    for i in range(6):
        (raw / f"S{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(raw / f"S{i % 2}" / f"{i}.png"), _frame(i))
    cv2.imwrite(str(raw / "S0" / "blank.png"), np.full((240, 320, 3), 128, np.uint8))
    one = crop_image_tree(raw, tmp_path / "one", progress=False)
    two = crop_image_tree(raw, tmp_path / "two", progress=False, workers=2)
    expected = (7, ["S0/blank.png"])
    assert (one.written, sorted(one.no_face)) == (two.written, sorted(two.no_face)) == expected
    for path in sorted((tmp_path / "one").rglob("*.png")):
        other = tmp_path / "two" / path.relative_to(tmp_path / "one")
        # Same crops (torch's float sums may differ in the last bit between thread counts).
        diff = np.abs(cv2.imread(str(path)).astype(int) - cv2.imread(str(other)))
        assert diff.max() <= 2 and diff.mean() < 0.05, path
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "SN003.avi", [_frame(0), _frame(1)])
    _write_video(videos / "LeftVideoSN004_comp.avi", [_frame(2)])
    summary = crop_videos(videos, tmp_path / "vid", progress=False, workers=2)
    assert summary.written == 3 and summary.no_face == []
    written = sorted(p.relative_to(tmp_path / "vid").as_posix() for p in (tmp_path / "vid").rglob("*.png"))
    assert written == ["SN003/0.png", "SN003/1.png", "SN004/0.png"]


def test_presets_on_the_command_line_and_tracking_in_videos(tmp_path, detector):
    raw = tmp_path / "raw"
    (raw / "F001" / "T1").mkdir(parents=True)
    cv2.imwrite(str(raw / "F001" / "T1" / "1.jpg"), _frame(0, size=(480, 360)))
    assert main(["--dataset", "BP4D", "--preset", "OpenGraphAU", "--input", str(raw),
                 "--output", str(tmp_path / "og"), "--no-progress"]) == 0
    _assert_face_crop(detector, tmp_path / "og" / "F001" / "T1" / "1.jpg", "OpenGraphAU")
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = [_frame(i) for i in range(6)]
    frames[3] = np.full_like(frames[3], 60)  # the face is gone for one frame
    _write_video(videos / "LeftVideoSN005_comp.avi", frames)
    summary = crop_videos(videos, tmp_path / "tracked", progress=False, redetect_every=4)
    assert summary.written == 6 and summary.no_face == ["SN005/3.png"]
    for i in (0, 1, 2, 4, 5):
        _assert_face_crop(detector, tmp_path / "tracked" / "SN005" / f"{i}.png", "DISFA")
    with pytest.raises(CropError, match="unknown crop preset"):
        crop_image_tree(raw, tmp_path / "x", preset="AffectNet", progress=False)
    with pytest.raises(SystemExit):
        main(["--dataset", "BP4D", "--preset", "AffectNet", "--input", str(raw), "--output", "x"])


def test_preview_presets(tmp_path, detector):
    preview = preview_presets(PHOTO, detector)
    assert preview.shape == (256 + 28, 256 * len(CROP_PRESETS), 3)
    out = tmp_path / "docs" / "presets.jpg"
    assert main(["--preview-presets", str(out)]) == 0  # default photo: tests/data/astronaut.jpg
    assert cv2.imread(str(out)).shape == preview.shape
    with pytest.raises(CropError, match="no face"):
        preview_presets(np.zeros((200, 200, 3), np.uint8), detector)
    with pytest.raises(SystemExit):
        main(["--input", "x"])  # neither a dataset run nor a preview


def test_help_examples_are_valid_commands(monkeypatch, capsys):
    """Every example of --help parses and reaches the work it names (the work itself stubbed)."""
    import shlex
    import types

    from tool import crop_faces

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--dataset, --input and --output are required, except with --preview-presets" in text
    examples = [line.strip() for line in text.split("examples:", 1)[1].splitlines()
                if line.strip().startswith("python tool/crop_faces.py")]
    assert len(examples) == 4
    ran = []
    summary = types.SimpleNamespace(no_face=0)
    monkeypatch.setattr(crop_faces, "check_writable_folder", lambda *a: None)
    monkeypatch.setattr(crop_faces, "crop_image_tree", lambda *a, **k: ran.append("tree") or summary)
    monkeypatch.setattr(crop_faces, "crop_videos", lambda *a, **k: ran.append("videos") or summary)
    monkeypatch.setattr(crop_faces, "_write_preview", lambda *a: ran.append("preview"))
    for example in examples:
        assert main(shlex.split(example)[2:]) == 0, example
    assert ran == ["tree", "videos", "tree", "preview"]
