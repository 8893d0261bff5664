"""Figures of ME-GraphAU results: per-AU F1 bars beside the paper's, precision-recall curves, AU
co-occurrence heatmaps, the per-face AU graph, and the training curves.

Every figure function writes a PNG and, next to it, the CSV of the numbers it draws (same name,
``.csv``), and returns their paths ``{"png": Path, "csv": Path}``. Drawing uses matplotlib's Agg
canvas directly (``matplotlib.figure.Figure``), so importing or calling this module never changes
pyplot's global backend and needs no display. Numbers are written with ``repr`` precision, so a
CSV reads back exactly what was passed in.

Public API: plot_f1_bars, plot_pr_curves, plot_cooccurrence, draw_au_graph, plot_curves,
paper_f1_series, format_f1_comparison.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from megraphau.analysis.relations import as_numpy, symmetrise

__all__ = ["draw_au_graph", "format_f1_comparison", "paper_f1_series", "plot_cooccurrence", "plot_curves",
           "plot_f1_bars", "plot_pr_curves"]

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_png: PathLike, dpi: int = 100) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    return out_png


def write_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """A CSV with a header; floats keep full precision, NaN is written as 'nan', None as ''."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else v
                             for v in row])
    return path


def _check_lengths(au_names: Sequence[str], series: Mapping[str, Sequence], what: str) -> dict[str, np.ndarray]:
    out = {}
    for name, values in series.items():
        arr = as_numpy(values, dtype=np.float64).reshape(-1)
        if arr.size != len(au_names):
            raise ValueError(f"{what}[{name!r}]: {arr.size} values for {len(au_names)} AUs")
        out[str(name)] = arr
    return out


def _tick_rotation(num_labels: int) -> int:
    return 0 if num_labels <= 15 else 90


# --------------------------------------------------------------------------------------------
# paper numbers (read from the dataset configs' optional `paper_f1` key)
# --------------------------------------------------------------------------------------------
def paper_f1_series(dataset_config: Mapping, prefix: str = "paper ") -> dict[str, list[float]]:
    """The paper's per-AU F1 (%) of a dataset config (``paper_f1: {backbone: [per-AU F1]}``, in
    au_names order) as {"paper ResNet-50": [...]}, ready for plot_f1_bars(paper=...). {} when the
    config has none (SYNTH, OpenGraphAU)."""
    table = dataset_config.get("paper_f1") or {}
    names = list(dataset_config.get("au_names") or [])
    series = {}
    for backbone, values in table.items():
        if names and len(values) != len(names):
            raise ValueError(f"dataset config {dataset_config.get('name')!r}: paper_f1[{backbone!r}] has "
                             f"{len(values)} values for {len(names)} AUs")
        series[f"{prefix}{backbone}"] = [float(v) for v in values]
    return series


def format_f1_comparison(au_names: Sequence[str], f1: Sequence[float], paper: Mapping[str, Sequence[float]],
                         ours: str = "ours") -> str:
    """A Markdown table: per-AU F1 (%) of ours, each paper series and ours minus it, plus Avg."""
    f1_arr = as_numpy(f1, dtype=np.float64)
    papers = _check_lengths(au_names, paper, "paper")
    header = ["AU", ours] + [c for name in papers for c in (name, f"{ours} - {name}")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(name, f1_arr[k], [v[k] for v in papers.values()]) for k, name in enumerate(au_names)]
    rows.append(("Avg", f1_arr.mean(), [v.mean() for v in papers.values()]))
    for name, value, refs in rows:
        cells = [name, f"{value:.1f}"] + [c for ref in refs for c in (f"{ref:.1f}", f"{value - ref:+.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# per-AU F1 bars
# --------------------------------------------------------------------------------------------
def draw_grouped_bars(ax, group_names: Sequence[str], series: Mapping[str, np.ndarray], colors: Sequence,
                      means: Mapping[str, float], ylabel: str = "F1 (%)") -> None:
    """Grouped bars on ax: one group per name, one bar per series (NaN: no bar); each series'
    legend entry ends with "(mean M)" from means."""
    n_series = max(1, len(series))
    width = 0.8 / n_series
    x = np.arange(len(group_names))
    for k, ((label, values), color) in enumerate(zip(series.items(), colors)):
        mean = means[label]
        ax.bar(x - 0.4 + width * (k + 0.5), np.nan_to_num(values, nan=0.0), width * 0.95, color=color,
               label=f"{label} (mean {mean:.1f})", edgecolor="none")
    ax.set_xticks(x)
    ax.set_xticklabels(group_names, rotation=_tick_rotation(len(group_names)))
    ax.set_xlim(-0.6, len(group_names) - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def series_colors(num_folds: int, num_means: int, num_papers: int) -> list:
    """Blues for folds, a dark blue for their mean, oranges/reds for the paper's numbers."""
    import matplotlib

    blues, reds = matplotlib.colormaps["Blues"], matplotlib.colormaps["Oranges"]
    folds = [blues(0.55 if num_folds == 1 else 0.3 + 0.3 * k / (num_folds - 1)) for k in range(num_folds)]
    means = ["#08306b"] * num_means
    papers = [reds(0.55 + 0.35 * k / max(1, num_papers - 1)) for k in range(num_papers)]
    return folds + means + papers


def plot_f1_bars(au_names: Sequence[str], per_fold_f1: Mapping[str, Sequence[float]], out_png: PathLike,
                 paper: Optional[Mapping[str, Sequence[float]]] = None, title: Optional[str] = None) -> dict:
    """Grouped per-AU F1 (%) bars: one bar per fold, their mean (when several folds), and the
    paper's per-AU numbers beside them; a last "Avg" group holds each series' mean over the AUs,
    which the legend repeats. Width grows with the number of AUs; labels turn vertical above 15.

    per_fold_f1: {"fold 1": [F1 per AU, %], ...} (test.py's results.json "f1" / per_fold);
    paper: {"paper ResNet-50": [...]} (see paper_f1_series), or None.
    CSV: one row per AU and an "Avg" row; one column per series as drawn.
    """
    if not per_fold_f1:
        raise ValueError("per_fold_f1: no fold given")
    folds = _check_lengths(au_names, per_fold_f1, "per_fold_f1")
    papers = _check_lengths(au_names, paper or {}, "paper")
    if papers and max(np.nanmax(v) for v in folds.values()) <= 1.0 < max(np.nanmax(v) for v in papers.values()):
        raise ValueError("per_fold_f1 looks like fractions in [0, 1] but the paper's numbers are percentages: "
                         "pass 100 * F1")
    series = dict(folds)
    if len(folds) > 1:
        series[f"mean of {len(folds)} folds"] = np.mean(np.stack(list(folds.values())), axis=0)
    series.update(papers)
    groups = list(au_names) + ["Avg"]
    with_avg = {name: np.r_[values, np.nanmean(values)] for name, values in series.items()}

    width = min(40.0, max(7.0, 1.2 + len(groups) * (0.18 * len(series) + 0.15)))
    fig = new_figure(width, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = series_colors(len(folds), len(series) - len(folds) - len(papers), len(papers))
    draw_grouped_bars(ax, groups, with_avg, colors, {name: float(np.nanmean(v)) for name, v in series.items()})
    ax.axvline(len(au_names) - 0.5, color="0.5", lw=0.8, ls=":")
    top = max(np.nanmax(v) for v in with_avg.values())
    ax.set_ylim(0, max(1.0, top) * 1.22)
    ax.set_xlabel("action unit")
    ax.set_title(title or "per-AU F1 on the test folds")
    ax.legend(fontsize=8, ncol=min(6, len(series)), loc="upper left", frameon=False)
    fig.tight_layout()
    png = save_figure(fig, out_png)
    csv_path = write_csv(png.with_suffix(".csv"), ["au"] + list(with_avg),
                         [[g] + [with_avg[s][k] for s in with_avg] for k, g in enumerate(groups)])
    return {"png": png, "csv": csv_path}


# --------------------------------------------------------------------------------------------
# precision-recall curves
# --------------------------------------------------------------------------------------------
def _thin(curve: dict, max_points: int) -> np.ndarray:
    """Indices of at most max_points points of a curve, evenly spread, ends kept."""
    n = len(curve["recall"])
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def plot_pr_curves(au_names: Sequence[str], curves: Sequence[dict], out_png: PathLike, threshold: float = 0.5,
                   max_points: int = 2000, title: Optional[str] = None) -> dict:
    """Small multiples: one precision-recall panel per AU (relations.precision_recall_curves),
    a marker at the operating point p >= threshold, AP (%) and F1 there in the panel title, and
    the AU's positive rate (a random classifier's precision) dashed.

    CSV rows: au, point ("curve" for the drawn points, at most max_points per AU evenly thinned;
    "at_threshold" for the marker), threshold, recall, precision, average_precision (on the
    "at_threshold" row only).
    """
    if len(curves) != len(au_names):
        raise ValueError(f"curves: {len(curves)} curves for {len(au_names)} AUs")
    n = len(au_names)
    cols = min(n, 6 if n > 16 else 4)
    rows = math.ceil(n / cols)
    fig = new_figure(2.4 * cols, 2.3 * rows + 0.5)
    csv_rows = []
    for k, (name, curve) in enumerate(zip(au_names, curves)):
        ax = fig.add_subplot(rows, cols, k + 1)
        keep = _thin(curve, max_points)
        recall, precision = np.asarray(curve["recall"])[keep], np.asarray(curve["precision"])[keep]
        thresholds = np.r_[curve["thresholds"], np.nan][keep]  # the final (recall 0) point has none
        ax.step(recall, precision, where="post", color="C0", lw=1.4)
        if curve["n_known"]:
            ax.axhline(curve["n_positive"] / curve["n_known"], color="0.6", lw=0.8, ls="--")
        r_t, p_t = curve["recall_at_threshold"], curve["precision_at_threshold"]
        if np.isfinite(r_t) and np.isfinite(p_t):
            ax.plot([r_t], [p_t], "o", color="C3", ms=6, label=f"p >= {threshold:g}")
        ap = curve["average_precision"]
        ax.set_title(f"{name}  AP {100 * ap:.1f}  F1 {100 * curve['f1_at_threshold']:.1f}", fontsize=9)
        ax.set(xlim=(0, 1.02), ylim=(0, 1.05))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if k >= n - cols:
            ax.set_xlabel("recall", fontsize=8)
        csv_rows += [[name, "curve", t, r, p, None] for t, r, p in zip(thresholds, recall, precision)]
        csv_rows.append([name, "at_threshold", float(threshold), r_t, p_t, ap])
    fig.suptitle(title or f"precision-recall per AU (dot: p >= {threshold:g}; dashed: positive rate)",
                 fontsize=11)
    fig.tight_layout()
    png = save_figure(fig, out_png)
    csv_path = write_csv(png.with_suffix(".csv"),
                         ["au", "point", "threshold", "recall", "precision", "average_precision"], csv_rows)
    return {"png": png, "csv": csv_path}


# --------------------------------------------------------------------------------------------
# co-occurrence heatmaps
# --------------------------------------------------------------------------------------------
def plot_cooccurrence(au_names: Sequence[str], matrices: Mapping[str, np.ndarray], out_png: PathLike,
                      title: Optional[str] = None, vmin: float = 0.0, vmax: Optional[float] = None,
                      value_label: str = "P(AU i and AU j)") -> dict:
    """Side-by-side heatmaps of (N, N) AU-pair matrices (row = AU i, column = AU j), e.g.
    {"ground truth": cooc["both"], "model (edges)": mean["p_both"], "predicted AUs":
    predicted["both"]}, on one colour scale (vmin..vmax) with one colour bar; the values are
    printed in the cells when N <= 15; NaN cells are grey. vmax None: the largest value of the
    matrices rounded up to 0.05 (joint probabilities rarely pass 0.6, and a 0..1 scale would
    leave most of the colour map unused).

    CSV rows: matrix, au_i, au_j, value. Returns {"png", "csv", "vmax" (the scale's top)}.
    """
    if not matrices:
        raise ValueError("matrices: nothing to draw")
    n = len(au_names)
    mats = {}
    for name, m in matrices.items():
        arr = as_numpy(m, dtype=np.float64)
        if arr.shape != (n, n):
            raise ValueError(f"matrices[{name!r}]: expected ({n}, {n}) for {n} AUs, got {arr.shape}")
        mats[str(name)] = arr
    if vmax is None:
        finite = np.concatenate([a[np.isfinite(a)] for a in mats.values()])
        top = float(finite.max()) if finite.size else 1.0
        vmax = max(vmin + 0.05, math.ceil(round(top / 0.05, 6)) * 0.05)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    cell = 0.55 if n <= 15 else 0.2
    side = max(3.0, 1.2 + cell * n)
    fig = new_figure(side * len(mats) + 1.0, side + 0.6)
    axes = [fig.add_subplot(1, len(mats), k + 1) for k in range(len(mats))]
    image = None
    for ax, (name, arr) in zip(axes, mats.items()):
        image = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(au_names, rotation=90, fontsize=7 if n > 15 else 8)
        ax.set_yticklabels(au_names, fontsize=7 if n > 15 else 8)
        ax.set_xlabel("AU j (column)")
        ax.set_ylabel("AU i (row)")
        ax.set_title(name, fontsize=10)
        if n <= 15:
            size = 8 if n <= 10 else 7
            for i in range(n):
                for j in range(n):
                    if np.isfinite(arr[i, j]):
                        light = (arr[i, j] - vmin) / (vmax - vmin) > 0.6  # dark text on yellow
                        ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=size,
                                color="black" if light else "white")
    fig.suptitle(title or "AU co-occurrence (row i, column j)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    bar_ax = fig.add_axes((0.94, 0.18, 0.015, 0.64))
    fig.colorbar(image, cax=bar_ax, label=value_label)
    png = save_figure(fig, out_png)
    csv_path = write_csv(png.with_suffix(".csv"), ["matrix", "au_i", "au_j", "value"],
                         [[name, au_names[i], au_names[j], arr[i, j]]
                          for name, arr in mats.items() for i in range(n) for j in range(n)])
    return {"png": png, "csv": csv_path, "vmax": vmax}


# --------------------------------------------------------------------------------------------
# the per-face AU graph
# --------------------------------------------------------------------------------------------
def select_edges(strength: np.ndarray, min_strength: float, top_k: Optional[int]) -> list[tuple[int, int]]:
    """Pairs i < j with strength >= min_strength, the top_k strongest of them, strongest first."""
    n = strength.shape[0]
    i, j = np.triu_indices(n, k=1)
    values = strength[i, j]
    order = np.argsort(-values, kind="stable")
    chosen = [(int(i[k]), int(j[k])) for k in order if values[k] >= min_strength]
    return chosen if top_k is None else chosen[:top_k]


def draw_au_graph(au_names: Sequence[str], probs: Sequence[float], p_both: Optional[np.ndarray] = None,
                  out_png: Optional[PathLike] = None, title: Optional[str] = None, threshold: float = 0.5,
                  min_strength: float = 0.2, top_k: Optional[int] = None, dpi: int = 100,
                  write_numbers: bool = True) -> dict:
    """The AU graph of one face: AUs on a circle, each node coloured by its probability (colour
    bar; a thick black ring when p >= threshold, i.e. predicted present), and an edge for each
    strong pair, its width and opacity growing with the predicted co-occurrence P(both),
    symmetrised as (p_ij + p_ji) / 2. Only pairs with P(both) >= min_strength are drawn, at most
    top_k (default N) of them, so the picture stays readable for N = 8, 12, 27.

    probs (N,); p_both (N, N) from relations.pair_probabilities(edge_logits[b])["p_both"], or None
    (stage 1 / OpenGraphAU: nodes only). Returns {"rgb": (H, W, 3) uint8, "bgr": the same for
    OpenCV, "png": Path or None, "csv": Path or None}; the PNG (and, with write_numbers, its
    CSV: kind (node/edge), au_i, au_j, value, drawn) only when out_png is given.
    """
    p = as_numpy(probs, dtype=np.float64).reshape(-1)
    n = len(au_names)
    if p.size != n:
        raise ValueError(f"probs: {p.size} values for {n} AUs")
    strength = None
    if p_both is not None:
        p_both = as_numpy(p_both, dtype=np.float64)
        if p_both.shape != (n, n):
            raise ValueError(f"p_both: expected ({n}, {n}) for {n} AUs, got {p_both.shape}")
        strength = symmetrise(p_both)
    import matplotlib
    from matplotlib.lines import Line2D

    side = 6.0 if n <= 12 else 7.5
    fig = new_figure(side + 0.9, side)
    ax = fig.add_axes((0.02, 0.02, 0.8, 0.88))
    angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n  # first AU at the top, clockwise
    x, y = np.cos(angles), np.sin(angles)
    edges = [] if strength is None else select_edges(strength, min_strength, n if top_k is None else top_k)
    edge_color = "#3b3b3b"
    for i, j in reversed(edges):  # strongest drawn last, on top
        s = float(np.clip(strength[i, j], 0, 1))
        ax.plot([x[i], x[j]], [y[i], y[j]], color=edge_color, lw=0.6 + 5.5 * s, alpha=0.15 + 0.8 * s,
                solid_capstyle="round", zorder=1)
    node_size = 700 if n <= 12 else 380 if n <= 20 else 260
    cmap = matplotlib.colormaps["viridis"]
    present = p >= threshold
    nodes = ax.scatter(x, y, s=node_size, c=p, cmap=cmap, vmin=0, vmax=1, zorder=3,
                       edgecolors=np.where(present, "black", "0.6"), linewidths=np.where(present, 2.6, 0.8))
    font = 10 if n <= 12 else 8
    for k, name in enumerate(au_names):
        cx, cy = np.cos(angles[k]), np.sin(angles[k])
        weight = "bold" if present[k] else "normal"
        if n <= 16:  # horizontal two-line labels around the circle
            ha = "left" if cx > 0.25 else "right" if cx < -0.25 else "center"
            va = "bottom" if cy > 0.25 else "top" if cy < -0.25 else "center"
            ax.text(1.16 * cx, 1.16 * cy, f"{name}\n{p[k]:.2f}", ha=ha, va=va, fontsize=font,
                    fontweight=weight, linespacing=0.95, zorder=4)
        else:  # many AUs: one-line labels along the radius, so neighbours do not overlap
            degrees = np.degrees(angles[k]) % 360
            left_side = 90 < degrees < 270
            ax.text(1.1 * cx, 1.1 * cy, f"{name} {p[k]:.2f}", rotation=degrees - 180 if left_side else degrees,
                    rotation_mode="anchor", ha="right" if left_side else "left", va="center", fontsize=font,
                    fontweight=weight, zorder=4)
    ax.set_xlim(-1.62, 1.62)
    ax.set_ylim(-1.55, 1.55)
    ax.set_aspect("equal")
    ax.axis("off")
    bar_ax = fig.add_axes((0.86, 0.2, 0.03, 0.6))
    fig.colorbar(nodes, cax=bar_ax, label="AU probability (ring: present)")
    if strength is not None:
        handles = [Line2D([], [], color=edge_color, lw=0.6 + 5.5 * s, alpha=0.15 + 0.8 * s, label=f"{s:.2f}")
                   for s in (0.25, 0.5, 1.0)]
        ax.legend(handles=handles, title="P(both)", loc="lower left", fontsize=7, title_fontsize=8, frameon=False)
        total = n * (n - 1) // 2
        subtitle = f"{len(edges)} of {total} pairs drawn (P(both) >= {min_strength:g}, strongest first)"
    else:
        subtitle = "no edge logits: nodes only"
    fig.suptitle(title or "AU relation graph", fontsize=12, y=0.985)
    fig.text(0.43, 0.925, subtitle, ha="center", fontsize=8, color="0.3")

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    out = {"rgb": rgb, "bgr": np.ascontiguousarray(rgb[..., ::-1]), "png": None, "csv": None}
    if out_png is not None:
        out["png"] = save_figure(fig, out_png, dpi=dpi)
        if write_numbers:
            drawn = set(edges)
            rows = [["node", name, "", p[k], int(present[k])] for k, name in enumerate(au_names)]
            if strength is not None:
                rows += [["edge", au_names[i], au_names[j], strength[i, j], int((i, j) in drawn)]
                         for i in range(n) for j in range(i + 1, n)]
            out["csv"] = write_csv(out["png"].with_suffix(".csv"), ["kind", "au_i", "au_j", "value", "drawn"], rows)
    return out


# --------------------------------------------------------------------------------------------
# training curves (train_stage1.plot_curves, moved here unchanged)
# --------------------------------------------------------------------------------------------
def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    evaluated = [h for h in history if h.get("mean_f1") not in (None, "")]
    ax2.plot([h["epoch"] for h in evaluated], [100 * h["mean_f1"] for h in evaluated], "o-", color="C1")
    ax2.set(xlabel="epoch", ylabel="mean F1 (%)", title="test fold mean F1")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
