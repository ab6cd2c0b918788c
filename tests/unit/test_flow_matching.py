import itertools
import math

import pytest
import torch

import genlib
from genlib import data, metrics, solvers
from genlib.models import flow_matching as fm


@pytest.mark.parametrize("name", fm.PATHS)
def test_conditional_target_is_the_time_derivative_of_the_path(name):
    path = fm.make_path(name, sigma_min=0.01)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = (0.02 + 0.96 * torch.rand(16, generator=g, dtype=torch.float64)).requires_grad_(True)
    xt = path.interpolate(t, x0, x1)
    # d x_t / dt by autograd, one coordinate at a time (each row depends only on its own t)
    dxdt = torch.stack([torch.autograd.grad(xt[:, j].sum(), t, retain_graph=True)[0] for j in range(3)], 1)
    target = path.target(t.detach(), x0, x1)
    assert torch.allclose(dxdt, target, atol=1e-10)
    # Lipman et al.'s u_t(x | x_1) written in x gives the same vector at x = x_t
    assert torch.allclose(path.conditional_field(t.detach(), xt.detach(), x1), target, atol=1e-8)


def test_paths_have_the_right_end_points():
    t0, t1 = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    a, b, _, _ = fm.CondOTPath(0.05).coefficients(t1)
    assert float(a) == 1.0 and abs(float(b) - 0.05) < 1e-12  # p_1(x | x_1) = N(x_1, sigma_min^2 I)
    a, b, _, _ = fm.StraightPath().coefficients(t0)
    assert float(a) == 0.0 and float(b) == 1.0
    a, b, _, _ = fm.VPPath().coefficients(t1)
    assert abs(float(a) - 1) < 1e-12 and float(b) < 1e-5
    a, b, _, _ = fm.VPPath().coefficients(t0)
    assert float(a) < 0.01 and abs(float(a) ** 2 + float(b) ** 2 - 1) < 1e-9  # variance preserving


def test_exact_ot_coupling_equals_brute_force_assignment():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, generator=g)
    x1 = torch.randn(6, 2, generator=g) + 1.0
    _, paired = fm.couple(x0, x1, "ot")
    best = min(itertools.permutations(range(6)), key=lambda p: float(((x1[list(p)] - x0) ** 2).sum()))
    assert torch.equal(paired, x1[list(best)])


@pytest.mark.parametrize("coupling", ["ot", "sinkhorn"])
def test_ot_couplings_reduce_the_mean_transport_cost(coupling, device):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(256, 2, generator=g).to(device)
    x1 = data.eight_gaussians(256, seed=3, device=device)
    a, b = fm.couple(x0, x1, coupling, reg=0.01, generator=torch.Generator().manual_seed(0))
    assert a.device.type == device.type and b.shape == x1.shape
    independent = fm.transport_cost(x0, x1)
    assert fm.transport_cost(a, b) < 0.5 * independent
    if coupling == "ot":  # a permutation of the data batch
        assert torch.equal(torch.sort(b[:, 0]).values, torch.sort(x1[:, 0]).values)


def test_exact_marginal_field_maps_gaussian_source_onto_gaussian_target():
    target = data.IsotropicGaussianMixture(torch.tensor([[2.0, -1.0]]), 0.5)
    for name in ("cond_ot", "vp"):
        field = fm.marginal_field(fm.make_path(name, sigma_min=1e-3), target)
        z = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        x = solvers.odeint(field, z, 0.0, 1.0, 200, "rk4")
        assert torch.allclose(x.mean(0), torch.tensor([2.0, -1.0], dtype=torch.float64), atol=0.02), name
        assert torch.allclose(x.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.02), name
        # the map is the affine OT map z -> m + s z for the conditional OT path
        if name == "cond_ot":
            assert torch.allclose(x, torch.tensor([2.0, -1.0], dtype=torch.float64) + 0.5 * z, atol=2e-3)


def _trained_toy(coupling="independent", steps=600, device="cpu", x=None):
    genlib.seed(0)
    model = fm.FlowMatching(2, hidden=64, depth=2, coupling=coupling, scale=2.0)
    x = data.eight_gaussians(1000, seed=0) if x is None else x
    genlib.train.fit(model, x, steps=steps, batch_size=256, lr=3e-3, schedule="cosine", progress=False,
                     device=device)
    return model


def test_ode_log_density_integrates_to_one_on_a_grid():
    model = _trained_toy(steps=300)
    pts, xs, _ = genlib.plot.grid(120, lim=6.0)
    lp = torch.cat([model.log_prob(c, steps=16) for c in pts.split(5000)])
    h = float(xs[1] - xs[0])
    mass = float(lp.double().exp().sum()) * h * h
    assert abs(mass - 1) < 0.02, mass


def test_trained_model_maps_noise_onto_a_gaussian_target(device):
    target = torch.tensor([2.0, -1.0])
    x = target + 0.5 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    model = _trained_toy(steps=400, device=device, x=x)
    with metrics.count_evaluations(model) as count:
        s = model.sample(5000, generator=torch.Generator(device=device).manual_seed(0), steps=50)
    assert s.device.type == device.type and s.shape == (5000, 2) and count.per_sample(5000) == 50
    assert torch.allclose(s.mean(0).cpu(), target, atol=0.1)
    assert torch.allclose(s.std(0).cpu(), torch.full((2,), 0.5), atol=0.1)


def test_ot_coupling_gives_straighter_paths():
    ind, ot = _trained_toy(steps=300), _trained_toy("ot", steps=300)
    z = ind.source.sample(2000, torch.Generator().manual_seed(1))
    _, traj_ot = ot.transform(z, steps=50, return_trajectory=True)
    _, traj_ind = ind.transform(z, steps=50, return_trajectory=True)
    assert fm.curvature(traj_ot) < 0.5 * fm.curvature(traj_ind)


def test_reflow_pairs_and_loss_on_pairs(device):
    model = _trained_toy(steps=100, device=device)
    x1, x0 = fm.reflow_pairs(model, 500, steps=20)
    assert x1.shape == (500, 2) and x0.shape == (500, 2) and x1.device.type == device.type
    loss = model.loss(x1, x0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # the straight path through a coupling that is already straight has zero loss for its exact field
    assert abs(fm.curvature(torch.stack([x0 + s * (x1 - x0) for s in torch.linspace(0, 1, 11)]))) < 1e-10


def test_mixture_source_to_two_moons_has_a_density():
    mix = data.eight_gaussians_density()
    src = fm.MixtureSource(mix)
    pts = torch.randn(50, 2)
    assert torch.allclose(src.log_prob(pts), mix.log_prob(pts), atol=1e-5)
    s = src.sample(100_000, torch.Generator().manual_seed(0))
    assert metrics.binned_kl(s) < 0.01  # the estimator's floor is about 0.004
    model = fm.FlowMatching(2, hidden=32, depth=2, source=src)
    assert torch.isfinite(model.loss(data.two_moons(64, seed=0)))
    emp = fm.FlowMatching(2, hidden=32, depth=2, source=fm.EmpiricalSource(data.two_moons(100, seed=0)))
    assert not hasattr(emp.base, "log_prob")  # a point cloud has no density ...
    # ... so neither has the flow from it: a clear error that names the source
    with pytest.raises(ValueError, match=r"log_prob: this model's source \(EmpiricalSource\) has no density"):
        emp.log_prob(torch.zeros(3, 2))


def test_images_round_trip_shape_and_range():
    model = fm.FlowMatching(64, hidden=32, depth=2, shape=(1, 8, 8), shift=8.0, scale=8.0, clamp=(0.0, 16.0))
    x = data.digits().train_x[:32]
    assert torch.allclose(model.denormalize(model.normalize(x)), x, atol=1e-5)
    with metrics.count_evaluations(model) as count:
        s = model.sample(5, steps=3)
    assert s.shape == (5, 1, 8, 8) and float(s.min()) >= 0 and float(s.max()) <= 16 and count.per_sample(5) == 3


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_training_times_follow_t_power(power, time_recorder):
    """t = u^p: the quartiles of the times the loss uses are q^p (p > 1 leans to the source end t = 0)."""
    net = time_recorder
    model = fm.FlowMatching(2, net=net, t_power=power)
    torch.manual_seed(0)
    model.loss(torch.zeros(200_000, 2))
    t = torch.cat(net.times).double()
    for q in (0.25, 0.5, 0.75):
        assert abs(float(t.quantile(q)) - q**power) < 0.005


def test_bad_input_errors():
    model = fm.FlowMatching(2, hidden=16, depth=1)
    with pytest.raises(ValueError, match="t_power"):
        fm.FlowMatching(2, t_power=0.0)
    with pytest.raises(ValueError, match="coupling: unknown value 'greedy'"):
        fm.FlowMatching(2, coupling="greedy")
    with pytest.raises(ValueError, match="path: unknown value"):
        fm.FlowMatching(2, path="cosine")
    with pytest.raises(ValueError, match="sigma_min: expected a number in"):
        fm.CondOTPath(1.5)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 2\)"):
        model.loss(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x: contains 1 NaN"):
        model.loss(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="x0, x1: expected the same shape"):
        fm.couple(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="method: unknown value 'midpoint'"):
        model.sample(3, method="midpoint")
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        model.sample(3, steps=0)
    with pytest.raises(ValueError, match="shape: expected 64 elements"):
        fm.FlowMatching(64, shape=(1, 7, 7))
    with pytest.raises(TypeError, match="model: expected a FlowMatching"):
        fm.reflow_pairs(torch.nn.Linear(2, 2), 10)
    with pytest.raises(ValueError, match="traj: expected shape"):
        fm.curvature(torch.zeros(5, 2))
    assert math.isfinite(model.loss(torch.zeros(4, 2)).item())


def test_vp_path_is_the_diffusion_schedule_run_backwards():
    from genlib.models.diffusion import Schedule

    sched = Schedule("vp_linear", t_min=0.0)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    a, b, da, db = fm.VPPath().coefficients(t)
    assert torch.allclose(a, sched.alpha(1 - t)) and torch.allclose(b, sched.sigma(1 - t))
    h = 1e-6  # the time derivatives by central differences
    ap, bp, _, _ = fm.VPPath().coefficients(t + h)
    am, bm, _, _ = fm.VPPath().coefficients(t - h)
    assert torch.allclose(da, (ap - am) / (2 * h), rtol=1e-6) and torch.allclose(db, (bp - bm) / (2 * h), rtol=1e-6)


def test_latent_flow_matching_trains_on_images_through_a_frozen_vae():
    from genlib import data, train, zoo

    r = zoo.recipe("flow_matching_latent", "digits")
    assert r.data == {"set": "digits"} and r.init_from == "vae" and r.init_into == "autoencoder"
    torch.manual_seed(0)
    m = r.build()
    x = data.digits().train_x[:256]
    m.standardize(x)
    codes = m.autoencoder.encode(x).detach()
    assert abs(float(m.prior.shift) - float(codes.mean())) < 1e-6  # the prior is scaled to the codes
    torch.manual_seed(1)
    loss = m.loss(x[:32])
    torch.manual_seed(1)
    assert torch.equal(loss, m.prior.loss(codes[:32]))
    frozen = {k: v.clone() for k, v in m.autoencoder.state_dict().items()}
    prior = {k: v.clone() for k, v in m.prior.state_dict().items()}
    train.fit(m, x, steps=5, batch_size=32, progress=False)
    assert all(torch.equal(v, m.autoencoder.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, m.prior.state_dict()[k]) for k, v in prior.items())
    with torch.no_grad():  # samples are decoded codes: images
        noise = m.base.sample(3, torch.Generator().manual_seed(0))
        assert torch.equal(m.transform(noise, steps=4), m.autoencoder.decode(m.prior.transform(noise, steps=4)))
        assert m.sample(3, torch.Generator().manual_seed(0), steps=4).shape == (3, 1, 8, 8)
