"""Fixtures shared by the engine tests."""
import pytest

from cli_runs import tiny_synth_root


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    """8 faces per part: 16 train / 8 test images per fold, for the mechanics (not for learning);
    one per test module, as modules may add files to it."""
    return tiny_synth_root(tmp_path_factory, "synth_tiny")
