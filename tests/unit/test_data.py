import math

import pytest
import torch

import genlib
from genlib import data


def test_eight_gaussians_recipe():
    x = data.eight_gaussians(2000, seed=0)
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    mix = data.eight_gaussians_density()
    assert torch.allclose(mix.means.norm(dim=1), torch.full((8,), 2 * math.sqrt(2), dtype=torch.float64))
    angles = torch.rad2deg(torch.atan2(mix.means[:, 1], mix.means[:, 0])) % 360
    assert torch.allclose(angles, torch.arange(8, dtype=torch.float64) * 45, atol=1e-9)
    # exactly n/8 points per mode, each within a few std of its centre
    nearest = torch.cdist(x.double(), mix.means).argmin(1)
    assert torch.bincount(nearest, minlength=8).tolist() == [250] * 8
    resid = x.double() - mix.means[nearest]
    assert abs(resid.var().item() - 0.1) < 0.01


def test_eight_gaussians_is_deterministic_and_seeded():
    assert torch.equal(data.eight_gaussians(512, seed=3), data.eight_gaussians(512, seed=3))
    assert not torch.equal(data.eight_gaussians(512, seed=3), data.eight_gaussians(512, seed=4))


def test_eight_gaussians_same_on_every_device(device):
    x = data.eight_gaussians(64, seed=1, device=device)
    assert x.device.type == device.type
    assert torch.equal(x.cpu(), data.eight_gaussians(64, seed=1))


def test_exact_density_integrates_to_one():
    mix = data.eight_gaussians_density()
    pts, xs, _ = genlib.plot.grid(600, lim=6.0)
    h = float(xs[1] - xs[0])
    total = mix.prob(pts.double()).sum().item() * h * h
    assert abs(total - 1) < 1e-4


def test_bin_masses_match_density_quadrature():
    mix = data.eight_gaussians_density()
    edges = torch.linspace(-4.5, 4.5, 41, dtype=torch.float64)
    m = mix.bin_masses(edges, edges)
    assert abs(m.sum().item() - 1) < 1e-3  # only the far tails lie outside the grid
    # one cell by 2-D quadrature
    i, j = 30, 20
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    xs = edges[i] + (edges[i + 1] - edges[i]) * t
    ys = edges[j] + (edges[j + 1] - edges[j]) * t
    xx, yy = torch.meshgrid(xs, ys, indexing="ij")
    p = mix.prob(torch.stack([xx, yy], -1).reshape(-1, 2)).reshape(201, 201)
    quad = torch.trapezoid(torch.trapezoid(p, ys, dim=1), xs, dim=0)
    assert abs(quad.item() - m[i, j].item()) < 1e-8 + 1e-4 * m[i, j].item()


def test_entropy_matches_monte_carlo():
    mix = data.eight_gaussians_density()
    h = mix.entropy()
    assert 2.60 < h < 2.62
    x = mix.sample(200_000, torch.Generator().manual_seed(0)).double()
    mc = -mix.log_prob(x).mean().item()
    assert abs(mc - h) < 0.01


def test_two_moons_density_is_the_law_of_the_generator():
    """The quadrature mixture of two_moons_density: samples of the generator score at the estimator's floor
    against its exact bin masses, a wider set does not; the midpoint rule has converged; NLL = entropy."""
    mix = data.two_moons_density()
    assert mix.n_modes == 2 and mix.means.shape == (512, 2) and abs(mix.std - 0.2) < 1e-12
    edges = torch.linspace(-4.5, 4.5, 41, dtype=torch.float64)
    p = mix.bin_masses(edges, edges)
    assert torch.allclose(p, data.two_moons_density(1024).bin_masses(edges, edges), atol=1e-5)
    assert abs(p.sum().item() - 1) < 1e-6
    x = data.two_moons(200_000, seed=3)
    kl = genlib.metrics._kl_of_masses(p, genlib.metrics.histogram2d(x))
    wider = genlib.metrics._kl_of_masses(p, genlib.metrics.histogram2d(data.two_moons(200_000, seed=3, noise=0.13)))
    assert kl < 0.003 < 0.03 < wider
    h = mix.entropy()
    assert abs(-mix.log_prob(x.double()).mean().item() - h) < 0.01
    assert abs(h - data.two_moons_density(1024).entropy()) < 1e-4


def test_entropy_quadrature_is_converged():
    """The entropy's grid (spacing std / 4) agrees with a 4x finer rectangle rule."""
    mix = data.eight_gaussians_density()
    t = torch.linspace(-7.0, 7.0, 1401, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    lp = mix.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    fine = float(-(lp.exp() * lp).sum()) * float(t[1] - t[0]) ** 2
    assert abs(mix.entropy() - fine) < 1e-9


def test_toy_density_names_the_sets_it_knows():
    assert set(data.TOY_DENSITIES) == {"eight_gaussians", "two_moons"}
    assert torch.equal(data.toy_density("eight_gaussians").means, data.eight_gaussians_density().means)
    with pytest.raises(ValueError, match="name: unknown value 'checkerboard'"):
        data.toy_density("checkerboard")
    with pytest.raises(ValueError, match="modes: expected 8"):
        data.IsotropicGaussianMixture(data.eight_gaussians_density().means, 0.3, modes=torch.zeros(3))


def test_score_matches_autograd_of_log_density():
    mix = data.eight_gaussians_density().noised(0.8, 0.5)
    x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    assert torch.allclose(mix.score(x.detach()), g, atol=1e-10)


def test_denoiser_is_tweedie():
    mix = data.eight_gaussians_density()
    a, s = 0.7, 0.6
    y = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    tweedie = (y + s**2 * mix.noised(a, s).score(y)) / a
    assert torch.allclose(mix.denoiser(y, a, s), tweedie, atol=1e-10)


@pytest.mark.parametrize("name", list(data.TOY_DATASETS))
def test_toy_sets(name):
    x = data.toy(name, 1000, seed=0)
    assert x.shape == (1000, 2) and torch.isfinite(x).all()
    assert x.abs().max() < 6.0 and x.std() > 0.3
    assert torch.equal(x, data.toy(name, 1000, seed=0))


def test_digits_split_is_fixed():
    d = data.digits()
    assert d.train_x.shape == (1000, 1, 8, 8) and d.val_x.shape == (350, 1, 8, 8) and d.test_x.shape == (447, 1, 8, 8)
    assert d.train_x.min() >= 0 and d.train_x.max() <= 16
    assert torch.equal(d.train_x, data.digits().train_x)
    assert set(d.test_y.tolist()) == set(range(10))
    # the three splits are disjoint rows of the 1797 images: their total pixel mass equals the whole set's
    from sklearn.datasets import load_digits

    total = d.train_x.sum() + d.val_x.sum() + d.test_x.sum()
    assert total.item() == pytest.approx(float(load_digits().images.sum()))
    # a pinned fingerprint of the split: the first training labels
    assert d.train_y[:10].tolist() == data.digits().train_y[:10].tolist()


def test_names_corpus():
    c = data.names_corpus()
    assert len(c.train) + len(c.test) == 88_799
    assert abs(len(c.test) - 8880) <= 1
    assert not set(c.test) & set(c.train) or len(set(c.test) & set(c.train)) < 50
    tok = c.tokenizer
    ids = tok.encode("smith")
    assert ids[0] == 0 and ids[-1] == 0 and tok.decode(ids) == "smith"
    assert c.train[:5] == data.names_corpus().train[:5]
    first = data.names_corpus("first")
    assert len(first.train) + len(first.test) == 5_494
    b = tok.batch(["ab", "abcd"])
    assert b.shape == (2, 6) and b[0, 3:].eq(0).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.eight_gaussians(0), "n: expected an int >= 1"),
        (lambda: data.eight_gaussians(2.5), "n: expected an int"),
        (lambda: data.eight_gaussians(10, seed=-1), "seed"),
        (lambda: data.toy("nope"), "name: unknown value 'nope'"),
        (lambda: data.names_corpus("middle"), "kind: unknown value"),
        (lambda: data.eight_gaussians_density().log_prob(torch.zeros(3, 3)), "x: expected last dimension 2"),
        (lambda: data.eight_gaussians_density().log_prob(torch.full((3, 2), float("nan"))), "x: contains 6 NaN"),
        (lambda: data.CharTokenizer("ab").encode("abc"), "not in the tokenizer"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
