"""Testing checkpoints (test.py, and --evaluate of the training scripts): one checkpoint per fold
(evaluate_checkpoint), the folds averaged as the papers do (metrics.average_folds), results.json /
results.csv and the figures beside them (f1_bars, pr_curves_fold{k}, cooccurrence_fold{k}: PNG +
CSV; see fold_figures). Under torchrun every rank tests its share and every test image counts
exactly once (utils.gather_by_index; a stage-2 model's pair probabilities are summed over the
ranks, pair_meters.all_reduce_pair_meter)."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from megraphau import provenance, utils
from megraphau.analysis import plots
from megraphau.analysis.relations import (
    PairProbabilityMeter,
    cooccurrence_from_labels,
    correlation_with,
    excess_cooccurrence,
    permutation_p_value,
    precision_recall_curves,
    predicted_cooccurrence,
)
from megraphau.engine.checkpoints import checkpoint_for_fold, fold_of_file_name, warn_if_other_fold
from megraphau.engine.data import build_datasets, build_eval_loader, list_files_of_run, prepare_synth, split_name
from megraphau.engine.loop import predict
from megraphau.engine.metrics import average_folds, compute_au_metrics, format_au_table
from megraphau.model import has_edge_logits, load_model
from megraphau.utils import log

#: random AU relabellings behind the permutation p-values of results.json's "cooccurrence"
PERMUTATIONS = 2000


def agreement(pred: np.ndarray, truth: np.ndarray, permutations: int = PERMUTATIONS) -> dict:
    """Pearson r of two (N, N) matrices' off-diagonal entries and its permutation p-value."""
    def number(v: float):
        return None if not np.isfinite(v) else round(float(v), 6)

    return {"r": number(correlation_with(pred, truth)),
            "p_value": number(permutation_p_value(pred, truth, permutations))}


def fold_figures(out_dir: Path, fold: int | None, au_names: list, probs: np.ndarray, labels: np.ndarray,
                 threshold: float, pair_meter=None, label: str = "") -> dict:
    """The figures of one tested fold (fold None: the hybrid test split, named 'test') in out_dir
    (each PNG with the CSV of its numbers):
    pr_curves_fold{k}: per-AU precision-recall curves, the operating point p >= threshold marked;
    cooccurrence_fold{k}: the test fold's ground-truth P(AU i and AU j) beside the co-occurrence
    of the predicted AUs and, for stage 2 (pair_meter), the model's mean P(both) from its edge
    logits. Returns {"figures": [file names], "cooccurrence": {comparison: {"r", "p_value"}}}:
    Pearson r over the off-diagonal pairs, permutation p (small: closer than chance)."""
    files = []
    tag = split_name(fold)  # fold1 ... or test
    what = "test split" if fold is None else f"fold {fold}"
    curves = precision_recall_curves(probs, labels, threshold)
    pr = plots.plot_pr_curves(au_names, curves, out_dir / f"pr_curves_{tag}.png", threshold=threshold,
                              title=f"{label}{what}: precision-recall per AU, {len(labels)} test images "
                                    f"(dot: p >= {threshold:g}; dashed: positive rate)")
    files += [pr["png"].name, pr["csv"].name]

    truth = cooccurrence_from_labels(labels)
    predicted = predicted_cooccurrence(probs, threshold, labels)
    matrices = {"ground truth": truth["both"]}
    stats = {"predicted_aus_vs_truth": agreement(predicted["both"], truth["both"])}
    if pair_meter is not None:
        model = pair_meter.result()
        matrices["model: mean P(both) of the edges"] = model["p_both"]
        stats["model_p_both_vs_truth"] = agreement(model["p_both"], truth["both"])
        stats["model_excess_vs_truth"] = agreement(
            excess_cooccurrence(model["p_both"], model["p_i_without_j"], model["p_j_without_i"]),
            excess_cooccurrence(truth["both"], truth["i_without_j"], truth["j_without_i"]))
    matrices[f"predicted AUs (p >= {threshold:g})"] = predicted["both"]
    key = "model_p_both_vs_truth" if pair_meter is not None else "predicted_aus_vs_truth"
    r, p = stats[key]["r"], stats[key]["p_value"]
    versus = "model edges" if pair_meter is not None else "predicted AUs"
    cooc = plots.plot_cooccurrence(
        au_names, matrices, out_dir / f"cooccurrence_{tag}.png",
        title=f"{label}{what}: P(AU i and AU j), {len(labels)} test images; {versus} vs truth: "
              f"r = {'nan' if r is None else f'{r:.2f}'}, permutation p = {'nan' if p is None else f'{p:.3g}'}")
    files += [cooc["png"].name, cooc["csv"].name]
    stats["permutations"] = PERMUTATIONS
    return {"figures": files, "cooccurrence": stats}


def evaluate_checkpoint(args, fold: int | None, path: str, figures_dir: Path | None = None) -> dict:
    """Test one checkpoint on one fold (None: the hybrid protocol's test split); returns the
    result dict (percentages; per-AU and mean F1 and accuracy, and the means over the AUs the
    tested images code).

    figures_dir: also draw the fold's figures there (fold_figures; rank 0), adding "figures"
    and "cooccurrence" to the result. For a stage-2 ME-GraphAU model the prediction then also
    accumulates the mean pair probabilities of its edge logits (predict's pair_meter)."""
    loaded = load_model(path, arc=args.arc, stage=getattr(args, "stage", None), num_classes=args.num_classes,
                        neighbor_num=args.neighbor_num, metric=getattr(args, "metric", None))
    facts = loaded.facts
    saved_fold = facts["fold"] if facts["fold"] is not None else fold_of_file_name(path) if fold is not None \
        else None
    warn_if_other_fold(path, saved_fold, fold, testing=True)
    model = loaded.model.to(args.device)
    test_ds = build_datasets(args, stage=1, splits=("test",), fold=fold)["test"]
    loader = build_eval_loader(test_ds, args)
    edges = has_edge_logits(facts["stage"], facts.get("variant"))
    meter = PairProbabilityMeter() if figures_dir is not None and edges else None
    what = "test split" if fold is None else f"fold {fold}"
    probs = predict(model, loader, args.device, args.amp, progress=not args.no_progress, desc=f"test {what}",
                    pair_meter=meter)
    threshold = getattr(args, "threshold", 0.5)
    metrics = compute_au_metrics(probs, test_ds.labels, threshold=threshold)
    au_names = list(test_ds.au_names)
    coded = metrics["coded"]
    log.info("%s, %s (stage %d, --arc %s), %d images\n%s", what, path, facts["stage"], facts["arc"],
             len(test_ds), format_au_table(au_names, metrics["f1"], metrics["acc"]))
    if not coded.all():
        log.info("%s: %d of %d AUs coded in the tested images: mean F1 %.2f, mean accuracy %.2f over them "
                 "(uncoded AUs count 0 in the means over all AUs, as in OpenGraphAU's test.py)", what,
                 int(coded.sum()), len(coded), 100 * metrics["mean_f1_coded"], 100 * metrics["mean_acc_coded"])
    result = {"dataset": args.dataset_name, "fold": None if fold is None else int(fold),
              "split": "test", "protocol": "hybrid" if fold is None else "folds",
              "arc": facts["arc"], "stage": facts["stage"],
              "checkpoint": str(path), "au_names": au_names, "f1": [round(100 * float(v), 4) for v in metrics["f1"]],
              "acc": [round(100 * float(v), 4) for v in metrics["acc"]],
              "mean_f1": round(100 * metrics["mean_f1"], 4), "mean_acc": round(100 * metrics["mean_acc"], 4),
              "coded": [bool(v) for v in coded], "mean_f1_coded": round(100 * metrics["mean_f1_coded"], 4),
              "mean_acc_coded": round(100 * metrics["mean_acc_coded"], 4),
              "num_images": len(test_ds), "threshold": threshold}
    if figures_dir is not None and utils.is_main_process():
        result.update(fold_figures(Path(figures_dir), fold, au_names, probs, test_ds.labels, threshold, meter,
                                   label=f"{args.dataset_name} "))
        for key, value in result["cooccurrence"].items():
            if isinstance(value, dict):
                log.info("%s co-occurrence, %s: r = %s, permutation p = %s", what, key, value["r"],
                         value["p_value"])
    return result


def f1_figure(out_dir: Path, results: list[dict], dataset_config: dict) -> list[str]:
    """f1_bars.png/.csv: per-AU F1 of each tested fold, their mean (several folds) and, for BP4D
    and DISFA, the paper's numbers (plots.paper_f1_series)."""
    first = results[0]
    paper = plots.paper_f1_series(dataset_config) if list(dataset_config.get("au_names") or []) == \
        list(first["au_names"]) else {}
    out = plots.plot_f1_bars(first["au_names"],
                             {"test split" if r["fold"] is None else f"fold {r['fold']}": r["f1"] for r in results},
                             out_dir / "f1_bars.png", paper=paper,
                             title=f"{first['dataset']}: per-AU F1 on the test fold{'s' if len(results) > 1 else ''}"
                                   f" (stage {first['stage']}, {first['arc']}, p >= {first['threshold']:g})")
    return [out["png"].name, out["csv"].name]


def mean_agreement(results: list[dict]) -> dict:
    """--fold all: each comparison's mean r over the folds and the largest of their p-values."""
    out = {}
    for key in results[0].get("cooccurrence", {}):
        values = [r["cooccurrence"][key] for r in results if isinstance(r.get("cooccurrence", {}).get(key), dict)]
        if len(values) != len(results):
            continue
        rs, ps = [v["r"] for v in values], [v["p_value"] for v in values]
        out[key] = {"mean_r": None if None in rs else round(float(np.mean(rs)), 6),
                    "max_p_value": None if None in ps else max(ps)}
    return out


def write_results(summary: dict, rows: list[dict], out_dir: Path) -> None:
    """results.json (the summary) and results.csv (one row per fold, plus the mean)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    names = summary["au_names"]
    fields = ["fold", "checkpoint", "num_images", "mean_f1", "mean_acc"] + \
        [f"f1_{n}" for n in names] + [f"acc_{n}" for n in names]
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            row = {k: r[k] for k in ("fold", "num_images", "mean_f1", "mean_acc")}
            row["fold"] = "test" if row["fold"] is None else row["fold"]  # the hybrid test split
            row["checkpoint"] = r["checkpoint"] if isinstance(r["checkpoint"], str) else ";".join(r["checkpoint"])
            row.update({f"f1_{n}": v for n, v in zip(names, r["f1"])})
            row.update({f"acc_{n}": v for n, v in zip(names, r["acc"])})
            writer.writerow(row)


def test_checkpoints(args, out_dir: Path, folds: list[int]) -> dict:
    """Test --resume (cli.test_main and training.run_training require it) on each of `folds`
    ({fold} in the name is filled in), average over the folds as the papers do, write
    results.json / results.csv to out_dir; returns the summary (with 'run_dir'). A synthetic set
    is generated first when its lists are missing (data.prepare_synth).

    Figures in out_dir, each a PNG with the CSV of its numbers, listed in results.json's
    "figures": f1_bars (per-AU F1 of each fold, their mean, the paper's for BP4D / DISFA),
    pr_curves_fold{k} and cooccurrence_fold{k} (fold_figures). results.json's "cooccurrence":
    Pearson r and permutation p of the predicted AUs' co-occurrence (and, stage 2, of the
    model's mean P(both) and of its excess over independence) against the ground truth's; with
    several folds each fold's are under per_fold and the top level has their mean r and largest p.
    """
    if len(folds) > 1 and "{fold}" not in args.resume:
        warnings.warn(f"--fold all with one checkpoint ({args.resume}) tests it on every fold, "
                      f"including the folds it was trained on; use a name with {{fold}}", stacklevel=2)
    checkpoints = {"checkpoint" if k is None else f"checkpoint_fold{k}": Path(checkpoint_for_fold(args.resume, k))
                   for k in folds}
    prepare_synth(args, folds)  # explicit: the synthetic set's lists exist before they are hashed
    prov = provenance.collect(device=args.device, files={**checkpoints, **list_files_of_run(args, ("test",), folds)})
    log.info("provenance: %s", provenance.header_line(prov))
    results = [evaluate_checkpoint(args, k, checkpoint_for_fold(args.resume, k), figures_dir=out_dir) for k in folds]
    summary = results[0] if len(results) == 1 else average_folds(results)
    if utils.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = f1_figure(out_dir, results, args.dataset_config)
        summary["figures"] = figures + [name for r in results for name in r.get("figures", [])]
        if len(results) > 1:
            summary["cooccurrence"] = mean_agreement(results)
        log.info("figures written to %s: %s", out_dir, " ".join(n for n in summary["figures"] if n.endswith(".png")))
    summary["provenance"] = prov
    if len(results) > 1:
        log.info("mean over folds %s\n%s", folds,
                 format_au_table(summary["au_names"], np.array(summary["f1"]) / 100, np.array(summary["acc"]) / 100))
    if utils.is_main_process():
        write_results(summary, results + ([summary] if len(results) > 1 else []), out_dir)
        log.info("results written to %s", out_dir / "results.json")
    summary["run_dir"] = str(out_dir)
    return summary
