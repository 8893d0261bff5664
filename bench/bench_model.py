"""Throughput and peak memory of ME-GraphAU models (Luo et al., IJCAI-ECAI 2022): an eval pass and a
full training step (forward, weighted asymmetric loss + edge cross-entropy for stage 2, backward,
AdamW step) per backbone x stage x AU count, on synthetic inputs with random weights.

For stage 2 the production GEM (model/mefl.py) and the straightforward reference form
(bench/reference_mefl.py) run in the same process on the same weights, alternating iterations
so that noise from other processes hits both alike; the table gives their speed and memory
ratios (reference / fast: > 1 means the fast form is faster or smaller).

Forms: `fast` is the production model; `fast+gcK` the same with gradient checkpointing of the
backbone's first K stages (--grad-checkpointing K of the training scripts: memory for time;
eval passes do not recompute, so only train rows differ); `reference` the straightforward GEM.

Peak memory: on CPU the peak RSS (VmHWM; ru_maxrss off Linux) of a fresh child process per configuration and
form that builds the model and runs the same steps (the whole process: interpreter, torch,
weights, optimizer, activations); on CUDA torch.cuda.max_memory_allocated around one step.

  python bench/bench_model.py --device cpu --threads 2 --batch-size 8 --arcs resnet50 \\
      --stages 1 2 --num-classes 12 27 --mode eval train --markdown
  python bench/bench_model.py --device cpu --threads 2 --batch-size 8 --arcs resnet50 \\
      --stages 2 --num-classes 12 --mode train --grad-checkpointing 0 2
  python bench/bench_model.py --device cuda --amp bf16 --channels-last --batch-size 64 \\
      --arcs resnet50 swin_transformer_base --stages 1 2 --num-classes 12 27 --mode eval train
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megraphau.model import ARCHS, build_model  # noqa: E402
from megraphau.model.mefl_reference import reference_stage2_model  # noqa: E402
from megraphau.provenance import collect  # noqa: E402
from megraphau.tables import format_table, script_argv  # noqa: E402

EDGE_LOSS_WEIGHT = 0.05  # lam of the published BP4D command; the value does not change the cost
REFERENCE = "reference"


def variant_name(grad_checkpointing: int) -> str:
    """The production form, with gradient checkpointing of the first K backbone stages if K > 0."""
    return "fast" if grad_checkpointing == 0 else f"fast+gc{grad_checkpointing}"


def grad_checkpointing_of(variant: str) -> int:
    return int(variant.split("+gc", 1)[1]) if "+gc" in variant else 0


@dataclass
class Config:
    arc: str
    stage: int
    num_classes: int
    mode: str  # eval | train
    variant: str  # fast | fast+gcK | reference
    batch_size: int
    device: str
    amp: str  # none | bf16
    channels_last: bool
    threads: int


@dataclass
class Row:
    arc: str
    stage: int
    num_classes: int
    mode: str
    variant: str
    images_per_s: float | None = None
    median_ms: float | None = None
    peak_mb: float | None = None
    memory_kind: str = ""
    speed_ratio: float | None = None  # reference time / fast time (fast rows of stage 2), medians
    best_speed_ratio: float | None = None  # the same from the fastest iteration of each form
    memory_ratio: float | None = None  # fast peak / reference peak (fast rows of stage 2)
    error: str = ""
    times_ms: list = field(default_factory=list)


def weighted_asymmetric_loss(probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The paper's weighted asymmetric loss: -mean w_i [y log p + (1 - y) p_detached log(1 - p)]."""
    probs = probs.float()
    positive = labels * torch.log(probs.clamp_min(1e-8))
    negative = (1 - labels) * probs.detach() * torch.log((1 - probs).clamp_min(1e-8))
    return -((positive + negative) * weights).mean()


class Workload:
    """One model (and, for stage 2, its reference twin sharing every tensor) with synthetic data
    and one AdamW optimizer; `step(variant, mode)` runs one eval pass or one training step."""

    def __init__(self, arc: str, stage: int, num_classes: int, batch_size: int, device: torch.device,
                 amp: str, channels_last: bool, variants: list[str]):
        self.device = device
        self.stage = stage
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # K = 4 as for BP4D and OpenGraphAU (at most N for tiny test graphs)
        model = build_model(stage, arc, num_classes, neighbor_num=min(4, num_classes), pretrained=False)
        model = model.to(device, memory_format=memory_format)
        # the fast forms are one model; step() sets its checkpointing per form
        self.models = {variant: model for variant in variants if variant != REFERENCE}
        if REFERENCE in variants:
            self.models[REFERENCE] = reference_stage2_model(model, share_weights=True)
        # one optimizer for both forms: they share the parameters, so its state is counted once
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch_size, 3, 224, 224, generator=gen).to(
            device, memory_format=memory_format)
        labels = (torch.rand(batch_size, num_classes, generator=gen) < 0.3).float()
        self.labels = labels.to(device)
        # relation label of ordered pair (i, j), p = i*N + j: 2*a_i + a_j
        self.relations = (2 * labels.unsqueeze(2) + labels.unsqueeze(1)).long().view(batch_size, -1).to(device)
        self.class_weights = torch.ones(num_classes, device=device)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" \
            else contextlib.nullcontext

    def step(self, variant: str, mode: str) -> None:
        model = self.models[variant]
        model.set_grad_checkpointing(grad_checkpointing_of(variant))  # shared backbone: set every step
        if mode == "eval":
            model.eval()
            with torch.inference_mode(), self.autocast():
                model(self.images)
        else:
            model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                output = model(self.images)
            if self.stage == 2:
                probs, edge_logits = output
                loss = weighted_asymmetric_loss(probs, self.labels, self.class_weights) + EDGE_LOSS_WEIGHT * \
                    F.cross_entropy(edge_logits.float().reshape(-1, 4), self.relations.reshape(-1))
            else:
                loss = weighted_asymmetric_loss(output, self.labels, self.class_weights)
            loss.backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def time_alternating(work: Workload, mode: str, variants: list[str], warmup: int, iters: int,
                     failed: dict[str, str]) -> dict[str, list[float]]:
    """Seconds per step of each variant; variants alternate every iteration, and their order
    flips every iteration, so slow phases of a shared machine fall on both alike."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for it in range(warmup + iters):
        order = variants if it % 2 == 0 else variants[::-1]
        for variant in order:
            if variant in failed:
                continue
            try:
                start = time.perf_counter()
                work.step(variant, mode)
                elapsed = time.perf_counter() - start
            except RuntimeError as error:  # e.g. the reference's OOM on a GPU (a RuntimeError)
                if not is_out_of_memory(error):
                    raise
                failed[variant] = "out of memory"
                work.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                if work.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if it >= warmup:
                times[variant].append(elapsed)
    return times


def cuda_peak_mb(work: Workload, variant: str, mode: str) -> float:
    """torch.cuda.max_memory_allocated over one step (weights, grads and optimizer state included)."""
    work.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(work.device)
    work.step(variant, mode)
    return torch.cuda.max_memory_allocated(work.device) / 2**20


def child_peak_rss_mb(config: Config, steps: int) -> tuple[float | None, str]:
    """Peak RSS of a fresh Python process that builds the model and runs `steps` steps."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(config)),
               "--iters", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return None, f"memory child failed: {tail}"
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"], ""


def run_child(config: Config, steps: int) -> None:
    """Entry of the memory child: one configuration and form, then print its peak RSS (JSON)."""
    torch.set_num_threads(config.threads)
    work = Workload(config.arc, config.stage, config.num_classes, config.batch_size,
                    torch.device(config.device), config.amp, config.channels_last, [config.variant])
    for _ in range(steps):
        work.step(config.variant, config.mode)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space.
    Not ru_maxrss there: Linux carries the parent's peak over fork and exec into the child's
    ru_maxrss, so every child of a big benchmark process would report at least the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    # elsewhere ru_maxrss: KiB on Linux, bytes on macOS
    scale = 1 / 2**20 if platform.system() == "Darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def benchmark(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    rows: list[Row] = []
    for arc in args.arcs:
        for stage in args.stages:
            for num_classes in args.num_classes:
                variants = [variant_name(k) for k in args.grad_checkpointing]
                if stage == 2 and not args.no_reference:
                    variants.append(REFERENCE)
                work = Workload(arc, stage, num_classes, args.batch_size, device, args.amp,
                                args.channels_last, variants)
                for mode in args.mode:
                    # evaluation never recomputes: the checkpointed forms would repeat the fast row
                    forms = [v for v in variants if mode == "train" or grad_checkpointing_of(v) == 0]
                    failed: dict[str, str] = {}
                    times = time_alternating(work, mode, forms, args.warmup, args.iters, failed)
                    group = []
                    for variant in forms:
                        row = Row(arc, stage, num_classes, mode, variant, error=failed.get(variant, ""))
                        if times[variant]:
                            median = statistics.median(times[variant])
                            row.median_ms = median * 1e3
                            row.images_per_s = args.batch_size / median
                            row.times_ms = [round(t * 1e3, 2) for t in times[variant]]
                        if not args.no_memory and not row.error:
                            if device.type == "cuda":
                                try:
                                    row.peak_mb = cuda_peak_mb(work, variant, mode)
                                    row.memory_kind = "cuda max allocated"
                                except RuntimeError as error:
                                    if not is_out_of_memory(error):
                                        raise
                                    row.error = "out of memory"
                            else:
                                config = Config(arc, stage, num_classes, mode, variant, args.batch_size,
                                                args.device, args.amp, args.channels_last, args.threads)
                                row.peak_mb, row.error = child_peak_rss_mb(config, args.memory_steps)
                                row.memory_kind = "peak RSS of a fresh process"
                        group.append(row)
                    ref = next((row for row in group if row.variant == REFERENCE), None)
                    for fast in (row for row in group if ref is not None and row is not ref):
                        if fast.median_ms and ref.median_ms:
                            fast.speed_ratio = ref.median_ms / fast.median_ms
                            fast.best_speed_ratio = min(ref.times_ms) / min(fast.times_ms)
                        if fast.peak_mb and ref.peak_mb:
                            fast.memory_ratio = fast.peak_mb / ref.peak_mb
                    rows.extend(group)
                    for row in group:
                        print(f"# {format_row(row)}", file=sys.stderr, flush=True)  # progress
                del work
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


HEADER = ["arc", "stage", "AUs", "mode", "form", "img/s", "ms/step", "peak MB", "speed x", "best x", "memory x",
          "note"]


def cells(row: Row) -> list[str]:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    return [row.arc, str(row.stage), str(row.num_classes), row.mode, row.variant, fmt(row.images_per_s, ".1f"),
            fmt(row.median_ms, ".1f"), fmt(row.peak_mb, ".0f"), fmt(row.speed_ratio, ".2f"),
            fmt(row.best_speed_ratio, ".2f"), fmt(row.memory_ratio, ".2f"), row.error]


def format_row(row: Row) -> str:
    return " ".join(f"{h}={c}" for h, c in zip(HEADER, cells(row)) if c not in ("", "-"))


def render_table(rows: list[Row], markdown: bool) -> str:
    table = [HEADER] + [cells(row) for row in rows]
    return format_table(table[0], table[1:], markdown)


def environment(args: argparse.Namespace) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "device": args.device}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("--arcs", nargs="+", default=["resnet50"], choices=list(ARCHS))
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--num-classes", nargs="+", type=int, default=[12, 27])
    parser.add_argument("--mode", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per form")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per form")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="steps run by each CPU memory child (the peak settles after about 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference GEM in stage 2")
    parser.add_argument("--grad-checkpointing", nargs="+", type=int, default=[0], choices=range(5), metavar="K",
                        help="fast forms to run: gradient checkpointing of the backbone's first K "
                             "stages (0: none; e.g. 0 2 runs both)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", type=Path, help="also write rows and environment to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: memory child process
    args = parser.parse_args(argv)
    for name in ("batch_size", "iters", "memory_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if len(set(args.grad_checkpointing)) != len(args.grad_checkpointing):
        parser.error("--grad-checkpointing values must be distinct")
    if any(n < 2 for n in args.num_classes):
        parser.error("--num-classes values must be at least 2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(Config(**json.loads(args.child)), args.iters)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    rows = benchmark(args)
    print(f"{args.device}, torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"amp {args.amp}, channels_last {args.channels_last}; median of {args.iters} iterations after "
          f"{args.warmup} warm-up; speed x = reference ms / fast ms (medians; best x: fastest iterations), "
          f"memory x = fast / reference")
    print(render_table(rows, args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"provenance": collect(args.device, argv=script_argv(__file__, argv)),
                                         "environment": environment(args),
                                         "arguments": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items() if k != "child"},
                                         "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
