"""The AU dataset (the release's dataset.py): AUDataset, transforms, dataset configs.
The code lives in megraphau/data/; this name stays for the layout users know."""
from megraphau.data.dataset import *  # noqa: F401,F403
