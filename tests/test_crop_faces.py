"""tool/crop_faces.py on a tmp tree of synthetic frames and a short MJPG video."""
import dataclasses

import cv2
import numpy as np
import pytest

from tool.crop_faces import (NO_FACE_FILE, CropError, crop_image_tree, crop_videos,
                             find_disfa_videos, main)
from tool.face_detection import FaceDetector
from synth import neutral_params, render_face

ZERO = [0] * 12


def _frame(i, size=(240, 320)):
    """A camera-like frame: a synthetic face (varying identity/pose) off-centre on a background."""
    params = dataclasses.replace(neutral_params(), angle=(-4.0, 0.0, 5.0)[i % 3], noise_seed=i,
                                 noise_sigma=2.0)
    labels = list(ZERO)
    labels[7] = i % 2  # AU12 on every other frame
    face = cv2.resize(render_face(labels, params), (180, 180), interpolation=cv2.INTER_AREA)
    frame = np.full(size + (3,), (90, 120, 140), np.uint8)
    x = 30 + 20 * (i % 3)
    frame[30:210, x:x + 180] = face
    return frame


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def _assert_face_crop(detector, path):
    crop = cv2.imread(str(path))
    assert crop is not None and crop.shape == (256, 256, 3)
    faces = detector.detect(crop)
    assert faces, f"no face in {path}"
    cx = faces[0].box[0] + faces[0].box[2] / 2
    assert abs(cx - 128) < 30  # the face is centred in its crop


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
        _assert_face_crop(detector, out / rel)
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
    summary = crop_image_tree(raw, out, detector=detector, skip_no_face=True, progress=False)
    assert summary.written == 1 and summary.no_face == ["a/empty.png"]
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
        _assert_face_crop(detector, out / "SN001" / f"{i}.png")
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
        assert path.read_bytes() == other.read_bytes(), path
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "SN003.avi", [_frame(0), _frame(1)])
    _write_video(videos / "LeftVideoSN004_comp.avi", [_frame(2)])
    summary = crop_videos(videos, tmp_path / "vid", progress=False, workers=2)
    assert summary.written == 3 and summary.no_face == []
    written = sorted(p.relative_to(tmp_path / "vid").as_posix() for p in (tmp_path / "vid").rglob("*.png"))
    assert written == ["SN003/0.png", "SN003/1.png", "SN004/0.png"]
