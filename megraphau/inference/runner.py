"""Runs AU detection over files and writes the results as they come: process_images (images in
shared model batches), process_video (a video through the threaded pipeline, or one thread),
process_inputs (a folder, glob or list of images and videos, in order), process_camera (a live
camera) and sequential_results, the one-thread reference the pipeline (pipeline.VideoPipeline) is
tested against. Outputs go through writers.ResultWriter; annotation is drawing.annotate; per
person CSVs and figures (per_track) through tracking.TrackCsvWriter and timeseries."""
from __future__ import annotations

import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from megraphau.analysis.timeseries import plot_track_csv
from megraphau.inference.detector import AUDetector
from megraphau.inference.drawing import annotate
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, display_name, write_image
from megraphau.inference.inputs import (
    DemoError,
    InputSet,
    VideoStats,
    camera_frames,
    is_video,
    read_bgr_image,
    video_frames,
    video_info,
)
from megraphau.inference.pipeline import FrameResult, StageTimes, VideoPipeline, clock
from megraphau.inference.tracking import TRACKS_DIR, FaceTrackIds, TrackCsvWriter
from megraphau.inference.writers import AnnotatedVideo, ResultWriter, annotated_path, save_crops, save_graphs

__all__ = ["batched", "default_threads", "live_line", "process_camera", "process_images", "process_inputs",
           "process_video", "sequential_results", "tracks_folder", "write_track_figures"]


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(iterable, total=None, desc=""):
    """A tqdm progress bar over `iterable` where tqdm is installed (optional), else `iterable`."""
    try:
        from tqdm import tqdm  # optional dependency
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img" if desc != "video" else "frame",
                dynamic_ncols=True, leave=False)


class DetectSizeHint:
    """Says once per run, on stderr, that a face may have been missed in a large image or frame:
    full detections run on a copy scaled to the detector's detect_size, where a face that is
    small in a large frame falls under MTCNN's smallest face."""

    def __init__(self, detector: AUDetector):
        face_detector = detector.face_detector
        self.size = None if face_detector is None else face_detector.detect_size
        self.min_face = None if face_detector is None else face_detector.min_face_size
        self.said = False

    def check(self, name: str, image: np.ndarray, faces) -> None:
        h, w = image.shape[:2]
        if self.said or faces or self.size is None or max(h, w) <= self.size:
            return
        self.said = True
        smallest = math.ceil(self.min_face * max(h, w) / self.size)
        print(f"note: no face found in {display_name(name)} ({w} x {h} pixels): face detection runs on a copy "
              f"scaled to {self.size} pixels on its longer side, which misses faces under about {smallest} "
              f"pixels here; --detect-size 0 (full size) or a larger value may help", file=sys.stderr, flush=True)


def process_images(detector: AUDetector, files: list[Path], root: Path, writer: ResultWriter,
                   out_dir: Path, draw_text: bool, annotate_images: bool = True,
                   crops_dir: Optional[Path] = None, graphs_dir: Optional[Path] = None,
                   rel_of=None, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> None:
    """Images in batches (faces of several images share one model batch); unreadable files and
    images over max_pixels (None or 0: no limit) are reported and skipped, and so is each face
    whose AU probabilities are not finite (writer.finite_faces). rel_of: path -> its name in the
    outputs (default: relative to root, a file's name when root is not a folder)."""
    show = _progress(files, total=len(files), desc="images") if len(files) > 1 else files
    it = iter(show)
    hint = DetectSizeHint(detector)
    for chunk in batched(it, max(1, detector.batch_size)):
        loaded = []
        for path in chunk:
            rel = rel_of(path) if rel_of is not None else path.relative_to(root) if root.is_dir() else Path(path.name)
            try:
                loaded.append((rel, read_bgr_image(path, max_pixels)))
            except DemoError as err:
                writer.error(str(rel), str(err))
        results = detector.predict_images([img for _, img in loaded], keep_crops=crops_dir is not None)
        for (rel, image), faces in zip(loaded, results):
            faces = writer.finite_faces(rel.as_posix(), None, faces)
            if faces is None:  # every face's probabilities were NaN/Inf: an error, not a result
                continue
            hint.check(rel.as_posix(), image, faces)
            graphs = save_graphs(graphs_dir, out_dir, rel, None, faces, detector)
            writer.add(rel.as_posix(), None, faces, graphs)
            save_crops(crops_dir, rel, None, faces)
            if annotate_images:
                drawn = annotate(image, faces, detector.au_names,
                                 detector.au_descriptions if draw_text else None, detector.threshold)
                write_image(annotated_path(out_dir, rel), drawn)  # any file name (imagefiles)
        writer.flush()


def sequential_results(detector: AUDetector, frames: Iterable[tuple[int, np.ndarray]], track: bool = True,
                       keep_crops: bool = False, times: Optional[StageTimes] = None) -> Iterator[FrameResult]:
    """FrameResults of (index, frame) pairs in one thread, batch by batch (--no-pipeline): the
    reference the pipeline (pipeline.VideoPipeline) is tested against; the same steps as
    AUDetector.predict_images, timed per stage. track: also each face's track id, as the
    pipeline gives them (tracking.FaceTrackIds on every frame)."""
    times = StageTimes() if times is None else times
    track = track and detector.tracker is not None
    track_ids = FaceTrackIds() if track else None
    if track:
        detector.tracker.reset()
    t_start = time.perf_counter()
    it = iter(frames)
    while True:
        start = clock()
        chunk = list(itertools.islice(it, max(1, detector.batch_size)))
        times.span("decode", start)
        if not chunk:
            break
        prepared, inputs = [], []
        for index, frame in chunk:
            start = clock()
            found = detector.find_faces(frame, track) if detector.face_detector is not None else [None]
            ids = track_ids.update_faces(found) if track_ids is not None else None  # also without faces
            start = times.span("detect", start)
            crops = detector.crops(frame, found)
            inputs.append(detector.model_inputs(crops))
            times.span("crop", start)
            prepared.append((index, frame, found, crops if keep_crops else None, ids))
        start = clock()
        batch = np.concatenate(inputs)
        outputs = [detector.run_model(batch[k:k + detector.batch_size], edges=True)
                   for k in range(0, max(len(batch), 1), detector.batch_size)]
        probs = np.concatenate([p for p, _ in outputs])
        edge_logits = np.concatenate([e for _, e in outputs]) if detector.has_edges else None
        times.span("model", start)
        times.batches += math.ceil(len(batch) / detector.batch_size)
        k = 0
        for index, frame, found, crops, ids in prepared:
            faces = detector.face_results(frame, found, probs[k:k + len(found)], crops,
                                          None if edge_logits is None else edge_logits[k:k + len(found)], ids)
            k += len(found)
            times.frames += 1
            times.faces += len(faces)
            start = clock()
            yield FrameResult(index, frame, faces)
            times.span("write", start)
    times.wall = time.perf_counter() - t_start


def process_video(detector: AUDetector, path: Path, writer: ResultWriter, out_dir: Path,
                  draw_text: bool, every_n: int = 1, annotate_video: bool = True,
                  crops_dir: Optional[Path] = None, graphs_dir: Optional[Path] = None, graph_every: int = 1,
                  pipelined: bool = True, max_frames: Optional[int] = None, times: Optional[StageTimes] = None,
                  progress: bool = True, model_workers: int = 1, rel: Optional[Path] = None,
                  tracks: Optional[TrackCsvWriter] = None) -> Optional[Path]:
    """Every every_n-th frame of a video (at most max_frames of them); writes annotated/{stem}.mp4
    (or .avi) unless annotate_video is False. Every frame of the annotated video has one size:
    the panel shows --max-faces face columns (default: as many faces as the first frame holds, at
    least one). graphs_dir: the AU graphs of every graph_every-th processed frame (save_graphs).

    pipelined: decoding, face detection + cropping and the model in their own threads
    (pipeline.VideoPipeline), faces of consecutive frames batched together, `model_workers`
    batches at a time; False: one thread. Each face carries its track id (the person).
    Rows are flushed to the output files after every batch of frames. times: a StageTimes that
    receives each stage's busy time. rel: the video's name in the outputs (default: its file
    name); tracks: also one CSV per person (tracking.TrackCsvWriter, flushed with the rows).
    Timestamps (OpenFace columns, track CSVs) are the decoder's (inputs.video_frames); frames that
    could not be decoded are reported as one error, and faces whose AU probabilities are not
    finite as errors (writer.finite_faces)."""
    fps, total, _ = video_info(path)
    expected = math.ceil(total / every_n) if total else None
    if max_frames is not None:
        expected = min(expected, max_frames) if expected else max_frames
    stats = VideoStats()
    frames = video_frames(path, every_n, stats)
    if max_frames is not None:
        frames = itertools.islice(frames, max_frames)
    return _run_frames(detector, frames, Path(path.name) if rel is None else rel, fps, every_n, expected, writer,
                       out_dir, draw_text, annotate_video, crops_dir, graphs_dir, graph_every, pipelined, times,
                       progress, model_workers, tracks, stats=stats, source=path)


def _run_frames(detector: AUDetector, frames, rel: Path, fps: float, every_n: int, expected: Optional[int],
                writer: ResultWriter, out_dir: Path, draw_text: bool, annotate_video: bool,
                crops_dir: Optional[Path], graphs_dir: Optional[Path], graph_every: int, pipelined: bool,
                times: Optional[StageTimes], progress: bool, model_workers: int,
                tracks: Optional[TrackCsvWriter], live: bool = False, stats: Optional[VideoStats] = None,
                source: Optional[Path] = None) -> Optional[Path]:
    """process_video's and process_camera's loop over (index, frame) pairs; live: flush and print
    a line after every frame. stats: the decoder's VideoStats of the video file `source` (its
    timestamps, else index / fps; its undecodable frames: one error at the end)."""
    keep = crops_dir is not None
    if pipelined:
        results = VideoPipeline(detector, frames, track=True, keep_crops=keep, model_workers=model_workers)
        if times is not None:
            results.times = times
    else:
        results = sequential_results(detector, frames, track=True, keep_crops=keep, times=times)
    name = rel.as_posix()
    video = AnnotatedVideo(out_dir / "annotated" / rel.with_suffix(""), max(1.0, fps / every_n)) \
        if annotate_video else None
    columns = detector.max_faces
    shown = _progress(results, total=expected, desc="video") if progress else results
    flush_every = 1 if live else max(1, detector.batch_size)
    hint = DetectSizeHint(detector)
    try:
        for n, (index, frame, faces) in enumerate(shown, 1):
            timestamp = stats.timestamps.pop(index, index / fps) if stats is not None else index / fps
            faces = writer.finite_faces(name, index, faces)
            if faces is not None:  # None: every face's probabilities were NaN/Inf (an error, not a result)
                hint.check(name, frame, faces)
                graphs = save_graphs(graphs_dir, out_dir, rel, index, faces, detector) \
                    if (n - 1) % graph_every == 0 else {}
                writer.add(name, index, faces, graphs, timestamp=timestamp)
                save_crops(crops_dir, rel, index, faces)
                if tracks is not None:
                    for face in faces:
                        tracks.add({"frame": index, "time": timestamp, "track_id": face.track_id,
                                    "probs": dict(zip(detector.au_names, face.probs))})
            faces = faces or []  # a frame whose faces all gave NaN/Inf shows none
            if n % flush_every == 0:
                writer.flush()
                if tracks is not None:
                    tracks.flush()
            if live:
                print(live_line(index, faces, detector.au_names, detector.threshold), flush=True)
            if video is None:
                continue
            if columns is None:
                columns = max(1, len(faces))
            video.write(annotate(frame, faces, detector.au_names, detector.au_descriptions if draw_text else None,
                                 detector.threshold, panel_faces=columns))
    finally:
        if hasattr(shown, "close"):
            shown.close()
        if pipelined:
            results.close()
        writer.flush()
        if tracks is not None:
            tracks.flush()
        if video is not None:
            video.release()
    if stats is not None and stats.undecodable:
        writer.error(name, f"{display_name(source or name)}: {stats.undecodable} frames could not be decoded (a "
                           f"damaged file or an unsupported codec); the {stats.decoded} decoded frames are in the "
                           f"outputs")
    return None if video is None else video.path


def live_line(index: int, faces, au_names, threshold: float) -> str:
    """One printed line per camera frame: each face's track id and its present AUs."""
    if not faces:
        return f"frame {index}: no face"
    parts = []
    for face in faces:
        active = [f"{n} {p:.2f}" for n, p in zip(au_names, face.probs) if p >= threshold]
        who = f"person {face.track_id}" if face.track_id is not None else f"face {face.index}"
        parts.append(f"{who}: " + (", ".join(active) if active else "no AU"))
    return f"frame {index}: " + "; ".join(parts)


def process_camera(detector: AUDetector, camera: int, writer: ResultWriter, out_dir: Path, draw_text: bool,
                   every_n: int = 1, annotate_video: bool = True, pipelined: bool = True, model_workers: int = 1,
                   per_track: bool = False, fps: float = 30.0) -> Optional[Path]:
    """A live camera (cv2.VideoCapture(camera)) until it stops or Ctrl-C: rows flushed and a line
    printed (live_line) after every frame, so an interrupted run leaves complete files. The rows
    are named camera{camera}; timestamps are frame index / fps. per_track: tracks/person_{id}.csv
    and their figures (also after Ctrl-C). Frames go to the model one at a time (no waiting for
    a batch: each row is out as soon as its frame is done)."""
    tracks = TrackCsvWriter(out_dir, detector.au_names) if per_track else None
    batch_size, detector.batch_size = detector.batch_size, 1
    try:
        return _run_frames(detector, camera_frames(camera, every_n), Path(f"camera{camera}"), fps, every_n, None,
                           writer, out_dir, draw_text, annotate_video, None, None, 1, pipelined, None, False,
                           model_workers, tracks, live=True)
    finally:
        detector.batch_size = batch_size
        if tracks is not None:
            write_track_figures(tracks.close(), f"camera {camera}", detector.threshold)


def tracks_folder(out_dir: Path, rel: Path, single: bool) -> Path:
    """Where a video's person CSVs go: tracks/ for a run on one video, tracks/{rel}/ for each
    video of a folder (every video numbers its people from 0)."""
    return out_dir / TRACKS_DIR if single else out_dir / TRACKS_DIR / rel


def write_track_figures(paths: dict, name: str, threshold: float) -> list:
    """A figure of each person's AU probabilities over time next to its CSV (person_{id}.png)."""
    return [plot_track_csv(path, title=f"{name}: person {track_id}", threshold=threshold)["png"]
            for track_id, path in paths.items()]


def process_inputs(detector: AUDetector, inputs: InputSet, writer: ResultWriter, out_dir: Path, draw_text: bool,
                   every_n: int = 1, annotate: bool = True, crops_dir: Optional[Path] = None,
                   graphs_dir: Optional[Path] = None, graph_every: int = 1, pipelined: bool = True,
                   model_workers: int = 1, per_track: bool = False,
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> list:
    """The images and videos of `inputs` in their order: runs of consecutive images share model
    batches (process_images), each video goes through process_video; a file that cannot be read
    is recorded (writer.error: its one line) and the run goes on. per_track: one CSV and one
    figure per person of each video (tracks_folder); max_pixels: process_images' pixel limit.
    Returns the annotated videos written."""
    videos, pending = [], []

    def flush_images():
        if pending:
            process_images(detector, pending, inputs.root, writer, out_dir, draw_text, annotate, crops_dir,
                           graphs_dir, rel_of=inputs.rel, max_pixels=max_pixels)
            pending.clear()

    for path in inputs.files:
        if not is_video(path):
            pending.append(path)
            continue
        flush_images()
        rel = inputs.rel(path)
        tracks = TrackCsvWriter(out_dir, detector.au_names, tracks_folder(out_dir, rel, inputs.kind == "video")) \
            if per_track else None
        try:
            written = process_video(detector, path, writer, out_dir, draw_text, every_n, annotate, crops_dir,
                                    graphs_dir, graph_every, pipelined=pipelined, model_workers=model_workers,
                                    rel=rel, progress=inputs.kind == "video", tracks=tracks)
            if written is not None:
                videos.append(written)
        except DemoError as err:
            writer.error(rel.as_posix(), str(err))
        finally:
            if tracks is not None:
                write_track_figures(tracks.close(), rel.as_posix(), detector.threshold)
    flush_images()
    return videos
