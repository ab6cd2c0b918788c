"""ODE, SDE and Langevin solvers shared by every family.

One Euler, Heun or RK4 step serves the continuous normalizing flow, the probability-flow ODE of
diffusion and flow matching alike. A state is a tensor or a tuple of tensors (for example a
sample and its running log-density). Vector fields are called as ``f(t, x)`` with ``t`` a 0-d
tensor on the state's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._util import check_choice, check_positive_float, check_positive_int, check_tensor, gaussian_log_prob, rand, randn

__all__ = [
    "SolverDiverged",
    "METHODS",
    "NFE_PER_STEP",
    "time_grid",
    "odeint",
    "sdeint",
    "langevin",
    "annealed_langevin",
    "mala",
    "divergence",
    "log_prob_ode",
]

State = torch.Tensor | tuple[torch.Tensor, ...]
METHODS = ("euler", "heun", "rk4")
NFE_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


class SolverDiverged(FloatingPointError):
    """A solver's state became NaN or infinite: the field (or score) blows up there, or the step is too large."""


def _check_state(solver: str, x: State, i: int, n: int, t=None) -> None:
    """Raise SolverDiverged naming the step if any entry of the state is not finite."""
    if all(bool(torch.isfinite(part).all()) for part in (x if isinstance(x, tuple) else (x,))):
        return
    at = f" (t = {float(t):.4g})" if t is not None else ""
    raise SolverDiverged(f"{solver}: the state became NaN or infinite at step {i + 1} of {n}{at}; the field blows up "
                         "there or the step is too large")


def _map(fn, *states):
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states, strict=True))
    return fn(*states)


def _axpy(x: State, h, k: State) -> State:
    return _map(lambda a, b: a + h * b, x, k)


def _first(x: State) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def time_grid(t0: float, t1: float, steps: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """steps + 1 equally spaced times from t0 to t1 (float64 unless `like` says otherwise), on like's device."""
    check_positive_int("steps", steps)
    device = like.device if like is not None else None
    return torch.linspace(float(t0), float(t1), steps + 1, device=device, dtype=torch.float64)


def _as_grid(ts, t0, t1, steps, x: torch.Tensor) -> torch.Tensor:
    if ts is None:
        return time_grid(t0, t1, steps, like=x)
    ts = torch.as_tensor(ts, dtype=torch.float64, device=x.device).flatten()
    if ts.numel() < 2:
        raise ValueError(f"ts: expected at least two times, got {ts.numel()}")
    return ts


def odeint(
    f: Callable[[torch.Tensor, State], State],
    x0: State,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 100,
    method: str = "euler",
    ts: Sequence[float] | torch.Tensor | None = None,
    return_trajectory: bool = False,
):
    """Integrate dx/dt = f(t, x) from t0 to t1 with fixed steps (or over the grid `ts`).

    Returns the final state, or (final state, trajectory) where the trajectory stacks the first
    tensor of the state at every grid time: shape ``(len(ts), *x.shape)``. Network evaluations cost
    ``NFE_PER_STEP[method]`` per step.
    """
    check_choice("method", method, METHODS)
    for part in (x0 if isinstance(x0, tuple) else (x0,)):
        check_tensor("x0", part, min_rows=0)
    grid = _as_grid(ts, t0, t1, steps, _first(x0))
    dtype = _first(x0).dtype
    x = x0
    traj = [_first(x)] if return_trajectory else None
    for i in range(grid.numel() - 1):
        t = grid[i].to(dtype)
        h = (grid[i + 1] - grid[i]).to(dtype)
        if method == "euler":
            x = _axpy(x, h, f(t, x))
        elif method == "heun":
            k1 = f(t, x)
            k2 = f(t + h, _axpy(x, h, k1))
            x = _map(lambda a, b, c, h=h: a + 0.5 * h * (b + c), x, k1, k2)
        else:
            k1 = f(t, x)
            k2 = f(t + h / 2, _axpy(x, h / 2, k1))
            k3 = f(t + h / 2, _axpy(x, h / 2, k2))
            k4 = f(t + h, _axpy(x, h, k3))
            x = _map(lambda a, b, c, d, e, h=h: a + h / 6 * (b + 2 * c + 2 * d + e), x, k1, k2, k3, k4)
        _check_state("odeint", x, i, grid.numel() - 1, grid[i + 1])
        if traj is not None:
            traj.append(_first(x))
    if traj is not None:
        return x, torch.stack(traj)
    return x


def sdeint(
    drift: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: Callable[[torch.Tensor], torch.Tensor | float],
    x0: torch.Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 100,
    ts: Sequence[float] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    final_noise: bool = True,
):
    """Euler-Maruyama for dX = drift(t, X) dt + diffusion(t) dW from t0 to t1 (t1 < t0 integrates backwards).

    With ``final_noise=False`` the last step adds no noise (the usual choice when the SDE ends on
    the data). Returns the final state, or (final state, trajectory of shape ``(steps + 1, *x.shape)``).
    """
    check_tensor("x0", x0)
    grid = _as_grid(ts, t0, t1, steps, x0)
    x = x0
    traj = [x] if return_trajectory else None
    n = grid.numel() - 1
    for i in range(n):
        t = grid[i].to(x.dtype)
        h = (grid[i + 1] - grid[i]).to(x.dtype)
        x = x + drift(t, x) * h
        if final_noise or i < n - 1:
            g = diffusion(t)
            x = x + g * h.abs().sqrt() * randn(x.shape, like=x, generator=generator)
        _check_state("sdeint", x, i, n, grid[i + 1])
        if traj is not None:
            traj.append(x)
    if traj is not None:
        return x, torch.stack(traj)
    return x


def langevin(
    score: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    step: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
):
    """The unadjusted Langevin algorithm: x <- x + step * score(x) + sqrt(2 step) z.

    Returns the final samples, or (final samples, trajectory of shape ``(n_steps + 1, *x.shape)``).
    """
    check_tensor("x0", x0)
    step = check_positive_float("step", step)
    check_positive_int("n_steps", n_steps)
    x = x0
    traj = [x] if return_trajectory else None
    for i in range(n_steps):
        x = x + step * score(x) + (2 * step) ** 0.5 * randn(x.shape, like=x, generator=generator)
        _check_state("langevin", x, i, n_steps)
        if traj is not None:
            traj.append(x)
    if traj is not None:
        return x, torch.stack(traj)
    return x


def annealed_langevin(
    score: Callable[[torch.Tensor, float], torch.Tensor],
    x0: torch.Tensor,
    sigmas: Sequence[float],
    steps_per_level: int = 100,
    eps: float = 2e-5,
    generator: torch.Generator | None = None,
    final_denoise: bool = False,
):
    """Annealed Langevin dynamics (Song and Ermon, 2019): Langevin at each noise level, largest first,
    with step eps * sigma^2 / sigma_min^2. ``score(x, sigma)`` is the score of the data noised by sigma.

    With ``final_denoise`` the result is moved by Tweedie's formula x + sigma_min^2 score(x, sigma_min).
    """
    check_tensor("x0", x0)
    sigmas = [check_positive_float("sigmas", float(s)) for s in sigmas]
    if not sigmas:
        raise ValueError("sigmas: expected at least one noise level")
    check_positive_int("steps_per_level", steps_per_level)
    check_positive_float("eps", eps)
    sigma_min = min(sigmas)
    x = x0
    for s in sorted(sigmas, reverse=True):
        step = eps * (s / sigma_min) ** 2
        x = langevin(lambda y, s=s: score(y, s), x, step, steps_per_level, generator=generator)
    if final_denoise:
        x = x + sigma_min**2 * score(x, sigma_min)
    return x


def mala(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    step: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
):
    """Metropolis-adjusted Langevin: a Langevin proposal accepted with the Metropolis-Hastings probability.

    The score comes from autograd of `log_prob`. Returns (samples, acceptance rate), or (samples,
    acceptance rate, trajectory) with ``return_trajectory``.
    """
    check_tensor("x0", x0)
    step = check_positive_float("step", step)
    check_positive_int("n_steps", n_steps)

    def logp_and_grad(y: torch.Tensor):
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            lp = log_prob(y)
            (grad,) = torch.autograd.grad(lp.sum(), y)
        return lp.detach(), grad.detach()

    def log_q(to: torch.Tensor, frm: torch.Tensor, grad_frm: torch.Tensor) -> torch.Tensor:
        diff = to - frm - step * grad_frm
        return -(diff**2).flatten(1).sum(1) / (4 * step)

    x = x0.detach()
    lp, grad = logp_and_grad(x)
    if not (bool(torch.isfinite(lp).all()) and bool(torch.isfinite(grad).all())):
        raise ValueError("x0: log_prob or its gradient is NaN or infinite at some starting points")
    accepted = torch.zeros((), device=x.device)
    traj = [x] if return_trajectory else None
    for _ in range(n_steps):
        prop = x + step * grad + (2 * step) ** 0.5 * randn(x.shape, like=x, generator=generator)
        lp_prop, grad_prop = logp_and_grad(prop)
        log_alpha = lp_prop + log_q(x, prop, grad_prop) - lp - log_q(prop, x, grad)
        u = rand(log_alpha.shape, like=log_alpha, generator=generator)
        accept = torch.log(u) < log_alpha
        mask = accept.view(-1, *([1] * (x.ndim - 1)))
        x = torch.where(mask, prop, x)
        lp = torch.where(accept, lp_prop, lp)
        grad = torch.where(mask, grad_prop, grad)
        accepted = accepted + accept.float().mean()
        if traj is not None:
            traj.append(x)
    rate = float(accepted) / n_steps
    if traj is not None:
        return x, rate, torch.stack(traj)
    return x, rate


# --------------------------------------------------------------------- likelihoods through an ODE


def divergence(v: torch.Tensor, x: torch.Tensor, method: str = "exact", noise: torch.Tensor | None = None,
               create_graph: bool = False) -> torch.Tensor:
    """The divergence (trace of the Jacobian) of v = f(x) with respect to x, per row: shape (B,).

    ``method='exact'`` takes one autograd pass per dimension (cheap in 2-D); ``'hutchinson'`` gives
    the unbiased estimate e^T (dv/dx) e from one vector-Jacobian product, with the probe ``noise``
    (same shape as x; Rademacher or standard normal). `v` must have been computed from `x` with
    gradients enabled.
    """
    check_choice("method", method, ("exact", "hutchinson"))
    if not x.requires_grad:
        raise ValueError("x: must require grad and v must be computed from it (use torch.enable_grad())")
    if v.shape != x.shape or x.ndim != 2:
        raise ValueError(f"v, x: expected matching shapes (B, d), got {tuple(v.shape)} and {tuple(x.shape)}")
    if method == "hutchinson":
        if noise is None or noise.shape != x.shape:
            raise ValueError(f"noise: expected a probe of shape {tuple(x.shape)} for Hutchinson's estimator")
        (vjp,) = torch.autograd.grad(v, x, noise, create_graph=create_graph)
        return (vjp * noise).sum(1)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(x.shape[1]):
        (g,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + g[:, i]
    return div


def log_prob_ode(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    base_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    steps: int = 20,
    method: str = "rk4",
    divergence_method: str = "exact",
    t_data: float = 1.0,
    t_noise: float = 0.0,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    return_noise: bool = False,
):
    """Log-density of data x under the flow of the ODE dx/dt = field(t, x) (instantaneous change of variables).

    Integrates x from ``t_data`` back to ``t_noise`` together with the running integral of the divergence,
    log p_data(x) = log p_noise(x(t_noise)) - int_{t_noise}^{t_data} div field(t, x(t)) dt, with the fixed-step
    solver of :func:`odeint`. The base density defaults to the standard normal. ``divergence_method`` is
    ``'exact'`` (one autograd pass per dimension) or ``'hutchinson'`` (one probe per point, drawn once for
    the whole solve as in FFJORD; ``probe`` is ``'rademacher'`` or ``'gaussian'``). When gradients are
    enabled (training by maximum likelihood) the result is differentiable; otherwise the solve runs without
    keeping a graph. Returns log p (B,), or (log p, x(t_noise)) with ``return_noise``.
    """
    x = check_tensor("x", x, ndim=2)
    check_choice("divergence_method", divergence_method, ("exact", "hutchinson"))
    check_choice("probe", probe, ("rademacher", "gaussian"))
    check_choice("method", method, METHODS)
    check_positive_int("steps", steps)
    train = torch.is_grad_enabled()
    noise = None
    if divergence_method == "hutchinson":
        noise = randn(x.shape, like=x, generator=generator)
        if probe == "rademacher":
            noise = torch.sign(noise) + (noise == 0).to(x.dtype)

    def augmented(t, state):
        y = state[0]
        with torch.enable_grad():
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            v = field(t, y)
            div = divergence(v, y, divergence_method, noise, create_graph=train)
        if not train:
            v, div = v.detach(), div.detach()
        return v, div

    start = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    z, integral = odeint(augmented, start, t_data, t_noise, steps, method)
    # integral = int_{t_data}^{t_noise} div dt = -int_{t_noise}^{t_data} div dt
    if base_log_prob is None:
        logp0 = gaussian_log_prob(z)
    else:
        logp0 = base_log_prob(z)
    logp = logp0 + integral
    return (logp, z) if return_noise else logp
