"""Tests of genlib.models.autoregressive: causality of masked convolutions and of the transformer, an exact
density that integrates to 1, the inverse-CDF view with explicit uniforms, the decoding filters, errors."""

import math

import pytest
import torch

import genlib
from genlib.models.autoregressive import (
    BinnedAutoregressive,
    CausalTransformer,
    CodePrior,
    MaskedConv2d,
    PixelCNN,
    bigram_nll,
    categorical_inverse_cdf,
    filter_logits,
    sample_logits,
    sequence_nll,
)
from genlib.train import fit

# ------------------------------------------------------------------------------ decoding rules

PROBS = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.2])  # ranks: 1 (0.4), 3 (0.25), 4 (0.2), 2 (0.1), 0 (0.05)


def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def test_top_k_keeps_exactly_the_k_most_probable():
    logits = PROBS.log()
    assert kept(filter_logits(logits, top_k=1)) == {1}
    assert kept(filter_logits(logits, top_k=2)) == {1, 3}
    assert kept(filter_logits(logits, top_k=3)) == {1, 3, 4}
    assert kept(filter_logits(logits, top_k=10)) == {0, 1, 2, 3, 4}
    # kept logits are unchanged, so renormalising gives p_i / sum of kept
    p = torch.softmax(filter_logits(logits, top_k=2), -1)
    assert torch.allclose(p[[1, 3]], torch.tensor([0.4, 0.25]) / 0.65)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = PROBS.log()
    assert kept(filter_logits(logits, top_p=0.3)) == {1}             # 0.4 >= 0.3
    assert kept(filter_logits(logits, top_p=0.6)) == {1, 3}          # 0.4 < 0.6 <= 0.65
    assert kept(filter_logits(logits, top_p=0.66)) == {1, 3, 4}      # 0.65 < 0.66 <= 0.85
    assert kept(filter_logits(logits, top_p=0.9)) == {1, 2, 3, 4}    # 0.85 < 0.9 <= 0.95
    assert kept(filter_logits(logits, top_p=1.0)) == {0, 1, 2, 3, 4}
    # batched rows are filtered independently
    two = torch.stack([logits, logits.flip(0)])
    out = filter_logits(two, top_p=0.66)
    assert kept(out[0]) == {1, 3, 4} and kept(out[1]) == {3, 1, 0}


def test_top_k_then_top_p():
    logits = PROBS.log()
    # top-3 leaves 0.4, 0.25, 0.2 -> renormalised 0.47, 0.29, 0.24: p=0.7 keeps the first two
    assert kept(filter_logits(logits, top_k=3, top_p=0.7)) == {1, 3}


def test_inverse_cdf_of_a_categorical():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(6, 4)
    u = torch.tensor([0.0, 0.05, 0.1, 0.29, 0.61, 0.999])
    assert categorical_inverse_cdf(probs, u).tolist() == [0, 0, 1, 1, 3, 3]
    # a zero-probability category is never chosen, even at u = 1
    p0 = torch.tensor([[0.5, 0.5, 0.0]])
    assert categorical_inverse_cdf(p0, torch.tensor([1.0])).item() == 1


def test_sample_logits_with_uniforms_and_greedy():
    logits = PROBS.log().expand(3, 5)
    u = torch.tensor([0.01, 0.3, 0.99])
    # cumulative: 0.05, 0.45, 0.55, 0.80, 1.0
    assert sample_logits(logits, u=u).tolist() == [0, 1, 4]
    assert sample_logits(logits, greedy=True).tolist() == [1, 1, 1]
    # with top_k=1 every uniform gives the argmax
    assert sample_logits(logits, u=u, top_k=1).tolist() == [1, 1, 1]


def test_decoding_errors():
    logits = PROBS.log()
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(logits[None], temperature=0.0)
    with pytest.raises(ValueError, match="u: expected uniforms of shape"):
        sample_logits(logits[None], u=torch.rand(3))
    with pytest.raises(ValueError, match="u: expected values in"):
        sample_logits(logits[None], u=torch.tensor([1.5]))


# ------------------------------------------------------------------ the binned 2-D density


def _trained_2d(device, steps=150):
    genlib.seed(0)
    model = BinnedAutoregressive(bins=30, lim=4.5, hidden=32, depth=2).to(device)
    x = genlib.data.eight_gaussians(512, seed=0, device=device)
    fit(model, x, steps=steps, batch_size=256, lr=1e-2, progress=False)
    return model


def test_binned_log_prob_integrates_to_one(device):
    model = _trained_2d(device, steps=100)
    # a grid far wider than [-lim, lim] so that the exponential tails are included (tail scale 0.5)
    lo, hi, n = -14.0, 14.0, 701
    t = torch.linspace(lo, hi, n, device=device, dtype=torch.float64)
    h = (hi - lo) / (n - 1)
    model = model.double()
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    with torch.no_grad():
        lp = model.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    total = float(lp.exp().sum()) * h * h
    assert abs(total - 1) < 5e-3
    # the first coordinate's conditional integrates to one on its own
    with torch.no_grad():
        p1 = model.conditional_log_prob(0, t).exp()
        p2 = model.conditional_log_prob(1, t, context=torch.tensor([2.0])).exp()
    assert abs(float(p1.sum()) * h - 1) < 2e-3
    assert abs(float(p2.sum()) * h - 1) < 2e-3


def test_binned_model_learns_the_eight_gaussians(device):
    model = _trained_2d(device, steps=300)
    with torch.no_grad():
        nll = genlib.metrics.nll(model, n=5000)
    entropy = genlib.metrics.true_entropy()
    uniform_nll = math.log(9.0**2)  # a uniform density on [-4.5, 4.5]^2
    assert nll < entropy + 0.5 < uniform_nll


def test_explicit_uniforms_are_reproducible_and_follow_the_inverse_cdf(device):
    model = _trained_2d(device, steps=100)
    u = torch.rand(500, 2, generator=torch.Generator().manual_seed(1), device="cpu").to(device)
    u[:5, 0] = torch.tensor([1e-6, 0.5, 1 - 1e-6, 0.2, 0.8])  # include the tails
    a = model.transform(u)
    b = model.transform(u)
    assert a.device.type == device.type
    assert torch.equal(a, b)
    # sample(n, generator) is the map of the base's uniforms, draw for draw
    u2 = model.base.sample(500, torch.Generator().manual_seed(2))
    assert u2.shape == (500, 2)
    assert torch.equal(model.sample(500, torch.Generator().manual_seed(2)), model.transform(u2))
    # the sample is F^{-1}(u): applying the conditional CDFs gives the uniforms back
    with torch.no_grad():
        back = model.cdf(a)
    assert torch.allclose(back, u, atol=1e-4)
    # and the map is monotone in u_1 for a fixed u_2
    grid = torch.stack([torch.linspace(0.01, 0.99, 50), torch.full((50,), 0.3)], 1).to(device)
    x1 = model.transform(grid)[:, 0]
    assert bool((x1[1:] >= x1[:-1]).all())
    # the first coordinate matches the marginal's own inverse CDF: P(X1 <= x1(u)) = u
    t = torch.linspace(-12, 12, 20001, device=device)
    with torch.no_grad():
        dens = model.conditional_log_prob(0, t).exp()
    cdf = torch.cumsum(dens, 0) * (t[1] - t[0])
    for ui in (0.1, 0.5, 0.9):
        with genlib.metrics.count_evaluations(model) as count:
            xi = model.transform(torch.tensor([[ui, 0.5]], device=device))[0, 0]
        assert abs(float(cdf[torch.searchsorted(t, xi)]) - ui) < 5e-3
    # one conditioner network per coordinate after the first (whose cell probabilities are a learned vector)
    assert count.per_sample(1) == model.dim - 1 == 1


def test_binned_sample_device_and_generator(device):
    model = _trained_2d(device, steps=20)
    g = torch.Generator(device=device).manual_seed(3)
    s1 = model.sample(64, generator=g)
    s2 = model.sample(64, generator=torch.Generator(device=device).manual_seed(3))
    assert s1.shape == (64, 2) and s1.device.type == device.type and torch.equal(s1, s2)


def test_binned_errors():
    model = BinnedAutoregressive(bins=10)
    with pytest.raises(ValueError, match="x: expected last dimension 2"):
        model.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="u: expected values in"):
        model.transform(torch.full((2, 2), 1.5))
    with pytest.raises(ValueError, match="u: expected last dimension 2"):
        model.transform(torch.rand(3, 3))
    with pytest.raises(ValueError, match="bins"):
        BinnedAutoregressive(bins=1)
    with pytest.raises(ValueError, match="context"):
        model.conditional_log_prob(1, torch.zeros(3))
    with pytest.raises(ValueError, match="x: contains"):
        model.log_prob(torch.tensor([[float("nan"), 0.0]]))


# ------------------------------------------------------------------------------------ PixelCNN


def test_masks_have_the_raster_order_shape():
    a = MaskedConv2d(1, 1, 3, "A").mask[0, 0]
    b = MaskedConv2d(1, 1, 3, "B").mask[0, 0]
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d(1, 1, 3, "C")
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedConv2d(1, 1, 4, "A")


def test_pixelcnn_never_sees_current_or_future_pixels(device):
    genlib.seed(0)
    model = PixelCNN(channels=16, blocks=3).to(device)
    x = torch.randint(0, 17, (1, 1, 8, 8), device=device).float().requires_grad_(True)
    for pos in range(64):
        r, c = divmod(pos, 8)
        model.zero_grad()
        if x.grad is not None:
            x.grad = None
        model(x)[0, :, r, c].sum().backward()
        g = x.grad[0, 0].abs().flatten()
        assert float(g[pos:].sum()) == 0.0, f"pixel {pos} sees itself or a later pixel"
        if c > 0:
            assert float(g[pos - 1]) > 0  # it does see its left neighbour
        if r > 0:
            assert float(g[pos - 8]) > 0  # and the pixel above


def test_pixelcnn_log_prob_is_a_distribution_over_levels():
    genlib.seed(0)
    model = PixelCNN(levels=3, channels=8, blocks=1)
    x = torch.zeros(1, 1, 8, 8)
    # change only the last pixel: the three log-probabilities differ in one factor that sums to one
    lps = []
    for v in range(3):
        x[0, 0, 7, 7] = v
        lps.append(model.log_prob(x).detach())
    with torch.no_grad():
        others = lps[0] - torch.log_softmax(model(x)[0, :, 7, 7], 0)[0]
    assert abs(float(torch.logsumexp(torch.stack(lps), 0) - others)) < 1e-4


def test_pixelcnn_sampling_with_uniforms_and_completion(device):
    genlib.seed(0)
    model = PixelCNN(channels=8, blocks=1).to(device)
    u = torch.rand(4, 64, generator=torch.Generator().manual_seed(0)).to(device)
    with genlib.metrics.count_evaluations(model) as count:
        a = model.transform(u)
    assert a.shape == (4, 1, 8, 8) and a.device.type == device.type
    assert torch.equal(a, model.transform(u))
    assert count.per_sample(4) == 64
    # the same uniforms drawn by the base: sample is transform(base.sample(n, generator))
    assert torch.equal(model.sample(4, generator=torch.Generator().manual_seed(0)), a)
    digits = genlib.data.digits(device=device).test_x[:4]
    with genlib.metrics.count_evaluations(model) as count:
        done = model.complete(digits, keep_rows=4)
    assert torch.equal(done[:, :, :4], digits[:, :, :4])
    assert count.per_sample(4) == 32
    assert bool(((done >= 0) & (done <= 16) & (done == done.round())).all())


def test_pixelcnn_learns_and_errors():
    genlib.seed(0)
    d = genlib.data.digits()
    model = PixelCNN(channels=16, blocks=1)
    before = model.bits_per_pixel(d.val_x)
    fit(model, d.train_x, steps=60, batch_size=64, lr=3e-3, progress=False)
    after = model.bits_per_pixel(d.val_x)
    assert after < before - 1.0 and after < math.log2(17) - 1.0
    with pytest.raises(ValueError, match="integer grey levels"):
        model.log_prob(d.val_x[:2] + 0.5)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 1, 8, 8\)"):
        model.log_prob(torch.zeros(2, 1, 7, 7))
    with pytest.raises(ValueError, match="x: needed"):
        model.sample(2, start=8)


# ---------------------------------------------------------------------------------- transformer


def test_causal_transformer_position_i_ignores_later_tokens(device):
    genlib.seed(0)
    model = CausalTransformer(11, 12, d_model=16, n_layers=2, n_heads=2).to(device)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (3, 12), generator=g).to(device)
    with torch.no_grad():
        base = model(tokens)
        for i in range(11):
            changed = tokens.clone()
            changed[:, i + 1:] = torch.randint(0, 11, (3, 11 - i), generator=g).to(device)
            out = model(changed)
            assert torch.allclose(out[:, : i + 1], base[:, : i + 1], atol=1e-5)
            if bool((changed[:, i + 1] != tokens[:, i + 1]).any()):
                assert not torch.allclose(out[:, i + 1], base[:, i + 1])


def test_transformer_generate_strategies(device):
    genlib.seed(0)
    model = CausalTransformer(6, 8, d_model=16, n_layers=1, n_heads=2).to(device)
    u = torch.rand(5, 8, generator=torch.Generator().manual_seed(0)).to(device)
    a = model.generate(5, u=u, temperature=0.7, top_k=3, top_p=0.9)
    assert torch.equal(a, model.generate(5, u=u, temperature=0.7, top_k=3, top_p=0.9))
    assert a.device.type == device.type and bool((a[:, 0] == 0).all())
    greedy = model.generate(3, strategy="greedy")
    assert bool((greedy == greedy[:1]).all())
    beams = model.generate(3, strategy="beam", beam_width=4, max_len=5)
    assert beams.shape[0] == 3
    # the best beam is at least as probable as the greedy sequence of the same maximal length
    g5 = model.generate(1, strategy="greedy", max_len=5)
    with torch.no_grad():
        assert float(model.log_prob(beams[:1])) >= float(model.log_prob(g5)) - 1e-5
        lps = model.log_prob(beams)  # beams are sorted by log-probability
    assert bool((lps[1:] <= lps[:-1] + 1e-5).all())


def test_transformer_errors():
    model = CausalTransformer(6, 8, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="token ids must lie"):
        model(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="2-D long tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="strategy"):
        model.generate(2, strategy="nucleus")
    with pytest.raises(ValueError, match="beam_width"):
        model.generate(5, strategy="beam", beam_width=2)
    with pytest.raises(ValueError, match="d_model"):
        CausalTransformer(6, 8, d_model=10, n_heads=4)


def test_names_transformer_beats_bigram_quickly():
    corpus = genlib.data.names_corpus()
    tok = corpus.tokenizer
    train = tok.batch(corpus.train[:10000])
    test = tok.batch(corpus.test[:2000])
    genlib.seed(0)
    model = CausalTransformer(tok.vocab_size, 16, d_model=32, n_layers=1, n_heads=4)
    fit(model, train, steps=200, batch_size=128, lr=5e-3, progress=False)
    bigram = bigram_nll(corpus.train[:10000], corpus.test[:2000], tok)
    assert sequence_nll(model, test) < bigram
    # the bigram baseline is far better than uniform over the vocabulary
    assert bigram < math.log(tok.vocab_size) - 0.5


def test_code_prior_shapes_and_errors():
    genlib.seed(0)
    prior = CodePrior(8, (4, 4), d_model=16, n_layers=1, n_heads=2)
    with genlib.metrics.count_evaluations(prior) as count:
        idx = prior.sample(5)
    assert idx.shape == (5, 4, 4) and idx.dtype == torch.long and int(idx.max()) < 8
    assert count.per_sample(5) == 16
    assert prior.log_prob(idx).shape == (5,)
    with pytest.raises(ValueError, match="codes must lie"):
        prior.log_prob(torch.full((1, 4, 4), 8, dtype=torch.long))
    with pytest.raises(ValueError, match="code grids"):
        prior.log_prob(torch.zeros(1, 16, dtype=torch.long))
