"""Distributed evaluation on CPU (2 Gloo processes): every test image counts exactly once, so the
distributed F1 equals the single-process F1 on an odd-sized set (DistributedSampler pads it), and
so do a stage-2 model's summed pair probabilities (test.py's co-occurrence figure)."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from megraphau import (
    utils,
)
from megraphau.engine import loop, metrics
from megraphau.paths import REPO_ROOT

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
    from megraphau.model import build_model

    torch.manual_seed(0)
    model = build_model(1, "resnet18", num_classes=4, neighbor_num=2, pretrained=False)
    with torch.no_grad():  # non-trivial running statistics, the same on every rank
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


def _stage2_model():
    from megraphau.model import build_model

    torch.manual_seed(0)
    model = build_model(2, "resnet18", num_classes=4, neighbor_num=2, pretrained=False)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


class TinyImagesWithUnknowns(TinyImages):
    def __init__(self):
        super().__init__()
        self.labels = self.labels.copy()
        self.labels[[0, 6], 1] = -1  # item 0 is the one the sampler repeats to pad rank 1


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
        probs = loop.predict(model, loader, torch.device("cpu"))
        # test.py's stage-2 path: the pair meter (labels with unknowns), summed over the ranks
        from megraphau.analysis import relations

        ds2 = TinyImagesWithUnknowns()
        sampler2 = DistributedSampler(ds2, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        meter = relations.PairProbabilityMeter()
        loop.predict(_stage2_model(), DataLoader(ds2, batch_size=2, sampler=sampler2), torch.device("cpu"),
                       pair_meter=meter)
        if rank == 0:
            np.savez(out_path, probs=probs, sums=meter.sums, counts=meter.counts)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """What rank 0 holds after a 2-process Gloo run of _worker (one spawn for the tests below)."""
    out = str(tmp_path_factory.mktemp("ddp") / "outputs.npz")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return np.load(out)


@pytest.mark.slow
def test_distributed_predictions_and_f1_equal_single_process(distributed):
    dist_probs = distributed["probs"]

    ds = TinyImages()
    single = loop.predict(_model(), DataLoader(ds, batch_size=2), torch.device("cpu"))
    assert dist_probs.shape == single.shape == (NUM_ITEMS, 4)
    np.testing.assert_allclose(dist_probs, single, rtol=0, atol=1e-5)
    threshold = float(np.median(single))  # a threshold giving non-trivial F1 for this random model
    m_single = metrics.compute_au_metrics(single, ds.labels, threshold)
    m_dist = metrics.compute_au_metrics(dist_probs, ds.labels, threshold)
    print(f"single-process mean F1 {m_single['mean_f1']:.4f}, distributed {m_dist['mean_f1']:.4f}")
    assert 0 < m_single["mean_f1"] < 1
    np.testing.assert_array_equal(m_dist["f1"], m_single["f1"])
    np.testing.assert_array_equal(m_dist["acc"], m_single["acc"])


@pytest.mark.slow
def test_distributed_pair_probabilities_equal_single_process(distributed):
    """test.py's stage-2 co-occurrence under DDP: the pair meter sees every item once (the
    sampler's padding repeat is left out) and holds the sums of both ranks."""
    from megraphau.analysis import relations

    dist_meter = distributed
    ds = TinyImagesWithUnknowns()
    single = relations.PairProbabilityMeter()
    loop.predict(_stage2_model(), DataLoader(ds, batch_size=2), torch.device("cpu"), pair_meter=single)
    np.testing.assert_allclose(dist_meter["sums"], single.sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dist_meter["counts"], single.counts)
    assert single.counts[1, 1] == NUM_ITEMS - 2 and single.counts[0, 0] == NUM_ITEMS
    # and a model without edge logits is refused rather than silently ignored
    with pytest.raises(ValueError, match="stage-2"):
        loop.predict(_model(), DataLoader(ds, batch_size=2), torch.device("cpu"),
                       pair_meter=relations.PairProbabilityMeter())


@pytest.mark.slow
def test_torchrun_training_two_processes_matches_single_process_test(tmp_path):
    """torchrun, 2 Gloo ranks on CPU: train 2 epochs (with gradient checkpointing, which must work
    under DDP), then test.py (one process) on last.pth reproduces the distributed run's test-fold
    F1 (gathered predictions, rank 0's BN statistics)."""
    import subprocess
    import sys

    from megraphau import conf
    from megraphau.synth import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "synth", subjects_per_part=1, tasks=2, frames=4, seed=0, size=64)
    common = ["--dataset", "SYNTH", "--dataset-path", str(root), "--output-dir", str(tmp_path / "out"),
              "--crop-size", "48", "-b", "4", "-j", "0", "--no-progress", "--arc", "resnet18"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(REPO_ROOT / "train_stage1.py"), *common, "--pretrained", "none", "-e", "2",
           "--save-every", "0", "--exp-name", "ddp", "--grad-checkpointing", "2"]  # DDP with recomputation
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    last = tmp_path / "out" / "ddp" / "bs_4_seed_0_lr_0.001" / "last.pth"
    history = torch.load(last, weights_only=True)["history"]

    import test as test_mod

    res = test_mod.main(conf.parse_args(test_mod.get_args_parser(), common + ["--resume", str(last)], "test"))
    assert res["num_images"] == 8
    np.testing.assert_allclose(res["f1"], np.array(history[-1]["f1"]) * 100, atol=1e-3)
    assert res["mean_f1"] == pytest.approx(100 * history[-1]["mean_f1"], abs=1e-3)
