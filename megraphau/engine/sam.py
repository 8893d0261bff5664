"""Sharpness-Aware Minimization around a base optimizer (AdamW in this project).

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021) takes each step with the gradient at the worst nearby weights: with g = grad L(w),

    first step:   e_w = rho * g / ||g||,  w <- w + e_w          (ascend to the perturbed point)
    second step:  g' = grad L(w + e_w),  w <- w (restored), base optimizer step with g'

The adaptive variant (ASAM; Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML 2021) measures the neighbourhood in
weight-relative units, T_w = |w| element-wise:

    e_w = rho * T_w^2 g / ||T_w g||

which is why ASAM's rho is much larger (the ASAM paper and the OpenGraphAU recipe use 2.0;
plain SAM's usual rho is 0.05). Each step costs two forward/backward passes.

What the release has: OpenGraphAU's utils.py (CVI-SZU/ME-GraphAU) carries the two BatchNorm
helpers that go with this two-pass step -- momentum 0 during the second pass, then the saved
momentum back -- so the running statistics are those of the unperturbed weights, updated once
per step. The OpenGraphAU recipe this module serves (the project's issue 21) is SAM(AdamW,
rho=2.0, adaptive=True) for stages 1 and 2, stage 2 with the AU loss alone (OpenGraphAU's
stage-2 model has no edge classifier). The stored release has no SAM optimizer file and its
train_stage1.py steps AdamW directly, so the algorithm here is written from the two papers.

Differences from the release's helpers, on purpose: the second pass also leaves
`num_batches_tracked` as it was (the release's helpers count every step twice; that only
matters for BatchNorm with momentum=None, a cumulative average).

Composition (what the tests check, tests/test_sam.py):
- GradScaler (fp16 AMP): the first pass's gradients are unscaled before the perturbation; if
  either pass has inf/NaN gradients the whole step is skipped -- weights restored, no base
  step -- and the scaler lowers its scale once. bf16 autocast needs no scaler and just works.
- DDP: both backward passes all-reduce gradients as usual (do not wrap them in no_sync), so
  every rank perturbs by the same e_w, computed from the global batch's gradient, as the
  release's single-process DataParallel did; the skip decisions are then the same on every rank.
- Gradient checkpointing: each backward recomputes its own forward; the backbone freezes the
  running statistics for the recomputation itself, and the second pass is frozen here as a
  whole, so the statistics still move once per step.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

SAVED_ATTR = "_sam_saved_running_stats"  # (momentum, num_batches_tracked) while disabled


class SAM(torch.optim.Optimizer):
    """SAM/ASAM wrapper around a constructed base optimizer, sharing its param_groups (so a
    learning-rate schedule that writes group['lr'] reaches the base optimizer). Each group
    carries 'rho' and 'adaptive'.

    Use `first_step` after the first backward and `second_step` after the second, or
    `sam_step` below for the whole two-pass step. `step()` itself is refused: a plain
    one-pass step would silently train without SAM.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, rho: float = 2.0, adaptive: bool = True):
        if rho < 0:
            raise ValueError(f"SAM's rho must be >= 0, got {rho}")
        self.base_optimizer = base_optimizer
        # registers the base's groups (the same dicts) and adds rho/adaptive to each
        super().__init__(base_optimizer.param_groups, dict(rho=float(rho), adaptive=bool(adaptive)))
        self._link_groups()
        self._backup: dict[torch.Tensor, torch.Tensor] = {}  # weights before the perturbation

    def _link_groups(self) -> None:
        """Share the base optimizer's param_groups (again after it loaded a state dict)."""
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """|| T_w g ||_2 over all parameters with a gradient (T_w = |w| when adaptive, else 1)."""
        norms = [((p.abs() * p.grad) if group["adaptive"] else p.grad).norm(2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.stack([n.to(device) for n in norms]).norm(2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """w <- w + rho * T_w^2 g / (||T_w g|| + 1e-12), keeping w. Returns False (and leaves the
        weights alone) when the gradients are not finite: the caller then skips the step."""
        norm = self.grad_norm()
        if not bool(torch.isfinite(norm)):
            if zero_grad:
                self.zero_grad()
            return False
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                if group["adaptive"]:
                    e_w.mul_(p.square())
                self._backup[p] = p.detach().clone()
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights first_step perturbed (exactly, by copy)."""
        for p, w in self._backup.items():
            p.copy_(w)
        self._backup.clear()

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and take the base optimizer's step with the gradient of the perturbed point."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        raise RuntimeError("SAM takes two passes per step: call first_step/second_step, or "
                           "megraphau.engine.sam.sam_step")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The base optimizer's state dict; its param_groups carry 'rho' and 'adaptive'. Taken
        between steps (never between first_step and second_step)."""
        if self._backup:
            raise RuntimeError("SAM.state_dict() between first_step and second_step")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load into the base optimizer (a plain AdamW state dict works too: its groups get this
        SAM's rho/adaptive); saved rho/adaptive win, as saved lr does in torch optimizers."""
        self.base_optimizer.load_state_dict(state_dict)
        self._link_groups()

    def __repr__(self) -> str:
        group = self.param_groups[0]
        return f"SAM(rho={group['rho']}, adaptive={group['adaptive']}, base={self.base_optimizer!r})"


# --------------------------------------------------------------------------------------------
# BatchNorm running statistics: updated by the first pass only
# --------------------------------------------------------------------------------------------
def disable_running_stats(model: nn.Module) -> None:
    """BatchNorm layers keep normalising with batch statistics but leave running_mean/var as
    they are (momentum 0: r = 1 * r + 0 * batch, exactly) and, at enable_running_stats, the
    batch count too."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and not hasattr(m, SAVED_ATTR):
            count = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            setattr(m, SAVED_ATTR, (m.momentum, count))
            m.momentum = 0.0


def enable_running_stats(model: nn.Module) -> None:
    """Undo disable_running_stats: the saved momentum and batch count back (no-op if not disabled)."""
    for m in model.modules():
        saved = m.__dict__.pop(SAVED_ATTR, None)
        if saved is not None:
            m.momentum, count = saved
            if count is not None:
                m.num_batches_tracked.copy_(count)


# --------------------------------------------------------------------------------------------
# the two-pass step
# --------------------------------------------------------------------------------------------
class SamStepResult(NamedTuple):
    loss: torch.Tensor  # first pass (the unperturbed weights), detached: what training logs
    perturbed_loss: torch.Tensor | None  # second pass, detached; None when skipped before it
    stepped: bool  # False: inf/NaN gradients, weights and optimizer state unchanged


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def sam_step(model: nn.Module, loss_fn: Callable, batch, optimizer: SAM, scaler=None,
             check_loss: Callable | None = None) -> SamStepResult:
    """One SAM step: loss_fn(model, batch) -> scalar loss (the forward, under autocast if any),
    backward, perturb; loss_fn again with BatchNorm statistics frozen, backward; restore and
    take the base step.

    scaler: a torch.amp.GradScaler (fp16) or None; a disabled scaler counts as None. The caller
    does not call scaler.step/update: this function does, once per step.
    check_loss(loss): called on the first-pass loss before any backward (e.g. to stop on a
    non-finite loss, the same on every rank); an exception there leaves the weights and the
    optimizer untouched (the forward has moved the BatchNorm statistics, as a plain step's does).
    """
    if scaler is not None and not scaler.is_enabled():
        scaler = None
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if check_loss is not None:
        check_loss(loss)
    _backward(loss, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)  # records this pass's inf check under the SAM wrapper's id
    if not optimizer.first_step(zero_grad=True):
        if scaler is not None:
            scaler.update()  # the recorded inf lowers the scale
        return SamStepResult(loss.detach(), None, False)

    disable_running_stats(model)
    try:
        perturbed = loss_fn(model, batch)
        _backward(perturbed, scaler)
    except BaseException:
        optimizer.restore()
        optimizer.zero_grad(set_to_none=True)
        raise
    finally:
        enable_running_stats(model)

    if scaler is None:
        optimizer.second_step(zero_grad=True)
        return SamStepResult(loss.detach(), perturbed.detach(), True)
    # The scaler has unscaled the first pass for `optimizer` already; the second pass is
    # unscaled and inf-checked under the base optimizer's id, which steps only if finite.
    optimizer.restore()
    before = scaler.get_scale()
    scaler.step(optimizer.base_optimizer)
    scaler.update()  # one update per step, over both passes' inf checks
    optimizer.zero_grad(set_to_none=True)
    return SamStepResult(loss.detach(), perturbed.detach(), scaler.get_scale() >= before)
