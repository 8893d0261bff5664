"""The ME-GraphAU / OpenGraphAU models (the release's model/ folder): `from model import build_model,
load_model`. The code lives in megraphau/model/; this name stays for the layout users know."""
from megraphau.model import *  # noqa: F401,F403
from megraphau.model import __all__  # noqa: F401
