"""demo.py end to end: release-style checkpoints made here, synthetic faces (tool/synth_faces.py),
a folder with a corrupt file and a face-less image, a two-face image, a short video; CSV/JSON
contents, annotated outputs, the AU set chosen by the checkpoint, and refusals."""
import csv
import json
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import demo
from megraphau.inference.detector import AUDetector, InferenceError
from megraphau.inference.faces import FaceDetector  # noqa: E402
from megraphau.inference.inputs import DemoError, list_inputs
from megraphau.model import CheckpointMismatchError, build_model
from megraphau.synth import SYNTH_AUS, render_face, sample_params  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def save_release_checkpoint(path, stage, num_classes, variant="megraphau"):
    """A model saved the release's way: {'state_dict': {'module.' + key: tensor}}."""
    model = build_model(stage, "resnet18", num_classes, neighbor_num=3, pretrained=False, variant=variant)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(2, 3, 224, 224))
    state = OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)
    return path


def detectable_faces(count, size, rng, detector):
    """Synthetic faces the Haar detector finds (deterministic for a given rng)."""
    faces = []
    while len(faces) < count:
        img = render_face(rng.integers(0, 2, len(SYNTH_AUS)), sample_params(rng), size)
        # a JPEG round trip: the face must still be found after compression
        jpeg = cv2.imdecode(cv2.imencode(".jpg", img)[1], cv2.IMREAD_COLOR)
        if len(detector.detect(img)) == 1 and len(detector.detect(jpeg)) == 1:
            faces.append(jpeg)
    return faces


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(1)
    detector = FaceDetector()
    faces = detectable_faces(5, 160, rng, detector)
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.jpg"), faces[0])
    cv2.imwrite(str(folder / "sub" / "b.png"), faces[1])
    for _ in range(20):  # a big and a small face side by side, both found by the detector
        two = np.full((180, 330, 3), 90, np.uint8)
        two[10:170, 0:160] = faces[2]
        two[30:158, 190:318] = cv2.resize(faces[3], (128, 128), interpolation=cv2.INTER_AREA)
        if len(detector.detect(two)) == 2:
            break
        faces[2:4] = detectable_faces(2, 160, rng, detector)
    assert len(detector.detect(two)) == 2
    cv2.imwrite(str(folder / "two_faces.png"), two)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 120, 3), 128, np.uint8))  # no face
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("ignored")
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 160))
    assert writer.isOpened()
    for k in range(5):
        writer.write(faces[k % 2])
    writer.release()
    ckpt = root / "ckpt"
    ckpt.mkdir()
    return {"root": root, "folder": folder, "video": video, "two": folder / "two_faces.png",
            "og2": save_release_checkpoint(ckpt / "OpenGprahAU-ResNet18_second_stage.pth", 2, 41, "opengraphau"),
            "bp1": save_release_checkpoint(ckpt / "MEFARG_resnet18_BP4D_fold1.pth", 1, 12),
            "disfa2": save_release_checkpoint(ckpt / "MEFARG_resnet18_DISFA_fold1.pth", 2, 8),
            "odd": save_release_checkpoint(ckpt / "five_aus.pth", 1, 5)}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "out"
    rc = demo.main(demo.parse_args(["--resume", str(data["og2"]), "--input", str(data["folder"]), "--output", str(out),
                    "--draw_text", "--batch-size", "3"]))
    assert rc == 0
    assert "1 errors" in capsys.readouterr().out
    names = yaml.safe_load((REPO / "megraphau" / "configs" / "OpenGraphAU.yaml").read_text())["au_names"]
    rows = read_csv(out / "predictions.csv")
    header = list(rows[0])
    assert header[:9] == ["file", "frame", "face", "track_id", "x", "y", "w", "h", "no_face"]
    assert header[9:] == [c for n in names for c in (f"{n}_prob", n)] and len(header) == 9 + 82
    assert {r["track_id"] for r in rows} == {""}  # images: no track ids
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    assert sorted(by_file) == ["a.jpg", "blank.png", "sub/b.png", "two_faces.png"]  # corrupt.jpg: error
    blank = by_file["blank.png"]
    assert len(blank) == 1 and blank[0]["no_face"] == "1" and blank[0]["AU1_prob"] == "" and blank[0]["AU1"] == ""
    two = by_file["two_faces.png"]
    assert [r["face"] for r in two] == ["0", "1"]
    assert int(two[0]["w"]) * int(two[0]["h"]) > int(two[1]["w"]) * int(two[1]["h"])  # largest first
    for r in by_file["a.jpg"] + two:
        probs = np.array([float(r[f"{n}_prob"]) for n in names])
        assert r["no_face"] == "0" and ((probs >= 0) & (probs <= 1)).all()
        assert [int(r[n]) for n in names] == (probs >= 0.5).astype(int).tolist()
    result = json.loads((out / "predictions.json").read_text())
    assert result["au_names"] == names and result["variant"] == "opengraphau" and result["stage"] == 2
    assert result["summary"] == {"items": 4, "faces": 4, "no_face": 1, "errors": 1}
    assert result["errors"][0]["file"] == "corrupt.jpg" and "corrupt.jpg" in result["errors"][0]["error"]
    faces = {(e["file"], f["face"]): f for e in result["results"] for f in e["faces"]}
    assert set(faces[("two_faces.png", 1)]["probs"]) == set(names)
    for rel in ["a.jpg", "sub/b.png", "two_faces.png", "blank.png"]:
        drawn, original = cv2.imread(str(out / "annotated" / rel)), cv2.imread(str(data["folder"] / rel))
        assert drawn is not None and drawn.shape != original.shape  # enlarged, with the AU panel
    # an output folder inside the input folder is not read back as input
    with pytest.raises(DemoError, match="holds no images"):
        list_inputs(out.parent, exclude=out)
    assert len(list_inputs(out.parent)[1]) == 4


def test_video(data, tmp_path):
    out = tmp_path / "out"
    assert demo.main(demo.parse_args(["--resume", str(data["bp1"]), "--input", str(data["video"]), "--output", str(out),
                      "--every-n", "2", "--max-faces", "1"])) == 0
    rows = read_csv(out / "predictions.csv")
    assert [r["frame"] for r in rows] == ["0", "2", "4"] and {r["file"] for r in rows} == {"clip.avi"}
    assert all(r["no_face"] == "0" for r in rows) and "AU24_prob" in rows[0]  # BP4D names from 12 AUs
    videos = list((out / "annotated").glob("clip.*"))
    assert len(videos) == 1
    cap = cv2.VideoCapture(str(videos[0]))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3


def test_api_and_au_sets(data):
    det = AUDetector(data["disfa2"], device="cpu")
    assert det.au_names == ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
    assert det.model.config.neighbor_num == 3 and det.stage == 2 and det.arc == "resnet18"
    faces = det.predict_image(cv2.imread(str(data["two"])))
    assert len(faces) == 2 and faces[0].probs.shape == (8,)
    assert faces[0].box[2] * faces[0].box[3] > faces[1].box[2] * faces[1].box[3]  # largest first
    assert det.predict_image(np.zeros((90, 90, 3), np.uint8)) == []
    bp = AUDetector(data["bp1"], arc="resnet18", stage=1, detect=False)
    assert bp.au_names[-1] == "AU24" and len(bp.au_descriptions) == 12
    (face,) = bp.predict_image(np.full((100, 140, 3), 100, np.uint8))
    assert face.box == (0, 0, 140, 100) and face.labels.tolist() == (face.probs >= 0.5).astype(int).tolist()
    # a project checkpoint's own AU names and graph settings win over the 12-AU default (BP4D)
    obj = torch.load(data["bp1"], weights_only=True)
    synth_names = [f"AU{a}" for a in SYNTH_AUS]
    obj.update(au_names=synth_names, model_config={"neighbor_num": 2, "metric": "cosine"})
    torch.save(obj, data["root"] / "synth_own.pth")
    own = AUDetector(data["root"] / "synth_own.pth", detect=False)
    assert own.au_names == synth_names and own.model.config.neighbor_num == 2
    assert own.model.config.metric == "cosine"
    assert bp.crop_size == 224  # release checkpoints: the release's 224 crops
    # a project checkpoint trained with --crop-size is fed crops of that size
    obj.update(args={"crop_size": 80})
    torch.save(obj, data["root"] / "synth_crop80.pth")
    small = AUDetector(data["root"] / "synth_crop80.pth", detect=False)
    assert small.crop_size == 80
    assert small.transform(torch.zeros(3, 256, 256, dtype=torch.uint8)).shape == (3, 80, 80)


def test_refusals(data, tmp_path, capsys):
    image = str(data["folder"] / "a.jpg")
    # a wrong --arc or --stage: an error naming the flag and what the file holds
    with pytest.raises(CheckpointMismatchError, match="--arc resnet50 contradicts .* the backbone resnet18"):
        AUDetector(data["bp1"], arc="resnet50")
    assert demo.main(demo.parse_args(["--resume", str(data["og2"]), "--stage", "1", "--input", image,
                      "--output", str(tmp_path / "x")])) == 2
    assert "--stage 1 contradicts" in capsys.readouterr().err
    with pytest.raises(CheckpointMismatchError, match="--stage 2 contradicts .* holds stage 1"):
        AUDetector(data["bp1"], stage=2)  # would leave the graph random
    # an AU count that matches no known set
    with pytest.raises(InferenceError, match="5 AUs.*no known AU set"):
        AUDetector(data["odd"])
    config = tmp_path / "five.yaml"
    config.write_text(yaml.safe_dump({"dataset_path": "x", "num_classes": 5, "neighbor_num": 3,
                                      "au_names": ["AU1", "AU2", "AU4", "AU6", "AU99"]}))
    assert AUDetector(data["odd"], dataset=str(config), detect=False).au_names[-1] == "AU99"
    with pytest.raises(InferenceError, match="names 12 AUs"):
        AUDetector(data["odd"], dataset="BP4D")
    # unreadable single inputs name the file
    assert demo.main(demo.parse_args(["--resume", str(data["bp1"]), "--input", str(data["folder"] / "corrupt.jpg"),
                      "--output", str(tmp_path / "y")])) == 1
    fake_video = tmp_path / "broken.mp4"
    fake_video.write_bytes(b"nothing here")
    assert demo.main(demo.parse_args(["--resume", str(data["bp1"]), "--input", str(fake_video),
                      "--output", str(tmp_path / "z")])) == 1
    err = capsys.readouterr().err
    assert "corrupt.jpg: not a readable image" in err and "broken.mp4" in err
    assert demo.main(demo.parse_args(["--resume", str(data["bp1"]), "--input", str(tmp_path / "missing.jpg")])) == 2


def test_release_command_line(data, tmp_path, monkeypatch):
    """The release's demo command (with --exp-name) works unchanged; output in results/EXP_NAME."""
    monkeypatch.chdir(tmp_path)
    assert demo.main(demo.parse_args(["--arc", "resnet18", "--stage", "2", "--exp-name", "demo",
                                      "--resume", str(data["og2"]),
                      "--input", str(data["folder"] / "a.jpg"), "--draw_text"])) == 0
    assert (tmp_path / "results" / "demo" / "annotated" / "a.jpg").is_file()
    assert len(read_csv(tmp_path / "results" / "demo" / "predictions.csv")) == 1


def test_benchmark(data, capsys):
    """Random weights on images, PyTorch only (tests/inference/test_video.py times both engines on a video)."""
    assert demo.main(demo.parse_args(["--arc", "resnet18", "--stage", "2", "--dataset", "BP4D", "--input",
                      str(data["folder"] / "sub"), "--benchmark", "--benchmark-engine", "pytorch",
                      "--benchmark-repeats", "1"])) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out and "1 images" in out and "ONNX Runtime" not in out


def test_real_face_crops_follow_the_checkpoints_preset(data, tmp_path):
    """On a real photograph (tests/data/astronaut.jpg in a 640x480 frame): each checkpoint gets
    the crop geometry of the data it was trained on (12 AUs BP4D, 8 DISFA, 41 OpenGraphAU), or
    --preset; --save-crops writes each face's crop, named after its CSV row, and MTCNN finds
    the landmarks of the OpenGraphAU crop where the authors' OpenGraphAU input has them."""
    from megraphau.inference import faces

    photo = cv2.imread(str(REPO / "tests" / "data" / "astronaut.jpg"))
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame[100:356, 200:456] = photo
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "astronaut_640x480.png"), frame)
    presets = {key: AUDetector(data[key], detect=False).crop_preset for key in ("bp1", "disfa2", "og2")}
    assert presets == {"bp1": "BP4D", "disfa2": "DISFA", "og2": "OpenGraphAU"}
    assert AUDetector(data["og2"], detect=False, preset="DISFA").crop_preset == "DISFA"

    out, crops = tmp_path / "out", tmp_path / "crops"
    assert demo.main(demo.parse_args(["--resume", str(data["og2"]), "--input", str(folder), "--output", str(out),
                                      "--save-crops", str(crops), "--no-annotate"])) == 0
    (row,) = read_csv(out / "predictions.csv")
    assert row["file"] == "astronaut_640x480.png" and row["face"] == "0"
    assert json.loads((out / "predictions.json").read_text())["crop_preset"] == "OpenGraphAU"
    crop = cv2.imread(str(crops / "astronaut_640x480_face0.png"))
    assert crop.shape == (256, 256, 3) and not (out / "annotated").exists()
    (again,) = faces.FaceDetector().detect(crop)
    found, table = again.landmarks, np.array(faces.MEASURED_LANDMARKS["OpenGraphAU"])
    eye_ratio = np.hypot(*(found[1] - found[0])) / np.hypot(*(table[1] - table[0]))
    assert abs(eye_ratio - 1) < 0.10, eye_ratio
    for pair in ((0, 1), (3, 4)):
        assert np.hypot(*(found[list(pair)].mean(0) - table[list(pair)].mean(0))) < 8.0
