"""Time to compute per-AU F1 and accuracy over one test fold (default 46,034 frames x 12 AUs, the
size of BP4D fold 1) with random predictions: metrics.compute_au_metrics (vectorised) against a
release-style loop that counts TP/FP/FN/TN in Python frame by frame and AU by AU (the paper's
per-AU F1), and whether the two agree.

  python bench/bench_metrics.py [--frames 46034 --aus 12 --repeats 3] [--markdown] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from megraphau.provenance import collect  # noqa: E402
from megraphau.tables import format_table, script_argv  # noqa: E402


def release_style_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Per-AU F1 and accuracy counted element by element in Python, the release's way.

    Occurrence is p >= 0.5; F1 = 2 TP / (2 TP + FP + FN) over the whole fold (0 when that is 0/0);
    accuracy = correct / frames.
    """
    frames, aus = probs.shape
    predictions = probs.tolist()
    truths = labels.tolist()
    f1, acc = [], []
    for j in range(aus):
        tp = fp = fn = tn = 0
        for i in range(frames):
            predicted = predictions[i][j] >= 0.5
            present = truths[i][j] == 1
            if predicted and present:
                tp += 1
            elif predicted:
                fp += 1
            elif present:
                fn += 1
            else:
                tn += 1
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        acc.append((tp + tn) / frames)
    return {"f1": np.array(f1), "acc": np.array(acc), "mean_f1": float(np.mean(f1)),
            "mean_acc": float(np.mean(acc))}


def project_metrics():
    """metrics.compute_au_metrics, or None with the reason when it cannot be imported."""
    try:
        from megraphau.engine.metrics import compute_au_metrics
    except Exception as error:  # noqa: BLE001 - report, do not crash the bench
        return None, f"metrics.compute_au_metrics unavailable: {type(error).__name__}: {error}"
    return compute_au_metrics, ""


def time_call(function, args, repeats: int) -> tuple[float, dict]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def benchmark(args: argparse.Namespace) -> tuple[list[dict], dict, str]:
    rng = np.random.default_rng(args.seed)
    probs = rng.random((args.frames, args.aus), dtype=np.float32)
    labels = (rng.random((args.frames, args.aus)) < 0.3).astype(np.int64)
    rows = []
    loop_ms, expected = time_call(release_style_metrics, (probs, labels), args.repeats)
    rows.append({"implementation": "release-style Python loop", "ms": loop_ms, "speedup": 1.0})
    function, note = project_metrics()
    agreement = {}
    if function is not None:
        ours_ms, got = time_call(function, (probs, labels), args.repeats)
        rows.append({"implementation": "metrics.compute_au_metrics", "ms": ours_ms, "speedup": loop_ms / ours_ms})
        agreement = {key: float(np.max(np.abs(np.asarray(got[key], dtype=float) - expected[key])))
                     for key in ("f1", "acc", "mean_f1", "mean_acc")}
    return rows, agreement, note


def render(rows: list[dict], markdown: bool) -> str:
    header = ["implementation", "ms", "x loop"]
    table = [header] + [[r["implementation"], f"{r['ms']:.2f}", f"{r['speedup']:.1f}"] for r in rows]
    return format_table(table[0], table[1:], markdown)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=46034, help="frames in the fold (BP4D fold 1: 46034)")
    parser.add_argument("--aus", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if min(args.frames, args.aus, args.repeats) < 1:
        parser.error("--frames, --aus and --repeats must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    rows, agreement, note = benchmark(args)
    print(f"{args.frames} frames x {args.aus} AUs, random predictions and labels, median of {args.repeats} calls")
    if note:
        print(f"note: {note}; only the loop was measured")
    print(render(rows, args.markdown))
    if agreement:
        worst = max(agreement.values())
        print(f"agreement: max abs difference {worst:.2e} "
              f"({'agree' if worst <= 1e-9 else 'DISAGREE'}) over f1, acc, mean_f1, mean_acc")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"provenance": collect("cpu", argv=script_argv(__file__, argv)),
                                         "arguments": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items()},
                                         "rows": rows, "agreement": agreement, "note": note}, indent=2))


if __name__ == "__main__":
    main()
