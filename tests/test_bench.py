"""The benchmark scripts run in tiny configurations and print their tables."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_data, bench_metrics, bench_model

ROOT = Path(__file__).resolve().parents[1]


def test_bench_model_tiny_in_process(capsys, tmp_path):
    out_json = tmp_path / "model.json"
    bench_model.main(["--arcs", "resnet18", "--batch-size", "2", "--iters", "1", "--warmup", "0",
                      "--stages", "1", "2", "--num-classes", "3", "--mode", "train", "--no-memory", "--markdown",
                      "--json", str(out_json)])
    out = capsys.readouterr().out
    assert "| arc | stage | AUs | mode | form | img/s |" in out
    rows = json.loads(out_json.read_text())["rows"]
    # stage 1: fast only; stage 2: fast and reference
    assert [(r["stage"], r["mode"], r["variant"]) for r in rows] == [
        (1, "train", "fast"), (2, "train", "fast"), (2, "train", "reference")]
    assert all(r["images_per_s"] > 0 and not r["error"] for r in rows)
    assert all(r["speed_ratio"] > 0 for r in rows if r["stage"] == 2 and r["variant"] == "fast")


def test_bench_model_grad_checkpointing_forms(tmp_path):
    out_json = tmp_path / "model.json"
    bench_model.main(["--arcs", "resnet18", "--batch-size", "2", "--iters", "1", "--warmup", "0", "--stages", "2",
                      "--num-classes", "3", "--mode", "train", "--no-memory", "--grad-checkpointing", "0", "2",
                      "--json", str(out_json)])
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fast", "fast+gc2", "reference"]
    assert all(r["speed_ratio"] > 0 for r in rows[:2]) and rows[2]["speed_ratio"] is None
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--grad-checkpointing", "5"])


def test_bench_model_bf16_channels_last(capsys):
    bench_model.main(["--arcs", "resnet18", "--batch-size", "2", "--iters", "1", "--warmup", "0", "--stages", "2",
                      "--num-classes", "3", "--mode", "train", "--amp", "bf16", "--channels-last", "--no-memory",
                      "--no-reference"])
    out = capsys.readouterr().out
    assert "amp bf16, channels_last True" in out and "reference" not in out.split("\n", 1)[1]


@pytest.mark.slow
def test_bench_model_cli_with_memory_children(tmp_path):
    """The command line as documented, with a fresh child process per configuration for peak RSS."""
    out_json = tmp_path / "model.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_model.py", "--device", "cpu", "--threads", "2", "--arcs", "resnet18",
         "--batch-size", "2", "--iters", "1", "--warmup", "0", "--stages", "2", "--num-classes", "2",
         "--mode", "eval", "--memory-steps", "1", "--markdown", "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| speed x | best x | memory x |" in result.stdout and "| reference |" in result.stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert all(r["peak_mb"] > 100 and r["memory_kind"].startswith("peak RSS") for r in rows)
    assert rows[0]["memory_ratio"] > 0


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux /proc only")
def test_child_peak_rss_is_not_inherited_from_the_parent():
    """Linux copies a parent's ru_maxrss into its children; the bench must report the child's own peak."""
    import numpy as np
    block = np.ones(1_500_000_000 // 8)  # ~1.5 GB resident in this (parent) process
    code = "from bench.bench_model import peak_rss_mb; print(peak_rss_mb())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1200 < bench_model.peak_rss_mb()
    del block


def test_bench_model_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--batch-size", "0"])
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--arcs", "vgg16"])


def test_bench_data_tiny(capsys):
    bench_data.main(["--images", "2", "--rounds", "1", "--markdown"])
    out = capsys.readouterr().out
    assert "| split | pipeline | img/s |" in out
    assert "release-style PIL" in out
    assert "ours (dataset.py)" in out  # dataset.build_transform is on main


def test_release_style_transform_output():
    from PIL import Image
    image = Image.new("RGB", (256, 256), (120, 80, 40))
    for train in (True, False):
        out = bench_data.release_style_transform(train)(image)
        assert tuple(out.shape) == (3, 224, 224)


def test_bench_metrics_tiny_and_agreement(capsys):
    bench_metrics.main(["--frames", "500", "--aus", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "release-style Python loop" in out and "metrics.compute_au_metrics" in out
    assert "(agree)" in out


def test_release_style_metrics_counts():
    import numpy as np
    probs = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.4]])
    labels = np.array([[1, 0], [1, 1], [0, 0]])
    result = bench_metrics.release_style_metrics(probs, labels)
    # AU 0: TP 1, FN 1, FP 1 -> F1 2/4; acc 1/3. AU 1: TP 1 -> F1 1; acc 1
    assert np.allclose(result["f1"], [0.5, 1.0]) and np.allclose(result["acc"], [1 / 3, 1.0])


def test_bench_json_records_provenance(tmp_path):
    from megraphau import provenance

    out_json = tmp_path / "metrics.json"
    argv = ["--frames", "50", "--aus", "2", "--repeats", "1", "--json", str(out_json)]
    bench_metrics.main(argv)
    prov = json.loads(out_json.read_text())["provenance"]
    assert prov["version"] == provenance.__version__ and prov["device"]["type"] == "cpu"
    assert prov["command"] == provenance.command_line(["bench/bench_metrics.py", *argv])
    assert prov["git"] == provenance.git_info()


def test_bench_and_tool_import_the_package_only():
    """bench/ and tool/ scripts import megraphau, never demo.py or another script (a script is no library)."""
    import ast

    for path in sorted([*(ROOT / "bench").glob("*.py"), *(ROOT / "tool").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("demo", "tool", "bench", "test"), f"{path.name} imports {name}"


@pytest.mark.parametrize("script", ["bench_video.py", "bench_faces.py"])
def test_bench_scripts_run_from_any_folder(script, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def test_bench_video_guards_of_a_trained_checkpoint(tmp_path, capsys):
    """--guard-checkpoint: both guards (probabilities, test F1) for every offered precision."""
    pytest.importorskip("onnxruntime")
    import torch

    from bench import bench_video
    from megraphau.inference import precision as P
    from megraphau.model import build_model, model_config_dict
    from megraphau.synth import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "synth", subjects_per_part=1, tasks=2, frames=4, seed=0, size=64)
    torch.manual_seed(0)
    model = build_model(1, "resnet18", 12, 4, pretrained=False).eval()
    facts = {"dataset": "SYNTH", "crop_preset": "BP4D", "crop_size": 48, "fold": 1}
    ckpt = tmp_path / "synth.pth"
    torch.save({"state_dict": model.state_dict(), "model_config": model_config_dict(model), "facts": facts}, ckpt)
    bench_video.main(["--workdir", str(tmp_path / "work"), "--guard-checkpoint", str(ckpt), "--guard-data", str(root)])
    lines = capsys.readouterr().out.strip().splitlines()
    offered = [c for c in P.supported_combinations() if c != ("pytorch", "fp32")]
    assert len(lines) == 2 * len(offered)
    for (engine, precision), probs, f1 in zip(offered, lines[::2], lines[1::2]):
        assert probs.startswith(f"{precision} {engine} guard probs: max abs diff ")
        assert f1.startswith(f"{precision} {engine} guard f1: test mean F1 ") and "SYNTH fold 1 (8 images)" in f1
    with pytest.raises(SystemExit):  # the data set root is required
        bench_video.main(["--workdir", str(tmp_path / "work"), "--guard-checkpoint", str(ckpt)])


def test_bench_scale_single_process_tiny(tmp_path, capsys):
    from bench import bench_scale

    rows = bench_scale.main(["--videos", "2", "--frames", "3", "--size", "160x120", "--workers",
                             "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert [r["run"] for r in rows] == ["single"] and rows[0]["code"] == 0, (tmp_path / "single.log").read_text()
    assert rows[0]["peak_mb"] > 0 and rows[0]["processes"] >= 1 and rows[0]["frames_per_s_started"] is None
    assert "| single |" in out and "frames/s once started" in out


@pytest.mark.slow  # starts a local Ray in the demo's process (tens of seconds)
def test_bench_scale_ray_tiny(tmp_path, capsys):
    pytest.importorskip("ray")
    from bench import bench_scale

    rows = bench_scale.main(["--videos", "2", "--frames", "3", "--size", "160x120", "--workers", "1",
                             "--no-single", "--workdir", str(tmp_path)])
    assert [r["run"] for r in rows] == ["ray_w1"] and rows[0]["code"] == 0, (tmp_path / "ray_w1.log").read_text()
    assert rows[0]["processes"] > 1 and rows[0]["overhead_s_per_worker"] > 0 and rows[0]["frames_per_s_started"] > 0
