"""Diffusion models and score-based generative modelling.

Time runs from data (t = 0) to noise (t = 1): ``x_t = alpha_t x_0 + sigma_t eps`` with eps ~ N(0, I).
The module reads top to bottom like the chapter:

1. noise schedules (:class:`Schedule`): variance preserving (VP) with linear or cosine betas, and
   variance exploding (VE) with geometric sigmas; the forward process q(x_t | x_0) and its SDE
   coefficients ``dX = f(t) X dt + g(t) dW``;
2. the three things a network may predict (the noise, the score, the clean point) and the
   conversions between them;
3. the model :class:`Diffusion`: a network plus a schedule, with the denoising score matching loss
   and its weighting;
4. samplers, all built on :mod:`genlib.solvers`: ancestral DDPM, the reverse SDE (Euler-Maruyama),
   the probability-flow ODE (Euler, Heun), DDIM with any number of steps, annealed Langevin and a
   predictor-corrector sampler. Each is a deterministic map of the model's base draw (``base_for``), which
   holds the starting noise and every step's noise.

Any noise predictor can be plugged in, for example :class:`ExactMixtureScore`, the exact score of
a noised Gaussian mixture, so that the samplers can be checked without learning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import solvers
from .._util import NoiseTape, check_choice, check_positive_float, check_positive_int, check_tensor, randn
from ..nn import MLP
from .base import Generative, Noise, gaussian_log_prob

__all__ = [
    "SCHEDULES",
    "PREDICTIONS",
    "WEIGHTINGS",
    "SAMPLERS",
    "SPACINGS",
    "Schedule",
    "convert",
    "Diffusion",
    "DenoiserMLP",
    "diffusion_model",
    "ExactMixtureScore",
    "q_sample",
    "ddpm_betas",
    "iterate_forward",
]

SCHEDULES = ("vp_linear", "vp_cosine", "ve")
PREDICTIONS = ("eps", "score", "x0")
WEIGHTINGS = ("eps", "score", "x0")
SAMPLERS = ("ddpm", "sde", "ode", "ddim", "langevin", "pc")
SPACINGS = ("uniform", "quadratic", "logsnr")


# ----------------------------------------------------------------------------------- 1. schedules


class Schedule(nn.Module):
    """A noise schedule: ``alpha(t)``, ``sigma(t)`` for t in [0, 1] and the forward SDE's f(t), g(t)^2.

    - ``vp_linear``: beta(t) = beta_min + t (beta_max - beta_min), alpha_t = exp(-1/2 int_0^t beta),
      sigma_t^2 = 1 - alpha_t^2 (the continuous limit of DDPM's linear betas);
    - ``vp_cosine``: alpha_t^2 = cos^2(pi/2 (t tau + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)) (Nichol and
      Dhariwal); tau < 1 stops the clock where alpha_1 = ``alpha_end`` to avoid the singularity at alpha = 0;
    - ``ve``: alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t (geometric sigmas, NCSN).

    For x_t = alpha_t x_0 + sigma_t eps the forward SDE has f(t) = d log alpha_t / dt and
    g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2.
    """

    def __init__(self, kind: str = "vp_linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 sigma_min: float = 0.01, sigma_max: float = 10.0, cosine_s: float = 0.008,
                 alpha_end: float = 0.005, t_min: float | None = None):
        super().__init__()
        self.kind = check_choice("kind", kind, SCHEDULES)
        self.beta_min = check_positive_float("beta_min", beta_min)
        self.beta_max = check_positive_float("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max: expected >= beta_min = {beta_min}, got {beta_max}")
        self.sigma_min = check_positive_float("sigma_min", sigma_min)
        self.sigma_max = check_positive_float("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max: expected > sigma_min = {sigma_min}, got {sigma_max}")
        self.cosine_s = check_positive_float("cosine_s", cosine_s)
        self.alpha_end = check_positive_float("alpha_end", alpha_end)
        u0 = math.pi / 2 * self.cosine_s / (1 + self.cosine_s)
        u1 = math.acos(self.alpha_end * math.cos(u0))
        self.cosine_tau = u1 * 2 * (1 + self.cosine_s) / math.pi - self.cosine_s
        self._cos_u0 = math.cos(u0)
        if t_min is None:
            t_min = 0.0 if kind == "ve" else 1e-3
        self.t_min = check_positive_float("t_min", t_min, allow_zero=True)
        if self.t_min >= 1:
            raise ValueError(f"t_min: expected a time in [0, 1), got {t_min}")

    def extra_repr(self) -> str:
        if self.kind == "ve":
            return f"ve, sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
        if self.kind == "vp_linear":
            return f"vp_linear, beta_min={self.beta_min}, beta_max={self.beta_max}"
        return f"vp_cosine, s={self.cosine_s}, alpha_end={self.alpha_end}"

    @staticmethod
    def _t(t) -> torch.Tensor:
        t = torch.as_tensor(t)
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())

    def _cos_u(self, t):
        return (math.pi / 2) * (t * self.cosine_tau + self.cosine_s) / (1 + self.cosine_s)

    def log_alpha(self, t) -> torch.Tensor:
        t = self._t(t)
        if self.kind == "ve":
            return torch.zeros_like(t)
        if self.kind == "vp_linear":
            return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        return torch.log(torch.cos(self._cos_u(t))) - math.log(self._cos_u0)

    def alpha(self, t) -> torch.Tensor:
        """The signal scale alpha_t."""
        return self.log_alpha(t).exp()

    def sigma(self, t) -> torch.Tensor:
        """The noise scale sigma_t."""
        t = self._t(t)
        if self.kind == "ve":
            return self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return (-torch.expm1(2 * self.log_alpha(t))).clamp_min(1e-20).sqrt()

    def f(self, t) -> torch.Tensor:
        """Drift coefficient of the forward SDE: f(t) = d log alpha_t / dt (the drift is f(t) x)."""
        t = self._t(t)
        if self.kind == "ve":
            return torch.zeros_like(t)
        return -0.5 * self.beta(t)

    def beta(self, t) -> torch.Tensor:
        """The VP noise rate beta(t) = -2 d log alpha_t / dt (zero for VE)."""
        t = self._t(t)
        if self.kind == "ve":
            return torch.zeros_like(t)
        if self.kind == "vp_linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        du = (math.pi / 2) * self.cosine_tau / (1 + self.cosine_s)
        return 2 * du * torch.tan(self._cos_u(t))

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion coefficient of the forward SDE: g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2."""
        t = self._t(t)
        if self.kind == "ve":
            return 2 * math.log(self.sigma_max / self.sigma_min) * self.sigma(t) ** 2
        return self.beta(t)

    def prior_std(self) -> float:
        """Standard deviation of the base noise N(0, sigma_1^2 I) (1 for VP, sigma_max for VE)."""
        return 1.0 if self.kind != "ve" else self.sigma_max

    def time_of_sigma(self, sigma: float) -> float:
        """The time t at which sigma_t = sigma (VE only)."""
        if self.kind != "ve":
            raise ValueError("time_of_sigma: defined for the VE schedule only")
        return math.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def log_snr(self, t) -> torch.Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2), decreasing in t."""
        return 2 * (self.log_alpha(t) - torch.log(self.sigma(t)))

    def grid(self, steps: int, like: torch.Tensor | None = None, spacing: str = "uniform") -> torch.Tensor:
        """steps + 1 times from 1 down to t_min (float64).

        spacing 'uniform' (in t; for VE that is uniform in log sigma), 'quadratic' (t_min + (1 - t_min) u^2,
        denser near the data) or 'logsnr' (uniform in lambda_t = log alpha_t^2 / sigma_t^2).
        """
        check_positive_int("steps", steps)
        check_choice("spacing", spacing, SPACINGS)
        u = solvers.time_grid(1.0, 0.0, steps)
        if spacing == "uniform":
            ts = self.t_min + (1 - self.t_min) * u
        elif spacing == "quadratic":
            ts = self.t_min + (1 - self.t_min) * u**2
        else:
            fine = torch.linspace(self.t_min, 1.0, 20001, dtype=torch.float64)
            lam = self.log_snr(fine)  # decreasing
            target = lam[-1] + (lam[0] - lam[-1]) * (1 - u)
            idx = torch.searchsorted(-lam, -target).clamp(1, fine.numel() - 1)
            w = (target - lam[idx - 1]) / (lam[idx] - lam[idx - 1])
            ts = (fine[idx - 1] + w * (fine[idx] - fine[idx - 1])).clamp(self.t_min, 1.0)
            ts[0], ts[-1] = 1.0, self.t_min
        return ts.to(like.device) if like is not None else ts


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row (or scalar) coefficient against x of shape (B, ...)."""
    v = torch.as_tensor(v, device=x.device, dtype=x.dtype)
    return v.reshape(-1, *([1] * (x.ndim - 1))) if v.ndim else v


def q_sample(schedule: Schedule, x0: torch.Tensor, t, eps: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) by reparameterisation (t a scalar or one per row)."""
    check_tensor("x0", x0)
    if eps is None:
        eps = randn(x0.shape, like=x0, generator=generator)
    t = torch.as_tensor(t, device=x0.device, dtype=x0.dtype)
    return _col(schedule.alpha(t), x0) * x0 + _col(schedule.sigma(t), x0) * eps


def ddpm_betas(steps: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """DDPM's discrete linear betas beta_1..beta_T (Ho et al.), float64."""
    check_positive_int("steps", steps)
    return torch.linspace(beta_1, beta_T, steps, dtype=torch.float64)


def iterate_forward(x0: torch.Tensor, betas: torch.Tensor, generator: torch.Generator | None = None,
                    return_trajectory: bool = False):
    """Run the Markov chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) eps_i step by step."""
    check_tensor("x0", x0)
    x = x0
    traj = [x]
    for b in betas.tolist():
        x = math.sqrt(1 - b) * x + math.sqrt(b) * randn(x.shape, like=x, generator=generator)
        if return_trajectory:
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


# ------------------------------------------------------------------------------ 2. parameterisations


def convert(value: torch.Tensor, frm: str, to: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Convert a prediction at x = alpha x_0 + sigma eps between 'eps', 'score' and 'x0'.

    score = -eps / sigma (the score of q(x_t | x_0) is -(x - alpha x_0)/sigma^2, Tweedie in mean),
    x0 = (x - sigma eps) / alpha. alpha and sigma are scalars or one per row.
    """
    check_choice("frm", frm, PREDICTIONS)
    check_choice("to", to, PREDICTIONS)
    a, s = _col(alpha, x), _col(sigma, x)
    if frm == "eps":
        eps = value
    elif frm == "score":
        eps = -s * value
    else:
        eps = (x - a * value) / s
    if to == "eps":
        return eps
    if to == "score":
        return -eps / s
    return (x - s * eps) / a


# -------------------------------------------------------------------------------------- networks


class DenoiserMLP(nn.Module):
    """A time-conditioned MLP ``net(x, t)`` for vectors (B, d): the sinusoidal embedding of t is
    concatenated to the input (see :class:`genlib.nn.MLP`)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_embed_dim: int = 32,
                 activation: str = "silu", time_scale: float = 1000.0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.mlp = MLP(dim, dim, hidden=hidden, depth=depth, activation=activation,
                       time_embed_dim=time_embed_dim, time_scale=time_scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.mlp(x.reshape(shape[0], -1), t).reshape(shape)


class ExactMixtureScore(nn.Module):
    """The exact score of a Gaussian mixture noised by a schedule: ``net(x, t)`` for a scalar t.

    Plug it into :class:`Diffusion` with ``prediction="score"`` (and ``data_std=None``) to run any
    sampler with the true score instead of a learned one.
    """

    def __init__(self, mixture, schedule: Schedule):
        super().__init__()
        self.mixture = mixture
        self.schedule = schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.numel() != 1:
            raise ValueError(f"t: ExactMixtureScore takes one time per call, got shape {tuple(t.shape)}")
        a, s = float(self.schedule.alpha(t.double())), float(self.schedule.sigma(t.double()))
        return self.mixture.noised(a, s).score(x)


# ----------------------------------------------------------------------------------------- model


class Diffusion(Generative):
    """A diffusion model: a schedule and a network ``net(x_in, t)`` predicting the noise, the score or x_0.

    With ``data_std`` the network sees x_t / sqrt(alpha_t^2 data_std^2 + sigma_t^2), an input of
    roughly unit scale at every t (essential for VE, where sigma_t reaches sigma_max).
    ``sampler`` and ``steps`` set what :meth:`sample` does by default. ``t_power`` p draws the training times
    as t = t_min + (1 - t_min) u^p, u ~ U(0, 1): p > 1 spends more of the budget near the data.

    The model owns its data space: data of shape ``data_shape`` are mapped to the network's flat space by
    ``(x - shift) / scale`` (digits: 0..16 to [-1, 1]) and samples come back in data units, clamped to
    ``clamp`` where one is set. The base of the default sampler holds all of its randomness: the starting
    noise and, for a stochastic sampler, every step's noise (``base_for``).
    """

    def __init__(self, net: nn.Module, schedule: Schedule | None = None, prediction: str = "eps",
                 weighting: str = "eps", data_std: float | None = 1.0, sampler: str = "sde", steps: int = 100,
                 spacing: str = "uniform", denoise: bool = True, t_power: float = 1.0,
                 data_shape: tuple[int, ...] | None = None, shift: float = 0.0, scale: float = 1.0,
                 clamp: tuple[float, float] | None = None):
        super().__init__()
        self.net = net
        self.schedule = schedule if schedule is not None else Schedule()
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.data_std = None if data_std is None else check_positive_float("data_std", data_std)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.steps = check_positive_int("steps", steps)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.denoise = bool(denoise)
        self.t_power = check_positive_float("t_power", t_power)
        self.dim = getattr(net, "dim", 2)
        self.data_shape = tuple(data_shape) if data_shape is not None else self._shape()
        if math.prod(self.data_shape) != math.prod(self._shape()):
            raise ValueError(f"data_shape: expected {math.prod(self._shape())} elements, got {self.data_shape}")
        self.register_buffer("shift", torch.tensor(float(shift)), persistent=False)
        self.register_buffer("scale", torch.tensor(check_positive_float("scale", scale)), persistent=False)
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        self.register_buffer("_anchor", torch.zeros(()))  # carries the device when the net has no parameters

    def networks(self) -> list[nn.Module]:
        """The network ``net``, whatever module it is (an MLP, or a plugged-in exact score): each call of it is
        one network evaluation."""
        return [self.net]

    # --- the network in each parameterisation
    def _coefs(self, x: torch.Tensor, t):
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        return t, self.schedule.alpha(t), self.schedule.sigma(t)

    def predict(self, x: torch.Tensor, t, to: str = "eps") -> torch.Tensor:
        """The network's prediction at (x_t, t) converted to 'eps', 'score' or 'x0' (one network evaluation)."""
        t, a, s = self._coefs(x, t)
        x_in = x
        if self.data_std is not None:
            x_in = x / _col(torch.sqrt(a**2 * self.data_std**2 + s**2), x)
        return convert(self.net(x_in, t), self.prediction, to, x, a, s)

    def eps(self, x, t):
        """Predicted noise eps_theta(x_t, t)."""
        return self.predict(x, t, "eps")

    def score(self, x, t):
        """Predicted score s_theta(x_t, t) = -eps_theta / sigma_t."""
        return self.predict(x, t, "score")

    def x0(self, x, t):
        """Predicted clean point x_theta(x_t, t) (the denoiser, Tweedie's posterior mean)."""
        return self.predict(x, t, "x0")

    # --- training
    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Denoising score matching: ``E_t E_eps w(t) |eps_theta(x_t, t) - eps|^2`` with t ~ U(t_min, 1).

        weighting 'eps' (w = 1, DDPM's simple loss = sigma^2-weighted score matching), 'score'
        (w = 1 / sigma^2: the plain score error) or 'x0' (w = alpha^2 / sigma^2: the error of x_0).
        With ``t_power`` p != 1, t = t_min + (1 - t_min) u^p: the same minimiser, a weighting by the density of t
        (for p > 1 decreasing in t, so the small noise levels, where the ODE samplers are most sensitive, get more).
        """
        x0 = self.normalize(x0)
        tm = self.schedule.t_min
        t = tm + (1 - tm) * torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype) ** self.t_power
        eps = torch.randn_like(x0)
        xt = q_sample(self.schedule, x0, t, eps)
        err = ((self.eps(xt, t) - eps) ** 2).flatten(1).sum(1)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        if self.weighting == "score":
            err = err / s**2
        elif self.weighting == "x0":
            err = err * a**2 / s**2
        return err.mean()

    # --- data space <-> the network's space
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Data ``(B, *data_shape)`` to the network's space ``(B, *net_shape)``: ``(x - shift) / scale``."""
        x = check_tensor("x", x)
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        return ((x - self.shift) / self.scale).reshape(x.shape[0], *self._shape())

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """The network's space back to data units ``(B, *data_shape)``, clamped where the model sets a range.
        Works on trajectories too (any leading dimensions)."""
        lead = y.shape[: y.ndim - len(self._shape())]
        x = (y * self.scale + self.shift).reshape(*lead, *self.data_shape)
        return x.clamp(*self.clamp) if self.clamp is not None else x

    # --- sampling
    def _shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.net, "event_shape", (self.dim,)))

    def _grid(self, steps: int, like: torch.Tensor, spacing: str) -> torch.Tensor:
        return self.schedule.grid(steps, like=like, spacing=spacing)

    def _finish(self, x: torch.Tensor, t_end) -> torch.Tensor:
        return self.x0(x, t_end) if self.denoise else x

    def _settings(self, sampler, steps, spacing):
        sampler = check_choice("sampler", sampler if sampler is not None else self.sampler, SAMPLERS)
        steps = check_positive_int("steps", steps if steps is not None else self.steps)
        spacing = check_choice("spacing", spacing if spacing is not None else self.spacing, SPACINGS)
        return sampler, steps, spacing

    def noise_draws(self, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
                    **options) -> int:
        """How many fresh noise draws (each of the data's shape) a sampler takes after its starting point."""
        sampler, steps, spacing = self._settings(sampler, steps, spacing)
        if sampler == "ode" or (sampler == "ddim" and not options.get("eta", 0.0)):
            return 0
        if sampler in ("ddpm", "sde", "ddim"):
            return steps - 1
        if sampler == "pc":
            return (steps - 1) * (1 + options.get("corrector_steps", 1))
        grid = self._grid(steps, self._anchor, spacing)
        levels = len({float(self.schedule.sigma(t)) for t in grid})
        return levels * options.get("steps_per_level", 10)

    def base_for(self, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
                 **options) -> Noise:
        """The base of a sampler: N(0, I) of the network's shape for a deterministic one (the ODE, DDIM with eta 0),
        else a tensor ``(n, 1 + K, *shape)`` of the starting noise and the K step noises it draws."""
        k = self.noise_draws(sampler, steps, spacing, **options)
        shape = self._shape() if k == 0 else (1 + k, *self._shape())
        return Noise(("normal", shape)).to(self.device)

    @property
    def base(self) -> Noise:
        """The base of the default sampler (``sampler``, ``steps``)."""
        return self.base_for()

    @torch.no_grad()
    def transform(self, noise: torch.Tensor, sampler: str | None = None, steps: int | None = None,
                  spacing: str | None = None, return_trajectory: bool = False, **options):
        """The sampler as a deterministic map of its base draw (``base_for(sampler, steps, ...)``): a sampler
        ('ddpm', 'sde', 'ode', 'ddim', 'langevin', 'pc'; default the model's), a number of steps and a time
        spacing ('uniform', 'quadratic', 'logsnr').

        The first noise, scaled by sigma_1, is the starting point x_1; a stochastic sampler reads its step noises
        from the rest in order. Returns data ``(B, *data_shape)``; with ``return_trajectory`` also the states on the
        time grid in the network's space, shape (steps + 1, B, ...) (``denormalize`` maps them to data). Options
        go to the sampler (``method`` for 'ode', ``eta`` for 'ddim', ``corrector_steps`` and ``snr`` for 'pc',
        ``steps_per_level`` and ``eps`` for 'langevin').
        """
        sampler, steps, spacing = self._settings(sampler, steps, spacing)
        noise = self.base_for(sampler, steps, spacing, **options).split(noise)[0].to(self.device)
        k = self.noise_draws(sampler, steps, spacing, **options)
        x1 = self.schedule.prior_std() * (noise if k == 0 else noise[:, 0])
        tape = None if k == 0 else NoiseTape(noise[:, 1:])
        fn = {"ddpm": self._ddpm, "sde": self._sde, "ode": self._ode, "ddim": self._ddim,
              "langevin": self._langevin, "pc": self._pc}[sampler]
        x, traj = fn(x1, self._grid(steps, x1, spacing), tape, **options)
        if tape is not None and tape.remaining:
            raise RuntimeError(f"noise: the {sampler} sampler left {tape.remaining} of its draws unread")
        x = self.denormalize(x)
        return (x, traj) if return_trajectory else x

    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, spacing: str | None = None, return_trajectory: bool = False, **options):
        """n samples in data units: ``transform(base_for(sampler, steps, ...).sample(n), sampler, steps, ...)``."""
        check_positive_int("n", n)
        noise = self.base_for(sampler, steps, spacing, **options).sample(n, generator)
        return self.transform(noise, sampler, steps, spacing, return_trajectory, **options)

    def log_prob(self, x: torch.Tensor, steps: int = 32, method: str = "rk4") -> torch.Tensor:
        """Exact log-density of the *probability-flow ODE's* distribution (the deterministic sampler's, not the
        reverse SDE's) at data x, by the instantaneous change of variables from t_min to t = 1
        (:func:`genlib.solvers.log_prob_ode` with the exact divergence; base N(0, sigma_1^2 I))."""
        y = self.normalize(x).to(self.device).reshape(x.shape[0], -1)
        s1 = self.schedule.prior_std()
        d = y.shape[1]

        def base(v):
            return gaussian_log_prob(v, logvar=2 * math.log(s1))

        with torch.no_grad():
            lp = solvers.log_prob_ode(self._drift_ode, y, base, steps=steps, method=method,
                                      t_data=float(self.schedule.t_min), t_noise=1.0)
        return lp - d * torch.log(self.scale)

    def _drift_ode(self, t, x):
        return _col(self.schedule.f(t), x) * x - 0.5 * _col(self.schedule.g2(t), x) * self.score(x, t)

    def _ode(self, x1, grid, generator=None, method: str = "heun"):
        check_choice("method", method, ("euler", "heun"))
        x, traj = solvers.odeint(self._drift_ode, x1, ts=grid, method=method, return_trajectory=True)
        x = self._finish(x, grid[-1])
        return x, torch.cat([traj[:-1], x[None]])

    def _sde(self, x1, grid, generator=None):
        sched = self.schedule

        def drift(t, x):
            return _col(sched.f(t), x) * x - _col(sched.g2(t), x) * self.score(x, t)

        x, traj = solvers.sdeint(drift, lambda t: sched.g2(t).sqrt(), x1, ts=grid, generator=generator,
                                 return_trajectory=True, final_noise=False)
        x = self._finish(x, grid[-1])
        return x, torch.cat([traj[:-1], x[None]])

    def _posterior(self, t, s):
        """Coefficients of q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, var) for s < t."""
        sched = self.schedule
        a_t, s_t, a_s, s_s = sched.alpha(t), sched.sigma(t), sched.alpha(s), sched.sigma(s)
        a_ts = a_t / a_s
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
        c_t = a_ts * s_s**2 / s_t**2
        c_0 = a_s * var_ts / s_t**2
        return c_t, c_0, var_ts * s_s**2 / s_t**2

    def _ddpm(self, x1, grid, generator=None):
        """Ancestral sampling: x_s ~ q(x_s | x_t, x_0 = x_theta(x_t, t)) down the grid; no noise at the last step."""
        steps = grid.numel() - 1
        grid = grid.to(x1.dtype)
        x, traj = x1, [x1]
        for i in range(steps):
            t, s = grid[i], grid[i + 1]
            c_t, c_0, var = self._posterior(t, s)
            x = c_t * x + c_0 * self.x0(x, t)
            if i < steps - 1:
                x = x + var.sqrt() * randn(x.shape, like=x, generator=generator)
            traj.append(x)
        x = self._finish(x, grid[-1])
        traj[-1] = x
        return x, torch.stack(traj)

    def _ddim(self, x1, grid, generator=None, eta: float = 0.0):
        """DDIM: x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z with c = eta * (ancestral std)."""
        eta = check_positive_float("eta", eta, allow_zero=True)
        sched = self.schedule
        steps = grid.numel() - 1
        grid = grid.to(x1.dtype)
        x, traj = x1, [x1]
        for i in range(steps):
            t, s = grid[i], grid[i + 1]
            eps = self.eps(x, t)
            x0 = (x - sched.sigma(t) * eps) / sched.alpha(t)
            c = eta * self._posterior(t, s)[2].sqrt() if i < steps - 1 else torch.zeros((), device=x.device)
            x = sched.alpha(s) * x0 + (sched.sigma(s) ** 2 - c**2).clamp_min(0).sqrt() * eps
            if eta > 0 and i < steps - 1:
                x = x + c * randn(x.shape, like=x, generator=generator)
            traj.append(x)
        x = self._finish(x, grid[-1])
        traj[-1] = x
        return x, torch.stack(traj)

    def _langevin(self, x1, grid, generator=None, steps_per_level: int = 10, eps: float = 2e-5):
        """Annealed Langevin dynamics (NCSN) on the steps + 1 noise levels sigma_t of the time grid; VE only."""
        sched = self.schedule
        if sched.kind != "ve":
            raise ValueError("sampler: 'langevin' needs a VE schedule (noise levels x + sigma eps)")
        sigmas = [float(sched.sigma(t)) for t in grid[:-1]] + [float(sched.sigma(grid[-1]))]
        sigmas = sorted(set(sigmas), reverse=True)
        traj = [x1]
        x = x1
        for s in sigmas:  # one level at a time so that the chain can be shown
            x = solvers.annealed_langevin(lambda y, sig: self.score(y, sched.time_of_sigma(sig)), x, [s],
                                          steps_per_level=steps_per_level, eps=eps * (s / sigmas[-1]) ** 2,
                                          generator=generator)
            traj.append(x)
        x = self._finish(x, grid[-1])
        traj[-1] = x
        return x, torch.stack(traj)

    def _pc(self, x1, grid, generator=None, corrector_steps: int = 1, snr: float = 0.1):
        """Predictor-corrector: one reverse-SDE Euler-Maruyama step, then Langevin corrector steps with
        step size 2 (snr sigma_t alpha_t)^2 at the new time (Song et al., 2021)."""
        check_positive_int("corrector_steps", corrector_steps, minimum=0)
        snr = check_positive_float("snr", snr)
        sched = self.schedule

        def drift(t, x):
            return _col(sched.f(t), x) * x - _col(sched.g2(t), x) * self.score(x, t)

        steps = grid.numel() - 1
        x, traj = x1, [x1]
        for i in range(steps):
            x = solvers.sdeint(drift, lambda t: sched.g2(t).sqrt(), x, ts=grid[i:i + 2], generator=generator,
                               final_noise=i < steps - 1)
            if corrector_steps and i < steps - 1:
                s = grid[i + 1].to(x.dtype)
                tau = 2 * float(snr * sched.sigma(s) * sched.alpha(s)) ** 2
                x = solvers.langevin(lambda y, s=s: self.score(y, s), x, tau, corrector_steps, generator=generator)
            traj.append(x)
        x = self._finish(x, grid[-1])
        traj[-1] = x
        return x, torch.stack(traj)


def diffusion_model(dim: int = 2, hidden: int = 128, depth: int = 3, time_embed_dim: int = 32,
                    time_scale: float = 1000.0, schedule: str = "vp_linear", schedule_args: dict | None = None,
                    **options) -> Diffusion:
    """A :class:`Diffusion` model with a :class:`DenoiserMLP` on vectors of size `dim` and a :class:`Schedule`
    (``schedule`` and ``schedule_args``); the other keyword arguments go to :class:`Diffusion`."""
    sched = Schedule(schedule, **(schedule_args or {}))
    net = DenoiserMLP(dim, hidden, depth, time_embed_dim=time_embed_dim, time_scale=time_scale)
    return Diffusion(net, sched, **options)
