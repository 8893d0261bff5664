"""Inference speed of ME-GraphAU models (Luo et al., IJCAI-ECAI 2022): eager PyTorch vs the same
model exported to ONNX (model/onnx_export.py) and run by ONNX Runtime on the CPU, per backbone x
stage x batch size x thread count, on synthetic inputs with random weights; plus each model's
export and verification time.

Both engines run in the same process on the same inputs, alternating iterations and flipping
their order each iteration, so that noise from other processes hits both alike. `ms/img` is the
median time of a batch divided by the batch size; `speed x` = PyTorch ms / ONNX Runtime ms
(> 1: ONNX Runtime is faster), `best x` the same from each engine's fastest iteration (use it
on a busy machine). PyTorch runs under torch.inference_mode() with torch.set_num_threads(T);
ONNX Runtime with intra_op_num_threads=T, graph optimisations on and thread spinning off (a
spinning pool would take CPU from the PyTorch iteration that follows it).

  python bench/bench_onnx.py --arcs resnet18 resnet50 --stages 1 2 --num-classes 12 \\
      --batch-sizes 1 8 --threads 1 2 --iters 5 --warmup 1 --markdown
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from megraphau.model import ARCHS, build_model  # noqa: E402
from megraphau.model.onnx_export import OnnxAUModel, export_onnx  # noqa: E402
from megraphau.tables import format_table  # noqa: E402

ENGINES = ("pytorch", "onnxruntime")


@dataclass
class Row:
    arc: str
    stage: int
    num_classes: int
    batch_size: int
    threads: int
    torch_ms_per_image: float | None = None
    ort_ms_per_image: float | None = None
    speed_ratio: float | None = None  # PyTorch / ONNX Runtime, medians
    best_speed_ratio: float | None = None  # the same from the fastest iterations
    times_ms: dict = field(default_factory=dict)


@dataclass
class ExportRow:
    arc: str
    stage: int
    num_classes: int
    export_s: float
    verify_s: float
    megabytes: float
    opset: int
    max_diff: dict


def random_model(arc: str, stage: int, num_classes: int, crop: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(stage, arc, num_classes, neighbor_num=min(4, num_classes), pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(4, 3, crop, crop))
    return model.eval()


def time_alternating(model, onnx_model, images: torch.Tensor, warmup: int, iters: int) -> dict[str, list[float]]:
    """Seconds per batch of each engine; they alternate, and their order flips every iteration."""
    array = images.numpy()
    runs = {"pytorch": lambda: model(images), "onnxruntime": lambda: onnx_model.run(array)}
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    with torch.inference_mode():
        for it in range(warmup + iters):
            for engine in (ENGINES if it % 2 == 0 else ENGINES[::-1]):
                start = time.perf_counter()
                runs[engine]()
                elapsed = time.perf_counter() - start
                if it >= warmup:
                    times[engine].append(elapsed)
    return times


def benchmark(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[ExportRow]]:
    rows, exports = [], []
    for arc in args.arcs:
        for stage in args.stages:
            for n in args.num_classes:
                model = random_model(arc, stage, n, args.crop_size)
                path = workdir / f"{arc}_stage{stage}_{n}.onnx"
                facts = {"arc": arc, "stage": stage, "num_classes": n, "variant": "megraphau"}
                report = export_onnx((model, facts), path, crop_size=args.crop_size)
                exports.append(ExportRow(arc, stage, n, report["export_s"], report["verify_s"],
                                         report["bytes"] / 1e6, report["opset"], report["max_diff"]))
                print(f"# exported {arc} stage {stage} {n} AUs in {report['export_s']:.1f} s "
                      f"(verified in {report['verify_s']:.1f} s)", file=sys.stderr, flush=True)
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    onnx_model = OnnxAUModel(path, threads=threads,
                                             session_config={"session.intra_op.allow_spinning": "0"})
                    for batch in args.batch_sizes:
                        images = torch.randn(batch, 3, args.crop_size, args.crop_size,
                                             generator=torch.Generator().manual_seed(batch))
                        times = time_alternating(model, onnx_model, images, args.warmup, args.iters)
                        row = Row(arc, stage, n, batch, threads)
                        torch_ms = statistics.median(times["pytorch"]) * 1e3
                        ort_ms = statistics.median(times["onnxruntime"]) * 1e3
                        row.torch_ms_per_image, row.ort_ms_per_image = torch_ms / batch, ort_ms / batch
                        row.speed_ratio = torch_ms / ort_ms
                        row.best_speed_ratio = min(times["pytorch"]) / min(times["onnxruntime"])
                        row.times_ms = {e: [round(t * 1e3, 2) for t in v] for e, v in times.items()}
                        rows.append(row)
                        print(f"# {' '.join(cells(row))}", file=sys.stderr, flush=True)
                    del onnx_model
                path.unlink()
    return rows, exports


HEADER = ["arc", "stage", "AUs", "batch", "threads", "PyTorch ms/img", "ORT ms/img", "speed x", "best x"]
EXPORT_HEADER = ["arc", "stage", "AUs", "export s", "verify s", "MB", "opset", "max diff"]


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def cells(row: Row) -> list[str]:
    return [row.arc, str(row.stage), str(row.num_classes), str(row.batch_size), str(row.threads),
            _fmt(row.torch_ms_per_image, ".1f"), _fmt(row.ort_ms_per_image, ".1f"),
            _fmt(row.speed_ratio, ".2f"), _fmt(row.best_speed_ratio, ".2f")]


def export_cells(row: ExportRow) -> list[str]:
    diff = ", ".join(f"{k} {v:.1e}" for k, v in row.max_diff.items())
    return [row.arc, str(row.stage), str(row.num_classes), f"{row.export_s:.1f}", f"{row.verify_s:.1f}",
            f"{row.megabytes:.1f}", str(row.opset), diff]


def environment() -> dict:
    import onnxruntime
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "load_average": load}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arcs", nargs="+", default=["resnet18", "resnet50"], choices=list(ARCHS))
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--num-classes", nargs="+", type=int, default=[12])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per engine")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per engine")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--json", type=Path, help="also write rows and environment to this JSON file")
    args = parser.parse_args(argv)
    for name in ("iters",):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if any(b < 1 for b in args.batch_sizes) or any(t < 1 for t in args.threads):
        parser.error("--batch-sizes and --threads values must be at least 1")
    if any(n < 2 for n in args.num_classes):
        parser.error("--num-classes values must be at least 2")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    before = environment()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        rows, exports = benchmark(args, Path(tmp))
    after = environment()
    print(f"CPU, torch {before['torch']}, onnxruntime {before['onnxruntime']}, {before['cpus']} CPUs, load "
          f"average {before['load_average'][0]:.1f} before / {after['load_average'][0]:.1f} after; "
          f"crop {args.crop_size}; median of {args.iters} iterations after {args.warmup} warm-up; "
          f"speed x = PyTorch ms / ONNX Runtime ms (medians; best x: fastest iterations)")
    print(format_table(HEADER, [cells(r) for r in rows], args.markdown))
    print()
    print("export (torch.onnx dynamo exporter, then ONNX Runtime vs PyTorch at batch 1 and 5):")
    print(format_table(EXPORT_HEADER, [export_cells(r) for r in exports], args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": {"before": before, "after": after},
                                         "arguments": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items()},
                                         "rows": [asdict(r) for r in rows],
                                         "exports": [asdict(r) for r in exports]}, indent=2))


if __name__ == "__main__":
    main()
