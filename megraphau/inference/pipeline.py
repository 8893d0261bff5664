"""Pipelined AU detection on video frames: decoding, face detection/tracking + cropping and the AU
model run at the same time in their own threads, connected by bounded queues, and the results
come back in frame order to the caller (who writes them):

    decode thread --frames--> faces thread --crops--> batch thread --batches--> caller
    (OpenCV)                  (MTCNN tracker,         (faces of consecutive     (CSV, JSON,
                               crop, normalise)        frames -> model worker)   annotation)

    with VideoPipeline(detector, video_frames("clip.mp4")) as results:
        for index, frame, faces in results:       # faces: [inference.FaceResult], largest first
            ...
    results.times.per_frame_ms()                  # busy milliseconds per frame of each stage

Threads are enough: OpenCV's decoder, MTCNN's and the model's torch kernels and ONNX Runtime
release the GIL while they compute, so on a 2-core machine face detection and the model overlap.
The queues hold a few frames each, so memory does not grow with the video's length. Each stage
runs in one thread in order (model batches may run in several workers, model_workers, and are
collected in order), so results keep the frames' order; a frame without a face gives an empty
face list. Faces of consecutive frames share model batches (up to detector.batch_size faces).

The same frames through AUDetector.predict_images(track=True) or runner.sequential_results (one
thread) give the same faces and probabilities: all use AUDetector's find_faces, crops,
model_inputs, run_model and face_results; only the batch boundaries differ.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np

from megraphau.inference.tracking import FaceTrackIds

__all__ = ["FrameResult", "StageTimes", "VideoPipeline", "STAGES", "clock"]

#: The stages timed, in pipeline order ("write" is the caller's time between results).
STAGES = ("decode", "detect", "crop", "model", "write")

_END = object()


class _Failure:
    """An exception raised in a worker thread, passed down the queues to the caller."""

    def __init__(self, error: BaseException):
        self.error = error


class FrameResult(NamedTuple):
    index: int
    frame: np.ndarray
    faces: list  # [inference.FaceResult]


def clock() -> tuple[float, float]:
    """(wall clock, this thread's CPU time) in seconds: the start of a span for StageTimes.span."""
    return time.perf_counter(), time.thread_time()


@dataclass
class StageTimes:
    """Busy seconds of each stage (waiting on a queue excluded): wall clock (`seconds`) and the
    CPU time of the thread running it (`cpu_seconds`; the model's is only its calling thread:
    ONNX Runtime's and torch's pool threads are not in it); and what went through."""
    seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    cpu_seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    frames: int = 0
    faces: int = 0
    batches: int = 0
    wall: float = 0.0
    cpu: float = 0.0  #: CPU seconds of the whole process (all threads) over the run, when measured

    def add(self, stage: str, seconds: float, cpu_seconds: float = 0.0) -> None:
        self.seconds[stage] += seconds
        self.cpu_seconds[stage] += cpu_seconds

    def span(self, stage: str, start: tuple[float, float]) -> tuple[float, float]:
        """Add the time since `start` (clock()) to `stage`; returns clock() now (the next start)."""
        now = clock()
        self.add(stage, now[0] - start[0], now[1] - start[1])
        return now

    def per_frame_ms(self) -> dict:
        n = max(self.frames, 1)
        return {s: 1000.0 * v / n for s, v in self.seconds.items()}

    def cpu_per_frame_ms(self) -> dict:
        """CPU ms per frame of each stage; the model's is the process's CPU time less the other
        stages' (so it includes the model's pool threads), when the process's was measured."""
        n = max(self.frames, 1)
        out = {s: 1000.0 * v / n for s, v in self.cpu_seconds.items()}
        if self.cpu:
            others = sum(v for s, v in self.cpu_seconds.items() if s != "model")
            out["model"] = 1000.0 * max(self.cpu - others, 0.0) / n
        return out

    def as_dict(self) -> dict:
        return {"frames": self.frames, "faces": self.faces, "batches": self.batches, "wall_s": self.wall,
                "frames_per_s": self.frames / self.wall if self.wall > 0 else None,
                "ms_per_frame": self.per_frame_ms(), "cpu_ms_per_stage": self.cpu_per_frame_ms(),
                "cpu_ms_per_frame": 1000.0 * self.cpu / self.frames if self.frames and self.cpu else None,
                "model_ms_per_face": 1000.0 * self.seconds["model"] / self.faces if self.faces else None}


def _init_torch_threads(n: Optional[int]) -> None:
    """This thread's torch intra-op threads. torch reads its global setting lazily, at a thread's
    first parallel operation, and a later set_num_threads anywhere changes that global: asking
    for the count first fixes this thread's own setting before it is changed."""
    if n is None:
        return
    import torch

    torch.get_num_threads()  # the lazy per-thread initialisation, from the global setting
    torch.set_num_threads(n)


class VideoPipeline:
    """Results of `frames` ((index, BGR frame) pairs, e.g. inputs.video_frames) through `detector`
    (inference.AUDetector), as FrameResult(index, frame, faces) in the frames' order.

    track: consecutive frames of one video (the face tracker; detector.tracker is reset first),
        and each face gets a track id that follows the person (tracking.FaceTrackIds, run on
        every frame right after detection: FaceResult.track_id); False: a full detection on
        every frame, no track ids.
    keep_crops: each FaceResult carries its 256x256 crop (demo --save-crops).
    queue_frames: frames the queue between face detection and the model holds (default: the
        model batch, at least 4); the decoder runs at most 4 frames ahead.
    model_workers: threads running model batches at the same time (each with detector.threads
        intra-op threads; results still come back in order).
    Iterate once; close() (or leaving the with block, or an exception in the caller) stops the
    threads. An exception in a stage is raised in the caller, after the results before it.
    """

    def __init__(self, detector, frames: Iterable, track: bool = True, keep_crops: bool = False,
                 queue_frames: Optional[int] = None, model_workers: int = 1):
        self.detector = detector
        self.model_workers = max(1, int(model_workers))
        self.frames = frames
        self.track = bool(track and detector.tracker is not None)
        self.track_ids = FaceTrackIds() if self.track else None
        self.keep_crops = keep_crops
        size = max(4, detector.batch_size) if queue_frames is None else max(1, int(queue_frames))
        self._decoded: queue.Queue = queue.Queue(maxsize=4 if queue_frames is None else size)
        self._cropped: queue.Queue = queue.Queue(maxsize=size)
        # batches on their way through the model workers (each holds up to a batch of frames)
        self._results: queue.Queue = queue.Queue(maxsize=self.model_workers + 1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._executor: Optional[ThreadPoolExecutor] = None
        self._started = False
        self._last: Optional[int] = None
        self.times = StageTimes()

    # -- plumbing
    def _put(self, q: queue.Queue, item) -> bool:
        """Put unless the pipeline is stopping (then False)."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return _END

    def _stage(self, target, *queues):
        def run():
            try:
                target(*queues)
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                self._put(queues[-1], _Failure(err))

        thread = threading.Thread(target=run, name=f"au-{target.__name__.strip('_')}", daemon=True)
        self._threads.append(thread)
        return thread

    # -- stages
    def _decode(self, out: queue.Queue) -> None:
        it = iter(self.frames)
        while not self._stop.is_set():
            start = clock()
            try:
                item = next(it)
            except StopIteration:
                break
            finally:
                self.times.span("decode", start)
            if not self._put(out, item):
                return
        self._put(out, _END)

    def _faces(self, inp: queue.Queue, out: queue.Queue) -> None:
        det = self.detector
        _init_torch_threads(det.face_detector.threads if det.face_detector is not None else None)
        if self.track:
            det.tracker.reset()
        while True:
            item = self._get(inp)
            if item is _END or isinstance(item, _Failure):
                self._put(out, item)
                return
            index, frame = item
            start = clock()
            found = det.find_faces(frame, self.track) if det.face_detector is not None else [None]
            # every frame, also one without faces (a missed frame for every track)
            ids = self.track_ids.update_faces(found) if self.track_ids is not None else None
            start = self.times.span("detect", start)
            crops = det.crops(frame, found)
            inputs = det.model_inputs(crops)
            self.times.span("crop", start)
            if not self._put(out, (index, frame, found, inputs, crops if self.keep_crops else None, ids)):
                return

    def _run_model(self, inputs: np.ndarray) -> np.ndarray:
        start = clock()
        probs = self.detector.run_model(inputs, edges=True)  # (probs, edge logits or None)
        with self._lock:
            self.times.span("model", start)
        return probs

    def _batches(self, inp: queue.Queue, out: queue.Queue) -> None:
        """Collects frames until their faces fill a model batch, hands the batch to a model worker
        and passes (frames, future probabilities) on, in order."""
        det = self.detector
        pending, faces = [], 0
        while True:
            item = self._get(inp)
            done = item is _END or isinstance(item, _Failure)
            if not done:
                pending.append(item)
                faces += len(item[2])
            # a batch of faces, or as many frames (face-less frames must not pile up)
            if pending and (done or faces >= det.batch_size or len(pending) >= det.batch_size):
                inputs = [p[3] for p in pending if len(p[3])]
                future = self._executor.submit(self._run_model, np.concatenate(inputs)) if inputs else None
                self.times.batches += 1 if inputs else 0
                if not self._put(out, (pending, future)):
                    return
                pending, faces = [], 0
            if done:
                self._put(out, item)
                return

    def _frame_results(self, pending: list, future) -> Iterator[FrameResult]:
        probs, edge_logits = future.result() if future is not None else (None, None)
        k = 0
        for index, frame, found, _, crops, ids in pending:
            if self._last is not None and index <= self._last:
                raise RuntimeError(f"frame {index} after frame {self._last}: frames out of order")
            self._last = index
            n = len(found)
            faces = self.detector.face_results(frame, found, probs[k:k + n] if n else [], crops,
                                               None if edge_logits is None or not n else edge_logits[k:k + n],
                                               ids)
            yield FrameResult(index, frame, faces)
            k += n

    # -- the caller's side
    def start(self) -> VideoPipeline:
        if self._started:
            raise RuntimeError("a VideoPipeline runs once")
        self._started = True
        threads = self.detector.threads
        if threads is None:  # the caller's setting (a worker thread would read torch's global one)
            import torch

            threads = torch.get_num_threads()
        self._executor = ThreadPoolExecutor(self.model_workers, thread_name_prefix="au-model",
                                            initializer=_init_torch_threads, initargs=(threads,))
        self._stage(self._decode, self._decoded)
        self._stage(self._faces, self._decoded, self._cropped)
        self._stage(self._batches, self._cropped, self._results)
        self._t0 = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def __iter__(self) -> Iterator[FrameResult]:
        if not self._started:
            self.start()
        try:
            while True:
                item = self._get(self._results)
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                for result in self._frame_results(*item):
                    self.times.frames += 1
                    self.times.faces += len(result.faces)
                    start = clock()
                    yield result
                    self.times.span("write", start)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the threads (after the last result, or early) and wait for them."""
        if self._started and not self.times.wall:
            self.times.wall = time.perf_counter() - self._t0
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> VideoPipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
