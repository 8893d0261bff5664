#!/usr/bin/env python
"""Compare training runs: train loss and test mean F1 per epoch of several run folders overlaid,
and the per-AU F1 of each run side by side.

    python tool/plot_runs.py results/a/bs_16_seed_0_lr_0.001 results/b/bs_16_seed_0_lr_0.001 \\
        --labels "stage 1" "stage 2" --output runs.png

Each folder needs metrics.csv (train_stage1.py / train_stage2.py: epoch, lr, train_loss, mean_f1,
mean_acc, f1_<AU>..., time_s; mean_f1 and f1_<AU> are fractions, empty on epochs without an
evaluation). The per-AU F1 comes from the folder's results.json (test.py: "au_names", "f1" in
%) when there is one, else from the last evaluated epoch of metrics.csv. Labels default to each
run's experiment, stage and fold (its args.yaml), else the folder name. Writes the PNG (default:
runs.png in the run folder, or in the folder holding all of them) and, next to it, a CSV
(label, kind, epoch, au, value, source) of every number drawn; F1 in % throughout.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from megraphau.analysis import plots  # noqa: E402
from megraphau.errors import UserError, run_cli  # noqa: E402


class RunFolderError(UserError, ValueError):
    """A run folder that cannot be read; the message names the folder or file."""


def _number(text: str, path: Path, row: int, column: str) -> Optional[float]:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise RunFolderError(f"{path}: row {row}, column {column}: {text!r} is not a number") from None


def read_metrics(folder: Path) -> dict:
    """metrics.csv of a run folder as {"epoch", "train_loss", "mean_f1" (% or None), "au_names",
    "f1" (rows of % or None per epoch)}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such run folder")
    path = folder / "metrics.csv"
    if not path.is_file():
        raise RunFolderError(f"{folder}: no metrics.csv (not a train_stage1.py / train_stage2.py run folder?)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for needed in ("epoch", "train_loss", "mean_f1"):
            if needed not in columns:
                raise RunFolderError(f"{path}: missing column {needed!r} (has {', '.join(columns) or 'none'})")
        au_columns = [c for c in columns if c.startswith("f1_")]
        rows = list(reader)
    if not rows:
        raise RunFolderError(f"{path}: no epochs in the file")
    out = {"epoch": [], "train_loss": [], "mean_f1": [], "au_names": [c[3:] for c in au_columns], "f1": []}
    for k, row in enumerate(rows, start=2):
        out["epoch"].append(int(_number(row["epoch"], path, k, "epoch")))
        out["train_loss"].append(_number(row["train_loss"], path, k, "train_loss"))
        mean_f1 = _number(row["mean_f1"], path, k, "mean_f1")
        out["mean_f1"].append(None if mean_f1 is None else 100 * mean_f1)
        per_au = [_number(row[c], path, k, c) for c in au_columns]
        out["f1"].append(None if any(v is None for v in per_au) else [100 * v for v in per_au])
    return out


def read_per_au_f1(folder: Path, metrics: dict) -> tuple[list[str], Optional[list[float]], str]:
    """(au_names, per-AU F1 in %, source): results.json when present, else the last evaluated
    epoch of metrics.csv; F1 None when neither has one."""
    results = Path(folder) / "results.json"
    if results.is_file():
        try:
            data = json.loads(results.read_text())
            names, f1 = list(data["au_names"]), [float(v) for v in data["f1"]]
        except (ValueError, KeyError, TypeError) as err:
            raise RunFolderError(f"{results}: not a test.py results file ({type(err).__name__}: {err})") from None
        if len(names) != len(f1):
            raise RunFolderError(f"{results}: {len(f1)} F1 values for {len(names)} AUs")
        return names, f1, "results.json"
    evaluated = [(e, f) for e, f in zip(metrics["epoch"], metrics["f1"]) if f is not None]
    if not evaluated:
        return metrics["au_names"], None, "none"
    epoch, f1 = evaluated[-1]
    return metrics["au_names"], f1, f"metrics.csv epoch {epoch}"


def run_label(folder: Path) -> Optional[str]:
    """'EXP stage S fold K' from the run's args.yaml (what the run was), None without one."""
    path = Path(folder) / "args.yaml"
    if not path.is_file():
        return None
    try:
        args = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(args, dict) or not args.get("exp_name"):
        return None
    stage = args.get("stage")
    if stage is None:  # runs written before args.yaml held the stage: the script that wrote it
        command = str((args.get("provenance") or {}).get("command") or "")
        stage = 2 if "train_stage2" in command else 1 if "train_stage1" in command else None
    parts = [str(args["exp_name"])]
    if stage is not None:
        parts.append(f"stage {stage}")
    if args.get("fold") is not None:
        parts.append(f"fold {args['fold']}")
    return " ".join(parts)


def default_labels(folders: Sequence[Path]) -> list[str]:
    """Each run by its experiment, stage and fold (args.yaml), else its folder name; parent/name
    where two labels are equal (e.g. bs_16_seed_0_lr_0.001)."""
    found = [run_label(f) for f in folders]
    names = [label or Path(f).resolve().name for f, label in zip(folders, found)]

    def parent_and_name(folder) -> str:
        return f"{Path(folder).resolve().parent.name}/{Path(folder).resolve().name}"

    return [(n if names.count(n) == 1 else f"{n} ({parent_and_name(f)})" if label else parent_and_name(f))
            for f, n, label in zip(folders, names, found)]


def default_output(folders: Sequence[Path]) -> Path:
    """runs.png in the one run folder, or in the folder holding all the run folders (never the
    working directory, which may be the repository)."""
    resolved = [Path(f).resolve() for f in folders]
    if len(resolved) == 1:
        return resolved[0] / "runs.png"
    return Path(os.path.commonpath(resolved)) / "runs.png"


def plot_runs(folders: Sequence[Path], out_png: Path, labels: Optional[Sequence[str]] = None) -> dict:
    """Read the run folders and draw the comparison figure; returns {"png", "csv"} paths."""
    if not folders:
        raise RunFolderError("no run folder given")
    labels = list(labels) if labels else default_labels(folders)
    if len(labels) != len(folders):
        raise RunFolderError(f"--labels: {len(labels)} labels for {len(folders)} run folders")
    runs = []
    for folder, label in zip(folders, labels):
        metrics = read_metrics(Path(folder))
        au_names, f1, source = read_per_au_f1(Path(folder), metrics)
        runs.append({"label": label, "metrics": metrics, "au_names": au_names, "f1": f1, "source": source})

    all_aus = []  # union of the runs' AUs, in order of first appearance
    for run in runs:
        all_aus += [a for a in run["au_names"] if a not in all_aus]

    fig = plots.new_figure(min(40.0, max(10.0, 2.0 + len(all_aus) * (0.15 * len(runs) + 0.2))), 7.5)
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.1))
    ax_loss, ax_f1, ax_bars = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    csv_rows = []
    for k, run in enumerate(runs):
        m, color, label = run["metrics"], f"C{k % 10}", run["label"]
        loss = [(e, v) for e, v in zip(m["epoch"], m["train_loss"]) if v is not None]
        evaluated = [(e, v) for e, v in zip(m["epoch"], m["mean_f1"]) if v is not None]
        if loss:
            ax_loss.plot(*zip(*loss), "o-", color=color, ms=3, label=label)
        if evaluated:
            ax_f1.plot(*zip(*evaluated), "o-", color=color, ms=3, label=label)
        csv_rows += [[label, "train_loss", e, "", v, "metrics.csv"] for e, v in loss]
        csv_rows += [[label, "mean_f1", e, "", v, "metrics.csv"] for e, v in evaluated]
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax_f1.set(xlabel="epoch", ylabel="mean F1 (%)", title="test fold mean F1 per epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_f1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)

    series, means = {}, {}
    for run in runs:
        if run["f1"] is None:
            continue
        by_name = dict(zip(run["au_names"], run["f1"]))
        values = np.array([by_name.get(a, np.nan) for a in all_aus], dtype=np.float64)
        name = f"{run['label']} [{run['source']}]"
        series[name] = np.r_[values, np.nanmean(values)]
        means[name] = float(np.nanmean(values))
        csv_rows += [[run["label"], "au_f1", "", a, v, run["source"]] for a, v in zip(all_aus, values)
                     if np.isfinite(v)]
    if series:
        colors = [f"C{k % 10}" for k, run in enumerate(runs) if run["f1"] is not None]
        plots.draw_grouped_bars(ax_bars, all_aus + ["Avg"], series, colors, means)
        ax_bars.axvline(len(all_aus) - 0.5, color="0.5", lw=0.8, ls=":")
        ax_bars.set_ylim(0, max(1.0, np.nanmax([np.nanmax(v) for v in series.values()])) * 1.25)
        ax_bars.legend(fontsize=8, ncol=min(4, len(series)), loc="upper left", frameon=False)
    else:
        ax_bars.text(0.5, 0.5, "no evaluated epoch in any run", ha="center", va="center", transform=ax_bars.transAxes)
    ax_bars.set(xlabel="action unit", title="per-AU F1 (results.json, else the last evaluated epoch)")
    fig.tight_layout()
    png = plots.save_figure(fig, out_png)
    csv_path = plots.write_csv(png.with_suffix(".csv"), ["label", "kind", "epoch", "au", "value", "source"], csv_rows)
    return {"png": png, "csv": csv_path}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plot_runs.py", description="Overlay the training curves and per-AU F1 of several run folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python tool/plot_runs.py results/synth_stage1/bs_16_seed_0_lr_0.001 results/synth_stage2/bs_16_seed_0_lr_0.0003
  python tool/plot_runs.py runs/r50 runs/swin_b --labels ResNet-50 Swin-B --output backbones.png
""")
    from megraphau import provenance

    provenance.add_version_flag(parser)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.csv (and results.json)")
    parser.add_argument("--labels", nargs="+",
                        help="one legend label per run folder (default: experiment, stage and fold from each "
                             "run's args.yaml, else the folder name)")
    parser.add_argument("--output", type=Path, default=None,
                        help="figure path (default: runs.png in the run folder, or in the folder holding all "
                             "the run folders); the CSV goes next to it with .csv")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not all(Path(f).is_dir() for f in args.runs):  # before the default output is placed by them
        raise RunFolderError(f"{next(f for f in args.runs if not Path(f).is_dir())}: no such run folder")
    paths = plot_runs(args.runs, args.output or default_output(args.runs), args.labels)
    print(f"wrote {paths['png']} and {paths['csv']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line through the project's front door (errors.run_cli): 0, 2 (one line), 1 (a bug)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
