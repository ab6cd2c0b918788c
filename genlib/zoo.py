"""Named, trained models: one recipe per model and data set, used by the chapters, the Synthesis chapter, the
benchmarks and the tests alike, so that no number is copied by hand.

A recipe is data: the model to build and its arguments, the data it trains on, the training settings, and the
recipes it starts from. One builder and one trainer read every recipe. ``get(key)`` trains a model on first use
and caches its weights (and training history) on disk; later calls load them with
``torch.load(..., weights_only=True)``. The cache key hashes the recipe's content (less cosmetic keys), the seed,
the code that builds and trains it (a fingerprint of the genlib modules involved, blind to comments and
docstrings), the torch version and the keys of the recipes it starts from, so that changed code or a changed base
model invalidates its dependants. An entry carries a checksum of its tensors; a corrupt, damaged or mismatched
entry is retrained, never trusted. The cache lives in ``$GENLIB_CACHE`` (default ``~/.cache/genlib``); when it
cannot be written the model is kept in memory with a warning. The book's Reference page "How genlib is built"
has the whole contract.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ._util import check_positive_int, resolve_device, seeded

__all__ = ["Recipe", "HEADLINE", "SECOND_DATASET", "TRAINERS", "register", "variant", "get", "families", "models",
           "recipe", "cache_dir", "cache_path", "cache_key", "code_fingerprint", "clear_cache", "prefetch"]

# configuration keys that change no weight (a progress bar's label): left out of the cache key
COSMETIC = ("desc",)


@dataclass(frozen=True)
class Recipe:
    """How to build and train one named model.

    - ``model``: the factory, a name in :mod:`genlib.models` (``"flows.coupling_flow"``) or any dotted path
      (``"genlib.nn.MLP"``), or a callable; ``args``: its keyword arguments;
    - ``data``: what it trains on: ``{"set": name}`` with a 2-D set's name (2,000 points drawn by the seed),
      ``"digits"`` (the train split; ``"labels": True`` adds the labels,
      ``"augment": "shift1"`` adds the one-pixel shifts) or ``"names"`` (``"corpus"``'s training names as
      tokens); ``{"encode": key, "method": name}`` the digits encoded by a needed model; ``{"reflow": key,
      "pairs": n, "steps": k, "method": m}`` a flow-matching model's own couplings;
    - ``fit``: the trainer's settings; ``trainer``: a name in ``TRAINERS`` (``"fit"``, the one training
      loop; ``"em"``; ``"gan"``; ``"rejection"``);
    - ``needs``: the recipes it starts from, ``(key, dataset, seed)`` with seed None for this model's seed;
      ``init_from``: a needed key whose weights initialise the model (or its ``init_into`` submodule).
    """

    key: str
    dataset: str
    model: str | Callable[..., nn.Module]
    args: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    trainer: str = "fit"
    needs: tuple = ()
    init_from: str | None = None
    init_into: str | None = None
    description: str = ""

    @property
    def content(self) -> dict:
        """What the trained weights depend on, as JSON-ready data (the cache key hashes it)."""
        model = self.model if isinstance(self.model, str) else f"{self.model.__module__}.{self.model.__qualname__}"
        return {"model": model, "args": self.args, "data": self.data,
                "fit": {k: v for k, v in self.fit.items() if k not in COSMETIC}, "trainer": self.trainer,
                "init_from": self.init_from, "init_into": self.init_into}

    def build(self) -> nn.Module:
        """The untrained model: the factory called with ``args``."""
        return _factory(self.model)(**_plain(self.args))

    def __str__(self) -> str:
        c = self.content
        trainer = self.trainer if isinstance(self.trainer, str) else _name(self.trainer)
        lines = [f"{self.key} ({self.dataset}): {self.description}", f"  model    {c['model']}({_kw(self.args)})",
                 f"  data     {_kw(self.data)}", f"  {trainer:8s} {_kw(self.fit)}"]
        if self.needs:
            lines.append(f"  needs    {', '.join(f'{k} ({d})' for k, d, _ in self.needs)}"
                         + (f"; starts from {self.init_from}'s weights" if self.init_from else ""))
        return "\n".join(lines)


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


def _plain(args: dict) -> dict:
    """JSON lists back to tuples (shapes, betas) for the factories."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def _factory(model) -> Callable[..., nn.Module]:
    if callable(model):
        return model
    path = model if model.startswith("genlib.") else f"genlib.models.{model}"
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[tuple[str, str], Recipe] = {}


def register(key: str, dataset: str, model, args: dict | None = None, data: dict | None = None,
             fit: dict | None = None, *, trainer: str = "fit", needs=(), init_from: str | None = None,
             init_into: str | None = None, description: str = "") -> Recipe:
    """Add (or replace) the recipe for ``(key, dataset)``; see :class:`Recipe` for the fields. Everything but a
    callable ``model`` must be JSON-serialisable."""
    r = Recipe(key, dataset, model, dict(args or {}), dict(data or {"set": dataset}), dict(fit or {}), trainer,
               tuple(needs), init_from, init_into, description)
    if not (isinstance(model, str) or callable(model)):
        raise TypeError(f"model: expected a factory name or a callable, got {type(model).__name__}")
    if not (trainer in TRAINERS or callable(trainer)):
        raise ValueError(f"trainer: unknown value {trainer!r}; expected one of {sorted(TRAINERS)}")
    for need in r.needs:
        if not (isinstance(need, tuple) and len(need) == 3 and isinstance(need[0], str) and isinstance(need[1], str)
                and (need[2] is None or isinstance(need[2], int))):
            raise TypeError(f"needs: expected (key, dataset, seed or None) tuples, got {need!r}")
    if init_from is not None and init_from not in [k for k, _, _ in r.needs]:
        raise ValueError(f"init_from: {init_from!r} must be one of the recipes in needs")
    try:
        json.dumps(r.content if isinstance(trainer, str) else {**r.content, "trainer": None}, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"recipe {key!r}: args, data and fit must be JSON-serialisable ({err})") from err
    _REGISTRY[(key, dataset)] = r
    return r


def variant(key: str, new_key: str, dataset: str = "eight_gaussians", *, args: dict | None = None,
            data: dict | None = None, fit: dict | None = None, new_dataset: str | None = None,
            description: str = "") -> Recipe:
    """Register a variant of a recipe under a new key: the same recipe with some model arguments, data settings
    or training settings changed (``args={"t_power": 1.0}``), the same recipes to start from."""
    r = recipe(key, dataset)
    return register(new_key, new_dataset or dataset, r.model, {**r.args, **(args or {})},
                    {**r.data, **(data or {})}, {**r.fit, **(fit or {})}, trainer=r.trainer, needs=r.needs,
                    init_from=r.init_from, init_into=r.init_into, description=description or r.description)


# The headline families, in the book's order.
HEADLINE = ("gmm", "vae", "flow", "cnf", "gan", "diffusion", "flow_matching", "autoregressive")


def families(dataset: str = "eight_gaussians") -> list[str]:
    """The headline families registered for a data set, in the book's order (``gmm``, ``vae``, ``flow``, ...)."""
    return [f for f in HEADLINE if (f, dataset) in _REGISTRY]


def models(dataset: str | None = None) -> list[tuple[str, str]]:
    """Every registered (key, dataset) pair, headline or not (chapter variants, digits and text models)."""
    return [k for k in _REGISTRY if dataset is None or k[1] == dataset]


def recipe(key: str, dataset: str = "eight_gaussians") -> Recipe:
    """The recipe registered for (key, dataset); a clear error lists what exists."""
    if (key, dataset) not in _REGISTRY:
        known = sorted(f"{f} ({d})" for f, d in _REGISTRY)
        raise KeyError(f"family: no model {key!r} for dataset {dataset!r}; registered: {known}")
    return _REGISTRY[(key, dataset)]


def cache_dir() -> Path:
    """Where trained weights live: ``$GENLIB_CACHE`` (when set and not empty) or ``~/.cache/genlib``."""
    return Path(os.environ.get("GENLIB_CACHE") or Path.home() / ".cache" / "genlib")


def _source(module: str) -> str:
    """The source text of a module (a seam for tests)."""
    return inspect.getsource(importlib.import_module(module))


def _code_of(tree: ast.AST) -> str:
    """The code of a syntax tree without its docstrings: comments, layout and docstrings change nothing."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def _genlib_imports(module: str, tree: ast.AST) -> set[str]:
    """The genlib modules a module imports (at the top or inside functions)."""
    package = module if module.endswith("__init__") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("genlib.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("genlib"):
                continue
            package_base = hasattr(importlib.import_module(base), "__path__")
            for a in node.names:  # `from .. import solvers` names a module, `from ..nn import MLP` a member
                sub = f"{base}.{a.name}"
                found.add(sub if package_base and importlib.util.find_spec(sub) is not None else base)
    return {m for m in found if m != "genlib"}  # the package itself only re-exports


@cache
def _module_code(name: str) -> tuple[str, frozenset]:
    tree = ast.parse(_source(name))
    imports = frozenset(_genlib_imports(name, tree))
    return _code_of(tree), imports


@cache
def code_fingerprint(*modules: str) -> str:
    """A hash of the code of genlib modules and of every genlib module they import, blind to comments,
    docstrings and layout: what a trained model's weights depend on besides its recipe."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(_module_code(name)[1] - seen)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + _module_code(name)[0].encode())
    return h.hexdigest()[:20]


def _code_modules(r: Recipe) -> tuple[str, ...]:
    """The modules whose code builds and trains a recipe: its factory's, its trainer's, the data's and the zoo's
    training functions (a callable defined outside genlib is named by its qualified name only)."""
    factory = _factory(r.model)
    trainer = TRAINERS[r.trainer] if isinstance(r.trainer, str) else r.trainer
    mods = {"genlib.data", "genlib.train", factory.__module__}
    if r.trainer in ("em",):
        mods.add("genlib.models.gmm")
    if r.trainer in ("gan", "rejection"):
        mods.add("genlib.models.gan")
    if getattr(trainer, "__module__", "").startswith("genlib.") and trainer.__module__ != __name__:
        mods.add(trainer.__module__)
    return tuple(sorted(m for m in mods if m.startswith("genlib")))


def cache_key(key: str, dataset: str = "eight_gaussians", seed: int = 0, _seen: tuple = ()) -> str:
    """A hash of everything the trained weights depend on: the recipe's content (less cosmetic keys), the
    seed, the code that builds and trains it (:func:`code_fingerprint`; the zoo's own training functions too),
    the torch version, and the keys of the recipes it starts from."""
    if (key, dataset, seed) in _seen:
        raise ValueError(f"needs: recipe {key!r} ({dataset}) depends on itself through {list(_seen)}")
    r = recipe(key, dataset)
    deps = [cache_key(k, d, seed if s is None else s, (*_seen, (key, dataset, seed))) for k, d, s in r.needs]
    content = r.content if isinstance(r.trainer, str) else {**r.content, "trainer": _name(r.trainer)}
    blob = json.dumps({"key": key, "dataset": dataset, "recipe": content, "seed": seed, "needs": deps,
                       "code": code_fingerprint(*_code_modules(r)), "engine": _engine_fingerprint(),
                       "torch": str(torch.__version__)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@cache
def _engine_fingerprint() -> str:
    """The code of the zoo's functions that train a recipe (not its recipe table)."""
    code = "".join(_code_of(ast.parse(inspect.getsource(fn))) for fn in (get, _train, _data, *TRAINERS.values()))
    return hashlib.sha256(code.encode()).hexdigest()[:20]


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def cache_path(key: str, dataset: str = "eight_gaussians", seed: int = 0) -> Path:
    """The cache file of one trained model."""
    return cache_dir() / f"{key}-{dataset}-seed{seed}-{cache_key(key, dataset, seed)}.pt"


def clear_cache(key: str | None = None) -> int:
    """Delete cached weights (of one key, or all); return how many files were removed."""
    if key is not None and not (isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.+-]+", key) and key.strip(".")):
        raise ValueError(f"key: expected a recipe key (letters, digits, '_', '.', '+', '-'), got {key!r}")
    d = cache_dir()
    if not d.exists():
        return 0
    removed = 0
    for p in d.glob(f"{key}-*.pt" if key else "*.pt"):
        p.unlink()
        removed += 1
    return removed


def get(key: str, dataset: str = "eight_gaussians", seed: int = 0, device=None, *,
        retrain: bool = False, cache: bool = True, progress: bool = True) -> nn.Module:
    """The trained model of a recipe: loaded from the cache, or trained (and cached) on first use.

    The seed draws the training set and initialises the model. The model is returned in eval mode
    on `device` (default: ``genlib.device()``), with its training history as ``model.history``. Building
    and training run on a stream seeded by `seed`; the caller's random state is the same afterwards whether
    the model came from the cache or was just trained.
    """
    from . import device as best_device
    from .train import History

    r = recipe(key, dataset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    dev = best_device() if device is None else resolve_device(device)
    path = cache_path(key, dataset, seed)
    ckey = cache_key(key, dataset, seed)
    with _lock(path) if cache else contextlib.nullcontext():  # a process training this entry: wait for it
        if cache and not retrain and path.exists():
            with seeded(seed, dev):  # building the module to load into draws initial weights: not the caller's
                model = _load(r, path, ckey, dev)
            if model is not None:
                return model
        with seeded(seed, dev), torch.enable_grad():  # training works even inside the caller's torch.no_grad()
            model = r.build().to(dev)
            with _threads(model):
                history = _train(r, model, seed, dev, progress)
        model.eval()
        if isinstance(history, History):
            model.history = history
        if cache:
            _save(model, path, ckey, r, seed)
    return model


@contextlib.contextmanager
def _threads(model: nn.Module):
    """Convolutional models train on one CPU thread: their kernels sum in another order on two, so the weights
    would depend on the machine's thread count (fully connected models give the same bits on any count)."""
    before = torch.get_num_threads()
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on a cache entry while it is trained and saved, so that two processes that need the
    same model train it once (POSIX; elsewhere, or where the cache cannot be written, no lock)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held for the block)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ------------------------------------------------------------------------------------------------ training


def _fit(model, data, **settings):
    from .train import fit

    return fit(model, data, **settings)


def _em(model, data, **settings):
    from .models.gmm import fit

    return fit(model, data, **settings)


def _gan(model, data, *, dataset=None, **settings):
    from .models.gan import fit

    if settings.get("monitor_every"):  # a 2-D run is monitored on its own data set's modes
        settings["monitor_dataset"] = dataset
    return fit(model, data, **settings)


def _rejection(model, data, *, start=None, **settings):
    """Discriminator rejection sampling: the classifier is trained after the generator it starts from; the
    history is the generator's, with the classifier's loss and seconds added."""
    from .models.gan import fit_rejection
    from .train import History

    ratio = fit_rejection(model, data, **settings)
    history = History.from_dict(start.history.to_dict())
    history.extra["ratio_loss"] = list(ratio.loss)
    history.extra["generator_seconds"] = [history.seconds]
    history.seconds += ratio.seconds
    return history


# trainer name -> function(model, data, *, seed, progress, desc, **fit settings) returning a History
TRAINERS: dict[str, Callable] = {"fit": _fit, "em": _em, "gan": _gan, "rejection": _rejection}


def _train(r: Recipe, model: nn.Module, seed: int, device: torch.device, progress: bool):
    """The one trainer: the recipes it starts from, its data, its initial weights, then its trainer."""
    starts = {k: get(k, d, seed if s is None else s, device=device, progress=progress) for k, d, s in r.needs}
    x = _data(r.data, seed, device, starts)
    if r.init_from is not None:
        target = model if r.init_into is None else model.get_submodule(r.init_into)
        target.load_state_dict(starts[r.init_from].state_dict())
    settings = dict(r.fit)
    if settings.pop("standardize", False):  # latent codes: one scalar shift and scale, buffers of the model
        model.standardize(x)
    fn = TRAINERS[r.trainer] if isinstance(r.trainer, str) else r.trainer
    extra = ({"start": starts[r.init_from]} if r.trainer == "rejection"
             else {"dataset": r.data.get("set")} if r.trainer == "gan" else {})
    return fn(model, x, seed=seed, progress=progress, desc=settings.pop("desc", f"{r.key} ({r.dataset})"),
              **extra, **_plain(settings))


def _data(spec: dict, seed: int, device: torch.device, starts: dict):
    """The training data a recipe's ``data`` names (see :class:`Recipe`)."""
    from . import data as d

    if "reflow" in spec:
        from .models.flow_matching import reflow_pairs

        return reflow_pairs(starts[spec["reflow"]], spec["pairs"], steps=spec["steps"], method=spec["method"],
                            generator=torch.Generator().manual_seed(seed + 1))
    if "encode" in spec:
        encoder = starts[spec["encode"]]
        with torch.no_grad():
            return getattr(encoder, spec.get("method", "encode"))(d.digits(device=device).train_x).detach()
    name = spec["set"]
    if name == "digits":
        split = d.digits(device=device)
        if spec.get("augment") == "shift1":
            return d.shift_augment(split.train_x, split.train_y)
        return (split.train_x, split.train_y) if spec.get("labels") else split.train_x
    if name == "names":
        corpus = d.names_corpus(spec["corpus"])
        return corpus.tokenizer.batch(corpus.train, device=device)
    return d.toy(name, spec.get("n", 2000), seed=seed, device=device)


# ------------------------------------------------------------------------------------------------- prefetch


def prefetch(*names: str | tuple[str, str], seed: int = 0, threads: int | None = None,
             progress: bool = True) -> dict[str, float]:
    """Train the named models that are not cached yet side by side, one worker process per model and CPU
    thread, so a notebook's first run uses every core; later ``get`` calls load them from the cache.

    Each name is a key (the eight Gaussians) or ``(key, dataset)``; list the longest training first. Small
    networks gain little from a second thread per step, but two models trained at once finish far sooner.
    Training is deterministic and, for the fully connected networks tested, gives the same bits with one thread
    as with two (convolutions may differ in the last bits). Does nothing on CUDA (``get`` trains on the GPU as
    usual), with a single thread (``threads``, default ``torch.get_num_threads()``) or when fewer than two
    models are missing; recipes built by a notebook's own functions are left to ``get``. Returns the training
    seconds of the models it trained.
    """
    import concurrent.futures
    import multiprocessing

    from . import device as best_device

    wanted = []
    for name in names:
        key, dataset = (name, "eight_gaussians") if isinstance(name, str) else tuple(name)
        r = recipe(key, dataset)  # a clear error for unknown names
        # a worker process imports the recipes' factories by name: a notebook's own functions cannot travel
        chain = _with_needs(r, seed)
        portable = all(isinstance(c.model, str) and isinstance(c.trainer, str) for c, _ in chain)
        if portable and not cache_path(key, dataset, seed).exists():
            wanted.append(chain)
    threads = torch.get_num_threads() if threads is None else check_positive_int("threads", threads)
    workers = min(threads, len(wanted))
    if best_device().type != "cpu" or workers < 2:
        return {}
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: safe from a kernel holding torch threads
    seconds = {}
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_prefetch_init,
                                                initargs=(max(1, threads // workers),)) as pool:
        jobs = {pool.submit(_prefetch_one, chain, seed): f"{chain[0][0].key} ({chain[0][0].dataset})"
                for chain in wanted}
        for job in concurrent.futures.as_completed(jobs):
            seconds[jobs[job]] = job.result()  # a worker's error is raised here
            if progress:
                print(f"trained {jobs[job]} in {seconds[jobs[job]]:.0f} s ({len(seconds)}/{len(jobs)}, "
                      f"{workers} at a time)", flush=True)
    return seconds


def _prefetch_init(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["GENLIB_DEVICE"] = "cpu"


def _with_needs(r: Recipe, seed: int) -> list[tuple[Recipe, int]]:
    """A recipe and, recursively, the recipes it starts from, with their seeds."""
    out = [(r, seed)]
    for k, d, s in r.needs:
        out += _with_needs(recipe(k, d), seed if s is None else s)
    return out


def _prefetch_one(chain: list[tuple[Recipe, int]], seed: int) -> float:
    for c, _ in chain:  # recipes registered after import (a test, a chapter variant) travel with the job
        if _REGISTRY.get((c.key, c.dataset)) != c:
            _REGISTRY[(c.key, c.dataset)] = c
    r = chain[0][0]
    model = get(r.key, dataset=r.dataset, seed=seed, device="cpu", progress=False)
    return float(getattr(getattr(model, "history", None), "seconds", float("nan")))


# ---------------------------------------------------------------------------------------------------- cache


def _checksum(state: dict, history) -> str:
    """A hash of every tensor's name, dtype, shape and bytes, and of the history."""
    h = hashlib.sha256(json.dumps(history, sort_keys=True).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_UNWRITABLE: set[str] = set()


def _save(model: nn.Module, path: Path, key: str, r: Recipe, seed: int) -> None:
    from . import __version__

    history = getattr(model, "history", None)
    history = history.to_dict() if hasattr(history, "to_dict") else None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = r.content if isinstance(r.trainer, str) else {**r.content, "trainer": _name(r.trainer)}
    payload = {
        "key": key,
        "meta": {"key": r.key, "dataset": r.dataset, "seed": seed, "genlib": __version__,
                 "torch": str(torch.__version__), "recipe": json.dumps(content, sort_keys=True)},
        "state_dict": state, "history": history, "checksum": _checksum(state, history),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        tmp.replace(path)
    except Exception as err:  # an unwritable cache loses the entry, not the trained model
        with contextlib.suppress(OSError):
            tmp.unlink()
        if str(path.parent) not in _UNWRITABLE:
            _UNWRITABLE.add(str(path.parent))
            warnings.warn(f"genlib.zoo: cannot write the model cache at {path} ({type(err).__name__}: {err}); "
                          "trained models are kept in memory only (set GENLIB_CACHE to a writable folder)",
                          stacklevel=3)


def _load(r: Recipe, path: Path, key: str, device: torch.device) -> nn.Module | None:
    from .train import History

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise ValueError("the entry's key does not match this configuration")
        if payload.get("checksum") != _checksum(payload["state_dict"], payload.get("history")):
            raise ValueError("its checksum does not match its contents (the file is damaged)")
        model = r.build()
        model.load_state_dict(payload["state_dict"], strict=True)
        for t in payload["state_dict"].values():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError("the entry holds non-finite weights")
        history = History.from_dict(payload["history"]) if payload.get("history") is not None else None
    except Exception as err:  # a corrupt, damaged or mismatched entry is retrained, never trusted
        warnings.warn(f"genlib.zoo: cache entry {path.name} is unusable ({err}); retraining", stacklevel=3)
        return None
    model.to(device).eval()
    if history is not None:
        model.history = history
    return model


# ==================================================================================================== recipes
# Each chapter's models. A 2-D recipe trains on 2,000 points of its data set drawn by the seed; the Synthesis
# chapter's second data set repeats every headline recipe on two moons (the end of this file).

register("digits_classifier", "digits", "genlib.nn.DigitsClassifier", {},
         {"set": "digits", "augment": "shift1"},
         {"steps": 600, "batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4, "optimizer": "adamw",
          "schedule": "cosine"},
         description="The evaluation classifier for 8x8 digits (Frechet distance features, label entropy).")

# --- Gaussian mixtures (book/gmm): EM from k-means++, the lecture notes' K = 10, and the true K = 8 as the
# protocol's parametric oracle
_GMM_FIT = {"steps": 500, "tol": 1e-6, "init": "kmeans++", "n_init": 1}
register("gmm", "eight_gaussians", "gmm.GaussianMixture", {"n_components": 10, "dim": 2, "reg_covar": 1e-6},
         fit=_GMM_FIT, trainer="em",
         description="Gaussian mixture, K = 10 full covariances, EM from k-means++ (the lecture notes' setting).")
register("gmm_k8", "eight_gaussians", "gmm.GaussianMixture", {"n_components": 8, "dim": 2, "reg_covar": 1e-6},
         fit={**_GMM_FIT, "n_init": 5}, trainer="em",
         description="Gaussian mixture with the true K = 8, best of 5 EM starts: the protocol's parametric oracle.")

# --- autoencoders, VAEs and the VQ-VAE (book/vae). The headline VAE trains on the importance-weighted bound with
# k = 8 (and the same KL warm-up, applied inside the weights): binned KL 0.34 with the ELBO, 0.054 with it (seed 0).
_VAE8 = {"data_shape": [2], "latent_dim": 2, "hidden": 128, "depth": 3, "activation": "silu",
         "likelihood": "gaussian", "beta": 1.0, "decoder_std": None, "min_logvar": -9.0, "train_k": 1,
         "kl_warmup": 1000}
_VAE8_FIT = {"steps": 3000, "batch_size": 128, "lr": 2e-3, "schedule": "cosine"}
register("vae", "eight_gaussians", "vae.VAE", {**_VAE8, "train_k": 8}, fit={**_VAE8_FIT, "steps": 6000},
         description="VAE with a 2-D latent and learned decoder variance on the eight Gaussians, trained on the "
         "importance-weighted bound (k = 8) with KL warm-up.")
register("vae_elbo", "eight_gaussians", "vae.VAE", _VAE8, fit=_VAE8_FIT,
         description="The same VAE trained on the ELBO (KL warm-up), for comparison.")
register("vae_beta_0.3", "eight_gaussians", "vae.VAE", {**_VAE8, "beta": 0.3}, fit=_VAE8_FIT,
         description="The ELBO-trained VAE with beta = 0.3 (holes in the aggregate posterior).")
register("vae_beta_3", "eight_gaussians", "vae.VAE", {**_VAE8, "beta": 3.0}, fit=_VAE8_FIT,
         description="The ELBO-trained VAE with beta = 3 (overlapping posteriors, blur).")
_VAE_DIGITS = {"data_shape": [1, 8, 8], "latent_dim": 8, "hidden": 256, "depth": 2, "activation": "silu",
               "likelihood": "categorical", "beta": 1.0, "decoder_std": None, "min_logvar": -9.0, "train_k": 1,
               "kl_warmup": 500}
_DIGITS_FIT = {"steps": 2000, "batch_size": 128, "lr": 2e-3, "schedule": "cosine"}
register("vae", "digits", "vae.VAE", _VAE_DIGITS, fit=_DIGITS_FIT,
         description="VAE on 8x8 digits: 8-D latent, categorical decoder over the 17 levels; encode/decode/latent_dim.")
register("vae_2d", "digits", "vae.VAE", {**_VAE_DIGITS, "latent_dim": 2, "hidden": 128},
         fit={**_DIGITS_FIT, "steps": 1500},
         description="VAE on 8x8 digits with a 2-D latent, for the latent map and the latent-space explorer.")
_AE = {"data_shape": [1, 8, 8], "levels": 17, "latent_dim": 2, "hidden": 128, "depth": 2, "noise_std": 0.0}
register("autoencoder", "digits", "vae.Autoencoder", _AE, fit={**_DIGITS_FIT, "steps": 1000},
         description="Deterministic autoencoder on 8x8 digits with a 2-D code (its codes cannot be sampled).")
register("dae", "digits", "vae.Autoencoder", {**_AE, "latent_dim": 8, "noise_std": 0.3},
         fit={**_DIGITS_FIT, "steps": 1000},
         description="Denoising autoencoder on 8x8 digits: input noise of std 0.3 (on the [0, 1] pixel scale), "
         "8-D code.")
register("vqvae", "digits", "vae.VQVAE",
         {"codebook_size": 32, "code_dim": 16, "channels": 32, "beta": 0.25, "data_init": True},
         fit={**_DIGITS_FIT, "steps": 1000},
         description="VQ-VAE on 8x8 digits: 4x4 grid of codes from a 32-entry codebook; sampling needs a prior.")

# --- GANs (book/gan). Eight Gaussians: MLP generator and critic; digits: DCGAN-style conv nets. The variants, the
# fragile minimax setting that collapses, and the short runs of the chapter's sensitivity grid and explorer (data
# set "eight_gaussians_sweep") are registered too, so that the chapter's warm build only loads. The headline `gan`
# is the best variant's generator (the zoo's model of that variant, same data and seed) with discriminator
# rejection sampling by a density-ratio classifier trained after it.
_GAN_ARGS = {"latent_dim": 8, "hidden": 64, "depth": 3, "activation": "leaky_relu", "loss": "ns", "clip": 0.01,
             "gp_weight": 0.1}
_GAN_FIT = {"steps": 1500, "batch_size": 512, "critic_steps": 1, "lr": 1e-3, "lr_critic": None,
            "betas": [0.5, 0.999], "schedule": "cosine", "ema": 0.995, "monitor_every": 100}
_GAN_VARIANTS = {  # key: (name, model arguments, fit settings)
    "gan_minimax": ("minimax", {"loss": "minimax"}, {}),
    "gan_ns": ("non-saturating", {"loss": "ns"}, {}),
    "wgan_clip": ("WGAN (clipping)", {"loss": "wgan_clip"}, {"critic_steps": 2, "lr": 5e-4, "betas": [0.5, 0.9]}),
    "wgan_gp": ("WGAN-GP", {"loss": "wgan_gp"}, {"critic_steps": 2, "betas": [0.5, 0.9]}),
}
_GAN_BEST = "wgan_gp"
for _key, (_label, _vargs, _vfit) in _GAN_VARIANTS.items():
    register(_key, "eight_gaussians", "gan.mlp_gan", {**_GAN_ARGS, **_vargs}, fit={**_GAN_FIT, **_vfit},
             trainer="gan", description=f"GAN on the eight Gaussians, {_label} loss (MLPs).")
_GAN_REJECTION = {"hidden": 128, "depth": 3, "quantile": 0.99}
_GAN_REJECTION_FIT = {"steps": 4000, "batch_size": 256, "lr": 1e-3, "ema": 0.99}
register("gan", "eight_gaussians", "gan.mlp_rejection_sampler",
         {**_GAN_REJECTION, "gan": {**_GAN_ARGS, **_GAN_VARIANTS[_GAN_BEST][1]}}, fit=_GAN_REJECTION_FIT,
         trainer="rejection", needs=((_GAN_BEST, "eight_gaussians", None),), init_from=_GAN_BEST, init_into="gan",
         description=f"The GAN chapter's best variant on the eight Gaussians: the {_GAN_VARIANTS[_GAN_BEST][0]} "
         f"generator (`{_GAN_BEST}`) with discriminator rejection sampling (a density-ratio classifier trained "
         "after it).")
register("gan_collapse", "eight_gaussians", "gan.mlp_gan", {**_GAN_ARGS, "loss": "minimax", "latent_dim": 2},
         fit={**_GAN_FIT, "lr": 5e-3, "lr_critic": 2e-4, "batch_size": 64, "schedule": "constant", "ema": None},
         trainer="gan", description="The vanilla minimax GAN in a fragile setting that collapses.")
_GAN_GRID = {**_GAN_FIT, "critic_steps": 1, "steps": 300, "batch_size": 256, "betas": [0.5, 0.9],
             "schedule": "constant", "ema": None, "monitor_every": 50}
for _loss in ("ns", "wgan_gp"):  # a small sensitivity grid: two games, one critic step, two learning rates
    for _lr in (5e-4, 2e-3):
        register(f"gan_grid_{_loss}_k1_lr{_lr:g}", "eight_gaussians_sweep", "gan.mlp_gan",
                 {**_GAN_ARGS, "loss": _loss, "hidden": 32}, {"set": "eight_gaussians"}, {**_GAN_GRID, "lr": _lr},
                 trainer="gan",
                 description="A short run of the GAN chapter's explorer grid (loss, critic steps, learning rate).")
for _b1 in (0.0, 0.9):  # with the grid's ns, k = 1, lr = 2e-3 run (beta1 = 0.5): the sensitivity to beta1
    register(f"gan_grid_ns_k1_lr0.002_b{_b1:g}", "eight_gaussians_sweep", "gan.mlp_gan",
             {**_GAN_ARGS, "loss": "ns", "hidden": 32}, {"set": "eight_gaussians"},
             {**_GAN_GRID, "lr": 2e-3, "betas": [_b1, 0.9]}, trainer="gan",
             description="A short run of the GAN chapter's sensitivity to Adam's beta1.")
_DCGAN = {"latent_dim": 16, "channels": 32, "loss": "ns", "n_classes": 0, "gp_weight": 10.0}
_DCGAN_FIT = {"steps": 1200, "batch_size": 64, "critic_steps": 1, "lr": 5e-4, "lr_critic": None,
              "betas": [0.5, 0.999], "schedule": "constant", "ema": None}
register("dcgan_ns", "digits", "gan.dcgan", _DCGAN, fit=_DCGAN_FIT, trainer="gan",
         description="A small DCGAN-style GAN on the 8x8 digits with the non-saturating loss (it collapses onto a "
         "single image).")
# the chapter's unconditional digits model: the same networks as a WGAN-GP, which draws all ten digits
register("dcgan", "digits", "gan.dcgan", {**_DCGAN, "loss": "wgan_gp"},
         fit={**_DCGAN_FIT, "critic_steps": 2, "betas": [0.5, 0.9], "steps": 1000, "ema": 0.99}, trainer="gan",
         description="A small DCGAN-style GAN on the 8x8 digits trained as a WGAN-GP (gradient penalty 10, two "
         "critic steps).")
# the conditional GAN returns its generator's weight average (ema 0.99): the last iterate's accuracy moved between
# 84% and 93% with the machine's thread count, the average's stays near 98% (0.999 averages in too much of the
# early, untrained generator over 1,200 steps and fails)
register("cgan", "digits", "gan.dcgan", {**_DCGAN, "n_classes": 10}, {"set": "digits", "labels": True},
         {**_DCGAN_FIT, "ema": 0.99}, trainer="gan",
         description="A class-conditional DCGAN-style GAN on the 8x8 digits (labels as one-hot inputs and critic "
         "planes).")

# --- flows (book/flows). The headline `flow`: four blocks of rational-quadratic spline couplings (Durkan et al.
# 2019) of 64-unit networks, trained on minibatches jittered by N(0, 0.1^2) (kernel smoothing of the 2,000
# points: without it the held-out binned KL was 0.068 instead of 0.031, seed 0). The RealNVP flow with affine
# couplings (`flow_affine`, with the chapter's depth study), the CNF and the digits flow.
_FLOW_AFFINE = {"dim": 2, "n_layers": 12, "hidden": 128, "depth": 2, "mixing": "lu", "coupling": "affine", "bins": 8,
                "bound": 4.0}
_FLOW_FIT = {"steps": 2500, "batch_size": 512, "lr": 3e-3, "schedule": "cosine"}
register("flow", "eight_gaussians", "flows.coupling_flow",
         {**_FLOW_AFFINE, "n_layers": 4, "hidden": 64, "coupling": "spline"}, fit={**_FLOW_FIT, "jitter": 0.1},
         description="Coupling flow with rational-quadratic spline couplings (actnorm, LU mixing), maximum "
         "likelihood on jittered minibatches.")
register("flow_affine", "eight_gaussians", "flows.coupling_flow", _FLOW_AFFINE, fit=_FLOW_FIT,
         description="RealNVP coupling flow (actnorm, LU mixing, tanh-bounded affine log-scales), maximum likelihood.")
for _depth in (2, 4, 8):  # the depth study of the chapter (`flow_affine` is its deepest point)
    register("flow_affine", f"eight_gaussians_depth{_depth}", "flows.coupling_flow",
             {**_FLOW_AFFINE, "n_layers": _depth}, {"set": "eight_gaussians"}, {**_FLOW_FIT, "steps": 1500},
             description=f"The affine coupling flow with {_depth} blocks on the eight Gaussians (the depth study).")
# RK4 with 5 steps (20 evaluations per solve) and RNODE's kinetic-energy penalty: the penalty keeps the paths
# straight enough for the coarse solver to be accurate (held-out NLL agrees with a 64-step RK4 solve); without
# it, maximum likelihood through a 4-step solver exploited the solver's error (NLL below the entropy).
register("cnf", "eight_gaussians", "flows.CNF",
         {"dim": 2, "hidden": 64, "depth": 3, "time_embed_dim": 8, "time_scale": 0.01, "steps": 5, "method": "rk4",
          "kinetic": 0.05}, fit={"steps": 800, "batch_size": 256, "lr": 5e-3, "schedule": "cosine"},
         description="Continuous normalizing flow: MLP field with time embedding, 5 RK4 steps, exact divergence, "
         "maximum likelihood through the solver with a kinetic-energy penalty (RNODE).")
register("flow", "digits", "flows.digits_flow", {"n_layers": 6, "hidden": 192, "depth": 2, "alpha": 0.05},
         {"set": "digits"},
         {"steps": 1500, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-5, "optimizer": "adamw",
          "schedule": "cosine"},
         description="Coupling flow on uniformly dequantised 8x8 digits (logit preprocessing, checkerboard masks, "
         "LU mixing).")

# --- autoregressive models (book/autoregressive). The headline model: a binned autoregressive density on the eight
# Gaussians (90 bins on [-4.5, 4.5] plus exponential tails), trained by maximum likelihood on the training set
# jittered by N(0, 0.1^2) noise at every step (a kernel smoothing of the empirical distribution that keeps the
# 92-way conditionals from overfitting). Chapter models: a PixelCNN on digits, character transformers on the
# surnames (the headline one and smaller ones for the scaling plot, with the same training budget) and a prior over
# the VQ-VAE's codes.
register("autoregressive", "eight_gaussians", "autoregressive.BinnedAutoregressive",
         {"dim": 2, "bins": 90, "lim": 4.5, "hidden": 64, "depth": 3, "tail_scale": 0.5},
         fit={"steps": 1500, "batch_size": 256, "lr": 1e-2, "schedule": "cosine", "jitter": 0.1},
         description="Binned autoregressive density p(x1) p(x2 | x1): 90 bins + exponential tails per coordinate, "
         "MLP conditioner, uniform within bins (exact log_prob), inverse-CDF sampling; trained with N(0, 0.1^2) "
         "jitter.")
register("pixelcnn", "digits", "autoregressive.PixelCNN",
         {"levels": 17, "channels": 32, "blocks": 3, "first_kernel": 5, "kernel_size": 3},
         fit={"steps": 800, "batch_size": 64, "lr": 3e-3, "schedule": "cosine"},
         description="PixelCNN on 8x8 digits: type-A 5x5 then residual type-B 3x3 masked convolutions, 17-way "
         "softmax per pixel.")
_CHAR = {"corpus": "surnames", "block_size": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}
_CHAR_FIT = {"steps": 1000, "batch_size": 128, "lr": 5e-3, "warmup": 100, "schedule": "cosine"}
CHAR_SCALING_WIDTHS = (8, 16, 32)  # the scaling study: the same recipe at smaller widths (the headline is the last)
register("char_transformer", "names", "autoregressive.char_transformer", _CHAR,
         {"set": "names", "corpus": "surnames"}, _CHAR_FIT,
         description="Character-level causal transformer on the census surnames (d_model 32, 2 layers, 4 heads).")
for _width in CHAR_SCALING_WIDTHS[:-1]:
    register(f"char_transformer_d{_width}", "names", "autoregressive.char_transformer",
             {**_CHAR, "d_model": _width, "n_heads": max(1, _width // 8)}, {"set": "names", "corpus": "surnames"},
             _CHAR_FIT, description=f"The names transformer at width {_width} (the scaling study).")
# 1,000 training grids only: a 2-layer d_model-64 prior memorises them (train 9 nats, test 60 nats per grid,
# worse than uniform); this 1-layer d_model-32 one generalises (test about 36 nats, uniform 55.5).
register("code_prior", "digits", "autoregressive.CodePrior",
         {"codebook_size": 32, "code_shape": [4, 4], "d_model": 32, "n_layers": 1, "n_heads": 2},
         {"encode": "vqvae", "method": "encode_indices"},
         {"steps": 400, "batch_size": 128, "lr": 3e-3, "warmup": 50, "schedule": "cosine"},
         needs=(("vqvae", "digits", None),),
         description="Causal transformer prior over the VQ-VAE's 4x4 code grids (raster order); "
         "VQVAE.sample(n, prior=...).")

# --- diffusion (book/diffusion). The headline model: 128x3 (a sweep of widths, batches, steps and schedules: the
# linear VP schedule serves the deterministic samplers far better than the cosine one at equal reverse-SDE quality).
# The probability-flow ODE is most sensitive to the score at small t (the exact score on t < 0.15 alone takes its
# binned KL from 0.057 to 0.019), so the time embedding resolves small t (time_scale 100, was 20), the training
# times lean towards the data (t_power 1.5) and the budget is 12000 steps of 512 (was 6000 of 1024: 1.4x the
# compute). Seed 0, 100k samples: Heun at 19 NFE 0.074 -> 0.046, reverse SDE 0.0335 -> 0.0236.
_DIFFUSION_2D = {"dim": 2, "hidden": 64, "depth": 3, "time_embed_dim": 32, "time_scale": 20.0, "prediction": "eps",
                 "weighting": "eps", "data_std": 2.0, "sampler": "sde", "steps": 100, "spacing": "uniform"}
_DIFFUSION_FIT = {"steps": 5000, "batch_size": 512, "lr": 3e-3, "schedule": "cosine"}
register("diffusion", "eight_gaussians", "diffusion.diffusion_model",
         {**_DIFFUSION_2D, "hidden": 128, "time_scale": 100.0, "t_power": 1.5, "schedule": "vp_linear"},
         fit={**_DIFFUSION_FIT, "steps": 12000},
         description="DDPM / VP-SDE (linear betas), noise prediction, sampled by the reverse SDE (Euler-Maruyama).")
register("diffusion_ve", "eight_gaussians", "diffusion.diffusion_model",
         {**_DIFFUSION_2D, "schedule": "ve", "schedule_args": {"sigma_min": 0.01, "sigma_max": 10.0}},
         fit=_DIFFUSION_FIT,
         description="Score matching with Langevin dynamics / VE-SDE (geometric sigmas), sampled by the reverse SDE.")
register("diffusion", "digits", "diffusion.diffusion_model",
         {**_DIFFUSION_2D, "dim": 64, "hidden": 256, "data_std": 0.6, "schedule": "vp_cosine", "sampler": "ddpm",
          "data_shape": [1, 8, 8], "shift": 8.0, "scale": 8.0, "clamp": [0.0, 16.0]},
         fit={**_DIFFUSION_FIT, "steps": 4000, "batch_size": 128, "lr": 2e-3},
         description="A time-conditioned MLP denoiser on the 8x8 digits (the model maps 0..16 to [-1, 1]), VP cosine "
         "schedule, DDPM sampling.")

# --- flow matching (book/flow_matching): the data, the source, the path, the coupling and the training budget.
_FM = {"dim": 2, "hidden": 128, "depth": 3, "time_embed_dim": 32, "time_scale": 1000.0, "scale": 2.0,
       "path": "cond_ot", "sigma_min": 1e-4, "coupling": "independent", "reg": 0.05, "source": "gaussian"}
_FM_FIT = {"steps": 2000, "batch_size": 512, "lr": 3e-3, "schedule": "cosine"}
register("flow_matching", "eight_gaussians", "flow_matching.FlowMatching", _FM,
         fit={**_FM_FIT, "steps": 4000, "batch_size": 2048, "schedule": "constant", "ema": 0.999},
         description="Conditional flow matching (conditional OT path, independent coupling) on the eight Gaussians.")
register("ot_cfm", "eight_gaussians", "flow_matching.FlowMatching", {**_FM, "coupling": "ot"},
         fit={**_FM_FIT, "batch_size": 256},
         description="Flow matching with exact minibatch optimal-transport couplings (ot.emd) on the eight Gaussians.")
register("reflow", "eight_gaussians", "flow_matching.FlowMatching",
         {**_FM, "path": "rectified", "sigma_min": 0.0, "t_power": 3.0},
         {"reflow": "flow_matching", "pairs": 100_000, "steps": 10, "method": "rk4"},
         {**_FM_FIT, "steps": 3000, "batch_size": 2048, "schedule": "constant", "ema": 0.999},
         needs=(("flow_matching", "eight_gaussians", None),), init_from="flow_matching",
         description="Reflow: the flow_matching model rectified once on its own couplings (straight path, training "
         "times t = u^3, leaning to the source).")
register("ot_cfm", "two_moons", "flow_matching.FlowMatching",
         {**_FM, "coupling": "ot", "source": "eight_gaussians", "scale": 1.0},
         fit={**_FM_FIT, "batch_size": 256, "steps": 1000},
         description="Flow matching from the eight Gaussians (source) to two moons with minibatch OT couplings.")
register("flow_matching", "digits", "flow_matching.FlowMatching",
         {**_FM, "dim": 64, "shape": [1, 8, 8], "shift": 8.0, "scale": 8.0, "clamp": [0.0, 16.0], "hidden": 512,
          "time_embed_dim": 64}, fit={**_FM_FIT, "steps": 3000, "batch_size": 128, "lr": 1e-3},
         description="Flow matching in pixel space on the 8x8 digits (MLP velocity, 64-d).")
register("flow_matching_latent", "digits", "flow_matching.latent_flow_matching",
         {**_FM, "dim": 8, "hidden": 256, "vae": _VAE_DIGITS}, {"set": "digits"},
         {**_FM_FIT, "steps": 3000, "batch_size": 128, "lr": 1e-3, "standardize": True},
         needs=(("vae", "digits", 0),), init_from="vae", init_into="autoencoder",
         description="Flow matching in the latent space of the VAE chapter's digits model (trained on its codes, "
         "samples decoded to images).")

# --- the Synthesis chapter's second data set: every headline recipe again, unchanged but for its data (and the
# recipes it starts from), trained on two moons instead of the eight Gaussians.
SECOND_DATASET = "two_moons"
for _key in (*HEADLINE, _GAN_BEST):
    _r = _REGISTRY[(_key, "eight_gaussians")]
    register(_key, SECOND_DATASET, _r.model, _r.args, {**_r.data, "set": SECOND_DATASET}, _r.fit,
             trainer=_r.trainer, init_from=_r.init_from, init_into=_r.init_into,
             needs=tuple((k, SECOND_DATASET if d == "eight_gaussians" else d, s) for k, d, s in _r.needs),
             description=f"{_r.description} Trained on two moons (the Synthesis chapter's second data set).")
