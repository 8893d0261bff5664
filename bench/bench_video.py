"""demo.py's video path on a generated 640x480 video of a real face: frames/s and busy ms per
pipeline stage (decode, detect/track, crop+transform, model, write) with PyTorch and ONNX Runtime
side by side (`demo.py --benchmark`), per backbone x stage; and (--memory) the peak memory of
whole demo runs on a short and a long video, each in a fresh process.

The video is tests/data/astronaut.jpg (a public-domain photograph) moving and slowly scaling on a
textured background, one face per frame, written as MJPG .avi. Models are random-weight
release-style checkpoints (build_model(..., pretrained=False), 12 AUs, BP4D names): the weights do
not change the speed. Each model is exported to ONNX once (verified against PyTorch). Each
benchmark runs `python demo.py --benchmark` in a fresh process.

  python bench/bench_video.py --arcs resnet18 resnet50 --stages 2 --frames 200 --repeats 2
  python bench/bench_video.py --memory --memory-frames 300 3000 --arcs resnet18 --engine onnx
  python bench/bench_video.py --guard-checkpoint results/synth_stage2/.../best.pth --guard-data data/SYNTH

The pipeline benchmark times every engine x precision (PyTorch fp32/bf16, ONNX Runtime
fp32/int8: demo.py --benchmark --benchmark-precisions fp32 bf16 int8; the int8 file is quantised
once beside the .onnx). Then each is timed on the model alone over --frames face crops
(inference/precision.py's photograph crops, batches of --batch-size, default 16), and one table
shows, per engine x precision, the end-to-end demo frames/s (decode, track, crop, model, write)
and its CPU ms per frame of detection+crop and of the model, beside the model-only speed, the
accuracy guard (max abs probability difference to float32 of the same engine on held-out face
crops, bound 0.02) and the roofline (inference/roofline.py: FLOPs per face, the measured
matrix-product peak of that engine and precision at the thread count, the achieved fraction of
it, and the faces/s the peak would allow). The combinations this machine does not offer are
listed with the reason; with CUDA the demo benchmark also runs on the GPU (else a row says it
was not measured). --precisions-only skips the pipeline part.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from megraphau.inference.sample_media import save_random_checkpoint, write_face_video

ROOT = Path(__file__).resolve().parents[1]

def models(workdir: Path, arcs, stages) -> list[tuple[str, int, Path, Path]]:
    """(arc, stage, .pth, .onnx) per model, made once in workdir (the .onnx exported and verified
    as demo.py --benchmark exports a model: benchmark.export_detector, BP4D's AU names)."""
    from megraphau.inference.benchmark import export_detector
    from megraphau.inference.detector import AUDetector

    out = []
    for arc in arcs:
        for stage in stages:
            pth = workdir / f"MEFARG_{arc}_stage{stage}_BP4D.pth"
            onnx = pth.with_suffix(".onnx")
            if not pth.is_file():
                save_random_checkpoint(pth, arc, stage)
            if not onnx.is_file():
                export_detector(AUDetector(pth, dataset="BP4D", detect=False), onnx, verify=True)
            out.append((arc, stage, pth, onnx))
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_mb(argv: list[str]) -> dict:
    """Memory of `python demo.py argv` in a fresh process: 'peak' (MB, the child's own ru_maxrss,
    i.e. its VmHWM at exit), 'first_half' / 'second_half' (largest RSS sampled every 0.2 s in
    each half of the run: growth with length shows as a larger second half), 'seconds', 'code'."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _rss_mb(proc.pid)
        if rss is not None:
            samples.append(rss)
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    half = len(samples) // 2
    return {"peak": usage.ru_maxrss / 1024.0, "first_half": max(samples[:half], default=float("nan")),
            "second_half": max(samples[half:], default=float("nan")), "seconds": time.perf_counter() - start,
            "code": proc.returncode}


def run_memory(args, workdir: Path, made) -> None:
    rows = []
    for arc, stage, pth, onnx in made:
        model = onnx if args.engine == "onnx" else pth
        for annotate in args.memory_annotate:
            for n in args.memory_frames:
                video = workdir / f"face_{n}.avi"
                if not video.is_file():
                    write_face_video(video, n)
                out = workdir / f"out_{arc}_{stage}_{n}_{annotate}"
                argv = ["--resume", str(model), "--input", str(video), "--output", str(out)]
                argv += [] if annotate == "annotated" else ["--no-annotate"]
                if args.threads:
                    argv += ["--threads", str(args.threads)]
                m = peak_rss_mb(argv)
                rows.append((arc, stage, args.engine, annotate, n, m))
                print(f"# {arc} stage {stage} {args.engine} {annotate} {n} frames: peak RSS {m['peak']:.0f} MB "
                      f"(largest sampled in the first / second half of the run {m['first_half']:.0f} / "
                      f"{m['second_half']:.0f} MB), {m['seconds']:.0f} s, exit {m['code']}",
                      file=sys.stderr, flush=True)
    print("| model | engine | output | frames | peak RSS (MB) | RSS 1st / 2nd half (MB) | time (s) | frames/s |")
    print("|---|---|---|---|---|---|---|---|")
    for arc, stage, engine, annotate, n, m in rows:
        print(f"| {arc} stage {stage} | {engine} | {annotate} | {n} | {m['peak']:.0f} | {m['first_half']:.0f} / "
              f"{m['second_half']:.0f} | {m['seconds']:.0f} | {n / m['seconds']:.1f} |"
              + ("" if m["code"] == 0 else f" exit {m['code']}"))


# ---- engine x precision table with guards and roofline (issue 24) --------------------------
PRECISION_BATCH = 16  # AUDetector's default batch size


def precision_rows(made, frames: int, threads: int | None = None, batch_size: int | None = None) -> list[dict]:
    """One row per model x engine x precision: 'model', 'engine', 'precision', 'refused' (the reason,
    or None), 'seconds_per_face', 'guard' (probability_guard against float32 of the same engine; ONNX
    Runtime fp32 against PyTorch fp32; None for PyTorch fp32, the reference) and 'roofline'."""
    import torch

    from megraphau.inference import precision as P
    from megraphau.inference import roofline as R
    from megraphau.model import load_model

    threads = threads or torch.get_num_threads()
    batch_size = batch_size or PRECISION_BATCH
    peaks, rows = {}, []
    for arc, stage, pth, onnx in made:
        model = load_model(pth, neighbor_num=lambda n: 4).model  # save_random_checkpoint's K
        crop = 224
        flops = R.model_flops(model, crop)
        int8 = P.int8_path(onnx)
        if P.unsupported_reason("onnxruntime", "int8") is None:
            int8 = P.cached_int8(onnx)[0]  # as demo --precision int8 makes it (guard recorded)
        guard_inputs = P.model_inputs(P.guard_crops(), crop)
        faces = P.model_inputs(P.photo_crops(min(frames, 32), seed=2), crop)
        faces = np.resize(faces, (frames, *faces.shape[1:]))  # (frames, 3, S, S), the crops repeated
        sources = {"pytorch": model, "onnxruntime": None}
        references = {}
        for engine in P.ENGINES:
            for precision in P.PRECISIONS:
                row = {"model": f"{arc} stage {stage}", "engine": engine, "precision": precision,
                       "refused": P.unsupported_reason(engine, precision), "seconds_per_face": None,
                       "guard": None, "roofline": None}
                rows.append(row)
                if row["refused"]:
                    continue
                source = sources[engine] or (int8 if precision == "int8" else onnx)
                runner = P.make_runner(engine, precision, source, threads=threads)
                runner(faces[:batch_size])  # warm-up (ONNX Runtime's first run allocates)
                start = time.perf_counter()
                P.run_batched(runner, faces, batch_size)
                row["seconds_per_face"] = (time.perf_counter() - start) / frames
                if precision == "fp32":
                    references[engine] = runner
                reference = references["pytorch"] if precision == "fp32" else references[engine]
                if (engine, precision) != ("pytorch", "fp32"):
                    row["guard"] = P.probability_guard(reference, runner, guard_inputs, precision, engine)
                if (engine, precision) not in peaks:
                    peaks[engine, precision] = R.matmul_peak(precision, engine, threads=threads)
                row["roofline"] = R.roofline(flops, row["seconds_per_face"], peaks[engine, precision])
    return rows


#: the goal of a GPU run (issue 24): py-feat's published frames/s at batch 16, ResNet-50 stage 2
GPU_GOAL = "goal: beat py-feat's 202 frames/s at batch 16 with ResNet-50 stage 2"


def end_to_end(rows: list[dict], results: dict) -> None:
    """Add demo --benchmark's end-to-end figures to precision_rows' rows: 'e2e' = {'frames_per_s',
    'detect_crop_ms', 'model_ms' (CPU ms per frame)} or None. results: {model name: the
    --benchmark-json of that model's demo run} (engine rows keyed "engine precision")."""
    for r in rows:
        run = (results.get(r["model"]) or {}).get("engines", {}).get(f"{r['engine']} {r['precision']}")
        if run is None:
            r["e2e"] = None
            continue
        cpu = run["cpu_ms_per_stage"]
        r["e2e"] = {"frames_per_s": run["frames_per_s"], "detect_crop_ms": cpu["detect"] + cpu["crop"],
                    "model_ms": cpu["model"]}


def precision_table(rows: list[dict], threads: int | None = None) -> str:
    """The rows of precision_rows as a markdown table (refused combinations with their reason);
    with end_to_end's figures, the demo's end-to-end frames/s and CPU ms per frame first."""
    lines = [f"engine x precision ({threads or 'default'} threads). end-to-end: demo.py --benchmark's frames/s "
             f"(decode, track, crop, model, write; --no-annotate) and its CPU ms per frame of detection+crop and of "
             f"the model; model alone: face crops in batches; guard: max |p - p_fp32| on face crops (bound 0.02); "
             f"roofline: measured matrix-product peak of that engine and precision",
             "| model | engine | precision | end-to-end frames/s | CPU ms/frame detect+crop / model | model ms/face "
             "| model faces/s | guard | GFLOP/face | peak GFLOP/s | achieved GFLOP/s | fraction of peak "
             "| faces/s bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['engine']} | {r['precision']} "
        if r["refused"]:
            lines.append(head + f"| not offered: {r['refused']} |" + "|" * 9)  # 13 cells
            continue
        if r.get("gpu"):
            lines.append(head + f"| {r['gpu']} |" + "|" * 9)
            continue
        e2e = r.get("e2e")
        head += (f"| {e2e['frames_per_s']:.1f} | {e2e['detect_crop_ms']:.1f} / {e2e['model_ms']:.1f} " if e2e
                 else "| - | - ")
        g, roof = r["guard"], r["roofline"]
        guard = "reference" if g is None else (f"{g['max_abs_diff']:.2g} {'pass' if g['passed'] else 'FAIL'}"
                                               + (" (vs PyTorch fp32)" if r["precision"] == "fp32" else ""))
        peak = "n/a" if roof["peak_gflops"] is None else f"{roof['peak_gflops']:.0f}"
        fraction = "n/a" if roof["fraction"] is None else f"{roof['fraction']:.0%}"
        bound = "n/a" if roof["bound_fps"] is None else f"{roof['bound_fps']:.0f}"
        lines.append(head + f"| {1000 * r['seconds_per_face']:.1f} | {roof['measured_fps']:.1f} | {guard} | "
                     f"{roof['gflop_per_face']:.2f} | {peak} | {roof['achieved_gflops']:.1f} | {fraction} | {bound} |")
    return "\n".join(lines)


def gpu_rows(made, results: dict) -> list[dict]:
    """One row per model for the GPU: its end-to-end figures when demo ran on CUDA, else the note
    that it was not measured (no GPU here), with the goal."""
    import torch

    rows = []
    for arc, stage, _pth, _onnx in made:
        name = f"{arc} stage {stage}"
        if not torch.cuda.is_available():
            rows.append({"model": name, "engine": "GPU", "precision": "-", "refused": None,
                         "gpu": f"not measured: no GPU on this machine ({GPU_GOAL})"})
            continue
        for key, run in (results.get(name + " cuda") or {}).get("engines", {}).items():
            rows.append({"model": name, "engine": f"GPU {key.split()[0]}", "precision": key.split()[1],
                         "refused": None, "gpu": f"end-to-end {run['frames_per_s']:.1f} frames/s ({GPU_GOAL})"})
    return rows


def run_precisions(args, made, results: dict | None = None) -> None:
    rows = precision_rows(made, args.frames, args.threads, args.batch_size)
    end_to_end(rows, results or {})
    if results is not None:
        rows += gpu_rows(made, results)
    print(precision_table(rows, args.threads), flush=True)


def trained_guards(checkpoint: Path, data_root: Path, workdir: Path, fold: int | None = None) -> list[dict]:
    """The accuracy guards of a trained checkpoint for every precision this machine offers, against
    PyTorch float32: probabilities on face crops of tests/data/astronaut.jpg (bound 0.02) and test
    mean F1 on `data_root`'s test fold (bound 0.5 points). The ONNX files (float32 and int8) are
    written to workdir. Random weights cannot show the F1 guard: this is the check for a real model."""
    from megraphau.inference import precision as P
    from megraphau.model import load_model
    from megraphau.model.onnx_export import export_onnx

    loaded = load_model(checkpoint)
    facts = dict(loaded.facts)
    crop = int(facts.get("crop_size") or 224)
    dataset, fold = facts.get("dataset") or "SYNTH", fold or facts.get("fold") or 1
    onnx = workdir / f"{checkpoint.stem}_guards.onnx"
    export_onnx((loaded.model, facts), onnx, verify=True, crop_size=crop)
    sources = {("onnxruntime", "fp32"): onnx}
    if P.unsupported_reason("onnxruntime", "int8") is None:
        sources["onnxruntime", "int8"] = P.quantize_int8(onnx)["path"]
    reference = P.make_runner("pytorch", "fp32", loaded.model)
    crops = P.model_inputs(P.guard_crops(facts.get("crop_preset") or "BP4D"), crop)
    results = []
    for engine, precision in P.supported_combinations():
        if (engine, precision) == ("pytorch", "fp32"):
            continue
        runner = P.make_runner(engine, precision, sources.get((engine, precision), loaded.model))
        results.append(P.probability_guard(reference, runner, crops, precision, engine))
        results.append(P.f1_guard(reference, runner, data_root, precision, engine, dataset=dataset, fold=fold,
                                  crop_size=crop))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arcs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--stages", nargs="+", type=int, default=[2], choices=[1, 2])
    parser.add_argument("--frames", type=int, default=200, help="frames of the benchmark video")
    parser.add_argument("--repeats", type=int, default=2, help="passes per engine (alternating)")
    parser.add_argument("--threads", type=int, default=None, help="demo.py --threads (default: its own)")
    parser.add_argument("--batch-size", type=int, default=None, help="demo.py --batch-size (default: its own)")
    parser.add_argument("--annotate", action="store_true", help="also write the annotated video (as a user would)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more demo.py arguments")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "bench_video",
                        help="where models, videos and outputs are kept between runs")
    parser.add_argument("--memory", action="store_true", help="measure peak memory instead of speed")
    parser.add_argument("--memory-frames", nargs="+", type=int, default=[300, 3000])
    parser.add_argument("--memory-annotate", nargs="+", default=["no-annotate"], choices=["no-annotate", "annotated"])
    parser.add_argument("--engine", default="onnx", choices=["onnx", "pytorch"], help="--memory: the model file")
    parser.add_argument("--precisions-only", action="store_true",
                        help="only the engine x precision table (guards, roofline), not the pipeline benchmark")
    parser.add_argument("--no-precisions", action="store_true", help="skip the engine x precision table")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "int8"],
                        help="the precisions of the end-to-end demo benchmark")
    parser.add_argument("--guard-checkpoint", type=Path, default=None, metavar="PTH",
                        help="a trained checkpoint: print its accuracy guards for every precision (probabilities "
                             "on face crops, test mean F1 on --guard-data) and stop")
    parser.add_argument("--guard-data", type=Path, default=None, metavar="DIR",
                        help="--guard-checkpoint's data set root (its dataset's lists and images, e.g. data/SYNTH)")
    parser.add_argument("--guard-fold", type=int, default=None, help="--guard-data's test fold (default: the "
                        "checkpoint's)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.guard_checkpoint:
        if not args.guard_data:
            parser.error("--guard-checkpoint needs --guard-data (the data set root of its test fold)")
        from megraphau.inference.precision import guard_line

        for result in trained_guards(args.guard_checkpoint, args.guard_data, args.workdir, args.guard_fold):
            print(guard_line(result), flush=True)
        return
    made = models(args.workdir, args.arcs, args.stages)
    if args.memory:
        run_memory(args, args.workdir, made)
        return
    if args.precisions_only:
        run_precisions(args, made)
        return
    video = args.workdir / f"face_{args.frames}.avi"
    if not video.is_file():
        write_face_video(video, args.frames)
    import torch

    results = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for arc, stage, pth, onnx in made:
        for device in devices:
            name = f"{arc} stage {stage}" + (" cuda" if device == "cuda" else "")
            out = args.workdir / f"benchmark_{arc}_stage{stage}_{device}.json"
            out.unlink(missing_ok=True)
            argv = ["--resume", str(pth), "--benchmark-onnx", str(onnx), "--input", str(video), "--benchmark",
                    "--benchmark-frames", str(args.frames), "--benchmark-repeats", str(args.repeats),
                    "--benchmark-precisions", *(args.precisions if device == "cpu" else ["fp32", "bf16"]),
                    "--benchmark-json", str(out), "--device", device]
            argv += [] if args.annotate else ["--no-annotate"]
            argv += ["--threads", str(args.threads)] if args.threads else []
            argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            print(f"$ python demo.py {' '.join(argv + args.extra)}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "demo.py"), *argv, *args.extra], check=False)
            print(flush=True)
            if out.is_file():
                results[name] = json.loads(out.read_text())
    if not args.no_precisions:
        run_precisions(args, made, results)


if __name__ == "__main__":
    main()
