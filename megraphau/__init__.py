"""ME-GraphAU and OpenGraphAU facial action unit recognition (IJCAI-ECAI 2022 and its 41-AU successor).

The library behind the scripts: `megraphau.model` (the network and checkpoint loading),
`megraphau.data` (dataset configs, lists, images), `megraphau.engine` (training and evaluation),
`megraphau.inference` (AUDetector, faces, video), `megraphau.synth` (the synthetic dataset),
`megraphau.analysis` (AU relations and figures). The two names most users need are here:

    from megraphau import AUDetector, load_model
"""
from megraphau.provenance import __version__

__all__ = ["AUDetector", "__version__", "load_model"]


def __getattr__(name):
    # Lazy: `import megraphau` stays cheap (no torch import) for --version and the tools' --help.
    if name == "AUDetector":
        from megraphau.inference.detector import AUDetector
        return AUDetector
    if name == "load_model":
        from megraphau.model import load_model
        return load_model
    raise AttributeError(f"module 'megraphau' has no attribute {name!r}")
