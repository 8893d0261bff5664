"""demo.py's command line: its flags (get_args_parser), their checks (parse_args) and the
AUDetector they describe (make_detector). demo.py runs what they ask for."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megraphau import provenance
from megraphau.conf import RANGE_CHECKS, HelpFormatter, check_ranges, one_line_errors
from megraphau.inference.detector import AUDetector
from megraphau.inference.faces import CROP_PRESETS
from megraphau.inference.imagefiles import DEFAULT_MAX_PIXELS
from megraphau.inference.precision import PRECISIONS, unsupported_reason
from megraphau.inference.runner import default_threads
from megraphau.inference.writers import OPENFACE_HELP
from megraphau.model.onnx_export import is_onnx_file
from megraphau.utils import DeviceUnavailableError, resolve_device

EXAMPLES = """examples:
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input photo.jpg
  python demo.py --arc resnet50 --stage 2 --resume checkpoints/OpenGprahAU-ResNet50_second_stage.pth \\
      --input photo.jpg --draw_text                               # the release's demo command
  python demo.py --resume checkpoints/MEFARG_resnet50_BP4D_fold1.pth --input frames/ --output results/demo
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --max-faces 1
  python demo.py --resume model.pth --input clip.mp4 --openface-columns --no-annotate
  python tool/export_onnx.py --resume model.pth --output model.onnx    # then, on ONNX Runtime:
  python demo.py --resume model.onnx --input clip.mp4
  python demo.py --resume model.pth --input clip.mp4 --benchmark       # PyTorch vs ONNX Runtime
  python demo.py --resume results/synth_stage2/bs_16_seed_0_lr_0.0003/best.pth --input face.png --graph
  python demo.py --resume model.pth --input clip.mp4 --every-n 5 --graph --graph-every 10
  python demo.py --resume model.pth --input clip.mp4 --per-track       # one CSV + figure per person
  python demo.py --resume model.onnx --input 0 --max-faces 1            # a live camera, Ctrl-C stops
  python demo.py --resume model.pth --input videos/ --engine ray --workers 4 --output results/big
"""

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=HelpFormatter)
    provenance.add_version_flag(p)
    p.add_argument("--resume", default=None, metavar="CKPT", help="checkpoint: a released .pth or this project's")
    p.add_argument("--input", required=True,
                   help="an image, a video, a folder of images and videos (recursive), a glob pattern "
                        "('clips/*.mp4', quoted), a .txt file listing inputs (one path a line) or a camera "
                        "index (0: live, Ctrl-C stops)")
    p.add_argument("--arc", default=None, help="backbone (default: the checkpoint's; a different value is an error)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="model stage (default: the checkpoint's; a different value is an error)")
    p.add_argument("--draw_text", "--draw-text", action="store_true", help="add AU descriptions to the annotations")
    p.add_argument("--output", default=None, help="output folder (default: results/EXP_NAME)")
    p.add_argument("--exp-name", default="demo", help="the release's flag: output folder results/EXP_NAME")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's results in the output folder (without it, such a folder is "
                        "refused; a folder in use by a running demo is always refused; --engine ray/local "
                        "resume a folder holding their manifest.jsonl instead)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="images whose header says more than N pixels (width x height) are reported and "
                        "skipped before decoding (0: no limit)")
    p.add_argument("--no-detect", action="store_true", help="inputs are face crops already: no detection")
    p.add_argument("--preset", default=None, choices=tuple(CROP_PRESETS),
                   help="face crop geometry (faces.CROP_PRESETS; default: the one the checkpoint was trained "
                        "for, else by AU count: 12 BP4D, 8 DISFA, 41 OpenGraphAU)")
    p.add_argument("--save-crops", default=None, metavar="DIR",
                   help="write each face's 256x256 crop, as fed to the model, to DIR as "
                        "{file}[_frame{n}]_face{k}.png")
    p.add_argument("--redetect-every", type=int, default=10, metavar="K",
                   help="videos: a full face detection every K frames, MTCNN's landmark stage alone "
                        "on the previous faces in between")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when available, else the CPU")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="faces per model batch")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at which an AU counts as present")
    p.add_argument("--dataset", default=None,
                   help="dataset config naming the AUs (BP4D, DISFA, OpenGraphAU, SYNTH or a .yaml path); "
                        "default: the AUs the checkpoint names, else those of its AU count")
    p.add_argument("--metric", default=None, choices=("dots", "cosine", "l1"),
                   help="stage-1 graph similarity (default: the checkpoint's, else dots)")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces per image (largest)")
    p.add_argument("--every-n", type=int, default=1, help="videos: process every n-th frame")
    p.add_argument("--no-annotate", action="store_true", help="write only predictions.csv/jsonl/json")
    p.add_argument("--openface-columns", action="store_true", help=OPENFACE_HELP)
    p.add_argument("--graph", action="store_true",
                   help="also draw each face's AU graph to OUTPUT/graphs/{file}[_frame{n}]_face{k}.png: nodes "
                        "coloured by AU probability, edges by the predicted P(both) of a stage-2 ME-GraphAU "
                        "model (stage 1 and OpenGraphAU: nodes only). About 0.2-0.5 s per face on a CPU core, "
                        "more than the model: for videos see --graph-every")
    p.add_argument("--graph-every", type=int, default=1, metavar="K",
                   help="videos with --graph: a graph for every K-th processed frame only (default 1: every "
                        "processed frame, i.e. every --every-n-th frame)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the AU model: torch's intra-op threads, or ONNX Runtime's "
                        f"(default: {default_threads()}, this machine's cores); MTCNN runs in one thread "
                        "beside it")
    p.add_argument("--detect-size", type=int, default=640, metavar="PX",
                   help="full face detections run on the frame scaled to at most PX pixels on its longer "
                        "side (0: full size); landmarks are always tracked at full size")
    p.add_argument("--model-workers", type=int, default=1, metavar="W",
                   help="videos: model batches run at the same time, each with --threads / W threads "
                        "(the pipeline keeps the frames' order)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="the model's arithmetic (default: the file's: fp32, or int8 for a .int8.onnx). bf16: a .pth "
                        "under bfloat16 autocast, 2.5x faster on CPUs with AMX (Xeon 4th generation and later) and "
                        "on recent GPUs, probabilities within ~2e-3 of float32, slower on CPUs without bfloat16 "
                        "units. int8: ONNX Runtime static int8; a float32 .onnx is quantised on first use and "
                        "cached beside it (model.int8.onnx; its accuracy guard is printed), a .pth is refused "
                        "(tool/export_onnx.py --precision int8)")
    p.add_argument("--bf16", action="store_true", help="deprecated: --precision bf16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the PyTorch model (compiles on the first batch: for long videos on a GPU)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="videos: decode, detect and classify in one thread, batch by batch (default: "
                        "decoding, face detection and the model overlap in their own threads)")
    # -- many inputs, people, cameras (docs/scale.md)
    g = p.add_argument_group("many inputs and people")
    g.add_argument("--per-track", action="store_true",
                   help="videos: also tracks/person_{id}.csv (one person's AU probabilities over time) and "
                        "person_{id}.png, its figure (several videos: tracks/{video}/person_{id}.*); ids follow "
                        "each face from frame to frame, a face that leaves and comes back gets a new one")
    g.add_argument("--engine", default="single", choices=("single", "ray", "local"),
                   help="single: this process; ray: Ray Data workers (pip install 'ray[data]'), each input "
                        "written to results/{input}.csv/.jsonl by its worker, merged into predictions.* at the "
                        "end, finished inputs listed in manifest.jsonl so a rerun skips them; local: ray's "
                        "per-input files, manifest and resume in this process, without Ray")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="--engine ray: worker actors (a model each)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="--engine ray: GPUs of each worker (0: CPU workers; 0.5: two workers share a GPU)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: an existing Ray cluster ('auto' after `ray start --head`; default: a "
                        "local Ray started for the run)")
    g = p.add_argument_group("benchmark")
    g.add_argument("--benchmark", action="store_true",
                   help="time the video path (decode, detect/track, crop, model, write) on the input's "
                        "first frames with PyTorch and ONNX Runtime side by side, instead of writing outputs; "
                        "a .pth is exported to a temporary .onnx (or see --benchmark-onnx)")
    g.add_argument("--benchmark-onnx", default=None, metavar="FILE",
                   help="the ONNX export of --resume to benchmark against it (skips the temporary export)")
    g.add_argument("--benchmark-engine", default="both", choices=("both", "pytorch", "onnxruntime"),
                   help="the engines to time")
    g.add_argument("--benchmark-frames", type=int, default=200, metavar="N", help="frames (or images) to time")
    g.add_argument("--benchmark-repeats", type=int, default=2, metavar="R",
                   help="passes per engine, alternating engines; the fastest is reported")
    g.add_argument("--benchmark-precisions", nargs="+", default=None, choices=PRECISIONS, metavar="P",
                   help="time each engine at each of these precisions it offers (default: --precision, an engine "
                        "without it at fp32)")
    g.add_argument("--benchmark-json", default=None, metavar="FILE", help="also write the timings to FILE")
    return p


#: demo.py's ranges, checked like the training scripts' (conf.check_ranges)
DEMO_RANGE_CHECKS = (
    *((dest, flag, lambda v: v >= 1, "at least 1") for dest, flag in (
        ("every_n", "--every-n"), ("redetect_every", "--redetect-every"), ("max_faces", "--max-faces"),
        ("batch_size", "-b/--batch-size"), ("threads", "--threads"), ("graph_every", "--graph-every"),
        ("model_workers", "--model-workers"), ("benchmark_frames", "--benchmark-frames"), ("workers", "--workers"),
        ("benchmark_repeats", "--benchmark-repeats"))),
    ("detect_size", "--detect-size", lambda v: v >= 0, "0 (full size) or more"),
    ("gpus_per_worker", "--gpus-per-worker", lambda v: v >= 0, "0 or more"),
    ("max_pixels", "--max-pixels", lambda v: v >= 0, "0 (no limit) or more"),
    *(row for row in RANGE_CHECKS if row[0] == "threshold"),
)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked: a bad value is one line and exit code 2."""
    p = one_line_errors(get_args_parser())
    args = p.parse_args(argv)
    if args.output is None:
        args.output = str(Path("results") / args.exp_name)
    check_ranges(p, args, DEMO_RANGE_CHECKS)
    if args.bf16:
        if args.precision not in (None, "bf16"):
            p.error(f"--bf16 (deprecated: --precision bf16) contradicts --precision {args.precision}")
        args.precision = "bf16"
        print("note: --bf16 is deprecated; use --precision bf16", file=sys.stderr)
    if args.engine != "ray" and (args.workers != 1 or args.gpus_per_worker or args.ray_address):
        p.error("--workers, --gpus-per-worker and --ray-address are for --engine ray")
    if args.benchmark_onnx and not Path(args.benchmark_onnx).is_file():
        p.error(f"--benchmark-onnx {args.benchmark_onnx}: file not found")
    try:
        args.device = resolve_device(args.device).type
    except DeviceUnavailableError as err:
        p.error(str(err))
    return args


def detector_options(args: argparse.Namespace, checkpoint=None, precision: str | None = None) -> dict:
    """AUDetector's keyword arguments for --resume (or `checkpoint`: the benchmark's ONNX file), at
    `precision` (default: --precision; with --benchmark, an engine without it runs fp32)."""
    path = checkpoint or args.resume
    precision = precision or args.precision
    if args.benchmark and precision and unsupported_reason(model_engine(path), precision):
        precision = "fp32"
    return dict(checkpoint=path, arc=args.arc, stage=args.stage, device=args.device,
                dataset=args.dataset, threshold=args.threshold, detect=not args.no_detect,
                max_faces=args.max_faces, batch_size=args.batch_size, metric=args.metric,
                preset=args.preset, redetect_every=args.redetect_every, threads=model_threads(args),
                detect_size=args.detect_size or None, precision=precision, compile=args.compile)


def make_detector(args: argparse.Namespace, checkpoint=None, precision: str | None = None) -> AUDetector:
    """The AUDetector of --resume (or of `checkpoint`) as the flags say."""
    return AUDetector(**detector_options(args, checkpoint, precision))


def model_engine(path) -> str:
    """The engine a model file runs on: onnxruntime for an .onnx export, else pytorch."""
    return "onnxruntime" if path and Path(path).is_file() and is_onnx_file(path) else "pytorch"


def model_threads(args: argparse.Namespace) -> int:
    """Intra-op threads of each model worker: --threads shared by the --model-workers of the video
    pipeline (images and --no-pipeline: one worker)."""
    workers = args.model_workers if getattr(args, "kind", None) in ("video", "camera") and not args.no_pipeline else 1
    return max(1, args.threads // workers)
