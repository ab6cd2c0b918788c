import pytest
import torch

import genlib
from genlib import data, nn, train


def test_mlp_shapes_and_conditioning(device):
    m = nn.MLP(2, 3, hidden=16, depth=2, time_embed_dim=8, n_classes=4).to(device)
    x = torch.randn(5, 2, device=device)
    out = m(x, t=0.3, y=torch.zeros(5, dtype=torch.long, device=device))
    assert out.shape == (5, 3) and out.device.type == device.type
    # the time embedding changes the output
    assert not torch.allclose(out, m(x, t=0.7, y=torch.zeros(5, dtype=torch.long, device=device)))
    with pytest.raises(ValueError, match="t: this MLP is time-conditioned"):
        m(x, y=torch.zeros(5, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="x: expected last dimension 2"):
        m(torch.zeros(5, 3, device=device), t=0.1, y=torch.zeros(5, dtype=torch.long, device=device))


def test_sinusoidal_embedding():
    e = nn.SinusoidalEmbedding(16, scale=10)
    a = e(torch.tensor([0.0, 0.5, 1.0]))
    assert a.shape == (3, 16) and torch.allclose(a[0, 8:], torch.ones(8))
    assert e(torch.tensor(0.2), batch=4).shape == (4, 16)
    with pytest.raises(ValueError, match="dim: expected an even number"):
        nn.SinusoidalEmbedding(7)


def test_conv_encoder_decoder(device):
    enc, dec = nn.ConvEncoder(6).to(device), nn.ConvDecoder(6, out_channels=2).to(device)
    z = enc(torch.zeros(3, 1, 8, 8, device=device))
    assert z.shape == (3, 6) and dec(z).shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="x: expected images of shape"):
        enc(torch.zeros(3, 8, 8, device=device))


class Gaussian(torch.nn.Module):
    """A learnable mean: its loss is the Gaussian NLL up to constants."""

    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(2))

    def loss(self, x):
        return 0.5 * ((x - self.mu) ** 2).sum(1).mean()


def test_fit_minimises_the_loss(device):
    x = data.eight_gaussians(512, seed=0, device=device) + torch.tensor([1.0, -2.0], device=device)
    m = Gaussian().to(device)  # fit trains on the model's device (documented); the data follow it
    h = train.fit(m, x, steps=300, lr=0.05, batch_size=128, progress=False)
    assert m.mu.device.type == device.type
    assert torch.allclose(m.mu.detach(), x.mean(0), atol=0.15)
    assert h.loss[-1] < h.loss[0] and h.steps == 300 and len(h.loss) == 300 and m.history is h


def test_fit_is_deterministic():
    def run():
        genlib.seed(0)
        m = nn.MLP(2, 1, hidden=8, depth=1)
        train.fit(m, data.eight_gaussians(256, seed=0), steps=20, batch_size=32, progress=False,
                  loss_fn=lambda mod, x: mod(x).pow(2).mean())
        return torch.cat([p.flatten() for p in m.parameters()])

    assert torch.equal(run(), run())


def test_fit_ema_ends_at_the_running_average(device):
    """With ema=d the model ends at the exponential moving average of its iterates (warm-up decay
    min(d, (1+k)/(10+k))), not at the last iterate."""
    x = data.eight_gaussians(512, seed=0, device=device)
    iterates = []
    m = Gaussian().to(device)
    start = m.mu.detach().clone()
    train.fit(m, x, steps=60, lr=0.05, batch_size=64, progress=False, ema=0.9,
              callback=lambda step, mod, h: iterates.append(mod.mu.detach().clone()))
    avg = start
    for k, p in enumerate(iterates):
        d = min(0.9, (1 + k) / (10 + k))
        avg = d * avg + (1 - d) * p
    assert torch.allclose(m.mu.detach(), avg, atol=1e-6)
    assert not torch.allclose(m.mu.detach(), iterates[-1], atol=1e-3)  # the average lags the last iterate
    with pytest.raises(ValueError, match="ema: expected a decay in"):
        train.fit(Gaussian(), x, steps=2, ema=1.0, progress=False)


def test_fit_raises_on_nan_data():
    x = data.eight_gaussians(64, seed=0)
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match="data: contains 1 NaN"):
        train.fit(Gaussian(), x, steps=5, progress=False)


def test_fit_raises_naming_the_step_on_a_diverging_loss():
    # gradient descent on a quadratic with step 10 multiplies the error by -9 each step: it overflows
    with pytest.raises(train.TrainingDiverged, match=r"at step \d+ of 200 \(lr=10.0\)"):
        train.fit(Gaussian(), data.eight_gaussians(64, seed=0) + 5, steps=200, lr=10.0, optimizer="sgd",
                  betas=(0.0, 0.0), clip_grad=None, progress=False)


def test_fit_bad_arguments():
    with pytest.raises(TypeError, match="has no loss"):
        train.fit(torch.nn.Linear(2, 2), torch.zeros(4, 2), progress=False)
    with pytest.raises(ValueError, match="optimizer: unknown value"):
        train.fit(Gaussian(), torch.zeros(4, 2), optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="share the first dimension"):
        train.fit(Gaussian(), (torch.zeros(4, 2), torch.zeros(3)), progress=False)
    with pytest.raises(TypeError, match="data: expected a tensor"):
        train.fit(Gaussian(), [[0.0, 1.0]], progress=False)


def test_seed_and_device():
    genlib.seed(3)
    a = torch.rand(3)
    genlib.seed(3)
    assert torch.equal(a, torch.rand(3))
    assert genlib.device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        genlib.seed(-1)


def test_mlp_large_batches_without_autograd_match(device):
    """Large no-grad batches are evaluated in chunks on the CPU: the values are those of one pass."""
    torch.manual_seed(0)
    net = nn.MLP(2, 2, hidden=32, depth=2, time_embed_dim=8).to(device)
    x = torch.randn(40_000, 2, device=device)
    t = torch.rand(40_000, device=device)
    full = net(x, t).detach()  # with autograd: one pass
    with torch.no_grad():
        chunked = net(x, t)
    assert chunked.shape == full.shape
    assert torch.allclose(chunked, full, atol=1e-5, rtol=1e-5)
