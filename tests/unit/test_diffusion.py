"""Tests of genlib.models.diffusion: schedules, the forward process, conversions, the exact noisy score,
samplers with the exact score plugged in, DDIM against the probability-flow ODE, errors, devices."""

import math

import pytest
import torch

from genlib import data, metrics
from genlib.models import diffusion as D


def exact_model(kind: str, device) -> D.Diffusion:
    sched = D.Schedule(kind)
    net = D.ExactMixtureScore(data.eight_gaussians_density(), sched)
    return D.Diffusion(net, sched, prediction="score", data_std=None).to(device)


@pytest.mark.parametrize("kind", D.SCHEDULES)
def test_schedule_sde_coefficients_match_marginals(kind):
    s = D.Schedule(kind)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).requires_grad_(True)
    log_a = s.log_alpha(t) + 0 * t  # VE: a constant, still differentiable
    (dlog_a,) = torch.autograd.grad(log_a.sum(), t)
    var = s.sigma(t) ** 2
    (dvar,) = torch.autograd.grad(var.sum(), t)
    with torch.no_grad():
        assert torch.allclose(s.f(t), dlog_a, rtol=1e-6, atol=1e-8)
        assert torch.allclose(s.g2(t), dvar - 2 * dlog_a * var, rtol=1e-6, atol=1e-8)
        if kind != "ve":  # variance preserving: alpha^2 + sigma^2 = 1
            assert torch.allclose(s.alpha(t) ** 2 + var, torch.ones_like(var))


def test_closed_form_matches_iterated_chain():
    """q(x_T | x_0) from cumulative products equals running q(x_i | x_{i-1}) step by step."""
    betas = D.ddpm_betas(200, 1e-3, 0.05)
    abar = torch.cumprod(1 - betas, 0)[-1]
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((40_000, 2), 1.5, dtype=torch.float64)
    xT = D.iterate_forward(x0, betas, generator=g)
    mean, var = xT.mean(0), xT.var(0)
    assert torch.allclose(mean, abar.sqrt() * 1.5 * torch.ones(2, dtype=torch.float64), atol=0.02)
    assert torch.allclose(var, (1 - abar) * torch.ones(2, dtype=torch.float64), rtol=0.03)


def test_continuous_vp_is_limit_of_discrete_chain():
    s = D.Schedule("vp_linear")
    n = 4000
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    abar = torch.prod(1 - s.beta(t) / n)
    assert abs(float(abar.sqrt()) - float(s.alpha(torch.tensor(1.0, dtype=torch.float64)))) < 1e-4


@pytest.mark.parametrize("frm", D.PREDICTIONS)
def test_conversions_are_mutually_inverse(frm):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    v = torch.randn(64, 2, generator=g, dtype=torch.float64)
    a = torch.rand(64, generator=g, dtype=torch.float64) + 0.1
    s = torch.rand(64, generator=g, dtype=torch.float64) + 0.1
    for to in D.PREDICTIONS:
        there = D.convert(v, frm, to, x, a, s)
        back = D.convert(there, to, frm, x, a, s)
        assert torch.allclose(back, v, atol=1e-10)
    # eps -> x0 -> the noisy point
    x0 = D.convert(v, "eps", "x0", x, a, s)
    assert torch.allclose(a[:, None] * x0 + s[:, None] * v, x)


def test_exact_noisy_score_matches_autograd():
    mix = data.eight_gaussians_density()
    for a, s in [(1.0, 0.0), (0.8, 0.6), (0.1, 0.99), (1.0, 3.0)]:
        noisy = mix.noised(a, s)
        x = (3 * torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).requires_grad_()
        (grad,) = torch.autograd.grad(noisy.log_prob(x).sum(), x)
        assert torch.allclose(noisy.score(x.detach()), grad, atol=1e-8)


def test_tweedie_exact_denoiser_is_score_step():
    mix = data.eight_gaussians_density()
    a, s = 0.7, math.sqrt(1 - 0.49)
    y = torch.randn(100, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    tweedie = (y + s**2 * mix.noised(a, s).score(y)) / a
    assert torch.allclose(mix.denoiser(y, a, s), tweedie, atol=1e-8)


@pytest.mark.parametrize("kind,sampler,steps", [("vp_linear", "sde", 60), ("vp_linear", "ode", 15),
                                                ("ve", "sde", 60)])
def test_exact_score_samplers_recover_eight_gaussians(kind, sampler, steps):
    m = exact_model(kind, "cpu")
    with metrics.count_evaluations(m) as count:
        x = m.sample(100_000, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps,
                     spacing="quadratic" if kind != "ve" else "uniform")
    assert x.shape == (100_000, 2)
    kl = metrics.binned_kl(x)
    assert kl < 0.008, kl  # the estimator's floor is about 0.0043
    nfe = {"sde": steps, "ode": 2 * steps}[sampler] + 1
    assert count.per_sample(100_000) == nfe


def test_ddim_with_many_steps_is_the_ode():
    """DDIM (eta = 0) is a discretisation of the probability-flow ODE: the gap shrinks with the step count."""
    m = exact_model("vp_linear", "cpu")
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(4))  # the same base draw for both samplers
    assert m.base_for("ode", 400).shape == m.base_for("ddim", 25).shape == (2,)  # both deterministic maps of z
    ref = m.transform(z, sampler="ode", steps=400, spacing="quadratic", method="heun")
    gaps = []
    for steps in (25, 100, 400):
        x = m.transform(z, sampler="ddim", steps=steps, spacing="quadratic")
        gaps.append(float((x - ref).norm(dim=1).mean()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02, gaps


def test_ancestral_and_pc_samplers_run_and_count(device):
    m = exact_model("ve", device)
    for sampler, steps, nfe in [("ddpm", 20, 21), ("pc", 10, 10 + 9 + 1), ("langevin", 5, (5 + 1) * 3 + 1),
                                ("ddim", 7, 8)]:
        opts = {"steps_per_level": 3} if sampler == "langevin" else {}
        with metrics.count_evaluations(m) as count:
            x = m.sample(50, generator=torch.Generator().manual_seed(5), sampler=sampler, steps=steps, **opts)
        assert x.device.type == torch.device(device).type and x.shape == (50, 2)
        assert torch.isfinite(x).all()
        assert count.per_sample(50) == nfe, (sampler, count.per_sample(50))


def test_learned_model_loss_decreases_and_samples(device):
    from genlib.train import fit

    torch.manual_seed(0)
    m = D.Diffusion(D.DenoiserMLP(2, 32, 2), D.Schedule("vp_cosine"), data_std=2.0, steps=10).to(device)
    x = data.eight_gaussians(512, seed=0, device=device)
    h = fit(m, x, steps=150, batch_size=128, lr=3e-3, progress=False)
    assert sum(h.loss[-20:]) / 20 < 0.8 * sum(h.loss[:20]) / 20
    z = m.sample(30, generator=torch.Generator().manual_seed(0))
    assert z.shape == (30, 2) and z.device.type == torch.device(device).type
    assert m.transform(torch.randn(7, 2, device=device), sampler="ode").shape == (7, 2)  # the PF-ODE map


@pytest.mark.parametrize("power", [1.0, 1.5, 3.0])
def test_training_times_follow_t_power(power, time_recorder):
    """t = t_min + (1 - t_min) u^p: the quartiles of the loss's times are those of u^p."""
    net = time_recorder
    m = D.Diffusion(net, D.Schedule("vp_linear"), t_power=power)
    torch.manual_seed(0)
    m.loss(torch.zeros(200_000, 2))
    t = torch.cat(net.times).double()
    tm = m.schedule.t_min
    for q in (0.25, 0.5, 0.75):
        assert abs(float(t.quantile(q)) - (tm + (1 - tm) * q**power)) < 0.005


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="t_power"):
        D.Diffusion(D.DenoiserMLP(), t_power=0.0)
    with pytest.raises(ValueError, match="kind"):
        D.Schedule("vp_quadratic")
    with pytest.raises(ValueError, match="sigma_max"):
        D.Schedule("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="prediction"):
        D.Diffusion(D.DenoiserMLP(), prediction="velocity")
    m = exact_model("vp_linear", "cpu")
    with pytest.raises(ValueError, match="sampler"):
        m.sample(4, sampler="euler")
    with pytest.raises(ValueError, match="steps"):
        m.sample(4, steps=0)
    with pytest.raises(ValueError, match="spacing"):
        m.sample(4, spacing="cubic")
    with pytest.raises(ValueError, match=r"noise: expected a tensor of shape \(n, 10, 2\)"):
        m.transform(torch.zeros(4, 2), sampler="sde", steps=10)  # the reverse SDE needs its 9 step noises too
    with pytest.raises(ValueError, match="VE schedule"):
        m.sample(4, sampler="langevin")
    with pytest.raises(ValueError, match="NaN"):
        D.Diffusion(D.DenoiserMLP()).loss(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="frm"):
        D.convert(torch.zeros(1, 2), "noise", "eps", torch.zeros(1, 2), 1.0, 1.0)


def test_ode_log_prob_of_the_exact_model_is_the_true_density(device):
    """With the exact score, the probability-flow ODE's density is the data density (noised to t_min)."""
    m = exact_model("vp_linear", device)
    mix = data.eight_gaussians_density()
    x = mix.sample(500, torch.Generator().manual_seed(0), device=device)
    with torch.no_grad():
        lp = m.log_prob(x, steps=64)
    assert lp.shape == (500,) and lp.device.type == device.type
    t = torch.tensor(m.schedule.t_min)
    exact = mix.noised(float(m.schedule.alpha(t)), float(m.schedule.sigma(t))).log_prob(x.double().cpu())
    assert (lp.double().cpu() - exact).abs().max() < 0.02
    with pytest.raises(ValueError):
        m.log_prob(torch.zeros(3, 3, device=device))
