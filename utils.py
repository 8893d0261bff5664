"""Training utilities (the release's utils.py): devices, distributed set-up, seeds, checkpoint files.
The code lives in megraphau/utils.py; this name stays for the layout users know."""
from megraphau.utils import *  # noqa: F401,F403
