"""Flow matching, rectified flows and optimal-transport couplings.

Time runs from the source (noise, ``t = 0``) to the data (``t = 1``), the convention of Lipman et al.
and of the book's CNF chapter; a diffusion model at time ``s`` corresponds to time ``t = 1 - s`` here.

A model is a time-dependent velocity field ``v_theta(t, x)``. It is trained by regression on the
velocity of *conditional* probability paths ``x_t = a_t x_1 + b_t x_0`` between a source point ``x_0``
and a data point ``x_1`` (no ODE is simulated during training), and it samples by integrating
``dx/dt = v_theta(t, x)`` from ``t = 0`` to ``t = 1`` with :func:`genlib.solvers.odeint`, the same
solvers as the CNF and the probability-flow ODE. Its exact log-density comes from the instantaneous
change of variables through the same ODE (:func:`genlib.solvers.log_prob_ode`).

Pieces, top to bottom:

- sources: :class:`GaussianSource`, :class:`MixtureSource` (exact density), :class:`EmpiricalSource`;
- probability paths: :class:`CondOTPath` (``mu_t = t x_1``, ``sigma_t = 1 - (1 - sigma_min) t``),
  :class:`StraightPath` (rectified flow, ``sigma_min = 0``), :class:`VPPath` (variance preserving);
- couplings of a minibatch: :func:`couple` (independent, exact OT with ``ot.emd``, entropic OT with
  ``ot.sinkhorn``) and :func:`transport_cost`;
- :class:`FlowMatching`: the model (``loss``, ``velocity``, ``transform``, ``sample``, ``log_prob``);
- rectification: :func:`reflow_pairs`; straightness: :func:`curvature`;
- exact marginal fields for Gaussian-mixture targets (:func:`marginal_field`), for tests and figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import solvers
from .._util import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_tensor,
    gaussian_log_prob,
    rand,
    randn,
)
from ..data import IsotropicGaussianMixture
from ..nn import MLP
from .base import Generative, Latent, Noise
from .diffusion import Schedule

__all__ = [
    "PATHS",
    "COUPLINGS",
    "GaussianSource",
    "MixtureSource",
    "EmpiricalSource",
    "CondOTPath",
    "StraightPath",
    "VPPath",
    "make_path",
    "couple",
    "transport_cost",
    "FlowMatching",
    "latent_flow_matching",
    "reflow_pairs",
    "curvature",
    "marginal_field",
]

PATHS = ("cond_ot", "rectified", "vp")
COUPLINGS = ("independent", "ot", "sinkhorn")


# ------------------------------------------------------------------------------------------ sources


class GaussianSource(Noise):
    """The standard normal N(0, I) in R^dim: the usual source p_0 (the base :class:`genlib.models.base.Noise` with
    a ``dim``)."""

    def __init__(self, dim: int):
        super().__init__(("normal", check_positive_int("dim", dim)))
        self.dim = dim


class MixtureSource(nn.Module):
    """An isotropic Gaussian mixture as the source (for example the eight Gaussians): exact samples and density."""

    def __init__(self, mixture: IsotropicGaussianMixture):
        super().__init__()
        if not isinstance(mixture, IsotropicGaussianMixture):
            raise TypeError(f"mixture: expected a genlib.data.IsotropicGaussianMixture, got {type(mixture).__name__}")
        self.dim = mixture.dim
        self.register_buffer("means", mixture.means.float().clone())
        self.register_buffer("weights", mixture.weights.float().clone())
        self.register_buffer("std", torch.tensor(float(mixture.std)))

    def mixture(self) -> IsotropicGaussianMixture:
        return IsotropicGaussianMixture(self.means.double().cpu(), float(self.std), self.weights.double().cpu())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        check_positive_int("n", n)
        u = rand((n,), like=self.means, generator=generator)
        k = torch.searchsorted(torch.cumsum(self.weights, 0), u).clamp_max(self.means.shape[0] - 1)
        return self.means[k] + self.std * randn((n, self.dim), like=self.means, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = check_tensor("x", x, last_dim=self.dim)
        comp = gaussian_log_prob(x.unsqueeze(-2), self.means.to(x.dtype), 2 * torch.log(self.std.to(x.dtype)))
        return torch.logsumexp(torch.log(self.weights.to(x.dtype)) + comp, -1)


class EmpiricalSource(nn.Module):
    """A finite point cloud as the source (samples drawn with replacement). It has no density."""

    def __init__(self, points: torch.Tensor):
        super().__init__()
        points = check_tensor("points", points, ndim=2)
        self.dim = points.shape[1]
        self.register_buffer("points", points.detach().float().clone())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        check_positive_int("n", n)
        u = rand((n,), like=self.points, generator=generator)
        idx = (u * self.points.shape[0]).long().clamp_max(self.points.shape[0] - 1)
        return self.points[idx]


# ------------------------------------------------------------------------------------ probability paths


class _AffinePath:
    """x_t = a_t x_1 + b_t x_0 with x_0 from the source: for a Gaussian source the conditional path is
    p_t(x | x_1) = N(x | a_t x_1, b_t^2 I), and its conditional velocity is da_t x_1 + db_t x_0."""

    name = "affine"

    def coefficients(self, t: torch.Tensor):
        """(a_t, b_t, da_t/dt, db_t/dt), each shaped like t."""
        raise NotImplementedError

    @staticmethod
    def _expand(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)) if c.ndim else c

    def interpolate(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The point x_t = a_t x_1 + b_t x_0 (t of shape (B,) or a scalar)."""
        a, b, _, _ = self.coefficients(t)
        return self._expand(a, x1) * x1 + self._expand(b, x0) * x0

    def target(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The regression target of conditional flow matching: d x_t / dt = da_t x_1 + db_t x_0."""
        _, _, da, db = self.coefficients(t)
        return self._expand(da, x1) * x1 + self._expand(db, x0) * x0

    def conditional_field(self, t: torch.Tensor, x: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """u_t(x | x_1) = db_t / b_t (x - a_t x_1) + da_t x_1, the field that generates N(a_t x_1, b_t^2 I)."""
        a, b, da, db = self.coefficients(t)
        a, b, da, db = (self._expand(c, x) for c in (a, b, da, db))
        return db / b * (x - a * x1) + da * x1


class CondOTPath(_AffinePath):
    """Lipman et al.'s conditional optimal-transport path: mu_t = t x_1, sigma_t = 1 - (1 - sigma_min) t."""

    name = "cond_ot"

    def __init__(self, sigma_min: float = 1e-4):
        self.sigma_min = check_positive_float("sigma_min", sigma_min, allow_zero=True)
        if self.sigma_min >= 1:
            raise ValueError(f"sigma_min: expected a number in [0, 1), got {sigma_min}")

    def coefficients(self, t):
        t = torch.as_tensor(t)
        one = torch.ones_like(t)
        return t, 1 - (1 - self.sigma_min) * t, one, -(1 - self.sigma_min) * one


class StraightPath(CondOTPath):
    """Rectified flow's straight interpolation x_t = t x_1 + (1 - t) x_0 (conditional OT with sigma_min = 0)."""

    name = "rectified"

    def __init__(self):
        super().__init__(0.0)


class VPPath(_AffinePath):
    """The variance-preserving path of a diffusion model run backwards in time: with s = 1 - t,
    a_t = alpha_s and b_t = sigma_s of the diffusion chapter's linear schedule
    (:class:`genlib.models.diffusion.Schedule`, ``vp_linear``), alpha_s = exp(-B(s) / 2),
    B(s) = beta_min s + (beta_max - beta_min) s^2 / 2."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.schedule = Schedule("vp_linear", beta_min=beta_min, beta_max=beta_max, t_min=0.0)

    def coefficients(self, t):
        s = 1 - torch.as_tensor(t)
        a = self.schedule.alpha(s)
        b = self.schedule.sigma(s).clamp_min(1e-6)
        da = 0.5 * self.schedule.beta(s) * a  # d/dt = -d/ds, and d alpha_s / ds = -beta(s) alpha_s / 2
        db = -a * da / b  # from a^2 + b^2 = 1
        return a, b, da, db


def make_path(name: str = "cond_ot", sigma_min: float = 1e-4, beta_min: float = 0.1, beta_max: float = 20.0):
    """A probability path by name: 'cond_ot', 'rectified' or 'vp'."""
    check_choice("path", name, PATHS)
    if name == "cond_ot":
        return CondOTPath(sigma_min)
    if name == "rectified":
        return StraightPath()
    return VPPath(beta_min, beta_max)


# ------------------------------------------------------------------------------------------ couplings


def _check_pair(x0: torch.Tensor, x1: torch.Tensor) -> None:
    check_tensor("x0", x0)
    check_tensor("x1", x1)
    if x0.shape != x1.shape:
        raise ValueError(f"x0, x1: expected the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")


def transport_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Mean squared distance between paired rows: ``(1/B) sum_i |x1_i - x0_i|^2``."""
    _check_pair(x0, x1)
    return float(((x1 - x0) ** 2).flatten(1).sum(1).mean())


def couple(x0: torch.Tensor, x1: torch.Tensor, coupling: str = "ot", reg: float = 0.05,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair a batch of source points with a batch of data points.

    - ``'independent'``: keep the given (random) pairing;
    - ``'ot'``: the exact optimal assignment for squared Euclidean cost (POT's ``ot.emd``), returned as
      (x0, x1 permuted);
    - ``'sinkhorn'``: B pairs drawn from the entropic plan (POT's ``ot.sinkhorn``, regularisation ``reg``
      relative to the largest cost).
    """
    check_choice("coupling", coupling, COUPLINGS)
    _check_pair(x0, x1)
    if coupling == "independent":
        return x0, x1
    import ot

    n = x0.shape[0]
    cost = torch.cdist(x0.detach().flatten(1).double(), x1.detach().flatten(1).double()).pow(2).cpu().numpy()
    w = np.full(n, 1.0 / n)
    if coupling == "ot":
        plan = ot.emd(w, w, cost, numItermax=1_000_000)
        perm = torch.from_numpy(plan.argmax(1)).to(x1.device)
        return x0, x1[perm]
    check_positive_float("reg", reg)
    plan = ot.sinkhorn(w, w, cost / cost.max(), reg, numItermax=2000)
    p = torch.from_numpy(plan).flatten().float()
    p = p / p.sum()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flat = torch.multinomial(p.to(gen_device), n, replacement=True, generator=generator).to(x0.device)
    return x0[flat // n], x1[flat % n]


# ------------------------------------------------------------------------------------------ the model


class FlowMatching(Generative):
    """A flow-matching model: a velocity field v_theta(t, x) trained by conditional flow matching.

    Data live in R^dim (``shape`` gives the shape of one data point, e.g. ``(1, 8, 8)``); the network works
    on ``(x - shift) / scale``, flattened. ``source`` is p_0 (default N(0, I)); ``coupling`` pairs each
    minibatch of source and data points; ``steps``/``method`` are the default sampler. ``t_power`` p draws the
    training times as t = u^p, u uniform: p > 1 spends more of the training on the source end t = 0.
    """

    def __init__(
        self,
        dim: int = 2,
        *,
        hidden: int = 128,
        depth: int = 3,
        time_embed_dim: int = 32,
        time_scale: float = 100.0,
        activation: str = "silu",
        net: nn.Module | None = None,
        path: str = "cond_ot",
        sigma_min: float = 1e-4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        coupling: str = "independent",
        reg: float = 0.05,
        source: nn.Module | str | None = None,
        shape: tuple[int, ...] | None = None,
        shift: float = 0.0,
        scale: float = 1.0,
        clamp: tuple[float, float] | None = None,
        steps: int = 100,
        method: str = "euler",
        t_power: float = 1.0,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.shape = tuple(shape) if shape is not None else (dim,)
        if math.prod(self.shape) != dim:
            raise ValueError(f"shape: expected {dim} elements in total, got {self.shape}")
        self.path = make_path(path, sigma_min, beta_min, beta_max)
        self.coupling = check_choice("coupling", coupling, COUPLINGS)
        self.reg = check_positive_float("reg", reg)
        self.net = net if net is not None else MLP(dim, dim, hidden, depth, activation, time_embed_dim, time_scale)
        if isinstance(source, str):  # a named source: the standard normal, or the eight Gaussians' exact law
            from ..data import eight_gaussians_density

            check_choice("source", source, ("gaussian", "eight_gaussians"))
            source = MixtureSource(eight_gaussians_density()) if source == "eight_gaussians" else None
        self.source = source if source is not None else GaussianSource(dim)
        if getattr(self.source, "dim", dim) != dim:
            raise ValueError(f"source: expected a distribution on R^{dim}, got dimension {self.source.dim}")
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(check_positive_float("scale", scale)))
        self.clamp = clamp
        self.steps = check_positive_int("steps", steps)
        self.method = check_choice("method", method, solvers.METHODS)
        self.t_power = check_positive_float("t_power", t_power)

    @property
    def base(self) -> nn.Module:
        """The base distribution of the map T (the source p_0)."""
        return self.source

    @torch.no_grad()
    def standardize(self, x: torch.Tensor) -> None:
        """Set the data scaling from a data set: shift = its mean, scale = its standard deviation (one scalar
        each; for latent codes, whose scale the model cannot know in advance)."""
        x = check_tensor("x", x, min_rows=2)
        self.shift.fill_(float(x.mean()))
        self.scale.fill_(float(x.std()))

    def networks(self) -> list[nn.Module]:
        """The velocity network ``net``, whatever module it is: each call of it is one network evaluation."""
        return [self.net]

    # -- data space <-> model space
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Data ``(B, *shape)`` to model space (B, dim)."""
        x = check_tensor("x", x, min_rows=1)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return ((x - self.shift) / self.scale).reshape(x.shape[0], self.dim)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Model space (B, dim) to data ``(B, *shape)``, clamped to the data range where one is set."""
        x = (y * self.scale + self.shift).reshape(y.shape[0], *self.shape)
        return x.clamp(*self.clamp) if self.clamp is not None else x

    # -- the field and the loss
    def velocity(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """v_theta(t, y) in model space; t a scalar or a (B,) tensor."""
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
        return self.net(y, t)

    def loss(self, x1: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Conditional flow matching: ``E_{t, (x_0, x_1)} |v_theta(t, x_t) - (da_t x_1 + db_t x_0)|^2 / dim``.

        x_0 is drawn from the source and paired with x_1 by the model's coupling, unless given (reflow pairs).
        t = u^p with u uniform and p = ``t_power``: the same minimiser, weighted by the density of t.
        """
        y1 = self.normalize(x1)
        if x0 is None:
            y0 = self.source.sample(y1.shape[0]).to(y1.dtype)
            y0, y1 = couple(y0, y1, self.coupling, self.reg)
        else:
            y0 = check_tensor("x0", x0, ndim=2, last_dim=self.dim)
        t = rand((y1.shape[0],), like=y1)
        if self.t_power != 1.0:
            t = t**self.t_power
        yt = self.path.interpolate(t, y0, y1)
        return ((self.velocity(t, yt) - self.path.target(t, y0, y1)) ** 2).mean()

    # -- sampling
    def transform(self, z: torch.Tensor, steps: int | None = None, method: str | None = None,
                  return_trajectory: bool = False):
        """The map T: source points z (B, dim) to data, by solving dy/dt = v_theta(t, y) from t = 0 to 1.

        With ``return_trajectory`` also returns the path in model space, shape (steps + 1, B, dim).
        """
        z = check_tensor("z", z, ndim=2, last_dim=self.dim)
        steps = self.steps if steps is None else check_positive_int("steps", steps)
        method = self.method if method is None else check_choice("method", method, solvers.METHODS)
        with torch.no_grad():
            out = solvers.odeint(self.velocity, z, 0.0, 1.0, steps, method, return_trajectory=return_trajectory)
        if return_trajectory:
            return self.denormalize(out[0]), out[1]
        return self.denormalize(out)

    def log_prob(self, x: torch.Tensor, steps: int = 32, method: str = "rk4", divergence: str = "exact",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact log-density of data x by the instantaneous change of variables through the ODE:
        log p_1(x) = log p_0(y_0) - int_0^1 div v_theta(t, y_t) dt, integrated backwards from t = 1."""
        if not callable(getattr(self.source, "log_prob", None)):
            raise ValueError(f"log_prob: this model's source ({type(self.source).__name__}) has no density, so "
                             "neither has the model; use a GaussianSource or a MixtureSource for log_prob")
        y = self.normalize(x)
        with torch.no_grad():  # an evaluation, never a training objective here: keep no graph
            lp = solvers.log_prob_ode(self.velocity, y, self.source.log_prob, steps, method,
                                      divergence_method=divergence, t_data=1.0, t_noise=0.0, generator=generator)
        return lp - self.dim * torch.log(self.scale)


# ------------------------------------------------------------------------------------------ reflow


def latent_flow_matching(vae: dict, **kwargs) -> Latent:
    """Flow matching on the codes of a VAE built from the arguments ``vae`` (its weights are loaded afterwards):
    a :class:`genlib.models.base.Latent` model whose samples are the decoded codes. ``kwargs`` go to
    :class:`FlowMatching` (``dim`` = the VAE's latent size)."""
    from .vae import VAE

    return Latent(FlowMatching(**kwargs), VAE(**vae))


def reflow_pairs(model: FlowMatching, n: int, steps: int = 100, method: str = "euler", batch_size: int = 10_000,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The coupling a trained model induces: (x_0, T(x_0)) for n source points x_0, with T solved accurately.

    Returns (x1 in data space, x0 in model space), ready for ``fit(new_model, (x1, x0))`` (rectification:
    a model trained on these pairs with the straight path has straighter trajectories).
    """
    if not isinstance(model, FlowMatching):
        raise TypeError(f"model: expected a FlowMatching model, got {type(model).__name__}")
    check_positive_int("n", n)
    x0 = model.source.sample(n, generator)
    x1 = torch.cat([model.transform(c, steps, method) for c in x0.split(batch_size)])
    return x1, x0


def curvature(traj: torch.Tensor) -> float:
    """How far an Euler trajectory (T + 1, B, ...) is from a straight line at constant speed:
    ``E sum_i h |(y_1 - y_0) - (y_{t_{i+1}} - y_{t_i}) / h|^2 / E |y_1 - y_0|^2``, equal steps h = 1 / T.

    Zero exactly when every path is straight and traversed at constant speed; one Euler step is then exact.
    """
    traj = check_tensor("traj", traj, min_rows=2)
    if traj.ndim < 3:
        raise ValueError(f"traj: expected shape (T + 1, B, ...), got {tuple(traj.shape)}")
    tr = traj.flatten(2).double()
    steps = tr.shape[0] - 1
    chord = tr[-1] - tr[0]
    vel = (tr[1:] - tr[:-1]) * steps
    dev = ((vel - chord) ** 2).sum(-1).mean(0)  # time average per path
    return float(dev.mean() / (chord**2).sum(-1).mean())


# ------------------------------------------------------------------------------------------ exact fields


def marginal_field(path: _AffinePath, mixture: IsotropicGaussianMixture) -> Callable:
    """The exact marginal velocity u_t(x) = E[da_t x_1 + db_t x_0 | x_t = x] for a N(0, I) source and an
    isotropic Gaussian mixture as the data: u_t(x) = da_t D + db_t (x - a_t D) / b_t, D = E[x_1 | x_t = x]."""
    if not isinstance(mixture, IsotropicGaussianMixture):
        raise TypeError(f"mixture: expected a genlib.data.IsotropicGaussianMixture, got {type(mixture).__name__}")

    def field(t, x):
        a, b, da, db = (float(c) for c in path.coefficients(torch.as_tensor(float(t), dtype=torch.float64)))
        d = mixture.denoiser(x, a, b)
        return da * d + db * (x - a * d) / b

    return field
