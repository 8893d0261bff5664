"""Does a stage-2 model's AU relation graph follow the data's co-occurrences? On a test fold
(default SYNTH fold 1, whose labels have built-in pairs: AU6 with AU12, AU1 with AU2, AU25 with
AU26; generated into the config's dataset_path when missing, as the training scripts do), compare

- the ground truth's co-occurrence P(a_i = 1, a_j = 1) over frames where both AUs are known;
- the model's predicted one: the mean over frames of p_both from its edge logits;
- the co-occurrence of its thresholded AU predictions (p >= --threshold);

and print the matrices, the strongest ground-truth pairs with the model's numbers beside them,
and the Pearson r between the model's and the truth's off-diagonal entries (for P(both), and for
the excess P(both) - P(a_i) P(a_j), which leaves out what the AUs' prevalences alone explain),
each with a permutation p-value (random relabellings of the model's AUs; small = more closely
than chance).

  python bench/check_synth_relations.py --resume results/.../MEFARG_resnet18_SYNTH_fold1.pth
  python bench/check_synth_relations.py --resume CKPT --figure cooc.png --json relations.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from megraphau.analysis import relations  # noqa: E402
from megraphau.engine import data, loop  # noqa: E402


class CheckError(ValueError):
    """Bad input (checkpoint, data set); the message names it."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare a stage-2 model's predicted AU co-occurrence "
                                     "with the test fold's ground truth.")
    parser.add_argument("--resume", required=True, help="stage-2 checkpoint (.pth)")
    parser.add_argument("--dataset", default="SYNTH", help="dataset config name or .yaml path (default SYNTH)")
    parser.add_argument("--dataset-path", default=None, help="data set root (default: the config's)")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--crop-size", type=int, default=None,
                        help="test crop (default: the config's test default, else 224)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=None, help="only the first N test images")
    parser.add_argument("--threshold", type=float, default=0.5, help="occurrence threshold on p")
    parser.add_argument("--permutations", type=int, default=2000, help="relabellings for the p-values")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--figure", type=Path, default=None, help="also write the co-occurrence heatmaps (PNG + CSV)")
    parser.add_argument("--json", type=Path, default=None, help="write the matrices and figures as JSON")
    return parser.parse_args(argv)


def load_stage2_model(path: str, config: dict) -> torch.nn.Module:
    """The stage-2 ME-GraphAU model of a checkpoint (model.load_model: the file decides the
    backbone and graph settings, loaded strictly); CheckError for any other model."""
    from megraphau.model import load_model

    loaded = load_model(path, num_classes=config["num_classes"], neighbor_num=config["neighbor_num"])
    facts = loaded.facts
    if facts["stage"] != 2 or facts["variant"] == "opengraphau":
        raise CheckError(f"{path}: not a stage-2 ME-GraphAU checkpoint (found stage {facts['stage']}, "
                         f"variant {facts['variant']}): only stage 2 predicts edge logits")
    return loaded.model


def load_test_split(config: dict, fold: int, crop_size: int, dataset_path: Optional[str] = None):
    """The test split of a fold, as test.py builds it (engine.data.build_datasets, after
    data.prepare_synth has generated the SYNTH set when its lists are missing)."""
    run = argparse.Namespace(dataset_config=config, dataset_path=str(dataset_path or config["dataset_path"]),
                             fold=fold, crop_size=crop_size)
    data.prepare_synth(run, [fold])
    return data.build_datasets(run, stage=1, splits=("test",))["test"]


def run_model(model: torch.nn.Module, loader, device: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probs (M, N), labels (M, N), mean pair probabilities over the known pairs) of a loader
    over an AUDataset or a Subset of one, predicted as test.py does (engine.loop.predict with a
    relations.PairProbabilityMeter)."""
    dataset = loader.dataset
    base, rows = (dataset.dataset, list(dataset.indices)) if hasattr(dataset, "indices") else (dataset, None)
    labels = np.asarray(base.labels, dtype=np.int64)
    labels = labels if rows is None else labels[rows]
    meter = relations.PairProbabilityMeter()
    probs = loop.predict(model.to(device), loader, torch.device(device), pair_meter=meter)
    return probs, labels, meter.result()


def format_matrix(au_names: Sequence[str], matrix: np.ndarray, title: str) -> str:
    width = max(6, max(len(a) for a in au_names) + 1)
    lines = [title, " " * width + "".join(f"{a:>{width}}" for a in au_names)]
    for name, row in zip(au_names, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.2f}" for v in row))
    return "\n".join(lines)


def strongest_pairs(excess: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The `count` pairs i < j with the largest symmetrised excess co-occurrence."""
    sym = relations.symmetrise(excess)
    i, j = np.triu_indices(len(sym), k=1)
    order = np.argsort(-np.nan_to_num(sym[i, j], nan=-np.inf), kind="stable")[:count]
    return [(int(i[k]), int(j[k])) for k in order]


def compare(au_names: Sequence[str], labels: np.ndarray, probs: np.ndarray, model_pairs: dict,
            threshold: float, permutations: int) -> dict:
    """The three co-occurrence matrices and their agreement figures."""
    truth = relations.cooccurrence_from_labels(labels)
    predicted = relations.predicted_cooccurrence(probs, threshold, labels)
    truth_excess = relations.excess_cooccurrence(truth["both"], truth["i_without_j"], truth["j_without_i"])
    model_excess = relations.excess_cooccurrence(model_pairs["p_both"], model_pairs["p_i_without_j"],
                                                 model_pairs["p_j_without_i"])

    def agreement(pred: np.ndarray, ref: np.ndarray) -> dict:
        return {"r": relations.correlation_with(pred, ref),
                "p_value": relations.permutation_p_value(pred, ref, permutations)}

    return {
        "au_names": list(au_names), "num_images": int(len(labels)), "threshold": threshold,
        "truth_both": truth["both"], "model_p_both": model_pairs["p_both"], "predicted_both": predicted["both"],
        "truth_given_i": truth["given_i"], "model_given_i": model_pairs["given_i"],
        "truth_excess": truth_excess, "model_excess": model_excess,
        "agreement": {"model_p_both_vs_truth": agreement(model_pairs["p_both"], truth["both"]),
                      "model_excess_vs_truth": agreement(model_excess, truth_excess),
                      "predicted_aus_vs_truth": agreement(predicted["both"], truth["both"])},
    }


def report(result: dict) -> str:
    names = result["au_names"]
    parts = [f"{result['num_images']} test images, {len(names)} AUs, occurrence p >= {result['threshold']:g}",
             format_matrix(names, result["truth_both"], "ground truth P(both) (row i, column j)"),
             format_matrix(names, result["model_p_both"], "model: mean p_both from the edge logits"),
             format_matrix(names, result["predicted_both"], "thresholded predictions: P(both)"),
             "strongest ground-truth pairs (excess = P(both) - P(i) P(j), symmetrised):",
             f"  {'pair':<14}{'truth both':>11}{'model both':>11}{'truth exc':>10}{'model exc':>10}"
             f"{'P(j|i) truth':>13}{'model':>7}"]
    for i, j in strongest_pairs(result["truth_excess"], 5):
        both_t, both_m = result["truth_both"], relations.symmetrise(result["model_p_both"])
        exc_t, exc_m = relations.symmetrise(result["truth_excess"]), relations.symmetrise(result["model_excess"])
        parts.append(f"  {names[i] + '-' + names[j]:<14}{both_t[i, j]:>11.3f}{both_m[i, j]:>11.3f}"
                     f"{exc_t[i, j]:>10.3f}{exc_m[i, j]:>10.3f}{result['truth_given_i'][i, j]:>13.2f}"
                     f"{result['model_given_i'][i, j]:>7.2f}")
    parts.append("agreement with the ground truth (Pearson r over off-diagonal pairs; p: permutation test):")
    for key, value in result["agreement"].items():
        parts.append(f"  {key:<24} r = {value['r']:+.3f}   p = {value['p_value']:.4f}")
    return "\n".join(parts)


def to_json(value):
    """Arrays to lists and NaN to null, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from torch.utils.data import DataLoader, Subset

    from megraphau.data.dataset import DatasetError, load_dataset_config
    from megraphau.model import CheckpointMismatchError

    try:
        config = load_dataset_config(args.dataset)
        crop = args.crop_size or ((config.get("defaults") or {}).get("test") or {}).get("crop_size", 224)
        model = load_stage2_model(args.resume, config)
        dataset = load_test_split(config, args.fold, crop, args.dataset_path)
        if args.max_images is not None:
            dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
        if len(dataset) == 0:
            raise CheckError(f"{args.dataset} fold {args.fold}: no test images")
    except (CheckError, DatasetError, CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
    probs, labels, model_pairs = run_model(model, loader, args.device)
    result = compare(config["au_names"], labels, probs, model_pairs, args.threshold, args.permutations)
    print(report(result))
    if args.figure is not None:
        from megraphau.analysis import plots

        paths = plots.plot_cooccurrence(config["au_names"], {
            "ground truth": result["truth_both"], "model (mean p_both of the edges)": result["model_p_both"],
            f"predicted AUs (p >= {args.threshold:g})": result["predicted_both"]}, args.figure,
            title=f"{config['name']} fold {args.fold}: P(AU i and AU j), {result['num_images']} test images")
        print(f"wrote {paths['png']} and {paths['csv']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(result), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
