"""Metrics of the AU occurrence task (Luo et al., IJCAI-ECAI 2022): per-AU F1 and accuracy over a
whole test fold, vectorised; the papers' per-AU table; the mean over folds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def compute_au_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """Per-AU F1 and accuracy over a whole test fold, vectorised.

    probs (M, N) in [0, 1]; labels (M, N) in {0, 1, -1} (-1 = unknown, left out).
    Occurrence is p >= threshold. F1_i = 2 TP / (2 TP + FP + FN) with TP/FP/FN summed over all
    frames; an AU with TP + FP + FN = 0 (never present, never predicted) gets F1 = 0, like
    scikit-learn's f1_score with zero_division=0. Accuracy = correct / known frames (0 when an AU
    has no known frame). These are OpenGraphAU's TP/TN/FP/FN rules (its utils.py statistics,
    calc_f1_score, calc_acc: frames labelled -1 count nowhere; 2PR/(P+R) with P, R from TP/FP/FN
    equals 2 TP / (2 TP + FP + FN), and 0 without true positives), and mean_f1 / mean_acc are its
    means over all N AUs (an AU without a known frame counts 0, as there).

    Returns {'f1': (N,), 'acc': (N,), 'mean_f1', 'mean_acc', 'coded': (N,) bool (the AU has a known
    frame), 'mean_f1_coded', 'mean_acc_coded' (the means over the coded AUs: on a hybrid set whose
    sources code only some AUs, the number that says how well the coded ones are learnt)}, in [0, 1].
    """
    p, y = _to_numpy(probs), _to_numpy(labels)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must both be (M, N)")
    known = y >= 0
    pred = p >= threshold
    pos = y == 1
    tp = (pred & pos).sum(0)
    fp = (pred & known & ~pos).sum(0)
    fn = (~pred & pos).sum(0)
    correct = ((pred == pos) & known).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(p.shape[1]), where=denom > 0)
    n_known = known.sum(0)
    acc = np.divide(correct, n_known, out=np.zeros(p.shape[1]), where=n_known > 0)
    coded = n_known > 0
    return {"f1": f1, "acc": acc, "mean_f1": float(f1.mean()), "mean_acc": float(acc.mean()), "coded": coded,
            "mean_f1_coded": float(f1[coded].mean()) if coded.any() else 0.0,
            "mean_acc_coded": float(acc[coded].mean()) if coded.any() else 0.0}


def all_positive_f1(labels) -> np.ndarray:
    """Per-AU F1 of the baseline that predicts every AU present in every frame (over the known
    frames): 2 r / (1 + r), r = the AU's positive rate; 0 for an AU without a known frame."""
    y = _to_numpy(labels)
    known = (y >= 0).sum(0)
    rate = np.divide((y == 1).sum(0), known, out=np.zeros(y.shape[1]), where=known > 0)
    return 2 * rate / (1 + rate)


def format_au_table(au_names: Sequence[str], f1, acc=None, title: str | None = None) -> str:
    """The paper's result table: one column per AU and 'Avg', F1 (and accuracy) in percent."""
    f1 = np.asarray(f1, dtype=float) * 100
    cols = list(au_names) + ["Avg"]
    width = max(6, max(len(c) for c in cols) + 1)
    rows = [("AU", cols), ("F1", [f"{v:.1f}" for v in f1] + [f"{f1.mean():.1f}"])]
    if acc is not None:
        acc = np.asarray(acc, dtype=float) * 100
        rows.append(("Acc", [f"{v:.1f}" for v in acc] + [f"{acc.mean():.1f}"]))
    lines = [title] if title else []
    for name, cells in rows:
        lines.append(f"{name:<4}|" + "".join(f"{c:>{width}}" for c in cells))
        if name == "AU":
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def average_folds(results: list[dict]) -> dict:
    """The papers' protocol: per-AU F1 / accuracy (percent) averaged over the folds' result dicts
    (see evaluation.evaluate_checkpoint); the per-fold dicts are kept under 'per_fold'."""
    f1 = np.mean([r["f1"] for r in results], axis=0)
    acc = np.mean([r["acc"] for r in results], axis=0)
    first = results[0]
    return {"dataset": first["dataset"], "fold": "all", "arc": first["arc"], "stage": first["stage"],
            "checkpoint": [r["checkpoint"] for r in results], "au_names": first["au_names"],
            "f1": [round(float(v), 4) for v in f1], "acc": [round(float(v), 4) for v in acc],
            "mean_f1": round(float(f1.mean()), 4), "mean_acc": round(float(acc.mean()), 4),
            "num_images": int(sum(r["num_images"] for r in results)), "threshold": first["threshold"],
            "per_fold": results}
