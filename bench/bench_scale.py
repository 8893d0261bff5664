"""demo.py on a folder of short real-photo videos: the single process against --engine ray with
1, 2, ... workers (docs/scale.md). For each run, in a fresh process: wall time, inputs/s and
frames/s, the throughput ratio to the single process, the peak memory of all its processes
together (the demo and every process it starts: Ray's GCS, raylet and workers), sampled every
0.25 s as the sum of their PSS (proportional set size: a page shared by k processes counts 1/k
in each, so shared libraries and Ray's object store are not counted k times; RSS where PSS
cannot be read), and each Ray worker's overhead (the run's wall time less the busy time of its
inputs per worker: starting Ray, loading a model per worker, scheduling, merging) and their pace
once started (frames over each worker's busy time).

The videos are megraphau.inference.sample_media.write_face_video's (tests/data/astronaut.jpg moving on a textured
background, one face per frame, MJPG .avi); the model a random-weight release-style checkpoint
(the weights do not change the speed).

  python bench/bench_scale.py --videos 20 --frames 50 --workers 1 2          # the real run (minutes)
  python bench/bench_scale.py --videos 3 --frames 4 --workers 1 --size 160x120   # a smoke run

GPUs are not measured here (none on the machine this was written on): see docs/scale.md for what
to expect from N GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from megraphau.inference.sample_media import save_random_checkpoint, write_face_video
from megraphau.paths import REPO_ROOT as ROOT


def _children() -> dict:
    """{parent pid: [child pids]} of every process visible in /proc."""
    tree: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _memory_mb(pid: int) -> float:
    """The process's PSS (RSS where smaps_rollup is not readable), MB; 0 when it is gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            continue
    return 0.0


def tree_memory_mb(root: int) -> tuple[float, int]:
    """(memory of `root` and all its descendants, MB; how many processes)."""
    tree, todo, seen = _children(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(tree.get(pid, []))
    return sum(_memory_mb(pid) for pid in seen), len(seen)


def run_demo(argv: list, log: Path) -> dict:
    """`python demo.py argv` in a fresh process, its process tree's memory sampled."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), *argv], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        peak, processes = 0.0, 0
        while proc.poll() is None:
            mb, n = tree_memory_mb(proc.pid)
            peak, processes = max(peak, mb), max(processes, n)
            time.sleep(0.25)
    return {"seconds": time.perf_counter() - start, "peak_mb": peak, "processes": processes, "code": proc.returncode}


def busy_seconds(out_dir: Path) -> float:
    """The summed per-input seconds of a run's manifest (0 without one)."""
    path = out_dir / "manifest.jsonl"
    if not path.is_file():
        return 0.0
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    return sum(float(r.get("seconds") or 0.0) for r in lines)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=20, help="videos in the folder")
    p.add_argument("--frames", type=int, default=50, help="frames per video")
    p.add_argument("--size", default="320x240", help="frame size WxH")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                   help="--engine ray worker counts to run (none: the single process only)")
    p.add_argument("--threads", type=int, default=None,
                   help="model threads per worker (default: the demo's: all cores single, cores / workers ray)")
    p.add_argument("--arc", default="resnet18")
    p.add_argument("--no-single", action="store_true", help="skip the single-process run")
    p.add_argument("--workdir", type=Path, default=ROOT / "results" / "bench_scale")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = args.workdir
    folder = work / f"videos_{args.videos}x{args.frames}_{w}x{h}"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(args.videos):
        path = folder / f"clip{k:03d}.avi"
        if not path.is_file():
            write_face_video(path, args.frames, size=(w, h))
    ckpt = work / f"MEFARG_{args.arc}_BP4D.pth"
    if not ckpt.is_file():
        save_random_checkpoint(ckpt, args.arc, 2)
    runs = ([("single", None)] if not args.no_single else []) + [("ray", n) for n in args.workers]
    rows = []
    for engine, workers in runs:
        name = engine if workers is None else f"ray_w{workers}"
        out = work / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: an old manifest would skip every input
        argv = ["--resume", str(ckpt), "--input", str(folder), "--output", str(out), "--no-annotate"]
        if workers is not None:
            argv += ["--engine", "ray", "--workers", str(workers)]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        result = run_demo(argv, work / f"{name}.log")
        frames = args.videos * args.frames
        busy = busy_seconds(out)
        row = {"run": name, "workers": workers or 1, **result, "inputs_per_s": args.videos / result["seconds"],
               "frames_per_s": frames / result["seconds"],
               "overhead_s_per_worker": None if workers is None else result["seconds"] - busy / workers,
               # the workers' own pace, their fixed costs left out: frames over each worker's busy time
               "frames_per_s_started": frames / (busy / workers) if workers and busy else None}
        rows.append(row)
        print(f"{name}: exit {row['code']}, {row['seconds']:.1f} s", flush=True)
    base = next((r for r in rows if r["run"] == "single"), None)
    print(f"\n{args.videos} videos x {args.frames} frames of {w}x{h}, {args.arc} stage 2, CPU "
          f"({os.cpu_count()} cores)")
    print("| run | wall s | inputs/s | frames/s | x single | peak memory, all processes (MB) | processes "
          "| overhead per worker (s) | frames/s once started |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds'] and base['seconds'] / r['seconds']:.2f}" if base else "-"
        overhead = "-" if r["overhead_s_per_worker"] is None else f"{r['overhead_s_per_worker']:.1f}"
        started = "-" if r["frames_per_s_started"] is None else f"{r['frames_per_s_started']:.1f}"
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['inputs_per_s']:.2f} | {r['frames_per_s']:.1f} | {ratio} "
              f"| {r['peak_mb']:.0f} | {r['processes']} | {overhead} | {started} |")
    print("GPUs: not measured (no GPU here); see docs/scale.md.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
