"""Facial action unit detection on images, folders and videos with a ME-GraphAU / OpenGraphAU
checkpoint (Luo et al., IJCAI-ECAI 2022).

The command line over megraphau.inference, which does the work: AUDetector (the Python API),
inputs, runner, writers and benchmark (--benchmark). The checkpoint decides the model and the AU
set (a released file's AU count picks them: 12 -> BP4D, 8 -> DISFA, 41 -> OpenGraphAU; or
--dataset CONFIG); a .onnx export runs on ONNX Runtime. Faces are cropped exactly like the
training crops; videos go through a threaded pipeline.

Outputs in --output: predictions.csv, predictions.jsonl, predictions.json, annotated/ images or
video, graphs/ with --graph (megraphau/inference/writers.py describes them). Rows are flushed
after every batch, so an interrupted or killed run keeps the rows so far. The output folder is
locked while the demo runs, and an earlier demo's results there are kept unless --overwrite.

Exit codes: 0; 1 when no input could be read; 2 for a user error (one line: a flag, a file, a
checkpoint); 130 on Ctrl-C (what was processed so far is written). A bug shows its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from megraphau import provenance
from megraphau.errors import OutputWriteError, run_cli
from megraphau.inference.benchmark import engine_label, run_benchmark
from megraphau.inference.detector import AUDetector
from megraphau.inference.imagefiles import display_name
from megraphau.inference.inputs import DemoError, is_video, resolve_inputs
from megraphau.inference.manifest import MANIFEST
from megraphau.inference.options import (  # noqa: F401  (get_args_parser: demo's parser, for tools and tests)
    detector_options,
    get_args_parser,
    make_detector,
    parse_args,
)
from megraphau.inference.runner import default_threads, process_camera, process_inputs
from megraphau.inference.scale import run_scale
from megraphau.inference.writers import ResultWriter, claim_output
from megraphau.model.facts import OPENGRAPHAU_NUM_MAIN as OPENGRAPHAU_MAIN_AUS

log = logging.getLogger("demo")



def main(args: argparse.Namespace) -> int:
    """Run the demo as `args` (from parse_args) say, through the project's front door
    (errors.run_cli): returns the exit code 0, 1 (nothing could be read; or a bug: its traceback),
    2 (a user error: one line), 130 (Ctrl-C: what was processed so far is written)."""
    def interrupted() -> str:
        written = Path(args.output) / "predictions.csv"
        return "interrupted: " + (f"the predictions so far are in {written}" if written.is_file()
                                  else "nothing was written")

    return run_cli(run, args, interrupted=interrupted)


def run(args: argparse.Namespace) -> int:
    """The demo itself (main's body); user errors propagate as exceptions."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads_given = args.threads is not None
    if args.threads is None:
        args.threads = default_threads()
    torch.set_num_threads(args.threads)
    inputs = resolve_inputs(args.input, exclude=Path(args.output))
    kind, files = inputs.kind, inputs.files
    args.kind = kind
    if kind == "camera" and (args.benchmark or args.engine != "single"):
        raise DemoError(f"--input {args.input} is a camera: --benchmark and --engine {args.engine} read files")
    detector = make_detector(args)
    log.info("model: %s stage %d (%s), %d AUs, %s %s: %s", detector.arc, detector.stage, detector.variant,
             len(detector.au_names), engine_label(detector), detector.precision, " ".join(detector.au_names))
    if args.benchmark:
        kind, files = benchmark_input(kind, files)
        return run_benchmark(args, detector, kind, files, lambda path, prec=None: make_detector(args, path, prec))

    out_dir = Path(args.output)
    summary = {"checkpoint": args.resume, "engine": detector.backend, "arc": detector.arc, "stage": detector.stage,
               "variant": detector.variant, "crop_preset": detector.crop_preset, "crop_size": detector.crop_size,
               "input": display_name(args.input),
               "precision": detector.precision,
               "provenance": provenance.collect(device=detector.device,
                                                files={"checkpoint": args.resume} if args.resume else {},
                                                precision=detector.precision_record)}
    crops_dir = Path(args.save_crops) if args.save_crops else None
    graphs_dir = out_dir / "graphs" if args.graph else None
    if args.graph and not detector.has_edges:
        opengraphau = detector.variant == "opengraphau"
        log.info("--graph: %s predicts no AU relations (no edge logits): the graphs show %s as nodes only",
                 "this OpenGraphAU model" if opengraphau else "this stage-1 model",
                 f"its {OPENGRAPHAU_MAIN_AUS} main AUs" if opengraphau else "the AU probabilities")
    # in use by another demo, an earlier demo's results (kept unless --overwrite): RunFolderError. A rerun of
    # --engine ray/local into a folder with its manifest resumes it (scale.py checks that the settings agree)
    resume = args.engine != "single" and (out_dir / MANIFEST).is_file()
    lock = claim_output(out_dir, args.overwrite, inputs=(args.resume, args.input), resume=resume)
    if args.engine != "single":
        try:
            return run_many(args, detector, inputs, summary, threads_given)
        finally:
            lock.release()
    try:
        writer = ResultWriter(out_dir, detector, summary, openface=args.openface_columns)
    except OSError as err:
        lock.release()
        raise OutputWriteError(f"cannot write to {out_dir}: {err}") from None
    video_path, completed = None, False
    try:
        if kind == "camera":
            try:
                video_path = process_camera(detector, inputs.camera, writer, out_dir, args.draw_text, args.every_n,
                                            not args.no_annotate, pipelined=not args.no_pipeline,
                                            model_workers=args.model_workers, per_track=args.per_track)
            except DemoError as err:
                writer.error(f"camera{inputs.camera}", str(err))
        else:  # images, videos, or a folder / glob / list of both, in order
            videos = process_inputs(detector, inputs, writer, out_dir, args.draw_text, args.every_n,
                                    not args.no_annotate, crops_dir, graphs_dir, args.graph_every,
                                    pipelined=not args.no_pipeline, model_workers=args.model_workers,
                                    per_track=args.per_track, max_pixels=args.max_pixels)
            video_path = videos[0] if kind == "video" and videos else None
        completed = True
    finally:
        writer.close(complete=completed)  # also on Ctrl-C: every row so far, "complete": false
        lock.release()
    s = writer.json["summary"]
    what = "frames" if kind in ("video", "camera") else "images and frames" if any(map(is_video, files)) \
        else "images"
    print(f"processed {s['items']} {what}: {s['faces']} faces, {s['no_face']} without a face, "
          f"{s['errors']} errors -> {out_dir / 'predictions.csv'}"
          + (f", {video_path}" if video_path else ""))
    if s["errors"] and not s["items"]:
        return 1  # nothing could be read
    return 0


def benchmark_input(kind: str, files: list) -> tuple[str, list]:
    """--benchmark on a folder: its images, else its first video."""
    if kind != "folder":
        return kind, files
    images = [f for f in files if not is_video(f)]
    return ("folder", images) if images else ("video", files[:1])


def run_many(args: argparse.Namespace, detector: AUDetector, inputs, summary: dict, threads_given: bool) -> int:
    """--engine ray / local (megraphau/inference/scale.py): per-input parts, manifest, merge."""
    result = run_scale(inputs, args.output, detector_options(args), engine=args.engine, workers=args.workers,
                       gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address,
                       threads=args.threads if threads_given else None, summary=summary, every_n=args.every_n,
                       annotate=not args.no_annotate, draw_text=args.draw_text, crops_dir=args.save_crops,
                       graph=args.graph, graph_every=args.graph_every, openface=args.openface_columns,
                       per_track=args.per_track, pipelined=not args.no_pipeline,
                       model_workers=args.model_workers, detector=detector, max_pixels=args.max_pixels)
    print(f"processed {result['finished']} of {result['inputs']} inputs ({result['items']} images and frames): "
          f"{result['faces']} faces, {result['no_face']} without a face, {result['errors']} errors -> "
          f"{Path(args.output) / 'predictions.csv'}")
    return 1 if result["errors"] and not result["items"] else 0


def cli(argv=None) -> int:
    """demo.py's command line: parse_args (a bad flag: one line, exit 2), then main."""
    return main(parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
