"""Distributed evaluation on CPU (2 Gloo processes): every test image counts exactly once, so the
distributed F1 equals the single-process F1 on an odd-sized set (DistributedSampler pads it)."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import utils

NUM_ITEMS = 7  # odd: with 2 ranks the sampler repeats one item to pad


class TinyImages(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.images = torch.randn(NUM_ITEMS, 3, 32, 32, generator=g)
        self.labels = (torch.rand(NUM_ITEMS, 4, generator=g) < 0.5).long().numpy()

    def __len__(self):
        return NUM_ITEMS

    def __getitem__(self, i):
        return self.images[i], torch.from_numpy(self.labels[i]).float()


def _model():
    from model import build_model

    torch.manual_seed(0)
    model = build_model(1, "resnet18", num_classes=4, neighbor_num=2, pretrained=False)
    with torch.no_grad():  # non-trivial running statistics, the same on every rank
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_path: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ds = TinyImages()
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        loader = DataLoader(ds, batch_size=2, sampler=sampler)
        model = _model()
        if rank == 1:  # a drifted copy: broadcast_buffers must restore rank 0's statistics
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.add_(1.0)
        utils.broadcast_buffers(model)
        probs = utils.predict(model, loader, torch.device("cpu"))
        if rank == 0:
            np.save(out_path, probs)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_predictions_and_f1_equal_single_process(tmp_path):
    out = str(tmp_path / "probs.npy")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    dist_probs = np.load(out)

    ds = TinyImages()
    single = utils.predict(_model(), DataLoader(ds, batch_size=2), torch.device("cpu"))
    assert dist_probs.shape == single.shape == (NUM_ITEMS, 4)
    np.testing.assert_allclose(dist_probs, single, rtol=0, atol=1e-5)
    threshold = float(np.median(single))  # a threshold giving non-trivial F1 for this random model
    m_single = utils.compute_au_metrics(single, ds.labels, threshold)
    m_dist = utils.compute_au_metrics(dist_probs, ds.labels, threshold)
    print(f"single-process mean F1 {m_single['mean_f1']:.4f}, distributed {m_dist['mean_f1']:.4f}")
    assert 0 < m_single["mean_f1"] < 1
    np.testing.assert_array_equal(m_dist["f1"], m_single["f1"])
    np.testing.assert_array_equal(m_dist["acc"], m_single["acc"])
