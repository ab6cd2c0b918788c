"""genlib: the small PyTorch library behind the executable lecture book on deep generative models.

Every model in :mod:`genlib.models` is a probability transformation function: a map that pushes a
simple base distribution onto the data distribution. ``import genlib`` imports only torch; the
submodules (``genlib.data``, ``genlib.metrics``, ``genlib.plot``, ...) load on first use.
"""

from __future__ import annotations

import importlib
import os
import random
from typing import TYPE_CHECKING

import torch

__version__ = "0.1.0"

__all__ = ["__version__", "device", "seed"]

_SUBMODULES = {"data", "metrics", "nn", "train", "solvers", "plot", "widgets", "zoo", "models"}

if TYPE_CHECKING:  # pragma: no cover
    from . import data, metrics, models, nn, plot, solvers, train, widgets, zoo  # noqa: F401


def device() -> torch.device:
    """The best available device: CUDA when present, else the CPU (Apple's MPS is not chosen: it is untested).

    The environment variable ``GENLIB_DEVICE`` (for example ``cpu``) overrides the choice.
    """
    forced = os.environ.get("GENLIB_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed(s: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators; return a CPU torch.Generator seeded with s."""
    if not isinstance(s, int) or isinstance(s, bool) or s < 0:
        raise ValueError(f"seed: expected a non-negative int, got {s!r}")
    import numpy as np

    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return torch.Generator().manual_seed(s)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'genlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
