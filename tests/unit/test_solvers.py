import math

import pytest
import torch

from genlib import data, metrics, solvers


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_convergence_order_on_a_linear_ode(method, order):
    a = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=torch.float64)  # a damped rotation
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(a).T
    errs = [(solvers.odeint(lambda t, x: x @ a.T, x0, 0, 1, n, method) - exact).norm().item() for n in (16, 32, 64)]
    observed = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(o - order) < 0.25 for o in observed), observed


def test_odeint_on_tuple_state_and_trajectory(device):
    x0 = torch.ones(5, 2, device=device)
    (x, c), traj = solvers.odeint(lambda t, s: (-s[0], torch.ones_like(s[1])), (x0, torch.zeros(5, device=device)),
                                  0, 2, 40, "rk4", return_trajectory=True)
    assert traj.shape == (41, 5, 2) and traj.device.type == device.type
    assert torch.allclose(x, torch.full_like(x, math.exp(-2)), atol=1e-6)
    assert torch.allclose(c, torch.full_like(c, 2.0))


def test_backward_integration_inverts_forward():
    x0 = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = lambda t, x: torch.sin(x) * (1 + t)  # noqa: E731
    x1 = solvers.odeint(f, x0, 0, 1, 200, "rk4")
    back = solvers.odeint(f, x1, 1, 0, 200, "rk4")
    assert torch.allclose(back, x0, atol=1e-8)


def test_sdeint_ou_process_has_the_right_stationary_law(device):
    g = torch.Generator(device=device).manual_seed(0)
    x = solvers.sdeint(lambda t, x: -x, lambda t: math.sqrt(2.0), torch.full((20_000, 1), 3.0, device=device),
                       0, 8, 800, generator=g)
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - 1) < 0.06


def test_sdeint_reproducible_with_generator():
    run = lambda: solvers.sdeint(lambda t, x: -x, lambda t: 1.0, torch.zeros(10, 2), 0, 1, 10,  # noqa: E731
                                 generator=torch.Generator().manual_seed(5))
    assert torch.equal(run(), run())


def test_langevin_on_the_exact_score_reaches_all_modes(device):
    mix = data.eight_gaussians_density()
    g = torch.Generator(device=device).manual_seed(0)
    n = 20_000
    x0 = torch.randn(n, 2, device=device, generator=g) * 3
    x = solvers.langevin(lambda y: mix.score(y), x0, 0.01, 1000, generator=g)
    stats = metrics.mode_stats(x)
    assert stats["modes_covered"] == 8 and stats["on_mode"] > 0.95
    assert min(stats["per_mode"]) > 0.08  # every mode gets about 1/8 of the samples
    # the binned KL is close to that of n true samples (ULA's small step bias aside)
    reference = metrics.binned_kl(mix.sample(n, torch.Generator().manual_seed(1)))
    assert metrics.binned_kl(x) < reference + 0.02


def test_mala_is_exact_where_ula_is_biased():
    # a narrow Gaussian with a large step: ULA's stationary variance is wrong, MALA's is right
    var = 0.1
    logp = lambda x: -0.5 * (x**2).sum(1) / var  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20_000, 1, generator=g) * math.sqrt(var)
    ula = solvers.langevin(lambda x: -x / var, x0, 0.08, 200, generator=g)
    mala, rate = solvers.mala(logp, x0, 0.08, 200, generator=g)
    assert abs(ula.var().item() - var) > 0.02  # ULA's variance is var / (1 - step / (2 var)) = 0.167
    assert abs(mala.var().item() - var) < 0.01
    assert 0.2 < rate < 1.0


def test_annealed_langevin_with_exact_noisy_scores():
    mix = data.eight_gaussians_density()
    sigmas = torch.logspace(math.log10(3.0), math.log10(0.05), 10).tolist()
    g = torch.Generator().manual_seed(0)
    x = solvers.annealed_langevin(lambda y, s: mix.noised(1.0, s).score(y), torch.randn(4000, 2, generator=g) * 3,
                                  sigmas, steps_per_level=60, eps=5e-4, generator=g)
    assert metrics.mode_stats(x)["modes_covered"] == 8


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: solvers.odeint(lambda t, x: x, torch.zeros(2, 2), method="midpoint"), "method: unknown value"),
        (lambda: solvers.odeint(lambda t, x: x, torch.zeros(2, 2), steps=0), "steps: expected an int >= 1"),
        (lambda: solvers.langevin(lambda x: x, torch.zeros(2, 2), -0.1, 10), "step: expected a number > 0"),
        (lambda: solvers.langevin(lambda x: x, torch.full((2, 2), float("nan")), 0.1, 10), "x0: contains"),
        (lambda: solvers.annealed_langevin(lambda x, s: x, torch.zeros(2, 2), []), "sigmas"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_gaussian_log_prob_matches_torch_distributions_and_broadcasts():
    from genlib._util import gaussian_log_prob

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=g)
    mean = torch.randn(4, 3, dtype=torch.float64, generator=g)
    logvar = torch.randn(4, 3, dtype=torch.float64, generator=g)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(x[:, None]).sum(-1)  # (7, 4)
    assert torch.allclose(gaussian_log_prob(x[:, None], mean, logvar), ref)
    std_ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum()
    assert torch.allclose(gaussian_log_prob(x.reshape(1, 7, 3), dims=2), std_ref)


def test_solvers_say_when_they_diverge_and_where():
    x0 = torch.ones(4, 2)
    with pytest.raises(solvers.SolverDiverged, match=r"odeint: the state became NaN or infinite at step \d+ of 50"):
        solvers.odeint(lambda t, x: x**3, x0, 0, 1, 50, "euler")  # dx/dt = x^3 from 1 blows up at t = 0.5
    with pytest.raises(solvers.SolverDiverged, match=r"sdeint: .* at step \d+ of 50"):
        solvers.sdeint(lambda t, x: x**3, lambda t: 0.1, x0, 0, 1, 50, generator=torch.Generator().manual_seed(0))
    # Langevin on a Gaussian with step beyond 2 / L: |1 - step L| > 1, the iterates grow geometrically
    with pytest.raises(solvers.SolverDiverged, match=r"langevin: .* at step \d+ of 2000"):
        solvers.langevin(lambda x: -100 * x, x0, step=0.05, n_steps=2000, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="x0: log_prob or its gradient is NaN"):
        solvers.mala(lambda x: torch.log(x[:, 0]), -x0, step=0.1, n_steps=5)


def test_ode_log_density_agrees_with_an_adaptive_reference_solver():
    """The hand-written fixed-step solve of the instantaneous change of variables (the CNF's and flow
    matching's log-densities) against torchdiffeq's adaptive dopri5 on the same augmented ODE."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    from genlib.models import flow_matching as fm

    torch.manual_seed(0)
    model = fm.FlowMatching(dim=2, hidden=16, depth=2).double()  # an untrained, smooth, nonlinear field
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = solvers.log_prob_ode(model.velocity, x, steps=64, method="rk4", t_data=1.0, t_noise=0.0)

    def augmented(t, state):
        y, _ = state
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = model.velocity(t, y)
            div = solvers.divergence(v, y, "exact")
        return v.detach(), div.detach()

    ts = torch.tensor([1.0, 0.0], dtype=torch.float64)
    z, integral = torchdiffeq.odeint(augmented, (x, torch.zeros(64, dtype=torch.float64)), ts, method="dopri5",
                                     rtol=1e-10, atol=1e-10)
    reference = -0.5 * (z[-1] ** 2).sum(1) - math.log(2 * math.pi) + integral[-1]
    assert torch.allclose(ours, reference, atol=1e-7), (ours - reference).abs().max()
