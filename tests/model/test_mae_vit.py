"""--arc mae_vit_base, OpenGraphAU's MAE ViT-B/16 encoder (megraphau/model/mae_vit.py).

No released MAE-ViT OpenGraphAU weights are available offline, so equality with the release is
shown with random weights: a state dict with exactly the keys and shapes of the release's model
code (OpenGraphAU/model/modeling_pretrain.py + modeling_finetune.py: `backbone.encoder.*`, q/v
biases, no class token, the position table not saved) goes through a release-style checkpoint
file and load_model, and our forward is compared with a float64 forward written here directly
from the release's equations. Most numerics run on a reduced-width copy of the architecture (an
extra ARCHS entry for the test); one test loads and runs the full ViT-B/16.
"""
import ast
import copy
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from megraphau import conf
from megraphau.model import (
    ARCHS,
    ArcSpec,
    CheckpointMismatchError,
    MissingWeightsError,
    build_model,
    has_edge_logits,
    infer_config,
    load_model,
    mae_vit_filter_fn,
)
from megraphau.model import backbone as backbone_module
from megraphau.model.backbone import load_imagenet_weights
from megraphau.model.mae_vit import MAEViTTokens, mae_vit_layout, sinusoid_position_table
from reference_lists import reference_entries  # noqa: E402  (tests/ is on sys.path)

EPS = 1e-6  # the release's LayerNorm eps
TOLERANCE = 1e-4  # of the output scale
SMALL = ArcSpec("mae_vit", 64, "none.pth", "https://example.invalid/none.pth", vit_depth=2, vit_heads=4, vit_patch=16)
# the same with 32-pixel patches (49 tokens): stage 2's GEM is quadratic in the tokens
SMALL32 = ArcSpec("mae_vit", 64, "none.pth", "https://example.invalid/none.pth", vit_depth=2, vit_heads=4,
                  vit_patch=32)


@pytest.fixture
def small_arc(monkeypatch):
    """Reduced-width MAE ViTs (64 channels, 2 blocks, 4 heads) as --arc names."""
    monkeypatch.setitem(ARCHS, "mae_vit_test", SMALL)
    monkeypatch.setitem(ARCHS, "mae_vit_test32", SMALL32)
    return "mae_vit_test"


# --------------------------------------------------------------------------------------------
# the release, restated: keys and shapes from its model code, and its forward equations
# --------------------------------------------------------------------------------------------
def release_encoder_entries(dim: int, depth: int, patch: int) -> list[tuple[str, tuple]]:
    """(key, shape) of the release's MAE backbone (PretrainVisionTransformer with its decoder
    commented out) in its state-dict order: an Attention registers qkv (no bias) before q_bias
    and v_bias, so its parameters q_bias, v_bias come first; pos_embed is a plain attribute."""
    entries = [("encoder.patch_embed.proj.weight", (dim, 3, patch, patch)), ("encoder.patch_embed.proj.bias", (dim,))]
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        entries += [(b + "norm1.weight", (dim,)), (b + "norm1.bias", (dim,)),
                    (b + "attn.q_bias", (dim,)), (b + "attn.v_bias", (dim,)),
                    (b + "attn.qkv.weight", (3 * dim, dim)),
                    (b + "attn.proj.weight", (dim, dim)), (b + "attn.proj.bias", (dim,)),
                    (b + "norm2.weight", (dim,)), (b + "norm2.bias", (dim,)),
                    (b + "mlp.fc1.weight", (4 * dim, dim)), (b + "mlp.fc1.bias", (4 * dim,)),
                    (b + "mlp.fc2.weight", (dim, 4 * dim)), (b + "mlp.fc2.bias", (dim,))]
    return entries + [("encoder.norm.weight", (dim,)), ("encoder.norm.bias", (dim,))]


def random_release_encoder(spec: ArcSpec, seed: int = 0) -> OrderedDict:
    """Random weights with the release's keys: unit-ish LayerNorms, non-zero biases (q and v
    biases included), weights ~ 1 / sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in release_encoder_entries(spec.in_channels, spec.vit_depth, spec.vit_patch):
        noise = torch.randn(shape, generator=g)
        if "norm" in key and key.endswith("weight"):
            out[key] = 1 + 0.2 * noise
        elif len(shape) == 1:
            out[key] = 0.2 * noise
        else:
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
    return out


def release_position_table(n: int, d: int) -> np.ndarray:
    """The release's get_sinusoid_encoding_table, restated: float64 angles, then float32."""
    table = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(d) // 2) / d)  # (n, d)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table.astype(np.float32)


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * w + b


def release_forward(sd: dict, images: torch.Tensor, heads: int, k_bias: dict | None = None) -> torch.Tensor:
    """The release's encoder forward in float64 from its equations: patches -> + table ->
    per block LN -> attention (qkv with q and v biases, k bias zero) -> residual -> LN ->
    MLP (exact GELU) -> residual; final LN. -> (B, 196, D). k_bias: optional non-zero key biases
    by block prefix (for the check that dropping them changes nothing)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = images.double()
    w = sd["encoder.patch_embed.proj.weight"]
    dim, p = w.shape[0], w.shape[-1]
    B, _, H, W = x.shape
    patches = x.reshape(B, 3, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, 3 * p * p)
    t = patches @ w.reshape(dim, -1).T + sd["encoder.patch_embed.proj.bias"]  # (B, N, D), raster order
    n = t.shape[1]
    t = t + torch.from_numpy(release_position_table(n, dim)).double()
    depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})
    hd = dim // heads
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        h = layer_norm(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        kb = torch.zeros(dim, dtype=torch.float64) if k_bias is None else k_bias[b].double()
        qkv = h @ sd[b + "attn.qkv.weight"].T + torch.cat([sd[b + "attn.q_bias"], kb, sd[b + "attn.v_bias"]])
        q, k, v = qkv.reshape(B, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # each (B, heads, N, hd)
        attn = torch.softmax((q * hd ** -0.5) @ k.transpose(-2, -1), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(B, n, dim)
        t = t + o @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = layer_norm(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        h = h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        t = t + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    return layer_norm(t, sd["encoder.norm.weight"], sd["encoder.norm.bias"])


def scaled_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


def save_release_checkpoint(model: torch.nn.Module, encoder: OrderedDict, path: Path) -> None:
    """The release's file format ({'epoch', 'state_dict' with 'module.' keys, 'optimizer'}) with
    the random release-keyed backbone and the model's (release-identical) head keys."""
    state = OrderedDict(("module.backbone." + k, v) for k, v in encoder.items())
    for k, v in model.state_dict().items():
        if not k.startswith("backbone."):
            state["module." + k] = v.clone()
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("variant,listing", [("opengraphau", "opengraphau_stage{}_swin_transformer_tiny.txt"),
                                             ("megraphau", "stage{}_swin_transformer_tiny_12au.txt")])
def test_state_dict_is_the_releases(stage, variant, listing):
    """Backbone keys as the release's model code builds them; the rest (global_linear 768 -> 384
    and the head) as in the release's Swin-T files, which have the same widths."""
    with torch.device("meta"):  # shapes only: builds ViT-B in a fraction of a second
        model = build_model(stage, "mae_vit_base", 41 if variant == "opengraphau" else 12, pretrained=False,
                            variant=variant)
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    theirs = [("backbone." + k, shape, "float32") for k, shape in release_encoder_entries(768, 12, 16)]
    theirs += [e for e in reference_entries(listing.format(stage)) if not e[0].startswith("backbone.")]
    assert ours == theirs  # same keys, shapes, dtypes and order
    assert infer_config(model.state_dict()) == {"arc": "mae_vit_base", "stage": stage,
                                                "num_classes": 41 if variant == "opengraphau" else 12,
                                                "variant": variant}


def test_position_table_is_the_releases():
    assert torch.equal(sinusoid_position_table(196, 768), torch.from_numpy(release_position_table(196, 768))[None])
    with torch.device("meta"):
        vit = MAEViTTokens()
    assert "encoder.pos_embed" not in vit.state_dict()  # fixed, not saved (a plain attribute in the release)
    assert not any(k.endswith("k_bias") for k in vit.state_dict())


# --------------------------------------------------------------------------------------------
# numerics: a release-style checkpoint through load_model against the release's equations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,variant,n", [(1, "opengraphau", 41), (2, "opengraphau", 41), (2, "megraphau", 12)])
def test_release_checkpoint_matches_release_equations(small_arc, tmp_path, stage, variant, n):
    arc = small_arc if stage == 1 else small_arc + "32"  # stage 2 on 49 tokens (GEM is quadratic in them)
    spec = ARCHS[arc]
    tokens_per_image = (224 // spec.vit_patch) ** 2
    torch.manual_seed(0)
    model = build_model(stage, arc, n, pretrained=False, variant=variant)
    with torch.no_grad():  # non-trivial BatchNorm statistics in the head
        model.train()(torch.randn(2, 3, 224, 224))
    encoder = random_release_encoder(spec, seed=stage)
    path = tmp_path / "release.pth"
    save_release_checkpoint(model, encoder, path)

    loaded = load_model(path)  # strict: every key of the file, no other
    assert (loaded.facts["arc"], loaded.facts["stage"], loaded.facts["variant"]) == (arc, stage, variant)
    batch = 2
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    reference = release_forward(encoder, images, spec.vit_heads)  # (batch, T, 64) float64
    with torch.no_grad():
        tokens = loaded.model.backbone(images)
        out = loaded.model(images)
        m64 = copy.deepcopy(loaded.model).double()
        ref_out = m64.head(m64.global_linear(reference))
    assert tokens.shape == (batch, tokens_per_image, 64)
    assert scaled_error(tokens, reference) < TOLERANCE
    outs = out if isinstance(out, tuple) else (out,)
    ref_outs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    assert len(outs) == (2 if has_edge_logits(stage, variant) else 1)
    assert outs[0].shape == (batch, n)
    for a, b in zip(outs, ref_outs):
        assert scaled_error(a, b) < TOLERANCE


@pytest.mark.slow  # 10-40 s on two shared CPU cores (a 350 MB file, a float64 ViT-B forward)
def test_full_size_release_checkpoint_loads_and_matches(tmp_path):
    """ViT-B/16, OpenGraphAU stage 1: the release-keyed file loads strictly and the tokens fed
    to the head are the release's (float64 equations), batch 1."""
    spec = ARCHS["mae_vit_base"]
    torch.manual_seed(0)
    model = build_model(1, "mae_vit_base", 41, pretrained=False, variant="opengraphau")
    encoder = random_release_encoder(spec)
    path = tmp_path / "OpenGraphAU-MAE_first_stage.pth"
    save_release_checkpoint(model, encoder, path)
    loaded = load_model(path)
    assert loaded.facts["arc"] == "mae_vit_base"
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = loaded.model.backbone(images)
        probs = loaded.model(images)
    reference = release_forward(encoder, images, spec.vit_heads)
    assert tokens.shape == (1, 196, 768) and probs.shape == (1, 41)
    assert scaled_error(tokens, reference) < TOLERANCE


# --------------------------------------------------------------------------------------------
# the key conversion and MAE pretraining files
# --------------------------------------------------------------------------------------------
def facebook_layout(encoder: OrderedDict, seed: int = 5) -> OrderedDict:
    """The same encoder in facebookresearch MAE's layout (timm ViT keys, full q/k/v biases with a
    non-zero key bias, class token, 2-D table with a class slot, decoder)."""
    g = torch.Generator().manual_seed(seed)
    dim = encoder["encoder.norm.weight"].shape[0]
    out = OrderedDict(cls_token=torch.randn(1, 1, dim, generator=g), pos_embed=torch.randn(1, 197, dim, generator=g))
    for key, value in encoder.items():
        key = key.removeprefix("encoder.")
        if key.endswith("attn.q_bias"):
            continue
        if key.endswith("attn.v_bias"):
            q = encoder["encoder." + key.replace("v_bias", "q_bias")]
            out[key.replace("v_bias", "qkv.bias")] = torch.cat([q, torch.randn(dim, generator=g), value])
            continue
        out[key] = value
    out.update(mask_token=torch.zeros(1, 1, 32), decoder_pos_embed=torch.zeros(1, 197, 32),
               **{"decoder_embed.weight": torch.zeros(32, dim), "decoder_blocks.0.norm1.weight": torch.ones(32),
                  "decoder_pred.weight": torch.zeros(768, 32)})
    return out


def mae_pytorch_layout(encoder: OrderedDict) -> OrderedDict:
    """The release's starting point: MAE-pytorch's pretraining file, encoder plus decoder."""
    return OrderedDict(**encoder, **{"decoder.blocks.0.norm1.weight": torch.ones(32),
                                     "decoder.head.weight": torch.zeros(768, 32),
                                     "encoder_to_decoder.weight": torch.zeros(32, 64),
                                     "mask_token": torch.zeros(1, 1, 32)})


def test_filter_fn_maps_every_layout_to_the_releases_keys():
    encoder = random_release_encoder(SMALL)
    release_keys = list(encoder)
    # the release's (and our) layout: unchanged, input untouched
    assert mae_vit_layout(encoder) == "release"
    assert list(mae_vit_filter_fn(encoder)) == release_keys
    assert all(mae_vit_filter_fn(encoder)[k] is v for k, v in encoder.items())
    # MAE-pytorch pretraining file: the decoder parts go
    pt = mae_pytorch_layout(encoder)
    assert mae_vit_layout(pt) == "mae_pytorch"
    assert list(mae_vit_filter_fn(pt)) == release_keys
    # facebookresearch: renamed, q/v biases split out of qkv.bias, class token / table / decoder dropped
    fb = facebook_layout(encoder)
    before = dict(fb)
    converted = mae_vit_filter_fn(fb)
    assert dict(fb).keys() == before.keys()  # pure
    assert mae_vit_layout(fb) == "timm" and sorted(converted) == sorted(release_keys)
    for k in release_keys:
        assert torch.equal(converted[k], encoder[k]), k
    assert mae_vit_filter_fn(converted).keys() == converted.keys()  # idempotent


def test_dropping_the_key_bias_is_exact():
    """softmax(q.(k + b)) = softmax(q.k): a facebookresearch file's key biases change nothing."""
    encoder = random_release_encoder(SMALL)
    fb = facebook_layout(encoder)
    k_bias = {f"encoder.blocks.{i}.": fb[f"blocks.{i}.attn.qkv.bias"][64:128] for i in range(SMALL.vit_depth)}
    images = torch.randn(1, 3, 224, 224)
    with_k = release_forward(encoder, images, SMALL.vit_heads, k_bias=k_bias)
    without = release_forward(encoder, images, SMALL.vit_heads)
    assert (with_k - without).abs().max() < 1e-12


@pytest.mark.parametrize("layout", ["mae_pytorch", "timm"])
def test_pretrained_file_loads_strictly(tmp_path, layout):
    encoder = random_release_encoder(SMALL)
    weights = mae_pytorch_layout(encoder) if layout == "mae_pytorch" else facebook_layout(encoder)
    path = tmp_path / "mae.pth"
    torch.save({"model": weights}, path)  # both projects save under 'model'
    vit = MAEViTTokens(64, 2, 4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_imagenet_weights(vit, "mae_vit_base", path) == path
    notes = [str(w.message) for w in caught]
    assert any("facebookresearch" in m for m in notes) == (layout == "timm")
    for k, v in vit.state_dict().items():
        assert torch.equal(v, encoder[k]), k


def test_missing_or_wrong_pretrained_file(tmp_path, monkeypatch):
    vit = MAEViTTokens(64, 2, 4, 16)
    with pytest.raises(MissingWeightsError, match="mae_pretrain_vit_base.pth") as err:
        load_imagenet_weights(vit, "mae_vit_base", tmp_path / "absent.pth")
    assert "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth" in str(err.value)
    assert "absent.pth" in str(err.value)
    monkeypatch.setattr(backbone_module, "CHECKPOINT_DIR", tmp_path)
    with pytest.warns(UserWarning, match="RANDOM backbone") as caught:
        assert load_imagenet_weights(vit, "mae_vit_base") is None
    assert str(tmp_path / "mae_pretrain_vit_base.pth") in str(caught[0].message)
    torch.save({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="does not hold"):
        load_imagenet_weights(vit, "mae_vit_base", tmp_path / "resnet.pth")


# --------------------------------------------------------------------------------------------
# training, export, configuration
# --------------------------------------------------------------------------------------------
def test_grad_checkpointing_matches_plain_model(small_arc):
    torch.manual_seed(0)
    plain = build_model(1, small_arc, 41, pretrained=False, variant="opengraphau").train()
    recomputed = copy.deepcopy(plain)
    recomputed.set_grad_checkpointing(2)
    assert recomputed.backbone.grad_checkpointing == 1  # the first of the two blocks
    images = torch.randn(2, 3, 224, 224)
    grads = []
    for model in (plain, recomputed):
        model(images).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError):
        recomputed.set_grad_checkpointing(5)


def test_onnx_export_reduced_width(small_arc, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from megraphau.model.onnx_export import export_onnx  # optional dependencies checked above

    torch.manual_seed(0)
    model = build_model(1, small_arc, 41, pretrained=False, variant="opengraphau").eval()
    report = export_onnx((model, {"arc": small_arc, "stage": 1, "num_classes": 41, "variant": "opengraphau"}),
                         tmp_path / "mae.onnx")
    assert report["outputs"] == ["probs"] and report["crop_size"] == 224
    assert max(report["max_diff"].values()) < TOLERANCE
    with pytest.raises(ValueError, match="224 x 224 crops only"):
        export_onnx((model, {"arc": small_arc}), tmp_path / "x.onnx", crop_size=112)


@pytest.mark.slow  # about 150 s on two CPU cores
def test_onnx_export_full_size(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from megraphau.model.onnx_export import export_onnx

    model = build_model(2, "mae_vit_base", 41, pretrained=False, variant="opengraphau").eval()
    report = export_onnx((model, {"arc": "mae_vit_base", "stage": 2, "num_classes": 41, "variant": "opengraphau"}),
                         tmp_path / "mae.onnx")
    assert max(report["max_diff"].values()) < TOLERANCE


def test_conf_lists_every_arc():
    assert list(ARCHS) == conf.ARCS


def test_model_package_imports_go_one_way():
    """No import circle inside megraphau/model (module-level or inside functions)."""
    package = Path(__file__).resolve().parents[2] / "megraphau" / "model"
    graph = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:
                    deps.update(alias.name for alias in node.names)
                elif (node.module or "").startswith("megraphau.model."):
                    deps.add(node.module.split(".")[2])
        graph[path.stem] = deps - {path.stem}
    assert graph["facts"] == set() and graph["statedict"] == set()
    seen, done = set(), set()

    def visit(name, trail):
        assert name not in seen - done, f"import circle: {' -> '.join(trail + [name])}"
        if name in done:
            return
        seen.add(name)
        for dep in graph.get(name, ()):
            visit(dep, trail + [name])
        done.add(name)

    for name in graph:
        if name != "__init__":
            visit(name, [])
