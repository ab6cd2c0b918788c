"""The model families. Each module holds one family's model, its loss and its sampler, and follows
the contract of DESIGN.md: ``sample(n, generator=None)``, ``loss(x)``, ``log_prob(x)`` where the
family has an exact density, and ``transform(z)`` where a deterministic map from noise exists.

Modules are imported on first use: ``genlib.models.gmm``, ``genlib.models.flows``, ...
"""

from __future__ import annotations

import importlib

FAMILY_MODULES = ("gmm", "vae", "flows", "gan", "diffusion", "flow_matching", "autoregressive")


def __getattr__(name: str):
    if name in FAMILY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'genlib.models' has no attribute {name!r}")
