"""What the AU relation graph learned: pair probabilities from stage-2 edge logits, AU
co-occurrence from labels or predictions, per-AU precision-recall curves, and agreement figures.

Numpy in, numpy out (torch tensors are accepted anywhere an array is). Conventions:

* N AUs; an (N, N) matrix is indexed [i, j] = row i, column j = the ordered AU pair (i, j).
* Stage-2 edge logits (B, N*N, 4): edge p = i*N + j; class 2*a_i + a_j, i.e.
  0 neither, 1 only j, 2 only i, 3 both (the classes of ``dataset.relations_from_labels``).
* Labels are 0/1 with -1 = unknown; a frame counts for the pair (i, j) only when both AUs are
  known there. Occurrence of a prediction is p >= threshold (as in ``metrics.compute_au_metrics``).
* Rates whose denominator is 0 (no frame to count) are NaN, not 0: "undefined", not "never".

Public API: pair_probabilities, PairProbabilityMeter, mean_pair_probabilities,
cooccurrence_from_labels, predicted_cooccurrence, excess_cooccurrence, symmetrise,
precision_recall_curves, correlation_with, permutation_p_value.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np

__all__ = ["PAIR_CLASS_NAMES", "PairProbabilityMeter", "as_numpy", "correlation_with", "cooccurrence_from_labels",
           "excess_cooccurrence", "mean_pair_probabilities", "pair_probabilities", "permutation_p_value",
           "precision_recall_curves", "predicted_cooccurrence", "symmetrise"]

# key of pair_probabilities' output for each edge class 2*a_i + a_j
PAIR_CLASS_NAMES = ("p_neither", "p_j_without_i", "p_i_without_j", "p_both")

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # noqa: F821 - torch is optional here


def as_numpy(x: ArrayLike, dtype=None) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device, any dtype) or a list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()  # no numpy bfloat16; float16 to float32 for exact sums
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _num_aus_from_edges(num_edges: int, what: str) -> int:
    n = int(round(num_edges ** 0.5))
    if n * n != num_edges:
        raise ValueError(f"{what}: {num_edges} edges is not N*N for any N")
    return n


# --------------------------------------------------------------------------------------------
# pair probabilities from edge logits
# --------------------------------------------------------------------------------------------
def pair_probabilities(edge_logits: ArrayLike) -> dict[str, np.ndarray]:
    """Softmax of stage-2 edge logits, as one (.., N, N) matrix per co-occurrence pattern.

    edge_logits: (N*N, 4) for one face or (B, N*N, 4) for a batch. Returns float64 arrays of
    shape (N, N) or (B, N, N), row i and column j being the ordered AU pair (i, j):

    * ``p_both``        P(a_i = 1, a_j = 1)  (class 3)
    * ``p_i_without_j`` P(a_i = 1, a_j = 0)  (class 2)
    * ``p_j_without_i`` P(a_i = 0, a_j = 1)  (class 1)
    * ``p_neither``     P(a_i = 0, a_j = 0)  (class 0)

    The four sum to 1 at every (i, j). The edge head predicts (i, j) and (j, i) separately, so
    p_both is not exactly symmetric; see :func:`symmetrise`.
    """
    logits = as_numpy(edge_logits, dtype=np.float64)
    if logits.ndim not in (2, 3) or logits.shape[-1] != 4:
        raise ValueError(f"edge_logits: expected (N*N, 4) or (B, N*N, 4), got {logits.shape}")
    n = _num_aus_from_edges(logits.shape[-2], "edge_logits")
    shifted = logits - logits.max(axis=-1, keepdims=True)  # stable softmax
    weights = np.exp(shifted)
    probs = weights / weights.sum(axis=-1, keepdims=True)  # (.., N*N, 4)
    probs = probs.reshape(*logits.shape[:-2], n, n, 4)  # (.., N, N, 4): [i, j] = edge i*N + j
    return {name: probs[..., k] for k, name in enumerate(PAIR_CLASS_NAMES)}


def _known_pairs(labels: Optional[np.ndarray], batch: int, n: int) -> np.ndarray:
    """(B, N, N) float mask of the pairs whose two AUs are both known (all ones without labels)."""
    if labels is None:
        return np.ones((batch, n, n))
    known = (labels >= 0).astype(np.float64)  # (B, N)
    return known[:, :, None] * known[:, None, :]  # (B, N, N)


class PairProbabilityMeter:
    """Running mean over frames of the pair probabilities of stage-2 edge logits.

    ``update(edge_logits (B, N*N, 4), labels (B, N) or None)`` per batch; ``result()`` at the end.
    With labels, frame b counts for the pair (i, j) only when both AUs are known in it, so the
    mean is over the same frames as :func:`cooccurrence_from_labels`. ``sums`` (4, N, N) (classes
    in PAIR_CLASS_NAMES order) and ``counts`` (N, N) are plain arrays: under DDP, all-reduce
    both (summing) before ``result()``.
    """

    def __init__(self) -> None:
        self.sums: Optional[np.ndarray] = None  # (4, N, N)
        self.counts: Optional[np.ndarray] = None  # (N, N)

    def update(self, edge_logits: ArrayLike, labels: Optional[ArrayLike] = None) -> None:
        probs = pair_probabilities(edge_logits)
        p_both = probs["p_both"]
        if p_both.ndim == 2:  # one face
            probs = {k: v[None] for k, v in probs.items()}
            p_both = probs["p_both"]
        batch, n = p_both.shape[0], p_both.shape[-1]
        y = None
        if labels is not None:
            y = as_numpy(labels)
            if y.size != batch * n:
                raise ValueError(f"labels: expected ({batch}, {n}) for {batch} frames of {n} AUs, got {y.shape}")
            y = y.reshape(batch, n)
        weight = _known_pairs(y, batch, n)  # (B, N, N)
        batch_sums = np.stack([(probs[k] * weight).sum(0) for k in PAIR_CLASS_NAMES])  # (4, N, N)
        if self.sums is None:
            self.sums, self.counts = np.zeros_like(batch_sums), np.zeros((n, n))
        elif self.sums.shape != batch_sums.shape:
            raise ValueError(f"edge_logits: {n} AUs here but {self.sums.shape[-1]} in earlier batches")
        self.sums += batch_sums
        self.counts += weight.sum(0)

    def result(self) -> dict[str, np.ndarray]:
        """Mean p_both, p_i_without_j, p_j_without_i, p_neither (N, N) over the counted frames,
        ``given_i`` = mean p_both / (mean p_both + mean p_i_without_j), the model's
        P(a_j = 1 | a_i = 1), and ``n_frames`` (N, N), the frames counted per pair. NaN where
        nothing was counted."""
        if self.sums is None:
            raise ValueError("PairProbabilityMeter: no edge logits given (update was never called)")
        out = {name: _divide(self.sums[k], self.counts) for k, name in enumerate(PAIR_CLASS_NAMES)}
        out["given_i"] = _divide(self.sums[3], self.sums[3] + self.sums[2])
        out["n_frames"] = self.counts.round().astype(np.int64)
        return out


def mean_pair_probabilities(edge_logits: Union[ArrayLike, Iterable[ArrayLike]],
                            labels: Optional[ArrayLike] = None) -> dict[str, np.ndarray]:
    """The model's predicted co-occurrence over a test fold: the mean over frames of
    :func:`pair_probabilities` (see :meth:`PairProbabilityMeter.result` for the keys).

    edge_logits: one (M, N*N, 4) array/tensor, or an iterable of (B_k, N*N, 4) batches in frame
    order. labels (M, N) optional: frames count for a pair only where both AUs are known.
    """
    batches = [edge_logits] if hasattr(edge_logits, "shape") else list(edge_logits)
    sizes = [as_numpy(b).shape[0] if as_numpy(b).ndim == 3 else 1 for b in batches]  # frames per batch
    y = None if labels is None else as_numpy(labels)
    if y is not None and len(y) != sum(sizes):
        raise ValueError(f"labels: {len(y)} rows but the edge logits hold {sum(sizes)} frames")
    meter, start = PairProbabilityMeter(), 0
    for batch, size in zip(batches, sizes):
        meter.update(batch, None if y is None else y[start:start + size])
        start += size
    return meter.result()


# --------------------------------------------------------------------------------------------
# co-occurrence from labels / thresholded predictions
# --------------------------------------------------------------------------------------------
def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def cooccurrence_from_labels(labels: ArrayLike) -> dict[str, np.ndarray]:
    """Co-occurrence of every ordered AU pair in 0/1/-1 labels (M, N), over the frames where both
    AUs are known. Vectorised: each count is one matrix product of 0/1 masks.

    Counts, int64 (N, N): ``n_known`` (frames with a_i and a_j known), ``n_both``,
    ``n_i_without_j`` (a_i = 1, a_j = 0), ``n_j_without_i``, ``n_neither``.
    Rates, float64 (N, N), count / n_known: ``both`` = P(a_i = 1, a_j = 1), ``i_without_j``,
    ``j_without_i``, ``neither``; and ``given_i`` = P(a_j = 1 | a_i = 1) = n_both / (n_both +
    n_i_without_j). ``prevalence`` (N,) = P(a_i = 1) over the frames where a_i is known (the
    diagonal of ``both``). NaN where the denominator is 0.
    """
    y = as_numpy(labels)
    if y.ndim != 2:
        raise ValueError(f"labels: expected (M, N) 0/1/-1 labels, got shape {y.shape}")
    bad = ~np.isin(y, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"labels: values must be 0, 1 or -1 (unknown), found {np.unique(y[bad])[:5].tolist()}")
    present = (y == 1).astype(np.float64)  # (M, N)
    absent = (y == 0).astype(np.float64)  # (M, N)
    known = present + absent  # (M, N)

    def count(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (N, N): frames with a[:, i] and b[:, j]
        return np.rint(a.T @ b).astype(np.int64)  # exact: float64 counts are exact below 2**53

    out = {"n_known": count(known, known), "n_both": count(present, present),
           "n_i_without_j": count(present, absent), "n_j_without_i": count(absent, present),
           "n_neither": count(absent, absent)}
    for key in ("both", "i_without_j", "j_without_i", "neither"):
        out[key] = _divide(out[f"n_{key}"], out["n_known"])
    out["given_i"] = _divide(out["n_both"], out["n_both"] + out["n_i_without_j"])
    out["prevalence"] = _divide(present.sum(0), known.sum(0))
    return out


def predicted_cooccurrence(probs: ArrayLike, threshold: float = 0.5,
                           labels: Optional[ArrayLike] = None) -> dict[str, np.ndarray]:
    """:func:`cooccurrence_from_labels` of the thresholded predictions (p >= threshold) of probs
    (M, N). With ground-truth labels (M, N), entries unknown there are left out here too, so the
    result counts the same frames as the ground truth's co-occurrence."""
    p = as_numpy(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs: expected (M, N) probabilities, got shape {p.shape}")
    predicted = (p >= threshold).astype(np.int64)  # (M, N)
    if labels is not None:
        y = as_numpy(labels)
        if y.shape != p.shape:
            raise ValueError(f"labels {y.shape} and probs {p.shape} must have the same shape (M, N)")
        predicted[y < 0] = -1
    return cooccurrence_from_labels(predicted)


def excess_cooccurrence(both: np.ndarray, i_without_j: np.ndarray, j_without_i: np.ndarray) -> np.ndarray:
    """P(both) - P(a_i) P(a_j) (N, N): co-occurrence beyond what the two AUs' prevalences give
    when independent (> 0 together more often, < 0 exclusive). P(a_i) = both + i_without_j and
    P(a_j) = both + j_without_i, so it works on the rates of :func:`cooccurrence_from_labels`
    and on the model's mean pair probabilities alike."""
    both = np.asarray(both, dtype=np.float64)
    return both - (both + i_without_j) * (both + j_without_i)


def symmetrise(matrix: ArrayLike) -> np.ndarray:
    """(M + M^T) / 2 of an (.., N, N) matrix, e.g. the model's p_both, whose (i, j) and (j, i)
    entries come from two separately predicted edges."""
    m = as_numpy(matrix, dtype=np.float64)
    return (m + np.swapaxes(m, -1, -2)) / 2


# --------------------------------------------------------------------------------------------
# precision-recall curves
# --------------------------------------------------------------------------------------------
def _binary_pr_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, thresholds of one AU, in scikit-learn's precision_recall_curve layout
    (drop_intermediate=False): thresholds = the distinct scores ascending; precision[k] and
    recall[k] of predicting p >= thresholds[k]; a final point (recall 0, precision 1)."""
    order = np.argsort(scores, kind="mergesort")[::-1]  # descending score
    scores, truth = scores[order], truth[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # end of each tie group
    tps = np.cumsum(truth)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1) - tps
    precision = _divide(tps, tps + fps)
    precision[np.isnan(precision)] = 0.0
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return (np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], scores[last_of_value][::-1])


def precision_recall_curves(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> list[dict]:
    """Per-AU precision-recall curves over a test fold; -1 (unknown) frames are left out per AU.

    probs (M, N) in [0, 1], labels (M, N) 0/1/-1. Returns one dict per AU:

    * ``precision``, ``recall``, ``thresholds``: scikit-learn's precision_recall_curve
      (drop_intermediate=False) of that AU's known frames: recall descending to 0.
    * ``average_precision``: sum over the curve of (R_k - R_{k+1}) P_k, scikit-learn's
      average_precision_score; NaN when the AU has no positive known frame.
    * ``precision_at_threshold``, ``recall_at_threshold``, ``f1_at_threshold`` of p >= threshold
      (the operating point whose F1 the results report); precision NaN when nothing is predicted
      present, recall NaN without positives; F1 0 when TP + FP + FN = 0, like compute_au_metrics.
    * ``threshold``, ``n_known``, ``n_positive``.
    """
    p, y = as_numpy(probs, dtype=np.float64), as_numpy(labels)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must both be (M, N)")
    curves = []
    for au in range(p.shape[1]):
        known = y[:, au] >= 0
        scores, truth = p[known, au], (y[known, au] == 1).astype(np.int64)
        n_pos = int(truth.sum())
        if scores.size:
            precision, recall, thresholds = _binary_pr_curve(scores, truth)
        else:
            precision, recall, thresholds = np.ones(1), np.zeros(1), np.zeros(0)
        ap = float(max(0.0, -np.sum(np.diff(recall) * precision[:-1]))) if n_pos else float("nan")
        predicted = scores >= threshold
        tp = int((predicted & (truth == 1)).sum())
        fp, fn = int(predicted.sum()) - tp, n_pos - tp
        curves.append({
            "precision": precision, "recall": recall, "thresholds": thresholds, "average_precision": ap,
            "precision_at_threshold": tp / (tp + fp) if tp + fp else float("nan"),
            "recall_at_threshold": tp / n_pos if n_pos else float("nan"),
            "f1_at_threshold": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "threshold": float(threshold), "n_known": int(known.sum()), "n_positive": n_pos,
        })
    return curves


# --------------------------------------------------------------------------------------------
# agreement between two (N, N) matrices
# --------------------------------------------------------------------------------------------
def _off_diagonal_pairs(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The off-diagonal entries of two (N, N) matrices where both are finite."""
    if pred.ndim != 2 or pred.shape != truth.shape or pred.shape[0] != pred.shape[1]:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be (N, N)")
    keep = ~np.eye(pred.shape[0], dtype=bool) & np.isfinite(pred) & np.isfinite(truth)
    return pred[keep], truth[keep]


def correlation_with(pred: ArrayLike, truth: ArrayLike) -> float:
    """Pearson r between the off-diagonal entries of two (N, N) matrices (NaN entries skipped),
    e.g. the model's mean p_both against the ground truth's P(both). 1: same pattern up to scale
    and offset; about 0: unrelated (chance). NaN with fewer than 3 entries or a constant matrix."""
    a, b = _off_diagonal_pairs(as_numpy(pred, dtype=np.float64), as_numpy(truth, dtype=np.float64))
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def permutation_p_value(pred: ArrayLike, truth: ArrayLike, permutations: int = 2000, seed: int = 0) -> float:
    """How often a random relabelling of the AUs (the same permutation of pred's rows and
    columns) correlates with truth at least as well as pred does: a one-sided p-value for
    "pred follows truth's co-occurrence pattern more closely than chance". (k + 1) / (n + 1)."""
    p = as_numpy(pred, dtype=np.float64)
    t = as_numpy(truth, dtype=np.float64)
    observed = correlation_with(p, t)
    if not np.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        perm = rng.permutation(p.shape[0])
        r = correlation_with(p[np.ix_(perm, perm)], t)
        hits += bool(np.isfinite(r) and r >= observed)
    return (hits + 1) / (permutations + 1)
