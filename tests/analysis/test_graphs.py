"""What the graph learned, wired into test.py and demo.py (issue 15).

- test.py writes f1_bars, pr_curves_fold{k} and cooccurrence_fold{k} (PNG + CSV) next to
  results.json, which lists them; the co-occurrence matrices equal a direct count on the small
  labelled set (unknown labels included) and, for stage 2, the mean softmax of the model's edge
  logits computed directly; stage 1 and --fold all have their own layout.
- demo.py writes each face's pair matrices to predictions.json for a stage-2 model (equal to
  relations.pair_probabilities of the model's edge logits on that crop) and, with --graph, an
  AU graph per face; stage 1 and OpenGraphAU graphs are nodes only.
"""
import csv
import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import demo
import test as test_mod
from megraphau import conf
from megraphau.analysis import plots, relations
from megraphau.data.dataset import load_dataset_config
from megraphau.engine import data, evaluation
from megraphau.inference.detector import AUDetector
from megraphau.model import build_model
from megraphau.synth import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def matrices_of(csv_path, au_names):
    """{matrix name: (N, N) array} from a plots.plot_cooccurrence CSV."""
    index = {n: k for k, n in enumerate(au_names)}
    out = {}
    for row in read_csv(csv_path):
        m = out.setdefault(row["matrix"], np.full((len(au_names), len(au_names)), np.nan))
        m[index[row["au_i"]], index[row["au_j"]]] = float(row["value"])
    return out


def trained_bn(model, size):
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(4, 3, size, size))
    return model.eval()


def save_release_checkpoint(path, stage, num_classes, variant="megraphau", size=224, neighbor_num=3):
    """A model saved the release's way: {'state_dict': {'module.' + key: tensor}}."""
    model = trained_bn(build_model(stage, "resnet18", num_classes, neighbor_num=neighbor_num, pretrained=False,
                                   variant=variant), size)
    torch.save({"epoch": 1, "state_dict": OrderedDict(("module." + k, v) for k, v in model.state_dict().items())},
               path)
    return path


# --------------------------------------------------------------------------------------------
# test.py
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    """8 test images per fold; fold 1's test labels get a few unknown (-1) entries."""
    root = tmp_path_factory.mktemp("synth_graphs")
    generate_synthetic_dataset(root, subjects_per_part=1, tasks=2, frames=4, seed=0, size=64)
    label_file = root / "list" / "SYNTH_test_label_fold1.txt"
    labels = np.loadtxt(label_file, dtype=np.int64)
    labels[0, 1] = labels[3, 1] = labels[5, 10] = -1
    np.savetxt(label_file, labels, fmt="%d")
    return root


def _test_argv(root, out, *extra):
    return ["--dataset", "SYNTH", "--dataset-path", str(root), "--output-dir", str(out), "--crop-size", "48",
            "-b", "3", "-j", "0", "--no-progress", *extra]  # batch 3: a last batch of 2 (8 images)


def direct_outputs(ckpt, root, fold=1):
    """The test fold's images, labels, probabilities and edge logits, computed here directly
    (the checkpoint's model on the whole fold in one batch)."""
    from megraphau.model import load_model

    args = conf.parse_args(test_mod.get_args_parser(), _test_argv(root, "unused", "--fold", str(fold)), "test")
    ds = data.build_datasets(args, stage=1, splits=("test",), fold=fold)["test"]
    images = torch.stack([ds[k][0] for k in range(len(ds))])
    model = load_model(ckpt, num_classes=12, neighbor_num=4).model.eval()
    with torch.no_grad():
        out = model(images)
    probs, edges = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    return np.asarray(ds.labels), probs.double().numpy(), None if edges is None else edges.double()


def count_both(labels):
    """P(AU i and AU j) over the frames where both are known, counted frame by frame."""
    n = labels.shape[1]
    both, known = np.zeros((n, n)), np.zeros((n, n))
    for row in labels:
        for i in range(n):
            for j in range(n):
                if row[i] >= 0 and row[j] >= 0:
                    known[i, j] += 1
                    both[i, j] += row[i] == 1 and row[j] == 1
    return both / known


def test_test_py_stage2_figures_match_direct_counts(tiny_synth, tmp_path):
    ckpt = save_release_checkpoint(tmp_path / "stage2.pth", 2, 12, size=48, neighbor_num=4)
    labels, probs, edges = direct_outputs(ckpt, tiny_synth)
    threshold = float(np.round(np.median(probs), 3))  # a random model: a threshold with AUs on and off
    res = test_mod.main(conf.parse_args(test_mod.get_args_parser(), _test_argv(
        tiny_synth, tmp_path / "out", "--resume", str(ckpt), "--threshold", str(threshold)), "test"))
    run = Path(res["run_dir"])
    saved = json.loads((run / "results.json").read_text())
    assert saved["figures"] == ["f1_bars.png", "f1_bars.csv", "pr_curves_fold1.png", "pr_curves_fold1.csv",
                                "cooccurrence_fold1.png", "cooccurrence_fold1.csv"]
    for name in saved["figures"]:
        assert (run / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert cv2.imread(str(run / name)).shape[1] > 300, name
    names = saved["au_names"]
    assert labels.shape == (8, 12) and (labels < 0).sum() == 3

    # co-occurrence: ground truth, the model's edges, the predicted AUs, each checked directly
    mats = matrices_of(run / "cooccurrence_fold1.csv", names)
    assert list(mats) == ["ground truth", "model: mean P(both) of the edges", f"predicted AUs (p >= {threshold:g})"]
    np.testing.assert_allclose(mats["ground truth"], count_both(labels), rtol=0, atol=1e-12)
    softmax = torch.softmax(edges, dim=-1)[..., 3].reshape(8, 12, 12).numpy()  # P(class 3 = both)
    known = (labels >= 0).astype(float)
    weight = known[:, :, None] * known[:, None, :]  # a frame counts for (i, j) where both are known
    model_both = (softmax * weight).sum(0) / weight.sum(0)
    np.testing.assert_allclose(mats["model: mean P(both) of the edges"], model_both, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model_both, softmax.mean(0))  # the unknown labels do matter here
    predicted = np.where(labels >= 0, (probs >= threshold).astype(int), -1)
    np.testing.assert_allclose(mats[f"predicted AUs (p >= {threshold:g})"], count_both(predicted), atol=1e-12)

    # results.json: r of the model's matrix against the truth (off-diagonal), with its p-value
    cooc = saved["cooccurrence"]
    assert set(cooc) == {"model_p_both_vs_truth", "model_excess_vs_truth", "predicted_aus_vs_truth", "permutations"}
    off = ~np.eye(12, dtype=bool)
    r = np.corrcoef(model_both[off], count_both(labels)[off])[0, 1]
    assert cooc["model_p_both_vs_truth"]["r"] == pytest.approx(r, abs=1e-5)
    assert 0 < cooc["model_p_both_vs_truth"]["p_value"] <= 1 and cooc["permutations"] == evaluation.PERMUTATIONS

    # F1 bars: the fold's F1 and its mean; SYNTH has no paper numbers
    bars = read_csv(run / "f1_bars.csv")
    assert list(bars[0]) == ["au", "fold 1"] and [b["au"] for b in bars] == names + ["Avg"]
    np.testing.assert_allclose([float(b["fold 1"]) for b in bars[:-1]], saved["f1"])
    assert float(bars[-1]["fold 1"]) == pytest.approx(saved["mean_f1"], abs=1e-3)

    # precision-recall: the marked point is p >= threshold over each AU's known frames
    points = {r["au"]: r for r in read_csv(run / "pr_curves_fold1.csv") if r["point"] == "at_threshold"}
    for k, name in enumerate(names):
        keep = labels[:, k] >= 0
        truth, pred = labels[keep, k] == 1, probs[keep, k] >= threshold
        assert float(points[name]["threshold"]) == threshold
        if truth.any():
            assert float(points[name]["recall"]) == pytest.approx((truth & pred).sum() / truth.sum())


def test_test_py_stage1_all_folds(tiny_synth, tmp_path):
    ckpt = save_release_checkpoint(tmp_path / "stage1.pth", 1, 12, size=48, neighbor_num=4)
    for k in (1, 2, 3):
        shutil.copyfile(ckpt, tmp_path / f"m_fold{k}.pth")
    summary = test_mod.main(conf.parse_args(test_mod.get_args_parser(), _test_argv(
        tiny_synth, tmp_path / "out", "--resume", str(tmp_path / "m_fold{fold}.pth"), "--fold", "all"), "test"))
    run = Path(summary["run_dir"])
    saved = json.loads((run / "results.json").read_text())
    per_fold = [f"{kind}_fold{k}.{ext}" for k in (1, 2, 3) for kind in ("pr_curves", "cooccurrence")
                for ext in ("png", "csv")]
    assert saved["figures"] == ["f1_bars.png", "f1_bars.csv"] + per_fold
    assert all((run / name).is_file() for name in saved["figures"])
    bars = read_csv(run / "f1_bars.csv")
    assert list(bars[0]) == ["au", "fold 1", "fold 2", "fold 3", "mean of 3 folds"]
    for k, fold in enumerate(saved["per_fold"]):
        np.testing.assert_allclose([float(b[f"fold {k + 1}"]) for b in bars[:-1]], fold["f1"])
        assert fold["figures"] == per_fold[4 * k:4 * k + 4]
        assert set(fold["cooccurrence"]) == {"predicted_aus_vs_truth", "permutations"}  # stage 1: no edges
    np.testing.assert_allclose([float(b["mean of 3 folds"]) for b in bars[:-1]], saved["f1"], atol=1e-3)
    # stage 1: the ground truth beside the predicted AUs' co-occurrence, no model matrix
    for k in (1, 2, 3):
        labels = np.loadtxt(tiny_synth / "list" / f"SYNTH_test_label_fold{k}.txt", dtype=np.int64)
        mats = matrices_of(run / f"cooccurrence_fold{k}.csv", saved["au_names"])
        assert list(mats) == ["ground truth", "predicted AUs (p >= 0.5)"]
        np.testing.assert_allclose(mats["ground truth"], count_both(labels), atol=1e-12)
    rs = [f["cooccurrence"]["predicted_aus_vs_truth"]["r"] for f in saved["per_fold"]]
    top = saved["cooccurrence"]["predicted_aus_vs_truth"]
    if None not in rs:
        assert top["mean_r"] == pytest.approx(np.mean(rs), abs=1e-6)
    assert set(top) == {"mean_r", "max_p_value"}


def test_f1_bars_beside_the_papers_numbers(tmp_path):
    bp4d = load_dataset_config("BP4D")
    names = bp4d["au_names"]
    results = [{"fold": k, "f1": list(np.linspace(30, 70, len(names)) + k), "au_names": names, "dataset": "BP4D",
                "stage": 2, "arc": "resnet50", "threshold": 0.5} for k in (1, 2)]
    files = evaluation.f1_figure(tmp_path, results, bp4d)
    assert files == ["f1_bars.png", "f1_bars.csv"]
    header = list(read_csv(tmp_path / "f1_bars.csv")[0])
    paper = plots.paper_f1_series(bp4d)
    assert paper and header == ["au", "fold 1", "fold 2", "mean of 2 folds", *paper]


# --------------------------------------------------------------------------------------------
# demo.py
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """tests/data/astronaut.jpg (a real photograph) in a 640x480 frame."""
    folder = tmp_path_factory.mktemp("photo")
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame[100:356, 200:456] = cv2.imread(str(REPO / "tests" / "data" / "astronaut.jpg"))
    cv2.imwrite(str(folder / "astronaut_640x480.png"), frame)
    return folder / "astronaut_640x480.png"


@pytest.fixture
def graph_calls(monkeypatch):
    """Records what demo passes to plots.draw_au_graph (and still draws)."""
    calls = []
    draw = plots.draw_au_graph

    def recording(au_names, probs, p_both=None, out_png=None, **kw):
        calls.append({"au_names": list(au_names), "probs": np.asarray(probs), "p_both": p_both, "png": out_png,
                      **kw})
        return draw(au_names, probs, p_both, out_png, **kw)

    monkeypatch.setattr(plots, "draw_au_graph", recording)
    return calls


def test_demo_stage2_pair_matrices_and_graph(photo, tmp_path, graph_calls):
    ckpt = save_release_checkpoint(tmp_path / "MEFARG_resnet18_DISFA_fold1.pth", 2, 8)
    out, crops = tmp_path / "out", tmp_path / "crops"
    assert demo.main(demo.parse_args(["--resume", str(ckpt), "--input", str(photo), "--output", str(out),
                                      "--graph", "--save-crops", str(crops), "--no-annotate"])) == 0
    result = json.loads((out / "predictions.json").read_text())
    (face,) = result["results"][0]["faces"]
    assert "row i" in result["pair_probs_note"] and face["graph"] == "graphs/astronaut_640x480_face0.png"
    graph = cv2.imread(str(out / face["graph"]))
    assert graph is not None and graph.shape[0] > 400 and not (out / "graphs" / "astronaut_640x480_face0.csv").exists()
    # the matrices are relations.pair_probabilities of the model's edge logits on that crop
    det = AUDetector(ckpt, detect=False)
    crop = cv2.imread(str(crops / "astronaut_640x480_face0.png"))
    with torch.no_grad():
        probs, edge_logits = det.model(det._to_tensor(crop)[None])
    expected = relations.pair_probabilities(edge_logits[0])
    for key in ("p_both", "p_i_without_j"):
        got = np.array(face["pair_probs"][key])
        assert got.shape == (8, 8)
        np.testing.assert_allclose(got, expected[key], rtol=0, atol=5.1e-5)
    np.testing.assert_allclose([face["probs"][n] for n in result["au_names"]], probs[0].numpy(), atol=1e-5)
    # one line per matrix row in the file; the graph draws these probabilities and P(both)
    text = (out / "predictions.json").read_text()
    assert text.count("[" + ", ".join(json.dumps(v) for v in face["pair_probs"]["p_both"][0]) + "]") == 1
    (call,) = graph_calls
    assert call["au_names"] == result["au_names"] and "AU relations (stage 2)" in call["title"]
    np.testing.assert_allclose(call["p_both"], expected["p_both"], atol=1e-5)
    # the Python API: FaceResult carries the edge logits; classify returns them on request only
    (api_face,) = det.predict_image(crop)
    np.testing.assert_allclose(api_face.pair_probs["p_both"], expected["p_both"], atol=1e-5)
    assert isinstance(det.classify([crop]), np.ndarray)
    p, e = det.classify([crop, crop], edges=True)
    assert p.shape == (2, 8) and e.shape == (2, 64, 4)


def test_demo_graph_without_edges(photo, tmp_path, graph_calls, caplog):
    """Stage 1 and OpenGraphAU: nodes only (OpenGraphAU: its 27 main AUs), said in the title and
    in one log line; predictions.json has no pair matrices."""
    stage1 = save_release_checkpoint(tmp_path / "MEFARG_resnet18_BP4D_fold1.pth", 1, 12, neighbor_num=4)
    og2 = save_release_checkpoint(tmp_path / "OpenGprahAU-ResNet18_second_stage.pth", 2, 41, "opengraphau")
    for ckpt, n, words in ((stage1, 12, "stage-1 model, nodes only"), (og2, 27, "27 main AUs, nodes only")):
        out = tmp_path / ckpt.stem
        with caplog.at_level(logging.INFO, logger="demo"):
            assert demo.main(demo.parse_args(["--resume", str(ckpt), "--input", str(photo), "--output", str(out),
                                              "--graph", "--no-detect", "--no-annotate"])) == 0
        assert "predicts no AU relations" in caplog.text
        caplog.clear()
        result = json.loads((out / "predictions.json").read_text())
        (face,) = result["results"][0]["faces"]
        assert "pair_probs" not in face and "pair_probs_note" not in result
        assert (out / face["graph"]).is_file()
        call = graph_calls.pop()
        assert call["p_both"] is None and call["au_names"] == result["au_names"][:n] and words in call["title"]
        np.testing.assert_allclose(call["probs"], [face["probs"][a] for a in result["au_names"][:n]], atol=1e-6)
        det = AUDetector(ckpt, detect=False)
        assert not det.has_edges and det.classify([cv2.imread(str(photo))], edges=True)[1] is None


def test_demo_video_graph_every(photo, tmp_path):
    ckpt = save_release_checkpoint(tmp_path / "MEFARG_resnet18_DISFA_fold1.pth", 2, 8)
    video = tmp_path / "clip.avi"
    frame = cv2.resize(cv2.imread(str(photo)), (160, 120))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(5):
        writer.write(frame)
    writer.release()
    out = tmp_path / "out"
    assert demo.main(demo.parse_args(["--resume", str(ckpt), "--input", str(video), "--output", str(out), "--graph",
                                      "--graph-every", "2", "--no-detect", "--no-annotate"])) == 0
    assert sorted(p.name for p in (out / "graphs").iterdir()) == [
        "clip_frame0_face0.png", "clip_frame2_face0.png", "clip_frame4_face0.png"]
    result = json.loads((out / "predictions.json").read_text())
    graphs = [f.get("graph") for r in result["results"] for f in r["faces"]]
    assert graphs == ["graphs/clip_frame0_face0.png", None, "graphs/clip_frame2_face0.png", None,
                      "graphs/clip_frame4_face0.png"]
    assert all(np.array(f["pair_probs"]["p_both"]).shape == (8, 8) for r in result["results"] for f in r["faces"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--input", str(video), "--graph-every", "0"])
