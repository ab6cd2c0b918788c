"""Gaussian mixture models with full covariances, fitted by expectation-maximization (EM).

The model is ``p(x) = sum_k pi_k N(x | mu_k, Sigma_k)``. As a probability transformation it is a
categorical choice followed by an affine map of Gaussian noise: the base draws ``u ~ U(0, 1)`` and
``z ~ N(0, I)`` side by side, the map picks the component ``k`` whose cumulative weight first exceeds ``u``
and returns ``mu_k + L_k z`` with ``L_k`` the Cholesky factor of ``Sigma_k`` (:meth:`GaussianMixture.transform`).

Everything is torch and runs on CUDA unchanged. The parameters are buffers (float64), so
``state_dict`` round-trips through the model cache and ``.to(device)`` moves them. Densities are
computed with log-sum-exp throughout. :func:`fit` runs EM from a k-means++ or random start, with
covariance regularisation and a stopping tolerance, and returns a :class:`genlib.train.History`
whose ``extra["log_likelihood"]`` holds the mean log-likelihood per sample at every iteration.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch

from .._util import check_choice, check_positive_float, check_positive_int, check_tensor, gaussian_log_prob, rand
from ..train import History, TrainingDiverged, progress_bar
from .base import Generative, Noise

__all__ = ["GaussianMixture", "fit", "kmeans_plusplus", "kmeans", "INITS"]

INITS = ("kmeans++", "random")


class GaussianMixture(Generative):
    """A mixture of ``n_components`` Gaussians with full covariances in ``R^dim``.

    Buffers: ``weights`` (K,) on the simplex, ``means`` (K, d), ``covariances`` (K, d, d), all float64.
    A fresh model has equal weights, zero means and identity covariances; call :meth:`fit`.
    ``reg_covar`` is added to the diagonal of every covariance in the M-step (it keeps a component that
    collapses onto a single point from becoming singular).
    """

    def __init__(self, n_components: int = 10, dim: int = 2, reg_covar: float = 1e-6):
        super().__init__()
        self.n_components = check_positive_int("n_components", n_components)
        self.dim = check_positive_int("dim", dim)
        self.reg_covar = check_positive_float("reg_covar", reg_covar, allow_zero=True)
        k, d = self.n_components, self.dim
        self.register_buffer("weights", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, d, dtype=torch.float64))
        self.register_buffer("covariances", torch.eye(d, dtype=torch.float64).repeat(k, 1, 1))
        # the base: a uniform that picks the component and a Gaussian for its affine map (float64, as the buffers)
        self.base = Noise(("uniform", 1), ("normal", d), dtype=torch.float64)

    # ------------------------------------------------------------------------------------ parameters

    @property
    def n_parameters(self) -> int:
        """The number of free parameters (K - 1 weights, K d mean entries, K d (d + 1) / 2 covariance entries)."""
        k, d = self.n_components, self.dim
        return (k - 1) + k * d + k * d * (d + 1) // 2

    @property
    def scale_tril(self) -> torch.Tensor:
        """The Cholesky factors L_k, with L_k L_k^T = Sigma_k, shape (K, d, d)."""
        return _cholesky(self.covariances)

    def set_parameters(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        """Set the mixture's parameters (validated; weights are renormalised onto the simplex)."""
        k, d = self.n_components, self.dim
        weights = check_tensor("weights", torch.as_tensor(weights), ndim=1, min_rows=k)
        means = check_tensor("means", torch.as_tensor(means), ndim=2, last_dim=d, min_rows=k)
        covariances = check_tensor("covariances", torch.as_tensor(covariances), ndim=3, shape_tail=(d, d),
                                   min_rows=k)
        if weights.shape[0] != k or means.shape[0] != k or covariances.shape[0] != k:
            raise ValueError(f"weights, means, covariances: expected {k} components, got "
                             f"{weights.shape[0]}, {means.shape[0]}, {covariances.shape[0]}")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights: expected non-negative numbers with a positive sum")
        cov = covariances.double()
        asym = (cov - cov.mT).abs().amax(dim=(-2, -1)) > 1e-8 * cov.abs().amax(dim=(-2, -1)).clamp_min(1.0)
        if bool(asym.any()):
            raise ValueError(f"covariances: component(s) {asym.nonzero().flatten().tolist()} are not symmetric")
        not_pd = torch.linalg.cholesky_ex(cov).info != 0
        if bool(not_pd.any()):
            raise ValueError(f"covariances: component(s) {not_pd.nonzero().flatten().tolist()} are not positive "
                             "definite")
        like = self.means
        weights = weights.to(like)
        self.weights.copy_(weights / weights.sum())
        self.means.copy_(means.to(like))
        self.covariances.copy_(covariances.to(like))

    # ------------------------------------------------------------------------------------- densities

    def _check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_tensor(name, x, ndim=2, last_dim=self.dim)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x_i | mu_k, Sigma_k)`` for every row i and component k: shape (N, K), float64."""
        x = self._check_x(x).to(self.means)
        return _component_log_prob(x, self.weights, self.means, self.scale_tril)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of each row of x (log-sum-exp over components), in x's dtype."""
        return torch.logsumexp(self.component_log_prob(x), dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior probabilities ``r_ik = p(k | x_i)``: shape (N, K), rows on the simplex, in x's dtype."""
        return torch.softmax(self.component_log_prob(x), dim=1).to(x.dtype)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The objective EM minimises: the mean negative log-likelihood of x (EM, not gradients, fits it)."""
        return -self.log_prob(x).mean()

    def bic(self, x: torch.Tensor) -> float:
        """Bayesian information criterion ``-2 sum_i log p(x_i) + n_parameters log N`` (lower is better)."""
        x = self._check_x(x)
        ll = float(self.component_log_prob(x).logsumexp(1).sum())
        return -2.0 * ll + self.n_parameters * math.log(x.shape[0])

    # ------------------------------------------------------------------------------------ the map T

    def select(self, u: torch.Tensor) -> torch.Tensor:
        """The categorical choice as an inverse CDF: component index k with ``c_{k-1} < u <= c_k`` (c = cumsum pi)."""
        u = check_tensor("u", u, ndim=1)
        cdf = torch.cumsum(self.weights, 0).to(u.device)
        k = torch.searchsorted(cdf, u.to(cdf.dtype).contiguous(), right=False)
        return k.clamp_max(self.n_components - 1)

    def component_map(self, z: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """The affine map of component k: ``mu_k + L_k z`` for z (N, d) and k an index or (N,) indices; in z's dtype."""
        z = check_tensor("z", z, ndim=2, last_dim=self.dim)
        if isinstance(k, int):
            if not 0 <= k < self.n_components:
                raise ValueError(f"k: expected a component index in [0, {self.n_components}), got {k}")
            k = torch.full((z.shape[0],), k, dtype=torch.long, device=z.device)
        if not isinstance(k, torch.Tensor) or k.dtype not in (torch.int32, torch.int64) or k.shape != z.shape[:1]:
            raise ValueError(f"k: expected an int or a ({z.shape[0]},) integer tensor of component indices")
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self.n_components):
            raise ValueError(f"k: component indices must lie in [0, {self.n_components})")
        k = k.to(self.means.device)
        zz = z.to(self.means)
        x = self.means[k] + (self.scale_tril[k] @ zz.unsqueeze(-1)).squeeze(-1)
        return x.to(device=z.device, dtype=z.dtype)

    def transform(self, noise: torch.Tensor, component: torch.Tensor | int | None = None) -> torch.Tensor:
        """The probability transformation ``T(u, z) = mu_k + L_k z`` with ``k = select(u)``.

        noise: (N, 1 + d), a uniform u and standard normal z side by side (what ``base.sample`` returns).
        ``component`` (an index or (N,) indices) fixes k instead of choosing it by u. Returns (N, d) float32.
        """
        u, z = self.base.split(noise)
        k = self.select(u[:, 0]) if component is None else component
        return self.component_map(z, k).float()

    def components(self, noise: torch.Tensor) -> torch.Tensor:
        """The component that each base draw picks (the categorical half of the map)."""
        return self.select(self.base.split(noise)[0][:, 0])

    # ---------------------------------------------------------------------------------------- fitting

    def e_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Responsibilities (N, K) and the mean log-likelihood per sample (a 0-d tensor), float64."""
        lp = self.component_log_prob(x)
        norm = torch.logsumexp(lp, dim=1, keepdim=True)
        return (lp - norm).exp(), norm.mean()

    def m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Closed-form updates: ``N_k = sum_i r_ik``, ``pi_k = N_k / N``, ``mu_k`` the r-weighted mean,
        ``Sigma_k`` the r-weighted scatter plus ``reg_covar I``."""
        w, m, c = _m_step(x.to(self.means), resp.to(self.means), self.reg_covar)
        self.weights.copy_(w)
        self.means.copy_(m)
        self.covariances.copy_(c)

    def initialize(self, x: torch.Tensor, init: str = "kmeans++", generator: torch.Generator | None = None) -> None:
        """Starting parameters from data: ``"kmeans++"`` (k-means++ seeding, Lloyd's iterations, then one
        M-step on the hard assignments) or ``"random"`` (K distinct data points as means, the data covariance
        for every component, equal weights)."""
        check_choice("init", init, INITS)
        x = self._check_x(x).to(self.means)
        k = self.n_components
        if x.shape[0] < k:
            raise ValueError(f"x: expected at least n_components = {k} rows to initialise, got {x.shape[0]}")
        if init == "kmeans++":
            centres = kmeans(x, kmeans_plusplus(x, k, generator=generator))
            labels = torch.cdist(x, centres).argmin(1)
            resp = torch.nn.functional.one_hot(labels, k).to(x)
            self.m_step(x, resp)
        else:
            u = rand((x.shape[0],), like=x, generator=generator)
            idx = torch.argsort(u)[:k]
            cov = torch.atleast_2d(torch.cov(x.T)) + self.reg_covar * torch.eye(self.dim, dtype=x.dtype,
                                                                                   device=x.device)
            self.set_parameters(torch.full((k,), 1.0 / k), x[idx], cov.expand(k, -1, -1))

    def fit(self, x: torch.Tensor, **kwargs) -> History:
        """Fit by EM; see :func:`genlib.models.gmm.fit` for the options."""
        return fit(self, x, **kwargs)


# ------------------------------------------------------------------------------------------- EM


def fit(
    model: GaussianMixture,
    data: torch.Tensor,
    *,
    steps: int = 500,
    tol: float = 1e-6,
    init: str | None = "kmeans++",
    n_init: int = 1,
    seed: int | None = 0,
    device=None,
    callback: Callable[[int, GaussianMixture, History], None] | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> History:
    """Fit ``model`` to ``data`` (N, d) by expectation-maximization; the same call shape as ``genlib.train.fit``.

    steps: at most this many EM iterations (M-steps). tol: stop when the mean log-likelihood per sample
    changes by less than tol. init: ``"kmeans++"``, ``"random"``, or None to continue from the current
    parameters. n_init: number of starts (each from its own draw); the run with the highest final
    log-likelihood is kept. seed: seeds the initialisation. callback(step, model, history) runs after
    each E-step (step 0 is the initial parameters), for example to record snapshots.

    Returns a :class:`genlib.train.History` (also ``model.history``): ``extra["log_likelihood"]`` is the mean
    log-likelihood per sample of the parameters after 0, 1, 2, ... M-steps (its last entry is the
    returned model's), ``loss`` its negative, ``steps`` the number of M-steps, and
    ``extra["converged"]`` is [1.0] when the tolerance was met. EM never decreases the likelihood.
    Raises :class:`genlib.train.TrainingDiverged` naming the iteration if the log-likelihood becomes non-finite.
    """
    if not isinstance(model, GaussianMixture):
        raise TypeError(f"model: expected a GaussianMixture, got {type(model).__name__}")
    data = check_tensor("data", data, ndim=2, last_dim=model.dim)
    check_positive_int("steps", steps)
    check_positive_float("tol", tol, allow_zero=True)
    check_positive_int("n_init", n_init)
    if init is not None:
        check_choice("init", init, INITS)
    elif n_init != 1:
        raise ValueError("n_init: several starts need an init method, got init=None")
    if data.shape[0] < model.n_components:
        raise ValueError(f"data: expected at least n_components = {model.n_components} rows, got {data.shape[0]}")
    if device is not None:
        model.to(device)
    x = data.to(model.means)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    best, best_ll = None, -math.inf
    start = time.perf_counter()
    with _one_thread_on_cpu(x.device):
        for run in range(n_init):
            if init is not None:
                model.initialize(x, init, generator=gen)
            label = desc or f"EM, K = {model.n_components}"
            history = _em(model, x, steps, tol, callback, progress,
                          label if n_init == 1 else f"{label} (start {run + 1}/{n_init})")
            ll = history.extra["log_likelihood"][-1]
            if ll > best_ll:
                best_ll = ll
                best = (history, {k: v.clone() for k, v in model.state_dict().items()})
    history, state = best
    model.load_state_dict(state)
    history.seconds = time.perf_counter() - start
    model.history = history
    model.eval()
    return history


def _em(model: GaussianMixture, x: torch.Tensor, steps: int, tol: float, callback, progress: bool,
        desc: str) -> History:
    history = History()
    lls = history.extra.setdefault("log_likelihood", [])
    converged = False
    bar = progress_bar(steps, desc, progress)
    try:
        for step in range(steps + 1):
            resp, ll = model.e_step(x)
            ll = float(ll)
            if not math.isfinite(ll):
                raise TrainingDiverged(f"the log-likelihood became {ll} at EM iteration {step} of {steps}")
            lls.append(ll)
            history.loss.append(-ll)
            if callback is not None:
                callback(step, model, history)
            if step > 0 and abs(lls[-1] - lls[-2]) < tol:
                converged = True
                break
            if step == steps:
                break
            model.m_step(x, resp)
            history.steps = step + 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loglik=f"{ll:.4f}", refresh=False)
        bar.set_postfix(loglik=f"{lls[-1]:.4f}", iterations=history.steps, refresh=False)
    finally:
        bar.close()
    history.extra["converged"] = [1.0 if converged else 0.0]
    return history


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """EM's tensors are small (N x K): on the CPU, thread start-up and synchronisation cost more than the
    arithmetic (on a busy machine, a hundred times more), so the loop runs on one thread."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- the pieces


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of a batch of covariances; adds growing jitter to any that are not numerically SPD."""
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    L, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        scale = cov.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)[..., None, None]
        jitter = 1e-10
        while bool((info != 0).any()) and jitter < 1e3:
            L, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
            jitter *= 10
    return L


def _component_log_prob(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                         scale_tril: torch.Tensor) -> torch.Tensor:
    diff = (x.unsqueeze(0) - means.unsqueeze(1)).transpose(1, 2)  # (K, d, N)
    y = torch.linalg.solve_triangular(scale_tril, diff, upper=False)  # L_k^{-1} (x - mu_k): N(0, I) under k
    half_logdet = torch.log(scale_tril.diagonal(dim1=-2, dim2=-1)).sum(-1)  # log |L_k| = log det(Sigma_k) / 2
    log_w = torch.log(weights.clamp_min(torch.finfo(weights.dtype).tiny))
    return log_w + gaussian_log_prob(y.transpose(1, 2)).T - half_logdet  # (N, K)


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float):
    n, d = x.shape
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # (K,), never zero
    weights = nk / n
    means = (resp.T @ x) / nk[:, None]
    diff = x.unsqueeze(0) - means.unsqueeze(1)  # (K, N, d)
    cov = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None]
    cov = cov + reg_covar * torch.eye(d, dtype=x.dtype, device=x.device)
    return weights / weights.sum(), means, cov


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding: the first centre uniformly at random, each next one with probability proportional
    to the squared distance to the nearest centre chosen so far. Returns (k, d) centres (rows of x)."""
    x = check_tensor("x", x, ndim=2)
    check_positive_int("k", k)
    if x.shape[0] < k:
        raise ValueError(f"x: expected at least k = {k} rows, got {x.shape[0]}")
    idx = [int(torch.floor(rand((1,), like=x, generator=generator) * x.shape[0]).clamp_max(x.shape[0] - 1))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        cdf = torch.cumsum(d2, 0)
        if float(cdf[-1]) <= 0:  # fewer distinct points than k: take any point not chosen yet
            rest = [i for i in range(x.shape[0]) if i not in idx]
            nxt = rest[0]
        else:
            u = rand((1,), like=x, generator=generator) * cdf[-1]
            nxt = int(torch.searchsorted(cdf, u).clamp_max(x.shape[0] - 1))
        idx.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return x[idx].clone()


def kmeans(x: torch.Tensor, centres: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """Lloyd's iterations from the given centres until the assignments stop changing; an empty
    cluster keeps its centre. Returns the (k, d) centres."""
    x = check_tensor("x", x, ndim=2)
    centres = check_tensor("centres", centres, ndim=2, last_dim=x.shape[1]).to(x).clone()
    k = centres.shape[0]
    labels = None
    for _ in range(max_iter):
        new = torch.cdist(x, centres).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k).to(x)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres
