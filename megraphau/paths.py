"""Where the project's own folders are: one definition for every module.

The scripts run from a checkout (or an editable install of it), so the repository root is the
folder above this package; datasets (data/), weights (checkpoints/) and the dataset configs
(megraphau/configs/) are found from here whatever the working directory.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
CONFIG_DIR = PACKAGE_DIR / "configs"
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
