"""Stable per-person track ids for the faces of a video, and one CSV of AU probabilities per person.

``FaceTracker`` (faces.py) lists each frame's faces largest first, so "face 0" is whichever face
is largest on that frame: two people swap numbers when their sizes cross, and a re-detection can
reorder them. ``FaceTrackIds`` gives every face a track id that follows the person instead:

    tracker = FaceTracker(FaceDetector())
    track_ids = FaceTrackIds()
    for frame in frames:
        faces = tracker.update(frame)
        ids = track_ids.update_faces(faces)   # ids[i] is the person of faces[i]

Association is done by the Norfair multi-object tracker (the ``norfair-enough`` distribution, a
maintained fork of tryolabs/norfair that keeps the ``norfair`` import name): each face box is a
two-point detection (top-left and bottom-right corners) whose motion a Kalman filter predicts;
boxes are matched to the predicted boxes of the current tracks by IoU (greedy, closest first,
``min_iou`` at least).

Track ids:

- are 0, 1, 2, ... in the order the tracks appear (several new faces on one frame: in the order
  of the input boxes, i.e. largest first with FaceTracker's lists);
- are deterministic: the same boxes give the same ids (no randomness, no global state; each
  ``FaceTrackIds`` numbers its own tracks);
- survive frames where the face is not found: a track whose face has been seen on n frames is
  kept through up to min(n, ``max_missed``) frames without it (its box predicted by the Kalman
  filter), and takes the face back when it shows up again near the predicted box;
- are never reused: a face that leaves the picture (or is not found) for longer than that, or
  re-enters away from where its track predicted it, gets a NEW id. There is no re-identification
  by appearance: telling that a face re-entering is a person seen before needs face recognition,
  which this project does not do. Merge ids afterwards if you know they are the same person.

Writing per-person results: ``TrackCsvWriter`` (streaming, flushed with the other outputs) or
``write_track_csvs`` (all rows at once) write ``<out_dir>/tracks/person_<id>.csv``; figures of
one person's AU probabilities over time are in megraphau/analysis/timeseries.py.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from megraphau.inference.faces import Face

__all__ = ["FaceTrackIds", "TrackCsvWriter", "faces_to_boxes", "read_track_csv", "track_csv_path",
           "write_track_csvs", "TRACKS_DIR"]

#: Folder (inside a run's output folder) of the per-person CSVs.
TRACKS_DIR = "tracks"

_PERSON_FILE = re.compile(r"person_\d+\.csv")


def faces_to_boxes(faces: Sequence[Face]) -> Tuple[np.ndarray, np.ndarray]:
    """(K, 4) float64 x1, y1, x2, y2 boxes and (K,) scores of faces.py ``Face`` objects (whose
    box is x, y, w, h)."""
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)],
                     np.float64).reshape(-1, 4)
    scores = np.array([f.score for f in faces], np.float64).reshape(-1)
    return boxes, scores


def _load_norfair():
    """Norfair's Detection and Tracker classes.

    Imported here, not at the module's top: the requirement applies on Python >= 3.10 only (the
    maintained fork needs it), and importing it costs about half a second, which the scripts
    that import this module without tracking should not pay.
    """
    try:
        from norfair import Detection, Tracker
    except ImportError as err:
        raise ImportError(
            "face track ids need the Norfair tracker (Python >= 3.10): "
            "python -m pip install 'norfair-enough>=2.4,<3'") from err
    return Detection, Tracker


class FaceTrackIds:
    """Track ids that follow each person's face from frame to frame (see the module docstring).

    Args:
        max_missed: frames a track is kept without its face (at least 1; a track seen on fewer
            frames is kept through as many missed frames as it was seen on). After that the
            face gets a new id when it comes back. At 30 fps, 10 frames is a third of a second:
            enough to bridge missed detections (blinks, motion blur, a hand passing), short
            enough that another person stepping into the same place is not taken for the first.
        min_iou: least intersection over union between a face's box and a track's predicted box
            for the face to continue that track. Lower it when frames are far apart in time
            (a large processing stride) and faces move a lot between them.
    """

    def __init__(self, max_missed: int = 10, min_iou: float = 0.3):
        if int(max_missed) < 1:
            raise ValueError(f"max_missed must be >= 1, got {max_missed}")
        if not 0.0 < float(min_iou) <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        self.max_missed = int(max_missed)
        self.min_iou = float(min_iou)
        self._detection_class, self._tracker_class = _load_norfair()
        self._ids: Dict[int, int] = {}  # Norfair's object id -> our track id
        self._next_id = 0
        self._frame = 0
        self._tracker = self._new_tracker()

    def _new_tracker(self):
        # Norfair's hit counter: +1 for each frame a track is matched (capped at
        # hit_counter_max), -1 for each frame it is not; the track ends when it drops below 0.
        # initialization_delay=0 makes a new face a track (with an id) on its first frame.
        return self._tracker_class(distance_function="iou", distance_threshold=1.0 - self.min_iou,
                                   hit_counter_max=self.max_missed, initialization_delay=0,
                                   detection_threshold=0.0)

    @property
    def num_ids(self) -> int:
        """Track ids handed out so far (the next new track gets this id)."""
        return self._next_id

    def reset(self, restart_ids: bool = True) -> None:
        """End all tracks. ``restart_ids``: number the next tracks from 0 again (a new video);
        False keeps counting (a scene cut in the same video, so that ids stay unique in it)."""
        self._tracker = self._new_tracker()
        self._ids = {}
        self._frame = 0
        if restart_ids:
            self._next_id = 0

    def update(self, boxes: Union[np.ndarray, Sequence], scores: Optional[Union[np.ndarray, Sequence]] = None
               ) -> List[int]:
        """Track ids of the next frame's faces, aligned with the input: ``ids[i]`` for box i.

        boxes: (K, 4) x1, y1, x2, y2 in image pixels (K may be 0: a frame without faces, which
            still counts as a missed frame for every track); scores: (K,) detector scores
            (default 1), kept with the detections.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if not np.isfinite(boxes).all():
            raise ValueError("boxes must be finite")
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise ValueError("boxes must be x1, y1, x2, y2 with x2 > x1 and y2 > y1")
        self._frame += 1
        detection = self._detection_class
        # Each detection carries (frame, input index): after the update, a track whose last
        # detection is of this frame was matched to (or started by) that input box.
        detections = [detection(points=box.reshape(2, 2), scores=max(float(score), 1e-6), data=(self._frame, i))
                      for i, (box, score) in enumerate(zip(boxes, scores))]
        tracked = self._tracker.update(detections=detections)
        ids: List[Optional[int]] = [None] * len(boxes)
        # Norfair creates new tracks in the input's order and numbers them increasingly, so
        # visiting tracks by Norfair's id hands our ids out in order of first appearance.
        for obj in sorted(tracked, key=lambda o: o.id):
            frame, index = obj.last_detection.data
            if frame != self._frame:
                continue  # a track coasting through a missed frame
            if obj.id not in self._ids:
                self._ids[obj.id] = self._next_id
                self._next_id += 1
            ids[index] = self._ids[obj.id]
        missing = [i for i, track_id in enumerate(ids) if track_id is None]
        if missing:  # every detection either continues a track or starts one
            raise RuntimeError(f"the tracker returned no track for boxes {missing}")
        return ids  # type: ignore[return-value]

    def update_faces(self, faces: Sequence[Face]) -> List[int]:
        """``update`` with faces.py ``Face`` objects (FaceDetector / FaceTracker results)."""
        return self.update(*faces_to_boxes(faces))


# -- one CSV per person


def track_csv_path(out_dir: Union[str, Path], track_id: int) -> Path:
    """``<out_dir>/tracks/person_<id>.csv``."""
    return Path(out_dir) / TRACKS_DIR / f"person_{int(track_id)}.csv"


def _float(value) -> float:
    return float("nan") if value is None or value == "" else float(value)


class TrackCsvWriter:
    """One CSV per person, ``<out_dir>/tracks/person_<id>.csv``, from result rows that carry a
    track id. Columns: frame, time (seconds; empty when unknown), then ``<AU>_prob`` for each
    AU (probabilities, 6 decimals, as predictions.csv writes them).

    ``add`` keeps rows in memory until ``flush`` (call it with the other outputs' flush) appends
    them, each file in one write, so files hold complete rows of a prefix of the frames and
    memory does not grow with a video's length; files are opened only while written, so a video
    with many people does not hold many files open. ``close`` flushes and returns the paths.
    person_*.csv files already in the tracks folder (an earlier run's) are removed at the start,
    so that the folder holds this run's people only.

    Args:
        out_dir: the run's output folder (the CSVs go into its ``tracks`` subfolder).
        au_names: the AU names, in the order of the columns.
        folder: the folder of the CSVs instead of ``<out_dir>/tracks`` (one per video when a run
            reads several videos, whose ids all start at 0).
    """

    def __init__(self, out_dir: Union[str, Path], au_names: Sequence[str], folder: Optional[Union[str, Path]] = None):
        self.out_dir = Path(out_dir)
        self.au_names = [str(n) for n in au_names]
        self.tracks_dir = self.out_dir / TRACKS_DIR if folder is None else Path(folder)
        self.tracks_dir.mkdir(parents=True, exist_ok=True)
        for old in self.tracks_dir.iterdir():
            if _PERSON_FILE.fullmatch(old.name) and old.is_file():
                old.unlink()
        self._pending: Dict[int, List[list]] = {}
        self._started: set = set()
        self.rows = 0  #: rows written or waiting

    @property
    def header(self) -> List[str]:
        return ["frame", "time"] + [f"{n}_prob" for n in self.au_names]

    def add(self, row: Mapping) -> None:
        """One face of one frame: a mapping with "frame", "time" (seconds or None), "track_id"
        and the AU probabilities, either under each AU's name or as a mapping in "probs"
        ({name: probability}, as FaceResult.as_dict writes them). A row whose track_id is None
        (a face-less frame, or a run without tracking) is skipped."""
        track_id = row.get("track_id")
        if track_id is None:
            return
        probs = row.get("probs")
        source = probs if isinstance(probs, Mapping) else row
        missing = [n for n in self.au_names if n not in source]
        if missing:
            raise KeyError(f"row of frame {row.get('frame')} lacks AU probabilities {missing}")
        time = row.get("time")
        values = [f"{_float(source[n]):.6f}" for n in self.au_names]
        self._pending.setdefault(int(track_id), []).append(
            [int(row["frame"]), "" if time is None else f"{float(time):.6f}", *values])
        self.rows += 1

    def add_all(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        """Append the rows added since the last flush to their persons' files."""
        for track_id in sorted(self._pending):
            text = io.StringIO()
            writer = csv.writer(text)
            if track_id not in self._started:
                writer.writerow(self.header)
            writer.writerows(self._pending[track_id])
            mode = "a" if track_id in self._started else "w"
            with open(self._path(track_id), mode, newline="", encoding="utf-8") as fh:
                fh.write(text.getvalue())
            self._started.add(track_id)
        self._pending = {}

    def _path(self, track_id: int) -> Path:
        return self.tracks_dir / f"person_{int(track_id)}.csv"

    @property
    def paths(self) -> Dict[int, Path]:
        """{track id: its CSV} of the persons written so far."""
        return {t: self._path(t) for t in sorted(self._started)}

    def close(self) -> Dict[int, Path]:
        self.flush()
        return self.paths


def write_track_csvs(rows: Iterable[Mapping], out_dir: Union[str, Path], au_names: Optional[Sequence[str]] = None
                     ) -> Dict[int, Path]:
    """All rows at once (see TrackCsvWriter for the rows and the files): returns {track id: CSV}.
    ``au_names`` default: the keys of the first tracked row other than frame, time and track_id
    (or of its "probs" mapping), in that row's order."""
    rows = list(rows)
    if au_names is None:
        first = next((r for r in rows if r.get("track_id") is not None), None)
        if first is None:
            au_names = []
        elif isinstance(first.get("probs"), Mapping):
            au_names = list(first["probs"])
        else:
            au_names = [k for k in first if k not in ("frame", "time", "track_id")]
    writer = TrackCsvWriter(out_dir, au_names)
    writer.add_all(rows)
    return writer.close()


def read_track_csv(path: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray, List[str], np.ndarray]:
    """A person CSV back: frames (T,) int, times (T,) float (NaN where empty), AU names and
    probabilities (T, N)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    if header[:2] != ["frame", "time"] or not all(h.endswith("_prob") for h in header[2:]):
        raise ValueError(f"{path}: not a person CSV (columns {header[:4]}...)")
    names = [h[:-len("_prob")] for h in header[2:]]
    frames = np.array([int(r[0]) for r in rows], np.int64)
    times = np.array([_float(r[1]) for r in rows], np.float64)
    probs = np.array([[_float(v) for v in r[2:]] for r in rows], np.float64).reshape(len(rows), len(names))
    return frames, times, names, probs

