"""resnetcls: train, evaluate, explain, export and serve ResNet image classifiers.

The Python API: resnetcls.train(...) -> Run, resnetcls.evaluate(model, data) -> dict,
resnetcls.load(run or model directory, or model.onnx) -> Predictor, whose .predict(paths, PIL images, numpy
arrays or torch tensors) gives Predictions (see api.py and README "Python API"); resnetcls.add_class(model,
name, photos, out) and resnetcls.remove_class(model, name, out) -> the new model directory;
resnetcls.embed(model, images, out=...) and resnetcls.similar(model, query, index=...): search by image
similarity.
"""

import importlib
import os

__version__ = "0.1.0"

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set (read at its first
# such allocation, so set on import, before any). Every normalised data batch is a fresh allocation, and
# faulting in its 4 KB pages cost more than filling them: a 64 x 224 px float batch (38.5 MB) took 29 ms on
# fresh pages and 8 ms with huge pages on the 2-core AVX2 AMD EPYC (warm-cache throughput 4.5-5x
# torchvision without, 6-8x with; training steps measured the same). THP_MEM_ALLOC_ENABLE=0 opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# The Python API (api.py), imported on first use (PEP 562) so `import resnetcls` and `resnetcls --help` stay
# light (no torch until one of these is touched). By module name through importlib, not an import statement:
# every module imports this package for __version__, and import-linter would read a static import here as
# the package root depending on everything above it (a cycle through every layer).
_LAZY = {
    "train": "api",
    "evaluate": "api",
    "Run": "api",
    "load_run": "api",
    "add_class": "api",
    "remove_class": "api",
    "embed": "api",
    "similar": "api",
    "Predictor": "inference.predictor",
    "load": "inference.predictor",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetcls' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
