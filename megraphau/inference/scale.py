"""Many inputs (thousands of images and videos) on one machine's workers or a Ray cluster:
demo.py --engine ray, or from Python

    from megraphau.inference.scale import run_ray
    summary = run_ray("clips/", "results/big", checkpoint="model.pth", workers=4)

Each input is one task: an image, or a whole video (a long video is not split: one worker runs
it from start to end). A worker (InputWorker: the model loaded once per worker, a Ray actor in
Ray Data's map_batches) writes the input's rows itself, streamed as they are made, to
results/{input}.csv and results/{input}.jsonl in the output folder (the annotated image or
video, crops, graphs and per-person CSVs where the single-process demo puts them), then hands
back a small record, which the driver appends to manifest.jsonl (manifest.py). At the end the
driver merges the parts, in the inputs' order, into predictions.csv, predictions.jsonl and
predictions.json, reading them line by line: the same rows as the single-process demo, and the
memory of the driver and of each worker does not grow with the number or the length of the
inputs. A rerun into the same folder skips the inputs the manifest lists as finished (after a
crash, Ctrl-C or preemption); an input that fails (a corrupt file) is recorded with its one-line
error and the run goes on. Ray restarts a lost worker and retries its input (Ray Data's
max_restarts and max_task_retries of -1 for actor pools, left on). The output folder (and the
inputs) must be on a file system every worker sees.

engine "local" runs the same workers in this process without Ray (the manifest and resume
without a cluster). Ray is an optional dependency (pip install "ray[data]"), imported only here,
only when the engine is "ray".
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch

from megraphau.inference.detector import AUDetector
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS
from megraphau.inference.inputs import DemoError, InputSet, is_video, resolve_inputs
from megraphau.inference.manifest import Manifest
from megraphau.inference.runner import (
    default_threads,
    process_images,
    process_video,
    tracks_folder,
    write_track_figures,
)
from megraphau.inference.tracking import TrackCsvWriter
from megraphau.inference.writers import ResultWriter

__all__ = ["ENGINES", "PARTS_DIR", "InputWorker", "merge_parts", "part_stem", "run_ray", "run_scale"]

log = logging.getLogger("demo")

#: engines of run_scale
ENGINES = ("ray", "local")
#: the folder of the per-input parts in the output folder
PARTS_DIR = "results"

#: the job keys that change the rows (kept in the manifest: a rerun must agree)
_ROW_SETTINGS = ("every_n", "openface", "per_track", "annotate", "draw_text", "graph", "graph_every", "crops_dir")
_DETECTOR_RUNTIME = ("device", "threads", "batch_size")  # detector options that do not change the rows


def part_stem(name: str) -> str:
    """results/{input name}: the stem of an input's part files (.csv, .jsonl)."""
    return f"{PARTS_DIR}/{name}"


class InputWorker:
    """Runs inputs one by one with one AUDetector (loaded once) and writes each one's part files.

    job: the run's settings (run_scale makes it): "detector" (AUDetector keyword arguments),
    "threads", "out_dir", "every_n", "annotate", "draw_text", "crops_dir", "graph",
    "graph_every", "openface", "per_track", "pipelined", "model_workers", "max_pixels" (images over
    it are errors, not decoded).
    Called by Ray Data with a batch {"path": [...], "name": [...]}; returns their records.
    """

    def __init__(self, job: dict):
        self.job = job
        threads = job.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.detector = AUDetector(**job["detector"])
        self.out_dir = Path(job["out_dir"])
        self.who = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        records = [self.run(Path(str(p)), str(n)) for p, n in zip(batch["path"], batch["name"])]
        # columns of plain values (no None: Ray Data's blocks are typed)
        return {key: np.array([r[key] if r[key] is not None else "" for r in records]) for key in records[0]}

    def run(self, path: Path, name: str) -> dict:
        """One input: its part files written and closed; returns its manifest record."""
        job, det, out_dir = self.job, self.detector, self.out_dir
        rel, video = Path(name), is_video(path)
        start = time.perf_counter()
        writer = ResultWriter(out_dir, det, {}, openface=job["openface"], stem=part_stem(name), summary_json=False)
        writer.echo_errors = False  # the driver prints it, once
        crops_dir = Path(job["crops_dir"]) if job.get("crops_dir") else None
        graphs_dir = out_dir / "graphs" if job.get("graph") else None
        tracks = None
        try:
            if video:
                if job.get("per_track"):
                    tracks = TrackCsvWriter(out_dir, det.au_names, tracks_folder(out_dir, rel, single=False))
                process_video(det, path, writer, out_dir, job["draw_text"], job["every_n"], job["annotate"], crops_dir,
                              graphs_dir, job["graph_every"], pipelined=job["pipelined"],
                              model_workers=job["model_workers"], progress=False, rel=rel, tracks=tracks)
            else:
                process_images(det, [path], path.parent, writer, out_dir, job["draw_text"], job["annotate"],
                               crops_dir, graphs_dir, rel_of=lambda _: rel,
                               max_pixels=job.get("max_pixels", DEFAULT_MAX_PIXELS))
        except DemoError as err:
            writer.error(name, str(err))
        except Exception as err:  # noqa: BLE001 - one input's failure must not end a run of thousands
            first = (str(err).strip().splitlines() or [""])[0]
            writer.error(name, f"{path}: {type(err).__name__}: {first}")
        finally:
            writer.close()
            if tracks is not None:
                write_track_figures(tracks.close(), name, det.threshold)
        errors = writer.json["errors"]
        return {"input": name, "status": "error" if errors else "ok", "error": errors[0]["error"] if errors else None,
                "items": writer.n_items, "faces": writer.n_faces, "no_face": writer.n_no_face, "image": not video,
                "seconds": round(time.perf_counter() - start, 3), "worker": self.who}


def _plain(record: dict) -> dict:
    """A record from Ray (numpy scalars, "" for None) as the worker made it."""
    out = {k: v.item() if hasattr(v, "item") else v for k, v in record.items()}
    out["error"] = out.get("error") or None
    return out


def _local_records(job: dict, todo: list) -> Iterator[dict]:
    worker = InputWorker(job)
    for path, name in todo:
        yield worker.run(path, name)


def _ray_records(job: dict, todo: list, workers: int, gpus_per_worker: float, cpus_per_worker: float,
                 address: Optional[str]) -> Iterator[dict]:
    """Records of `todo` through Ray Data: InputWorker actors in map_batches, one input a batch."""
    try:
        import ray  # optional dependency (the "ray" extra): only this engine needs it
    except ImportError:
        raise DemoError('--engine ray needs Ray Data: pip install "ray[data]>=2.9" (or --engine local)') from None
    started = not ray.is_initialized()
    if started:
        # workers import this package as the driver does (a source tree on PYTHONPATH included)
        package_root = str(Path(__file__).resolve().parents[2])
        paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = None if address else {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, runtime_env=env)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar over the inputs
        items = [{"path": str(path), "name": name} for path, name in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        # Ray Data restarts a lost actor and retries its input (its actor pools' max_restarts and
        # max_task_retries are -1 unless set: left so)
        options = dict(batch_size=1, fn_constructor_kwargs={"job": job}, num_cpus=cpus_per_worker)
        if gpus_per_worker:
            options["num_gpus"] = gpus_per_worker
        options["compute"] = ray.data.ActorPoolStrategy(size=workers)  # Ray 2.9 to now (not "concurrency")
        for row in dataset.map_batches(InputWorker, **options).iter_rows():
            yield _plain(row)
    finally:
        if started:
            ray.shutdown()


def merge_parts(out_dir: Path, names: Iterable[str], manifest: Manifest, writer: ResultWriter) -> int:
    """The finished inputs' parts appended to `writer` (predictions.csv/.jsonl) in the order of
    `names`, their errors recorded; returns how many were finished."""
    finished = 0
    for name in names:
        record = manifest.get(name)
        if record is None:
            continue
        finished += 1
        stem = out_dir / part_stem(name)
        writer.merge_part(stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".jsonl"),
                          int(record.get("items") or 0), int(record.get("faces") or 0),
                          int(record.get("no_face") or 0), image=bool(record.get("image")))
        if record.get("status") == "error":
            writer.error(name, record.get("error") or "failed", echo=False)
    return finished


def _progress(total: int):
    try:
        from tqdm import tqdm  # optional dependency
    except ImportError:
        return None
    return tqdm(total=total, desc="inputs", unit="input", dynamic_ncols=True)


def run_scale(inputs: Union[InputSet, str, Path], out_dir: Union[str, Path], detector_options: dict, *,
              engine: str = "ray", workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
              ray_address: Optional[str] = None, threads: Optional[int] = None, summary: Optional[dict] = None,
              every_n: int = 1, annotate: bool = True, draw_text: bool = False, crops_dir: Optional[str] = None,
              graph: bool = False, graph_every: int = 1, openface: bool = False, per_track: bool = False,
              pipelined: bool = True, model_workers: int = 1, restart: bool = False,
              max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
              progress: bool = True, detector: Optional[AUDetector] = None) -> dict:
    """Every input through InputWorkers (engine "ray": `workers` Ray actors, on the cluster at
    `ray_address` or a local one; "local": one worker in this process), then predictions.* merged
    from the parts. detector_options: AUDetector's keyword arguments (its checkpoint first).
    Inputs the output folder's manifest lists as finished are skipped (restart: do them all
    again). detector: an AUDetector of these options already loaded (its AU names and settings
    head the merged files; default: one is loaded without a face detector). Returns
    predictions.json's summary plus "finished" and "inputs" counts."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {ENGINES}")
    out_dir = Path(out_dir)
    if not isinstance(inputs, InputSet):
        inputs = resolve_inputs(str(inputs), exclude=out_dir)
    if inputs.kind == "camera":
        raise DemoError(f"--engine {engine} reads files: run a camera with the default engine")
    names = [inputs.rel(p).as_posix() for p in inputs.files]
    seen: dict = {}
    for name in names:
        if name in seen:
            raise DemoError(f"{name}: listed twice (each input once; names are relative to {inputs.root})")
        seen[name] = True
    workers = max(1, int(workers))
    gpu = gpus_per_worker > 0
    if threads is None:
        threads = max(1, default_threads() // workers) if engine == "ray" and not ray_address else default_threads()
    worker_detector = {**detector_options, "device": "cuda" if gpu else detector_options.get("device", "cpu"),
                       "threads": threads}
    job = {"detector": worker_detector, "threads": threads, "out_dir": str(out_dir), "every_n": int(every_n),
           "annotate": bool(annotate), "draw_text": bool(draw_text), "crops_dir": None if crops_dir is None
           else str(crops_dir), "graph": bool(graph), "graph_every": int(graph_every), "openface": bool(openface),
           "per_track": bool(per_track), "pipelined": bool(pipelined), "model_workers": int(model_workers),
           "max_pixels": max_pixels}
    settings = {"detector": {k: str(v) if isinstance(v, Path) else v for k, v in detector_options.items()
                             if k not in _DETECTOR_RUNTIME}, **{k: job[k] for k in _ROW_SETTINGS}}
    # the driver's model: the AU names and settings of the merged files (no face detector)
    driver = detector or AUDetector(**{**detector_options, "device": "cpu", "detect": False})
    manifest = Manifest(out_dir, settings, restart=restart)
    todo = [(path, name) for path, name in zip(inputs.files, names) if manifest.get(name) is None]
    if len(todo) < len(names):
        log.info("resuming: %d of %d inputs are finished (%s), %d to do", len(names) - len(todo), len(names),
                 manifest.path, len(todo))
    summary = {**(summary or {}), "scale": {"engine": engine, "workers": workers if engine == "ray" else 1,
                                            "gpus_per_worker": gpus_per_worker, "manifest": manifest.path.name,
                                            "parts": PARTS_DIR}}
    bar = _progress(len(todo)) if progress and todo else None
    completed = False
    records = (_ray_records(job, todo, workers, gpus_per_worker, cpus_per_worker, ray_address)
               if engine == "ray" else _local_records(job, todo)) if todo else iter(())
    try:
        for record in records:
            manifest.record(record)
            if record["status"] == "error":
                message = f"error: {record['error']}"
                if bar is None:
                    print(message, file=sys.stderr, flush=True)
                else:
                    bar.write(message, file=sys.stderr)
            if bar is not None:
                bar.update(1)
        completed = True
    finally:
        if hasattr(records, "close"):
            records.close()  # a local Ray started for the run stops here (also on Ctrl-C)
        if bar is not None:
            bar.close()
        manifest.close()
        writer = ResultWriter(out_dir, driver, summary, openface=openface)
        finished = merge_parts(out_dir, names, manifest, writer)
        writer.close(complete=completed and finished == len(names))
    return {**writer.json["summary"], "finished": finished, "inputs": len(names)}


def run_ray(inputs: Union[InputSet, str, Path], output: Union[str, Path], checkpoint: Union[str, Path, None] = None,
            workers: int = 1, gpus_per_worker: float = 0.0, ray_address: Optional[str] = None,
            detector_options: Optional[dict] = None, **options) -> dict:
    """run_scale with engine "ray": `inputs` (a folder, a glob, a list file or an InputSet) with
    the model `checkpoint` (AUDetector's further options in detector_options), results in
    `output`; options: run_scale's keyword arguments."""
    detector_options = {"checkpoint": str(checkpoint) if checkpoint is not None else None, **(detector_options or {})}
    return run_scale(inputs, output, detector_options, engine="ray", workers=workers,
                     gpus_per_worker=gpus_per_worker, ray_address=ray_address, **options)
