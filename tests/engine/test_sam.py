"""SAM/ASAM around AdamW (megraphau/engine/sam.py): the same steps as the release's recipe's
algorithm, restated independently below; BatchNorm statistics moved by the first pass only;
resume; GradScaler and bf16 autocast; gradient checkpointing; DDP (slow)."""
import copy
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from megraphau.engine.sam import SAM, disable_running_stats, enable_running_stats, sam_step
from megraphau.model.backbone import recompute_in_backward

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4)


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear -> sigmoid: 3 'AU' probabilities."""

    def __init__(self, momentum=0.1, checkpointed=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # BN cancels a bias: noise for Adam
        self.bn = nn.BatchNorm2d(4, momentum=momentum)
        self.fc = nn.Linear(4, 3)
        self.checkpointed = checkpointed

    def features(self, x):
        return F.relu(self.bn(self.conv(x)))

    def forward(self, x):
        # recompute_in_backward is what the backbone's --grad-checkpointing uses
        f = recompute_in_backward(self.features, x, self) if self.checkpointed else self.features(x)
        return torch.sigmoid(self.fc(f.mean(dim=(2, 3))))


def make_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g), (torch.rand(4, 3, generator=g) < 0.5).float()


def bce(model, batch):
    images, labels = batch
    return F.binary_cross_entropy(model(images), labels)


def make_sam(model, rho=2.0, adaptive=True):
    return SAM(torch.optim.AdamW(model.parameters(), **ADAMW), rho=rho, adaptive=adaptive)


# --------------------------------------------------------------------------------------------
# The release's algorithm restated for testing: SAM(AdamW, rho, adaptive) as the OpenGraphAU
# recipe uses it (Foret et al. 2021; adaptive: Kwon et al. 2021) with the release's BatchNorm
# helpers (OpenGraphAU/utils.py: momentum 0 for the second pass, restored before the next
# first pass). Written independently and plainly: one flat vector for the norm, lists for the
# saved weights. Not project code.
# --------------------------------------------------------------------------------------------
class ReleaseSAM:
    def __init__(self, params, rho, adaptive, **adamw):
        self.params = list(params)
        self.rho, self.adaptive = rho, adaptive
        self.adamw = torch.optim.AdamW(self.params, **adamw)
        self.saved = None

    @torch.no_grad()
    def first_step(self):
        with_grad = [p for p in self.params if p.grad is not None]
        flat = torch.cat([((p.abs() if self.adaptive else 1.0) * p.grad).reshape(-1) for p in with_grad])
        norm = torch.sqrt((flat * flat).sum())
        self.saved = [(p, p.clone()) for p in with_grad]
        for p in with_grad:
            p += (p * p if self.adaptive else 1.0) * p.grad * (self.rho / (norm + 1e-12))
        self.adamw.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for p, w in self.saved:
            p.copy_(w)
        self.adamw.step()
        self.adamw.zero_grad()


def release_disable_bn(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.backup_momentum = m.momentum
            m.momentum = 0


def release_enable_bn(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and hasattr(m, "backup_momentum"):
            m.momentum = m.backup_momentum


def release_step(model, opt, batch):
    release_enable_bn(model)
    bce(model, batch).backward()
    opt.first_step()
    release_disable_bn(model)
    bce(model, batch).backward()
    opt.second_step()


# --------------------------------------------------------------------------------------------
def assert_same_model(a, b, buffers=("bn.running_mean", "bn.running_var")):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-6, atol=1e-6, msg=name)
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    for name in buffers:
        torch.testing.assert_close(ba[name], bb[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("rho,adaptive", [(2.0, True), (0.05, False)])
def test_steps_equal_the_release_algorithm(rho, adaptive):
    ours = TinyNet()
    ref = copy.deepcopy(ours)
    start = copy.deepcopy(ours)
    opt = make_sam(ours, rho, adaptive)
    ref_opt = ReleaseSAM(ref.parameters(), rho, adaptive, **ADAMW)
    for step in range(3):
        batch = make_batch(step)
        result = sam_step(ours, bce, batch, opt)
        release_step(ref, ref_opt, batch)
        assert result.stepped and torch.isfinite(result.loss) and torch.isfinite(result.perturbed_loss)
        assert_same_model(ours, ref)
        if step == 0:  # the first pass's loss is the loss at the unperturbed weights
            torch.testing.assert_close(result.loss, bce(copy.deepcopy(start).train(), batch))
    assert not torch.allclose(ours.fc.weight, start.fc.weight)
    # statistics counted once per step here, twice by the release's helpers (see sam.py)
    assert int(ours.bn.num_batches_tracked) == 3 and int(ref.bn.num_batches_tracked) == 6
    assert ours.bn.momentum == 0.1
    # SAM is not plain AdamW: one AdamW step from the same start lands elsewhere
    plain = copy.deepcopy(start)
    plain_opt = torch.optim.AdamW(plain.parameters(), **ADAMW)
    for step in range(3):
        plain_opt.zero_grad()
        bce(plain, make_batch(step)).backward()
        plain_opt.step()
    assert not torch.allclose(plain.fc.weight, ours.fc.weight, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_move_on_the_first_pass_only(momentum):
    model = TinyNet(momentum=momentum)
    model.bn.running_mean.normal_()  # any state, so that a second update would show
    single = copy.deepcopy(model)
    batch = make_batch(0)
    sam_step(model, bce, batch, make_sam(model))
    single(batch[0])  # one plain forward at the starting weights
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.bn, name), getattr(single.bn, name), rtol=0, atol=0, msg=name)
    assert model.bn.momentum == momentum


def test_disable_enable_running_stats_are_exact_and_idempotent():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.named_buffers()}
    disable_running_stats(model)
    disable_running_stats(model)  # a second call keeps the first saved momentum
    model(make_batch(0)[0])
    enable_running_stats(model)
    enable_running_stats(model)
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k
    assert model.bn.momentum == 0.1


def test_state_dict_round_trip_gives_the_same_next_step():
    model = TinyNet()
    opt = make_sam(model)
    for step in range(2):
        sam_step(model, bce, make_batch(step), opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["rho"] == 2.0
    assert saved["optimizer"]["param_groups"][0]["adaptive"] is True

    resumed = TinyNet()
    resumed.load_state_dict(saved["model"])
    resumed_opt = SAM(torch.optim.AdamW(resumed.parameters(), **ADAMW), rho=0.5, adaptive=False)
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.param_groups is resumed_opt.base_optimizer.param_groups  # still shared
    assert resumed_opt.param_groups[0]["rho"] == 2.0 and resumed_opt.param_groups[0]["adaptive"]
    for o in (opt, resumed_opt):  # a schedule writing the wrapper's lr reaches AdamW
        o.param_groups[0]["lr"] = 3e-3
    sam_step(model, bce, make_batch(2), opt)
    sam_step(resumed, bce, make_batch(2), resumed_opt)
    assert_same_model(model, resumed)
    assert resumed_opt.base_optimizer.param_groups[0]["lr"] == 3e-3

    plain = torch.optim.AdamW(TinyNet().parameters(), **ADAMW)  # a plain AdamW state loads too
    from_plain = make_sam(TinyNet())
    from_plain.load_state_dict(plain.state_dict())
    assert from_plain.param_groups[0]["rho"] == 2.0


def test_plain_step_is_refused():
    model = TinyNet()
    with pytest.raises(RuntimeError, match="two passes"):
        make_sam(model).step()


def test_grad_scaler_gives_the_unscaled_steps():
    plain, scaled = TinyNet(), None
    scaled = copy.deepcopy(plain)
    opt, scaled_opt = make_sam(plain), make_sam(scaled)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for step in range(3):
        sam_step(plain, bce, make_batch(step), opt)
        assert sam_step(scaled, bce, make_batch(step), scaled_opt, scaler=scaler).stepped
    assert_same_model(plain, scaled)
    assert scaler.get_scale() == 2.0**12  # no inf, no growth yet
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # counts as no scaler
    assert sam_step(scaled, bce, make_batch(3), scaled_opt, scaler=disabled).stepped


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_grad_scaler_skips_the_whole_step_on_inf(bad_pass):
    model = TinyNet()
    opt = make_sam(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    sam_step(model, bce, make_batch(0), opt, scaler=scaler)  # AdamW state exists
    params = {k: v.clone() for k, v in model.named_parameters()}
    adam_steps = [float(s["step"]) for s in opt.base_optimizer.state.values()]
    calls = []

    def overflowing(m, batch):
        calls.append(1)
        loss = bce(m, batch)
        return loss * float("inf") if len(calls) == bad_pass else loss

    result = sam_step(model, overflowing, make_batch(1), opt, scaler=scaler)
    assert not result.stepped and len(calls) == bad_pass
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert [float(s["step"]) for s in opt.base_optimizer.state.values()] == adam_steps
    assert scaler.get_scale() == 2.0**11  # lowered once
    assert model.bn.momentum == 0.1 and all(p.grad is None for p in model.parameters())
    assert sam_step(model, bce, make_batch(2), opt, scaler=scaler).stepped  # and training goes on


def test_bf16_autocast_on_cpu():
    model = TinyNet()
    reference = copy.deepcopy(model)
    opt, ref_opt = make_sam(model), make_sam(reference)

    def bf16_loss(m, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = m(batch[0])
        return F.binary_cross_entropy(probs.float(), batch[1])

    result = sam_step(model, bf16_loss, make_batch(0), opt)
    sam_step(reference, bce, make_batch(0), ref_opt)
    assert result.stepped and result.loss.dtype == torch.float32
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=0, atol=5e-2)  # bf16's precision, same direction


def test_gradient_checkpointing_composes():
    plain = TinyNet()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointed = True
    opt, ck_opt = make_sam(plain), make_sam(checkpointed)
    for step in range(2):
        sam_step(plain, bce, make_batch(step), opt)
        sam_step(checkpointed, bce, make_batch(step), ck_opt)
    assert_same_model(plain, checkpointed)
    assert int(checkpointed.bn.num_batches_tracked) == 2


def test_an_error_in_the_second_pass_restores_everything():
    model = TinyNet()
    opt = make_sam(model)
    params = {k: v.clone() for k, v in model.named_parameters()}
    calls = []

    def failing(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return bce(m, batch)

    with pytest.raises(KeyboardInterrupt):
        sam_step(model, failing, make_batch(0), opt)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert model.bn.momentum == 0.1 and not opt.base_optimizer.state
    opt.state_dict()  # not left between the two steps


# --------------------------------------------------------------------------------------------
# DDP: both passes all-reduce, so two ranks on half batches take the single-process step on
# the whole batch (a net without BatchNorm: DDP does not synchronise batch statistics).
# --------------------------------------------------------------------------------------------
def _no_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3), nn.Sigmoid())


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_no_bn_net())
        opt = SAM(torch.optim.AdamW(model.parameters(), **ADAMW), rho=2.0, adaptive=True)
        for step in range(2):
            images, labels = make_batch(step)
            part = slice(2 * rank, 2 * rank + 2)
            sam_step(model, bce, (images[part], labels[part]), opt)
        if rank == 0:
            torch.save(model.module.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pth")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    single = _no_bn_net()
    opt = make_sam(single)
    for step in range(2):
        sam_step(single, bce, make_batch(step), opt)
    ddp_state = torch.load(out, weights_only=True)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
