"""Shared command-line flags of train_stage1.py, train_stage2.py and test.py (the release's
conf.py). The code lives in megraphau/conf.py; this name stays for the layout users know."""
from megraphau.conf import *  # noqa: F401,F403
