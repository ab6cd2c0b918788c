"""Tests of genlib.models.vae: the bounds, the KL, the reparameterisation gradient, VQ straight-through,
codebook indices, the discrete likelihoods, the prior hook of the VQ-VAE, and errors on bad input."""

import math

import pytest
import torch

from genlib import data, metrics, train, zoo
from genlib.metrics import nats_to_bits_per_dim
from genlib.models.vae import VAE, VQVAE, Autoencoder, gaussian_kl, gaussian_log_prob


def _digits(device, n=64):
    return data.digits(device=device).train_x[:n]


def test_closed_form_kl_matches_monte_carlo(device):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g).to(device)
    logvar = (0.5 * torch.randn(3, 4, generator=g)).to(device)
    n = 200_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, 4, generator=g).to(device)
    log_ratio = gaussian_log_prob(z, mu, logvar) - gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    exact = gaussian_kl(mu, logvar)
    assert exact.shape == (3,)
    assert bool(((mc - exact).abs() < 5 * se).all()), (mc, exact, se)
    assert bool((exact >= 0).all())
    assert float(gaussian_kl(torch.zeros(1, 2), torch.zeros(1, 2))) == 0.0


def test_reparameterised_gradient_is_unbiased(device):
    # f(z) = z^2 with z ~ N(mu, sigma^2): E f = mu^2 + sigma^2, so dE/dmu = 2 mu and dE/dlogvar = sigma^2.
    model = VAE((2,), latent_dim=3).to(device)
    mu = torch.tensor([[0.7, -1.2, 0.0]], device=device, requires_grad=True)
    logvar = torch.tensor([[0.0, -1.0, 0.8]], device=device, requires_grad=True)
    k = 400_000
    z = model.reparameterise(mu, logvar, k=k, generator=torch.Generator(device=device).manual_seed(0))
    assert z.shape == (k, 1, 3)
    f = z.pow(2)
    f.mean(0).sum().backward()
    with torch.no_grad():
        sigma2 = logvar.exp()
        # per-sample gradients 2 z and z (z - mu): their standard errors bound the Monte Carlo error
        se_mu = (2 * z).std(0) / math.sqrt(k)
        se_lv = (z * (z - mu)).std(0) / math.sqrt(k)
    assert bool(((mu.grad - 2 * mu).abs() < 5 * se_mu).all()), (mu.grad, 2 * mu)
    assert bool(((logvar.grad - sigma2).abs() < 5 * se_lv).all()), (logvar.grad, sigma2)


def test_elbo_below_iw_bound_which_tightens_with_k(device):
    torch.manual_seed(0)
    model = VAE((2,), latent_dim=2, hidden=32, depth=2).to(device)
    x = data.eight_gaussians(64, seed=0, device=device)
    g = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(200)]).mean()
        bounds = {k: torch.stack([model.iw_bound(x, k=k, generator=g) for _ in range(20)]).mean() for k in (1, 8, 64)}
    # k = 1 is the ELBO in expectation; more samples give a tighter (larger) bound
    assert abs(float(bounds[1] - elbo)) < 0.05 * abs(float(elbo))
    assert float(elbo) < float(bounds[8]) < float(bounds[64])


def test_iw_bound_beta_weights_the_prior_ratio_and_drives_iwae_training(device):
    torch.manual_seed(0)
    model = VAE((2,), latent_dim=2, hidden=32, depth=2).to(device)
    x = data.eight_gaussians(16, seed=0, device=device)

    def gen():
        return torch.Generator(device=device).manual_seed(3)

    with torch.no_grad():
        full = model.iw_bound(x, k=8, generator=gen())
        assert torch.equal(model.iw_bound(x, k=8, generator=gen(), beta=1.0), full)
        # beta = 0: log (1/k) sum_i p(x | z_i), the reconstruction part alone
        mu, logvar = model.posterior(x)
        z = model.reparameterise(mu, logvar, k=8, generator=gen())
        expected = torch.logsumexp(model.log_likelihood(x, z), 0) - math.log(8)
        assert torch.allclose(model.iw_bound(x, k=8, generator=gen(), beta=0.0), expected, atol=1e-5)
        # the IWAE training loss uses the model's current (warm-up) beta
        model.train_k, model.beta = 8, 0.25
        torch.manual_seed(5)
        loss = model.loss(x)
        torch.manual_seed(5)
        assert torch.allclose(loss, -model.iw_bound(x, k=8, beta=0.25).mean())


def test_iwae_warmup_avoids_posterior_collapse():
    # On the eight Gaussians a VAE trained on L_8 from the start falls into the collapsed solution (the decoder
    # ignores z, every posterior is the prior); the KL warm-up inside the weights lets the decoder use the code.
    kl = {}
    x = data.eight_gaussians(2000, seed=0)
    for warmup in (0, 300):
        torch.manual_seed(0)
        model = VAE((2,), latent_dim=2, hidden=64, depth=3, train_k=8, kl_warmup=warmup)
        train.fit(model, x, steps=1500, batch_size=128, lr=2e-3, schedule="cosine", seed=0, progress=False)
        with torch.no_grad():
            mu, logvar = model.posterior(data.eight_gaussians(2000, seed=0))
        kl[warmup] = float(gaussian_kl(mu, logvar).mean())
    assert kl[0] < 0.05 and kl[300] > 1.0, kl


@pytest.mark.parametrize("likelihood", ["categorical", "binomial"])
def test_discrete_likelihoods_are_normalised(device, likelihood):
    torch.manual_seed(0)
    model = VAE((1,), latent_dim=2, hidden=16, depth=1, likelihood=likelihood, levels=17).to(device)
    x = torch.arange(17, dtype=torch.float32, device=device)[:, None]
    z = torch.randn(1, 2, device=device).expand(17, 2)
    total = model.log_likelihood(x, z).exp().sum()
    assert abs(float(total.detach()) - 1.0) < 1e-4
    # the decoder mean is the mean of that distribution
    mean = (model.log_likelihood(x, z).exp() * x[:, 0]).sum().detach()
    assert abs(float(mean) - float(model.decode(z[:1]).detach().reshape(()))) < 1e-3


def test_digits_vae_shapes_bits_and_noise(device):
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=4, hidden=32, depth=1, likelihood="categorical").to(device)
    x = _digits(device, 16)
    assert model.encode(x).shape == (16, 4)
    img = model.decode(torch.zeros(5, 4, device=device))
    assert img.shape == (5, 1, 8, 8) and bool(((img >= 0) & (img <= 16)).all())
    s = model.sample(7, generator=torch.Generator(device=device).manual_seed(0), noise=True)
    assert s.shape == (7, 1, 8, 8) and bool((s == s.round()).all()) and s.device.type == device.type
    # the bound of the untrained model is close to the uniform code length log2(17) bits per pixel
    bpp = nats_to_bits_per_dim(-model.elbo(x).mean().detach(), 64)
    assert 3.0 < float(bpp) < 6.0


def test_short_training_lowers_the_digits_bound():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=4, hidden=64, depth=1, likelihood="categorical")
    test_x = data.digits().test_x
    with torch.no_grad():
        before = float(-model.iw_bound(test_x, k=8).mean()) / (64 * math.log(2))
    train.fit(model, data.digits().train_x, steps=300, batch_size=128, lr=3e-3, schedule="cosine", seed=0,
              progress=False)
    with torch.no_grad():
        after = float(-model.iw_bound(test_x, k=8).mean()) / (64 * math.log(2))
    assert before > 3.5 and after < 2.5, (before, after)


def test_vq_straight_through_reaches_the_encoder(device):
    torch.manual_seed(0)
    model = VQVAE(codebook_size=8, code_dim=4, channels=8).to(device).train()
    x = _digits(device, 8)
    terms = model.loss_terms(x)
    terms["reconstruction"].backward()
    enc = [p.grad for p in model.encoder.parameters()]
    assert all(gr is not None for gr in enc) and sum(float(gr.abs().sum()) for gr in enc) > 0
    # the reconstruction term does not move the codebook (only the codebook loss does)
    assert model.codebook.weight.grad is None or float(model.codebook.weight.grad.abs().sum()) == 0.0
    model.zero_grad()
    model.loss_terms(x)["codebook"].backward()
    assert float(model.codebook.weight.grad.abs().sum()) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.encoder.parameters())


def test_codebook_indices_in_range_and_decode(device):
    torch.manual_seed(0)
    model = VQVAE(codebook_size=8, code_dim=4, channels=8).to(device)
    x = _digits(device, 32)
    model.train()
    model.loss(x)  # initialises the codebook from encoder outputs
    model.eval()
    idx = model.encode_indices(x)
    assert idx.dtype == torch.long and idx.shape == (32, *model.code_shape)
    assert int(idx.min()) >= 0 and int(idx.max()) < model.codebook_size
    img = model.decode_indices(idx)
    assert img.shape == (32, 1, 8, 8) and bool(((img >= 0) & (img <= 16)).all())
    assert torch.equal(model.decode_indices(idx.reshape(32, -1)), img)
    usage = model.codebook_usage(idx)
    assert 1 <= usage["used"] <= 8 and 1.0 <= usage["perplexity"] <= usage["used"] + 1e-9
    # quantisation picks the nearest code
    ze = model.encode_continuous(x[:2])
    zq, k = model.quantise(ze)
    d = ((ze.permute(0, 2, 3, 1)[..., None, :] - model.codebook.weight) ** 2).sum(-1)
    assert torch.equal(k, d.argmin(-1))


class _UniformPrior:
    def __init__(self, k, shape):
        self.k, self.shape = k, shape

    def sample(self, n, generator=None):
        return torch.randint(self.k, (n, *self.shape), generator=generator)


def test_vqvae_sample_needs_a_prior(device):
    model = VQVAE(codebook_size=8, code_dim=4, channels=8).to(device).eval()
    with pytest.raises(ValueError, match="prior"):
        model.sample(4)
    assert not hasattr(model, "base")  # no prior over codes, no base distribution
    prior = _UniformPrior(8, model.code_shape)
    with metrics.count_evaluations(model) as count:
        out = model.sample(4, generator=torch.Generator().manual_seed(0), prior=prior)
    assert out.shape == (4, 1, 8, 8) and out.device.type == device.type and count.per_sample(4) == 1
    model.attach_prior(prior)
    assert model.sample(3).shape == (3, 1, 8, 8)
    assert "prior" not in dict(model.named_modules()) and not any("prior" in k for k in model.state_dict())
    with pytest.raises(ValueError, match="idx"):
        model.sample(2, prior=_UniformPrior(9, (2, 2)))


def test_bad_inputs_give_clear_errors():
    vae = VAE((2,), latent_dim=2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="x: expected shape"):
        vae.elbo(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        vae.loss(torch.full((4, 2), float("nan")))
    assert not hasattr(vae, "log_prob")  # no exact density: iw_bound and elbo bound it
    with pytest.raises(ValueError, match="likelihood"):
        VAE((2,), likelihood="poisson")
    with pytest.raises(ValueError, match="levels"):
        VAE((2,), likelihood="gaussian", levels=17)
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        vae.iw_bound(torch.zeros(4, 2), k=0)
    with pytest.raises(ValueError, match="beta"):
        vae.iw_bound(torch.zeros(4, 2), k=2, beta=-0.5)
    with pytest.raises(ValueError, match="z: expected last dimension 2"):
        vae.decode(torch.zeros(3, 5))
    img = VAE((1, 8, 8), latent_dim=2, hidden=8, depth=1, likelihood="categorical")
    with pytest.raises(ValueError, match="integer pixel values in 0..16"):
        img.elbo(torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(TypeError, match="n: expected an int"):
        img.sample(2.0)
    vq = VQVAE(codebook_size=8, code_dim=4, channels=8)
    with pytest.raises(ValueError, match="idx: code indices must lie in 0..7"):
        vq.decode_indices(torch.full((1, 4, 4), 8))
    with pytest.raises(TypeError, match="integer tensor"):
        vq.decode_indices(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="x: expected a 4-D tensor"):
        vq.encode_indices(torch.zeros(2, 64))
    with pytest.raises(TypeError, match="prior"):
        vq.attach_prior(object())
    ae = Autoencoder((2,), latent_dim=2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="noise_std"):
        Autoencoder((2,), noise_std=-1.0)
    with pytest.raises(ValueError, match="x: expected last dimension|x: expected shape"):
        ae.encode(torch.zeros(3, 4))


def test_denoising_autoencoder_learns_to_denoise():
    torch.manual_seed(0)
    model = Autoencoder((1, 8, 8), latent_dim=8, hidden=64, depth=1, noise_std=0.3, levels=17)
    train.fit(model, data.digits().train_x, steps=300, batch_size=128, lr=3e-3, schedule="cosine", seed=0,
              progress=False)
    test_x = data.digits().test_x
    with torch.no_grad():
        noisy = (test_x + 0.3 * 16 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(0)))
        out = model.decoder(model.encoder(noisy.reshape(-1, 64) / 16)).reshape(test_x.shape) * 16
    err_noisy = float((noisy - test_x).pow(2).mean())
    err_out = float((out - test_x).pow(2).mean())
    assert err_out < 0.5 * err_noisy, (err_out, err_noisy)


def test_zoo_recipes_have_the_promised_interfaces(tmp_cache):
    for family, dataset in [("vae", "eight_gaussians"), ("vae", "digits"), ("vae_2d", "digits"),
                            ("vqvae", "digits"), ("autoencoder", "digits")]:
        r = zoo.recipe(family, dataset)
        model = r.build()
        assert r.trainer == "fit" and r.fit["steps"] > 0
        if family == "vae" and dataset == "eight_gaussians":
            assert model.latent_dim == 2 and model.sample(5).shape == (5, 2)
        elif family in ("vae", "vae_2d"):
            x = data.digits().train_x[:3]
            z = model.encode(x)
            assert z.shape == (3, model.latent_dim)
            assert model.decode(z).shape == (3, 1, 8, 8)
        elif family == "vqvae":
            assert model.codebook_size == 32 and model.code_shape == (4, 4)
        if family.startswith("vae"):  # the KL warm-up is the model's option, read from the recipe's args
            assert model.kl_warmup == r.args["kl_warmup"] > 0 and "kl_warmup" not in r.fit
    r = zoo.recipe("vae", "digits")
    assert r.args["latent_dim"] == r.build().latent_dim
    assert zoo.recipe("vae").args["train_k"] == zoo.recipe("vae").build().train_k > 1  # the IWAE-trained headline


# ------------------------------------------------------------------------------------------ KL warm-up


def test_kl_warmup_raises_beta_over_training_mode_loss_calls():
    """VAE(kl_warmup=4): the training loss weighs the KL by 0, 1/4, 1/2, 3/4, 1, 1, ... on successive
    training-mode calls (checked against elbo_terms with the same noise); eval-mode calls use the full beta
    and do not advance the warm-up."""
    torch.manual_seed(0)
    model = VAE((2,), latent_dim=2, hidden=16, depth=2, kl_warmup=4)
    x = data.eight_gaussians(64, seed=0)

    def terms(seed):
        torch.manual_seed(seed)
        rec, kl = model.elbo_terms(x)
        return rec.detach(), kl.detach()

    def loss(seed):
        torch.manual_seed(seed)
        return model.loss(x).detach()

    model.train()
    for step, beta in enumerate([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]):
        rec, kl = terms(step)
        assert float(kl.mean()) > 0.01  # the KL term matters: a wrong beta would show
        assert torch.allclose(loss(step), (beta * kl - rec).mean(), rtol=0, atol=1e-6), step
        if step == 1:  # an evaluation in between: the full beta, and the warm-up's clock does not move
            model.eval()
            rec_e, kl_e = terms(50)
            assert torch.allclose(loss(50), (kl_e - rec_e).mean(), rtol=0, atol=1e-6)
            model.train()


def test_kl_warmup_scales_beta_inside_the_iw_weights():
    torch.manual_seed(0)
    model = VAE((2,), latent_dim=2, hidden=16, depth=2, train_k=4, beta=2.0, kl_warmup=2).train()
    x = data.eight_gaussians(32, seed=0)
    for beta in (0.0, 1.0, 2.0, 2.0):  # beta * min(1, calls / kl_warmup)
        torch.manual_seed(7)
        got = model.loss(x).detach()
        torch.manual_seed(7)
        assert torch.allclose(got, -model.iw_bound(x, k=4, beta=beta).mean().detach(), rtol=0, atol=1e-5), beta
    with pytest.raises(ValueError, match="kl_warmup"):
        VAE((2,), kl_warmup=-1)


def test_fit_logs_the_vqvaes_codebook_usage_every_step():
    torch.manual_seed(0)
    model = VQVAE(codebook_size=8, code_dim=4, channels=8)
    seen = []
    h = train.fit(model, data.digits().train_x[:256], steps=4, batch_size=64, lr=1e-3, progress=False,
                  callback=lambda step, m, hist: seen.append(m.codebook_usage(m.last_indices)))
    assert len(h.extra["perplexity"]) == len(h.extra["used"]) == 4
    assert h.extra["perplexity"] == [u["perplexity"] for u in seen]
    assert h.extra["used"] == [float(u["used"]) for u in seen]
    assert all(1 <= u <= 8 for u in h.extra["used"])
    assert model.step_metrics() == {"perplexity": seen[-1]["perplexity"], "used": seen[-1]["used"]}
