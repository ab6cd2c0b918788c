"""Data sets of the book. Nothing is downloaded: 2-D sets are generated, digits ship with
scikit-learn and the names corpus ships with the ``names`` package.

The eight Gaussians are the book's reference: :class:`IsotropicGaussianMixture` gives their exact
density, log-density, score, bin masses and entropy, also after Gaussian noising (for diffusion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ._util import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_tensor,
    gaussian_log_prob,
    randn,
    resolve_device,
)

__all__ = [
    "shift_augment",
    "IsotropicGaussianMixture",
    "eight_gaussians",
    "eight_gaussians_density",
    "two_moons_density",
    "toy_density",
    "TOY_DENSITIES",
    "EIGHT_GAUSSIANS_RADIUS",
    "EIGHT_GAUSSIANS_STD",
    "toy",
    "TOY_DATASETS",
    "two_moons",
    "circles",
    "swiss_roll",
    "checkerboard",
    "pinwheel",
    "spirals",
    "digits",
    "Digits",
    "names_corpus",
    "NamesCorpus",
    "CharTokenizer",
]

EIGHT_GAUSSIANS_RADIUS = 2.0 * math.sqrt(2.0)
EIGHT_GAUSSIANS_STD = math.sqrt(0.1)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected None or a non-negative int, got {seed!r}")
        g.manual_seed(seed)
    return g


def _finish(x: torch.Tensor, g: torch.Generator, device) -> torch.Tensor:
    """Shuffle rows with g, cast to float32 and move to device."""
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm].to(dtype=torch.float32, device=resolve_device(device))


class IsotropicGaussianMixture:
    """A mixture of isotropic Gaussians in R^d with exact density, score, bin masses and sampling.

    ``p(x) = sum_k w_k N(x | m_k, s^2 I)``. :meth:`noised` gives the law of ``a x + b eps`` for
    ``eps ~ N(0, I)``, again such a mixture, which is how diffusion's noisy marginals are exact here.
    ``modes`` names the mode each component belongs to (default: each component is its own mode); a
    curve-shaped set such as two moons is a mixture of many components along each curve, one mode per curve.
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None,
                 modes: torch.Tensor | None = None):
        means = check_tensor("means", torch.as_tensor(means, dtype=torch.float64), ndim=2)
        self.std = check_positive_float("std", std)
        k = means.shape[0]
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or bool((weights < 0).any()) or abs(float(weights.sum()) - 1) > 1e-9:
            raise ValueError(f"weights: expected {k} non-negative numbers summing to 1, got {weights}")
        if modes is None:
            modes = torch.arange(k)
        modes = torch.as_tensor(modes, dtype=torch.long).cpu()
        if modes.shape != (k,) or bool((modes < 0).any()):
            raise ValueError(f"modes: expected {k} non-negative mode indices, got shape {tuple(modes.shape)}")
        self.means = means
        self.weights = weights
        self.modes = modes

    @property
    def n_modes(self) -> int:
        """How many modes the mixture has (components grouped by ``modes``)."""
        return int(self.modes.max()) + 1
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        return check_tensor("x", x, last_dim=self.dim)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x | m_k, s^2 I) for every row of x and every k: shape (..., K)."""
        x = self._check_x(x)
        m = self.means.to(device=x.device, dtype=x.dtype)
        w = self.weights.to(device=x.device, dtype=x.dtype)
        return torch.log(w) + gaussian_log_prob(x.unsqueeze(-2), m, 2 * math.log(self.std))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density at each row of x."""
        return torch.logsumexp(self.component_log_prob(x), dim=-1)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact density at each row of x."""
        return self.log_prob(x).exp()

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior probability of each component given x: shape (..., K)."""
        return torch.softmax(self.component_log_prob(x), dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact score grad_x log p(x) = sum_k r_k(x) (m_k - x) / s^2."""
        r = self.responsibilities(x)
        m = self.means.to(device=x.device, dtype=x.dtype)
        return (r @ m - x) / self.std**2

    def noised(self, alpha: float = 1.0, sigma: float = 0.0) -> IsotropicGaussianMixture:
        """The exact law of ``alpha * x + sigma * eps`` with x from this mixture and eps ~ N(0, I)."""
        alpha = float(alpha)
        sigma = check_positive_float("sigma", sigma, allow_zero=True)
        std = math.sqrt(alpha**2 * self.std**2 + sigma**2)
        return IsotropicGaussianMixture(alpha * self.means, std, self.weights, self.modes)

    def denoiser(self, y: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """Exact posterior mean E[x | alpha x + sigma eps = y] (the target of Tweedie's formula)."""
        noisy = self.noised(alpha, sigma)
        r = noisy.responsibilities(y)
        m = self.means.to(device=y.device, dtype=y.dtype)
        s2 = self.std**2
        # per component: E[x | y, k] = m_k + s2 alpha / (alpha^2 s2 + sigma^2) (y - alpha m_k)
        gain = s2 * alpha / (alpha**2 * s2 + sigma**2)
        comp = m + gain * (y.unsqueeze(-2) - alpha * m)
        return (r.unsqueeze(-1) * comp).sum(-2)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n independent samples (float32) on `device`; components drawn by their weights."""
        check_positive_int("n", n)
        dev = resolve_device(device)
        g = generator if generator is not None else _generator(None)
        k = torch.multinomial(self.weights.float().to(g.device), n, replacement=True, generator=g).cpu()
        eps = randn((n, self.dim), generator=g, dtype=torch.float64)
        x = self.means[k] + self.std * eps.cpu()
        return x.to(dtype=torch.float32, device=dev)

    def bin_masses(self, edges_x: torch.Tensor, edges_y: torch.Tensor) -> torch.Tensor:
        """Exact probability of each rectangle of a 2-D grid given by its edges: shape (len(ex)-1, len(ey)-1)."""
        if self.dim != 2:
            raise ValueError(f"bin_masses: defined for 2-D mixtures, this one is {self.dim}-D")
        ex = torch.as_tensor(edges_x, dtype=torch.float64).cpu()
        ey = torch.as_tensor(edges_y, dtype=torch.float64).cpu()
        normal = torch.distributions.Normal(0.0, 1.0)
        cx = normal.cdf((ex[None, :] - self.means[:, :1]) / self.std)  # (K, nx+1)
        cy = normal.cdf((ey[None, :] - self.means[:, 1:]) / self.std)
        px = cx[:, 1:] - cx[:, :-1]
        py = cy[:, 1:] - cy[:, :-1]
        return torch.einsum("k,ki,kj->ij", self.weights, px, py)

    def entropy(self) -> float:
        """Differential entropy in nats, by quadrature on a 2-D grid (accurate to about 1e-12)."""
        if self.dim != 2:
            raise ValueError(f"entropy: computed by 2-D quadrature, this mixture is {self.dim}-D")
        return _mixture_entropy(tuple(map(tuple, self.means.tolist())), self.std, tuple(self.weights.tolist()))


@lru_cache(maxsize=16)
def _mixture_entropy(means, std, weights) -> float:
    mix = IsotropicGaussianMixture(torch.tensor(means), std, torch.tensor(weights))
    lo = float(mix.means.min()) - 8 * std
    hi = float(mix.means.max()) + 8 * std
    # the rectangle rule converges spectrally for smooth, decaying integrands: a spacing of std / 4 is exact to
    # about 1e-12 (checked against 1601 points per axis on the eight Gaussians)
    n = max(201, math.ceil(4 * (hi - lo) / std) + 1)
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    h = (hi - lo) / (n - 1)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    total = 0.0
    for chunk in pts.split(max(1, 2_000_000 // mix.means.shape[0])):
        lp = mix.log_prob(chunk)
        total += float(-(lp.exp() * lp).sum())
    return total * h * h


def eight_gaussians_density() -> IsotropicGaussianMixture:
    """The exact law of the eight Gaussians: centres at radius 2 sqrt(2), angles k * 45 degrees, std sqrt(0.1)."""
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    means = EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return IsotropicGaussianMixture(means, EIGHT_GAUSSIANS_STD)


def eight_gaussians(n: int = 2000, seed: int | None = None, device=None) -> torch.Tensor:
    """The lecture notes' data set: an (n, 2) float32 tensor, n/8 points per mode (rows shuffled).

    With a seed the set is the same on every run and every device; ``eight_gaussians(2000, seed=0)``
    is the book's training set.
    """
    check_positive_int("n", n)
    g = _generator(seed)
    mix = eight_gaussians_density()
    k = torch.arange(n) % 8  # n/8 points per mode (the first n % 8 modes get one more)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = mix.means[k] + mix.std * eps
    return _finish(x, g, device)


def _moons_arcs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of the upper and lower half circle of the two moons at angles t (before centring and scaling)."""
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    return upper, lower


_MOONS_SHIFT = (0.5, 0.25)
_MOONS_SCALE = 2.0
TWO_MOONS_NOISE = 0.1


def two_moons(n: int = 2000, seed: int | None = None, device=None, noise: float = TWO_MOONS_NOISE) -> torch.Tensor:
    """Two interleaving half circles, centred and scaled to about [-3, 3] x [-1.5, 1.5]
    (exact law: :func:`two_moons_density`)."""
    check_positive_int("n", n)
    check_positive_float("noise", noise, allow_zero=True)
    g = _generator(seed)
    n1 = n // 2
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper, lower = _moons_arcs(t)
    x = torch.cat([upper[:n1], lower[n1:]])
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = (x - torch.tensor(_MOONS_SHIFT, dtype=torch.float64)) * _MOONS_SCALE
    return _finish(x, g, device)


@lru_cache(maxsize=4)
def two_moons_density(nodes: int = 256) -> IsotropicGaussianMixture:
    """The law of :func:`two_moons` (default noise) as a mixture: each half circle is the uniform law on an arc
    blurred by N(0, (2 * 0.1)^2 I), written by the midpoint rule with `nodes` Gaussians per arc, two modes.

    The rule's error is negligible: the nodes are 0.025 apart, an eighth of the noise std (checked in the tests
    against a mixture with four times as many nodes).
    """
    check_positive_int("nodes", nodes)
    t = (torch.arange(nodes, dtype=torch.float64) + 0.5) * (math.pi / nodes)
    upper, lower = _moons_arcs(t)
    shift = torch.tensor(_MOONS_SHIFT, dtype=torch.float64)
    means = (torch.cat([upper, lower]) - shift) * _MOONS_SCALE
    modes = torch.arange(2).repeat_interleave(nodes)
    return IsotropicGaussianMixture(means, TWO_MOONS_NOISE * _MOONS_SCALE, modes=modes)


def circles(n: int = 2000, seed: int | None = None, device=None, noise: float = 0.05) -> torch.Tensor:
    """Two concentric circles of radii 1.5 and 3."""
    check_positive_int("n", n)
    check_positive_float("noise", noise, allow_zero=True)
    g = _generator(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    r = torch.where(torch.arange(n) % 2 == 0, 3.0, 1.5).to(torch.float64)
    x = r[:, None] * torch.stack([torch.cos(t), torch.sin(t)], -1)
    x = x + noise * 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish(x, g, device)


def swiss_roll(n: int = 2000, seed: int | None = None, device=None, noise: float = 0.5) -> torch.Tensor:
    """A 2-D swiss roll (spiral of increasing radius), scaled to about [-3.5, 3.5]^2."""
    check_positive_int("n", n)
    check_positive_float("noise", noise, allow_zero=True)
    g = _generator(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], -1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish(x / 4.0, g, device)


def checkerboard(n: int = 2000, seed: int | None = None, device=None) -> torch.Tensor:
    """Uniform on the black squares of a 4 x 4 checkerboard on [-4, 4]^2."""
    check_positive_int("n", n)
    g = _generator(seed)
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * 8 - 4
    x2 = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 2  # within a 4-unit-high pair of rows
    x2 = x2 + torch.where((torch.floor(x1 / 2) % 2 == 0), 1.0, -1.0).to(torch.float64)
    x2 = x2 + 4.0 * torch.where(torch.rand(n, generator=g) < 0.5, 1.0, 0.0).to(torch.float64) - 2.0
    x2 = torch.remainder(x2 + 4, 8) - 4
    return _finish(torch.stack([x1, x2], -1), g, device)


def pinwheel(n: int = 2000, seed: int | None = None, device=None, arms: int = 5) -> torch.Tensor:
    """Five curved arms around the origin (radial and tangential noise, rotation growing with radius)."""
    check_positive_int("n", n)
    check_positive_int("arms", arms)
    g = _generator(seed)
    radial_std, tangential_std, rate = 0.3, 0.1, 0.25
    k = torch.arange(n) % arms
    feats = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([radial_std, tangential_std],
                                                                               dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = 2 * math.pi * k.to(torch.float64) / arms + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    x = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], -1)
    return _finish(2.0 * x, g, device)


def spirals(n: int = 2000, seed: int | None = None, device=None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved spirals, scaled to about [-3.5, 3.5]^2."""
    check_positive_int("n", n)
    check_positive_float("noise", noise, allow_zero=True)
    g = _generator(seed)
    t = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64)) * 3 * math.pi
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(torch.float64)
    x = sign[:, None] * torch.stack([t * torch.cos(t), t * torch.sin(t)], -1) / (3 * math.pi) * 3.2
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _finish(x, g, device)


TOY_DATASETS = {
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
    "circles": circles,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
}


# The 2-D sets whose exact law the protocol knows (binned KL, NLL, modes): the book's reference and a second one.
TOY_DENSITIES = {"eight_gaussians": eight_gaussians_density, "two_moons": two_moons_density}


def toy_density(name: str) -> IsotropicGaussianMixture:
    """The exact law of a 2-D set the protocol can score against (see ``TOY_DENSITIES``)."""
    check_choice("name", name, TOY_DENSITIES)
    return TOY_DENSITIES[name]()


def toy(name: str, n: int = 2000, seed: int | None = None, device=None) -> torch.Tensor:
    """Any 2-D set by name (see ``TOY_DATASETS``): an (n, 2) float32 tensor."""
    check_choice("name", name, TOY_DATASETS)
    return TOY_DATASETS[name](n, seed=seed, device=device)


# ----------------------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 digits with the book's fixed split. Images are (N, 1, 8, 8) float32 in 0..16."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    LEVELS = 17  # pixel values are the integers 0..16

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of 'train', 'val' or 'test'."""
        check_choice("name", name, ("train", "val", "test"))
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


DIGITS_SPLIT = (1000, 350, 447)
DIGITS_SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(images))
    return images[perm], labels[perm]


def digits(device=None) -> Digits:
    """The 1797 8x8 digits in the book's fixed 1000 / 350 / 447 train / validation / test split."""
    dev = resolve_device(device)
    images, labels = _digits_arrays()
    x = torch.from_numpy(images).unsqueeze(1).to(dev)
    y = torch.from_numpy(labels).to(dev)
    a, b, _ = DIGITS_SPLIT
    return Digits(x[:a], y[:a], x[a:a + b], y[a:a + b], x[a + b:], y[a + b:])


# ------------------------------------------------------------------------------------------ names


class CharTokenizer:
    """Characters to integer ids and back. Id 0 is the boundary token '.', which starts and ends a name."""

    BOUNDARY = "."

    def __init__(self, alphabet: str):
        if self.BOUNDARY in alphabet:
            raise ValueError(f"alphabet: must not contain the boundary token {self.BOUNDARY!r}")
        self.itos = [self.BOUNDARY] + sorted(set(alphabet))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, word: str, boundaries: bool = True) -> list[int]:
        """Ids of the characters of `word`, wrapped in boundary tokens when `boundaries`."""
        unknown = sorted(set(word) - set(self.stoi))
        if unknown:
            raise ValueError(f"word: characters {unknown} are not in the tokenizer's alphabet")
        ids = [self.stoi[c] for c in word]
        return [0] + ids + [0] if boundaries else ids

    def decode(self, ids) -> str:
        """The string of ids, stopping at the first boundary token after the start."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == 0:
                if out:
                    break
                continue
            out.append(self.itos[i])
        return "".join(out)

    def batch(self, words: list[str], device=None) -> torch.Tensor:
        """A (B, L + 2) long tensor of boundary-wrapped words, right-padded with the boundary token."""
        encoded = [self.encode(w) for w in words]
        length = max(map(len, encoded))
        out = torch.zeros(len(words), length, dtype=torch.long)
        for i, e in enumerate(encoded):
            out[i, : len(e)] = torch.tensor(e)
        return out.to(resolve_device(device))


@dataclass(frozen=True)
class NamesCorpus:
    """A names corpus with a fixed split and its character tokenizer."""

    train: list[str]
    test: list[str]
    tokenizer: CharTokenizer


NAMES_FILES = {"surnames": ("dist.all.last",), "first": ("dist.female.first", "dist.male.first")}


@lru_cache(maxsize=4)
def _read_names(kind: str) -> tuple[str, ...]:
    from importlib import resources

    words: list[str] = []
    for fname in NAMES_FILES[kind]:
        text = resources.files("names").joinpath(fname).read_text()
        words.extend(line.split()[0].lower() for line in text.splitlines() if line.strip())
    return tuple(words)


def names_corpus(kind: str = "surnames", test_fraction: float = 0.1) -> NamesCorpus:
    """The US census names shipped in the ``names`` package (88,799 surnames or 5,494 first names),
    lower-cased, split into train and test by a fixed seed."""
    check_choice("kind", kind, NAMES_FILES)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    words = list(_read_names(kind))
    perm = np.random.RandomState(0).permutation(len(words))
    n_test = int(round(test_fraction * len(words)))
    test = [words[i] for i in perm[:n_test]]
    train = [words[i] for i in perm[n_test:]]
    alphabet = "".join(sorted(set("".join(words))))
    return NamesCorpus(train, test, CharTokenizer(alphabet))


def shift_augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, 8, 8) and labels with their four one-pixel shifts appended (the classifier's augmentation)."""
    shifted = [x]
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        shifted.append(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
    return torch.cat(shifted), y.repeat(len(shifted))
