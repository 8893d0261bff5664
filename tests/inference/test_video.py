"""demo.py on videos and ONNX models (issue 14): an exported .onnx gives the .pth's predictions,
the pipelined video path gives the sequential path's rows in frame order, rows reach the files
as they are made (a run killed with SIGKILL leaves complete rows of a prefix of the frames),
OpenFace column names, and the PyTorch vs ONNX Runtime benchmark. Frames show a real photograph
(tests/data/astronaut.jpg) moving on a 640x480 background (bench/bench_video.py)."""
import csv
import json
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import demo  # noqa: E402
from megraphau.inference.benchmark import onnx_for_benchmark  # noqa: E402
from megraphau.inference.detector import AUDetector, InferenceError  # noqa: E402
from megraphau.inference.inputs import DemoError, video_frames  # noqa: E402
from megraphau.inference.pipeline import VideoPipeline  # noqa: E402
from megraphau.inference.runner import sequential_results  # noqa: E402
from megraphau.inference.sample_media import write_face_video  # noqa: E402
from megraphau.inference.writers import openface_au_name  # noqa: E402
from megraphau.model import CheckpointMismatchError, build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A release-style ResNet-18 stage-2 checkpoint (12 AUs: BP4D) and its ONNX export."""
    root = tmp_path_factory.mktemp("video_models")
    torch.manual_seed(0)
    model = build_model(2, "resnet18", 12, neighbor_num=4, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(2, 3, 224, 224))
    pth = root / "MEFARG_resnet18_BP4D_fold1.pth"
    torch.save({"epoch": 1, "state_dict": OrderedDict(("module." + k, v) for k, v in model.state_dict().items()),
                "optimizer": {}}, pth)
    # exported as demo.py --benchmark does (from the detector's model; not verified: the tests below
    # compare the two engines themselves)
    exported = onnx_for_benchmark(AUDetector(pth, detect=False), root)
    onnx = exported.rename(root / "MEFARG_resnet18_BP4D_fold1.onnx")
    return {"pth": pth, "onnx": onnx}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """12 frames of 640x480, a face in each but frames 5 and 6 (the tracker loses and finds it)."""
    return write_face_video(tmp_path_factory.mktemp("video") / "clip.avi", 12, blank=(5, 6))


def run_demo(*argv):
    assert demo.main(demo.parse_args([str(a) for a in argv])) == 0


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probs_of(row):
    return np.array([float(row[f"{n}_prob"]) for n in BP4D])


def test_onnx_gives_the_checkpoints_predictions(models, tmp_path):
    """The same predictions.csv (probabilities within 1e-4) and settings for a .pth and its .onnx,
    on real-photo frames; the ONNX metadata gives the AU names, crop preset, crop size and stage."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cap = cv2.VideoCapture(str(write_face_video(tmp_path / "src.avi", 40)))
    for k in range(40):
        ok, frame = cap.read()
        if k in (0, 17, 39):
            cv2.imwrite(str(folder / f"frame{k:02d}.png"), frame)
    cap.release()
    outs = {}
    for kind in ("pth", "onnx"):
        outs[kind] = tmp_path / kind
        run_demo("--resume", models[kind], "--input", folder, "--output", outs[kind], "--no-annotate")
    torch_rows, onnx_rows = (read_rows(outs[k] / "predictions.csv") for k in ("pth", "onnx"))
    assert [r["file"] for r in torch_rows] == ["frame00.png", "frame17.png", "frame39.png"]
    assert all(r["no_face"] == "0" for r in torch_rows)
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        keys = ("file", "face", "x", "y", "w", "h")
        assert [a[k] for k in keys] == [b[k] for k in keys]
        pa, pb = probs_of(a), probs_of(b)
        assert np.abs(pa - pb).max() < 1e-4
        labels_a, labels_b = (np.array([int(r[n]) for n in BP4D]) for r in (a, b))
        assert ((labels_a == labels_b) | (np.abs(pa - 0.5) < 1e-4)).all()
    meta = {k: json.loads((outs[k] / "predictions.json").read_text()) for k in outs}
    for key in ("au_names", "arc", "stage", "crop_preset", "crop_size", "variant"):
        assert meta["pth"][key] == meta["onnx"][key], key
    assert meta["onnx"]["au_names"] == BP4D and meta["onnx"]["crop_preset"] == "BP4D"
    assert (meta["pth"]["engine"], meta["onnx"]["engine"]) == ("pytorch", "onnxruntime")
    assert meta["onnx"]["complete"] and len(meta["onnx"]["results"]) == 3  # images: results kept
    lines = (outs["onnx"] / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == ["frame00.png", "frame17.png", "frame39.png"]

    det = AUDetector(models["onnx"], threads=1)
    assert (det.backend, det.arc, det.stage, det.crop_size, det.crop_preset) == \
        ("onnxruntime", "resnet18", 2, 224, "BP4D")
    with pytest.raises(CheckpointMismatchError, match="--stage 1 contradicts"):
        AUDetector(models["onnx"], stage=1)


def test_bf16_is_close_and_for_pytorch_only(models):
    """--bf16: bfloat16 autocast, probabilities near float32's; an ONNX model refuses it."""
    fp32 = AUDetector(models["pth"], detect=False, threads=1)
    bf16 = AUDetector(models["pth"], detect=False, threads=1, bf16=True)
    crops = [np.random.default_rng(k).integers(0, 256, (256, 256, 3), dtype=np.uint8) for k in range(2)]
    probs, edges = bf16.classify(crops, edges=True)
    assert probs.dtype == np.float32 and edges.shape == (2, 144, 4)
    assert np.abs(probs - fp32.classify(crops)).max() < 2e-2
    with pytest.raises(InferenceError, match="bfloat16 is for PyTorch models"):
        AUDetector(models["onnx"], bf16=True)
    assert bf16.precision == "bf16" and bf16.bf16 and not fp32.bf16  # bf16=True: the deprecated alias


def test_model_input_is_the_test_transform(models):
    """The fast crop -> model input (a look-up table) is the torchvision test transform, bit for bit."""
    det = AUDetector(models["onnx"], detect=False)
    crop = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert np.array_equal(det.model_input(crop), det._to_tensor(crop).numpy())


def test_pipelined_video_gives_the_sequential_rows(models, video, tmp_path):
    """Threads and batches across frames change nothing: same rows, frame order, boxes, and
    probabilities within 1e-5; face-less frames in their place."""
    common = ["--resume", models["onnx"], "--input", video, "--batch-size", "4", "--no-annotate", "--threads", "1"]
    run_demo(*common, "--output", tmp_path / "seq", "--no-pipeline")
    run_demo(*common, "--output", tmp_path / "pipe")
    seq, pipe = read_rows(tmp_path / "seq" / "predictions.csv"), read_rows(tmp_path / "pipe" / "predictions.csv")
    assert [r["frame"] for r in pipe] == [str(k) for k in range(12)]
    assert [r["no_face"] for r in pipe] == ["1" if k in (5, 6) else "0" for k in range(12)]
    for a, b in zip(seq, pipe, strict=True):
        assert [a[k] for k in ("frame", "face", "x", "y", "w", "h", "no_face")] == \
               [b[k] for k in ("frame", "face", "x", "y", "w", "h", "no_face")]
        if a["no_face"] == "0":
            assert np.abs(probs_of(a) - probs_of(b)).max() <= 1e-5
    meta = json.loads((tmp_path / "pipe" / "predictions.json").read_text())
    assert meta["complete"] and meta["summary"] == {"items": 12, "faces": 10, "no_face": 2, "errors": 0}
    lines = [json.loads(line) for line in (tmp_path / "pipe" / "predictions.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(12))
    assert meta["results"] == lines  # copied from predictions.jsonl at the end
    assert len(lines[0]["faces"][0]["pair_probs"]["p_both"]) == 12  # stage 2: the pair relations

    # the Python side: two model workers, the PyTorch model, results in order
    det = AUDetector(models["pth"], batch_size=3, threads=1)
    frames = list(video_frames(video))
    reference = list(sequential_results(det, frames))
    with VideoPipeline(det, frames, model_workers=2) as results:
        got = list(results)
    assert [r.index for r in got] == [r.index for r in reference] == list(range(12))
    for a, b in zip(reference, got):
        assert [f.box for f in a.faces] == [f.box for f in b.faces]
        if a.faces:
            assert np.abs(a.faces[0].probs - b.faces[0].probs).max() <= 1e-5
    assert results.times.frames == 12 and results.times.faces == 10


def test_pipeline_stage_error_reaches_the_caller(models):
    det = AUDetector(models["onnx"], threads=1)

    def broken():
        yield 0, np.zeros((48, 64, 3), np.uint8)
        raise DemoError("clip.mp4: decoding failed")

    with pytest.raises(DemoError, match="decoding failed"):
        list(VideoPipeline(det, broken()))


def test_rows_are_flushed_as_made(models, tmp_path):
    """A run killed with SIGKILL mid-video leaves complete CSV rows (and JSON lines) of the first
    frames, in order."""
    video = write_face_video(tmp_path / "long.avi", 400)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "demo.py"), "--resume", str(models["onnx"]), "--input",
                             str(video), "--output", str(out), "--batch-size", "2", "--no-annotate",
                             "--threads", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    csv_path = out / "predictions.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.is_file() and csv_path.read_bytes().count(b"\n") >= 5:  # header + 4 rows
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    data = csv_path.read_text()
    assert data.endswith("\n")  # no half-written row
    rows = list(csv.reader(data.splitlines()))
    header, rows = rows[0], rows[1:]
    assert 4 <= len(rows) < 400
    assert all(len(r) == len(header) for r in rows)
    assert [int(r[1]) for r in rows] == list(range(len(rows)))  # a prefix of the frames
    lines = (out / "predictions.jsonl").read_text()
    assert lines.endswith("\n")
    frames = [json.loads(line)["frame"] for line in lines.splitlines()]
    assert frames == list(range(len(frames))) and len(frames) >= len(rows) - 2
    assert json.loads((out / "predictions.json").read_text())["complete"] is False


def test_openface_columns(models, video, tmp_path):
    run_demo("--resume", models["onnx"], "--input", video, "--output", tmp_path / "of", "--no-annotate",
             "--openface-columns", "--threads", "1", "--every-n", "2")
    with open(tmp_path / "of" / "predictions.csv", newline="") as f:
        header = next(csv.reader(f))
    codes = ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
    assert header == (["frame", "face_id", "timestamp", "confidence", "success"] + [f"{c}_c" for c in codes]
                      + [f"{c}_p" for c in codes] + ["file", "box_x", "box_y", "box_w", "box_h"])
    rows = read_rows(tmp_path / "of" / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == [1, 3, 5, 7, 9, 11]  # OpenFace counts frames from 1
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
    assert [float(r["timestamp"]) for r in rows] == pytest.approx([k / fps for k in (0, 2, 4, 6, 8, 10)], abs=1e-3)
    assert [r["success"] for r in rows] == ["1", "1", "1", "0", "1", "1"]  # frame 6 (7th) is blank
    for r in rows:
        probs = np.array([float(r[f"{c}_p"]) for c in codes])
        assert [int(r[f"{c}_c"]) for c in codes] == ((probs >= 0.5) & (r["success"] == "1")).astype(int).tolist()
        assert (0.6 < float(r["confidence"]) <= 1) == (r["success"] == "1")
    assert [openface_au_name(n) for n in ("AU1", "AU45", "AUL1", "AUR14", "Smile")] == \
           ["AU01", "AU45", "AUL01", "AUR14", "Smile"]


def test_benchmark_smoke(models, video, capsys):
    """--benchmark: PyTorch and ONNX Runtime rows side by side, ms per stage, their agreement."""
    run_demo("--resume", models["pth"], "--benchmark-onnx", models["onnx"], "--input", video, "--benchmark",
             "--benchmark-frames", "8", "--benchmark-repeats", "1", "--no-annotate", "--batch-size", "4")
    out = capsys.readouterr().out
    assert "8 frames of clip.avi, 640x480" in out
    header = next(line for line in out.splitlines() if line.startswith("engine"))
    assert header.split()[:8] == ["engine", "precision", "frames/s", "decode", "detect", "crop", "model", "write"]
    rows = {}  # the first table's row of each engine
    for line in out.splitlines():
        for name in ("PyTorch", "ONNX Runtime"):
            if line.startswith(name):
                rows.setdefault(name, line[len(name):].split())
    assert set(rows) == {"PyTorch", "ONNX Runtime"}
    for cells in rows.values():
        assert cells[0] == "fp32"  # the precision of each row
        assert float(cells[1]) > 0 and float(cells[5]) > 0  # frames/s, model ms per frame
    diff = float(out.split("PyTorch fp32 vs ONNX Runtime fp32: ")[1].split()[0])
    assert diff < 1e-4
