"""The fast GEM (model/mefl.py) against the straightforward reference form
(bench/reference_mefl.py): same outputs, gradients and BN running statistics."""
import pytest
import torch

from megraphau.model import build_model
from megraphau.model.mefl import GEM
from megraphau.model.mefl_reference import ReferenceGEM, reference_stage2_model

B, D, C = 3, 49, 32


def make_pair(num_classes, dtype=torch.float32, randomise_bn=False):
    fast = GEM(C, num_classes).to(dtype)
    if randomise_bn:  # non-trivial running statistics and affine parameters
        with torch.no_grad():
            fast.bn.running_mean.normal_()
            fast.bn.running_var.uniform_(0.5, 2.0)
            fast.bn.weight.normal_()
            fast.bn.bias.normal_()
    ref = ReferenceGEM(C, num_classes).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def run_both(fast, ref, num_classes, batch=B, dtype=torch.float32):
    """Forward both on the same inputs, backward a random projection of the output; returns
    (fast output, reference output, fast input grads, reference input grads)."""
    class_feature = torch.randn(batch, num_classes, D, C, dtype=dtype).relu()
    global_feature = torch.randn(batch, D, C, dtype=dtype).relu()
    weights = torch.randn(batch, num_classes * num_classes, C, dtype=dtype)
    results = []
    for module in (fast, ref):
        inputs = [class_feature.clone().requires_grad_(), global_feature.clone().requires_grad_()]
        out = module(*inputs)
        (out * weights).mean().backward()
        results.append((out.detach(), [t.grad for t in inputs]))
    return results[0][0], results[1][0], results[0][1], results[1][1]


def assert_close_all(fast, ref, outs, tol):
    out_fast, out_ref, grads_fast, grads_ref = outs
    assert out_fast.shape == out_ref.shape
    assert (out_fast - out_ref).abs().max() <= tol
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        assert (g_fast - g_ref).abs().max() <= tol
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters()):
        assert (p_fast.grad - p_ref.grad).abs().max() <= tol, name
    for (name, b_fast), b_ref in zip(fast.named_buffers(), ref.buffers()):
        assert torch.equal(b_fast, b_ref) if b_fast.dtype == torch.long else \
            (b_fast - b_ref).abs().max() <= tol, name


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("num_classes", [2, 8, 12, 27])
def test_fast_gem_matches_reference(num_classes, mode):
    fast, ref = make_pair(num_classes, randomise_bn=(mode == "eval"))
    fast.train(mode == "train")
    ref.train(mode == "train")
    outs = run_both(fast, ref, num_classes)
    assert_close_all(fast, ref, outs, 1e-4)
    if mode == "train":
        assert int(fast.bn.num_batches_tracked) == 1
        assert not torch.equal(fast.bn.running_var, torch.ones_like(fast.bn.running_var))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_gem_exact_in_float64(mode):
    fast, ref = make_pair(5, torch.float64, randomise_bn=(mode == "eval"))
    fast.train(mode == "train")
    ref.train(mode == "train")
    assert_close_all(fast, ref, run_both(fast, ref, 5, dtype=torch.float64), 1e-10)


@pytest.mark.parametrize("setting", ["momentum_none", "no_running_stats", "batch_of_one", "two_steps"])
def test_fast_gem_batchnorm_variants(setting):
    fast, ref = make_pair(4)
    batch, steps = (1 if setting == "batch_of_one" else B), (2 if setting != "batch_of_one" else 1)
    for module in (fast, ref):
        if setting == "momentum_none":
            module.bn.momentum = None  # cumulative average
        if setting == "no_running_stats":
            module.bn.track_running_stats = False
            module.bn.running_mean = module.bn.running_var = module.bn.num_batches_tracked = None
    for mode in ["train"] * steps + (["eval"] if setting == "no_running_stats" else []):
        fast.train(mode == "train")
        ref.train(mode == "train")
        fast.zero_grad()
        ref.zero_grad()
        assert_close_all(fast, ref, run_both(fast, ref, 4, batch=batch), 1e-4)


def test_state_dict_keys_and_sharing():
    fast = GEM(C, 12)
    ref = ReferenceGEM(C, 12)
    assert list(fast.state_dict()) == list(ref.state_dict())
    shared = ReferenceGEM.sharing(fast)
    assert all(a is b for a, b in zip(fast.parameters(), shared.parameters()))
    assert all(a is b for a, b in zip(fast.buffers(), shared.buffers()))


def test_autocast_bf16_close():
    fast, ref = make_pair(12)
    fast.eval()
    ref.eval()
    class_feature = torch.randn(2, 12, D, C).relu()
    global_feature = torch.randn(2, D, C).relu()
    with torch.no_grad():
        expected = ref(class_feature, global_feature)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(class_feature, global_feature)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    fast.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(class_feature.requires_grad_(), global_feature)
    out.float().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters())


def test_full_resnet18_stage2_model_matches_reference():
    model = build_model(2, "resnet18", 12, pretrained=False)
    # every BN's running statistics := this step's batch statistics, so that eval sees features
    # of a trained model's scale (with the initial statistics edges reach ~40, where fp32
    # rounding alone differs by 2e-4 between the forms, each as far from a float64 run)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    ref = reference_stage2_model(model, share_weights=False)
    assert isinstance(ref.head.edge_extractor, ReferenceGEM)
    assert list(ref.state_dict()) == list(model.state_dict())
    images = torch.randn(2, 3, 224, 224)
    relation = torch.randint(0, 4, (2, 144))
    outputs = []
    for net in (model, ref):
        net.train()
        probs, edges = net(images)
        loss = probs.mean() + torch.nn.functional.cross_entropy(edges.reshape(-1, 4), relation.reshape(-1))
        loss.backward()
        outputs.append((probs.detach(), edges.detach()))
    for a, b in zip(*outputs):
        assert (a - b).abs().max() <= 1e-4
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-4, name
    for (name, b_model), b_ref in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(b_model.float(), b_ref.float(), atol=1e-4), name  # running stats after the step
    model.eval()
    ref.eval()
    with torch.no_grad():
        for a, b in zip(model(images), ref(images)):
            assert (a - b).abs().max() <= 1e-4


def test_shared_reference_model_uses_the_same_tensors():
    model = build_model(2, "resnet18", 8, pretrained=False)
    ref = reference_stage2_model(model)
    assert all(a is b for a, b in zip(model.parameters(), ref.parameters()))
    assert isinstance(model.head.edge_extractor, GEM) and not isinstance(model.head.edge_extractor, ReferenceGEM)
    with pytest.raises(TypeError, match="GEM"):
        reference_stage2_model(build_model(1, "resnet18", 8, pretrained=False))
