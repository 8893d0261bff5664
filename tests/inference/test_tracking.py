"""tracking.py: track ids follow two real people through a synthetic video in which their face sizes
cross (so FaceDetector's largest-first order swaps), a face gone for longer than max_missed
frames comes back with a new id, and the per-person CSVs.

The video: the NASA astronaut portrait (left, growing) and scikit-image's "camera" photograph
(right, shrinking), both public domain (tests/data/README), pasted into 40 frames of 640x360.
Detections are computed once per module (real MTCNN, about 0.1 s a frame).
"""
import csv
import importlib.util

import numpy as np
import pytest

from face_videos import FRAMES, WIDTH, compose_video  # noqa: E402  (tests/ is on sys.path)
from megraphau.inference import tracking
from megraphau.inference.faces import FaceDetector, FaceTracker
from megraphau.inference.tracking import FaceTrackIds, TrackCsvWriter, faces_to_boxes, write_track_csvs

needs_norfair = pytest.mark.skipif(importlib.util.find_spec("norfair") is None,
                                   reason="the Norfair tracker (norfair-enough, Python >= 3.10) is not installed")


@pytest.fixture(scope="module")
def detector():
    # Detection on a 480x270 copy of each frame: 40 % less CPU than the default 640, and every
    # face of this video is still found (the smallest is about 25 px wide there).
    return FaceDetector(detect_size=480)


@pytest.fixture(scope="module")
def video():
    return compose_video()


@pytest.fixture(scope="module")
def detections(detector, video):
    """Per frame: (boxes (K, 4) x1 y1 x2 y2, scores (K,)), in FaceDetector's order (largest first)."""
    return [faces_to_boxes(detector.detect(frame)) for frame in video]


def side(box):
    """Which person a box is: the astronaut is on the left half, the camera man on the right."""
    return "astronaut" if (box[0] + box[2]) / 2 < WIDTH / 2 else "camera"


def ids_by_person(frames_boxes, frames_ids):
    out = {"astronaut": [], "camera": []}
    for boxes, ids in zip(frames_boxes, frames_ids):
        for box, track_id in zip(boxes, ids):
            out[side(box)].append(track_id)
    return out


def run(detections, tracker=None):
    tracker = tracker or FaceTrackIds()
    return [tracker.update(boxes, scores) for boxes, scores in detections]


def test_the_video_swaps_the_largest_first_order(detections):
    """The premise: both faces are found on every frame, and which one FaceDetector lists first
    (the larger) changes midway."""
    assert all(len(boxes) == 2 for boxes, _ in detections), [len(b) for b, _ in detections]
    assert {side(b) for b, _ in detections for b in b} == {"astronaut", "camera"}
    first = [side(boxes[0]) for boxes, _ in detections]
    assert first[0] == "camera" and first[-1] == "astronaut"
    assert first.count("camera") >= 5 and first.count("astronaut") >= 5


@needs_norfair
def test_one_id_per_person_while_sizes_cross(detections):
    ids = run(detections)
    people = ids_by_person([b for b, _ in detections], ids)
    assert len(people["astronaut"]) == len(people["camera"]) == FRAMES
    # ids start at 0 in order of first appearance; on the first frame, in input order (largest first)
    assert set(people["camera"]) == {0} and set(people["astronaut"]) == {1}


@needs_norfair
def test_one_id_per_person_with_the_face_tracker(detector, video):
    """As the video pipeline runs: FaceTracker (O-Net on the previous boxes, a full detection every
    10th frame), then FaceTrackIds.update_faces on its largest-first lists."""
    face_tracker, track_ids = FaceTracker(detector, redetect_every=10), FaceTrackIds()
    boxes, ids = [], []
    for frame in video:
        found = face_tracker.update(frame)
        boxes.append(faces_to_boxes(found)[0])
        ids.append(track_ids.update_faces(found))
    people = ids_by_person(boxes, ids)
    assert len(people["astronaut"]) == len(people["camera"]) == FRAMES
    assert set(people["camera"]) == {0} and set(people["astronaut"]) == {1}


def drop_camera(detections, frames):
    """The detections with the camera man's face removed on ``frames``: what the detector gives on
    a video where he steps out of the picture then (the astronaut's detections are unchanged)."""
    out = []
    for k, (boxes, scores) in enumerate(detections):
        keep = np.array([not (k in frames and side(b) == "camera") for b in boxes], bool)
        out.append((boxes[keep], scores[keep]))
    return out


@needs_norfair
def test_a_face_gone_longer_than_max_missed_comes_back_with_a_new_id(detections):
    tracker = FaceTrackIds()  # max_missed=10
    gone = range(12, 12 + tracker.max_missed + 2)
    thinned = drop_camera(detections, set(gone))
    ids = run(thinned, tracker)
    before = ids_by_person([b for b, _ in thinned[:gone.start]], ids[:gone.start])
    after = ids_by_person([b for b, _ in thinned[gone.stop:]], ids[gone.stop:])
    assert set(before["camera"]) == {0} and set(after["camera"]) == {2}  # a new id, never reused
    assert set(ids_by_person([b for b, _ in thinned], ids)["astronaut"]) == {1}
    assert tracker.num_ids == 3


@needs_norfair
def test_a_short_miss_keeps_the_id(detections):
    ids = run(drop_camera(detections, {20, 21, 22}))  # e.g. three frames of missed detection
    people = ids_by_person([b for b, _ in detections], ids)
    assert set(people["camera"]) == {0} and set(people["astronaut"]) == {1}


@needs_norfair
def test_ids_are_deterministic(detections):
    thinned = drop_camera(detections, set(range(10, 25)))
    tracker = FaceTrackIds()
    first = run(thinned, tracker)
    assert run(thinned) == first  # a new instance
    tracker.reset()
    assert run(thinned, tracker) == first  # the same instance after reset()


# -- without a detector: the id bookkeeping


@needs_norfair
def test_ids_follow_the_boxes_whatever_their_order():
    tracker = FaceTrackIds()
    a, b, c = np.array([10, 10, 60, 60.0]), np.array([200, 20, 260, 80.0]), np.array([400, 30, 450, 80.0])
    assert tracker.update(np.stack([b, a])) == [0, 1]  # first appearance: input order
    for k in range(1, 6):
        step = np.array([k, 0, k, 0.0])
        boxes = [a + step, b - step] if k % 2 else [b - step, a + step]
        assert tracker.update(np.stack(boxes)) == ([1, 0] if k % 2 else [0, 1])
    assert tracker.update(np.stack([c, a + 6, b - 6])) == [2, 1, 0]
    assert tracker.update(np.zeros((0, 4))) == [] and tracker.update([]) == []
    assert tracker.num_ids == 3


@needs_norfair
def test_reset_and_how_long_tracks_last():
    tracker = FaceTrackIds(max_missed=3)
    box = np.array([[100, 100, 150, 150.0]])
    assert [tracker.update(box)[0] for _ in range(5)] == [0] * 5
    for _ in range(3):
        tracker.update([])  # three missed frames: within max_missed
    assert tracker.update(box) == [0]
    for _ in range(4):
        tracker.update([])  # four: the track has ended
    assert tracker.update(box) == [1]
    # a track seen on one frame only is kept through one missed frame, not max_missed
    young = FaceTrackIds(max_missed=3)
    young.update(box), young.update([]), young.update([])
    assert young.update(box) == [1]

    tracker.reset(restart_ids=False)  # a scene cut: ids stay unique in the video
    assert tracker.update(box) == [2]
    tracker.reset()  # a new video
    assert tracker.update(box) == [0] and tracker.num_ids == 1


@needs_norfair
def test_bad_input_is_refused():
    tracker = FaceTrackIds()
    with pytest.raises(ValueError, match="boxes but"):
        tracker.update(np.zeros((2, 4)) + [0, 0, 1, 1], [0.9])
    with pytest.raises(ValueError, match="x2 > x1"):
        tracker.update(np.array([[10, 10, 5, 20.0]]))
    with pytest.raises(ValueError, match="finite"):
        tracker.update(np.array([[10, 10, np.nan, 20.0]]))
    with pytest.raises(ValueError, match="max_missed"):
        FaceTrackIds(max_missed=0)
    with pytest.raises(ValueError, match="min_iou"):
        FaceTrackIds(min_iou=0.0)


def test_missing_norfair_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_norfair(name, *args, **kwargs):
        if name == "norfair" or name.startswith("norfair."):
            raise ImportError("No module named 'norfair'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_norfair)
    with pytest.raises(ImportError, match="norfair-enough"):
        FaceTrackIds()


# -- one CSV per person


NAMES = ["AU1", "AU2", "AU4"]


def result_rows():
    """Rows as a video run makes them: two people, a face-less frame (track_id None)."""
    rows = []
    for frame in range(6):
        time = frame / 25.0
        if frame == 3:
            rows.append({"frame": frame, "time": time, "track_id": None})
            continue
        rows.append({"frame": frame, "time": time, "track_id": 0, "AU1": 0.1 * frame, "AU2": 0.5, "AU4": 0.25})
        if frame >= 2:
            rows.append({"frame": frame, "time": time, "track_id": 1,
                         "probs": {"AU1": 0.9, "AU2": 0.123456789, "AU4": 0.0}})
    return rows


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_write_track_csvs(tmp_path):
    stale = tmp_path / "tracks" / "person_7.csv"
    stale.parent.mkdir()
    stale.write_text("an earlier run's\n")
    keep = tmp_path / "tracks" / "notes.txt"
    keep.write_text("not ours\n")
    paths = write_track_csvs(result_rows(), tmp_path, NAMES)
    assert paths == {0: tmp_path / "tracks" / "person_0.csv", 1: tmp_path / "tracks" / "person_1.csv"}
    assert not stale.exists() and keep.exists()
    person0, person1 = read(paths[0]), read(paths[1])
    assert person0[0] == ["frame", "time", "AU1_prob", "AU2_prob", "AU4_prob"] == person1[0]
    assert [r[0] for r in person0[1:]] == ["0", "1", "2", "4", "5"]
    assert person0[2] == ["1", "0.040000", "0.100000", "0.500000", "0.250000"]
    assert [r[0] for r in person1[1:]] == ["2", "4", "5"] and person1[1][3] == "0.123457"
    frames, times, names, probs = tracking.read_track_csv(paths[0])
    assert names == NAMES and frames.tolist() == [0, 1, 2, 4, 5]
    assert np.allclose(times, frames / 25.0) and np.allclose(probs[:, 0], 0.1 * frames)
    # AU names default to the first tracked row's keys
    assert write_track_csvs(result_rows(), tmp_path / "again") == {
        t: tmp_path / "again" / "tracks" / f"person_{t}.csv" for t in (0, 1)}
    assert read(tmp_path / "again" / "tracks" / "person_1.csv") == person1


def test_track_csv_writer_appends_on_flush(tmp_path):
    writer = TrackCsvWriter(tmp_path, NAMES)
    rows = result_rows()
    writer.add_all(rows[:3])  # frames 0-2 of person 0
    assert writer.paths == {} and not (tmp_path / "tracks" / "person_0.csv").exists()
    writer.flush()
    assert len(read(tmp_path / "tracks" / "person_0.csv")) == 1 + 3 and writer.paths == {
        0: tmp_path / "tracks" / "person_0.csv"}
    writer.add_all(rows[3:])
    writer.add({"frame": 9, "time": None, "track_id": 0, "AU1": 1, "AU2": 0, "AU4": 0})
    paths = writer.close()
    person0 = read(paths[0])
    assert len(person0) == 1 + 6 and person0[-1][:2] == ["9", ""]  # one header, time unknown
    assert person0 == [person0[0]] + [r for r in person0[1:] if r != person0[0]]
    with pytest.raises(KeyError, match="AU4"):
        writer.add({"frame": 10, "time": 0.4, "track_id": 0, "AU1": 1, "AU2": 0})
