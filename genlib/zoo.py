"""Named, trained models: one configuration per family and data set, used by the chapters, the
Synthesis chapter, the benchmarks and the tests alike, so that no number is copied by hand.

``get(family)`` trains a model on first use and caches its weights (and training history) on disk,
keyed by the configuration, the seed, the genlib version and the torch version; later calls load
them with ``torch.load(..., weights_only=True)``. A corrupt or mismatched entry is retrained, never
trusted. The cache lives in ``$GENLIB_CACHE`` (default ``~/.cache/genlib``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._util import resolve_device

__all__ = ["Recipe", "register", "get", "families", "recipe", "cache_dir", "cache_path", "cache_key", "clear_cache"]


@dataclass(frozen=True)
class Recipe:
    """How to build and train one named model: ``build(config) -> module`` and
    ``train(model, config, seed, device, progress) -> History | None``."""

    family: str
    dataset: str
    build: Callable[[dict], nn.Module]
    train: Callable[..., object]
    config: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[tuple[str, str], Recipe] = {}


def register(family: str, dataset: str, build: Callable[[dict], nn.Module], train: Callable[..., object],
             config: dict | None = None, description: str = "") -> Recipe:
    """Add (or replace) the recipe for ``(family, dataset)``. The config must be JSON-serialisable."""
    config = dict(config or {})
    try:
        json.dumps(config, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"config: must be JSON-serialisable ({err})") from err
    r = Recipe(family, dataset, build, train, config, description)
    _REGISTRY[(family, dataset)] = r
    return r


def families(dataset: str = "eight_gaussians") -> list[str]:
    """The registered families for a data set (the headline keys for the eight Gaussians)."""
    return [f for (f, d) in _REGISTRY if d == dataset]


def recipe(family: str, dataset: str = "eight_gaussians") -> Recipe:
    """The recipe registered for (family, dataset); a clear error lists what exists."""
    if (family, dataset) not in _REGISTRY:
        known = sorted(f"{f} ({d})" for f, d in _REGISTRY)
        raise KeyError(f"family: no model {family!r} for dataset {dataset!r}; registered: {known}")
    return _REGISTRY[(family, dataset)]


def cache_dir() -> Path:
    """Where trained weights live: ``$GENLIB_CACHE`` or ``~/.cache/genlib``."""
    return Path(os.environ.get("GENLIB_CACHE", Path.home() / ".cache" / "genlib"))


def cache_key(family: str, dataset: str = "eight_gaussians", seed: int = 0) -> str:
    """A hash of everything the trained weights depend on: recipe config, seed, genlib and torch versions."""
    from . import __version__

    r = recipe(family, dataset)
    blob = json.dumps({"family": family, "dataset": dataset, "config": r.config, "seed": seed,
                       "genlib": __version__, "torch": str(torch.__version__)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(family: str, dataset: str = "eight_gaussians", seed: int = 0) -> Path:
    """The cache file of one trained model."""
    return cache_dir() / f"{family}-{dataset}-seed{seed}-{cache_key(family, dataset, seed)}.pt"


def clear_cache(family: str | None = None) -> int:
    """Delete cached weights (of one family, or all); return how many files were removed."""
    d = cache_dir()
    if not d.exists():
        return 0
    removed = 0
    for p in d.glob(f"{family}-*.pt" if family else "*.pt"):
        p.unlink()
        removed += 1
    return removed


def get(family: str, dataset: str = "eight_gaussians", seed: int = 0, device=None, *,
        retrain: bool = False, cache: bool = True, progress: bool = True) -> nn.Module:
    """The trained model of a family: loaded from the cache, or trained (and cached) on first use.

    The seed draws the training set and initialises the model. The model is returned in eval mode
    on `device` (default: ``genlib.device()``), with its training history as ``model.history``.
    """
    from . import device as best_device
    from . import seed as seed_all
    from .train import History

    r = recipe(family, dataset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    dev = best_device() if device is None else resolve_device(device)
    path = cache_path(family, dataset, seed)
    key = cache_key(family, dataset, seed)
    if cache and not retrain and path.exists():
        model = _load(r, path, key, dev)
        if model is not None:
            return model
    seed_all(seed)
    model = r.build(dict(r.config)).to(dev)
    history = r.train(model, dict(r.config), seed, dev, progress)
    model.eval()
    if isinstance(history, History):
        model.history = history
    if cache:
        _save(model, path, key, r, seed)
    return model


def _save(model: nn.Module, path: Path, key: str, r: Recipe, seed: int) -> None:
    from . import __version__

    path.parent.mkdir(parents=True, exist_ok=True)
    history = getattr(model, "history", None)
    payload = {
        "key": key,
        "meta": {"family": r.family, "dataset": r.dataset, "seed": seed, "genlib": __version__,
                 "torch": str(torch.__version__), "config": json.dumps(r.config, sort_keys=True)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": history.to_dict() if hasattr(history, "to_dict") else None,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load(r: Recipe, path: Path, key: str, device: torch.device) -> nn.Module | None:
    from .train import History

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise ValueError("the entry's key does not match this configuration")
        model = r.build(dict(r.config))
        model.load_state_dict(payload["state_dict"], strict=True)
        for t in payload["state_dict"].values():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError("the entry holds non-finite weights")
    except Exception as err:  # a corrupt or mismatched entry is retrained, never trusted
        warnings.warn(f"genlib.zoo: cache entry {path.name} is unusable ({err}); retraining", stacklevel=3)
        return None
    model.to(device).eval()
    if payload.get("history") is not None:
        model.history = History.from_dict(payload["history"])
    return model


# ------------------------------------------------------------------------------------------------
# Recipes. Each family's chapter registers its headline eight-Gaussians model below; builders import
# their model module lazily so that ``import genlib.zoo`` stays light.


def _digits_classifier_build(config: dict) -> nn.Module:
    from .metrics import DigitsClassifier

    return DigitsClassifier()


def _digits_classifier_train(model, config, seed, device, progress):
    from .metrics import _train_classifier

    return _train_classifier(model, seed, device, progress)


register("digits_classifier", "digits", _digits_classifier_build, _digits_classifier_train,
         {"arch": "cnn16-32-32-tanh64", "steps": 600, "augment": "shift1"},
         "The evaluation classifier for 8x8 digits (Frechet distance features, label entropy).")

