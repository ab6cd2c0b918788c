"""Generative adversarial networks: a generator G_theta pushing Gaussian noise onto the data, trained
against a discriminator D_psi (or a Wasserstein critic f_psi) in an alternating two-player loop.

Four losses share one model and one loop:

- ``"minimax"``: the original game. The discriminator maximises E log D(x) + E log(1 - D(G(z))), the
  generator minimises E log(1 - D(G(z))) (this gradient vanishes when D wins: saturation);
- ``"ns"``: the non-saturating generator loss -E log D(G(z)) with the same discriminator;
- ``"wgan_clip"``: the Wasserstein critic, E f(G(z)) - E f(x) minimised by the critic, -E f(G(z)) by the
  generator, with every critic weight clipped to [-clip, clip] after each critic step;
- ``"wgan_gp"``: the same critic loss plus the gradient penalty gp_weight * E (||grad f(x_hat)|| - 1)^2 on
  random interpolates x_hat of real and generated points.

The discriminator returns a logit l (D = sigmoid(l)); all log D terms are computed as softplus of the
logit, which is exact and never takes the log of 0. A GAN has no log-density: ``log_prob`` raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._util import check_choice, check_positive_float, check_positive_int, check_tensor, randn
from ..nn import MLP, ConvDecoder, ConvEncoder
from ..train import History, Player, TrainingDiverged
from ..train import fit as fit_players
from .base import Generative, Noise

__all__ = ["LOSSES", "GAN", "mlp_gan", "dcgan", "critic_loss", "generator_loss", "gradient_penalty",
           "clip_weights", "optimal_discriminator", "fit", "mode_monitor", "snapshots", "mlp_rejection_sampler",
           "DensityRatio", "RejectionSampler", "rejection_sampler", "fit_rejection"]

LOSSES = ("minimax", "ns", "wgan_clip", "wgan_gp")


# ------------------------------------------------------------------------------------------ model


class GAN(Generative):
    """A generator and a critic (discriminator), with the loss they are trained under.

    ``generator(z[, y])`` maps noise (B, latent_dim) to data in a normalised space; the data are
    ``shift + scale * generator(z)``. ``critic(u[, y])`` returns one real number per point of the normalised
    space (a logit for ``minimax``/``ns``, a critic value for the Wasserstein losses). With ``n_classes > 0``
    both networks take class labels y (a conditional GAN).
    """

    def __init__(self, generator: nn.Module, critic: nn.Module, latent_dim: int, data_shape: tuple[int, ...],
                 loss: str = "ns", clip: float = 0.01, gp_weight: float = 0.1, n_classes: int = 0,
                 shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        check_positive_int("latent_dim", latent_dim)
        check_choice("loss", loss, LOSSES)
        check_positive_float("clip", clip)
        check_positive_float("gp_weight", gp_weight, allow_zero=True)
        check_positive_int("n_classes", n_classes, minimum=0)
        check_positive_float("scale", scale)
        self.generator, self.critic = generator, critic
        self.latent_dim, self.data_shape = latent_dim, tuple(data_shape)
        self.loss_type, self.clip, self.gp_weight, self.n_classes = loss, float(clip), float(gp_weight), n_classes
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.base = Noise(("normal", latent_dim))

    # --- the probability transformation ------------------------------------------------------
    def _labels(self, y, n: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.n_classes == 0:
            if y is not None:
                raise ValueError("y: this GAN is unconditional; do not pass labels")
            return None
        if y is None:  # a conditional GAN without labels: they cycle through 0..n_classes-1
            return torch.arange(n, device=like.device) % self.n_classes
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (n,):
            raise ValueError(f"y: expected {n} integer labels, got {y!r:.80}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"y: labels must lie in 0..{self.n_classes - 1}")
        return y.to(like.device).long()

    def transform(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The generator as a map from noise z (B, latent_dim) to data ``(B, *data_shape)``, deterministic.

        A conditional GAN takes labels y (B,); without them the labels cycle through 0..n_classes-1.
        There is no log-density: the generator defines p_theta only as the law of G(z)."""
        z = check_tensor("z", z, ndim=2, last_dim=self.latent_dim)
        y = self._labels(y, z.shape[0], z)
        out = self.generator(z) if y is None else self.generator(z, y)
        return self.shift + self.scale * out.view(z.shape[0], *self.data_shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """n samples ``transform(base.sample(n), y)``: z ~ N(0, I) through the generator, without gradients."""
        return super().sample(n, generator, y=y)

    def networks(self) -> list[nn.Module]:
        return [self.generator]

    # --- the critic --------------------------------------------------------------------------
    def critic_value(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's output (B,) on data-space points x: a logit for minimax/ns, f(x) for the WGANs."""
        u = (x - self.shift) / self.scale
        return self._critic(u, y)

    def _critic(self, u: torch.Tensor, y) -> torch.Tensor:
        out = self.critic(u) if y is None else self.critic(u, y)
        return out.reshape(u.shape[0])

    def discriminator(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D(x) = sigmoid(logit) in (0, 1), for the minimax and non-saturating losses."""
        if self.loss_type.startswith("wgan"):
            raise ValueError(f"loss: a {self.loss_type} critic is not a probability; use critic_value(x)")
        return torch.sigmoid(self.critic_value(x, y))



class _ConditionalMLP(nn.Module):
    """An MLP on [input, one-hot(y)]."""

    def __init__(self, in_dim: int, out_dim: int, n_classes: int, **kw):
        super().__init__()
        self.n_classes = n_classes
        self.net = MLP(in_dim + n_classes, out_dim, **kw)

    def forward(self, x, y=None):
        if self.n_classes:
            x = torch.cat([x, F.one_hot(y, self.n_classes).to(x.dtype)], -1)
        return self.net(x)


def mlp_gan(data_dim: int = 2, latent_dim: int = 2, hidden: int = 128, depth: int = 3, loss: str = "ns",
            activation: str = "leaky_relu", critic_hidden: int | None = None, critic_depth: int | None = None,
            clip: float = 0.01, gp_weight: float = 0.1, n_classes: int = 0) -> GAN:
    """A GAN of two MLPs (genlib.nn.MLP) for low-dimensional data, such as the eight Gaussians."""
    check_positive_int("data_dim", data_dim)
    gen = _ConditionalMLP(latent_dim, data_dim, n_classes, hidden=hidden, depth=depth, activation=activation)
    crit = _ConditionalMLP(data_dim, 1, n_classes, hidden=critic_hidden or hidden, depth=critic_depth or depth,
                           activation=activation)
    return GAN(gen, crit, latent_dim, (data_dim,), loss=loss, clip=clip, gp_weight=gp_weight, n_classes=n_classes)


class _ConvGenerator(nn.Module):
    """DCGAN-style generator for 8x8 images: genlib.nn.ConvDecoder on [z, one-hot(y)], squashed by tanh."""

    def __init__(self, latent_dim: int, channels: int, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.net = ConvDecoder(latent_dim + n_classes, 1, channels=channels, activation="relu")

    def forward(self, z, y=None):
        if self.n_classes:
            z = torch.cat([z, F.one_hot(y, self.n_classes).to(z.dtype)], -1)
        return torch.tanh(self.net(z))


class _ConvCritic(nn.Module):
    """DCGAN-style critic for 8x8 images: genlib.nn.ConvEncoder (strided convolutions, leaky ReLU) with one
    constant one-hot plane per class appended to the image for a conditional critic."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.net = ConvEncoder(1, in_channels=1 + n_classes, channels=channels, activation="leaky_relu")

    def forward(self, u, y=None):
        if self.n_classes:
            planes = F.one_hot(y, self.n_classes).to(u.dtype)[:, :, None, None].expand(-1, -1, 8, 8)
            u = torch.cat([u, planes], 1)
        return self.net(u)


def dcgan(latent_dim: int = 16, channels: int = 32, critic_channels: int | None = None, loss: str = "ns",
          n_classes: int = 0, clip: float = 0.01, gp_weight: float = 10.0) -> GAN:
    """A small convolutional GAN for the 8x8 digits (values 0..16): the generator ends in tanh and its output
    u in (-1, 1) is mapped to 8 + 8u; with ``n_classes = 10`` it is a class-conditional GAN."""
    gen = _ConvGenerator(latent_dim, channels, n_classes)
    crit = _ConvCritic(critic_channels or channels, n_classes)
    return GAN(gen, crit, latent_dim, (1, 8, 8), loss=loss, clip=clip, gp_weight=gp_weight,
               n_classes=n_classes, shift=8.0, scale=8.0)


# ------------------------------------------------------------------------------------------ losses


def critic_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's loss (to minimise) from its outputs on real (B,) and generated (B,) points.

    minimax / ns: -[E log D(x) + E log(1 - D(G(z)))] = E softplus(-l_real) + E softplus(l_fake).
    wgan_clip / wgan_gp: E f(G(z)) - E f(x) (the gradient penalty is added by :func:`gradient_penalty`).
    """
    check_choice("loss", loss, LOSSES)
    if loss in ("minimax", "ns"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return fake.mean() - real.mean()


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss (to minimise) from the critic's outputs on generated points (B,).

    minimax: E log(1 - D(G(z))) = -E softplus(l); its gradient in l is -D, which vanishes as D -> 0.
    ns:      -E log D(G(z)) = E softplus(-l); its gradient in l is -(1 - D), which tends to -1 as D -> 0.
    wgan_*:  -E f(G(z)).
    """
    check_choice("loss", loss, LOSSES)
    if loss == "minimax":
        return -F.softplus(fake).mean()
    if loss == "ns":
        return F.softplus(-fake).mean()
    return -fake.mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E (||grad_x f(x_hat)||_2 - 1)^2 at x_hat = a x + (1 - a) G(z), a ~ U(0, 1) per pair (Gulrajani et al., 2017).

    Differentiable in the critic's parameters (create_graph=True), so it can be added to the critic loss.
    """
    if real.shape != fake.shape:
        raise ValueError(f"fake: expected the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    from .._util import rand

    a = rand((real.shape[0],) + (1,) * (real.ndim - 1), like=real, generator=generator)
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(module: nn.Module, c: float) -> None:
    """Clip every parameter of `module` into [-c, c] in place (the WGAN critic's Lipschitz constraint)."""
    check_positive_float("c", c)
    for p in module.parameters():
        p.clamp_(-c, c)


def optimal_discriminator(p_data: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_model(x)) from the two densities evaluated at the same points."""
    p_data = check_tensor("p_data", p_data)
    p_model = check_tensor("p_model", p_model)
    if (p_data < 0).any() or (p_model < 0).any():
        raise ValueError("p_data, p_model: densities must be non-negative")
    return p_data / (p_data + p_model)


# ------------------------------------------------------------------------------------------ training


def fit(
    model: GAN,
    data,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    critic_steps: int = 1,
    lr: float = 2e-4,
    lr_critic: float | None = None,
    optimizer: str = "adam",
    optimizer_critic: str | None = None,
    betas: tuple[float, float] = (0.5, 0.999),
    betas_critic: tuple[float, float] | None = None,
    schedule: str = "constant",
    ema: float | None = None,
    seed: int | None = 0,
    device=None,
    callback: Callable[[int, GAN, History], None] | None = None,
    progress: bool = True,
    desc: str | None = None,
    monitor_every: int | None = None,
    monitor_dataset: str = "eight_gaussians",
) -> History:
    """Train a GAN by alternating gradient play: `critic_steps` critic updates, then one generator update.

    This is :func:`genlib.train.fit` with two players (:class:`genlib.train.Player`): the same minibatches,
    schedules, weight averaging (with its warm-up), progress bar, divergence errors and history; only the two
    losses are the GAN's. Every update draws its own minibatch (the generator's gives its size and labels).

    `data` is a tensor ``(N, *data_shape)`` or, for a conditional GAN, a tuple (x, labels). `steps` counts generator
    updates. The optimisers ("adam", "sgd" with momentum betas[0], "rmsprop") and their learning rates and betas
    are set separately for the two players (the critic's default to the generator's); ``schedule="cosine"`` decays
    both learning rates to 0. With ``ema`` (a decay such as 0.999) the returned generator holds an exponential
    moving average of the generator's weights over training (the critic is not averaged), which damps the
    oscillations of the game (callbacks see the raw weights). ``monitor_every`` (2-D data) records the run with
    :func:`mode_monitor` on ``monitor_dataset``, and once more at the end for the averaged generator. For the
    clipped WGAN the critic's weights are clipped after every critic step; for WGAN-GP the penalty is added to
    its loss.

    Returns a :class:`genlib.train.History` (also ``model.history``): ``loss`` is the generator loss per step;
    ``extra`` holds ``critic_loss``, ``generator_loss`` and a divergence estimate per step: ``js`` (the
    Jensen-Shannon estimate (log 4 - critic loss) / 2, exact when the discriminator is optimal) for minimax/ns,
    ``w1`` (E f(x) - E f(G(z)), a W1 estimate up to the critic's Lipschitz constant) for the WGANs. Raises
    :class:`genlib.train.TrainingDiverged` naming the step when a loss becomes NaN or infinite.
    """
    if not isinstance(model, GAN):
        raise TypeError(f"model: expected a genlib.models.gan.GAN, got {type(model).__name__}")
    if isinstance(data, torch.Tensor):
        x_all, y_all = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        x_all, y_all = data
    else:
        raise TypeError(f"data: expected a tensor or a tuple (x, labels), got {type(data).__name__}")
    check_tensor("data", x_all, ndim=1 + len(model.data_shape))
    if tuple(x_all.shape[1:]) != model.data_shape:
        raise ValueError(f"data: expected shape (N, {', '.join(map(str, model.data_shape))}), got {tuple(x_all.shape)}")
    if model.n_classes and y_all is None:
        raise ValueError("data: a conditional GAN needs (x, labels)")
    if y_all is not None:
        if not model.n_classes:
            raise ValueError("data: labels given to an unconditional GAN")
        if y_all.shape != (x_all.shape[0],):
            raise ValueError(f"data: expected {x_all.shape[0]} labels, got shape {tuple(y_all.shape)}")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("critic_steps", critic_steps)
    check_positive_float("lr", lr)
    lr_critic = lr if lr_critic is None else check_positive_float("lr_critic", lr_critic)
    check_choice("optimizer", optimizer, ("adam", "sgd", "rmsprop"))
    optimizer_critic = optimizer if optimizer_critic is None else optimizer_critic
    check_choice("optimizer_critic", optimizer_critic, ("adam", "sgd", "rmsprop"))
    betas_critic = betas if betas_critic is None else betas_critic
    check_choice("schedule", schedule, ("constant", "cosine"))
    if ema is not None and not (isinstance(ema, float) and 0 < ema < 1):
        raise ValueError(f"ema: expected None or a decay in (0, 1), got {ema!r}")
    for name, b in (("betas", betas), ("betas_critic", betas_critic)):
        if len(b) != 2 or not all(0 <= v < 1 for v in b):
            raise ValueError(f"{name}: expected two numbers in [0, 1), got {b!r}")

    device = torch.device(device) if device is not None else model.shift.device
    model.to(device)
    x_all = x_all.to(device)
    u_all = (x_all - model.shift) / model.scale  # both players work in the normalised space
    tensors = (u_all,) if y_all is None else (u_all, y_all.to(device).long())
    monitor = mode_monitor(monitor_every, dataset=monitor_dataset) if monitor_every else None
    if monitor is not None and callback is not None:
        raise ValueError("callback: pass either a callback or monitor_every, not both")
    kind = model.loss_type
    log4 = math.log(4.0)

    def fake_batch(b, y):
        z = randn((b, model.latent_dim), like=u_all)  # from the run's seeded stream
        out = model.generator(z) if y is None else model.generator(z, y)
        return out.view(b, *model.data_shape)

    def critic_step(u, y=None):
        with torch.no_grad():
            fake = fake_batch(u.shape[0], y)
        loss = critic_loss(kind, model._critic(u, y), model._critic(fake, y))
        if kind == "wgan_gp" and model.gp_weight > 0:
            loss = loss + model.gp_weight * gradient_penalty(lambda v, y=y: model._critic(v, y), u, fake)
        return loss

    def generator_step(u, y=None):  # the batch gives only its size and (for a conditional GAN) the labels
        return generator_loss(kind, model._critic(fake_batch(u.shape[0], y), y))

    def log_divergence(step, m, history):  # the divergence estimate the critic's loss gives, then the monitor
        c = history.extra["critic_loss"][-1]
        history.log(**({"js": (log4 - c) / 2} if kind in ("minimax", "ns") else {"w1": -c}))
        if callback or monitor:
            (callback or monitor)(step, m, history)

    clip = (lambda m: clip_weights(m.critic, m.clip)) if kind == "wgan_clip" else None
    players = [Player("critic", list(model.critic.parameters()), critic_step, updates=critic_steps, lr=lr_critic,
                      betas=tuple(betas_critic), optimizer=optimizer_critic, average=False, after_update=clip),
               Player("generator", list(model.generator.parameters()), generator_step)]
    history = fit_players(model, tensors, players=players, steps=steps, batch_size=batch_size, lr=lr,
                          optimizer=optimizer, betas=tuple(betas), clip_grad=None, schedule=schedule, seed=seed,
                          device=device, callback=log_divergence, progress=progress, desc=desc or f"fit GAN ({kind})",
                          ema=ema)
    if monitor is not None and ema is not None:
        monitor.record(steps, model, history)  # a last record: the averaged generator, as returned
    return history


# ------------------------------------------------------------------------------------------ monitoring


def mode_monitor(every: int, n: int = 2000, n_snapshot: int = 300, seed: int = 1, dataset: str = "eight_gaussians"):
    """A ``fit`` callback for 2-D data (default: the eight Gaussians): every `every` steps it logs into the
    history the step (``monitor_step``), the modes covered and the fraction on a mode
    (:func:`genlib.metrics.mode_stats` of n samples from fixed noise), and the first `n_snapshot` of those
    samples, flattened (``snapshots``), so that the training dynamics can be replayed without the
    intermediate weights."""
    from ..metrics import mode_stats

    check_positive_int("every", every)
    fixed: dict = {}

    def callback(step: int, model: GAN, history: History) -> None:
        if (step + 1) % every and step != 0:
            return
        record(step + 1, model, history)

    def record(step: int, model: GAN, history: History) -> None:
        if "z" not in fixed:
            g = torch.Generator().manual_seed(seed)
            fixed["z"] = torch.randn(n, model.latent_dim, generator=g).to(model.shift.device)
        with torch.no_grad():
            x = model.transform(fixed["z"])
        finite = bool(torch.isfinite(x).all())
        stats = mode_stats(x, dataset=dataset) if finite else {"modes_covered": 0, "on_mode": 0.0}
        history.log(monitor_step=step, modes_covered=stats["modes_covered"], on_mode=stats["on_mode"])
        history.extra.setdefault("snapshots", []).extend(x[:n_snapshot].flatten().cpu().tolist())

    callback.record = record
    return callback


def snapshots(history: History) -> torch.Tensor:
    """The samples logged by :func:`mode_monitor`, as a tensor (frames, n_snapshot, 2)."""
    flat = torch.tensor(history.extra["snapshots"])
    frames = len(history.extra["monitor_step"])
    return flat.view(frames, -1, 2)


# ------------------------------------------------------------------------------------------ rejection


class DensityRatio(nn.Module):
    """A classifier between data (label 1) and a generator's samples (label 0) whose logit estimates
    log p_data(x) / p_theta(x): at the optimum of the logistic loss with balanced classes the discriminator
    is ``D* = p_data / (p_data + p_theta)``, and ``logit D*`` is exactly that log-ratio.

    ``net`` maps normalised points u = (x - shift) / scale, shape ``(B, *data_shape)``, to one logit per point.
    The loss draws a fresh batch of generated points for every batch of data, so the generator side is never
    overfitted.
    """

    def __init__(self, net: nn.Module, gan: GAN):
        super().__init__()
        self.net = net
        object.__setattr__(self, "gan", gan)  # a reference, not a submodule: only `net` is trained and saved here
        self.generator: torch.Generator | None = None  # set by fit_rejection for reproducible fake batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The estimated log p_data(x) / p_theta(x), shape (B,)."""
        x = check_tensor("x", x, ndim=1 + len(self.gan.data_shape))
        u = (x - self.gan.shift) / self.gan.scale
        return self.net(u.flatten(1)).reshape(x.shape[0])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The logistic loss: -log sigmoid(l(x)) on the data, -log(1 - sigmoid(l(G(z)))) on as many samples."""
        fake = self.gan.sample(x.shape[0], generator=self.generator)
        return F.softplus(-self(x)).mean() + F.softplus(self(fake)).mean()


class RejectionSampler(Generative):
    """A trained GAN whose samples are corrected by discriminator rejection sampling (Azadi et al., 2019):
    G(z) is kept with probability min(1, r(x) / M), r = exp(ratio(x)) the estimated p_data / p_theta and M a cap.

    Were the ratio exact and M its maximum, the kept points would follow p_data exactly (rejection sampling
    with proposal p_theta); M is set to a high quantile of r under the generator (``calibrate``), which
    trades a little of that exactness at the rare points above it for a usable acceptance rate. Which z survive
    is decided by a second noise u ~ U(0, 1) per proposal (``transform(z, u)``); there is no log-density.
    """

    def __init__(self, gan: GAN, ratio_net: nn.Module, quantile: float = 0.99):
        super().__init__()
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile: expected a value in (0, 1], got {quantile}")
        self.gan = gan
        self.ratio = DensityRatio(ratio_net, gan)
        self.quantile = float(quantile)
        self.register_buffer("log_cap", torch.tensor(float("nan")))
        self.register_buffer("acceptance_rate", torch.tensor(float("nan")))
        # one proposal: the generator's noise z and the uniform u that decides whether G(z) is kept
        self.base = Noise(("normal", gan.latent_dim), ("uniform", 1))
        self.max_rounds = 100

    @torch.no_grad()
    def calibrate(self, n: int = 20_000, generator: torch.Generator | None = None) -> float:
        """Set log M to the ``quantile`` of the log-ratio over n generated points; returns the expected
        acceptance rate E_{p_theta} min(1, r / M), measured on the same points."""
        check_positive_int("n", n)
        log_r = self.ratio(self.gan.sample(n, generator=generator))
        if not torch.isfinite(log_r).all():
            raise TrainingDiverged("the density-ratio classifier returns non-finite logits on generated points")
        self.log_cap.fill_(float(torch.quantile(log_r.float(), self.quantile)))
        self.acceptance_rate.fill_(float(self.accept_probability_from_log_ratio(log_r).mean()))
        return float(self.acceptance_rate)

    def _check_calibrated(self) -> None:
        if torch.isnan(self.log_cap):
            raise RuntimeError("the rejection sampler is not calibrated: call calibrate() (fit_rejection does)")

    def accept_probability_from_log_ratio(self, log_r: torch.Tensor) -> torch.Tensor:
        """min(1, r / M) for log-ratios log r."""
        self._check_calibrated()
        return torch.exp((log_r - self.log_cap).clamp(max=0.0))

    @torch.no_grad()
    def accept_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The probability min(1, r(x) / M) that a generated point x is kept, shape (B,)."""
        return self.accept_probability_from_log_ratio(self.ratio(x))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples: batches of proposals ``transform(base.sample(m))``, the kept ones (G(z) with probability
        min(1, r / M)) gathered until n are kept. Generator and classifier run on every proposal, so the network
        evaluations per returned sample are 2 / acceptance rate on average."""
        check_positive_int("n", n)
        self._check_calibrated()
        rate = float(self.acceptance_rate)
        kept, total, proposals = [], 0, 0
        for _ in range(self.max_rounds):
            m = max(64, math.ceil(1.02 * (n - total) / max(rate, 1e-3)))
            x = self.transform(self.base.sample(m, generator))
            keep = torch.isfinite(x).flatten(1).all(1)
            proposals += m
            kept.append(x[keep])
            total += int(keep.sum())
            if total >= n:
                break
        else:
            raise RuntimeError(f"rejection sampling kept {total} of {proposals} proposals in {self.max_rounds} "
                               f"rounds (fewer than the {n} asked for): the classifier rejects almost everything")
        return torch.cat(kept)[:n]

    @torch.no_grad()
    def transform(self, noise: torch.Tensor) -> torch.Tensor:
        """The sampler as a deterministic map of one proposal's noise (z, u) (what ``base.sample`` returns):
        G(z) where u < min(1, r(G(z)) / M), NaN (rejected) elsewhere. There is no log-density."""
        z, u = self.base.split(noise)
        x = self.gan.transform(z)
        keep = (u[:, 0].to(x) < self.accept_probability(x)).view(-1, *[1] * len(self.gan.data_shape))
        return torch.where(keep, x, torch.full_like(x, float("nan")))

    def networks(self) -> list[nn.Module]:
        return [self.gan.generator, self.ratio.net]

    @property
    def latent_dim(self) -> int:
        """The dimension of the generator's noise z."""
        return self.gan.latent_dim


def mlp_rejection_sampler(gan: dict, hidden: int = 128, depth: int = 3, quantile: float = 0.99) -> RejectionSampler:
    """A rejection sampler around a fresh :func:`mlp_gan` built from the arguments ``gan`` (the zoo loads the
    trained generator into it, then trains the classifier with :func:`fit_rejection`)."""
    return rejection_sampler(mlp_gan(**gan), hidden=hidden, depth=depth, quantile=quantile)


def rejection_sampler(model: GAN, hidden: int = 128, depth: int = 3, quantile: float = 0.99,
                      seed: int = 0) -> RejectionSampler:
    """A rejection sampler around a trained unconditional GAN, with a fresh (untrained) MLP density-ratio
    classifier initialised from `seed`; train it with :func:`fit_rejection`."""
    if not isinstance(model, GAN):
        raise TypeError(f"model: expected a GAN, got {type(model).__name__}")
    if model.n_classes:
        raise ValueError("model: rejection sampling here is for unconditional GANs")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP(math.prod(model.data_shape), 1, hidden=hidden, depth=depth, activation="silu")
    return RejectionSampler(model, net, quantile=quantile).to(model.shift.device)


def fit_rejection(sampler: RejectionSampler, data: torch.Tensor, *, steps: int = 8000, batch_size: int = 256,
                  lr: float = 1e-3, ema: float | None = 0.99, seed: int = 0, progress: bool = True,
                  desc: str | None = None) -> History:
    """Discriminator rejection sampling for a trained (frozen) GAN: train the sampler's classifier between
    `data` and fresh generator samples by logistic regression (:func:`genlib.train.fit`), then calibrate
    its cap. Returns the classifier's training history."""
    from ..train import fit as fit_loss

    if not isinstance(sampler, RejectionSampler):
        raise TypeError(f"sampler: expected a RejectionSampler, got {type(sampler).__name__}")
    data = check_tensor("data", data, ndim=1 + len(sampler.gan.data_shape))
    if tuple(data.shape[1:]) != sampler.gan.data_shape:
        raise ValueError(f"data: expected points of shape {sampler.gan.data_shape}, got {tuple(data.shape[1:])}")
    device = sampler.gan.shift.device
    sampler.ratio.generator = torch.Generator(device=device).manual_seed(seed + 1)
    try:
        history = fit_loss(sampler.ratio, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, ema=ema,
                           progress=progress, desc=desc or "density-ratio classifier")
    finally:
        sampler.ratio.generator = None
    sampler.calibrate(generator=torch.Generator(device=device).manual_seed(seed + 2))
    return history
