"""Files in the release's formats, for tests: one helper instead of a copy per test file."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch


def save_release_checkpoint(model: torch.nn.Module, path, prefix: str = "module.", epoch: int = 20,
                            **extra) -> Path:
    """Save `model` as the release's scripts did: {'epoch', 'state_dict' with DataParallel's 'module.'
    keys, 'optimizer'} (plus any `extra` top-level entries)."""
    state = OrderedDict((prefix + k, v.detach().clone()) for k, v in model.state_dict().items())
    torch.save({"epoch": epoch, "state_dict": state, "optimizer": {}, **extra}, path)
    return Path(path)
