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
    # gradient descent on a quadratic with step 10 multiplies the error by -9 each step: caught as it blows up,
    # long before the overflow
    with pytest.raises(train.TrainingDiverged, match=r"loss became .* at step [1-9] of 200 \(lr=10.0"):
        train.fit(Gaussian(), data.eight_gaussians(64, seed=0) + 5, steps=200, lr=10.0, optimizer="sgd",
                  betas=(0.0, 0.0), clip_grad=None, progress=False)


def test_fit_bad_arguments():
    with pytest.raises(TypeError, match="has no loss"):
        train.fit(torch.nn.Linear(2, 2), torch.zeros(4, 2), progress=False)
    with pytest.raises(ValueError, match="optimizer: unknown value"):
        train.fit(Gaussian(), torch.zeros(4, 2), optimizer="lbfgs", progress=False)
    with pytest.raises(ValueError, match="share the first dimension"):
        train.fit(Gaussian(), (torch.zeros(4, 2), torch.zeros(3)), progress=False)
    with pytest.raises(TypeError, match="data: expected a tensor"):
        train.fit(Gaussian(), [[0.0, 1.0]], progress=False)
    with pytest.raises(ValueError, match="jitter"):
        train.fit(Gaussian(), torch.zeros(4, 2), jitter=-0.1, progress=False)


def test_fit_rmsprop_minimises_the_loss():
    x = data.eight_gaussians(512, seed=0) + torch.tensor([1.0, -2.0])
    m = Gaussian()
    train.fit(m, x, steps=300, lr=0.02, batch_size=128, optimizer="rmsprop", progress=False)
    assert torch.allclose(m.mu.detach(), x.mean(0), atol=0.15)


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


# ------------------------------------------------------------------------------------------ jitter


def test_fit_jitter_is_a_loss_with_the_same_noise_added(device):
    """jitter=s is a loss_fn that adds s * N(0, 1) noise from a generator on the data's device seeded by the
    seed to every minibatch's first tensor: the same run bit for bit; the other tensors are left alone."""
    x = data.eight_gaussians(256, seed=0, device=device)

    def run(**kw):
        m = Gaussian().to(device)
        h = train.fit(m, x, steps=25, lr=0.05, batch_size=64, seed=3, progress=False, **kw)
        return m.mu.detach().clone(), h.loss

    g = torch.Generator(device=device).manual_seed(3)
    manual = run(loss_fn=lambda m, b: m.loss(b + 0.3 * torch.randn(b.shape, device=device, generator=g)))
    jittered = run(jitter=0.3)
    assert torch.equal(jittered[0], manual[0]) and jittered[1] == manual[1]
    plain = run()
    assert not torch.equal(jittered[0], plain[0])  # the noise changes the run: the comparison can fail
    # a tuple of tensors: only the first is jittered
    gaps, other = [], []

    def loss_fn(m, a, b):
        gaps.append(float((a - b).abs().max()))
        other.append(bool((b[:, None] == x[None]).all(-1).any(1).all()))  # b's rows are rows of the data
        return m.loss(a)

    train.fit(Gaussian().to(device), (x, x.clone()), steps=5, batch_size=64, jitter=0.3, loss_fn=loss_fn,
              progress=False)
    assert all(0 < gap < 3 for gap in gaps) and all(other)


# ------------------------------------------------------------------------------------------ players


class TwoPlayers(torch.nn.Module):
    """Two learnable means, one per player."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(2))
        self.b = torch.nn.Parameter(torch.zeros(2))


def _two_player_run(critic_average: bool):
    """Two players on two means: a critic with two updates per step, a generator with one; ema 0.9."""
    x = data.eight_gaussians(512, seed=0)
    m = TwoPlayers()
    calls = {"critic": 0, "critic_steps": 0, "generator": 0}

    def critic(b):
        calls["critic"] += 1
        return 0.5 * ((b - m.a) ** 2).sum(1).mean()

    def generator(b):
        calls["generator"] += 1
        return 0.5 * ((b + 2.0 - m.b) ** 2).sum(1).mean()

    def count_step(model):
        assert model is m
        calls["critic_steps"] += 1

    iterates = {"a": [], "b": []}

    def record(step, model, history):  # callbacks see the raw weights
        iterates["a"].append(model.a.detach().clone())
        iterates["b"].append(model.b.detach().clone())

    players = [train.Player("critic", [m.a], critic, updates=2, average=critic_average, after_update=count_step),
               train.Player("generator", [m.b], generator)]
    h = train.fit(m, x, players=players, steps=30, lr=0.05, batch_size=64, ema=0.9, progress=False, callback=record)
    return m, h, calls, iterates


def _warm_average(iterates, decay=0.9):
    avg = torch.zeros(2)
    for k, p in enumerate(iterates):
        d = min(decay, (1 + k) / (10 + k))
        avg = d * avg + (1 - d) * p
    return avg


def test_players_update_as_often_as_asked_and_only_averaged_players_enter_the_ema():
    m, h, calls, iterates = _two_player_run(critic_average=False)
    assert calls == {"critic": 60, "critic_steps": 60, "generator": 30}  # two critic steps per training step
    assert len(h.loss) == 30 and len(h.extra["critic_loss"]) == 30 and len(h.extra["generator_loss"]) == 30
    assert h.loss == h.extra["generator_loss"]  # loss: the last player's
    # the critic (average=False) ends at its last iterate; the generator at the warmed-up average of its iterates
    assert torch.equal(m.a.detach(), iterates["a"][-1])
    assert torch.allclose(m.b.detach(), _warm_average(iterates["b"]), atol=1e-6)
    assert not torch.allclose(m.b.detach(), iterates["b"][-1], atol=1e-3)
    # with average=True the critic too ends at its average, not its last iterate (the same run otherwise)
    m2, _, _, iterates2 = _two_player_run(critic_average=True)
    assert all(torch.equal(p, q) for p, q in zip(iterates["a"], iterates2["a"], strict=True))
    assert torch.allclose(m2.a.detach(), _warm_average(iterates2["a"]), atol=1e-6)
    assert not torch.allclose(m2.a.detach(), iterates2["a"][-1], atol=1e-3)


def test_a_players_diverging_loss_raises_naming_the_player_and_the_step():
    x = data.eight_gaussians(256, seed=0)
    m = TwoPlayers()
    calls = {"critic": 0}

    def critic(b):  # becomes NaN on its 6th call: the first update of step 2 (two updates per step)
        calls["critic"] += 1
        loss = 0.5 * ((b - m.a) ** 2).sum(1).mean()
        return loss * float("nan") if calls["critic"] == 6 else loss

    players = [train.Player("critic", [m.a], critic, updates=2),
               train.Player("generator", [m.b], lambda b: 0.5 * ((b - m.b) ** 2).sum(1).mean())]
    with pytest.raises(train.TrainingDiverged, match=r"the critic loss became nan at step 2 of 10"):
        train.fit(m, x, players=players, steps=10, batch_size=64, progress=False)
    players[0] = train.Player("critic", [m.a], lambda b: 0.5 * ((b - m.a) ** 2).sum(1).mean())
    players[1] = train.Player("generator", [m.b], lambda b: (b - m.b).sum() * float("inf"))
    with pytest.raises(train.TrainingDiverged, match=r"the generator loss became (-)?inf at step 0 of 10"):
        train.fit(m, x, players=players, steps=10, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="loss_fn: players bring their own losses"):
        train.fit(m, x, players=players, loss_fn=lambda mod, b: b.sum(), steps=1, progress=False)
    with pytest.raises(ValueError, match="players: empty has no trainable parameters"):
        train.fit(m, x, players=[train.Player("empty", [], lambda b: b.sum())], steps=1, progress=False)
    with pytest.raises(ValueError, match=r"players\[critic\].updates: expected an int >= 1"):
        train.fit(m, x, players=[train.Player("critic", [m.a], lambda b: b.sum(), updates=0)], steps=1,
                  progress=False)


@pytest.mark.parametrize("option,value,match", [
    ("clip_grad", -1.0, "clip_grad"), ("clip_grad", 0.0, "clip_grad"), ("clip_grad", float("nan"), "clip_grad"),
    ("weight_decay", -1e-3, "weight_decay"), ("betas", (0.9,), "betas"), ("betas", (0.9, 1.5), "betas"),
    ("warmup", -1, "warmup"), ("warmup", 2.5, "warmup"), ("seed", -3, "seed"), ("ema", 1.0, "ema"),
    ("lr", float("inf"), "lr"), ("steps", 0, "steps"), ("batch_size", 0, "batch_size"),
])
def test_fit_rejects_every_bad_numeric_option(option, value, match):
    """A negative clip trained uphill and a zero clip froze training: every numeric option is checked."""
    with pytest.raises((ValueError, TypeError), match=match):
        train.fit(Gaussian(), data.eight_gaussians(64, seed=0), steps=5, progress=False, **{option: value})


def test_fit_catches_a_blow_up_before_the_loss_is_infinite():
    # Adam at lr 1e6 takes the loss from about 5 to 1e28 without ever producing inf or NaN
    model = nn.MLP(2, 2, hidden=16, depth=2)

    def loss(m, x):
        return (m(x) - x).pow(2).sum(1).mean()

    with pytest.raises(train.TrainingDiverged, match=r"(loss|parameters' norm) became .* at step \d+ of 50"):
        train.fit(model, data.eight_gaussians(256, seed=0), loss_fn=loss, steps=50, lr=1e6, progress=False)


def test_fit_catches_a_nan_gradient_on_the_last_step():
    m = Gaussian()
    calls = {"n": 0}

    def loss(model, x):
        calls["n"] += 1
        value = model.loss(x)
        if calls["n"] == 3:  # the last step: a finite loss whose gradient is NaN
            return value + (torch.sqrt(model.mu[0] - 1e9) * 0).nan_to_num(0.0)
        return value

    for clip in (1.0, None):  # with clipping the gradient is checked; without, the parameters after the step
        calls["n"] = 0
        with pytest.raises(train.TrainingDiverged, match=r"(gradient's|parameters') norm became nan at step 2 of 3"):
            train.fit(m, data.eight_gaussians(64, seed=0), loss_fn=loss, steps=3, clip_grad=clip, progress=False)
