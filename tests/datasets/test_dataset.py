"""Tests of dataset.py: configs, transforms, AUDataset items, flips and list validation."""
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from megraphau.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AUDataset,
    DatasetError,
    build_transform,
    load_dataset_config,
    read_image,
    relations_from_labels,
)
from megraphau.data.lists import relations_from_labels as compute_relations
from megraphau.data.lists import write_fold_lists

REPO = Path(__file__).resolve().parents[2]

# 3 AUs; part sizes 2, 1, 2; AU1 unknown in one frame.
PARTS = [[("s1/0.png", [1, 0, 0]), ("s1/1.png", [1, 1, 0])],
         [("s2/0.png", [0, -1, 1])],
         [("s3/0.png", [0, 1, 1]), ("s3/1.png", [1, 0, 0])]]


def _write_config(path, dataset_path, **extra):
    cfg = {"name": "TINY", "dataset_path": str(dataset_path), "num_classes": 3,
           "neighbor_num": 2, "au_names": ["AU1", "AU2", "AU4"], **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny(tmp_path):
    """A tiny data set on disk: images 40x48 (left half bright), lists of all folds, a config."""
    root = tmp_path / "TINY"
    rng = np.random.default_rng(0)
    for part in PARTS:
        for rel, _ in part:
            img = rng.integers(0, 60, size=(40, 48, 3), dtype=np.uint8)
            img[:, :24] += 150  # bright left half: shows whether an item was flipped
            (root / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "img" / rel), img)
    write_fold_lists(root / "list", "TINY", PARTS)
    return load_dataset_config(_write_config(tmp_path / "tiny.yaml", root))


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name,n,k,lam", [("BP4D", 12, 4, 0.05), ("DISFA", 8, 3, 0.01)])
def test_named_configs_independent_of_cwd(tmp_path, monkeypatch, name, n, k, lam):
    monkeypatch.chdir(tmp_path)
    cfg = load_dataset_config(name)
    assert (cfg["name"], cfg["num_classes"], cfg["neighbor_num"], cfg["lam"]) == (name, n, k, lam)
    assert len(cfg["au_names"]) == len(cfg["au_descriptions"]) == n
    assert cfg["dataset_path"] == str(REPO / "data" / name)
    assert cfg["flip_label_pairs"] == [] and cfg["synthetic"] is False and cfg["defaults"] == {}


def test_bp4d_and_disfa_au_order():
    assert load_dataset_config("BP4D")["au_names"] == [f"AU{a}" for a in
                                                       (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)]
    assert load_dataset_config("DISFA")["au_names"] == [f"AU{a}" for a in (1, 2, 4, 6, 9, 12, 25, 26)]


def test_config_from_path_and_errors(tmp_path):
    cfg = load_dataset_config(_write_config(tmp_path / "a.yaml", "data/X",
                                            flip_label_pairs=[[0, 2]], defaults={"stage1": {"epochs": 1}}))
    assert cfg["dataset_path"] == str(REPO / "data" / "X")  # relative to the repo, not the cwd
    assert cfg["flip_label_pairs"] == [[0, 2]] and cfg["defaults"] == {"stage1": {"epochs": 1}}
    bad = _write_config(tmp_path / "bad.yaml", "x", num_classes=4)
    with pytest.raises(DatasetError, match=r"bad\.yaml: num_classes is 4 but au_names has 3"):
        load_dataset_config(bad)
    with pytest.raises(DatasetError, match=r"pairs\.yaml: flip_label_pairs entry \[0, 3\]"):
        load_dataset_config(_write_config(tmp_path / "pairs.yaml", "x", flip_label_pairs=[[0, 3]]))
    with pytest.raises(DatasetError, match="unknown dataset 'NOPE'"):
        load_dataset_config("NOPE")
    with pytest.raises(DatasetError, match=r"missing\.yaml: dataset config file not found"):
        load_dataset_config(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- items
def test_stage1_items(tiny):
    ds = AUDataset(tiny, fold=1, split="train", crop_size=32)
    assert len(ds) == 3 and ds.img_paths == ["s1/0.png", "s1/1.png", "s2/0.png"]
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (3, 3)
    assert ds.labels[2].tolist() == [0, -1, 1]
    assert ds.au_names == ["AU1", "AU2", "AU4"] and ds.num_classes == 3
    inv = np.array([3 / 2, 2.0, 3.0])
    torch.testing.assert_close(ds.class_weights, torch.tensor(inv / inv.sum() * 3,
                                                              dtype=torch.float32), atol=1e-6, rtol=0)
    image, labels = ds[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert labels.dtype == torch.float32 and labels.tolist() == [0, -1, 1]
    test = AUDataset(tiny, fold=1, split="test", crop_size=32)
    assert test.img_paths == ["s3/0.png", "s3/1.png"]
    assert test.class_weights.shape == (3,)


def test_stage2_relations(tiny):
    train = AUDataset(tiny, fold=2, split="train", stage=2, crop_size=32)
    assert train.relations is not None  # read from the relation file
    for i in range(len(train)):
        _, labels, relation = train[i]
        assert relation.dtype == torch.long and relation.shape == (9,)
        assert relation.tolist() == compute_relations(train.labels[i:i + 1])[0].tolist()
    test = AUDataset(tiny, fold=2, split="test", stage=2, crop_size=32)
    _, labels, relation = test[0]  # computed from labels [0, -1, 1]
    assert relation.tolist() == [0, -1, 1, -1, -1, -1, 2, -1, 3]
    assert relations_from_labels(labels).tolist() == relation.tolist()


def test_flip_swaps_label_pairs_and_relation(tmp_path, tiny):
    cfg = dict(tiny, flip_label_pairs=[[0, 2]])
    ds = AUDataset(cfg, fold=1, split="train", stage=2, transform=lambda x: x.float())
    flips = 0
    for seed in range(40):
        torch.manual_seed(seed)
        image, labels, relation = ds[0]  # labels [1, 0, 0]
        flipped = image[:, :, :24].mean() < image[:, :, 24:].mean()  # bright half moved right
        flips += int(flipped)
        assert labels.tolist() == ([0, 0, 1] if flipped else [1, 0, 0])
        assert relation.tolist() == relations_from_labels(labels).tolist()
    assert 10 <= flips <= 30
    # no pairs: labels are unchanged by the flip; the test split never flips
    plain = AUDataset(tiny, fold=1, split="test", transform=lambda x: x.float())
    for seed in range(5):
        torch.manual_seed(seed)
        image, labels = plain[0]
        assert image[:, :, :24].mean() > image[:, :, 24:].mean() and labels.tolist() == [0, 1, 1]


def test_items_deterministic_under_seed(tiny):
    ds = AUDataset(tiny, fold=1, split="train", crop_size=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=True)
    torch.manual_seed(5)
    a = next(iter(loader))
    torch.manual_seed(5)
    b = next(iter(loader))
    torch.testing.assert_close(a, b)


def test_synthetic_set_is_generated_by_an_explicit_step_not_the_dataset(tmp_path, monkeypatch):
    """AUDataset and engine.data.build_datasets only read; the explicit step data.prepare_synth
    (which the training and test runs call first) generates a synthetic set whose lists are
    missing, once."""
    from megraphau.engine import data

    calls = []

    def ensure_synthetic_dataset(path):
        calls.append(Path(path))
        for part in PARTS:
            for rel, _ in part:
                (Path(path) / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(Path(path) / "img" / rel), np.zeros((8, 8, 3), np.uint8))
        write_fold_lists(Path(path) / "list", "TINY", PARTS)

    monkeypatch.setattr("megraphau.synth.ensure_synthetic_dataset", ensure_synthetic_dataset)  # engine reads it there
    cfg = load_dataset_config(_write_config(tmp_path / "s.yaml", tmp_path / "S", synthetic=True))
    with pytest.raises(DatasetError, match="list file not found"):
        AUDataset(cfg, fold=3, split="test", crop_size=8)
    args = types.SimpleNamespace(dataset_config=cfg, dataset_path=str(tmp_path / "S"), fold=3, crop_size=8)
    with pytest.raises(DatasetError, match="list file not found"):
        data.build_datasets(args, stage=1, splits=("test",))
    assert calls == []
    data.prepare_synth(args, [3])
    assert calls == [tmp_path / "S"]
    ds = data.build_datasets(args, stage=1, splits=("test",))["test"]
    assert len(ds) == 2
    data.prepare_synth(args, [3])
    data.build_datasets(args, stage=2)
    assert len(calls) == 1  # lists exist now: not generated again


# ----------------------------------------------------------------------------- transforms
def _cross_image(h=300, w=512, x=256, y=150):
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, :, x - 1:x + 1] = 255
    img[:, y - 1:y + 1, :] = 255
    return img


def test_random_crop_offsets_drawn_after_resize():
    """512x300 (WxH) -> resized 437x256 -> 224 crops, deterministic under torch.manual_seed."""
    transform = build_transform(train=True)
    torch.manual_seed(3)
    a = transform(_cross_image())
    assert a.shape == (3, 224, 224) and a.dtype == torch.float32
    torch.manual_seed(3)
    torch.testing.assert_close(transform(_cross_image()), a)
    torch.manual_seed(4)
    assert not torch.equal(transform(_cross_image()), a)


def test_random_crop_offset_range_scaled_down():
    """Offsets are drawn on the RESIZED image (the release drew them before the resize).

    Scaled-down twin of the 512x300 case for speed: 128x75 -> resize 64 -> 109x64 -> crop 56,
    so x offsets cover 0..53 and y offsets 0..8; a bright cross marks the position.
    """
    transform = build_transform(train=True, crop_size=56, resize=64)
    torch.manual_seed(0)
    xs, ys = [], []
    for _ in range(120):
        gray = transform(_cross_image(h=75, w=128, x=64, y=37)).mean(0)  # (56, 56)
        xs.append(int(gray.mean(0).argmax()))  # the bright column inside the crop
        ys.append(int(gray.mean(1).argmax()))
    # after the resize the lines sit at x ~ 54.5 and y ~ 31.5: column = 54 - offset
    offsets_x, offsets_y = 54 - np.array(xs), 31 - np.array(ys)
    assert offsets_x.min() >= -1 and offsets_x.max() <= 54 and np.ptp(offsets_x) > 40
    assert offsets_y.min() >= -1 and offsets_y.max() <= 9 and np.ptp(offsets_y) >= 6


def test_test_transform_centre_crop():
    out = build_transform(train=False)(_cross_image(x=256, y=150))
    gray = out.mean(0)
    assert out.shape == (3, 224, 224)
    assert abs(int(gray.mean(0).argmax()) - (218 - 106)) <= 1  # (437 - 224) // 2 = 106
    assert abs(int(gray.mean(1).argmax()) - (128 - 16)) <= 1


def _smooth_image(seed=0, h=256, w=300):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)  # HWC uint8 RGB


def test_statistics_match_pil_reference():
    """Same distribution as the release's PIL pipeline (Resize, RandomCrop, ColorJitter, ...).

    Test transform at full size: nearly identical pixels. Train transform: per-channel mean,
    spread of image means and mean within-image std over 240 draws, scaled down (crop 56,
    resize 64) so that many draws are cheap; tolerances are ~4 standard errors.
    """
    from PIL import Image
    from torchvision import transforms as T

    def reference(train, crop, resize):
        steps = [T.Resize(resize)]
        steps += [T.RandomCrop(crop), T.ColorJitter(0.4, 0.4, 0.4, 0)] if train else [T.CenterCrop(crop)]
        return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    img = _smooth_image()
    tensor = torch.from_numpy(img).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
    ours_test = build_transform(False)(tensor)
    ref_test = reference(False, 224, 256)(Image.fromarray(img))
    assert (ours_test - ref_test).abs().mean() < 0.03

    small = _smooth_image(h=64, w=75)
    tensor, pil = torch.from_numpy(small).permute(2, 0, 1).contiguous(), Image.fromarray(small)
    ours_t, ref_t = build_transform(True, crop_size=56, resize=64), reference(True, 56, 64)
    torch.manual_seed(0)
    ours = torch.stack([ours_t(tensor) for _ in range(240)])  # (240, 3, 56, 56)
    ref = torch.stack([ref_t(pil) for _ in range(240)])
    spread = ref.mean((2, 3)).std(0)  # per-channel std of the image means
    se = spread * (2 / 240) ** 0.5
    assert ((ours.mean((0, 2, 3)) - ref.mean((0, 2, 3))).abs() < 4 * se + 0.02).all()
    torch.testing.assert_close(ours.mean((2, 3)).std(0), spread, atol=0.05, rtol=0.15)
    torch.testing.assert_close(ours.std((2, 3)).mean(0), ref.std((2, 3)).mean(0), atol=0.05, rtol=0.1)


# ----------------------------------------------------------------------------- validation errors
def test_missing_list_file(tiny):
    with pytest.raises(DatasetError, match=r"TINY_train_img_path_fold4\.txt: list file not found"):
        AUDataset(tiny, fold=4, split="train")


def test_length_mismatch(tiny):
    path = Path(tiny["dataset_path"]) / "list" / "TINY_test_label_fold1.txt"
    path.write_text(path.read_text() + "1 1 1\n")
    with pytest.raises(DatasetError, match=r"TINY_test_label_fold1\.txt: 3 label rows but .*"
                                           r"TINY_test_img_path_fold1\.txt has 2 image paths"):
        AUDataset(tiny, fold=1, split="test")


def test_relation_length_mismatch(tiny):
    path = Path(tiny["dataset_path"]) / "list" / "TINY_train_AU_relation_fold1.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    AUDataset(tiny, fold=1, split="train", stage=1)  # stage 1 does not read it
    with pytest.raises(DatasetError, match=r"TINY_train_AU_relation_fold1\.txt: 2 relation rows"):
        AUDataset(tiny, fold=1, split="train", stage=2)


@pytest.mark.parametrize("row,message", [("1 0", r":2: 2 label values, expected 3"),
                                         ("1 0 x", r":2: non-integer label value"),
                                         ("1 0 4", r":2: label value 4 in column 3 is not in -1\.\.1")])
def test_bad_label_rows(tiny, row, message):
    path = Path(tiny["dataset_path"]) / "list" / "TINY_test_label_fold1.txt"
    path.write_text("0 1 1\n" + row + "\n")
    with pytest.raises(DatasetError, match=r"TINY_test_label_fold1\.txt" + message):
        AUDataset(tiny, fold=1, split="test")


def test_release_uncoded_nine_read_as_unknown(tiny):
    path = Path(tiny["dataset_path"]) / "list" / "TINY_test_label_fold1.txt"
    path.write_text("0 9 1\n1 0 0\n")
    with pytest.warns(UserWarning, match="1 label values of 'not coded'"):
        ds = AUDataset(tiny, fold=1, split="test", stage=2, crop_size=8)
    assert ds.labels[0].tolist() == [0, -1, 1]


def test_missing_images_counted(tiny):
    img_dir = Path(tiny["dataset_path"]) / "img"
    for rel in ("s1/0.png", "s1/1.png"):
        (img_dir / rel).unlink()
    with pytest.raises(DatasetError, match=r"TINY_train_img_path_fold1\.txt: 2 of 3 images "
                                           r"missing .*\(first: s1/0\.png, s1/1\.png\)"):
        AUDataset(tiny, fold=1, split="train")
    ds = AUDataset(tiny, fold=1, split="train", validate=False, crop_size=8)
    with pytest.raises(DatasetError, match=r"s1/0\.png: cannot read image"):
        ds[0]


def test_unreadable_image(tiny):
    (Path(tiny["dataset_path"]) / "img" / "s3" / "1.png").write_bytes(b"not a png")
    ds = AUDataset(tiny, fold=1, split="test", crop_size=8)
    with pytest.raises(DatasetError, match=r"s3/1\.png: cannot read image"):
        ds[1]
    with pytest.raises(DatasetError, match=r"nope\.jpg: cannot read image"):
        read_image("nope.jpg")


def test_read_image_rgb_order(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "b.png"), bgr)
    image = read_image(tmp_path / "b.png")
    assert image.shape == (3, 4, 6) and image.dtype == torch.uint8 and image.is_contiguous()
    assert image[2].eq(200).all() and image[:2].eq(0).all()


def test_transform_accepts_pil_and_tensor_alike():
    from PIL import Image
    img = _smooth_image(h=70, w=80)
    tensor = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    transform = build_transform(False, crop_size=56, resize=64)
    torch.testing.assert_close(transform(Image.fromarray(img)), transform(tensor))


def test_transform_restores_thread_count():
    threads = torch.get_num_threads()
    build_transform(True, crop_size=8, resize=10)(torch.zeros(3, 12, 12, dtype=torch.uint8))
    assert torch.get_num_threads() == threads


def test_named_config_without_data_names_the_list_file(tmp_path):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DatasetError, match=r"no_such_root/list/DISFA_test_img_path_fold2\.txt"):
        AUDataset("DISFA", fold=2, split="test", dataset_path=missing)


def test_stage2_without_relation_file_computes_from_labels(tiny):
    (Path(tiny["dataset_path"]) / "list" / "TINY_train_AU_relation_fold1.txt").unlink()
    ds = AUDataset(tiny, fold=1, split="train", stage=2, crop_size=8)
    assert ds.relations is None
    _, labels, relation = ds[2]
    assert relation.tolist() == [0, -1, 1, -1, -1, -1, 2, -1, 3]


def test_train_needs_weight_file(tiny):
    (Path(tiny["dataset_path"]) / "list" / "TINY_weight_fold1.txt").write_text("1.0\t2.0\n")
    with pytest.raises(DatasetError, match=r"TINY_weight_fold1\.txt: expected 3 positive"):
        AUDataset(tiny, fold=1, split="train")
    (Path(tiny["dataset_path"]) / "list" / "TINY_weight_fold1.txt").unlink()
    with pytest.raises(DatasetError, match=r"TINY_weight_fold1\.txt: class weight file not found"):
        AUDataset(tiny, fold=1, split="train")
    assert AUDataset(tiny, fold=1, split="test").class_weights.tolist() == [1.0, 1.0, 1.0]


def test_dataloader_workers_reproducible(tiny):
    ds = AUDataset(dict(tiny, flip_label_pairs=[[0, 2]]), fold=1, split="train", crop_size=16)

    def batches(seed):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2,
                                             generator=torch.Generator().manual_seed(seed))
        return next(iter(loader))

    a, b = batches(7), batches(7)
    torch.testing.assert_close(a, b)


def test_synth_set_end_to_end(tmp_path):
    """The generated SYNTH set (megraphau.synth, tiny here) loads with the SYNTH config."""
    from megraphau.synth import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path, subjects_per_part=1, tasks=1, frames=4, size=64)
    ds = AUDataset("SYNTH", fold=1, split="train", stage=2, crop_size=56, dataset_path=tmp_path)
    image, labels, relation = ds[0]
    assert len(ds) == 8 and image.shape == (3, 56, 56) and labels.shape == (12,)
    assert relation.shape == (144,) and ds.class_weights.shape == (12,)


def test_release_weight_file_one_value_per_line(tiny):
    (Path(tiny["dataset_path"]) / "list" / "TINY_weight_fold1.txt").write_text(
        "0.500000\n1.000000\n1.500000\n")  # the release's np.savetxt of a 1-D array
    ds = AUDataset(tiny, fold=1, split="train", crop_size=8)
    assert ds.class_weights.tolist() == [0.5, 1.0, 1.5]
