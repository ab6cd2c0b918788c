import math

import pytest
import torch

from genlib import data, metrics, solvers, train, zoo
from genlib.models import flows


def _random_flow(dim=2, n_layers=4, mixing="lu", seed=0, device="cpu", coupling="affine"):
    """A flow with random (non-identity) couplings and initialised actnorms."""
    torch.manual_seed(seed)
    f = flows.coupling_flow(dim, n_layers, hidden=16, mixing=mixing, seed=seed, coupling=coupling)
    for m in f.modules():
        if isinstance(m, (flows.AffineCoupling, flows.SplineCoupling)):
            torch.nn.init.normal_(m.net.net[-1].weight, std=0.5)
            torch.nn.init.normal_(m.net.net[-1].bias, std=0.3)
    f.train()
    f.log_prob(torch.randn(64, dim) * 2 + 0.5)  # data-dependent actnorm initialisation
    return f.eval().to(device)


@pytest.mark.parametrize("coupling", ["affine", "spline"])
@pytest.mark.parametrize("mixing", ["lu", "reverse", "none"])
def test_inverse_of_forward_is_identity(device, mixing, coupling):
    f = _random_flow(mixing=mixing, device=device, coupling=coupling)
    # random splines have bins with slopes down to 1e-3, where float32 rounding of z is amplified up to
    # 1000x on the way back (the map is ill-conditioned there, not wrong): check those in float64
    dtype = torch.float64 if coupling == "spline" else torch.float32
    f = f.to(dtype)
    x = torch.randn(500, 2, device=device, dtype=dtype) * 3
    z, ld = f(x)
    back, ld_inv = f.inverse(z)
    assert (back - x).abs().max() < 1e-5
    assert (ld + ld_inv).abs().max() < 1e-5
    assert z.device.type == device.type


def test_each_layer_inverts_and_logit_layer_inverts():
    layers = [flows.ActNorm(3), flows.InvertibleLinear(3, torch.Generator().manual_seed(1)),
              flows.Permutation(3, torch.tensor([2, 0, 1])), flows.AffineCoupling(3, torch.tensor([1, 0, 1]))]
    torch.nn.init.normal_(layers[3].net.net[-1].weight, std=0.5)
    layers[0].initialize(torch.randn(10, 3) * 2)
    x = torch.randn(100, 3)
    for layer in layers:
        y, ld = layer(x)
        back, ld_inv = layer.inverse(y)
        assert (back - x).abs().max() < 1e-5, type(layer).__name__
        assert (ld + ld_inv).abs().max() < 1e-5
    logit = flows.Logit(4, upper=17.0)
    x = torch.rand(100, 4) * 17
    y, ld = logit(x)
    back, ld_inv = logit.inverse(y)
    assert (back - x).abs().max() < 1e-4 and (ld + ld_inv).abs().max() < 1e-4


@pytest.mark.parametrize("coupling", ["affine", "spline"])
@pytest.mark.parametrize("dim", [2, 5])
def test_log_det_matches_autograd_jacobian(dim, coupling):
    f = _random_flow(dim=dim, n_layers=3, coupling=coupling).double()
    x = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    _, ld = f(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0][0], x[i])
        assert abs(torch.linalg.slogdet(jac)[1].item() - ld[i].item()) < 1e-8
        jac_inv = torch.autograd.functional.jacobian(lambda v: f.inverse(v[None])[0][0], f(x[i:i + 1])[0][0])
        assert abs(torch.linalg.slogdet(jac_inv)[1].item() - f.inverse(f(x[i:i + 1])[0])[1].item()) < 1e-8


def test_logit_layer_log_det_matches_autograd():
    logit = flows.Logit(3, upper=17.0, alpha=0.05)
    x = torch.rand(3, dtype=torch.float64) * 17
    jac = torch.autograd.functional.jacobian(lambda v: logit(v[None])[0][0], x)
    assert abs(torch.linalg.slogdet(jac)[1].item() - logit(x[None])[1].item()) < 1e-8


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_density_integrates_to_one_on_a_grid(coupling):
    f = _random_flow(n_layers=4, coupling=coupling).double()
    lim, n = 10.0, 600
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = f.log_prob(grid).exp()
    mass = float(p.sum()) * (xs[1] - xs[0]).item() ** 2
    assert abs(mass - 1) < 5e-3, mass


def test_sample_transform_and_intermediates(device):
    f = _random_flow(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with metrics.count_evaluations(f) as count:
        x = f.sample(300, generator=g)
    assert x.shape == (300, 2) and x.device.type == device.type and count.per_sample(300) == f.n_networks == 4
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(300, 2, device=device, generator=g)
    path = f.transform(z, return_intermediates=True)
    assert len(path) == len(f.layers) + 1 and torch.allclose(path[-1], x)
    forward_path = f.intermediates(x)
    assert torch.allclose(forward_path[-1], z, atol=1e-4)
    for a, b in zip(forward_path, reversed(path), strict=True):  # the same points, layer by layer
        assert torch.allclose(a, b, atol=1e-4)


def test_actnorm_initialises_from_data_and_survives_state_dict():
    x = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    a = flows.ActNorm(2).train()
    y, _ = a(x)
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(y.std(0), torch.ones(2), atol=1e-4)
    with torch.no_grad():
        a.loc.add_(0.3)  # "training" moved the parameters
    b = flows.ActNorm(2)
    b.load_state_dict(a.state_dict())
    b.train()
    assert torch.equal(b(x)[0], a(x)[0])  # not re-initialised on the first batch after loading


def test_flow_learns_a_correlated_gaussian_to_its_entropy():
    g = torch.Generator().manual_seed(0)
    chol = torch.tensor([[1.0, 0.0], [1.5, 0.5]])
    x = torch.randn(2000, 2, generator=g) @ chol.T + torch.tensor([2.0, -1.0])
    entropy = 0.5 * 2 * (1 + math.log(2 * math.pi)) + torch.log(torch.diagonal(chol)).sum().item()
    f = flows.coupling_flow(2, n_layers=2, hidden=16)
    train.fit(f, x, steps=300, batch_size=500, lr=1e-2, progress=False)
    test = torch.randn(5000, 2, generator=g) @ chol.T + torch.tensor([2.0, -1.0])
    with torch.no_grad():
        nll = -f.log_prob(test).mean().item()
    assert nll < entropy + 0.06, (nll, entropy)  # test-set noise alone is about 0.014


def test_bad_input_errors():
    f = _random_flow()
    with pytest.raises(ValueError, match="x: expected last dimension 2"):
        f.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="x: contains 1 NaN"):
        f.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        f.log_prob(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="z: expected last dimension 2"):
        f.transform(torch.randn(4, 1))
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        f.sample(0)
    with pytest.raises(ValueError, match="mask: expected 2 entries"):
        flows.AffineCoupling(2, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="mask: must keep at least one"):
        flows.AffineCoupling(2, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="mixing: unknown value 'svd'"):
        flows.coupling_flow(2, mixing="svd")
    with pytest.raises(ValueError, match="perm: expected a permutation"):
        flows.Permutation(3, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"h: expected a tensor of shape \(N, 2\)"):
        flows.ActNorm(2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="h: values must lie in"):
        flows.Logit(2, upper=17.0)(torch.tensor([[-1.0, 3.0]]))
    with pytest.raises(ValueError, match="images: expected integer pixel values"):
        flows.dequantize(torch.full((2, 64), 0.5))
    cnf = flows.CNF(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="x: expected last dimension 2"):
        cnf.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="method: unknown value 'rk45'"):
        cnf.transform(torch.randn(3, 2), method="rk45")
    with pytest.raises(ValueError, match="divergence_method: unknown value"):
        solvers.log_prob_ode(lambda t, x: x, torch.randn(3, 2), divergence_method="trace")


def test_dequantisation_and_bits_per_pixel():
    d = data.digits()
    x = flows.dequantize(d.test_x[:50], generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 64) and bool((x >= d.test_x[:50].flatten(1)).all())
    assert bool((x < d.test_x[:50].flatten(1) + 1).all())
    f = flows.digits_flow(n_layers=1, hidden=8)
    # the untrained flow is a fixed logit map with N(0, I) on top: a finite, positive number of bits
    bpp = flows.bits_per_pixel(f, d.test_x[:50], repeats=1)
    assert 0 < bpp < 20


# ---------------------------------------------------------------- CNF and the ODE likelihood


def _cnf(device="cpu", seed=0):
    torch.manual_seed(seed)
    return flows.CNF(2, hidden=16, depth=2, steps=4, method="rk4").to(device)


def test_cnf_exact_divergence_equals_autograd_trace(device):
    cnf = _cnf(device)
    x = torch.randn(7, 2, device=device, requires_grad=True)
    t = torch.tensor(0.3, device=device)
    v = cnf.velocity(t, x)
    div = solvers.divergence(v, x, "exact")
    for i in range(7):
        jac = torch.autograd.functional.jacobian(lambda y: cnf.velocity(t, y[None])[0], x[i].detach())
        assert abs(torch.trace(jac).item() - div[i].item()) < 1e-5


def test_hutchinson_estimator_is_unbiased():
    cnf = _cnf().double()
    x = torch.randn(4, 2, dtype=torch.float64).repeat_interleave(20_000, 0).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
    v = cnf.velocity(torch.tensor(0.5, dtype=torch.float64), x)
    exact = solvers.divergence(v, x, "exact").view(4, 20_000)[:, 0]
    est = solvers.divergence(v, x, "hutchinson", noise).view(4, 20_000)
    err = (est.mean(1) - exact).abs()
    se = est.std(1) / math.sqrt(20_000)
    assert bool((err < 4 * se + 1e-9).all()), (err, se)
    assert float(est.std(1).max()) > 0  # a genuine estimator, not the exact trace


def test_log_prob_ode_exact_on_a_linear_field(device):
    a = torch.tensor([[0.3, -1.0], [0.8, -0.2]], dtype=torch.float64, device=device)
    x = torch.randn(50, 2, dtype=torch.float64, device=device)
    with torch.no_grad():
        lp = solvers.log_prob_ode(lambda t, y: y @ a.T, x, steps=50, method="rk4")
    # x(1) = exp(A) x(0): log p1(x) = log N(exp(-A) x) - tr(A)
    z = x @ torch.linalg.matrix_exp(-a).T
    exact = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) - torch.trace(a)
    assert (lp - exact).abs().max() < 1e-8


def test_log_prob_ode_hutchinson_mean_matches_exact():
    cnf = _cnf()
    x = torch.randn(3, 2)
    with torch.no_grad():
        exact = cnf.log_prob(x)
        reps = torch.stack([cnf.log_prob(x.repeat(2000, 1), divergence="hutchinson",
                                         generator=torch.Generator().manual_seed(k)).view(2000, 3).mean(0)
                            for k in range(2)]).mean(0)
    assert (reps - exact).abs().max() < 0.02


def test_cnf_density_integrates_to_one_and_sample_shapes(device):
    cnf = _cnf(device)
    with torch.no_grad():
        for p in cnf.net.parameters():
            p.mul_(2.0)  # a non-trivial field
        lim, n = 8.0, 200
        xs = torch.linspace(-lim, lim, n, device=device)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        mass = float(cnf.log_prob(grid).exp().sum()) * (xs[1] - xs[0]).item() ** 2
        assert abs(mass - 1) < 0.02, mass
        with metrics.count_evaluations(cnf) as count:
            x = cnf.sample(100, generator=torch.Generator(device=device).manual_seed(0))
    assert x.shape == (100, 2) and x.device.type == device.type and count.per_sample(100) == 16


def test_cnf_training_is_differentiable_and_reduces_nll():
    x = data.eight_gaussians(512, seed=0)
    cnf = _cnf()
    with torch.no_grad():
        before = cnf.loss(x).item()
    hist = train.fit(cnf, x, steps=40, batch_size=256, lr=1e-2, progress=False)
    with torch.no_grad():
        after = cnf.loss(x).item()
    assert after < before - 0.3 and len(hist.loss) == 40


def test_spline_couplings_fit_a_bimodal_coordinate_that_affine_couplings_cannot():
    # x1 is a mixture of N(-2, 0.3^2) and N(2, 0.3^2), independent of x2 ~ N(0, 1): two blocks without mixing,
    # so x1 is transformed once, conditioned on x2 only. A spline can split the Gaussian in two; an affine map
    # of a Gaussian stays a Gaussian.
    def sample(n, g):
        sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        return torch.stack([2.0 * sign + 0.3 * torch.randn(n, generator=g), torch.randn(n, generator=g)], 1)

    entropy = math.log(2) + 0.5 * math.log(2 * math.pi * math.e * 0.09) + 0.5 * math.log(2 * math.pi * math.e)
    g = torch.Generator().manual_seed(0)
    x, test = sample(2000, g), sample(5000, g)
    gap = {}
    for coupling in ("spline", "affine"):
        f = flows.coupling_flow(2, n_layers=2, hidden=16, mixing="none", coupling=coupling)
        train.fit(f, x, steps=300, batch_size=500, lr=1e-2, progress=False)
        with torch.no_grad():
            gap[coupling] = -f.log_prob(test).mean().item() - entropy
    assert 0 < gap["spline"] < 0.1 and gap["affine"] > 0.5, gap


def test_spline_is_monotone_identity_at_zero_and_outside_its_interval():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    raw = [torch.randn(2001, k, generator=g, dtype=torch.float64) * 2 for k in (8, 8, 7)]
    raw = [r[:1].expand(2001, -1) for r in raw]  # one spline, evaluated along the line
    y, ld = flows.rational_quadratic_spline(x, *raw, bound=4.0)
    assert bool((y[1:] > y[:-1]).all())  # strictly increasing
    outside = x.abs() >= 4
    assert torch.equal(y[outside], x[outside]) and bool((ld[outside] == 0).all())
    assert abs(y[x.abs() < 4].max().item()) < 4 and abs(y[x.abs() < 4].min().item()) < 4  # [-4, 4] onto itself
    back, ld_inv = flows.rational_quadratic_spline(y, *raw, bound=4.0, inverse=True)
    assert (back - x).abs().max() < 1e-9 and (ld + ld_inv).abs().max() < 1e-9
    xs = x[::50].clone().requires_grad_(True)
    ys, lds = flows.rational_quadratic_spline(xs, *[r[::50] for r in raw], bound=4.0)
    (dy,) = torch.autograd.grad(ys.sum(), xs)
    assert torch.allclose(dy.log(), lds, atol=1e-9)
    zero = [torch.zeros(5, k) for k in (8, 8, 7)]
    xz = torch.linspace(-3.9, 3.9, 5)
    yz, ldz = flows.rational_quadratic_spline(xz, *zero)
    assert (yz - xz).abs().max() < 1e-6 and ldz.abs().max() < 1e-6


def test_spline_coupling_bad_input():
    with pytest.raises(ValueError, match="bins: expected an int >= 2"):
        flows.SplineCoupling(2, torch.tensor([1, 0]), bins=1)
    with pytest.raises(ValueError, match="bound"):
        flows.SplineCoupling(2, torch.tensor([1, 0]), bound=0.0)
    with pytest.raises(ValueError, match="mask: must keep at least one"):
        flows.SplineCoupling(2, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="coupling: unknown value 'cubic'"):
        flows.coupling_flow(2, coupling="cubic")
    with pytest.raises(ValueError, match=r"h: expected a tensor of shape \(N, 2\)"):
        flows.SplineCoupling(2, torch.tensor([1, 0]))(torch.randn(3, 3))
    x = torch.zeros(5)
    with pytest.raises(ValueError, match="raw parameters: expected widths and heights"):
        flows.rational_quadratic_spline(x, torch.zeros(5, 8), torch.zeros(5, 8), torch.zeros(5, 8))
    with pytest.raises(ValueError, match="raw parameters"):
        flows.rational_quadratic_spline(x, torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 7))


def test_zoo_recipes_are_registered():
    for key in [("flow", "eight_gaussians"), ("flow_affine", "eight_gaussians"), ("cnf", "eight_gaussians"),
                ("flow", "digits")]:
        r = zoo.recipe(*key)
        assert r.args and r.fit["steps"] > 0 and r.trainer == "fit" and r.description
        assert isinstance(r.build(), (flows.Flow, flows.CNF))
    # the CNF's solver steps are a model argument, its training steps a fit setting
    cnf = zoo.recipe("cnf")
    assert cnf.build().steps == cnf.args["steps"] != cnf.fit["steps"]
    assert zoo.recipe("flow").fit["jitter"] > 0  # the headline flow trains on jittered minibatches
    # the digits flow trains on the integer images and dequantises them in its loss
    digits = zoo.recipe("flow", "digits")
    assert digits.model == "flows.digits_flow" and digits.data == {"set": "digits"}
    assert digits.build().dequantize


def test_digits_flow_dequantises_inside_its_loss():
    torch.manual_seed(0)
    f = flows.digits_flow(n_layers=1, hidden=8)
    x = data.digits().train_x[:16].flatten(1)
    torch.manual_seed(1)
    loss = f.loss(x)
    torch.manual_seed(1)
    assert torch.equal(loss, -f.log_prob(flows.dequantize(x)).mean())  # fresh U[0, 1) noise on the integers
    torch.manual_seed(2)
    assert not torch.equal(f.loss(x), loss)  # other noise, another value
    with pytest.raises(ValueError, match="images: expected integer pixel values"):
        f.loss(x + 0.5)
    assert not flows.coupling_flow(2, n_layers=1, hidden=8).dequantize  # a flow on real data does not
    # images in, images out: the loss reads (n, 1, 8, 8) as the flattened rows, samples are integer images
    images = data.digits().train_x[:16]
    torch.manual_seed(1)
    assert torch.equal(f.loss(images), loss)
    with torch.no_grad():
        z = f.base.sample(500, torch.Generator().manual_seed(0))
        x, cont = f.sample(500, torch.Generator().manual_seed(0)), f.transform(z, return_intermediates=True)[-1]
    assert x.shape == (500, 1, 8, 8) and bool((x == x.round()).all()) and 0 <= float(x.min()) <= float(x.max()) <= 16
    assert torch.equal(x.flatten(1), cont.floor().clamp(0, 16))  # the level whose cell [k, k + 1) holds the draw


def test_cnf_kinetic_regulariser_adds_the_energy_of_the_field():
    torch.manual_seed(0)
    plain = flows.CNF(2, hidden=16, depth=2, steps=3, method="rk4")
    for p in plain.parameters():  # a non-zero field (the last layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    reg = flows.CNF(2, hidden=16, depth=2, steps=3, method="rk4", kinetic=0.5)
    reg.load_state_dict(plain.state_dict())
    x = torch.randn(64, 2)
    gap = (reg.loss(x) - plain.loss(x)).item()
    assert gap > 1e-3  # a moving field pays for its kinetic energy
    with pytest.raises(ValueError, match="kinetic"):
        flows.CNF(2, kinetic=-1.0)


@pytest.mark.parametrize("mixing", ["lu", "reverse", "none"])
def test_coupling_flow_transforms_every_coordinate(mixing):
    torch.manual_seed(0)
    flow = flows.coupling_flow(2, n_layers=2, hidden=8, mixing=mixing, actnorm=False)
    for p in flow.parameters():  # non-zero couplings (their last layers start at zero)
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(32, 2)
    with torch.no_grad():
        z, _ = flow(x)
    assert ((z - x).abs() > 1e-4).any(0).all()  # no coordinate passes through every coupling untouched
