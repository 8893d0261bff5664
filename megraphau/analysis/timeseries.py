"""One person's AU probabilities over the time of a video.

``plot_au_timeseries`` draws (T,) times and (T, N) probabilities: one strip per AU (its
probability 0..1 filled under the line, the decision threshold dashed) for up to
``STRIPS_UP_TO`` AUs, a heatmap (AU rows, time columns) for more (OpenGraphAU's 41 AUs would make
a very tall stack of strips). Frames where the person was not seen (a step in time over 1.5 times
the usual frame step) are left blank rather than bridged by a line. ``plot_track_csv`` draws a
person CSV of megraphau/inference/tracking.py (``tracks/person_<id>.csv``).

As in plots.py, a figure goes to a PNG with, next to it, the CSV of the numbers it draws (same
name, ``.csv``), and the functions return ``{"png": Path, "csv": Path}``; drawing uses
matplotlib's Agg canvas (plots.new_figure), never pyplot's global backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from megraphau.analysis.plots import new_figure, save_figure, write_csv
from megraphau.inference.tracking import read_track_csv

__all__ = ["STRIPS_UP_TO", "plot_au_timeseries", "plot_track_csv", "with_gaps"]

PathLike = Union[str, Path]

#: Up to this many AUs the figure has one strip per AU; more make a heatmap.
STRIPS_UP_TO = 16


def with_gaps(x: np.ndarray, values: np.ndarray, factor: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """x (T,) and values (T, N) with NaN rows inserted wherever x steps by more than ``factor``
    times its median step u, so that lines and heatmaps break there instead of bridging frames
    where the person was not seen: one row u after the last point before the gap and one u
    before the first after it (one in the middle when those meet), so that a heatmap's cells
    next to the gap keep their usual width."""
    if len(x) < 3:
        return x, values
    x = x.astype(np.float64)
    values = values.astype(np.float64)
    steps = np.diff(x)
    usual = float(np.median(steps))
    gaps = np.flatnonzero(steps > factor * usual) if usual > 0 else np.zeros(0, np.int64)
    if not len(gaps):
        return x, values
    xs, vs, start = [], [], 0
    nan_row = np.full((1,) + values.shape[1:], np.nan)
    for g in gaps:
        before, after = x[g], x[g + 1]
        middle = (before + after) / 2.0
        fill = sorted({min(before + usual, middle), max(after - usual, middle)})
        xs += [x[start:g + 1], np.array(fill)]
        vs += [values[start:g + 1]] + [nan_row] * len(fill)
        start = g + 1
    xs.append(x[start:])
    vs.append(values[start:])
    return np.concatenate(xs), np.concatenate(vs, axis=0)


def _edges(x: np.ndarray) -> np.ndarray:
    """(T + 1,) cell edges around the (T,) increasing x (for pcolormesh)."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2.0
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def plot_au_timeseries(x: Sequence[float], probs: np.ndarray, au_names: Sequence[str], out_png: PathLike,
                       title: Optional[str] = None, threshold: Optional[float] = 0.5, x_label: str = "time (s)",
                       style: str = "auto", write_numbers: bool = True) -> dict:
    """AU probabilities (T, N) over x (T,) (seconds or frame numbers, increasing).

    style: "strips" (one small plot per AU), "heatmap", or "auto" (strips up to STRIPS_UP_TO AUs);
    threshold: drawn dashed on the strips (None: not drawn); write_numbers: also write the CSV
    (x, then one column per AU) next to the PNG (False when the numbers are already in a file,
    e.g. a person CSV: "csv" is then None).
    """
    x = np.asarray(x, np.float64).reshape(-1)
    probs = np.asarray(probs, np.float64)
    names = [str(n) for n in au_names]
    if probs.ndim != 2 or probs.shape != (len(x), len(names)):
        raise ValueError(f"probs: expected ({len(x)}, {len(names)}) for {len(x)} times and {len(names)} AUs, "
                         f"got {probs.shape}")
    if len(x) == 0 or not names:
        raise ValueError("nothing to draw: no times or no AUs")
    if not np.isfinite(x).all() or (np.diff(x) <= 0).any():
        raise ValueError("x must be finite and increasing")
    if style == "auto":
        style = "strips" if len(names) <= STRIPS_UP_TO else "heatmap"
    if style not in ("strips", "heatmap"):
        raise ValueError(f"style must be 'strips', 'heatmap' or 'auto', got {style!r}")
    gx, gp = with_gaps(x, probs)
    fig = _strips(gx, gp, names, threshold, x_label) if style == "strips" else _heatmap(gx, gp, names, x_label)
    fig.suptitle(title or "AU probabilities over time", fontsize=11)
    png = save_figure(fig, out_png)
    csv_path = None
    if write_numbers:
        csv_path = write_csv(png.with_suffix(".csv"), ["x", *names], [[xi, *row] for xi, row in zip(x, probs)])
    return {"png": png, "csv": csv_path}


def _strips(x: np.ndarray, probs: np.ndarray, names: list, threshold: Optional[float], x_label: str):
    n = len(names)
    fig = new_figure(10.0, 1.0 + 0.55 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, name) in enumerate(zip(axes, names)):
        color = f"C{k % 10}"
        ax.fill_between(x, 0.0, probs[:, k], color=color, alpha=0.3, linewidth=0)
        ax.plot(x, probs[:, k], color=color, linewidth=1.0)
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linewidth=0.7, linestyle="--")
        ax.set_ylim(0.0, 1.0)
        ax.set_yticks([0.0, 1.0])
        ax.tick_params(labelsize=7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(x_label)
    if len(x) > 1:
        axes[-1].set_xlim(x[0], x[-1])
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.subplots_adjust(hspace=0.15)
    return fig


def _heatmap(x: np.ndarray, probs: np.ndarray, names: list, x_label: str):
    import matplotlib  # for the colour map only (no pyplot)

    n = len(names)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="1.0")  # gaps: white
    fig = new_figure(10.0, max(3.0, 1.2 + 0.2 * n))
    ax = fig.add_subplot(1, 1, 1)
    # pcolormesh: (N, T) cells between the (T + 1,) x edges and the (N + 1,) AU-row edges.
    mesh = ax.pcolormesh(_edges(x), np.arange(n + 1) - 0.5, np.ma.masked_invalid(probs.T), cmap=cmap,
                         vmin=0.0, vmax=1.0, shading="flat")
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7 if n > 15 else 8)
    ax.invert_yaxis()  # the first AU on top
    ax.set_xlabel(x_label)
    fig.colorbar(mesh, ax=ax, label="probability", fraction=0.03, pad=0.01)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def plot_track_csv(csv_path: PathLike, out_png: Optional[PathLike] = None, title: Optional[str] = None,
                   threshold: Optional[float] = 0.5, style: str = "auto") -> dict:
    """The figure of one person CSV (``tracks/person_<id>.csv``), against time when every row has
    one, else against the frame number. out_png default: the CSV's name with ``.png``. Writes no
    second CSV: "csv" in the result is the person CSV itself."""
    csv_path = Path(csv_path)
    frames, times, names, probs = read_track_csv(csv_path)
    if np.isfinite(times).all() and len(times):
        x, x_label = times, "time (s)"
    else:
        x, x_label = frames.astype(np.float64), "frame"
    out_png = csv_path.with_suffix(".png") if out_png is None else Path(out_png)
    result = plot_au_timeseries(x, probs, names, out_png, title=title or csv_path.stem.replace("_", " "),
                                threshold=threshold, x_label=x_label, style=style, write_numbers=False)
    return {"png": result["png"], "csv": csv_path}
