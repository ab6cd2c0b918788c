"""Autoencoders, variational autoencoders and the VQ-VAE.

Read top to bottom, this module follows the chapter:

1. :class:`Autoencoder`: a deterministic encoder and decoder trained to reconstruct (plain or denoising).
   Its latent space has no distribution attached, so ``sample`` (decoding standard-normal codes) shows
   why an unconstrained latent space cannot be sampled.
2. :class:`VAE`: prior ``p(z) = N(0, I)``, Gaussian encoder ``q_phi(z | x)``, a decoder likelihood
   ``p_theta(x | z)`` (Gaussian for points; for 8x8 digits a categorical over the 17 levels 0..16 or a
   binomial, both proper discrete likelihoods), the ELBO with a weight ``beta`` on its KL term, and the
   importance-weighted bound on ``log p(x)``.
3. :class:`VQVAE`: a convolutional encoder to a grid of vectors, nearest-code quantisation against a
   codebook, straight-through gradients, the codebook and commitment losses, and codebook usage
   (perplexity). Sampling needs a prior over the code grid: ``sample(n, prior=...)``; the
   autoregressive chapter supplies one.

Images are (B, 1, 8, 8) tensors on the 0..16 scale throughout; points are (B, d) tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._util import check_choice, check_positive_float, check_positive_int, check_tensor, gaussian_log_prob, randn
from ..nn import ACTIVATIONS, MLP
from .base import Generative, Noise

__all__ = [
    "LIKELIHOODS",
    "gaussian_kl",
    "gaussian_log_prob",
    "Autoencoder",
    "VAE",
    "VQVAE",
]

LIKELIHOODS = ("gaussian", "categorical", "binomial")


# ------------------------------------------------------------------------------------------- helpers


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL( N(mu, diag exp(logvar)) || N(0, I) ), summed over the last dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def _shape_tuple(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise TypeError(f"{name}: expected a tuple of positive ints, got {shape!r}") from err
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{name}: expected a tuple of positive ints, got {shape!r}")
    return shape


class _Coder(Generative):
    """What the autoencoder and the VAE share: the data shape, input scaling and input validation."""

    def _setup_data(self, data_shape, levels: int | None):
        self.data_shape = _shape_tuple("data_shape", data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.levels = None if levels is None else check_positive_int("levels", levels, minimum=2)
        # networks see images scaled to [0, 1]; points unchanged
        self.input_scale = 1.0 if self.levels is None else float(self.levels - 1)

    def _check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        x = check_tensor(name, x, shape_tail=self.data_shape)
        if x.ndim != len(self.data_shape) + 1:
            raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, self.data_shape))}), "
                             f"got {tuple(x.shape)}")
        if self.levels is not None:
            top = self.levels - 1
            if bool(((x < 0) | (x > top) | (x != x.round())).any()):
                raise ValueError(f"{name}: expected integer pixel values in 0..{top}")
        return x

    def _check_z(self, z: torch.Tensor) -> torch.Tensor:
        return check_tensor("z", z, last_dim=self.latent_dim)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.data_dim) / self.input_scale


# ------------------------------------------------------------------------------------- autoencoder


class Autoencoder(_Coder):
    """A deterministic autoencoder ``x -> z = E(x) -> x' = D(z)`` with MLPs, trained on the squared error.

    ``noise_std > 0`` makes it a denoising autoencoder: the encoder sees ``x + noise_std * eps`` (on the
    network's input scale) and the decoder must return the clean x. ``sample`` decodes standard-normal
    codes; nothing in training ties the codes to that (or any) distribution, which is the point the
    chapter makes with it.
    """

    def __init__(self, data_shape=(2,), latent_dim: int = 2, hidden: int = 128, depth: int = 3,
                 activation: str = "silu", noise_std: float = 0.0, levels: int | None = None):
        super().__init__()
        self._setup_data(data_shape, levels)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.noise_std = check_positive_float("noise_std", noise_std, allow_zero=True)
        self.encoder = MLP(self.data_dim, latent_dim, hidden, depth, activation)
        self.decoder = MLP(latent_dim, self.data_dim, hidden, depth, activation)
        self.base = Noise(("normal", latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code z = E(x), shape (B, latent_dim)."""
        return self.encoder(self._flat(self._check_x(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction D(z) in data space ``(B, *data_shape)`` (images clamped to 0..levels-1)."""
        out = self.decoder(self._check_z(z)) * self.input_scale
        if self.levels is not None:
            out = out.clamp(0, self.levels - 1)
        return out.reshape(z.shape[0], *self.data_shape)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """T(z) = D(z): the decoder applied to standard-normal codes (which nothing in training matches)."""
        return self.decode(z)

    def networks(self) -> list[nn.Module]:
        return [self.decoder]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error on the network's scale (with input noise when denoising)."""
        x = self._check_x(x)
        clean = self._flat(x)
        noisy = clean + self.noise_std * randn(clean.shape, like=clean) if self.noise_std > 0 else clean
        return (self.decoder(self.encoder(noisy)) - clean).pow(2).sum(-1).mean()



# ---------------------------------------------------------------------------------------------- VAE


class VAE(_Coder):
    """A variational autoencoder with MLP encoder and decoder.

    - prior ``p(z) = N(0, I)`` in ``latent_dim`` dimensions;
    - encoder ``q_phi(z | x) = N(mu_phi(x), diag sigma_phi^2(x))``;
    - decoder likelihood ``p_theta(x | z)``:
      ``"gaussian"`` (points): ``N(x | m_theta(z), diag s^2)`` with s either learned as a function of z
      (``decoder_std=None``, floored at ``exp(min_logvar / 2)``) or a fixed number;
      ``"categorical"`` (images on 0..levels-1): an independent categorical over the levels per pixel;
      ``"binomial"``: an independent Binomial(levels - 1, p_theta(z)) per pixel.
      The two discrete likelihoods give proper discrete log-probabilities, so the ELBO bounds log P(x)
      of the integer image.
    - ``beta`` weights the KL term of the training loss (``beta = 1``: the ELBO);
    - ``train_k > 1`` trains on the importance-weighted bound with that many samples (IWAE); a KL warm-up
      then scales log p(z) / q(z | x) inside the weights by beta;
    - ``kl_warmup > 0`` raises the KL weight linearly from 0 to beta over that many training steps (the loss
      counts the steps it is called in training mode).

    ``sample(n)`` draws z from the prior and decodes; with ``sample_noise=True`` it then draws x from
    ``p_theta(x | z)`` (the model's full distribution), otherwise it returns the decoder mean.
    """

    def __init__(self, data_shape=(2,), latent_dim: int = 2, hidden: int = 128, depth: int = 3,
                 activation: str = "silu", likelihood: str = "gaussian", levels: int | None = None,
                 beta: float = 1.0, decoder_std: float | None = None, min_logvar: float = -9.0,
                 sample_noise: bool | None = None, train_k: int = 1, kl_warmup: int = 0):
        super().__init__()
        check_choice("likelihood", likelihood, LIKELIHOODS)
        self.train_k = check_positive_int("train_k", train_k)
        if likelihood != "gaussian" and levels is None:
            levels = 17
        if likelihood == "gaussian" and levels is not None:
            raise ValueError("levels: the Gaussian likelihood is for real-valued data; use likelihood="
                             "'categorical' or 'binomial' for images with discrete levels")
        self._setup_data(data_shape, levels)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.likelihood = likelihood
        self.beta = check_positive_float("beta", beta, allow_zero=True)
        self.kl_warmup = check_positive_int("kl_warmup", kl_warmup, minimum=0)
        self._training_steps = 0  # losses computed in training mode: the clock of the KL warm-up
        if decoder_std is not None:
            decoder_std = check_positive_float("decoder_std", decoder_std)
        self.decoder_std = decoder_std
        self.min_logvar = float(min_logvar)
        self.sample_noise = (likelihood == "gaussian") if sample_noise is None else bool(sample_noise)
        out = {"gaussian": self.data_dim * (2 if decoder_std is None else 1),
               "categorical": self.data_dim * (self.levels or 1),
               "binomial": self.data_dim}[likelihood]
        self.encoder = MLP(self.data_dim, 2 * latent_dim, hidden, depth, activation)
        self.decoder = MLP(latent_dim, out, hidden, depth, activation)
        self._out_dim = out
        if self.levels is not None:
            k = torch.arange(self.levels, dtype=torch.float32)
            self.register_buffer("level_values", k, persistent=False)
            n = self.levels - 1
            logc = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
            self.register_buffer("log_binom_coef", logc, persistent=False)
        # the base: the latent z alone (the decoder mean), or z and the noise of p_theta(x | z) side by side
        self.mean_base = Noise(("normal", latent_dim))
        output_noise = {"gaussian": ("normal", self.data_dim), "categorical": ("uniform", self.data_dim),
                        "binomial": ("uniform", self.data_dim * ((self.levels or 2) - 1))}[likelihood]
        self.noisy_base = Noise(("normal", latent_dim), output_noise)

    # ---- the encoder q_phi(z | x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q_phi(z | x), each (B, latent_dim)."""
        h = self.encoder(self._flat(self._check_x(x)))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu_phi(x), shape (B, latent_dim)."""
        return self.posterior(x)[0]

    def reparameterise(self, mu: torch.Tensor, logvar: torch.Tensor, k: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): (B, d_z), or (k, B, d_z) when k is given."""
        shape = mu.shape if k is None else (k, *mu.shape)
        eps = randn(shape, like=mu, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    # ---- the decoder p_theta(x | z)

    def _params(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def _gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.decoder_std is None:
            mean, raw = h.chunk(2, dim=-1)
            logvar = self.min_logvar + F.softplus(raw - self.min_logvar)
        else:
            mean = h
            logvar = torch.full_like(h, 2 * math.log(self.decoder_std))
        return mean, logvar

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(*h.shape[:-1], self.data_dim, self.levels)

    def decoder_mean(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of p_theta(x | z) from decoder outputs h, flat (..., data_dim) on the data scale."""
        if self.likelihood == "gaussian":
            return self._gaussian(h)[0]
        if self.likelihood == "categorical":
            return torch.softmax(self._logits(h), -1) @ self.level_values
        return torch.sigmoid(h) * (self.levels - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder mean E[x | z] in data space: ``(B, *data_shape)``; images on the 0..levels-1 scale."""
        z = self._check_z(z)
        return self.decoder_mean(self._params(z)).reshape(*z.shape[:-1], *self.data_shape)

    def networks(self) -> list[nn.Module]:
        return [self.decoder]

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x | z) for x (B, ...) and z (B, d_z) or (k, B, d_z): shape (B,) or (k, B)."""
        flat = x.reshape(x.shape[0], self.data_dim)
        h = self._params(z)
        if self.likelihood == "gaussian":
            mean, logvar = self._gaussian(h)
            return gaussian_log_prob(flat, mean, logvar)
        idx = flat.long()
        if self.likelihood == "categorical":
            logp = torch.log_softmax(self._logits(h), -1)
            idx = idx.expand(*logp.shape[:-1])
            return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        n = self.levels - 1
        return (self.log_binom_coef[idx] + flat * F.logsigmoid(h) + (n - flat) * F.logsigmoid(-h)).sum(-1)

    # ---- the bounds

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction E_q[log p_theta(x | z)] (one reparameterised sample), KL(q_phi(z|x) || p(z))), each (B,)."""
        mu, logvar = self.posterior(x)
        z = self.reparameterise(mu, logvar)
        return self.log_likelihood(x, z), gaussian_kl(mu, logvar)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of the ELBO per example (nats), shape (B,)."""
        rec, kl = self.elbo_terms(x)
        return rec - kl

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The negative beta-weighted ELBO averaged over the batch: -E_q[log p(x|z)] + beta KL.

        With ``train_k > 1`` the model trains on the importance-weighted bound with k = train_k samples
        instead (the IWAE objective), beta weighting log p(z) / q(z | x) inside the weights (beta = 1: the bound).
        """
        beta = self.beta
        if self.training and self.kl_warmup:  # the KL warm-up: beta grows linearly from 0 over kl_warmup steps
            beta = self.beta * min(1.0, self._training_steps / self.kl_warmup)
            self._training_steps += 1
        if self.train_k > 1:
            return -self.iw_bound(x, k=self.train_k, chunk=x.shape[0], beta=beta).mean()
        rec, kl = self.elbo_terms(x)
        return (beta * kl - rec).mean()

    def iw_bound(self, x: torch.Tensor, k: int = 64, generator: torch.Generator | None = None,
                 chunk: int = 256, beta: float = 1.0) -> torch.Tensor:
        """The importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q_phi(z | x), per example.

        k = 1 is the ELBO (in expectation); the bound increases with k towards log p_theta(x). Examples are
        processed in chunks of at most `chunk`, fewer when k is large, to bound the memory. ``beta < 1`` weights
        log p(z) / q(z | x) inside the weights by beta (the KL warm-up of IWAE training; not a bound then).
        """
        x = self._check_x(x)
        check_positive_int("k", k)
        check_positive_int("chunk", chunk)
        beta = check_positive_float("beta", beta, allow_zero=True)
        chunk = max(1, min(chunk, 2_000_000 // (k * self._out_dim)))
        out = []
        for xc in x.split(chunk):
            mu, logvar = self.posterior(xc)
            z = self.reparameterise(mu, logvar, k=k, generator=generator)  # (k, B, d_z)
            log_w = self.log_likelihood(xc, z) + beta * (gaussian_log_prob(z)
                                                         - gaussian_log_prob(z, mu, logvar))
            out.append(torch.logsumexp(log_w, 0) - math.log(k))
        return torch.cat(out)

    # ---- sampling

    @property
    def base(self) -> Noise:
        """The base distribution of the default sampler, z alone (``sample_noise=False``) or z and the decoder's
        noise."""
        return self.noisy_base if self.sample_noise else self.mean_base

    def transform(self, noise: torch.Tensor) -> torch.Tensor:
        """T: decode z and, when the noise also holds the decoder's noise, draw x from p_theta(x | z) with it
        (Gaussian: mean + std * eps; discrete: the inverse CDF of each pixel's levels). Returns ``(n, *data_shape)``."""
        if isinstance(noise, torch.Tensor) and noise.ndim == 2 and noise.shape[1] == self.latent_dim:
            return self.decode(noise)
        z, out = self.noisy_base.split(noise)
        n = z.shape[0]
        h = self._params(self._check_z(z))
        if self.likelihood == "gaussian":
            mean, logvar = self._gaussian(h)
            x = mean + torch.exp(0.5 * logvar) * out.to(mean)
        elif self.likelihood == "categorical":
            cdf = torch.softmax(self._logits(h), -1).cumsum(-1)
            x = (cdf < out.to(cdf)[..., None]).sum(-1).clamp_max(self.levels - 1).to(cdf.dtype)
        else:
            u = out.to(h).reshape(n, self.data_dim, self.levels - 1)
            x = (u < torch.sigmoid(h).unsqueeze(-1)).sum(-1).to(h.dtype)
        return x.reshape(n, *self.data_shape)

    def sample(self, n: int, generator: torch.Generator | None = None, noise: bool | None = None) -> torch.Tensor:
        """``transform(base.sample(n))``: x ~ p_theta(x | z) (``noise=True``) or the decoder mean (``noise=False``).
        The default is the model's ``sample_noise`` (True for the Gaussian decoder on points, False for images).
        """
        check_positive_int("n", n)
        noisy = self.sample_noise if noise is None else bool(noise)
        return self.transform((self.noisy_base if noisy else self.mean_base).sample(n, generator))


# ------------------------------------------------------------------------------------------- VQ-VAE


class VQVAE(Generative):
    """A VQ-VAE for 8x8 images on the 0..16 scale.

    The encoder maps an image to a ``code_shape`` grid (4 x 4) of ``code_dim``-vectors z_e; each is
    replaced by its nearest codebook vector e_k (the code index k); the decoder maps the quantised grid back
    to an image. Training minimises

        ||x/16 - D(z_e + sg[z_q - z_e])||^2 + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2

    (reconstruction with the straight-through gradient, codebook loss, commitment loss). The codebook is
    initialised from encoder outputs of the first batch (``data_init=True``), which avoids most dead codes.

    Sampling needs a prior over code grids, which this model does not learn: pass ``prior=`` to
    :meth:`sample` (or attach one with :meth:`attach_prior`); a prior is any object with
    ``sample(n, generator=None)`` returning long indices of shape (n, h, w) or (n, h * w) in
    ``0..codebook_size-1``. The autoregressive chapter trains one.
    """

    def __init__(self, codebook_size: int = 32, code_dim: int = 16, channels: int = 64, beta: float = 0.25,
                 activation: str = "silu", data_init: bool = True, levels: int = 17):
        super().__init__()
        self.codebook_size = check_positive_int("codebook_size", codebook_size, minimum=2)
        self.code_dim = check_positive_int("code_dim", code_dim)
        check_positive_int("channels", channels)
        check_choice("activation", activation, ACTIVATIONS)
        self.beta = check_positive_float("beta", beta, allow_zero=True)
        self.levels = check_positive_int("levels", levels, minimum=2)
        self.code_shape = (4, 4)
        act = ACTIVATIONS[activation]
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), act(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), act(),  # 4x4
            nn.Conv2d(c, c, 3, padding=1), act(),
            nn.Conv2d(c, code_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, c, 3, padding=1), act(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), act(),  # 8x8
            nn.Conv2d(c, c, 3, padding=1), act(),
            nn.Conv2d(c, 1, 3, padding=1),
        )
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # 1 once the codebook has been initialised from data (a buffer, so it is saved with the weights)
        self.register_buffer("initialised", torch.tensor(0 if data_init else 1))
        self.__dict__["_prior"] = None  # not a submodule: the prior's weights are not the VQ-VAE's
        self.last_indices: torch.Tensor | None = None

    # ---- data and codes

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = check_tensor("x", x, ndim=4, shape_tail=(1, 8, 8))
        top = self.levels - 1
        if bool(((x < 0) | (x > top)).any()):
            raise ValueError(f"x: expected pixel values in 0..{top}")
        return x

    def _check_indices(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx: expected a torch.Tensor of code indices, got {type(idx).__name__}")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"idx: expected an integer tensor of code indices, got dtype {idx.dtype}")
        h, w = self.code_shape
        if idx.ndim == 2 and idx.shape[1] == h * w:
            idx = idx.reshape(-1, h, w)
        if idx.ndim != 3 or tuple(idx.shape[1:]) != (h, w):
            raise ValueError(f"idx: expected shape (B, {h}, {w}) or (B, {h * w}), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(f"idx: code indices must lie in 0..{self.codebook_size - 1}, "
                             f"got range {int(idx.min())}..{int(idx.max())}")
        return idx.long()

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder output z_e before quantisation: (B, code_dim, h, w)."""
        return self.encoder(self._check_x(x) / (self.levels - 1))

    def quantise(self, ze: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook vector for each position: (z_q (B, code_dim, h, w), indices (B, h, w))."""
        b, d, h, w = ze.shape
        flat = ze.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.codebook.weight
        d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None, :]
        idx = d2.argmin(1)
        zq = e[idx].reshape(b, h, w, d).permute(0, 3, 1, 2)
        return zq, idx.reshape(b, h, w)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The code grid of each image: long tensor (B, h, w) in 0..codebook_size-1."""
        return self.quantise(self.encode_continuous(x))[1]

    def _decode_raw(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(zq)

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 8, 8) on the 0..16 scale decoded from code grids (B, h, w) (or (B, h * w))."""
        idx = self._check_indices(idx)
        zq = self.codebook(idx).permute(0, 3, 1, 2)
        return (self._decode_raw(zq) * (self.levels - 1)).clamp(0, self.levels - 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode, quantise and decode: (B, 1, 8, 8) on the 0..16 scale."""
        return self.decode_indices(self.encode_indices(x))

    # ---- training

    def _init_codebook(self, ze: torch.Tensor) -> None:
        flat = ze.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        pick = torch.randperm(flat.shape[0], device=flat.device)[: self.codebook_size]
        if pick.numel() < self.codebook_size:
            pick = pick.repeat(self.codebook_size // pick.numel() + 1)[: self.codebook_size]
        with torch.no_grad():
            self.codebook.weight.copy_(flat[pick])
        self.initialised.fill_(1)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three VQ-VAE losses (each a scalar) and the indices used, with the straight-through estimator."""
        ze = self.encode_continuous(x)
        if self.training and int(self.initialised) == 0:
            self._init_codebook(ze)
        zq, idx = self.quantise(ze)
        zst = ze + (zq - ze).detach()  # forward: z_q; backward: identity to z_e (straight-through)
        xhat = self._decode_raw(zst)
        rec = (xhat - x / (self.levels - 1)).pow(2).sum((1, 2, 3)).mean()
        codebook = (zq - ze.detach()).pow(2).sum(1).mean()
        commit = (ze - zq.detach()).pow(2).sum(1).mean()
        self.last_indices = idx.detach()
        return {"reconstruction": rec, "codebook": codebook, "commitment": commit, "indices": idx}

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction + codebook + beta * commitment."""
        t = self.loss_terms(x)
        return t["reconstruction"] + t["codebook"] + self.beta * t["commitment"]

    def step_metrics(self) -> dict[str, float]:
        """Codebook perplexity and codes used on the last training batch (logged by ``genlib.train.fit``)."""
        if self.last_indices is None:
            return {}
        u = self.codebook_usage(self.last_indices)
        return {"perplexity": u["perplexity"], "used": u["used"]}

    def codebook_usage(self, indices: torch.Tensor) -> dict:
        """Perplexity exp(H) of the code frequencies (codebook_size when all codes are equally used), the
        number of codes used, and the frequencies."""
        idx = self._check_indices(indices)
        freq = torch.bincount(idx.reshape(-1), minlength=self.codebook_size).double()
        freq = freq / freq.sum()
        nz = freq[freq > 0]
        return {"perplexity": float(torch.exp(-(nz * nz.log()).sum())), "used": int((freq > 0).sum()),
                "frequencies": freq.cpu()}

    # ---- sampling

    def attach_prior(self, prior) -> None:
        """Make ``prior`` (an object with ``sample(n, generator=None)`` returning code grids) the default of
        :meth:`sample`. It is not registered as a submodule, so the VQ-VAE's saved weights do not change."""
        if prior is not None and not callable(getattr(prior, "sample", None)):
            raise TypeError("prior: expected an object with a sample(n, generator=None) method returning code indices")
        self.__dict__["_prior"] = prior

    @property
    def prior(self):
        """The attached prior over code grids (None until one is attached)."""
        return self.__dict__.get("_prior")

    @property
    def base(self) -> nn.Module:
        """The base distribution of the attached prior (a VQ-VAE samples only with a prior over its codes)."""
        prior = self.prior
        if prior is None or not hasattr(prior, "base"):
            raise AttributeError(
                "VQVAE.base: the VQ-VAE learns no prior over its code grids; attach_prior(prior) first (the "
                "autoregressive chapter trains one, genlib.zoo's 'code_prior'), or use reconstruct(x) and "
                "decode_indices(idx)")
        return prior.base

    def _prior_or_raise(self, prior):
        prior = prior if prior is not None else self.prior
        if prior is None:
            raise ValueError(
                "prior: VQVAE needs a prior over code grids to sample: pass prior= (a model with base and "
                f"transform, or any object with sample(n, generator) returning long indices of shape (n, "
                f"{self.code_shape[0]}, {self.code_shape[1]})) or call attach_prior(prior); the autoregressive "
                "chapter trains such a prior. Use reconstruct(x) or decode_indices(idx) meanwhile.")
        if not callable(getattr(prior, "sample", None)):
            raise TypeError("prior: expected an object with a sample(n, generator=None) method returning code indices")
        return prior

    def _decode_prior_draw(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        idx = self._check_indices(idx.to(self.codebook.weight.device))
        if idx.shape[0] != n:
            raise ValueError(f"prior: returned {idx.shape[0]} code grids, expected {n}")
        return self.decode_indices(idx)

    def transform(self, noise: torch.Tensor, prior=None) -> torch.Tensor:
        """T: the prior's map from its base draw to a code grid, then the decoder: (n, 1, 8, 8) on the 0..16 scale."""
        prior = self._prior_or_raise(prior)
        if not callable(getattr(prior, "transform", None)):
            raise TypeError("prior: transform(noise) needs a prior with a transform; this one only samples")
        return self._decode_prior_draw(prior.transform(noise), noise.shape[0])

    def sample(self, n: int, generator: torch.Generator | None = None, prior=None) -> torch.Tensor:
        """Code grids from a prior over codes, decoded: (n, 1, 8, 8) on the 0..16 scale (``transform(base.sample(n))``
        with a prior that has a base; otherwise the decoded ``prior.sample(n)``)."""
        check_positive_int("n", n)
        prior = self._prior_or_raise(prior)
        if hasattr(prior, "base") and callable(getattr(prior, "transform", None)):
            return self.transform(prior.base.sample(n, generator), prior=prior)
        return self._decode_prior_draw(prior.sample(n, generator=generator), n)

    def networks(self) -> list[nn.Module]:
        prior = self.prior
        return [self.decoder, *(prior.networks() if hasattr(prior, "networks") else [])]
