"""Autoregressive models: the chain rule of probability, one conditional at a time.

    p(x) = prod_j p(x^(j) | x^(<j)),   sampling: x^(j) = F_j^{-1}(u_j | x^(<j)),  u_j ~ U(0, 1).

Every model here is a probability transformation from uniforms U(0, 1)^n to data, applied in order:

- :class:`BinnedAutoregressive`: a continuous density on R^d. Each coordinate falls into one of `bins`
  equal bins on [-lim, lim] or one of two exponential tails; a network gives the bin probabilities from the
  previous coordinates, and the density is uniform within a bin, so ``log_prob`` is an exact density
  that integrates to 1. ``transform(u)`` is the inverse-CDF map, ``cdf(x)`` its inverse.
- :class:`PixelCNN`: masked convolutions (:class:`MaskedConv2d`, types A and B) over 8x8 images with
  a categorical distribution over the 17 grey levels of each pixel, in raster order.
- :class:`CausalTransformer`: a small decoder-only transformer over token sequences (characters of names,
  or the codes of a VQ-VAE), with :meth:`CausalTransformer.generate` for greedy, temperature, top-k,
  nucleus (top-p) sampling and beam search.

The decoding rules live once, in :func:`filter_logits` and :func:`sample_logits` (inverse-CDF sampling of a
categorical, optionally from given uniforms), and serve all three models.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from .._util import check_choice, check_positive_float, check_positive_int, check_tensor, nats_to_bits_per_dim, rand
from ..nn import MLP
from .base import Generative, Noise

__all__ = [
    "filter_logits",
    "sample_logits",
    "categorical_inverse_cdf",
    "BinnedAutoregressive",
    "MaskedConv2d",
    "PixelCNN",
    "CausalTransformer",
    "CodePrior",
    "bigram_nll",
    "char_transformer",
    "sequence_nll",
]


# ------------------------------------------------------------------------------------- decoding rules


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf the logits of tokens that top-k and/or nucleus (top-p) filtering remove (last dimension).

    - top-k keeps the k tokens of largest probability (ties broken as ``torch.topk`` does);
    - top-p keeps the smallest set of most probable tokens whose total probability is at least p: tokens are
      sorted by decreasing probability and token i is kept iff the probability of the tokens ranked before
      it is below p (so the most probable token is always kept).

    With both, top-k is applied first and top-p to the renormalised survivors.
    """
    check_tensor("logits", logits, finite=False)
    out = logits.clone()
    if top_k is not None:
        check_positive_int("top_k", top_k)
        if top_k < out.shape[-1]:
            keep = torch.zeros_like(out, dtype=torch.bool).scatter_(-1, torch.topk(out, top_k, dim=-1).indices, True)
            out = out.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        check_positive_float("top_p", top_p)
        if top_p > 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {top_p}")
        probs = torch.softmax(out, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        out = out.masked_fill(~keep, float("-inf"))
    return out


def categorical_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The category k with F(k - 1) <= u < F(k) for probabilities (..., K) and uniforms (...): inverse-CDF sampling."""
    cum = torch.cumsum(probs, dim=-1)
    k = torch.searchsorted(cum.contiguous(), u.unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    # guard against rounding (cum[-1] slightly below u) and never pick a zero-probability category
    k = k.clamp_max(probs.shape[-1] - 1)
    bad = probs.gather(-1, k.unsqueeze(-1)).squeeze(-1) <= 0
    if bool(bad.any()):
        last_nonzero = (probs > 0).long().cumsum(-1).argmax(-1)
        k = torch.where(bad, last_nonzero, k)
    return k


def sample_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False, u: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of logits (..., V): greedy (argmax) or inverse-CDF sampling of
    softmax(logits / temperature) after top-k / top-p filtering. Pass the uniforms `u` (...) to make the
    draw a deterministic function of them; otherwise they are drawn from `generator`."""
    check_tensor("logits", logits, finite=False)
    if greedy:
        return logits.argmax(-1)
    check_positive_float("temperature", temperature)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    if u is None:
        u = rand(logits.shape[:-1], like=probs, generator=generator)
    else:
        u = _check_uniforms("u", u, tuple(logits.shape[:-1])).to(probs)
    return categorical_inverse_cdf(probs, u)


def _check_uniforms(name: str, u, shape: tuple[int, ...]) -> torch.Tensor:
    u = check_tensor(name, u)
    if tuple(u.shape) != shape:
        raise ValueError(f"{name}: expected uniforms of shape {shape}, got {tuple(u.shape)}")
    if bool(((u < 0) | (u > 1)).any()):
        raise ValueError(f"{name}: expected values in [0, 1]")
    return u


# ------------------------------------------------------------------ a discretised density on R^d


class BinnedAutoregressive(Generative):
    """A continuous autoregressive density on R^d built from categorical conditionals over bins.

    Coordinate j lies in one of ``bins + 2`` cells: `bins` equal bins of width h = 2 lim / bins on
    [-lim, lim], a left tail (-inf, -lim) and a right tail (lim, inf). The cell probabilities
    pi_j(x^(<j)) come from a learned vector (j = 1) or an MLP of the previous coordinates (j > 1).
    Within a bin the density is uniform (pi / h); within a tail it decays exponentially with scale
    `tail_scale` (density ``pi / s * exp(-(|x| - lim) / s)``). So every conditional, and the product, is an exact
    density on R that integrates to 1, and its CDF is continuous and strictly increasing: ``transform(u)``
    applies the inverse CDFs in order to uniforms u in (0, 1)^d and ``cdf(x)`` maps data back to uniforms.
    """

    def __init__(self, dim: int = 2, bins: int = 90, lim: float = 4.5, hidden: int = 128, depth: int = 3,
                 tail_scale: float = 0.5, activation: str = "silu"):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.bins = check_positive_int("bins", bins, minimum=2)
        self.lim = check_positive_float("lim", lim)
        self.tail_scale = check_positive_float("tail_scale", tail_scale)
        self.register_buffer("edges", torch.linspace(-self.lim, self.lim, self.bins + 1))
        self.first_logits = nn.Parameter(torch.zeros(self.bins + 2))
        self.conditioners = nn.ModuleList(
            MLP(j, self.bins + 2, hidden=hidden, depth=depth, activation=activation) for j in range(1, self.dim))
        self.base = Noise(("uniform", self.dim))

    @property
    def width(self) -> float:
        """The bin width h."""
        return 2 * self.lim / self.bins

    def conditional_logits(self, j: int, context: torch.Tensor) -> torch.Tensor:
        """Logits (B, bins + 2) of the cells of coordinate j (0-based) given the previous coordinates (B, j).
        Cell 0 is the left tail, cells 1..bins the bins, cell bins + 1 the right tail."""
        if j == 0:
            return self.first_logits.expand(context.shape[0], -1)
        return self.conditioners[j - 1](context[:, :j] / self.lim)

    def _cells(self, v: torch.Tensor) -> torch.Tensor:
        k = torch.floor((v + self.lim) / self.width).long() + 1
        k = k.clamp(1, self.bins)
        k = torch.where(v < -self.lim, torch.zeros_like(k), k)
        return torch.where(v >= self.lim, torch.full_like(k, self.bins + 1), k)

    def _within(self, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density of v within its cell (given the cell) and the cell's CDF at v, both (B,)."""
        s = self.tail_scale
        left = k == 0
        right = k == self.bins + 1
        lo = self.edges[(k - 1).clamp(0, self.bins - 1)]
        frac = ((v - lo) / self.width).clamp(0, 1)
        logd = torch.full_like(v, -math.log(self.width))
        dl = (v + self.lim).clamp_max(0) / s
        dr = -(v - self.lim).clamp_min(0) / s
        logd = torch.where(left, dl - math.log(s), torch.where(right, dr - math.log(s), logd))
        frac = torch.where(left, dl.exp(), torch.where(right, 1 - dr.exp(), frac))
        return logd, frac

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        return check_tensor("x", x, ndim=2, last_dim=self.dim)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density log p(x) = sum_j [log pi_j(cell of x^(j)) + log density within the cell]."""
        x = self._check_x(x)
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for j in range(self.dim):
            logp = torch.log_softmax(self.conditional_logits(j, x), dim=-1)
            k = self._cells(x[:, j])
            logd, _ = self._within(x[:, j], k)
            total = total + logp.gather(1, k[:, None]).squeeze(1) + logd
        return total

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per point (nats)."""
        return -self.log_prob(x).mean()

    def conditional_log_prob(self, j: int, values: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x^(j) = v | x^(<j) = context) for a 1-D tensor of values v and one context (j,) (for plots)."""
        if not 0 <= j < self.dim:
            raise ValueError(f"j: expected a coordinate index in [0, {self.dim}), got {j}")
        values = check_tensor("values", values, ndim=1)
        ctx = torch.zeros(1, self.dim, device=values.device, dtype=values.dtype)
        if j > 0:
            if context is None:
                raise ValueError(f"context: coordinate {j} needs the {j} previous coordinates")
            ctx[0, :j] = torch.as_tensor(context, dtype=values.dtype, device=values.device).reshape(-1)[:j]
        logp = torch.log_softmax(self.conditional_logits(j, ctx), dim=-1)[0]
        k = self._cells(values)
        logd, _ = self._within(values, k)
        return logp[k] + logd

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """The uniforms of data: u_j = F_j(x^(j) | x^(<j)), (B, d). The inverse of :meth:`transform`."""
        x = self._check_x(x)
        us = []
        for j in range(self.dim):
            probs = torch.softmax(self.conditional_logits(j, x), dim=-1)
            k = self._cells(x[:, j])
            _, frac = self._within(x[:, j], k)
            before = torch.cumsum(probs, -1) - probs
            us.append(before.gather(1, k[:, None]).squeeze(1) + probs.gather(1, k[:, None]).squeeze(1) * frac)
        return torch.stack(us, 1)

    @torch.no_grad()
    def transform(self, u: torch.Tensor) -> torch.Tensor:
        """The probability transformation: uniforms (B, d) in [0, 1] to data, x^(j) = F_j^{-1}(u_j | x^(<j))."""
        u = check_tensor("u", u, ndim=2, last_dim=self.dim)
        if bool(((u < 0) | (u > 1)).any()):
            raise ValueError("u: expected values in [0, 1]")
        p0 = self.edges
        x = torch.zeros(u.shape[0], self.dim, device=p0.device, dtype=p0.dtype)
        u = u.to(x)
        s = self.tail_scale
        tiny = torch.finfo(x.dtype).tiny
        for j in range(self.dim):
            probs = torch.softmax(self.conditional_logits(j, x), dim=-1)
            k = categorical_inverse_cdf(probs, u[:, j])
            before = (torch.cumsum(probs, -1) - probs).gather(1, k[:, None]).squeeze(1)
            pk = probs.gather(1, k[:, None]).squeeze(1)
            w = ((u[:, j] - before) / pk).clamp(0, 1)
            inside = self.edges[(k - 1).clamp(0, self.bins - 1)] + w * self.width
            left = -self.lim + s * torch.log(w.clamp_min(tiny))
            right = self.lim - s * torch.log((1 - w).clamp_min(tiny))
            x[:, j] = torch.where(k == 0, left, torch.where(k == self.bins + 1, right, inside))
        return x


# ------------------------------------------------------------------------------------------ pixels


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel only sees pixels before the centre in raster order (rows above, and to
    the left in the centre row). Type 'A' also hides the centre pixel (first layer: the output at a pixel
    never sees that pixel); type 'B' lets it through (later layers: the centre then holds features that
    already depend only on earlier pixels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str):
        check_choice("mask_type", mask_type, ("A", "B"))
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd number, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[c, c + (mask_type == "B"):] = 0
        mask[c + 1:] = 0
        self.register_buffer("mask", mask[None, None].expand_as(self.weight).clone())
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class _ResidualB(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, kernel_size, "B")
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, h):
        return h + self.mix(F.gelu(self.conv(F.gelu(h))))


class PixelCNN(Generative):
    """PixelCNN for 8x8 images with `levels` grey levels (digits: 17, values 0..16): a type-A masked
    convolution, residual blocks of type-B masked convolutions, and 1x1 convolutions to per-pixel logits.

    ``log_prob(x)`` is the exact discrete log-probability (nats) of integer images (B, 1, 8, 8); it equals
    the log-density of the uniformly dequantised image x + v, v ~ U[0, 1)^64, so bits per pixel
    -log_prob / (64 log 2) compare with continuous models on the same unit-bin scale.
    """

    SIZE = 8

    def __init__(self, levels: int = 17, channels: int = 64, blocks: int = 4, first_kernel: int = 5,
                 kernel_size: int = 3):
        super().__init__()
        self.levels = check_positive_int("levels", levels, minimum=2)
        check_positive_int("channels", channels)
        check_positive_int("blocks", blocks, minimum=0)
        self.first = MaskedConv2d(1, channels, first_kernel, "A")
        self.blocks = nn.Sequential(*[_ResidualB(channels, kernel_size) for _ in range(blocks)])
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 1), nn.GELU(),
                                  nn.Conv2d(channels, self.levels, 1))
        self.base = Noise(("uniform", self.SIZE**2))

    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        x = check_tensor("x", x, ndim=4, shape_tail=(1, self.SIZE, self.SIZE))
        if bool(((x < 0) | (x > self.levels - 1) | (x != x.round())).any()):
            raise ValueError(f"x: expected integer grey levels in 0..{self.levels - 1}")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, levels, 8, 8): the output at each pixel depends only on the pixels before it."""
        h = self.first(x / (self.levels - 1) * 2 - 1)
        return self.head(self.blocks(h))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (nats) of each integer image."""
        x = self._check_images(x)
        nll = F.cross_entropy(self(x), x[:, 0].long(), reduction="none")
        return -nll.flatten(1).sum(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per pixel (nats)."""
        return -self.log_prob(x).mean() / self.SIZE**2

    def bits_per_pixel(self, x: torch.Tensor) -> float:
        """Mean NLL / (64 log 2) over the images x."""
        with torch.no_grad():
            return float(nats_to_bits_per_dim(-self.log_prob(x).mean(), self.SIZE**2))

    def networks(self) -> list[nn.Module]:
        return [self]

    @torch.no_grad()
    def transform(self, u: torch.Tensor, *, x: torch.Tensor | None = None, start: int = 0,
                  temperature: float = 1.0) -> torch.Tensor:
        """Uniforms (n, 64) to images (n, 1, 8, 8), pixel by pixel in raster order by the inverse CDF of each
        conditional (pixel i reads u[:, i]).

        Pass `x` (n, 1, 8, 8) and `start` to keep its first `start` pixels (raster order) and complete the
        rest (``start=32`` keeps the top half).
        """
        u = check_tensor("u", u, ndim=2)
        n = u.shape[0]
        check_positive_int("start", start, minimum=0)
        if start > self.SIZE**2:
            raise ValueError(f"start: expected at most {self.SIZE**2} pixels, got {start}")
        dev = self.device
        if x is None:
            if start:
                raise ValueError("x: needed when start > 0 (the pixels to keep)")
            img = torch.zeros(n, 1, self.SIZE, self.SIZE, device=dev)
        else:
            img = self._check_images(x).to(dev).clone()
            if img.shape[0] != n:
                raise ValueError(f"x: expected {n} images, got shape {tuple(img.shape)}")
        u = _check_uniforms("u", u, (n, self.SIZE**2)).to(dev)
        for pos in range(start, self.SIZE**2):
            r, c = divmod(pos, self.SIZE)
            logits = self(img)[:, :, r, c]
            img[:, 0, r, c] = sample_logits(logits, temperature=temperature, u=u[:, pos]).to(img.dtype)
        return img

    def complete(self, x: torch.Tensor, keep_rows: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
        """Keep the first `keep_rows` rows of each image and sample the rest from the model."""
        x = self._check_images(x)
        return self.sample(x.shape[0], generator, x=x, start=keep_rows * self.SIZE)


# ------------------------------------------------------------------------------------------ tokens


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return h + self.mlp(self.ln2(h))


class CausalTransformer(Generative):
    """A decoder-only (GPT-style) transformer over token sequences: token and learned position embeddings,
    pre-norm blocks of causal self-attention and MLP, logits for the next token at every position.

    Sequences start with the token `bos`, which is never generated unless it is also the stop token.
    Training targets are the next tokens; with ``stop`` set
    (names: the boundary token), positions after the first stop token are padding and ignored. With
    ``stop=None`` every sequence has the fixed length ``block_size`` (VQ-VAE codes).
    """

    def __init__(self, vocab_size: int, block_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 bos: int = 0, stop: int | None = 0):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size, minimum=2)
        self.block_size = check_positive_int("block_size", block_size)
        check_positive_int("d_model", d_model)
        check_positive_int("n_layers", n_layers)
        check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model: expected a multiple of n_heads={n_heads}, got {d_model}")
        self.bos, self.stop = int(bos), stop
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.blocks = nn.Sequential(*[_Block(d_model, n_heads) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        # one uniform per generated position (the inverse-CDF view of ancestral sampling)
        self.base = Noise(("uniform", block_size))

    def n_params(self) -> int:
        """Number of parameters without the embeddings (the 'N' of scaling laws)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(("tok.", "pos.")))

    def _check_tokens(self, tokens: torch.Tensor, name: str = "tokens", extra: int = 0) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype != torch.long or tokens.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D long tensor (B, T), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.block_size + extra:
            raise ValueError(f"{name}: length {tokens.shape[1]} exceeds {self.block_size + extra} "
                             f"(block_size={self.block_size})")
        if tokens.numel() and bool(((tokens < 0) | (tokens >= self.vocab_size)).any()):
            raise ValueError(f"{name}: token ids must lie in [0, {self.vocab_size})")
        return tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V): the output at position i depends only on tokens 0..i."""
        tokens = self._check_tokens(tokens)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.ln(self.blocks(self.tok(tokens) + self.pos(pos))))

    def _targets(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if self.stop is None:
            valid = torch.ones_like(targets, dtype=torch.bool)
        else:
            is_stop = (targets == self.stop).long()
            valid = (is_stop.cumsum(1) - is_stop) == 0  # up to and including the first stop token
        return inputs, targets, valid

    def token_nll(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence summed NLL (nats) of the tokens after the first, and the number of predicted tokens."""
        tokens = self._check_tokens(tokens, extra=1)
        inputs, targets, valid = self._targets(tokens)
        nll = F.cross_entropy(self(inputs).transpose(1, 2), targets, reduction="none")
        return (nll * valid).sum(1), valid.sum(1)

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (nats) of each sequence (B, T) that starts with `bos`."""
        return -self.token_nll(tokens)[0]

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean NLL per predicted token (nats per token)."""
        nll, count = self.token_nll(tokens)
        return nll.sum() / count.sum().clamp_min(1)

    def networks(self) -> list[nn.Module]:
        return [self]

    @torch.no_grad()
    def transform(self, u: torch.Tensor, **options) -> torch.Tensor:
        """Uniforms (n, block_size) to token sequences (n, L): ancestral sampling in which the token at step i
        is the inverse CDF of its conditional at u[:, i] (options of :meth:`generate`: temperature, top_k,
        top_p, max_len, prefix; the steps use the first max_len uniforms)."""
        u = check_tensor("u", u, ndim=2)
        if u.shape[1] != self.block_size:
            raise ValueError(f"u: expected uniforms of shape (n, {self.block_size}), got {tuple(u.shape)}")
        prefix = options.get("prefix")
        room = self.block_size - (1 if prefix is None else prefix.shape[1]) + 1
        max_len = options.get("max_len") or room
        return self.generate(u.shape[0], u=u[:, :max_len], **options)

    @torch.no_grad()
    def generate(self, n: int, *, strategy: str = "sample", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, beam_width: int = 8, max_len: int | None = None,
                 prefix: torch.Tensor | None = None, u: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, length_penalty: float = 0.0) -> torch.Tensor:
        """Generate n sequences (n, L) of token ids, each starting with `bos` (or with `prefix`).

        - ``strategy="sample"``: ancestral sampling with `temperature`, `top_k` and `top_p` (see
          :func:`filter_logits`); the uniforms can be passed as `u` (n, max_len) and the draw is then a
          deterministic function of them (the inverse-CDF view);
        - ``strategy="greedy"``: the most probable token at every step (all n rows are the same);
        - ``strategy="beam"``: beam search with `beam_width` hypotheses, returning the n best complete
          sequences by log-probability / length**length_penalty (n <= beam_width).

        Generation stops at the stop token (rows are then padded with it) or after `max_len` new tokens
        (default: fill the block).
        """
        check_positive_int("n", n)
        check_choice("strategy", strategy, ("sample", "greedy", "beam"))
        if prefix is None:
            prefix = torch.full((1, 1), self.bos, dtype=torch.long, device=self.device)
        prefix = self._check_tokens(prefix, "prefix").to(self.device)
        if prefix.shape[0] not in (1, n):
            raise ValueError(f"prefix: expected 1 or {n} rows, got {prefix.shape[0]}")
        room = self.block_size - prefix.shape[1] + 1
        max_len = room if max_len is None else check_positive_int("max_len", max_len)
        if max_len > room:
            raise ValueError(f"max_len: at most {room} new tokens fit after the prefix (block_size={self.block_size})")
        if strategy == "beam":
            return self._beam(n, prefix, max_len, beam_width, length_penalty)
        if u is not None:
            u = _check_uniforms("u", u, (n, max_len)).to(self.device)
        seq = prefix.expand(n, -1).clone()
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        for step in range(max_len):
            logits = self._next_logits(seq)
            nxt = sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                greedy=strategy == "greedy", generator=generator,
                                u=None if u is None else u[:, step])
            if self.stop is not None:
                nxt = torch.where(done, torch.full_like(nxt, self.stop), nxt)
                done = done | (nxt == self.stop)
            seq = torch.cat([seq, nxt[:, None]], 1)
            if self.stop is not None and bool(done.all()):
                break
        return seq

    def _next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        logits = self(seq[:, -self.block_size:])[:, -1]
        if self.stop != self.bos:  # the start token is never generated (unless it also ends a sequence)
            logits[:, self.bos] = float("-inf")
        return logits

    def _beam(self, n: int, prefix: torch.Tensor, max_len: int, width: int, length_penalty: float) -> torch.Tensor:
        check_positive_int("beam_width", width)
        if n > width:
            raise ValueError(f"n: beam search returns at most beam_width={width} sequences, got n={n}")
        if prefix.shape[0] != 1:
            raise ValueError("prefix: beam search takes a single prefix row")
        beams = prefix.clone()
        scores = torch.zeros(1, device=self.device)
        finished: list[tuple[float, torch.Tensor]] = []
        for step in range(max_len):
            logp = torch.log_softmax(self._next_logits(beams), -1)
            cand = (scores[:, None] + logp).flatten()
            top = torch.topk(cand, min(2 * width, cand.numel()))
            new_beams, new_scores = [], []
            for score, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                b, tok = divmod(idx, self.vocab_size)
                seq = torch.cat([beams[b], torch.tensor([tok], device=self.device)])
                if self.stop is not None and tok == self.stop or step == max_len - 1:
                    length = seq.shape[0] - prefix.shape[1]
                    finished.append((score / length**length_penalty, seq))
                else:
                    new_beams.append(seq)
                    new_scores.append(score)
                if len(new_beams) == width:
                    break
            if not new_beams:
                break
            best_open = max(new_scores)
            finished.sort(key=lambda t: -t[0])
            if length_penalty == 0 and len(finished) >= n and finished[n - 1][0] >= best_open:
                break  # log-probabilities only fall: no open beam can beat the n best finished ones
            beams = torch.stack(new_beams)
            scores = torch.tensor(new_scores, device=self.device)
        finished.sort(key=lambda t: -t[0])
        out = [s for _, s in finished[:n]]
        length = max(s.shape[0] for s in out)
        pad = self.stop if self.stop is not None else self.bos
        return torch.stack([F.pad(s, (0, length - s.shape[0]), value=pad) for s in out])


class CodePrior(Generative):
    """An autoregressive prior over the code grids (B, h, w) of a VQ-VAE: the grid is read in raster order
    as a sequence of ``h * w`` tokens after a start token (id ``codebook_size``) and modelled by a
    :class:`CausalTransformer`. ``sample(n)`` returns code grids, so it can be passed to ``VQVAE.sample(n,
    prior=...)`` (token-based generation, the idea behind VQ-GAN)."""

    def __init__(self, codebook_size: int, code_shape=(4, 4), d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4):
        super().__init__()
        self.codebook_size = check_positive_int("codebook_size", codebook_size, minimum=2)
        self.code_shape = tuple(int(s) for s in code_shape)
        length = self.code_shape[0] * self.code_shape[1]
        self.net = CausalTransformer(codebook_size + 1, length, d_model, n_layers, n_heads,
                                     bos=codebook_size, stop=None)
        self.base = Noise(("uniform", length))

    def _tokens(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or tuple(idx.shape[1:]) != self.code_shape:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx: expected a long tensor of code grids (B, {self.code_shape[0]}, "
                             f"{self.code_shape[1]}), got {got}")
        if idx.numel() and bool(((idx < 0) | (idx >= self.codebook_size)).any()):
            raise ValueError(f"idx: codes must lie in 0..{self.codebook_size - 1}")
        bos = torch.full((idx.shape[0], 1), self.codebook_size, dtype=torch.long, device=idx.device)
        return torch.cat([bos, idx.flatten(1)], 1)

    def log_prob(self, idx: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (nats) of each code grid."""
        return self.net.log_prob(self._tokens(idx))

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean NLL per code (nats)."""
        return self.net.loss(self._tokens(idx))

    def networks(self) -> list[nn.Module]:
        return [self.net]

    @torch.no_grad()
    def transform(self, u: torch.Tensor, **options) -> torch.Tensor:
        """Uniforms (n, h * w) to code grids (n, h, w), long, by ancestral sampling in raster order
        (options of :meth:`CausalTransformer.generate`, such as temperature)."""
        seq = self.net.transform(u, **options)
        return seq[:, 1:].reshape(-1, *self.code_shape)


# --------------------------------------------------------------------------------- text helpers


def char_transformer(corpus: str = "surnames", block_size: int = 16, d_model: int = 32, n_layers: int = 2,
                     n_heads: int = 4) -> CausalTransformer:
    """A character-level :class:`CausalTransformer` with the vocabulary of a ``genlib.data.names_corpus``."""
    from ..data import names_corpus

    vocab = names_corpus(corpus).tokenizer.vocab_size
    return CausalTransformer(vocab, block_size, d_model, n_layers, n_heads)


def sequence_nll(model: CausalTransformer, tokens: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean NLL per predicted character (nats/char) of the model on tokens (N, L), in batches."""
    total, count = 0.0, 0
    dev = model.device
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            nll, c = model.token_nll(chunk.to(dev))
            total += float(nll.sum())
            count += int(c.sum())
    return total / count


def bigram_nll(train: list[str], test: list[str], tokenizer, alpha: float = 0.1) -> float:
    """Test NLL in nats per character of the add-alpha smoothed character bigram model fitted on `train`
    (the same predicted tokens as :func:`sequence_nll`: every character and the closing boundary)."""
    check_positive_float("alpha", alpha)
    v = tokenizer.vocab_size
    counts = torch.full((v, v), float(alpha), dtype=torch.float64)
    pairs = Counter()
    for w in train:
        ids = tokenizer.encode(w)
        pairs.update(zip(ids[:-1], ids[1:], strict=False))
    for (a, b), c in pairs.items():
        counts[a, b] += c
    logp = (counts / counts.sum(1, keepdim=True)).log()
    test_pairs = Counter()
    for w in test:
        ids = tokenizer.encode(w)
        test_pairs.update(zip(ids[:-1], ids[1:], strict=False))
    total = -sum(c * float(logp[a, b]) for (a, b), c in test_pairs.items())
    return total / sum(test_pairs.values())
