import math

import pytest
import torch

from genlib import data, metrics


def test_binned_kl_floor_of_true_samples():
    mix = data.eight_gaussians_density()
    kl = metrics.binned_kl(mix.sample(100_000, torch.Generator().manual_seed(0)))
    assert abs(kl - 0.0043) < 0.002
    assert abs(metrics.binned_kl_floor() - 0.0043) < 0.002


def test_binned_kl_detects_a_blurred_model():
    mix = data.eight_gaussians_density()
    blurred = data.IsotropicGaussianMixture(mix.means, 1.5 * mix.std)
    assert metrics.binned_kl(blurred.sample(100_000, torch.Generator().manual_seed(0))) > 0.1


def test_binned_kl_counts_samples_outside_the_grid_as_lost_mass():
    x = data.eight_gaussians_density().sample(100_000, torch.Generator().manual_seed(0))
    half_lost = torch.cat([x[:50_000], torch.full((50_000, 2), 10.0)])
    # P puts almost no mass outside the grid, so Q's in-grid cells are half what they should be: KL ~ log 2
    assert metrics.binned_kl(half_lost) > metrics.binned_kl(x[:50_000]) + 0.9 * math.log(2)


def test_kde_baseline_and_oracle_reference_points():
    kde = metrics.kde_baseline()
    assert abs(kde["binned_kl"] - 0.036) < 0.006
    assert 0.05 < kde["bandwidth"] < 0.4
    oracle = metrics.parametric_oracle()
    assert abs(oracle - 0.015) < 0.005
    assert metrics.binned_kl_floor() < oracle < kde["binned_kl"]


def test_nll_of_the_true_density_is_the_entropy():
    mix = data.eight_gaussians_density()
    assert abs(metrics.nll(lambda x: mix.log_prob(x.double())) - metrics.true_entropy()) < 0.02
    wide = data.IsotropicGaussianMixture(mix.means, 2 * mix.std)
    assert metrics.nll(lambda x: wide.log_prob(x.double())) > metrics.true_entropy() + 0.3


def test_w2_is_zero_on_itself_and_grows_with_a_shift():
    x = data.eight_gaussians(500, seed=0)
    assert metrics.w2(x, x) < 1e-6
    shifts = [metrics.w2(x, x + torch.tensor([s, 0.0])) for s in (0.5, 1.0, 2.0)]
    assert shifts[0] == pytest.approx(0.5, rel=1e-3) and shifts[0] < shifts[1] < shifts[2]
    ref = metrics.w2_reference(1000)
    assert 0.1 < ref < 0.35


def test_mmd_is_unbiased_and_separates():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 2, generator=g)
    b = torch.randn(400, 2, generator=g)
    vals = [metrics.mmd(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)) for _ in range(20)]
    assert abs(sum(vals) / len(vals)) < 0.005  # unbiased: mean near 0 for equal laws (it can be negative)
    assert metrics.mmd(a, b + 1.0) > 0.1


def test_mode_stats():
    mix = data.eight_gaussians_density()
    x = mix.sample(8000, torch.Generator().manual_seed(0))
    s = metrics.mode_stats(x)
    assert s["modes_covered"] == 8 and s["on_mode"] > 0.98
    collapsed = x[torch.cdist(x.double(), mix.means).argmin(1) < 3]
    assert metrics.mode_stats(collapsed)["modes_covered"] == 3
    assert metrics.mode_stats(torch.zeros(100, 2))["on_mode"] == 0.0


class _TrueModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))
        self.mix = data.eight_gaussians_density()

    def sample(self, n, generator=None):
        return self.mix.sample(n, generator, device=self.anchor.device)

    def log_prob(self, x):
        return self.mix.log_prob(x.double()).float()



@pytest.mark.parametrize("dataset", ["eight_gaussians", "two_moons"])
def test_mode_distance_agrees_with_mode_stats(dataset):
    x = 2.5 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    d = metrics.mode_distance(x, dataset=dataset)
    assert d.shape == (5000,) and bool((d >= 0).all())
    assert float((d < 3).double().mean()) == metrics.mode_stats(x, dataset=dataset)["on_mode"]
    mix = data.toy_density(dataset)
    assert float(metrics.mode_distance(mix.means[:3].float(), dataset=dataset).abs().max()) < 1e-6

def test_evaluate_runs_the_protocol_on_a_perfect_model():
    out = metrics.evaluate(_TrueModel())
    assert out["binned_kl"] < 0.007
    assert out["modes_covered"] == 8 and out["on_mode"] > 0.98
    assert abs(out["nll"] - metrics.true_entropy()) < 0.03
    assert out["w2"] < 0.35 and out["nfe"] == 0 and out["sample_seconds"] > 0


def test_digits_classifier_metrics(tmp_cache):
    d = data.digits()
    clf = metrics.digits_classifier()
    acc = (clf(d.test_x).argmax(1) == d.test_y).float().mean().item()
    assert acc >= 0.95
    assert metrics.label_entropy(d.test_x) > 2.25
    assert metrics.label_entropy(d.test_x[d.test_y == 3]) < 0.5
    fd_real = metrics.frechet_distance(d.val_x)
    fd_noise = metrics.frechet_distance(torch.rand(350, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16)
    assert fd_real < 0.2 * fd_noise


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.binned_kl(torch.zeros(10, 3)), "samples: expected last dimension 2"),
        (lambda: metrics.binned_kl(torch.zeros(10, 2, dtype=torch.long)), "floating-point"),
        (lambda: metrics.w2(torch.zeros(5, 2), torch.zeros(5, 3)), "dimensions differ"),
        (lambda: metrics.mode_stats(torch.full((4, 2), float("nan"))), "NaN"),
        (lambda: metrics.label_entropy(torch.zeros(4, 1, 7, 7)), "8x8 images"),
        (lambda: metrics.kde_binned_kl(torch.zeros(5, 2), -1.0), "bandwidth"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_protocol_table_lists_models_and_reference_points():
    out = metrics.evaluate(_TrueModel(), n=20_000)
    table = metrics.protocol_table({"truth": out})
    lines = table.splitlines()
    assert lines[0].startswith("| model | binned KL | NLL (nats) | W2 | modes |")
    assert lines[2].startswith("| truth | ") and "| 8 |" in lines[2]
    assert any("KDE baseline" in line for line in lines) and len(lines) == 6
    with pytest.raises(ValueError, match="rows"):
        metrics.protocol_table({})


def test_reference_points_are_cached_on_disk_and_recomputed_when_corrupt(tmp_cache):
    metrics.reference_points.cache_clear()
    ref = metrics.reference_points()
    files = list(tmp_cache.glob("reference-points-*.json"))
    assert len(files) == 1
    assert abs(ref["floor"] - 0.0043) < 0.002 and abs(ref["entropy"] - 2.613) < 0.002
    files[0].write_text("{not json")
    metrics.reference_points.cache_clear()
    assert metrics.reference_points() == ref
    metrics.reference_points.cache_clear()


def test_protocol_on_two_moons(tmp_cache):
    """The second data set: its own exact law, floor, KDE baseline (no parametric oracle), two modes."""
    mix = data.two_moons_density()
    x = mix.sample(100_000, torch.Generator().manual_seed(0))
    s = metrics.mode_stats(x, dataset="two_moons")
    assert s["modes_covered"] == 2 and s["on_mode"] > 0.99
    upper = x[x[:, 1] > 0.75 + 0.5 * x[:, 0].abs()]  # well inside the upper moon, away from the lower one
    assert metrics.mode_stats(upper, dataset="two_moons")["modes_covered"] == 1
    eight = data.eight_gaussians(20_000, seed=0)
    assert metrics.mode_stats(eight, dataset="two_moons")["on_mode"] < 0.5
    assert metrics.binned_kl(eight, dataset="two_moons") > 1.0 > 0.01 > metrics.binned_kl(x, dataset="two_moons")
    metrics.reference_points.cache_clear()
    ref = metrics.reference_points("two_moons")
    assert ref["oracle"] is None and ref["floor"] < 0.005 < ref["kde"] < 0.05 and 0.04 <= ref["kde_bandwidth"] < 0.2
    assert abs(ref["entropy"] - mix.entropy()) < 1e-12 and ref != metrics.reference_points()
    assert len(list(tmp_cache.glob("reference-points-two_moons-*.json"))) == 1
    table = metrics.protocol_table({"truth": {"binned_kl": 0.003}}, dataset="two_moons").splitlines()
    assert not any("oracle" in ln for ln in table) and any("KDE baseline" in ln for ln in table)
    with pytest.raises(ValueError, match="oracle is defined for 'eight_gaussians'"):
        metrics.parametric_oracle(dataset="two_moons")
    with pytest.raises(ValueError, match="name: unknown value 'spirals'"):
        metrics.reference_points("spirals")
    metrics.reference_points.cache_clear()


def test_nats_to_bits_per_dim():
    # a uniform distribution over 17 levels per pixel costs log2(17) bits per pixel
    assert metrics.nats_to_bits_per_dim(64 * math.log(17), 64) == pytest.approx(math.log2(17))
    with pytest.raises(ValueError, match="dim"):
        metrics.nats_to_bits_per_dim(1.0, 0)


def test_digits_classifier_lives_in_nn_and_trains_on_shifted_digits():
    from genlib import nn, zoo

    assert metrics.DigitsClassifier is nn.DigitsClassifier  # still importable from metrics
    r = zoo.recipe("digits_classifier", "digits")
    assert r.model == "genlib.nn.DigitsClassifier" and r.data["augment"] == "shift1"
    torch.manual_seed(0)
    clf = r.build()
    assert isinstance(clf, nn.DigitsClassifier)
    x, y = data.digits().train_x[:6], data.digits().train_y[:6]
    assert clf(x).shape == (6, 10) and clf.features(x).shape == (6, 64)
    assert torch.isfinite(clf.loss(x, y)) and clf.loss(x, y).ndim == 0
    # the augmentation: the images, then their four one-pixel shifts (right, left, down, up), labels repeated
    xa, ya = data.shift_augment(x, y)
    assert xa.shape == (30, 1, 8, 8) and torch.equal(ya, y.repeat(5))
    assert torch.equal(xa[:6], x)
    assert torch.equal(xa[6:12, :, :, 1:], x[:, :, :, :-1])  # shifted one pixel right
    assert torch.equal(xa[12:18, :, :, :-1], x[:, :, :, 1:])  # one pixel left
    assert torch.equal(xa[18:24, :, 1:], x[:, :, :-1])  # one pixel down
    assert torch.equal(xa[24:, :, :-1], x[:, :, 1:])  # one pixel up


class _HalfNaN(torch.nn.Module):
    """A sampler from the true eight Gaussians whose every other sample is NaN."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def sample(self, n, generator=None):
        x = data.eight_gaussians_density().sample(n, generator=torch.Generator().manual_seed(0)).float()
        x[::2] = float("nan")
        return x


def test_evaluate_counts_non_finite_samples_as_lost_mass():
    out = metrics.evaluate(_HalfNaN(), n=20_000)
    assert out["non_finite"] == 10_000
    # half the mass is missing: far from the 0.0045 floor, and no better than on_mode 0.5
    assert out["binned_kl"] > 0.3 and out["on_mode"] <= 0.5 and out["w2"] == float("inf")
    assert out["modes_covered"] == 8  # each mode still holds more than 1% of all samples

    class AllNaN(_HalfNaN):
        def sample(self, n, generator=None):
            return torch.full((n, 2), float("nan"))

    with pytest.raises(ValueError, match="all 100 samples are NaN or infinite"):
        metrics.evaluate(AllNaN(), n=100)


def test_nll_checks_the_shape_log_prob_returns():
    mix = data.eight_gaussians_density()
    assert abs(metrics.nll(mix.log_prob, n=2000) - 2.61) < 0.1
    with pytest.raises(ValueError, match=r"log_prob: expected one log-density per row, shape \(2000,\), got \(\)"):
        metrics.nll(lambda x: mix.log_prob(x).mean(), n=2000)


def test_evaluation_leaves_the_model_as_it_was():
    from genlib.models import flows

    torch.manual_seed(0)
    flow = flows.coupling_flow(2, n_layers=2, hidden=8)
    flow.train()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    metrics.nll(flow, n=500)
    metrics.evaluate(flow, n=500, with_nll=False)
    assert flow.training and all(m.training for m in flow.modules())
    assert all(torch.equal(v, flow.state_dict()[k]) for k, v in before.items())  # ActNorm not initialised
