"""The model families. Each module holds one family's model, its loss and its sampler, and follows
the contract of the book's Reference page "How genlib is built" (:mod:`genlib.models.base`): ``base``,
``transform(noise, **cond)``, ``sample(n, generator=None, **cond)`` equal to ``transform(base.sample(n))``,
``loss(x)``, and ``log_prob(x)`` only where the family has an exact density.

Modules are imported on first use: ``genlib.models.gmm``, ``genlib.models.flows``, ...
"""

from __future__ import annotations

import importlib

FAMILY_MODULES = ("base", "gmm", "vae", "flows", "gan", "diffusion", "flow_matching", "autoregressive")


def __getattr__(name: str):
    if name in FAMILY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'genlib.models' has no attribute {name!r}")
