"""The ME-GraphAU model: release-identical state dicts, forward/backward, weight loading."""
import logging
import re
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision

from megraphau.model import (
    ARCHS,
    CheckpointMismatchError,
    MissingWeightsError,
    build_model,
    infer_config,
    load_checkpoint,
)
from megraphau.model.anfl import knn_adjacency, normalize_adjacency
from reference_lists import REFERENCE, reference_entries  # noqa: E402  (tests/ is on sys.path)
from release_files import save_release_checkpoint


def model_entries(model: torch.nn.Module) -> list[tuple[str, tuple, str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def quiet_build(*args, **kwargs):
    kwargs.setdefault("pretrained", False)
    return build_model(*args, **kwargs)


@pytest.mark.parametrize("num_classes", [12, 8])
@pytest.mark.parametrize("stage", [1, 2])
# the release's ME-GraphAU has no MAE ViT: its keys are checked in test_mae_vit.py
@pytest.mark.parametrize("arc", [a for a in ARCHS if ARCHS[a].family != "mae_vit"])
def test_state_dict_matches_release(arc, stage, num_classes):
    model = quiet_build(stage, arc, num_classes, neighbor_num=4 if num_classes == 12 else 3)
    ours = model_entries(model)
    theirs = reference_entries(f"stage{stage}_{arc}_{num_classes}au.txt")
    missing = sorted({e[0] for e in theirs} - {e[0] for e in ours})
    extra = sorted({e[0] for e in ours} - {e[0] for e in theirs})
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]}"
    assert ours == theirs  # same shapes, dtypes and even the same order


@pytest.mark.parametrize("num_classes", [12, 8])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("arc", ["resnet18", "swin_transformer_tiny"])
def test_forward_backward(arc, stage, num_classes):
    model = quiet_build(stage, arc, num_classes, neighbor_num=3)
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = model(x)
    if stage == 1:
        probs = out
    else:
        probs, edges = out
        assert edges.shape == (2, num_classes * num_classes, 4)
    assert probs.shape == (2, num_classes)
    assert probs.min() >= 0 and probs.max() <= 1 + 1e-6  # cosine of non-negative vectors
    loss = probs.sum() + (edges.logsumexp(-1).sum() if stage == 2 else 0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("stage", [1, 2])
def test_autocast_bf16(stage):
    model = quiet_build(stage, "resnet18", 8).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    ref, low = (ref, low) if stage == 1 else (ref[0], low[0])
    assert torch.isfinite(low.float()).all()
    assert (ref - low.float()).abs().max() < 0.1


def test_knn_adjacency_metrics():
    torch.manual_seed(1)
    x = torch.rand(3, 6, 5)
    for metric in ("dots", "cosine", "l1"):
        adj = knn_adjacency(x, 2, metric)
        for b in range(3):
            for i in range(6):
                if metric == "l1":
                    score = -(x[b, i] - x[b]).abs().sum(-1)
                else:
                    y = torch.nn.functional.normalize(x[b], dim=-1) if metric == "cosine" else x[b]
                    score = y @ y[i]
                expected = torch.zeros(6)
                expected[score.topk(2).indices] = 1
                assert torch.equal(adj[b, i], expected), (metric, b, i)
    # a tie gives a row more than K ones, as in the release
    tied = torch.ones(1, 4, 3)
    assert knn_adjacency(tied, 2, "dots").sum() == 16
    adj = knn_adjacency(x, 3)
    norm = normalize_adjacency(adj)
    d = adj.sum(-1)
    assert torch.allclose(norm, adj / (d.unsqueeze(-1) * d.unsqueeze(-2)).sqrt())


release_checkpoint = save_release_checkpoint


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("arc", ["resnet18", "swin_transformer_tiny"])
def test_release_checkpoint_reproduces_outputs(tmp_path, arc, stage):
    trained = quiet_build(stage, arc, 12)
    with torch.no_grad():  # make the BN statistics non-trivial, as after training
        trained.train()(torch.randn(4, 3, 224, 224))
    trained.eval()
    path = tmp_path / "MEFARG_release.pth"
    release_checkpoint(trained, path)
    fresh = quiet_build(stage, arc, 12).eval()
    info = load_checkpoint(fresh, path)
    assert info["epoch"] == 20 and info["checkpoint_config"]["arc"] == arc
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = trained(x), fresh(x)
    for u, v in zip(a if stage == 2 else [a], b if stage == 2 else [b]):
        assert torch.equal(u, v)


def test_every_release_layout_loads(tmp_path):
    """A state dict built from the reference key lists alone (random values) loads strictly."""
    for name, arc in [("stage2_swin_transformer_tiny_8au.txt", "swin_transformer_tiny"),
                      ("stage1_resnet50_12au.txt", "resnet50")]:
        state = OrderedDict()
        for key, shape, dtype in reference_entries(name):
            state["module." + key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        path = tmp_path / name.replace(".txt", ".pth")
        torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)
        stage, n = int(name[5]), int(re.search(r"_(\d+)au", name).group(1))
        model = quiet_build(stage, arc, n)
        load_checkpoint(model, path)
        assert all((p == 0).all() for p in model.parameters())


def test_other_backbone_is_refused_with_key_names(tmp_path):
    path = tmp_path / "r18.pth"
    release_checkpoint(quiet_build(1, "resnet18", 12), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(quiet_build(1, "resnet50", 12), path)
    msg = str(err.value)
    assert "r18.pth" in msg and "--arc resnet18" in msg
    assert "backbone.layer1.0.conv3.weight" in msg  # a missing key, named
    assert "shape mismatches" in msg and "backbone.layer1.0.conv1.weight checkpoint (64, 64, 3, 3)" in msg
    # a different AU count is refused too
    with pytest.raises(CheckpointMismatchError, match="head.sc"):
        load_checkpoint(quiet_build(1, "resnet18", 8), path)
    # and a Swin-T file given to a Swin-S model
    swin = tmp_path / "swin_t.pth"
    release_checkpoint(quiet_build(1, "swin_transformer_tiny", 12), swin)
    with pytest.raises(CheckpointMismatchError, match="layers.2.blocks.6"):
        load_checkpoint(quiet_build(1, "swin_transformer_small", 12), swin)


def test_stage1_into_stage2_loads_shared_keys(tmp_path, caplog, monkeypatch):
    stage1 = quiet_build(1, "resnet18", 12)
    path = tmp_path / "stage1.pth"
    release_checkpoint(stage1, path)
    stage2 = quiet_build(2, "resnet18", 12)
    before = {k: v.clone() for k, v in stage2.state_dict().items()}
    # the training scripts route the "megraphau" loggers to their own handlers (propagate off);
    # make this test independent of which test ran first in the process
    for name in ("megraphau", "megraphau.model"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    with caplog.at_level(logging.INFO, logger="megraphau.model.checkpoint"):
        info = load_checkpoint(stage2, path)
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    shared = [k for k in s2 if k in s1]
    assert any(k.startswith("backbone.") for k in shared) and "head.sc" in shared
    assert "head.class_linears.11.fc.weight" in shared and "global_linear.fc.weight" in shared
    for k in shared:
        assert torch.equal(s1[k], s2[k]), k
    for k in info["fresh_keys"]:
        assert torch.equal(before[k], s2[k]), k
    assert set(info["fresh_keys"]) == {k for k in s2 if k not in s1}
    assert set(info["skipped_keys"]) == {k for k in s1 if k not in s2}
    assert "head.gnn.U.weight" in info["skipped_keys"]
    assert "stage-1 keys skipped" in caplog.text and "head.edge_extractor" in caplog.text


def microsoft_swin_state_dict(timm_model: torch.nn.Module) -> OrderedDict:
    """What Microsoft's original Swin checkpoints look like, written here independently of model/:
    patch merging at the end of the previous stage, index and mask buffers included, head kept."""
    out = OrderedDict()
    for key, value in timm_model.state_dict().items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        out[key] = value
    for name, module in timm_model.named_modules():
        if hasattr(module, "relative_position_index"):
            out[name + ".relative_position_index"] = module.relative_position_index
        if getattr(module, "attn_mask", None) is not None:
            out[name + ".attn_mask"] = module.attn_mask
    out["head.weight"] = torch.randn(1000, timm_model.num_features)
    out["head.bias"] = torch.randn(1000)
    return out


def test_microsoft_swin_weights_convert_and_load(tmp_path):
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0).eval()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": microsoft_swin_state_dict(reference)}, path)
    model = build_model(1, "swin_transformer_tiny", 12, pretrained=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_features(x).flatten(1, 2)
        assert torch.allclose(model.backbone(x), expected, atol=1e-5)
    # and our own state dict is in that layout: the original file's keys, minus the classifier
    ours = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    original = {k: v for k, v in torch.load(path, weights_only=True)["model"].items() if not k.startswith("head.")}
    assert set(ours) == set(original)
    for k in ours:
        assert torch.equal(ours[k], original[k]), k


def test_resnet_imagenet_file_loads_and_errors(tmp_path):
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(reference.state_dict(), path)  # torchvision's original layout, with fc
    model = build_model(1, "resnet18", 12, pretrained=path)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k
    with pytest.raises(MissingWeightsError) as err:
        build_model(1, "resnet50", 12, pretrained=tmp_path / "nope.pth")
    assert "nope.pth" in str(err.value) and "resnet50-19c8e357.pth" in str(err.value)
    assert "download.pytorch.org" in str(err.value)
    # a file of another architecture is refused
    with pytest.raises((ValueError, RuntimeError)):
        build_model(1, "resnet50", 12, pretrained=path)


def test_missing_default_weights_warn(monkeypatch, tmp_path):
    import megraphau.model.backbone as backbone
    monkeypatch.setattr(backbone, "CHECKPOINT_DIR", tmp_path)
    with pytest.warns(UserWarning, match="RANDOM backbone"):
        build_model(1, "resnet18", 12)


def test_infer_config_from_reference_lists():
    for path in sorted(REFERENCE.glob("*.txt")):
        state = {k: torch.empty(shape) for k, shape, _ in reference_entries(path.name)}
        cfg = infer_config(state)
        if path.name.startswith("opengraphau"):
            arc = path.stem.split("_", 2)[2]
            assert cfg["variant"] == "opengraphau" and cfg["num_classes"] == 41
        else:
            arc = re.match(r"stage\d_(.*)_\d+au", path.stem).group(1)
            assert cfg["variant"] == "megraphau"
            assert cfg["num_classes"] == int(re.search(r"_(\d+)au", path.stem).group(1))
        assert cfg["arc"] == arc, path.name
        assert cfg["stage"] == int(re.search(r"stage(\d)", path.stem).group(1))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(quiet_build(1, "resnet18", 12), tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint(quiet_build(1, "resnet18", 12), junk)


def test_invalid_configuration():
    with pytest.raises(ValueError, match="unknown --arc"):
        quiet_build(1, "resnet999", 12)
    with pytest.raises(ValueError, match="metric"):
        quiet_build(1, "resnet18", 12, metric="euclid")
    with pytest.raises(ValueError, match="stage"):
        quiet_build(3, "resnet18", 12)
