"""Tests of genlib.models.gan: the losses and their gradients, the optimal discriminator, the gradient
penalty, weight clipping, the alternating fit, divergence and input errors."""

import math

import pytest
import torch

import genlib
from genlib.models import gan
from genlib.train import TrainingDiverged


def _normal_pdf(x, mu, sigma):
    return torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_optimal_discriminator_matches_trained_one():
    """A discriminator trained to convergence between N(0, 1) and N(1.5, 0.5^2) matches p_r / (p_r + p_g)."""
    genlib.seed(0)
    n = 2048
    real = torch.randn(n, 1)
    fake = 1.5 + 0.5 * torch.randn(n, 1)
    disc = genlib.nn.MLP(1, 1, hidden=16, depth=2, activation="tanh")
    opt = torch.optim.Adam(disc.parameters(), lr=2e-2)
    for _ in range(300):
        loss = gan.critic_loss("ns", disc(real).squeeze(1), disc(fake).squeeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.linspace(-1.5, 2.5, 81)
    d_star = gan.optimal_discriminator(_normal_pdf(x, 0.0, 1.0), _normal_pdf(x, 1.5, 0.5))
    with torch.no_grad():
        d_hat = torch.sigmoid(disc(x[:, None]).squeeze(1))
    assert (d_hat - d_star).abs().max() < 0.06
    # the value at D* is 2 JS - log 4 (checked on the same densities by quadrature)
    grid = torch.linspace(-7, 6, 20001, dtype=torch.float64)
    pr, pg = _normal_pdf(grid, 0.0, 1.0), _normal_pdf(grid, 1.5, 0.5)
    ds = gan.optimal_discriminator(pr, pg)
    dx = grid[1] - grid[0]
    one_minus = gan.optimal_discriminator(pg, pr)  # 1 - D*, computed without cancellation
    value = ((pr * torch.log(ds) + pg * torch.log(one_minus)) * dx).sum()
    m = (pr + pg) / 2
    js = 0.5 * ((pr * torch.log(pr / m)) * dx).sum() + 0.5 * ((pg * torch.log(pg / m)) * dx).sum()
    assert abs(float(value) - (2 * float(js) - math.log(4))) < 1e-6


def test_optimal_discriminator_rejects_negative_density():
    with pytest.raises(ValueError, match="non-negative"):
        gan.optimal_discriminator(torch.tensor([-0.1]), torch.tensor([1.0]))


def test_gradient_penalty_equals_definition(device):
    # a linear critic f(x) = w.x has gradient w everywhere: the penalty is (|w| - 1)^2
    w = torch.tensor([3.0, 4.0], device=device)
    real = torch.randn(64, 2, device=device)
    fake = torch.randn(64, 2, device=device)
    gp = gan.gradient_penalty(lambda v: v @ w, real, fake)
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2, rel=1e-5)
    # f(x) = |x|^2 / 2 has gradient x; with real == fake the interpolate is x itself: E (|x| - 1)^2
    gp2 = gan.gradient_penalty(lambda v: 0.5 * (v ** 2).sum(1), real, real.clone())
    expected = ((real.norm(dim=1) - 1) ** 2).mean()
    assert gp2.item() == pytest.approx(expected.item(), rel=1e-5)
    # it is differentiable in the critic's parameters
    w_param = w.clone().requires_grad_(True)
    gan.gradient_penalty(lambda v: v @ w_param, real, fake).backward()
    assert torch.allclose(w_param.grad, 2 * (5.0 - 1.0) * w / 5.0, rtol=1e-5)


def test_gradient_penalty_shape_mismatch():
    with pytest.raises(ValueError, match="fake: expected the shape of real"):
        gan.gradient_penalty(lambda v: v.sum(1), torch.zeros(4, 2), torch.zeros(3, 2))


def test_generator_loss_gradients_documented():
    """minimax: d/dl E log(1 - D) = -D / B (vanishes as D -> 0); ns: d/dl -E log D = -(1 - D) / B."""
    logits = torch.tensor([-12.0, -3.0, 0.0, 2.0], requires_grad=True)
    d = torch.sigmoid(logits.detach())
    (g_mm,) = torch.autograd.grad(gan.generator_loss("minimax", logits), logits)
    (g_ns,) = torch.autograd.grad(gan.generator_loss("ns", logits), logits)
    assert torch.allclose(g_mm, -d / 4, atol=1e-7)
    assert torch.allclose(g_ns, -(1 - d) / 4, atol=1e-7)
    # saturation: where the discriminator confidently rejects (D ~ 6e-6) the minimax gradient all but vanishes
    assert abs(g_mm[0].item()) < 1e-5 and abs(g_ns[0].item()) > 0.24
    # the values are the documented expectations
    assert gan.generator_loss("minimax", logits).item() == pytest.approx(torch.log1p(-d).mean().item(), rel=1e-5)
    assert gan.generator_loss("ns", logits).item() == pytest.approx(-torch.log(d).mean().item(), rel=1e-5)
    assert gan.generator_loss("wgan_gp", logits).item() == pytest.approx(-logits.mean().item())


def test_critic_losses():
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5])
    dr, df = torch.sigmoid(real), torch.sigmoid(fake)
    expected = -(torch.log(dr).mean() + torch.log(1 - df).mean())
    assert gan.critic_loss("minimax", real, fake).item() == pytest.approx(expected.item(), rel=1e-6)
    assert gan.critic_loss("wgan_clip", real, fake).item() == pytest.approx(fake.mean().item() - real.mean().item())
    with pytest.raises(ValueError, match="loss: unknown value 'hinge'"):
        gan.critic_loss("hinge", real, fake)


def test_clipping_keeps_weights_in_range(device):
    genlib.seed(0)
    x = genlib.data.eight_gaussians(256, seed=0)
    model = gan.mlp_gan(hidden=16, depth=2, loss="wgan_clip", clip=0.02).to(device)
    gan.fit(model, x, steps=5, critic_steps=3, lr=5e-2, batch_size=64, progress=False, device=device)
    params = torch.cat([p.detach().flatten() for p in model.critic.parameters()])
    assert params.abs().max().item() <= 0.02 + 1e-7
    assert (params.abs() > 0.02 - 1e-6).float().mean() > 0.1  # a large learning rate pushes many to the box
    w = torch.nn.Linear(3, 3)
    gan.clip_weights(w, 0.5)
    assert w.weight.abs().max() <= 0.5
    with pytest.raises(ValueError, match="c: expected a number > 0"):
        gan.clip_weights(w, 0.0)


def test_fit_makes_critic_steps_per_step_and_averages_only_the_generator(monkeypatch):
    """gan.fit is train.fit with two players: critic_steps critic updates (each followed by the clipping of a
    clipped WGAN) per generator update; the weight average covers the generator, not the critic."""
    genlib.seed(0)
    x = genlib.data.eight_gaussians(256, seed=0)
    model = gan.mlp_gan(hidden=8, depth=1, loss="wgan_clip")
    clips = []
    clip_weights = gan.clip_weights
    monkeypatch.setattr(gan, "clip_weights", lambda m, c: (clips.append(c), clip_weights(m, c))[1])
    raw = []

    def record(step, m, history):  # callbacks see the raw weights
        raw.append({k: v.detach().clone() for k, v in m.state_dict().items()})

    hist = gan.fit(model, x, steps=6, critic_steps=3, batch_size=64, lr=1e-2, ema=0.9, progress=False,
                   callback=record)
    assert clips == [model.clip] * 18  # 3 clipped critic updates per step
    assert len(hist.loss) == len(hist.extra["critic_loss"]) == len(hist.extra["w1"]) == 6
    last = raw[-1]
    for k, v in model.state_dict().items():
        if k.startswith("critic."):
            assert torch.equal(v, last[k]), k  # the critic's last iterate
    gen = [k for k in last if k.startswith("generator.")]
    assert gen and not all(torch.equal(model.state_dict()[k], last[k]) for k in gen)  # the generator's average


def test_fit_learns_a_1d_gaussian(device):
    """A small non-saturating GAN moves its samples onto N(2, 0.5^2)."""
    genlib.seed(0)
    data = 2.0 + 0.5 * torch.randn(2048, 1)
    model = gan.mlp_gan(data_dim=1, latent_dim=1, hidden=32, depth=2, loss="ns").to(device)
    # the generator's weight average (ema) makes the 500-step result robust to the random stream (6/6 seeds
    # on CPU; the last iterate alone left a straggler mode in 3 of 6 and on CUDA)
    hist = gan.fit(model, data, steps=500, batch_size=256, lr=2e-3, ema=0.99, progress=False, device=device)
    with genlib.metrics.count_evaluations(model) as count:
        x = model.sample(4000, generator=torch.Generator(device=device).manual_seed(1))
    assert x.device.type == device.type and x.shape == (4000, 1)
    assert abs(x.mean().item() - 2.0) < 0.2
    assert abs(x.std().item() - 0.5) < 0.2
    assert len(hist.loss) == 500 and set(hist.extra) == {"critic_loss", "generator_loss", "js"}
    # the JS estimate is (log 4 - critic loss) / 2 and stays within [0, log 2] up to estimation noise
    assert hist.extra["js"][0] == pytest.approx((math.log(4) - hist.extra["critic_loss"][0]) / 2)
    assert count.per_sample(4000) == 1


def test_wgan_gp_history_and_transform(device):
    genlib.seed(0)
    x = genlib.data.eight_gaussians(256, seed=0)
    model = gan.mlp_gan(hidden=16, depth=2, loss="wgan_gp").to(device)
    hist = gan.fit(model, x, steps=3, critic_steps=2, batch_size=64, progress=False, device=device)
    assert set(hist.extra) == {"critic_loss", "generator_loss", "w1"}
    assert hist.extra["w1"] == [-c for c in hist.extra["critic_loss"]]
    z = torch.randn(5, 2, device=device)
    assert torch.equal(model.transform(z), model.transform(z))  # deterministic
    g = torch.Generator(device=device)
    assert torch.equal(model.sample(7, generator=g.manual_seed(3)), model.sample(7, generator=g.manual_seed(3)))


def test_conditional_dcgan_shapes(device):
    genlib.seed(0)
    model = gan.dcgan(latent_dim=4, channels=8, n_classes=10).to(device)
    y = torch.arange(10, device=device)
    x = model.sample(10, y=y)
    assert x.shape == (10, 1, 8, 8) and x.device.type == device.type
    assert x.min() >= 0 and x.max() <= 16  # tanh output mapped to 0..16
    d = genlib.data.digits()
    hist = gan.fit(model, (d.train_x[:64], d.train_y[:64]), steps=2, batch_size=32, progress=False, device=device)
    assert len(hist.loss) == 2
    with pytest.raises(ValueError, match="conditional GAN needs"):
        gan.fit(model, d.train_x[:64], steps=1, progress=False)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        model.sample(2, y=torch.tensor([3, 10], device=device))


def test_diverging_run_raises_naming_the_step():
    genlib.seed(0)
    x = genlib.data.eight_gaussians(256, seed=0)
    model = gan.mlp_gan(hidden=8, depth=1)

    def poison(step, m, h):
        if step == 2:
            with torch.no_grad():
                next(m.generator.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 of 10"):
        gan.fit(model, x, steps=10, batch_size=64, progress=False, callback=poison)


def test_no_likelihood():
    model = gan.mlp_gan(hidden=8, depth=1)
    assert not hasattr(model, "log_prob")
    # no single loss either: a two-player game, trained by gan.fit (genlib.train.fit with two players)
    assert not hasattr(model, "loss")
    with pytest.raises(TypeError, match="GAN has no loss"):
        genlib.train.fit(model, torch.zeros(3, 2), steps=1, progress=False)
    # the protocol leaves out the NLL of a model without log_prob
    assert "nll" not in genlib.metrics.evaluate(model, n=500)


def test_bad_inputs():
    model = gan.mlp_gan(hidden=8, depth=1)
    x = genlib.data.eight_gaussians(64, seed=0)
    with pytest.raises(ValueError, match="loss: unknown value 'wgan'"):
        gan.mlp_gan(loss="wgan")
    with pytest.raises(ValueError, match=r"data: expected shape \(N, 2\)"):
        gan.fit(model, torch.zeros(10, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="data: contains 1 NaN"):
        bad = x.clone()
        bad[0, 0] = float("nan")
        gan.fit(model, bad, steps=1, progress=False)
    with pytest.raises(ValueError, match="critic_steps: expected an int >= 1"):
        gan.fit(model, x, steps=1, critic_steps=0, progress=False)
    with pytest.raises(ValueError, match="betas: expected two numbers"):
        gan.fit(model, x, steps=1, betas=(1.2, 0.9), progress=False)
    with pytest.raises(ValueError, match="optimizer: unknown value"):
        gan.fit(model, x, steps=1, optimizer="lbfgs", progress=False)
    with pytest.raises(TypeError, match="model: expected a genlib.models.gan.GAN"):
        gan.fit(torch.nn.Linear(2, 2), x, steps=1)
    with pytest.raises(ValueError, match="z: expected last dimension 2"):
        model.transform(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        model.sample(0)
    with pytest.raises(ValueError, match="y: this GAN is unconditional"):
        model.sample(2, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="data: labels given to an unconditional GAN"):
        gan.fit(model, (x, torch.zeros(64, dtype=torch.long)), steps=1, progress=False)
    with pytest.raises(ValueError, match="a wgan_gp critic is not a probability"):
        gan.mlp_gan(hidden=8, depth=1, loss="wgan_gp").discriminator(x)


def test_zoo_recipes_registered():
    for key in ("gan_minimax", "gan_ns", "wgan_clip", "wgan_gp"):
        r = genlib.zoo.recipe(key)
        assert r.model == "gan.mlp_gan" and r.trainer == "gan"
        assert r.args["loss"] in gan.LOSSES and r.args["loss"] == key.removeprefix("gan_")  # the loss is the model's
        assert r.fit["steps"] > 0 and r.fit["critic_steps"] >= 1 and "loss" not in r.fit
        model = r.build()
        assert isinstance(model, gan.GAN) and model.loss_type == r.args["loss"]
    # the Wasserstein variants make two critic steps per generator step
    assert genlib.zoo.recipe("wgan_gp").fit["critic_steps"] == genlib.zoo.recipe("wgan_clip").fit["critic_steps"] == 2
    assert genlib.zoo.recipe("dcgan", "digits").args["n_classes"] == 0
    cgan = genlib.zoo.recipe("cgan", "digits")
    assert cgan.args["n_classes"] == 10 and cgan.data == {"set": "digits", "labels": True}
    assert cgan.build().n_classes == 10


# ------------------------------------------------------------------------------------------ rejection


class _ExactLogRatio(torch.nn.Module):
    """log N(u; m, s^2 I) - log N(u; 0, I) in 2-D: the exact log-ratio of a target to the identity generator."""

    def __init__(self, m, s):
        super().__init__()
        self.register_buffer("m", torch.as_tensor(m, dtype=torch.float32))
        self.s = s

    def forward(self, u):
        return (-((u - self.m) ** 2).sum(1) / (2 * self.s**2) - 2 * math.log(self.s) + (u**2).sum(1) / 2)[:, None]


def _identity_gan(device):
    """A GAN whose generator is the identity on 2-D noise: p_theta = N(0, I), known exactly."""
    return gan.GAN(torch.nn.Identity(), torch.nn.Linear(2, 1), latent_dim=2, data_shape=(2,)).to(device)


def test_rejection_with_the_exact_ratio_recovers_the_target(device):
    """With r = p_data / p_theta known and the cap at its maximum, the kept proposals follow p_data and the
    acceptance rate is 1 / max r (rejection sampling)."""
    m, s = torch.tensor([0.6, -0.3]), 0.5
    sampler = gan.RejectionSampler(_identity_gan(device), _ExactLogRatio(m, s), quantile=1.0).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    rate = sampler.calibrate(200_000, generator=g)
    # max of log r: gradient -(x - m)/s^2 + x = 0 at x* = m / (1 - s^2)
    x_star = m / (1 - s**2)
    log_max = float(_ExactLogRatio(m, s)(x_star[None])[0, 0])
    assert rate == pytest.approx(math.exp(-log_max), rel=0.05)
    with genlib.metrics.count_evaluations(sampler) as count:
        x = sampler.sample(20_000, generator=g)
    assert x.shape == (20_000, 2) and x.device.type == device.type
    assert torch.allclose(x.mean(0).cpu(), m, atol=0.02)
    assert torch.allclose(x.std(0).cpu(), torch.full((2,), s), atol=0.02)
    # two networks per proposal, and the proposals of the last round beyond the n kept are paid for too
    assert 0.97 * 2 / rate < count.per_sample(20_000) < 1.1 * 2 / rate
    # the same filter as a deterministic map of (z, u): G(z) where u < min(1, r / M), NaN where rejected
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4)).to(device)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(5)).to(device)
    xz = sampler.transform(torch.cat([z, u[:, None]], 1))
    kept = u < sampler.accept_probability(z)
    assert torch.equal(xz[kept], z[kept]) and xz[~kept].isnan().all() and 0 < kept.sum() < 1000
    assert torch.equal(sampler.transform(torch.cat([z, torch.zeros_like(u)[:, None]], 1)), z)  # u = 0 keeps all
    with pytest.raises(ValueError, match=r"noise: expected a tensor of shape \(n, 3\)"):
        sampler.transform(z)  # the uniform is missing
    # without the correction the proposals are far from the target: the test can fail
    assert sampler.gan.sample(20_000, generator=g).std(0).min() > 0.9


def test_fit_rejection_learns_the_log_ratio(device):
    """The classifier's logit approaches the true log-ratio where the data are, and the sampler's points
    move from the proposal N(0, I) towards the data's N(m, 0.5^2 I)."""
    genlib.seed(0)
    m, s = torch.tensor([0.6, -0.3]), 0.5
    data = (m + s * torch.randn(2000, 2)).to(device)
    sampler = gan.rejection_sampler(_identity_gan(device), hidden=32, depth=2, seed=0)
    hist = gan.fit_rejection(sampler, data, steps=1500, batch_size=256, lr=3e-3, progress=False)
    assert len(hist.loss) == 1500 and hist.loss[-1] < hist.loss[0]
    probe = (m + s * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))).to(device)
    with torch.no_grad():
        learned = sampler.ratio(probe).cpu()
    exact = _ExactLogRatio(m, s)(probe.cpu())[:, 0]
    assert (learned - exact).abs().median() < 0.3
    x = sampler.sample(10_000, generator=torch.Generator(device=device).manual_seed(2)).cpu()
    assert torch.allclose(x.mean(0), m, atol=0.1)
    assert (x.std(0) - s).abs().max() < 0.1
    assert 0 < float(sampler.acceptance_rate) < 1


def test_rejection_sampler_on_images(device):
    """An unconditional DCGAN: the classifier sees flattened images, one log-ratio per image."""
    genlib.seed(0)
    sampler = gan.rejection_sampler(gan.dcgan(latent_dim=4, channels=8).to(device), hidden=16, depth=1)
    x = genlib.data.digits(device=device).train_x[:32]
    hist = gan.fit_rejection(sampler, x, steps=3, batch_size=16, progress=False)
    assert len(hist.loss) == 3 and sampler.ratio(x).shape == (32,)
    out = sampler.sample(5, generator=torch.Generator(device=device).manual_seed(0))
    assert out.shape == (5, 1, 8, 8) and out.device.type == device.type


def test_rejection_bad_inputs():
    model = gan.mlp_gan(hidden=8, depth=1)
    with pytest.raises(ValueError, match=r"quantile: expected a value in \(0, 1\]"):
        gan.rejection_sampler(model, quantile=0.0)
    sampler = gan.rejection_sampler(model, hidden=8, depth=1)
    with pytest.raises(RuntimeError, match="not calibrated"):
        sampler.sample(3)
    assert not hasattr(sampler, "log_prob")
    with pytest.raises(TypeError, match="model: expected a GAN"):
        gan.rejection_sampler(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="for unconditional GANs"):
        gan.rejection_sampler(gan.dcgan(latent_dim=4, channels=8, n_classes=10))
    with pytest.raises(TypeError, match="sampler: expected a RejectionSampler"):
        gan.fit_rejection(model, torch.zeros(10, 2))
    with pytest.raises(ValueError, match=r"data: expected points of shape \(2,\), got \(3,\)"):
        gan.fit_rejection(sampler, torch.zeros(10, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="data: contains 1 NaN"):
        bad = torch.zeros(10, 2)
        bad[3, 1] = float("nan")
        gan.fit_rejection(sampler, bad, steps=1, progress=False)
    sampler.calibrate(1000)
    sampler.log_cap.fill_(1e4)  # a cap no point reaches: every proposal is rejected
    with pytest.raises(RuntimeError, match=r"kept 0 of \d+ proposals in 100 rounds"):
        sampler.sample(10)
    with torch.no_grad():
        next(sampler.ratio.net.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite logits"):
        sampler.calibrate(100)


def test_zoo_gan_is_the_wgan_gp_generator_with_rejection():
    r, base = genlib.zoo.recipe("gan"), genlib.zoo.recipe("wgan_gp")
    assert r.model == "gan.mlp_rejection_sampler" and r.trainer == "rejection"
    assert r.args["gan"] == base.args  # the same generator (and critic) as the WGAN-GP recipe
    assert {"hidden", "depth", "quantile"} <= set(r.args) and 0 < r.args["quantile"] <= 1
    assert r.needs == (("wgan_gp", "eight_gaussians", None),)  # trained on the same seed
    assert r.init_from == "wgan_gp" and r.init_into == "gan" and r.data == base.data
    assert r.fit["steps"] > 0 and "critic_steps" not in r.fit  # the classifier's settings, not the game's
    sampler = r.build()
    assert isinstance(sampler, gan.RejectionSampler)
    # the trained WGAN-GP's weights load into the sampler's GAN (what init_into does), shape for shape
    wgan = base.build()
    sampler.get_submodule(r.init_into).load_state_dict(wgan.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(sampler.gan.state_dict().values(), wgan.state_dict().values(),
                                                   strict=True))
