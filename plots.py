"""Figures of ME-GraphAU runs (matplotlib, Agg backend selected inside each function so that
importing this module never needs a display).

- :func:`plot_curves`: training loss and test-fold mean F1 per epoch (a run's curves.png).
"""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> None:
    """curves.png: training loss and test-fold mean F1 (%) per epoch, from a run's history rows."""
    plt = _pyplot()
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
