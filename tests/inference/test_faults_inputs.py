"""Fault injection, part two (issue 22): the inputs and models of demo.py, the crop tool, image
checks and ONNX files. One case per cause; each asserts the exit code, the one line (naming the
file and the real cause, no traceback) and that every other input's results are kept.

Causes: NaN weights (and a model whose output is NaN for one face), ONNX metadata or a .pth's AU
names that do not fit the weights, broken ONNX metadata, file names that are not UTF-8, images
whose header claims too many pixels, variable-frame-rate video timestamps, a damaged video, a
face too small for --detect-size, and two demos into one output folder.

A release-style ResNet-18 (12 AUs) at the demo's 224 pixels, small images, --no-detect where the
face detector is not the point; about a minute on 2 idle cores.
"""
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import demo
from megraphau.inference import inputs as inputs_mod
from megraphau.inference.detector import AUDetector
from megraphau.inference.inputs import VideoStats, video_frames
from megraphau.model import build_model, model_config_dict
from tool import check_images as check_images_tool
from tool import crop_faces

REPO = Path(__file__).resolve().parents[2]
PHOTO = cv2.imread(str(REPO / "tests" / "data" / "astronaut.jpg"))
BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
SUBPROCESS_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
def trained_resnet18(num_classes=12):
    torch.manual_seed(0)
    model = build_model(1, "resnet18", num_classes, neighbor_num=4, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(2, 3, 224, 224))
    return model.eval()


def save_release(state_dict, path):
    torch.save({"epoch": 1, "state_dict": OrderedDict(("module." + k, v) for k, v in state_dict.items()),
                "optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints (good, NaN weights, 8 AU names for 12 outputs) and two small face images."""
    root = tmp_path_factory.mktemp("faults_inputs")
    model = trained_resnet18()
    nan_state = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
    folder = root / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), cv2.resize(PHOTO, (128, 128)))
    cv2.imwrite(str(folder / "b.png"), cv2.resize(PHOTO[:, ::-1], (128, 128)))
    eight = root / "eight_names.pth"
    torch.save({"state_dict": model.state_dict(), "model_config": model_config_dict(model),
                "facts": {"au_names": ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]}}, eight)
    return {"root": root, "images": folder, "good": save_release(model.state_dict(), root / "good.pth"),
            "nan": save_release(nan_state, root / "nan_weights.pth"), "eight": eight}


def run_demo(capsys, *argv):
    """(exit code, the stderr lines starting with 'error:', all of stderr) of demo.py's command line."""
    capsys.readouterr()
    try:
        code = demo.cli([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


def one_line(lines, *words):
    """The single error line, which contains every one of `words`."""
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:  # strict UTF-8: a bad name must not break the file
        return list(csv.DictReader(f))


def png_header(width, height):
    """A PNG whose header claims width x height pixels (the data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def non_utf8(folder: Path, name: bytes) -> Path:
    """A path in `folder` whose name is the given (not UTF-8) bytes; skips where the file system refuses."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    return path


def write_video(path, frames, fps=10, size=(160, 160)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    frame = cv2.resize(PHOTO, size)
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


# --------------------------------------------------------------------------------------------
# NaN weights and non-finite outputs
# --------------------------------------------------------------------------------------------
def test_nan_weights_are_one_line_naming_the_model(files, tmp_path, capsys):
    """Every probability would be NaN: never drawn or written as a result. The checkpoint loader may
    refuse the file first (exit 2); the demo's own guard makes every face an error (exit 1: nothing
    could be computed). Either way: one line naming the model file."""
    out = tmp_path / "out"
    code, lines, _ = run_demo(capsys, "--resume", files["nan"], "--input", files["images"], "--output", out,
                              "--no-detect")
    assert code in (1, 2)
    line = one_line(lines, "nan_weights.pth")
    assert "NaN" in line or "non-finite" in line.lower() or "not finite" in line
    if (out / "predictions.csv").is_file():
        text = (out / "predictions.csv").read_text()
        assert "nan" not in text.lower().replace("nan_weights", "")
        assert len(read_csv(out / "predictions.csv")) == 0  # no row: an error, not a face or a "no face"
        annotated = out / "annotated"
        assert not annotated.exists() or not any(annotated.iterdir())  # nothing drawn


def test_a_nan_face_is_an_error_and_the_others_are_kept(files, tmp_path, capsys, monkeypatch):
    """A model whose output is NaN for one face (an input it overflows on): that face is an error
    naming the model file, and the other image's row and picture are written."""
    run_model = AUDetector.run_model

    def nan_for_the_first_face(self, inputs, edges=False):
        out = run_model(self, inputs, edges=edges)
        probs = out[0] if edges else out
        probs[0] = np.nan  # the first image of the batch (a.jpg)
        return out

    monkeypatch.setattr(AUDetector, "run_model", nan_for_the_first_face)
    out = tmp_path / "out"
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", files["images"], "--output", out,
                              "--no-detect")
    assert code == 0
    one_line(lines, "good.pth", "a.jpg face 0", "not finite (NaN or Inf)")
    rows = read_csv(out / "predictions.csv")
    assert [r["file"] for r in rows] == ["b.png"] and rows[0]["no_face"] == "0"
    assert "nan" not in (out / "predictions.csv").read_text().lower()
    assert (out / "annotated" / "b.png").is_file() and not (out / "annotated" / "a.jpg").exists()
    result = json.loads((out / "predictions.json").read_text())
    assert result["summary"]["errors"] == 1 and result["errors"][0]["face"] == 0


@pytest.mark.parametrize("fault", ["NaN weights", "finite weights, NaN outputs"])
def test_onnx_export_says_the_weights_are_not_finite(fault, files, tmp_path, capsys):
    """export_onnx refuses NaN weights naming the checkpoint; a model whose own PyTorch outputs are
    NaN fails verification saying so, not blaming ONNX Runtime."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from megraphau.model.onnx_export import OnnxVerificationError, export_onnx
    from tool import export_onnx as export_tool

    if fault == "NaN weights":
        code = export_tool.main(["--resume", str(files["nan"]), "--output", str(tmp_path / "m.onnx")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        line = one_line([x for x in err.splitlines() if x.strip()], "nan_weights.pth")
        assert ("NaN" in line or "not finite" in line) and "ONNX Runtime disagrees" not in line
        assert not (tmp_path / "m.onnx").exists()
        return
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(3, 4), torch.nn.Sigmoid())
    model[0].running_var.fill_(-1.0)  # finite, but its square root is NaN
    with pytest.raises(OnnxVerificationError) as info:
        export_onnx((model.eval(), {"num_classes": 4, "stage": 1}), tmp_path / "m.onnx", crop_size=32)
    assert "not finite" in str(info.value) and "ONNX Runtime disagrees" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------------------------
# AU sets that do not fit the weights, broken ONNX metadata
# --------------------------------------------------------------------------------------------
def test_pth_naming_8_aus_for_12_outputs_is_refused(files, tmp_path, capsys):
    """The weights decide the count: 8 stored names for 12 outputs are refused when the file is
    loaded (model.checkpoint: the names belong to another model), --dataset or not; nothing is
    written."""
    for name, extra in (("out", ()), ("bp4d", ("--dataset", "BP4D"))):
        code, lines, _ = run_demo(capsys, "--resume", files["eight"], "--input", files["images"], "--output",
                                  tmp_path / name, "--no-detect", *extra)
        assert code == 2
        one_line(lines, "eight_names.pth", "name 8 AUs", "predict 12", "refused")
        assert not (tmp_path / name).exists()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A 12-output ONNX model (a tiny network) with this project's metadata."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from megraphau.model.onnx_export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 12),
                                torch.nn.Sigmoid()).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    facts = {"arc": "resnet18", "stage": 1, "num_classes": 12, "variant": "megraphau", "au_names": BP4D,
             "crop_preset": "BP4D"}
    export_onnx((model, facts), path, crop_size=64)
    return path


def edited_metadata(source: Path, target: Path, edit) -> Path:
    """A copy of an exported file whose 'megraphau' metadata text is edit(text)."""
    import onnx

    from megraphau.model.onnx_export import METADATA_KEY

    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = edit(prop.value)
    onnx.save(proto, str(target))
    return target


def five_aus(text):
    meta = json.loads(text)
    meta["facts"].update(num_classes=5, au_names=["AU1", "AU2", "AU4", "AU6", "AU9"])
    return json.dumps(meta)


@pytest.mark.parametrize("fault, words", [
    ("metadata says 5 AUs", ["bad.onnx", "metadata says 5 AUs", "probs output has 12"]),
    ("metadata is not JSON", ["bad.onnx", "not valid JSON"]),
])
def test_onnx_metadata_that_does_not_fit_is_one_line(fault, words, files, tiny_onnx, tmp_path, capsys):
    edit = five_aus if fault == "metadata says 5 AUs" else (lambda text: text[: len(text) // 2])
    bad = edited_metadata(tiny_onnx, tmp_path / "bad.onnx", edit)
    code, lines, _ = run_demo(capsys, "--resume", bad, "--input", files["images"], "--output", tmp_path / "out",
                              "--no-detect")
    assert code == 2
    one_line(lines, *words)
    assert not (tmp_path / "out").exists()
    # the untouched file runs, its 12 columns named by its metadata
    code, lines, _ = run_demo(capsys, "--resume", tiny_onnx, "--input", files["images"], "--output",
                              tmp_path / "good", "--no-detect", "--no-annotate")
    assert code == 0 and not lines and len(read_csv(tmp_path / "good" / "predictions.csv")) == 2


# --------------------------------------------------------------------------------------------
# file names that are not UTF-8
# --------------------------------------------------------------------------------------------
def test_non_utf8_image_name_in_demo_and_crop_tool(files, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(files["images"], folder)
    odd = non_utf8(folder, b"caf\xe9.jpg")
    odd.write_bytes((folder / "a.jpg").read_bytes())
    out = tmp_path / "out"
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", folder, "--output", out, "--no-detect")
    assert code == 0 and not lines
    rows = read_csv(out / "predictions.csv")  # valid UTF-8: the odd byte written as \xe9
    assert sorted(r["file"] for r in rows) == ["a.jpg", "b.png", "caf\\xe9.jpg"]
    assert (out / "annotated" / odd.name).is_file()  # the annotated copy keeps the file's own name
    json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    # the crop tool reads and writes it (OpenCV's imread/imwrite are never given the name)
    crops = tmp_path / "crops"
    assert crop_faces.main(["--dataset", "folder", "--input", str(folder), "--output", str(crops),
                            "--no-progress"]) == 0
    assert (crops / odd.name).is_file() and (crops / "a.jpg").is_file() and (crops / "b.png").is_file()


def test_non_utf8_video_name_is_one_line(files, tmp_path, capsys):
    video = non_utf8(tmp_path, b"clip\xff.avi")
    write_video(tmp_path / "clip.avi", 3)
    shutil.copyfile(tmp_path / "clip.avi", video)
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", video, "--output", tmp_path / "out",
                              "--no-detect")
    assert code == 1  # nothing could be read
    one_line(lines, "clip\\xff.avi", "not valid UTF-8", "rename the file")
    read_csv(tmp_path / "out" / "predictions.csv")  # a valid (empty) CSV


# --------------------------------------------------------------------------------------------
# pixel limit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["default", "no limit"])
def test_huge_png_header_is_one_line_and_the_run_goes_on(limit, files, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(files["images"], folder)
    (folder / "huge.png").write_bytes(png_header(100_000, 100_000))
    extra = [] if limit == "default" else ["--max-pixels", "0"]
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", folder, "--output", tmp_path / "out",
                              "--no-detect", "--no-annotate", *extra)
    assert code == 0
    # with the limit: refused from the header, before decoding; without: OpenCV's own refusal, as one line
    one_line(lines, "huge.png", "over the limit of 50000000" if limit == "default" else "OpenCV cannot decode")
    assert sorted(r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")) == ["a.jpg", "b.png"]


def test_pixel_limit_in_the_crop_tool_and_check_images(files, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(files["images"], folder)
    (folder / "huge.png").write_bytes(png_header(100_000, 100_000))
    crops = tmp_path / "crops"
    code = crop_faces.main(["--dataset", "folder", "--input", str(folder), "--output", str(crops), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    one_line([x for x in captured.err.splitlines() if x.strip()], "huge.png", "over the limit")
    assert (crops / "a.jpg").is_file() and (crops / "b.png").is_file()  # every other image is cropped
    # a real image over a small limit: the size comes from its header
    assert crop_faces.main(["--dataset", "folder", "--input", str(files["images"]), "--output",
                            str(tmp_path / "small"), "--no-progress", "--max-pixels", "10000"]) == 2
    assert capsys.readouterr().err.count("128 x 128 pixels, over the limit of 10000") == 2
    # tool/check_images.py: bad without being decoded
    rel, problem = check_images_tool.check_one((str(folder), "huge.png"))
    assert rel == "huge.png" and "over the limit" in problem
    assert check_images_tool.check_one((str(folder), "a.jpg")) == ("a.jpg", "")
    assert "OpenCV cannot decode" in check_images_tool.check_one((str(folder), "huge.png", 0))[1]


# --------------------------------------------------------------------------------------------
# videos: decoder timestamps, damaged files
# --------------------------------------------------------------------------------------------
class FakeCapture:
    """cv2.VideoCapture of a variable-frame-rate video: POS_MSEC after each read as given (0 where
    a container gives none), 10 fps claimed."""

    def __init__(self, msec):
        self.msec, self.k = msec, 0

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        if self.k >= len(self.msec):
            return False, None
        self.k += 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 10.0, cv2.CAP_PROP_FRAME_COUNT: len(self.msec),
                cv2.CAP_PROP_POS_MSEC: self.msec[self.k - 1] if self.k else 0.0}.get(prop, 0.0)

    def release(self):
        pass


@pytest.mark.parametrize("msec, expected", [
    ([0.0, 100.0, 1100.0, 1200.0, 1700.0], [0.0, 0.1, 1.1, 1.2, 1.7]),  # the decoder's times
    ([0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4]),  # none given: frame / fps
])
def test_timestamps_come_from_the_decoder(msec, expected, monkeypatch):
    monkeypatch.setattr(inputs_mod.cv2, "VideoCapture", lambda name: FakeCapture(msec))
    stats = VideoStats()
    assert [i for i, _ in video_frames(Path("vfr.mp4"), 1, stats)] == [0, 1, 2, 3, 4]
    assert stats.timestamps == pytest.approx(dict(enumerate(expected)))
    assert stats.undecodable == 0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to write a variable-frame-rate video")
def test_variable_frame_rate_video_gets_the_decoders_timestamps(files, tmp_path, capsys):
    """A real VFR file (ffmpeg's concat demuxer, frames shown 0.1, 1.0, 0.1 and 0.5 s): the OpenFace
    timestamps follow it; frame / fps would be off by up to a second."""
    durations = [0.1, 1.0, 0.1, 0.5, 0.1]
    cv2.imwrite(str(tmp_path / "face.png"), cv2.resize(PHOTO, (128, 128)))
    lines = [f"file 'face.png'\nduration {d}\n" for d in durations]
    (tmp_path / "list.txt").write_text("".join(lines) + "file 'face.png'\n")
    video = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "concat", "-i", "list.txt", "-fps_mode", "vfr",
                    "-c:v", "mpeg4", "-q:v", "5", str(video)], cwd=tmp_path, check=True, timeout=60)
    code, errors, _ = run_demo(capsys, "--resume", files["good"], "--input", video, "--output", tmp_path / "out",
                               "--no-detect", "--no-annotate", "--openface-columns")
    assert code == 0 and not errors
    stamps = [float(r["timestamp"]) for r in read_csv(tmp_path / "out" / "predictions.csv")]
    assert len(stamps) == len(durations) + 1 and stamps[0] == 0.0
    assert np.diff(stamps)[:4] == pytest.approx(durations[:4], abs=0.03)


def test_damaged_video_counts_the_frames_it_could_not_decode(files, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi", 30)
    data = bytearray(video.read_bytes())
    a, b = len(data) // 3, 2 * len(data) // 3
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()  # the middle third
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", damaged, "--output", tmp_path / "out",
                              "--no-detect", "--no-annotate")
    assert code == 0
    line = one_line(lines, "damaged.avi", "frames could not be decoded")
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    decoded = len(rows)
    assert 0 < decoded < 30 and f"the {decoded} decoded frames are in the outputs" in line
    assert int(line.split("damaged.avi: ")[1].split()[0]) == 30 - decoded
    # the undamaged file: no such line
    code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", video, "--output", tmp_path / "ok",
                              "--no-detect", "--no-annotate")
    assert code == 0 and not lines and len(read_csv(tmp_path / "ok" / "predictions.csv")) == 30


def test_small_face_in_a_large_frame_suggests_detect_size(files, tmp_path, capsys):
    frame = np.full((480, 640, 3), 100, np.uint8)
    frame[150:330, 230:410] = cv2.resize(PHOTO, (180, 180), interpolation=cv2.INTER_AREA)  # a ~60 px face
    image = tmp_path / "in" / "wide.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), frame)
    code, lines, err = run_demo(capsys, "--resume", files["good"], "--input", image, "--output", tmp_path / "out",
                                "--no-annotate", "--detect-size", "160")
    assert code == 0 and not lines
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "wide.png (640 x 480 pixels)" in notes[0] and "--detect-size 0" in notes[0]
    assert read_csv(tmp_path / "out" / "predictions.csv")[0]["no_face"] == "1"
    code, lines, err = run_demo(capsys, "--resume", files["good"], "--input", image, "--output", tmp_path / "full",
                                "--no-annotate", "--detect-size", "0")
    assert code == 0 and "note:" not in err
    assert read_csv(tmp_path / "full" / "predictions.csv")[0]["no_face"] == "0"


# --------------------------------------------------------------------------------------------
# two demos, one output folder
# --------------------------------------------------------------------------------------------
def test_earlier_demo_results_are_kept_unless_overwrite(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--resume", files["good"], "--input", files["images"], "--output", out, "--no-detect"]
    assert run_demo(capsys, *argv)[0] == 0
    before = (out / "predictions.csv").read_bytes()
    code, lines, _ = run_demo(capsys, *argv[:3], files["images"] / "a.jpg", *argv[4:])
    assert code == 2
    one_line(lines, str(out), "earlier demo's results", "--overwrite")
    assert (out / "predictions.csv").read_bytes() == before and (out / "annotated" / "b.png").is_file()
    code, lines, _ = run_demo(capsys, *argv[:3], files["images"] / "a.jpg", *argv[4:], "--overwrite")
    assert code == 0 and not lines
    assert [r["file"] for r in read_csv(out / "predictions.csv")] == ["a.jpg"]
    assert not (out / "annotated" / "b.png").exists()  # no picture of the earlier run mixes with the new one


def test_concurrent_demo_into_the_same_folder_is_refused(files, tmp_path, capsys):
    """Another process holds the folder (as a running demo does): refused naming it, nothing written."""
    out = tmp_path / "out"
    script = (f"import sys; from megraphau.engine.run_folder import claim; lock = claim({str(out)!r}, 'demo', "
              f"command='demo.py (the first)'); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=SUBPROCESS_ENV, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, lines, _ = run_demo(capsys, "--resume", files["good"], "--input", files["images"], "--output", out,
                                  "--no-detect", "--overwrite")
        assert code == 2
        one_line(lines, str(out), "in use", "demo.py (the first)")
        assert not (out / "predictions.csv").exists()
    finally:
        holder.communicate("", timeout=30)
    # once the first has ended, the folder is free
    assert run_demo(capsys, "--resume", files["good"], "--input", files["images"], "--output", out,
                    "--no-detect", "--no-annotate")[0] == 0
