"""Runs AU detection over files and writes the results as they come: process_images (images in
shared model batches), process_video (a video through the threaded pipeline, or one thread) and
sequential_results, the one-thread reference the pipeline (pipeline.VideoPipeline) is tested
against. Outputs go through writers.ResultWriter; annotation is drawing.annotate."""
from __future__ import annotations

import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from megraphau.inference.detector import AUDetector
from megraphau.inference.drawing import annotate
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS, display_name, write_image
from megraphau.inference.inputs import DemoError, VideoStats, read_bgr_image, video_frames, video_info
from megraphau.inference.pipeline import FrameResult, StageTimes, VideoPipeline, clock
from megraphau.inference.writers import AnnotatedVideo, ResultWriter, annotated_path, save_crops, save_graphs

__all__ = ["batched", "default_threads", "process_images", "process_video", "sequential_results"]


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
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> None:
    """Images in batches (faces of several images share one model batch); unreadable files and
    images over max_pixels (None or 0: no limit) are reported and skipped, and so is each face
    whose AU probabilities are not finite (writer.finite_faces)."""
    show = _progress(files, total=len(files), desc="images") if len(files) > 1 else files
    it = iter(show)
    hint = DetectSizeHint(detector)
    for chunk in batched(it, max(1, detector.batch_size)):
        loaded = []
        for path in chunk:
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
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
    AUDetector.predict_images, timed per stage."""
    times = StageTimes() if times is None else times
    track = track and detector.tracker is not None
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
            start = times.span("detect", start)
            crops = detector.crops(frame, found)
            inputs.append(detector.model_inputs(crops))
            times.span("crop", start)
            prepared.append((index, frame, found, crops if keep_crops else None))
        start = clock()
        batch = np.concatenate(inputs)
        outputs = [detector.run_model(batch[k:k + detector.batch_size], edges=True)
                   for k in range(0, max(len(batch), 1), detector.batch_size)]
        probs = np.concatenate([p for p, _ in outputs])
        edge_logits = np.concatenate([e for _, e in outputs]) if detector.has_edges else None
        times.span("model", start)
        times.batches += math.ceil(len(batch) / detector.batch_size)
        k = 0
        for index, frame, found, crops in prepared:
            faces = detector.face_results(frame, found, probs[k:k + len(found)], crops,
                                          None if edge_logits is None else edge_logits[k:k + len(found)])
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
                  progress: bool = True, model_workers: int = 1) -> Optional[Path]:
    """Every every_n-th frame of a video (at most max_frames of them); writes annotated/{stem}.mp4
    (or .avi) unless annotate_video is False. Every frame of the annotated video has one size:
    the panel shows --max-faces face columns (default: as many faces as the first frame holds, at
    least one). graphs_dir: the AU graphs of every graph_every-th processed frame (save_graphs).

    pipelined: decoding, face detection + cropping and the model in their own threads
    (pipeline.VideoPipeline), faces of consecutive frames batched together, `model_workers`
    batches at a time; False: one thread.
    Rows are flushed to the output files after every batch of frames. times: a StageTimes that
    receives each stage's busy time. Timestamps (OpenFace columns) are the decoder's
    (inputs.video_frames); frames that could not be decoded are reported as one error, and faces
    whose AU probabilities are not finite as errors (writer.finite_faces)."""
    fps, total, _ = video_info(path)
    expected = math.ceil(total / every_n) if total else None
    if max_frames is not None:
        expected = min(expected, max_frames) if expected else max_frames
    stats = VideoStats()
    frames = video_frames(path, every_n, stats)
    if max_frames is not None:
        frames = itertools.islice(frames, max_frames)
    keep = crops_dir is not None
    if pipelined:
        results = VideoPipeline(detector, frames, track=True, keep_crops=keep, model_workers=model_workers)
        if times is not None:
            results.times = times
    else:
        results = sequential_results(detector, frames, track=True, keep_crops=keep, times=times)
    video = AnnotatedVideo(out_dir / "annotated" / path.stem, max(1.0, fps / every_n)) if annotate_video else None
    columns = detector.max_faces
    shown = _progress(results, total=expected, desc="video") if progress else results
    flush_every = max(1, detector.batch_size)
    hint = DetectSizeHint(detector)
    try:
        for n, (index, frame, faces) in enumerate(shown, 1):
            timestamp = stats.timestamps.pop(index, index / fps)
            faces = writer.finite_faces(path.name, index, faces)
            if faces is not None:
                hint.check(path.name, frame, faces)
                graphs = save_graphs(graphs_dir, out_dir, Path(path.name), index, faces, detector) \
                    if (n - 1) % graph_every == 0 else {}
                writer.add(path.name, index, faces, graphs, timestamp=timestamp)
                save_crops(crops_dir, Path(path.name), index, faces)
            if n % flush_every == 0:
                writer.flush()
            if video is None:
                continue
            faces = faces or []  # a frame whose faces all gave NaN/Inf shows none
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
        if video is not None:
            video.release()
    if stats.undecodable:
        writer.error(path.name, f"{display_name(path)}: {stats.undecodable} frames could not be decoded (a damaged "
                                f"file or an unsupported codec); the {stats.decoded} decoded frames are in the outputs")
    return None if video is None else video.path
