"""OpenGraphAU (41 AUs): release-identical state dicts, the side-AU classifier, the stage-2 node
update, checkpoint loading and megraphau/configs/OpenGraphAU.yaml."""
from pathlib import Path

import pytest
import torch
import yaml

from megraphau.model import CheckpointMismatchError, build_model, infer_config, load_checkpoint, opengraphau
from megraphau.model.mefl import gated_graph_step
from reference_lists import reference_entries  # noqa: E402  (tests/ is on sys.path)
from release_files import save_release_checkpoint

CONFIG = Path(__file__).resolve().parents[2] / "megraphau" / "configs" / "OpenGraphAU.yaml"



def build(stage, arc="resnet18"):
    return build_model(stage, arc, 41, neighbor_num=4, pretrained=False, variant="opengraphau")


def release_checkpoint(model, path):
    return save_release_checkpoint(model, path, epoch=1)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("arc", ["resnet18", "resnet50", "swin_transformer_tiny", "swin_transformer_base"])
def test_state_dict_matches_release(arc, stage):
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in build(stage, arc).state_dict().items()]
    theirs = reference_entries(f"opengraphau_stage{stage}_{arc}.txt")
    missing = sorted({e[0] for e in theirs} - {e[0] for e in ours})
    extra = sorted({e[0] for e in ours} - {e[0] for e in theirs})
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]}"
    assert ours == theirs  # same shapes, dtypes and order


@pytest.mark.parametrize("stage", [1, 2])
def test_forward_backward(stage):
    model = build(stage)
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    probs = model(x)
    assert isinstance(probs, torch.Tensor) and probs.shape == (2, 41)  # no edge logits
    assert probs.min() >= 0 and probs.max() <= 1 + 1e-6
    probs.sum().backward()
    assert torch.isfinite(x.grad).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_side_aus_read_their_main_node():
    head = opengraphau.Stage1Head(16)
    f_v = torch.rand(3, 27, 16)
    p = head.classify(f_v)  # (3, 41)

    def cos(v, s):
        return torch.nn.functional.cosine_similarity(v, torch.relu(s).expand_as(v), dim=-1)

    for i in range(27):
        assert torch.allclose(p[:, i], cos(f_v[:, i], head.main_sc[i]), atol=1e-6)
    for k, node in enumerate(opengraphau.SUB_LIST):
        for side in (0, 1):  # L = 2k, R = 2k + 1
            s = 2 * k + side
            assert torch.allclose(p[:, 27 + s], cos(f_v[:, node], head.sub_sc[s]), atol=1e-6)


def test_stage2_node_update_has_residual_outside_relu():
    torch.manual_seed(3)
    layer = opengraphau.GraphLayer(8, 5)
    with torch.no_grad():  # non-trivial BN statistics
        layer.train()(torch.randn(6, 5, 8), torch.randn(6, 25, 8))
    layer.eval()
    v, e = torch.randn(2, 5, 8), torch.randn(2, 25, 8)
    v_new, e_new = layer(v, e)
    e_ref, update = gated_graph_step(v, e, layer.U, layer.V, layer.A, layer.B, layer.E, layer.bne)
    assert torch.allclose(v_new, v + torch.relu(layer.bnv(update)), atol=1e-6)
    assert torch.allclose(e_new, e_ref)
    assert (v_new < 0).any()  # negative inputs survive: ReLU(v + ...) would not allow this


@pytest.mark.parametrize("stage", [1, 2])
def test_release_checkpoint_loads_strictly(tmp_path, stage):
    trained = build(stage)
    with torch.no_grad():
        trained.train()(torch.randn(3, 3, 224, 224))
    trained.eval()
    path = tmp_path / f"OpenGprahAU-ResNet18_stage{stage}.pth"
    release_checkpoint(trained, path)
    info = load_checkpoint(fresh := build(stage).eval(), path)
    assert info["checkpoint_config"] == {"arc": "resnet18", "stage": stage, "num_classes": 41,
                                         "variant": "opengraphau"}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(trained(x), fresh(x))


def test_mismatches_are_refused_with_key_names(tmp_path):
    path = tmp_path / "ogau_stage2.pth"
    release_checkpoint(build(2), path)
    # the paper's 41-node model is not OpenGraphAU
    wrong_variant = build_model(2, "resnet18", 41, pretrained=False)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(wrong_variant, path)
    assert "head.sc" in str(err.value) and "OpenGraphAU" in str(err.value)
    # the wrong backbone
    with pytest.raises(CheckpointMismatchError, match="resnet18"):
        load_checkpoint(build_model(2, "resnet50", 41, pretrained=False, variant="opengraphau"), path)
    # a missing key
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["module.head.sub_sc"]
    torch.save({"state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): head\.sub_sc"):
        load_checkpoint(build(2), tmp_path / "cut.pth")


def test_stage1_into_stage2(tmp_path):
    stage1 = build(1)
    path = tmp_path / "ogau_stage1.pth"
    release_checkpoint(stage1, path)
    stage2 = build(2)
    info = load_checkpoint(stage2, path)
    assert info["skipped_keys"] and all(k.startswith("head.gnn.") for k in info["skipped_keys"])
    assert any(k.startswith("head.edge_extractor.") for k in info["fresh_keys"])
    assert torch.equal(stage2.head.sub_sc, stage1.head.sub_sc)
    assert torch.equal(stage2.head.main_class_linears[3].fc.weight, stage1.head.main_class_linears[3].fc.weight)


def test_infer_config_and_validation():
    cfg = infer_config(build(2).state_dict())
    assert cfg == {"arc": "resnet18", "stage": 2, "num_classes": 41, "variant": "opengraphau"}
    with pytest.raises(ValueError, match="41"):
        build_model(1, "resnet18", 12, pretrained=False, variant="opengraphau")
    with pytest.raises(ValueError, match="variant"):
        build_model(1, "resnet18", 12, pretrained=False, variant="graphau")


def test_config_file():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["num_classes"] == 41 == len(cfg["au_names"]) == len(cfg["au_descriptions"])
    assert cfg["au_names"][:3] == ["AU1", "AU2", "AU4"] and cfg["au_names"][26] == "AU39"
    assert cfg["au_names"][27:] == ["AUL1", "AUR1", "AUL2", "AUR2", "AUL4", "AUR4", "AUL6", "AUR6",
                                    "AUL10", "AUR10", "AUL12", "AUR12", "AUL14", "AUR14"]
    assert cfg["au_descriptions"][9] == "lip corner puller" and cfg["au_descriptions"][-1] == "right dimpler"
    assert cfg["neighbor_num"] == 4 and cfg["synthetic"] is False
    assert cfg["dataset_path"] == "data/OpenGraphAU"
    assert [tuple(p) for p in cfg["flip_label_pairs"]] == [(27 + 2 * k, 28 + 2 * k) for k in range(7)]
    for a, b in cfg["flip_label_pairs"]:
        assert cfg["au_names"][a].replace("AUL", "") == cfg["au_names"][b].replace("AUR", "")
    assert tuple(cfg["au_names"]) == opengraphau.AU_NAMES
