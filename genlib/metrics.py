"""The book's evaluation protocol (the Foundations chapter): binned KL against the true eight Gaussians with its
reference points (estimator floor, parametric oracle, KDE baseline), NLL, exact W2, MMD, mode
statistics, sampling cost, and the digits classifier's Frechet distance and label entropy.

Every 2-D function takes ``dataset``: the eight Gaussians (the default) or another set whose exact law
:func:`genlib.data.toy_density` knows (two moons, the Synthesis chapter's second data set)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from . import data as _data
from ._util import (
    check_positive_float,
    check_positive_int,
    check_tensor,
    evaluating,
    module_device,
    nats_to_bits_per_dim,
    resolve_device,
)
from .nn import DigitsClassifier

__all__ = [
    "count_evaluations",
    "benchmark",
    "NOTES_TABLE2",
    "BENCHMARK_FIELDS",
    "summarise_seeds",
    "comparison_table",
    "GRID_BINS",
    "GRID_LIM",
    "KL_EPS",
    "grid_edges",
    "histogram2d",
    "binned_kl",
    "binned_kl_floor",
    "kde_baseline",
    "kde_binned_kl",
    "parametric_oracle",
    "nll",
    "true_entropy",
    "nats_to_bits_per_dim",
    "w2",
    "w2_reference",
    "mmd",
    "mode_stats",
    "mode_distance",
    "sampling_cost",
    "evaluate",
    "DigitsClassifier",
    "digits_classifier",
    "frechet_distance",
    "label_entropy",
    "predicted_labels",
    "reference_points",
    "protocol_table",
]

GRID_BINS = 40
GRID_LIM = 4.5
KL_EPS = 1e-6
PROTOCOL_SAMPLES = 100_000
# Seeds of the protocol's fresh draws, kept away from the training seeds (0, 1, 2, ...).
EVAL_SEED = 10_000


def grid_edges(bins: int = GRID_BINS, lim: float = GRID_LIM) -> torch.Tensor:
    """The bins + 1 edges of the protocol's grid on [-lim, lim] (float64, CPU)."""
    return torch.linspace(-lim, lim, bins + 1, dtype=torch.float64)


def histogram2d(samples: torch.Tensor, bins: int = GRID_BINS, lim: float = GRID_LIM) -> torch.Tensor:
    """Fraction of all samples in each cell of the grid (samples outside the grid are lost mass)."""
    samples = check_tensor("samples", samples, ndim=2, last_dim=2)
    x = samples.detach().to(device="cpu", dtype=torch.float64)
    width = 2 * lim / bins
    idx = torch.floor((x + lim) / width).long()
    inside = ((idx >= 0) & (idx < bins)).all(1)
    idx = idx[inside]
    flat = idx[:, 0] * bins + idx[:, 1]
    counts = torch.bincount(flat, minlength=bins * bins).to(torch.float64)
    return counts.view(bins, bins) / x.shape[0]


def _kl_of_masses(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL over the grid cells plus one cell for everything outside the grid (so lost mass is penalised)."""
    p = torch.cat([p.flatten(), (1 - p.sum()).clamp_min(0).reshape(1)])
    q = torch.cat([q.flatten(), (1 - q.sum()).clamp_min(0).reshape(1)])
    p = p + KL_EPS
    q = q + KL_EPS
    p = p / p.sum()
    q = q / q.sum()
    return float((p * (p / q).log()).sum())


DEFAULT_DATASET = "eight_gaussians"


@lru_cache(maxsize=8)
def _true_masses(bins: int, lim: float, dataset: str = DEFAULT_DATASET) -> torch.Tensor:
    edges = grid_edges(bins, lim)
    return _data.toy_density(dataset).bin_masses(edges, edges)


def binned_kl(samples: torch.Tensor, reference: _data.IsotropicGaussianMixture | None = None,
              dataset: str = DEFAULT_DATASET) -> float:
    """The protocol's binned KL(P || Q), P the exact cell masses of the true law (`reference`, else that of
    `dataset`) on the 40 x 40 grid on [-4.5, 4.5]^2, Q the histogram of `samples` (the protocol uses 100,000).

    1e-6 is added to every cell of both and both are renormalised. Mass outside the grid goes into one
    extra cell of P and Q, so a model that throws samples off the grid pays for them.
    """
    samples = check_tensor("samples", samples, ndim=2, last_dim=2)
    if reference is None:
        p = _true_masses(GRID_BINS, GRID_LIM, dataset)
    else:
        edges = grid_edges()
        p = reference.bin_masses(edges, edges)
    return _kl_of_masses(p, histogram2d(samples))


def binned_kl_floor(n: int = PROTOCOL_SAMPLES, repeats: int = 5, seed: int = EVAL_SEED,
                    dataset: str = DEFAULT_DATASET) -> float:
    """The estimator's floor: the mean binned KL of n true samples (what a perfect model scores)."""
    check_positive_int("n", n)
    check_positive_int("repeats", repeats)
    mix = _data.toy_density(dataset)
    vals = [binned_kl(mix.sample(n, torch.Generator().manual_seed(seed + r)), dataset=dataset)
            for r in range(repeats)]
    return float(np.mean(vals))


def _sample_kde(points: torch.Tensor, bandwidth: float, n: int, generator: torch.Generator) -> torch.Tensor:
    idx = torch.randint(points.shape[0], (n,), generator=generator)
    return points[idx] + bandwidth * torch.randn(n, points.shape[1], generator=generator)


def kde_binned_kl(points: torch.Tensor, bandwidth: float, n: int = PROTOCOL_SAMPLES, seed: int = EVAL_SEED,
                  dataset: str = DEFAULT_DATASET) -> float:
    """Binned KL of a Gaussian KDE of `points` with the given bandwidth (n samples from the KDE)."""
    points = check_tensor("points", points, ndim=2, last_dim=2).detach().cpu().float()
    check_positive_float("bandwidth", bandwidth)
    return binned_kl(_sample_kde(points, bandwidth, n, torch.Generator().manual_seed(seed)), dataset=dataset)


def kde_baseline(train: torch.Tensor | None = None, bandwidths=None, dataset: str = DEFAULT_DATASET) -> dict:
    """The KDE reference point: a Gaussian KDE of the training set (default ``genlib.data.toy(dataset, 2000,
    seed=0)``) with its best bandwidth on a grid from 0.04 to 0.40. Returns {'binned_kl', 'bandwidth', 'scores'};
    about 0.036 on the eight Gaussians."""
    if train is None:
        train = _data.toy(dataset, 2000, seed=0)
    train = check_tensor("train", train, ndim=2, last_dim=2).detach().cpu()
    if bandwidths is None:
        bandwidths = np.round(np.arange(0.04, 0.41, 0.02), 3)
    scores = {float(h): kde_binned_kl(train, float(h), dataset=dataset) for h in bandwidths}
    best = min(scores, key=scores.get)
    return {"binned_kl": scores[best], "bandwidth": best, "scores": scores}


def parametric_oracle(train: torch.Tensor | None = None, seed: int = 0, dataset: str = DEFAULT_DATASET) -> float:
    """Binned KL of a GMM with the true K = 8 fitted by maximum likelihood to the training set
    (scikit-learn's EM, full covariances): the price of finite data with the right model family.
    Defined for the eight Gaussians only (other sets have no finite parametric family to fit)."""
    from sklearn.mixture import GaussianMixture

    if dataset != DEFAULT_DATASET:
        raise ValueError(f"dataset: the parametric oracle is defined for {DEFAULT_DATASET!r} (a K = 8 mixture is "
                         f"its true family), not for {dataset!r}")
    if train is None:
        train = _data.eight_gaussians(2000, seed=0)
    train = check_tensor("train", train, ndim=2, last_dim=2)
    gm = GaussianMixture(8, covariance_type="full", n_init=5, random_state=seed, tol=1e-6, max_iter=1000)
    gm.fit(train.detach().cpu().double().numpy())
    rng_state = np.random.RandomState(EVAL_SEED)
    gm.random_state = rng_state
    x, _ = gm.sample(PROTOCOL_SAMPLES)
    return binned_kl(torch.from_numpy(x).float())


def true_entropy(dataset: str = DEFAULT_DATASET) -> float:
    """Differential entropy of the true law in nats (eight Gaussians: about 2.61): the floor of any NLL."""
    return reference_points(dataset)["entropy"]


def nll(log_prob: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module, n: int = 20_000,
        seed: int = EVAL_SEED, device=None, batch_size: int = 20_000, dataset: str = DEFAULT_DATASET) -> float:
    """Mean negative log-likelihood in nats of n fresh true samples (default: the eight Gaussians) under
    `log_prob` (a function or a model with ``log_prob``)."""
    fn = log_prob.log_prob if hasattr(log_prob, "log_prob") else log_prob
    if not callable(fn):
        raise TypeError("log_prob: expected a callable or a model with a log_prob method")
    check_positive_int("n", n)
    if device is None and isinstance(log_prob, torch.nn.Module):
        device = module_device(log_prob)
    x = _data.toy_density(dataset).sample(n, torch.Generator().manual_seed(seed), device=device)
    total = 0.0
    with evaluating(log_prob):  # a model is scored in eval mode and left as it was
        for chunk in x.split(batch_size):
            lp = fn(chunk)
            if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (chunk.shape[0],):
                got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
                raise ValueError(f"log_prob: expected one log-density per row, shape ({chunk.shape[0]},), got {got}")
            if not bool(torch.isfinite(lp).all()):
                raise ValueError("log_prob: returned NaN or infinite values on true samples")
            total += float(lp.detach().double().sum())
    return -total / n


def w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Wasserstein-2 distance between two equally weighted point clouds (POT's network simplex)."""
    import ot

    x = check_tensor("x", x, ndim=2).detach().cpu().double().numpy()
    y = check_tensor("y", y, ndim=2).detach().cpu().double().numpy()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    val = ot.emd2(a, b, cost, numItermax=10_000_000)
    return float(math.sqrt(max(val, 0.0)))


def w2_reference(n: int = 2000, seed: int = EVAL_SEED, dataset: str = DEFAULT_DATASET) -> float:
    """W2 between two independent sets of n true samples: what a perfect model scores."""
    mix = _data.toy_density(dataset)
    return w2(mix.sample(n, torch.Generator().manual_seed(seed + 1)),
              mix.sample(n, torch.Generator().manual_seed(seed + 2)))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared MMD between x and y with a sum of RBF kernels ``exp(-|a-b|^2 / (2 h^2))``."""
    x = check_tensor("x", x, ndim=2, min_rows=2).detach().double()
    y = check_tensor("y", y, ndim=2, min_rows=2).detach().double().to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: dimensions differ ({x.shape[1]} vs {y.shape[1]})")

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def _scaled_distances(samples: torch.Tensor, mix):
    """Yield (start, distances of samples[start:start + chunk] to every centre of `mix`, in units of its std)."""
    chunk = max(1, 4_000_000 // mix.means.shape[0])
    for i in range(0, samples.shape[0], chunk):
        yield i, torch.cdist(samples[i:i + chunk], mix.means) / mix.std


def mode_distance(samples: torch.Tensor, dataset: str = DEFAULT_DATASET) -> torch.Tensor:
    """Each sample's distance to the nearest centre of the data set's mixture, in units of its standard deviation
    (float64, CPU): the protocol counts a sample as on a mode when it is below 3."""
    samples = check_tensor("samples", samples, ndim=2, last_dim=2).detach().cpu().double()
    mix = _data.toy_density(dataset)
    out = torch.empty(samples.shape[0], dtype=torch.float64)
    for i, d in _scaled_distances(samples, mix):
        out[i:i + d.shape[0]] = d.min(1).values
    return out


def mode_stats(samples: torch.Tensor, min_fraction: float = 0.01, radius_std: float = 3.0,
               dataset: str = DEFAULT_DATASET) -> dict:
    """Modes covered (a mode counts when at least 1% of samples lie within 3 std of it) and the fraction
    of samples within 3 std of some mode (eight Gaussians: 8 modes; two moons: 2, each its arc blurred)."""
    samples = check_tensor("samples", samples, ndim=2, last_dim=2).detach().cpu().double()
    mix = _data.toy_density(dataset)
    near = torch.zeros(samples.shape[0], mix.n_modes, dtype=torch.float64)
    for i, d in _scaled_distances(samples, mix):
        close = (d < radius_std).double()
        index = mix.modes.expand(close.shape[0], -1)
        near[i:i + d.shape[0]] = near[i:i + d.shape[0]].scatter_reduce(1, index, close, reduce="amax")
    per_mode = near.mean(0)
    return {
        "modes_covered": int((per_mode >= min_fraction).sum()),
        "on_mode": float((near > 0).any(1).double().mean()),
        "per_mode": per_mode.tolist(),
    }


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class count_evaluations(contextlib.AbstractContextManager):
    """Count a model's network evaluations from outside: inside the block, every forward pass of one of the
    model's ``networks()`` adds its batch size to ``rows``; ``per_sample(n)`` is rows / n, the network
    evaluations per sample of a call that returned n samples (a rejected proposal counts too).

    >>> with count_evaluations(model) as count:
    ...     x = model.sample(1000)
    >>> count.per_sample(1000)
    """

    def __init__(self, model: torch.nn.Module):
        networks = model.networks() if callable(getattr(model, "networks", None)) else []
        self.networks = list(networks)
        self.rows = 0
        self.calls = 0
        self._handles: list = []

    def _hook(self, module, args, output) -> None:
        first = args[0] if args else None
        self.rows += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1
        self.calls += 1

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook) for m in self.networks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def per_sample(self, n: int) -> float:
        """Network evaluations per sample for a call that produced n samples."""
        return self.rows / check_positive_int("n", n)


def sampling_cost(model: torch.nn.Module, n: int = PROTOCOL_SAMPLES, seed: int = EVAL_SEED) -> dict:
    """Wall time (seconds) for ``model.sample(n)`` and its network evaluations per sample, counted from outside
    (``count_evaluations``; integral values are returned as ints).

    Returns {'seconds', 'nfe', 'samples'}; the samples are returned so that the protocol draws them once.
    """
    check_positive_int("n", n)
    device = module_device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), evaluating(model), count_evaluations(model) as count:
        x = model.sample(n, generator=gen)
    _sync(device)
    seconds = time.perf_counter() - start
    nfe = count.per_sample(n)
    return {"seconds": seconds, "nfe": int(nfe) if nfe == int(nfe) else nfe, "samples": x}


def evaluate(model: torch.nn.Module, n: int = PROTOCOL_SAMPLES, with_nll: bool | None = None,
             seed: int = EVAL_SEED, dataset: str = DEFAULT_DATASET) -> dict:
    """The full 2-D protocol (default: on the eight Gaussians) for a model with ``sample`` (and ``log_prob``
    where it has one), in eval mode (the model is left as it was).

    Non-finite samples count as lost mass: they fall outside every cell of the binned KL and off every mode, and
    W2 is infinite; ``non_finite`` says how many there were. A model whose samples are all non-finite is refused.
    """
    cost = sampling_cost(model, n, seed)
    x = cost.pop("samples")
    check_tensor("model.sample(n)", x, ndim=2, last_dim=2, finite=False)
    finite = torch.isfinite(x).all(1)
    kept = float(finite.double().mean())
    if kept == 0:
        raise ValueError(f"model.sample(n): all {x.shape[0]} samples are NaN or infinite")
    x = x[finite]
    mix = _data.toy_density(dataset)
    modes = mode_stats(x, min_fraction=0.01 / kept, dataset=dataset)  # 1% of all samples, lost ones included
    lost_mass_kl = _kl_of_masses(_true_masses(GRID_BINS, GRID_LIM, dataset), histogram2d(x) * kept)
    out = {
        "binned_kl": lost_mass_kl,
        "w2": w2(x[:2000], mix.sample(2000, torch.Generator().manual_seed(seed + 2))) if kept == 1 else math.inf,
        "modes_covered": modes["modes_covered"],
        "on_mode": modes["on_mode"] * kept,
        "sample_seconds": cost["seconds"],
        "nfe": cost["nfe"],
        "non_finite": int((~finite).sum()),
    }
    if with_nll is None:
        with_nll = hasattr(model, "log_prob")
    if with_nll:
        with torch.no_grad():
            out["nll"] = nll(model, seed=seed, dataset=dataset)  # nll puts the model in eval mode too
    return out


# ---------------------------------------------------------------------------------------- digits


def benchmark(names: list[str] | None = None, seeds=(0,), device=None, n: int = 100_000,
              progress: bool = False, dataset: str = "eight_gaussians") -> list[dict]:
    """The Synthesis comparison: each headline model of a 2-D data set (default: ``genlib.zoo.families`` of the
    eight Gaussians) trained or loaded with its chapter's configuration and scored with the full protocol
    (:func:`genlib.metrics.evaluate` on the same data set).

    Returns one dict per (model, seed): ``family``, ``seed``, ``train_seconds`` (the training run's wall time,
    kept with the cached weights) and ``train_steps``, and the protocol's fields.
    """
    from . import zoo

    names = zoo.families(dataset) if names is None else list(names)
    if not names:
        raise ValueError("names: expected at least one zoo key")
    check_positive_int("n", n)
    rows = []
    for seed in seeds:
        for name in names:
            model = zoo.get(name, dataset=dataset, seed=seed, device=device, progress=progress)
            history = getattr(model, "history", None)
            row = {"family": name, "seed": seed,
                   "train_seconds": getattr(history, "seconds", None), "train_steps": getattr(history, "steps", None)}
            row.update(evaluate(model, n=n, dataset=dataset))
            rows.append(row)
    return rows


_CLASSIFIER: dict = {}


def digits_classifier(device=None, progress: bool = False) -> DigitsClassifier:
    """The book's digits classifier, trained once on the train split (seed 0) and cached on disk and in memory."""
    from . import zoo

    dev = resolve_device(device)
    if dev not in _CLASSIFIER:
        _CLASSIFIER[dev] = zoo.get("digits_classifier", dataset="digits", seed=0, device=dev, progress=progress)
    return _CLASSIFIER[dev]


def _images(name: str, x: torch.Tensor) -> torch.Tensor:
    x = check_tensor(name, x, finite=True)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.view(-1, 1, 8, 8)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"{name}: expected 8x8 images (N, 1, 8, 8) in 0..16, got {tuple(x.shape)}")
    return x


def frechet_distance(x: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Frechet distance between Gaussians fitted to the classifier features of images x (0..16 scale) and of
    the reference images (default: the test split)."""
    x = _images("x", x)
    clf = digits_classifier(x.device)
    if reference is None:
        reference = _data.digits(device=x.device).test_x
    reference = _images("reference", reference).to(x.device)
    with torch.no_grad():
        fa = clf.features(x.float()).double().cpu().numpy()
        fb = clf.features(reference.float()).double().cpu().numpy()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    # tr sqrt(ca cb) = sum of square roots of the (real, non-negative) eigenvalues of ca cb
    eig = np.clip(np.real(np.linalg.eigvals(ca @ cb)), 0, None)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(eig).sum())


def label_entropy(x: torch.Tensor) -> float:
    """Entropy (nats) of the classifier's predicted labels over images x: log 10 = 2.30 when every digit is
    equally frequent, 0 when all samples are one digit."""
    x = _images("x", x)
    clf = digits_classifier(x.device)
    with torch.no_grad():
        labels = clf(x.float()).argmax(1).cpu()
    freq = torch.bincount(labels, minlength=10).double() / labels.numel()
    freq = freq[freq > 0]
    return float(-(freq * freq.log()).sum())


def predicted_labels(x: torch.Tensor) -> torch.Tensor:
    """The classifier's predicted digit for each image (0..16 scale)."""
    x = _images("x", x)
    with torch.no_grad():
        return digits_classifier(x.device)(x.float()).argmax(1)


# ------------------------------------------------------------------------------------ presenting


@lru_cache(maxsize=4)
def reference_points(dataset: str = DEFAULT_DATASET) -> dict:
    """The protocol's reference points on a 2-D set (default: the eight Gaussians): the binned-KL estimator
    floor, the parametric oracle (K = 8 GMM; None where the set has none), the KDE baseline and its bandwidth,
    the true entropy and W2 true vs true.

    They are deterministic, so they are computed once and kept (as JSON) in the model cache directory, under a
    name that fingerprints the code that computes them.
    """
    import json
    import os
    import threading

    from .zoo import cache_dir, code_fingerprint

    _data.toy_density(dataset)  # a clear error for an unknown set
    code = code_fingerprint("genlib.metrics")
    path = cache_dir() / f"reference-points-{dataset}-{code}-torch{torch.__version__}.json"
    keys = ("floor", "oracle", "kde", "kde_bandwidth", "entropy", "w2_true")
    oracle_defined = dataset == DEFAULT_DATASET

    def valid(k, v):
        if k == "oracle" and not oracle_defined:
            return v is None
        return isinstance(v, float) and math.isfinite(v)

    try:
        values = json.loads(path.read_text())
        if set(values) == set(keys) and all(valid(k, values[k]) for k in keys):
            return values
    except (OSError, ValueError):
        pass
    kde = kde_baseline(dataset=dataset)
    values = {
        "floor": binned_kl_floor(dataset=dataset),
        "oracle": parametric_oracle() if oracle_defined else None,
        "kde": kde["binned_kl"],
        "kde_bandwidth": float(kde["bandwidth"]),
        "entropy": _data.toy_density(dataset).entropy(),
        "w2_true": w2_reference(dataset=dataset),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(values))
        tmp.replace(path)
    except OSError:  # an unwritable cache: the values are recomputed next time
        pass
    return values


PROTOCOL_COLUMNS = {
    "binned_kl": ("binned KL", "{:.4f}"),
    "nll": ("NLL (nats)", "{:.3f}"),
    "w2": ("W2", "{:.3f}"),
    "modes_covered": ("modes", "{:d}"),
    "on_mode": ("on a mode", "{:.1%}"),
    "sample_seconds": ("sampling 1e5 (s)", "{:.2f}"),
    "nfe": ("NFE", "{:.0f}"),
    "train_seconds": ("training (s)", "{:.0f}"),
}
SPREAD_COLUMNS = ("binned_kl", "nll", "w2")  # shown with their spread over seeds (``<column>_sd``) when there is one


def protocol_table(rows: dict[str, dict], references: bool = True, extra: tuple[str, dict] | None = None,
                   dataset: str = DEFAULT_DATASET) -> str:
    """A Markdown table of protocol results, one row per model, with the reference points below them.

    ``rows`` maps a model's name to the dict returned by :func:`evaluate` (or a :func:`summarise_seeds` row,
    whose spread over seeds is shown as ``mean ± sd``). ``extra`` = (header, {model name: text}) adds a column.
    Display it in a notebook with ``IPython.display.Markdown(protocol_table(...))``.
    """
    if not isinstance(rows, dict) or not rows:
        raise ValueError("rows: expected a non-empty dict mapping model names to evaluate() results")
    cols = [c for c in PROTOCOL_COLUMNS if any(c in r for r in rows.values())]
    head = "| model | " + " | ".join(PROTOCOL_COLUMNS[c][0] for c in cols) + (f" | {extra[0]} |" if extra else " |")
    lines = [head, "|---" * (len(cols) + 1 + bool(extra)) + "|"]

    def cell(c, v):
        if v is None:
            return "n/a"
        fmt = PROTOCOL_COLUMNS[c][1]
        return fmt.format(round(v)) if fmt == "{:d}" else fmt.format(v)

    def row(name, values, missing):
        cells = []
        for c in cols:
            if c not in values:
                cells.append(missing)
                continue
            text = cell(c, values[c])
            if c in SPREAD_COLUMNS and values.get("seeds", 1) > 1 and f"{c}_sd" in values:
                text += " ± " + cell(c, values[f"{c}_sd"])
            cells.append(text)
        if extra:
            cells.append(str(extra[1].get(name, "")))
        return f"| {name} | " + " | ".join(cells) + " |"

    for name, r in rows.items():
        lines.append(row(name, r, "—"))
    if references:
        ref = reference_points(dataset)
        refs = [("estimator floor (true samples)",
                 {"binned_kl": ref["floor"], "nll": ref["entropy"], "w2": ref["w2_true"]})]
        if ref["oracle"] is not None:
            refs.append(("parametric oracle (GMM, K = 8)", {"binned_kl": ref["oracle"]}))
        refs.append((f"KDE baseline (bandwidth {ref['kde_bandwidth']:.2f})", {"binned_kl": ref["kde"]}))
        for label, values in refs:
            lines.append(row(f"*{label}*", values, ""))
    return "\n".join(lines)


# The lecture notes' Table 2 (Bogensperger, 2024, Introduction to Generative Modeling): a binned KL between
# generated and training samples whose protocol is unpublished; quoted beside our numbers, never compared.
NOTES_TABLE2 = {"gmm": 0.0099, "vae": 0.0950, "flow": 0.0165, "gan": 0.1502, "diffusion": 0.0149,
                "flow_matching": 0.0164}
BENCHMARK_FIELDS = ("binned_kl", "nll", "w2", "modes_covered", "on_mode", "nfe", "sample_seconds", "train_seconds",
                    "train_steps")


def summarise_seeds(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every numeric benchmark field, one dict per family (order kept).

    ``rows`` are :func:`genlib.metrics.benchmark` rows; a field missing for a family (no log-density) stays missing.
    """
    if not rows:
        raise ValueError("rows: expected at least one benchmark row")
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        group = [r for r in rows if r["family"] == family]
        s = {"family": family, "seeds": len(group)}
        for f in BENCHMARK_FIELDS:
            vals = torch.tensor([float(r[f]) for r in group if r.get(f) is not None], dtype=torch.float64)
            if len(vals):
                s[f] = float(vals.mean())
                s[f + "_sd"] = float(vals.std()) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def comparison_table(rows: list[dict], references: bool = True, notes: bool = True,
                     dataset: str = DEFAULT_DATASET) -> str:
    """The Synthesis table as Markdown: :func:`protocol_table` of the :func:`summarise_seeds` rows (mean, and
    ± spread when there are several seeds), with the lecture notes' Table 2 beside it (eight Gaussians only)."""
    summary = {s["family"]: s for s in summarise_seeds(rows)}
    notes = notes and dataset == DEFAULT_DATASET
    extra = ("notes' Table 2", {f: f"{v:.4f}" for f, v in NOTES_TABLE2.items()}) if notes else None
    return protocol_table(summary, references=references, extra=extra, dataset=dataset)
