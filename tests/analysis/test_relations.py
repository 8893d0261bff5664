"""relations.py against direct counts, hand-made logits and scikit-learn; a stage-2 model's edge
logits; bench/check_synth_relations.py on an untrained model."""
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from megraphau.analysis import relations

# 7 frames x 4 AUs, -1 = unknown. AU3 is known only where AU0 is unknown: the pair (0, 3) has no
# frame with both known, so its rates are NaN.
LABELS = np.array([
    [1, 1, 0, -1],
    [1, 0, 1, -1],
    [0, 1, -1, -1],
    [1, 1, 1, -1],
    [-1, 0, 0, 1],
    [-1, 1, 1, 0],
    [0, -1, 0, -1],
])


def direct_counts(labels):
    """Pair counts by a Python loop over frames and pairs (the slow, obvious way)."""
    m, n = labels.shape
    counts = {k: np.zeros((n, n), dtype=int) for k in ("known", "both", "i_without_j", "j_without_i", "neither")}
    for frame in labels.tolist():
        for i in range(n):
            for j in range(n):
                a, b = frame[i], frame[j]
                if a < 0 or b < 0:
                    continue
                counts["known"][i, j] += 1
                key = {(1, 1): "both", (1, 0): "i_without_j", (0, 1): "j_without_i", (0, 0): "neither"}[(a, b)]
                counts[key][i, j] += 1
    return counts


def nan_equal(a, b):
    return np.allclose(a, b, equal_nan=True, rtol=0, atol=1e-12)


RANDOM_LABELS = np.random.default_rng(3).choice([-1, 0, 1], size=(60, 5), p=[.15, .55, .3])


@pytest.mark.parametrize("labels", [LABELS, RANDOM_LABELS])
def test_cooccurrence_from_labels_equals_a_direct_count(labels):
    out = relations.cooccurrence_from_labels(labels)
    ref = direct_counts(labels)
    for key in ("known", "both", "i_without_j", "j_without_i", "neither"):
        assert out[f"n_{key}"].dtype == np.int64
        assert np.array_equal(out[f"n_{key}"], ref[key]), key
    with np.errstate(invalid="ignore", divide="ignore"):
        for key in ("both", "i_without_j", "j_without_i", "neither"):
            assert nan_equal(out[key], ref[key] / ref["known"]), key
        assert nan_equal(out["given_i"], ref["both"] / (ref["both"] + ref["i_without_j"]))
    known, present = labels >= 0, labels == 1
    assert nan_equal(out["prevalence"], present.sum(0) / known.sum(0))


def test_cooccurrence_hand_checked_entries():
    out = relations.cooccurrence_from_labels(LABELS)
    # AU0 and AU1 both known in frames 0, 1, 2, 3: both present in 0 and 3
    assert out["n_known"][0, 1] == 4 and out["n_both"][0, 1] == 2 and out["both"][0, 1] == 0.5
    # P(AU1 | AU0): AU0 present in frames 0, 1, 3 (AU1 known there), AU1 present in 0 and 3
    assert out["given_i"][0, 1] == pytest.approx(2 / 3)
    assert out["n_known"][0, 3] == 0 and math.isnan(out["both"][0, 3]) and math.isnan(out["given_i"][0, 3])
    assert np.array_equal(out["n_both"], out["n_both"].T)  # symmetric; i_without_j is the transpose of j_without_i
    assert np.array_equal(out["n_i_without_j"], out["n_j_without_i"].T)


def test_cooccurrence_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels: values must be 0, 1 or -1"):
        relations.cooccurrence_from_labels(np.array([[0, 2]]))
    with pytest.raises(ValueError, match=r"labels: expected \(M, N\)"):
        relations.cooccurrence_from_labels(np.zeros(3))


def test_predicted_cooccurrence_thresholds_and_keeps_the_unknown_mask():
    probs = np.array([[0.5, 0.49, 0.9], [0.7, 0.8, 0.1], [0.2, 0.6, 0.6]])
    labels = np.array([[1, 0, -1], [1, 1, 0], [-1, 0, 0]])
    out = relations.predicted_cooccurrence(probs, 0.5, labels)
    expected = relations.cooccurrence_from_labels(np.array([[1, 0, -1], [1, 1, 0], [-1, 1, 1]]))
    for key in ("n_known", "n_both", "n_i_without_j"):
        assert np.array_equal(out[key], expected[key])
    assert relations.predicted_cooccurrence(probs, 0.5)["n_known"].min() == 3  # no mask: every frame
    with pytest.raises(ValueError, match="same shape"):
        relations.predicted_cooccurrence(probs, 0.5, labels[:2])


def test_pair_probabilities_from_hand_made_logits():
    n = 2
    logits = np.zeros((n * n, 4))
    logits[0 * n + 1, 3] = math.log(5.0)  # edge (0, 1): class 3 (both) has weight 5, the others 1
    logits[1 * n + 0, 2] = math.log(3.0)  # edge (1, 0): class 2 (only i = AU1) has weight 3
    logits[1 * n + 1] = [0.0, 0.0, 0.0, 1000.0]  # large logits stay finite (stable softmax)
    out = relations.pair_probabilities(logits)
    assert set(out) == {"p_both", "p_i_without_j", "p_j_without_i", "p_neither"}
    assert out["p_both"].shape == (2, 2)
    assert out["p_both"][0, 1] == pytest.approx(5 / 8) and out["p_neither"][0, 1] == pytest.approx(1 / 8)
    assert out["p_i_without_j"][1, 0] == pytest.approx(3 / 6) and out["p_j_without_i"][1, 0] == pytest.approx(1 / 6)
    assert out["p_both"][1, 1] == pytest.approx(1.0)
    assert np.allclose(out["p_both"][0, 0], 0.25)
    batch = relations.pair_probabilities(torch.tensor(np.stack([logits, -logits])).to(torch.bfloat16))
    assert batch["p_both"].shape == (2, 2, 2) and batch["p_both"].dtype == np.float64
    total = sum(batch.values())
    assert np.allclose(total, 1.0)


def test_pair_probabilities_rejects_bad_shapes():
    with pytest.raises(ValueError, match="edge_logits: 5 edges is not N\\*N"):
        relations.pair_probabilities(np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"edge_logits: expected \(N\*N, 4\)"):
        relations.pair_probabilities(np.zeros((4, 3)))


def test_mean_pair_probabilities_over_batches_and_known_pairs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 16, 4)) * 2  # 7 frames, N = 4
    whole = relations.mean_pair_probabilities(logits, labels=LABELS)
    batched = relations.mean_pair_probabilities([logits[:3], torch.tensor(logits[3:])], labels=LABELS)
    for key in ("p_both", "p_i_without_j", "p_j_without_i", "p_neither", "given_i"):
        assert nan_equal(whole[key], batched[key])
    per_frame = relations.pair_probabilities(logits)["p_both"]  # (7, 4, 4)
    expected = np.full((4, 4), np.nan)
    for i in range(4):
        for j in range(4):
            frames = [b for b in range(7) if LABELS[b, i] >= 0 and LABELS[b, j] >= 0]
            if frames:
                expected[i, j] = np.mean([per_frame[b, i, j] for b in frames])
    assert nan_equal(whole["p_both"], expected)
    assert np.array_equal(whole["n_frames"], direct_counts(LABELS)["known"])
    unmasked = relations.mean_pair_probabilities(logits)
    assert np.allclose(unmasked["p_both"], per_frame.mean(0))
    with pytest.raises(ValueError, match="labels: 6 rows but the edge logits hold 7 frames"):
        relations.mean_pair_probabilities(logits, labels=LABELS[:6])


def test_precision_recall_curves_match_sklearn():
    rng = np.random.default_rng(1)
    probs = rng.random((300, 4)).round(2)  # rounding makes ties
    labels = (rng.random((300, 4)) < 0.35).astype(int)
    labels[rng.random((300, 4)) < 0.1] = -1
    labels[:, 3] = np.where(labels[:, 3] == 1, 0, labels[:, 3])  # AU3: no positive
    curves = relations.precision_recall_curves(probs, torch.tensor(labels), threshold=0.4)
    assert len(curves) == 4
    for au in range(3):
        known = labels[:, au] >= 0
        y, p = labels[known, au], probs[known, au]
        precision, recall, thresholds = precision_recall_curve(y, p, drop_intermediate=False)
        c = curves[au]
        assert np.allclose(c["precision"], precision) and np.allclose(c["recall"], recall)
        assert np.array_equal(c["thresholds"], thresholds)
        assert c["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        predicted = p >= 0.4
        tp = int((predicted & (y == 1)).sum())
        assert c["precision_at_threshold"] == pytest.approx(tp / predicted.sum())
        assert c["recall_at_threshold"] == pytest.approx(tp / (y == 1).sum())
        assert c["n_known"] == known.sum() and c["n_positive"] == (y == 1).sum()
    from megraphau.engine.metrics import compute_au_metrics
    f1 = compute_au_metrics(probs, labels, threshold=0.4)["f1"]
    assert np.allclose([c["f1_at_threshold"] for c in curves], f1)
    assert math.isnan(curves[3]["average_precision"]) and math.isnan(curves[3]["recall_at_threshold"])


def test_precision_recall_curve_of_an_au_never_known():
    labels = np.array([[1, -1], [0, -1]])
    curves = relations.precision_recall_curves(np.array([[0.9, 0.2], [0.1, 0.3]]), labels)
    assert curves[0]["average_precision"] == 1.0
    assert curves[1]["n_known"] == 0 and list(curves[1]["recall"]) == [0.0]


def test_correlation_and_permutation_p_value():
    rng = np.random.default_rng(2)
    truth = rng.random((12, 12))
    truth = (truth + truth.T) / 2
    noisy = truth + rng.normal(0, 0.05, truth.shape)
    np.fill_diagonal(noisy, 100.0)  # the diagonal is left out
    assert relations.correlation_with(truth, truth) == pytest.approx(1.0)
    assert relations.correlation_with(-truth, truth) == pytest.approx(-1.0)
    assert relations.correlation_with(noisy, truth) > 0.9
    with_nan = truth.copy()
    with_nan[0, 1] = np.nan
    assert relations.correlation_with(with_nan, truth) == pytest.approx(1.0)
    assert math.isnan(relations.correlation_with(np.ones((3, 3)), truth[:3, :3]))
    assert relations.permutation_p_value(noisy, truth, permutations=300) < 0.01
    unrelated = rng.random((12, 12))
    assert relations.permutation_p_value(unrelated, truth, permutations=300) > 0.01
    with pytest.raises(ValueError, match="must both be"):
        relations.correlation_with(truth, truth[:3])


def test_excess_cooccurrence_and_symmetrise():
    out = relations.cooccurrence_from_labels(np.array([[1, 1], [1, 1], [0, 0], [0, 0]]))
    excess = relations.excess_cooccurrence(out["both"], out["i_without_j"], out["j_without_i"])
    assert excess[0, 1] == pytest.approx(0.5 - 0.25)  # always together
    independent = relations.cooccurrence_from_labels(np.array([[1, 1], [1, 0], [0, 1], [0, 0]]))
    assert relations.excess_cooccurrence(independent["both"], independent["i_without_j"],
                                         independent["j_without_i"])[0, 1] == pytest.approx(0.0)
    m = np.arange(4.0).reshape(2, 2)
    assert np.array_equal(relations.symmetrise(m), [[0, 1.5], [1.5, 3]])


def test_pair_probabilities_of_a_stage2_model():
    """Edge logits of a (random) stage-2 ResNet-18: shapes, the four matrices sum to 1, entry
    [i, j] is the softmax of edge i*N + j, and -log of the matrix of class 2*a_i + a_j at [i, j]
    is the stage-2 edge loss's cross-entropy."""
    from megraphau.data.dataset import relations_from_labels
    from megraphau.model import build_model

    n = 12
    model = build_model(2, "resnet18", n, 4, "dots", pretrained=False).eval()
    with torch.no_grad():
        probs, edge_logits = model(torch.randn(2, 3, 64, 64))
    assert probs.shape == (2, n) and edge_logits.shape == (2, n * n, 4)
    pairs = relations.pair_probabilities(edge_logits)
    for value in pairs.values():
        assert value.shape == (2, n, n) and (value >= 0).all() and (value <= 1).all()
    assert np.allclose(sum(pairs.values()), 1.0)
    softmax = torch.softmax(edge_logits.double(), dim=-1).numpy()
    i, j = 3, 7
    assert pairs["p_both"][1, i, j] == pytest.approx(softmax[1, i * n + j, 3])
    assert pairs["p_i_without_j"][1, i, j] == pytest.approx(softmax[1, i * n + j, 2])
    # the marginal P(a_i = 1) that edge (i, j) implies, and P(a_j = 1)
    assert np.allclose(pairs["p_both"] + pairs["p_i_without_j"], 1 - pairs["p_j_without_i"] - pairs["p_neither"])
    assert np.allclose(pairs["p_both"] + pairs["p_j_without_i"], softmax[..., [1, 3]].sum(-1).reshape(2, n, n))
    labels = torch.randint(0, 2, (2, n))
    target = relations_from_labels(labels)  # (2, N*N) classes 2*a_i + a_j
    loss = torch.nn.functional.cross_entropy(edge_logits.reshape(-1, 4).double(), target.reshape(-1))
    by_class = np.stack([pairs[k] for k in relations.PAIR_CLASS_NAMES], -1)  # (2, N, N, 4)
    chosen = np.take_along_axis(by_class, target.reshape(2, n, n, 1).numpy(), -1)
    assert -np.log(chosen).mean() == pytest.approx(loss.item(), rel=1e-9)


def test_check_synth_relations_runs_on_an_untrained_model(tmp_path, capsys, monkeypatch):
    """The bench script end to end on a tiny SYNTH set and a random stage-2 model (no quality check);
    the set is generated when missing, as the training scripts do (engine.data.prepare_synth)."""
    from bench import check_synth_relations
    from megraphau.model import build_model
    from megraphau.synth import generate_synthetic_dataset

    root = tmp_path / "synth"
    generated = []

    def tiny_set(path, **kw):  # stands for the full default set: the same call, a tiny size
        generated.append(path)
        return generate_synthetic_dataset(path, subjects_per_part=1, tasks=1, frames=4, seed=0, size=64)

    monkeypatch.setattr("megraphau.synth.ensure_synthetic_dataset", tiny_set)  # engine.prepare_data reads it there
    ckpt = tmp_path / "stage2.pth"
    torch.save({"state_dict": build_model(2, "resnet18", 12, 4, "dots", pretrained=False).state_dict()}, ckpt)
    out_json, figure = tmp_path / "rel.json", tmp_path / "cooc.png"
    rc = check_synth_relations.main(["--resume", str(ckpt), "--dataset-path", str(root), "--max-images", "2",
                                     "--batch-size", "2", "--device", "cpu", "--permutations", "50",
                                     "--json", str(out_json), "--figure", str(figure)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 test images, 12 AUs" in out and "model_p_both_vs_truth" in out and "model: mean p_both" in out
    result = json.loads(out_json.read_text())
    assert np.array(result["model_p_both"]).shape == (12, 12) and result["num_images"] == 2
    assert figure.is_file() and figure.with_suffix(".csv").is_file()
    assert [str(p) for p in generated] == [str(root)]

    stage1 = tmp_path / "stage1.pth"
    torch.save({"state_dict": build_model(1, "resnet18", 12, 4, "dots", pretrained=False).state_dict()}, stage1)
    assert check_synth_relations.main(["--resume", str(stage1), "--dataset-path", str(root)]) == 2
    assert "not a stage-2 ME-GraphAU checkpoint" in capsys.readouterr().err
