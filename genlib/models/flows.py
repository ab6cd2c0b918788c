"""Normalizing flows: a chain of bijections with cheap log-determinants, and the continuous
normalizing flow (a neural ODE trained by maximum likelihood).

Notation (book/notation.md): the flow f = f_L o ... o f_1 maps data to noise (the normalising
direction), h_0 = x, h_l = f_l(h_{l-1}), h_L = z; the probability transformation is T = f^{-1}.
Every layer's ``forward(h)`` goes data -> noise and returns (f_l(h), log|det J_{f_l}(h)|);
``inverse(y)`` goes noise -> data and returns (f_l^{-1}(y), log|det J_{f_l^{-1}}(y)|).

The change of variables for the chain gives

    log p_theta(x) = log p_Z(f(x)) + sum_l log|det J_{f_l}(h_{l-1})|,

so every layer is built for a cheap log-determinant: affine coupling (RealNVP, a triangular
Jacobian), actnorm (diagonal), an LU-parametrised invertible linear map (Glow) or a permutation.

The continuous normalizing flow (Chen et al. 2018, FFJORD) replaces the chain by the flow of a
vector field v_theta(t, x), with time running from noise (t = 0) to data (t = 1), and the sum of
log-determinants by the integral of the divergence (``genlib.solvers.log_prob_ode``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import solvers
from .._util import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_tensor,
    gaussian_log_prob,
    nats_to_bits_per_dim,
    rand,
)
from ..nn import MLP
from .base import Generative, Noise

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "SplineCoupling",
    "rational_quadratic_spline",
    "InvertibleLinear",
    "Permutation",
    "Logit",
    "Flow",
    "coupling_flow",
    "digits_flow",
    "dequantize",
    "bits_per_pixel",
    "CNF",
]


def _check_h(name: str, h: torch.Tensor, dim: int) -> torch.Tensor:
    # a cheap shape check inside the chain; Flow validates values (finite, floating) once at its entry
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[1] != dim:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"{name}: expected a tensor of shape (N, {dim}), got {shape}")
    return h


def _check_mask(mask, dim: int) -> torch.Tensor:
    """A coupling layer's binary mask as a float tensor (1 = passed through, 0 = transformed), validated."""
    mask = torch.as_tensor(mask, dtype=torch.float32).flatten()
    if mask.numel() != dim or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask: expected {dim} entries, each 0 or 1, got {mask.tolist()}")
    if mask.sum() == 0 or mask.sum() == dim:
        raise ValueError("mask: must keep at least one dimension and transform at least one")
    return mask


class ActNorm(nn.Module):
    """Per-dimension affine normalisation y = (h - loc) * exp(-log_scale) (Glow's actnorm).

    On its first forward pass in training mode it sets loc and log_scale from the batch so that
    the output has zero mean and unit variance per dimension (data-dependent initialisation). The
    flag ``initialized`` is a buffer, so a model restored with ``load_state_dict`` keeps its
    trained values and is never initialised again.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor) -> None:
        """Data-dependent initialisation from a batch h (N, dim)."""
        h = _check_h("h", h, self.dim)
        if h.shape[0] < 2:
            raise ValueError(f"h: actnorm's initialisation needs at least 2 rows, got {h.shape[0]}")
        self.loc.copy_(h.mean(0))
        self.log_scale.copy_(h.std(0).clamp_min(1e-6).log())
        self.initialized.fill_(True)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        if self.training and not bool(self.initialized) and h.shape[0] >= 2:
            self.initialize(h.detach())
        y = (h - self.loc) * torch.exp(-self.log_scale)
        return y, (-self.log_scale.sum()).expand(h.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        h = y * torch.exp(self.log_scale) + self.loc
        return h, self.log_scale.sum().expand(y.shape[0])


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling layer with a binary mask m (1 = passed through, 0 = transformed):

        y = m * h + (1 - m) * (h * exp(s(m * h)) + t(m * h)),

    with a bounded log-scale s = scale * tanh(raw) so that no step can blow up. The Jacobian is
    triangular (after ordering the kept dimensions first), so log|det| = sum over transformed
    dimensions of s, and the inverse needs no inversion of the network.
    """

    def __init__(self, dim: int, mask: torch.Tensor, hidden: int = 64, depth: int = 2, activation: str = "silu"):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.register_buffer("mask", _check_mask(mask, dim))
        self.net = MLP(dim, 2 * dim, hidden=hidden, depth=depth, activation=activation, zero_last=True)
        self.scale = nn.Parameter(torch.ones(dim))

    def _s_t(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        s, t = self._s_t(h * self.mask)
        y = h * self.mask + (1 - self.mask) * (h * torch.exp(s) + t)
        return y, s.sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        s, t = self._s_t(y * self.mask)
        h = y * self.mask + (1 - self.mask) * ((y - t) * torch.exp(-s))
        return h, -s.sum(1)


_MIN_BIN = 1e-3  # smallest bin width / height, as a fraction of the interval
_MIN_DERIV = 1e-3  # smallest knot derivative
_DERIV_SHIFT = math.log(math.expm1(1 - _MIN_DERIV))  # softplus(0 + shift) + _MIN_DERIV = 1: zero raw = identity


def _knots(raw: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes (..., K) from unnormalised raw values and the K + 1 knot positions from -bound to bound."""
    k = raw.shape[-1]
    size = _MIN_BIN + (1 - _MIN_BIN * k) * torch.softmax(raw, dim=-1)
    knots = nn.functional.pad(torch.cumsum(size, dim=-1), (1, 0)) * (2 * bound) - bound
    knots = torch.cat([torch.full_like(knots[..., :1], -bound), knots[..., 1:-1],
                       torch.full_like(knots[..., :1], bound)], dim=-1)
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(x: torch.Tensor, raw_widths: torch.Tensor, raw_heights: torch.Tensor,
                              raw_derivs: torch.Tensor, bound: float = 4.0,
                              inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The monotone rational-quadratic spline of Durkan et al. (2019) applied elementwise, and log|dy/dx|.

    On [-bound, bound] the map has K bins (widths and heights from ``raw_*`` (..., K) by a softmax, the
    K - 1 interior knot derivatives from ``raw_derivs`` (..., K - 1) by a softplus, the two boundary ones
    fixed to 1); outside it is the identity. All-zero raw values give the identity map. With ``inverse``
    the map goes the other way (solving a quadratic per element) and the log-derivative is negated.
    """
    k = raw_widths.shape[-1] if raw_widths.ndim else 0
    if (raw_widths.shape[:-1] != x.shape or raw_heights.shape != raw_widths.shape
            or raw_derivs.shape != (*x.shape, k - 1) or k < 2):
        raise ValueError(f"raw parameters: expected widths and heights of shape (*x.shape, K) with K >= 2 and "
                         f"derivatives of shape (*x.shape, K - 1) for x of shape {tuple(x.shape)}, got "
                         f"{tuple(raw_widths.shape)}, {tuple(raw_heights.shape)}, {tuple(raw_derivs.shape)}")
    widths, xk = _knots(raw_widths, bound)
    heights, yk = _knots(raw_heights, bound)
    inner = nn.functional.softplus(raw_derivs + _DERIV_SHIFT) + _MIN_DERIV
    one = torch.ones_like(inner[..., :1])
    derivs = torch.cat([one, inner, one], dim=-1)
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    knots = yk if inverse else xk
    b = (xc.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)  # the bin of every element

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, b).squeeze(-1)

    x0, y0, w, h = pick(xk), pick(yk), pick(widths), pick(heights)
    d0, d1 = pick(derivs), pick(derivs[..., 1:])
    s = h / w
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        bq = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        xi = (2 * c / (-bq - torch.sqrt((bq * bq - 4 * a * c).clamp_min(0)))).clamp(0, 1)
        out = x0 + xi * w
    else:
        xi = ((xc - x0) / w).clamp(0, 1)
        den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
        out = y0 + h * (s * xi * xi + d0 * xi * (1 - xi)) / den
    den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    log_deriv = (2 * torch.log(s) + torch.log(d1 * xi * xi + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
                 - 2 * torch.log(den))
    if inverse:
        log_deriv = -log_deriv
    return torch.where(inside, out, x), torch.where(inside, log_deriv, torch.zeros_like(log_deriv))


class SplineCoupling(nn.Module):
    """A coupling layer whose transformed dimensions go through a monotone rational-quadratic spline
    (Durkan et al. 2019) with K bins on [-bound, bound], its parameters computed from the kept dimensions.

    Same mask convention as :class:`AffineCoupling` (1 = passed through); the Jacobian is triangular, so
    log|det| is the sum of the spline's log-derivatives over the transformed dimensions. Starts as the identity.
    """

    def __init__(self, dim: int, mask: torch.Tensor, hidden: int = 64, depth: int = 2, bins: int = 8,
                 bound: float = 4.0, activation: str = "silu"):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.bins = check_positive_int("bins", bins, minimum=2)
        self.bound = check_positive_float("bound", bound)
        self.register_buffer("mask", _check_mask(mask, dim))
        self.net = MLP(dim, dim * (3 * bins - 1), hidden=hidden, depth=depth, activation=activation,
                       zero_last=True)

    def _spline(self, h: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.bins
        raw = self.net(h * self.mask).reshape(h.shape[0], self.dim, 3 * k - 1)
        out, ld = rational_quadratic_spline(h, raw[..., :k], raw[..., k:2 * k], raw[..., 2 * k:],
                                            bound=self.bound, inverse=inverse)
        free = 1 - self.mask
        return h * self.mask + out * free, (ld * free).sum(1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        return self._spline(h, inverse=False)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        return self._spline(y, inverse=True)


class InvertibleLinear(nn.Module):
    """An invertible linear map y = h W^T with W = P L (U + diag(sign * exp(log_s))) (Glow's LU form).

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular: log|det W| =
    sum(log_s) costs O(d) and W stays invertible whatever the parameters. Initialised at a random
    rotation (drawn from `generator`), which mixes the dimensions that the couplings split.
    """

    def __init__(self, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("eye", torch.eye(dim))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        return h @ self.weight().T, self.log_s.sum().expand(h.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        w = self.weight()
        # h W^T = y  <=>  W h^T = y^T
        h = torch.linalg.solve(w, y.T).T
        return h, (-self.log_s.sum()).expand(y.shape[0])


class Permutation(nn.Module):
    """A fixed permutation of the dimensions (log|det| = 0); the default reverses them."""

    def __init__(self, dim: int, perm: torch.Tensor | None = None):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        perm = torch.arange(dim - 1, -1, -1) if perm is None else torch.as_tensor(perm, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(dim)):
            raise ValueError(f"perm: expected a permutation of 0..{dim - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        return h[:, self.perm], h.new_zeros(h.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        return y[:, self.inv_perm], y.new_zeros(y.shape[0])


class Logit(nn.Module):
    """A fixed bijection from the box (0, upper)^d to R^d for bounded data (RealNVP's preprocessing):
    p = alpha + (1 - 2 alpha) h / upper, y = log p - log(1 - p). Its log-determinant is exact, so the
    density stays a density on the original scale."""

    def __init__(self, dim: int, upper: float = 1.0, alpha: float = 0.05):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.upper = check_positive_float("upper", upper)
        self.alpha = check_positive_float("alpha", alpha)
        if not self.alpha < 0.5:
            raise ValueError(f"alpha: expected a number in (0, 0.5), got {alpha}")

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("h", h, self.dim)
        c = (1 - 2 * self.alpha) / self.upper
        p = self.alpha + c * h
        if bool(((p <= 0) | (p >= 1)).any()):
            raise ValueError(f"h: values must lie in (0, {self.upper}) for the logit layer")
        y = torch.log(p) - torch.log1p(-p)
        return y, (math.log(c) - torch.log(p) - torch.log1p(-p)).sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_h("y", y, self.dim)
        c = (1 - 2 * self.alpha) / self.upper
        p = torch.sigmoid(y)
        h = (p - self.alpha) / c
        return h, (-math.log(c) + nn.functional.logsigmoid(y) + nn.functional.logsigmoid(-y)).sum(1)


class Flow(Generative):
    """A normalizing flow: layers f_1, ..., f_L (data -> noise) over a standard normal base held in buffers.

    ``log_prob(x)`` is exact; ``loss(x)`` is the mean negative log-likelihood (maximum likelihood =
    forward KL); ``transform(z)`` is T = f^{-1} (noise -> data); ``sample(n)`` draws z ~ N(0, I) and
    applies T. ``intermediates(x)`` and ``transform(z, return_intermediates=True)`` give the value after
    every layer, for plotting the data pushed through the chain.

    ``data_shape`` is the data's shape when it is not a vector (``(1, 8, 8)`` images: the flow reads them
    flattened and ``transform`` returns that shape). ``dequantize=True`` makes it a model of integer images
    (levels 0..16): the loss scores x + u with fresh u ~ U[0, 1), and ``transform`` returns the level k whose cell
    [k, k + 1) holds the continuous draw, a draw of the discrete model P(k) = int_{[k, k+1)} p.
    """

    def __init__(self, layers, dim: int, dequantize: bool = False, data_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.dequantize = bool(dequantize)
        self.data_shape = (dim,) if data_shape is None else tuple(int(v) for v in data_shape)
        if math.prod(self.data_shape) != dim:
            raise ValueError(f"data_shape: expected {dim} entries in all, got {self.data_shape}")
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("layers: expected at least one layer")
        self.register_buffer("base_mean", torch.zeros(dim))
        self.register_buffer("base_log_std", torch.zeros(dim))
        self.base = Noise(("normal", dim))

    @property
    def n_networks(self) -> int:
        """The number of layers holding a network (the couplings), the network evaluations per pass."""
        return sum(isinstance(m, (AffineCoupling, SplineCoupling)) for m in self.layers)

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, self.base_mean, 2 * self.base_log_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x) (data -> noise) and log|det J_f(x)|; x is ``(n, *data_shape)`` or flattened, ``(n, dim)``."""
        x = self._flat(x)
        logdet = x.new_zeros(x.shape[0])
        h = x
        for layer in self.layers:
            h, ld = layer(h)
            logdet = logdet + ld
        return h, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f^{-1}(z) (noise -> data) and log|det J_{f^{-1}}(z)|."""
        z = check_tensor("z", z, ndim=2, last_dim=self.dim)
        logdet = z.new_zeros(z.shape[0])
        h = z
        for layer in reversed(self.layers):
            h, ld = layer.inverse(h)
            logdet = logdet + ld
        return h, logdet

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and len(self.data_shape) > 1 and tuple(x.shape[1:]) == self.data_shape:
            x = x.flatten(1)
        return check_tensor("x", x, ndim=2, last_dim=self.dim)

    def intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[h_0 = x, h_1, ..., h_L = z]: the data after each layer on the way to the base."""
        x = self._flat(x)
        out = [x]
        for layer in self.layers:
            out.append(layer(out[-1])[0])
        return out

    def transform(self, z: torch.Tensor, return_intermediates: bool = False):
        """T(z) = f^{-1}(z) in the data's units (integer levels for a dequantising flow, shape data_shape); with
        return_intermediates, the continuous values [z = h_L, h_{L-1}, ..., h_0] after every layer."""
        z = check_tensor("z", z, ndim=2, last_dim=self.dim)
        out = [z]
        for layer in reversed(self.layers):
            out.append(layer.inverse(out[-1])[0])
        if return_intermediates:
            return out
        x = out[-1].floor().clamp(0, DIGITS_LEVELS - 1) if self.dequantize else out[-1]
        return x.reshape(x.shape[0], *self.data_shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.forward(x)
        return self.base_log_prob(z) + logdet

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean negative log-likelihood; a flow for integer images (``dequantize=True``) scores x + u with
        fresh u ~ U[0, 1) (:func:`dequantize`), the bound on the discrete NLL."""
        if self.dequantize:
            x = dequantize(x)
        return -self.log_prob(x).mean()



def _alternating_masks(dim: int, n: int, kind: str) -> list[torch.Tensor]:
    idx = torch.arange(dim)
    if kind == "checkerboard" and dim == 64:  # 8x8 images: a spatial checkerboard
        base = ((idx // 8 + idx % 8) % 2 == 0).float()
    elif kind == "checkerboard":
        base = (idx % 2 == 0).float()
    else:  # halves
        base = (idx < dim // 2).float()
    return [base if i % 2 == 0 else 1 - base for i in range(n)]


def coupling_flow(dim: int = 2, n_layers: int = 8, hidden: int = 64, depth: int = 2, mixing: str = "lu",
                  actnorm: bool = True, activation: str = "silu", masks: str = "checkerboard",
                  seed: int = 0, pre: list | None = None, coupling: str = "affine", bins: int = 8,
                  bound: float = 4.0, dequantize: bool = False, data_shape: tuple[int, ...] | None = None) -> Flow:
    """A RealNVP-style flow: n_layers blocks of [actnorm] -> [mixing] -> affine coupling, masks alternating.

    ``mixing`` is 'lu' (an invertible linear map), 'reverse' (a permutation) or 'none'. ``pre`` are fixed
    layers applied to the data first (for example :class:`Logit` for bounded data). ``dequantize``: the data are
    integer levels, dequantised by the loss; ``data_shape``: the data's shape when not (n, dim) (:class:`Flow`).
    """
    check_positive_int("dim", dim, minimum=2)
    check_positive_int("n_layers", n_layers)
    check_choice("mixing", mixing, ("lu", "reverse", "none"))
    check_choice("masks", masks, ("checkerboard", "halves"))
    check_choice("coupling", coupling, ("affine", "spline"))
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = list(pre or [])
    alternating = _alternating_masks(dim, n_layers, masks)
    if mixing == "reverse":  # the reversal alternates the halves; alternating masks too would undo it
        alternating = [alternating[0]] * n_layers
    for mask in alternating:
        if actnorm:
            layers.append(ActNorm(dim))
        if mixing == "lu":
            layers.append(InvertibleLinear(dim, generator=g))
        elif mixing == "reverse":
            layers.append(Permutation(dim))
        if coupling == "spline":
            layers.append(SplineCoupling(dim, mask, hidden=hidden, depth=depth, bins=bins, bound=bound,
                                         activation=activation))
        else:
            layers.append(AffineCoupling(dim, mask, hidden=hidden, depth=depth, activation=activation))
    return Flow(layers, dim, dequantize=dequantize, data_shape=data_shape)


# ------------------------------------------------------------------------------------------ digits

DIGITS_LEVELS = 17  # pixel values 0..16


def digits_flow(n_layers: int = 8, hidden: int = 256, depth: int = 2, alpha: float = 0.05, seed: int = 0) -> Flow:
    """A coupling flow for dequantised 8x8 digits on the 0..17 scale: a fixed logit layer maps the box
    (0, 17)^64 to R^64, then coupling blocks with spatial checkerboard masks and LU mixing. It trains on the
    integer images (N, 1, 8, 8), which its loss dequantises, and samples integer images."""
    return coupling_flow(64, n_layers, hidden, depth, mixing="lu", masks="checkerboard", seed=seed,
                         pre=[Logit(64, upper=DIGITS_LEVELS, alpha=alpha)], dequantize=True, data_shape=(1, 8, 8))


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation: integer pixels k in 0..16 (any shape (N, ...)) to k + u, u ~ U[0, 1), flattened
    to (N, 64). A density p on the continuous values gives the discrete model P(k) = int_{[k, k+1)} p, and
    E_u[-log p(k + u)] >= -log P(k): the dequantised NLL bounds the discrete NLL from above."""
    x = check_tensor("images", images).flatten(1)
    if bool(((x < 0) | (x > DIGITS_LEVELS - 1) | (x != x.round())).any()):
        raise ValueError(f"images: expected integer pixel values in 0..{DIGITS_LEVELS - 1}")
    return x + rand(x.shape, like=x, generator=generator)


def bits_per_pixel(flow: Flow, images: torch.Tensor, repeats: int = 4, seed: int = 0) -> float:
    """Upper bound on the discrete NLL of integer images, in bits per pixel: the mean over `repeats`
    dequantisations of -log p(k + u) / (d log 2)."""
    check_positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(seed)
    device = flow.base_mean.device
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            x = dequantize(images.to(device), generator=g)
            total += float(-flow.log_prob(x).double().mean())
    d = images[0].numel()
    return nats_to_bits_per_dim(total / repeats, d)


# ------------------------------------------------------------------- continuous normalizing flow


class CNF(Generative):
    """A continuous normalizing flow: dx/dt = v_theta(t, x), noise at t = 0, data at t = 1.

    The field is a ``genlib.nn.MLP`` with a sinusoidal time embedding. ``transform(z)`` solves the ODE
    forward with ``genlib.solvers.odeint``; ``log_prob(x)`` solves it backward together with the divergence
    (``genlib.solvers.log_prob_ode``: the exact trace or Hutchinson's estimator); ``loss(x)`` is the
    negative log-likelihood, differentiated through the solver (simulation-based training), plus
    ``kinetic`` times the kinetic energy of the field along the solve (the mean of ||v||^2 over the solver's
    evaluations, RNODE's regulariser, Finlay et al. 2020): it favours straight, slow paths that a few
    solver steps integrate accurately, so that the optimiser cannot exploit the solver's error.
    """

    def __init__(self, dim: int = 2, hidden: int = 64, depth: int = 3, activation: str = "silu",
                 time_embed_dim: int = 8, time_scale: float = 0.01, steps: int = 8, method: str = "rk4",
                 divergence: str = "exact", kinetic: float = 0.0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        if not (isinstance(kinetic, (int, float)) and math.isfinite(kinetic) and kinetic >= 0):
            raise ValueError(f"kinetic: expected a finite number >= 0, got {kinetic!r}")
        self.kinetic = float(kinetic)
        self.steps = check_positive_int("steps", steps)
        self.method = check_choice("method", method, solvers.METHODS)
        self.divergence = check_choice("divergence", divergence, ("exact", "hutchinson"))
        self.net = MLP(dim, dim, hidden=hidden, depth=depth, activation=activation,
                       time_embed_dim=time_embed_dim, time_scale=time_scale)
        self.register_buffer("base_mean", torch.zeros(dim))
        self.base = Noise(("normal", dim))

    def velocity(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """v_theta(t, x) for a batch x (B, dim) and a scalar time t."""
        return self.net(x, t)

    def transform(self, z: torch.Tensor, steps: int | None = None, method: str | None = None,
                  return_trajectory: bool = False):
        """T(z): the ODE solved from t = 0 (noise) to t = 1 (data); optionally with the trajectory (steps+1, B, d)."""
        z = check_tensor("z", z, ndim=2, last_dim=self.dim)
        steps = self.steps if steps is None else check_positive_int("steps", steps)
        method = self.method if method is None else check_choice("method", method, solvers.METHODS)
        return solvers.odeint(self.velocity, z, 0.0, 1.0, steps, method, return_trajectory=return_trajectory)

    def log_prob(self, x: torch.Tensor, steps: int | None = None, method: str | None = None,
                 divergence: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p_theta(x) by the instantaneous change of variables (data at t = 1 back to noise at t = 0)."""
        x = check_tensor("x", x, ndim=2, last_dim=self.dim)
        steps = self.steps if steps is None else check_positive_int("steps", steps)
        method = self.method if method is None else check_choice("method", method, solvers.METHODS)
        divergence = self.divergence if divergence is None else divergence
        return solvers.log_prob_ode(self.velocity, x, steps=steps, method=method, divergence_method=divergence,
                                    t_data=1.0, t_noise=0.0, generator=generator)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (through the training solver) + kinetic * mean ||v||^2 along the solve."""
        if self.kinetic == 0:
            return -self.log_prob(x).mean()
        x = check_tensor("x", x, ndim=2, last_dim=self.dim)
        energies: list[torch.Tensor] = []

        def field(t, y):
            v = self.velocity(t, y)
            energies.append((v**2).sum(1).mean())
            return v

        logp = solvers.log_prob_ode(field, x, steps=self.steps, method=self.method,
                                    divergence_method=self.divergence, t_data=1.0, t_noise=0.0)
        return -logp.mean() + self.kinetic * torch.stack(energies).mean()
