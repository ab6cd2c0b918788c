import math
import warnings

import numpy as np
import pytest
import torch

from genlib import data, metrics, zoo
from genlib.models.gmm import GaussianMixture, fit, kmeans_plusplus


@pytest.fixture(scope="module")
def train():
    return data.eight_gaussians(2000, seed=0)


def test_em_log_likelihood_never_decreases(train):
    for init in ("random", "kmeans++"):
        m = GaussianMixture(10)
        h = fit(m, train, init=init, steps=60, tol=0.0, seed=3, progress=False)
        ll = np.array(h.extra["log_likelihood"])
        assert len(ll) == 61 and h.steps == 60
        assert np.all(np.diff(ll) >= -1e-10), f"{init}: the log-likelihood decreased"
        assert ll[-1] - ll[0] > (1.0 if init == "random" else 1e-3)  # and EM did improve it
        # the last entry is the returned model's mean log-likelihood
        assert abs(ll[-1] - float(m.log_prob(train.double()).mean())) < 1e-9


def test_tolerance_stops_early(train):
    m = GaussianMixture(8)
    h = fit(m, train, steps=500, tol=1e-3, progress=False)
    ll = h.extra["log_likelihood"]
    assert h.extra["converged"] == [1.0] and h.steps < 500
    assert abs(ll[-1] - ll[-2]) < 1e-3


def test_agrees_with_scikit_learn_from_the_same_start(train):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    m = GaussianMixture(10)
    m.initialize(train, "random", generator=torch.Generator().manual_seed(1))
    w0, mu0, c0 = (t.clone() for t in (m.weights, m.means, m.covariances))
    fit(m, train, init=None, steps=40, tol=0.0, progress=False)
    sk = SkGaussianMixture(10, covariance_type="full", weights_init=w0.numpy(), means_init=mu0.numpy(),
                           precisions_init=np.linalg.inv(c0.numpy()), max_iter=40, tol=0.0, reg_covar=1e-6)
    x = train.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that 40 iterations did not converge
        sk.fit(x)
    assert abs(float(m.log_prob(train.double()).mean()) - sk.score(x)) < 1e-6
    assert np.allclose(np.sort(m.weights.numpy()), np.sort(sk.weights_), atol=1e-6)


def test_log_prob_integrates_to_one(train):
    m = GaussianMixture(3)
    fit(m, train[:300], seed=0, progress=False)
    h = 0.04
    t = torch.arange(-9, 9 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    mass = float(m.log_prob(pts).exp().sum()) * h * h
    assert abs(mass - 1.0) < 1e-3


def test_sampling_matches_weights_and_components():
    m = GaussianMixture(3)
    cov = torch.tensor([[[1.0, 0.5], [0.5, 2.0]], [[0.2, 0.0], [0.0, 0.2]], [[3.0, -1.0], [-1.0, 1.0]]])
    m.set_parameters(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 2.0]]), cov)
    noise = m.base.sample(40_000, torch.Generator().manual_seed(0))
    with metrics.count_evaluations(m) as count:
        x = m.transform(noise)
    k = m.components(noise)
    assert x.shape == (40_000, 2) and x.dtype == torch.float32 and count.per_sample(40_000) == 0
    assert torch.equal(x, m.sample(40_000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(k, minlength=3).double() / 40_000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=4 * math.sqrt(0.25 / 40_000))
    for j in range(3):
        xj = x[k == j].double()
        assert torch.allclose(xj.mean(0), m.means[j], atol=0.05)
        assert torch.allclose(torch.cov(xj.T), m.covariances[j], atol=0.1)


def test_transform_is_the_affine_map_of_the_chosen_component():
    m = GaussianMixture(2)
    m.set_parameters(torch.tensor([0.25, 0.75]), torch.tensor([[1.0, 2.0], [-3.0, 0.0]]),
                     torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 9.0]]]))
    z = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(m.component_map(z, 0), torch.tensor([[3.0, 3.0], [3.0, 3.0]]))
    noise = torch.cat([torch.tensor([[0.1], [0.9]]), z], 1).double()
    assert torch.allclose(m.transform(noise), torch.tensor([[3.0, 3.0], [-2.0, 3.0]]))
    assert torch.equal(m.components(noise), torch.tensor([0, 1]))
    assert torch.allclose(m.transform(noise, component=0), torch.tensor([[3.0, 3.0], [3.0, 3.0]]))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = m.sample(10, generator=g1)
    u, z = torch.rand(10, 1, generator=g2, dtype=torch.float64), torch.randn(10, 2, generator=g2, dtype=torch.float64)
    assert torch.allclose(x, m.transform(torch.cat([u, z], 1)))


def test_singular_component_gives_no_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 2, generator=g), torch.full((50, 2), 3.0)])  # 50 copies of one point
    for reg in (1e-6, 0.0):
        m = GaussianMixture(4, reg_covar=reg)
        h = fit(m, x, seed=0, progress=False)
        assert all(math.isfinite(v) for v in h.extra["log_likelihood"])
        assert torch.isfinite(m.log_prob(x)).all() and torch.isfinite(m.sample(100)).all()
    # more components than distinct points: every component collapses, still finite
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(20, 1)
    m = GaussianMixture(5)
    fit(m, pts, seed=0, progress=False)
    assert torch.isfinite(m.log_prob(pts)).all() and torch.isfinite(m.covariances).all()


def test_bic_formula_and_choice_of_k(train):
    fits = {}
    for k in (2, 8):
        m = GaussianMixture(k)
        fit(m, train, n_init=3, seed=0, progress=False)
        fits[k] = m
    m8 = fits[8]
    assert m8.n_parameters == 7 + 16 + 24
    expected = -2 * float(m8.log_prob(train.double()).sum()) + 47 * math.log(2000)
    assert abs(m8.bic(train) - expected) < 1e-6
    assert m8.bic(train) < fits[2].bic(train) - 1000


def test_kmeans_plusplus_picks_distinct_data_points(train):
    c = kmeans_plusplus(train.double(), 8, generator=torch.Generator().manual_seed(0))
    assert c.shape == (8, 2) and torch.unique(c, dim=0).shape[0] == 8
    assert all(bool((train.double() == row).all(1).any()) for row in c)


def test_bad_input_gives_clear_errors(train):
    with pytest.raises(ValueError, match="n_components: expected an int >= 1"):
        GaussianMixture(0)
    m = GaussianMixture(3)
    with pytest.raises(ValueError, match="data: expected last dimension 2"):
        fit(m, torch.randn(100, 3), progress=False)
    with pytest.raises(ValueError, match="data: contains 1 NaN"):
        bad = train.clone()
        bad[5, 1] = float("nan")
        fit(m, bad, progress=False)
    with pytest.raises(ValueError, match="init: unknown value 'kmeans'"):
        fit(m, train, init="kmeans", progress=False)
    with pytest.raises(ValueError, match="at least n_components = 3 rows"):
        fit(m, train[:2], progress=False)
    with pytest.raises(ValueError, match="x: expected last dimension 2"):
        m.log_prob(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"noise: expected a tensor of shape \(n, 3\)"):
        m.transform(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"k: component indices must lie in \[0, 3\)"):
        m.component_map(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]))


def test_zoo_models_round_trip_and_meet_targets(tmp_cache):
    a = zoo.get("gmm", device="cpu", progress=False)
    b = zoo.get("gmm", device="cpu", progress=False)  # loaded from the cache
    assert a.n_components == 10
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert b.history.extra["log_likelihood"] == a.history.extra["log_likelihood"]
    gen = torch.Generator().manual_seed(metrics.EVAL_SEED)
    assert metrics.binned_kl(b.sample(100_000, generator=gen)) <= 0.03
    assert metrics.nll(b) - metrics.true_entropy() <= 0.03
    k8 = zoo.get("gmm_k8", device="cpu", progress=False)
    gen = torch.Generator().manual_seed(metrics.EVAL_SEED)
    assert metrics.binned_kl(k8.sample(100_000, generator=gen)) <= 0.02


def test_fit_on_device_matches_cpu(train, device):
    m_cpu, m_dev = GaussianMixture(8), GaussianMixture(8).to(device)
    fit(m_cpu, train, seed=1, steps=30, tol=0.0, progress=False)
    fit(m_dev, train.to(device), seed=1, steps=30, tol=0.0, progress=False)
    assert m_dev.means.device.type == device.type
    assert abs(m_cpu.history.extra["log_likelihood"][-1] - m_dev.history.extra["log_likelihood"][-1]) < 1e-6
    x = m_dev.sample(50)
    assert x.device.type == device.type and x.shape == (50, 2)
    assert m_dev.log_prob(x).device.type == device.type


def test_bad_mixture_parameters_are_rejected_not_changed():
    m = GaussianMixture(2, 2)
    w, mu, eye = torch.tensor([0.5, 0.5]), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1)
    with pytest.raises(ValueError, match=r"covariances: component\(s\) \[1\] are not positive definite"):
        m.set_parameters(w, mu, torch.stack([torch.eye(2), -torch.eye(2)]))
    with pytest.raises(ValueError, match=r"covariances: component\(s\) \[0\] are not symmetric"):
        m.set_parameters(w, mu, torch.stack([torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.eye(2)]))
    with pytest.raises(ValueError, match="weights: contains 1 NaN"):
        m.set_parameters(torch.tensor([float("nan"), 0.5]), mu, eye)
    noise = m.base.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"k: component indices must lie in \[0, 2\)"):
        m.transform(noise, component=torch.tensor([-1, -1]))
    assert torch.equal(m.covariances, eye.double())  # nothing was changed by the refused calls
