"""plots.py: every figure is a readable PNG, and its CSV holds exactly the numbers passed in."""
import csv
import math

import cv2
import numpy as np
import pytest

from megraphau.analysis import plots, relations
from megraphau.data.dataset import load_dataset_config

BP4D = load_dataset_config("BP4D")
OPENGRAPHAU_MAIN = load_dataset_config("OpenGraphAU")["au_names"][:27]


def read_png(path):
    image = cv2.imread(str(path))
    assert image is not None and image.size > 0, path
    return image


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_f1_bars_with_folds_and_paper_numbers(tmp_path):
    names = BP4D["au_names"]
    rng = np.random.default_rng(0)
    folds = {f"fold {k}": list(rng.uniform(30, 90, len(names))) for k in (1, 2, 3)}
    paper = plots.paper_f1_series(BP4D)
    paths = plots.plot_f1_bars(names, folds, tmp_path / "f1.png", paper=paper, title="BP4D")
    assert paths["png"] == tmp_path / "f1.png" and paths["csv"] == tmp_path / "f1.csv"
    assert read_png(paths["png"]).shape[1] > 600
    rows = read_csv(paths["csv"])
    assert [r["au"] for r in rows] == names + ["Avg"]
    for series, values in list(folds.items()) + list(paper.items()):
        assert [float(r[series]) for r in rows[:-1]] == values  # exact round trip
        assert float(rows[-1][series]) == pytest.approx(np.mean(values))
    mean = np.mean(np.stack([folds[k] for k in folds]), axis=0)
    assert np.allclose([float(r["mean of 3 folds"]) for r in rows[:-1]], mean)


def test_f1_bars_with_41_aus_and_bad_input(tmp_path):
    names = load_dataset_config("OpenGraphAU")["au_names"]
    paths = plots.plot_f1_bars(names, {"fold 1": np.linspace(10, 90, 41)}, tmp_path / "f1_41.png")
    image = read_png(paths["png"])
    assert image.shape[1] > image.shape[0] * 2  # wide for 41 groups
    assert len(read_csv(paths["csv"])) == 42
    with pytest.raises(ValueError, match=r"per_fold_f1\['fold 1'\]: 3 values for 41 AUs"):
        plots.plot_f1_bars(names, {"fold 1": [1, 2, 3]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="fractions"):
        plots.plot_f1_bars(BP4D["au_names"], {"fold 1": [0.5] * 12}, tmp_path / "bad.png",
                           paper=plots.paper_f1_series(BP4D))


def test_paper_numbers_in_the_configs():
    bp4d, disfa = plots.paper_f1_series(BP4D), plots.paper_f1_series(load_dataset_config("DISFA"))
    assert round(np.mean(bp4d["paper ResNet-50"]), 1) == 64.7
    assert round(np.mean(disfa["paper ResNet-50"]), 1) == 63.1
    assert plots.paper_f1_series(load_dataset_config("SYNTH")) == {}
    table = plots.format_f1_comparison(BP4D["au_names"], [60.0] * 12, bp4d)
    assert "| AU1 | 60.0 | 53.7 | +6.3 |" in table and "| Avg | 60.0 | 64.7 | -4.7 |" in table
    with pytest.raises(ValueError, match="paper_f1"):
        plots.paper_f1_series({"name": "X", "au_names": ["AU1"], "paper_f1": {"R": [1, 2]}})


def test_pr_curves_figure_and_numbers(tmp_path):
    rng = np.random.default_rng(1)
    labels = (rng.random((80, 4)) < 0.4).astype(int)
    labels[:5, 0] = -1
    probs = np.clip(0.5 * labels + rng.random((80, 4)) * 0.6, 0, 1)
    curves = relations.precision_recall_curves(probs, labels, threshold=0.5)
    names = ["AU1", "AU2", "AU4", "AU6"]
    paths = plots.plot_pr_curves(names, curves, tmp_path / "pr.png", threshold=0.5)
    read_png(paths["png"])
    rows = read_csv(paths["csv"])
    for name, curve in zip(names, curves):
        drawn = [r for r in rows if r["au"] == name and r["point"] == "curve"]
        assert [float(r["recall"]) for r in drawn] == list(curve["recall"])
        assert [float(r["precision"]) for r in drawn] == list(curve["precision"])
        (marker,) = [r for r in rows if r["au"] == name and r["point"] == "at_threshold"]
        assert float(marker["precision"]) == curve["precision_at_threshold"]
        assert float(marker["recall"]) == curve["recall_at_threshold"]
        assert float(marker["average_precision"]) == curve["average_precision"]
    thin = plots.plot_pr_curves(names, curves, tmp_path / "thin.png", max_points=5)
    drawn = [r for r in read_csv(thin["csv"]) if r["au"] == "AU1" and r["point"] == "curve"]
    assert len(drawn) <= 5 and float(drawn[-1]["recall"]) == 0.0 and float(drawn[0]["recall"]) == 1.0
    with pytest.raises(ValueError, match="curves: 4 curves for 3 AUs"):
        plots.plot_pr_curves(names[:3], curves, tmp_path / "bad.png")


@pytest.mark.parametrize("n", [12, 27])
def test_cooccurrence_heatmaps(tmp_path, n):
    names = (BP4D["au_names"] if n == 12 else OPENGRAPHAU_MAIN)
    rng = np.random.default_rng(n)
    truth = relations.cooccurrence_from_labels(rng.choice([-1, 0, 1], size=(40, n), p=[.1, .6, .3]))["both"]
    model = relations.mean_pair_probabilities(rng.normal(size=(5, n * n, 4)))["p_both"]
    truth[0, 1] = np.nan  # drawn grey, written as nan
    paths = plots.plot_cooccurrence(names, {"ground truth": truth, "model": model}, tmp_path / "cooc.png")
    read_png(paths["png"])
    rows = read_csv(paths["csv"])
    assert len(rows) == 2 * n * n
    got = {(r["matrix"], r["au_i"], r["au_j"]): float(r["value"]) for r in rows}
    assert got[("model", names[2], names[5])] == model[2, 5]
    assert math.isnan(got[("ground truth", names[0], names[1])])
    assert np.array_equal([got[("ground truth", names[i], names[j])] for i in range(n) for j in range(n)],
                          truth.reshape(-1), equal_nan=True)
    with pytest.raises(ValueError, match=r"matrices\['x'\]: expected"):
        plots.plot_cooccurrence(names, {"x": np.zeros((3, 3))}, tmp_path / "bad.png")


def test_cooccurrence_scale_follows_the_data(tmp_path):
    """Joint probabilities up to ~0.6 use the whole colour map (a 0..1 scale left 40% of it unused)."""
    names = BP4D["au_names"]
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 0.58, size=(12, 12))
    assert plots.plot_cooccurrence(names, {"a": low, "b": low / 2}, tmp_path / "c.png")["vmax"] == pytest.approx(0.6)
    assert plots.plot_cooccurrence(names, {"a": low}, tmp_path / "d.png", vmax=1.0)["vmax"] == 1.0
    assert plots.plot_cooccurrence(names, {"a": np.zeros((12, 12))}, tmp_path / "e.png")["vmax"] == pytest.approx(0.05)


@pytest.mark.parametrize("n", [8, 12, 27])
def test_au_graph(tmp_path, n):
    names = OPENGRAPHAU_MAIN[:n]
    rng = np.random.default_rng(n)
    probs = rng.random(n)
    p_both = relations.pair_probabilities(rng.normal(size=(n * n, 4)) * 2)["p_both"]
    out = plots.draw_au_graph(names, probs, p_both, tmp_path / "graph.png", title=f"{n} AUs", min_strength=0.3)
    rgb = out["rgb"]
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert np.array_equal(out["bgr"], rgb[..., ::-1])
    assert read_png(out["png"]).shape == rgb.shape
    assert rgb.std() > 10  # not blank
    rows = read_csv(out["csv"])
    nodes = [r for r in rows if r["kind"] == "node"]
    assert [r["au_i"] for r in nodes] == list(names) and [float(r["value"]) for r in nodes] == list(probs)
    edges = [r for r in rows if r["kind"] == "edge"]
    assert len(edges) == n * (n - 1) // 2
    strength = relations.symmetrise(p_both)
    index = {name: k for k, name in enumerate(names)}
    for r in edges:
        assert float(r["value"]) == strength[index[r["au_i"]], index[r["au_j"]]]
    drawn = sorted(float(r["value"]) for r in edges if r["drawn"] == "1")
    skipped = [float(r["value"]) for r in edges if r["drawn"] == "0"]
    assert 0 < len(drawn) <= n and min(drawn) >= 0.3
    assert all(v <= min(drawn) or v < 0.3 for v in skipped)  # the strongest above the floor are drawn


def test_au_graph_without_edges_or_file():
    out = plots.draw_au_graph(["AU1", "AU2", "AU4"], [0.9, 0.1, 0.6])
    assert out["png"] is None and out["csv"] is None and out["rgb"].shape[2] == 3
    with pytest.raises(ValueError, match="probs: 2 values for 3 AUs"):
        plots.draw_au_graph(["AU1", "AU2", "AU4"], [0.9, 0.1])
    with pytest.raises(ValueError, match=r"p_both: expected \(3, 3\)"):
        plots.draw_au_graph(["AU1", "AU2", "AU4"], [0.9, 0.1, 0.5], np.zeros((2, 3)))
