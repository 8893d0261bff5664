"""Shared test settings: small, deterministic, CPU-only."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _package_logging_reset():
    """The training scripts route the "megraphau" loggers to their own handlers (propagate off);
    give every test the default again, so caplog sees library messages whatever ran before."""
    yield
    import logging

    for name in ("megraphau", "megraphau.model"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
