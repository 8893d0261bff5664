"""Precision layer (inference/precision.py), int8 export (tool/export_onnx.py --precision int8) and
the roofline (inference/roofline.py).

The models have random weights with non-trivial BatchNorm statistics (as test_onnx_export's): no
trained face model is available offline and training one is far too slow for a test, so the
probability guard measures how much quantisation moves a random ResNet-18's outputs on real
face crops (the photograph's, through the project's MTCNN cropper) -- at 112 x 112, 0.018 here,
within the 0.02 bound; a random ResNet-50 stage 2 at 224 moves 0.008 -- not how a trained model's
accuracy changes. The F1 guard's test checks its arithmetic on a tiny SYNTH test fold (8 images;
a random model's F1 there is no accuracy claim).
"""
import contextlib
import csv
import io
import json

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import demo  # noqa: E402
from cli_runs import captured_run  # noqa: E402
from megraphau import provenance  # noqa: E402
from megraphau.inference import precision as P  # noqa: E402
from megraphau.inference import roofline as R  # noqa: E402
from megraphau.model import build_model, model_config_dict  # noqa: E402
from megraphau.model.onnx_export import OnnxAUModel  # noqa: E402
from tool import export_onnx as cli  # noqa: E402

CROP = 112
BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


def save_project_checkpoint(path, model, crop=CROP):
    facts = {"dataset": "BP4D", "au_names": BP4D, "crop_preset": "BP4D", "crop_size": crop, "fold": 1}
    torch.save({"state_dict": model.state_dict(), "model_config": model_config_dict(model), "facts": facts}, path)
    return path


def random_model(stage=1, crop=CROP):
    torch.manual_seed(0)
    model = build_model(stage, "resnet18", 12, 4, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(4, 3, crop, crop))
    return model.eval()


def run_cli(argv):
    return captured_run(cli.main, argv)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ResNet-18 stage-1 project checkpoint exported with --precision int8 and a calibration folder."""
    root = tmp_path_factory.mktemp("precision")
    model = random_model()
    ckpt = save_project_checkpoint(root / "r18.pth", model)
    crops = root / "crops"
    crops.mkdir()
    for i, crop in enumerate(P.photo_crops(2, seed=5)):
        cv2.imwrite(str(crops / f"{i}.png"), crop)
    onnx_path = root / "r18.onnx"
    result = run_cli(["--resume", str(ckpt), "--output", str(onnx_path), "--precision", "int8",
                      "--calibration", str(crops)])
    return {"model": model, "pth": ckpt, "onnx": onnx_path, "int8": root / "r18.int8.onnx", "crops": crops,
            "cli": result}


@pytest.mark.slow  # export, verification and calibration of a ResNet-18: about 25 s of CPU
def test_int8_export_writes_guarded_file(exported):
    code, out, err = exported["cli"]
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"wrote {exported['onnx']} (")
    assert lines[1].startswith(f"wrote {exported['int8']} (") and "static int8" in lines[1]
    assert lines[2].startswith("int8 onnxruntime guard probs: max abs diff") and lines[2].endswith("passed")
    int8 = OnnxAUModel(exported["int8"])
    quant = int8.metadata["precision"]
    assert quant["precision"] == "int8" and quant["format"] == "QDQ" and quant["calibration_faces"] == 32 + 2
    assert quant["float_file"]["path"] == str(exported["onnx"])
    assert int8.facts == OnnxAUModel(exported["onnx"]).facts  # the same model facts: AUDetector reads it alike
    assert P.onnx_file_precision(exported["int8"]) == "int8" and P.onnx_file_precision(exported["onnx"]) == "fp32"
    assert exported["int8"].stat().st_size < 0.4 * exported["onnx"].stat().st_size
    # the guard again, as a dict for export/benchmark to print
    inputs = P.model_inputs(P.guard_crops(), CROP)
    guard = P.probability_guard(P.make_runner("onnxruntime", "fp32", exported["onnx"]),
                                P.make_runner("onnxruntime", "int8", exported["int8"]), inputs, "int8", "onnxruntime")
    assert {"precision", "max_abs_diff", "bound", "passed"} <= guard.keys() and guard["bound"] == 0.02
    assert 0 < guard["max_abs_diff"] <= 0.02 and guard["passed"] and guard["faces"] == 10
    with pytest.raises(P.PrecisionError, match="holds a fp32 model"):
        P.make_runner("onnxruntime", "int8", exported["onnx"])
    with pytest.raises(P.PrecisionError, match="already quantised"):
        P.quantize_int8(exported["int8"])
    # the precision record an output's provenance carries
    facts = P.precision_facts("onnxruntime", "int8", exported["int8"], guards=[guard])
    record = provenance.collect(precision=facts)
    assert record["precision"]["quantisation"]["precision"] == "int8" and record["precision"]["guards"] == [guard]
    assert json.loads(json.dumps(record)) == record


def test_bf16_pytorch_guard():
    inputs = P.model_inputs(P.guard_crops(), CROP)
    model = random_model()
    guard = P.probability_guard(P.make_runner("pytorch", "fp32", model), P.make_runner("pytorch", "bf16", model),
                                inputs, "bf16", "pytorch")
    assert 0 < guard["max_abs_diff"] <= P.PROB_BOUND and guard["passed"]  # > 0: it did run in bfloat16
    assert P.guard_line(guard).startswith("bf16 pytorch guard probs: max abs diff")


def test_refusals_are_one_line(tmp_path):
    reason = P.unsupported_reason("pytorch", "int8")
    assert "ONNX Runtime int8" in reason and "\n" not in reason
    with pytest.raises(P.PrecisionError):
        P.make_runner("pytorch", "int8", torch.nn.Identity())
    with pytest.raises(P.PrecisionError, match="precision 'fp16'"):
        P.check_combination("pytorch", "fp16")
    assert ("pytorch", "bf16") in P.supported_combinations() and ("onnxruntime", "int8") in P.supported_combinations()
    if P.ort_has_bf16_kernels():
        pytest.skip("this onnxruntime runs bfloat16")
    assert "no bfloat16 kernels" in P.unsupported_reason("onnxruntime", "bf16")
    code, out, err = run_cli(["--resume", str(tmp_path / "x.pth"), "--output", str(tmp_path / "x.onnx"),
                              "--precision", "bf16"])
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: --precision bf16: ")


def test_f1_guard_arithmetic(tmp_path):
    from megraphau import synth as synth_faces

    root = synth_faces.generate_synthetic_dataset(tmp_path / "synth", subjects_per_part=1, tasks=2, frames=4,
                                                  seed=0, size=64)
    reference = P.make_runner("pytorch", "fp32", random_model(crop=48))
    same = P.f1_guard(reference, reference, root, "fp32", "pytorch", crop_size=48)
    assert same["images"] == 8 and same["f1_delta"] == 0 and same["passed"] and same["max_abs_diff"] == 0
    flipped = P.f1_guard(reference, lambda x: 1 - reference(x), root, "int8", crop_size=48)
    assert flipped["f1_delta"] == pytest.approx(flipped["f1"] - flipped["f1_fp32"])
    assert flipped["passed"] == (abs(flipped["f1_delta"]) <= 0.5) and not flipped["passed"]
    assert "guard f1: test mean F1" in P.guard_line(flipped) and P.guard_line(flipped).endswith("FAILED")


def test_precision_in_provenance():
    guard = {"guard": "probs", "precision": "bf16", "engine": "pytorch", "max_abs_diff": 0.01, "bound": 0.02,
             "passed": True}
    facts = P.precision_facts("pytorch", "bf16", guards=[guard])
    assert facts["computes"].startswith("torch.autocast bfloat16") and facts["quantisation"] is None
    record = provenance.collect(precision=facts)
    assert record["precision"] == facts and json.loads(json.dumps(record)) == record
    assert "precision" not in provenance.collect()  # only when given


class TinyConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_roofline_numbers():
    size = 16
    analytic = 2 * 8 * 3 * 3 * 3 * size * size + 2 * 8 * 4  # conv and linear multiply-adds, x2
    assert R.model_flops(TinyConv(), crop_size=size) == analytic
    assert R.model_flops(TinyConv(), crop_size=size, batch=3) == analytic  # per face
    for engine, precision in (("pytorch", "fp32"), ("pytorch", "bf16"), ("onnxruntime", "fp32"),
                              ("onnxruntime", "int8")):
        peak = R.matmul_peak(precision, engine, threads=1, size=256, seconds=0.05)
        assert 1e8 < peak < 1e14, (engine, precision, peak)
    assert R.matmul_peak("int8", "pytorch") is None
    roof = R.roofline(1e9, 0.01, 1e12)
    assert roof["measured_fps"] == pytest.approx(100) and roof["achieved_gflops"] == pytest.approx(100)
    assert roof["fraction"] == pytest.approx(0.1) and roof["bound_fps"] == pytest.approx(1000)
    assert R.roofline(1e9, 0.01, None)["fraction"] is None
    assert R.arc_flops("resnet18", 1, crop_size=32) > 0


# --------------------------------------------------------------------------------------------
# demo.py --precision
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A project checkpoint (ResNet-18 stage 1 at 112) and a folder of two face crops (--no-detect)."""
    root = tmp_path_factory.mktemp("demo_precision")
    folder = root / "faces"
    folder.mkdir()
    for i, crop in enumerate(P.photo_crops(2, seed=3)):
        cv2.imwrite(str(folder / f"{i}.png"), crop)
    return {"pth": save_project_checkpoint(root / "r18.pth", random_model()), "folder": folder}


def run_demo(*argv):
    """demo.py's exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = demo.cli([str(a) for a in argv])
        except SystemExit as stop:  # a command-line error (parse_args)
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def demo_rows(out_dir):
    with open(out_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["file"]: np.array([float(r[f"{n}_prob"]) for n in BP4D]) for r in rows}


def demo_precision(out_dir):
    meta = json.loads((out_dir / "predictions.json").read_text())
    return meta["precision"], meta["provenance"]["precision"]


def test_demo_bf16_rows_near_fp32_and_alias(faces, tmp_path):
    """--precision bf16 on a .pth: rows within the guard's bound of float32's, recorded in
    predictions.json; the deprecated --bf16 gives the same rows with a note."""
    common = ["--resume", faces["pth"], "--input", faces["folder"], "--no-detect", "--no-annotate", "--threads", "1"]
    outs = {name: tmp_path / name for name in ("fp32", "bf16", "alias")}
    assert run_demo(*common, "--output", outs["fp32"])[0] == 0
    assert run_demo(*common, "--output", outs["bf16"], "--precision", "bf16")[0] == 0
    code, _, err = run_demo(*common, "--output", outs["alias"], "--bf16")
    assert code == 0 and "--bf16 is deprecated; use --precision bf16" in err
    fp32, bf16, alias = (demo_rows(outs[k]) for k in ("fp32", "bf16", "alias"))
    assert sorted(fp32) == sorted(bf16) == ["0.png", "1.png"]
    diff = max(np.abs(bf16[k] - fp32[k]).max() for k in fp32)
    assert 0 < diff <= P.PROB_BOUND  # > 0: it did run in bfloat16
    assert all(np.array_equal(alias[k], bf16[k]) for k in bf16)
    assert demo_precision(outs["fp32"])[0] == "fp32" and demo_precision(outs["fp32"])[1]["precision"] == "fp32"
    summary, record = demo_precision(outs["bf16"])
    assert summary == "bf16" and record["engine"] == "pytorch" and record["computes"].startswith("torch.autocast")
    code, _, err = run_demo(*common, "--output", tmp_path / "x", "--bf16", "--precision", "int8")
    assert code == 2 and "--bf16 (deprecated: --precision bf16) contradicts --precision int8" in err


def test_demo_int8_with_pth_is_one_line(faces, tmp_path):
    code, out, err = run_demo("--resume", faces["pth"], "--input", faces["folder"], "--no-detect", "--precision",
                              "int8", "--output", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "int8 runs on ONNX Runtime" in lines[0] and "tool/export_onnx.py --precision int8" in lines[0]
    assert ".int8.onnx" in lines[0]


@pytest.mark.slow  # uses the int8 export fixture (about 25 s of CPU)
def test_demo_int8_onnx(exported, tmp_path, caplog):
    """--precision int8 with the float32 .onnx uses its int8 file beside it (quantised on first
    use; here tool/export_onnx.py made it, guard recorded); the .int8.onnx runs as int8 by
    itself; the rows are within the guard's bound of float32's; precision in predictions.json."""
    common = ["--input", exported["crops"], "--no-detect", "--no-annotate", "--threads", "1"]
    outs = {name: tmp_path / name for name in ("fp32", "int8", "direct")}
    assert run_demo("--resume", exported["onnx"], *common, "--output", outs["fp32"])[0] == 0
    with caplog.at_level("INFO"):
        assert run_demo("--resume", exported["onnx"], "--precision", "int8", *common, "--output", outs["int8"])[0] == 0
    assert f"int8: using the cached {exported['int8']}" in caplog.text
    assert "int8 onnxruntime guard probs: max abs diff" in caplog.text
    assert run_demo("--resume", exported["int8"], *common, "--output", outs["direct"])[0] == 0
    fp32, int8, direct = (demo_rows(outs[k]) for k in ("fp32", "int8", "direct"))
    assert all(np.array_equal(direct[k], int8[k]) for k in int8)
    assert 0 < max(np.abs(int8[k] - fp32[k]).max() for k in fp32) <= P.PROB_BOUND
    for name in ("int8", "direct"):
        summary, record = demo_precision(outs[name])
        assert summary == "int8" and record["engine"] == "onnxruntime"
        assert record["quantisation"]["format"] == "QDQ" and record["guards"][0]["passed"]
    code, _, err = run_demo("--resume", exported["int8"], "--precision", "fp32", *common, "--output", tmp_path / "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds an int8 model" in err
    code, _, err = run_demo("--resume", exported["onnx"], "--precision", "bf16", *common, "--output", tmp_path / "x")
    assert code == 2 and "bfloat16 is for PyTorch models" in err


@pytest.mark.slow  # quantises a ResNet-18 (about 10 s of CPU) after the export fixture
def test_int8_quantised_on_first_use(exported, tmp_path):
    """A float32 .onnx without an int8 file beside it: quantised on first use and cached (guard recorded)."""
    import shutil

    float_copy = tmp_path / "copy.onnx"
    shutil.copy(exported["onnx"], float_copy)
    path, guards, made = P.cached_int8(float_copy)
    assert made and path == tmp_path / "copy.int8.onnx" and guards[0]["passed"]
    assert P.onnx_metadata(path)["precision"]["guards"] == guards
    assert P.cached_int8(float_copy)[2] is False  # the cached file
