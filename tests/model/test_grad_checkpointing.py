"""Gradient checkpointing of the backbone (--grad-checkpointing): the same loss, gradients and
BatchNorm statistics as the plain model, with fewer activations stored for backward."""
import copy

import pytest
import torch
import torch.nn.functional as F

from megraphau.model import build_model


def saved_bytes(model, images) -> tuple[torch.Tensor, int]:
    """Forward in train mode; returns the output and the bytes autograd keeps for backward."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(images)
    return output, sum(storages.values())


def train_step(model, images, labels, edge_labels):
    """One forward/backward in train mode; returns loss, gradients, buffers and saved bytes."""
    model.train()
    torch.manual_seed(123)  # the same dropout / drop-path draws for every model
    output, stored = saved_bytes(model, images)
    probs, edge_logits = output if isinstance(output, tuple) else (output, None)
    loss = F.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), labels)
    if edge_logits is not None:
        loss = loss + 0.05 * F.cross_entropy(edge_logits.reshape(-1, 4), edge_labels.reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers, stored


@pytest.mark.parametrize("arc,stages,stage", [("resnet18", 1, 1), ("resnet18", True, 2),
                                              ("swin_transformer_tiny", 2, 2)])
def test_checkpointing_matches_plain_model(arc, stages, stage):
    torch.manual_seed(0)
    num_classes = 8
    plain = build_model(stage, arc, num_classes, neighbor_num=3, pretrained=False)
    recomputed = copy.deepcopy(plain)
    recomputed.set_grad_checkpointing(stages)
    images = torch.randn(3, 3, 224, 224)
    labels = (torch.rand(3, num_classes) < 0.4).float()
    edge_labels = (2 * labels.unsqueeze(2) + labels.unsqueeze(1)).long().view(3, -1)

    loss_a, grads_a, buffers_a, stored_a = train_step(plain, images, labels, edge_labels)
    loss_b, grads_b, buffers_b, stored_b = train_step(recomputed, images, labels, edge_labels)

    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)
    # running statistics updated once, not again by the recomputation; batches counted once
    for name in buffers_a:
        torch.testing.assert_close(buffers_b[name], buffers_a[name], rtol=0, atol=1e-6, msg=name)
    # the point of it: the backbone's activations are not kept for backward
    assert stored_b < 0.75 * stored_a, (stored_b, stored_a)


def test_checkpointing_leaves_eval_and_state_dict_alone():
    torch.manual_seed(0)
    model = build_model(2, "resnet18", 8, pretrained=False)
    keys = list(model.state_dict())
    images = torch.randn(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        before = model(images)
    model.set_grad_checkpointing(4)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        after = model(images)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.set_grad_checkpointing(False)
    assert model.backbone.grad_checkpointing == 0


@pytest.mark.parametrize("stages", [-1, 5])
def test_checkpointing_range_is_checked(stages):
    model = build_model(1, "resnet18", 8, pretrained=False)
    with pytest.raises(ValueError, match="0..4"):
        model.set_grad_checkpointing(stages)
