"""The model contract of the book, in code: every model is a map T from base noise to data.

A model in :mod:`genlib.models` is a :class:`Generative` module with

- ``base``: its base distribution, an object with ``sample(n, generator=None)`` returning one tensor
  ``(n, ...)`` on the model's device (and ``log_prob`` where it has one);
- ``transform(noise, **cond)``: the deterministic map from one base draw to data;
- ``sample(n, generator=None, **cond)``, which is ``transform(base.sample(n, generator), **cond)``,
  draw for draw.

:class:`Noise` is the base of most families: independent standard normal or uniform entries, several
parts concatenated along the last axis when a sampler needs more than one kind (a mixture's uniform
and its Gaussian, a decoder's latent and its output noise). A sampler that needs fresh noise at every
step (a reverse SDE, a Langevin chain) takes all of it as one tensor and reads it with a
:class:`NoiseTape`, which genlib's random-number helpers accept in place of a ``torch.Generator``.

See the Reference chapter "How genlib is built" of the book for the whole contract.
"""

from __future__ import annotations

import torch
from torch import nn

from .._util import NoiseTape, check_choice, check_positive_int, gaussian_log_prob, module_device, rand, randn

__all__ = ["Noise", "NoiseTape", "Generative", "Latent", "gaussian_log_prob"]

KINDS = ("normal", "uniform")


class Noise(nn.Module):
    """A base distribution of independent entries: ``Noise(("normal", (2,)))`` is N(0, I) in 2-D,
    ``Noise(("uniform", (1,)), ("normal", (2,)))`` a uniform and a 2-D Gaussian side by side, (n, 3).

    Each part is ``(kind, shape)`` with kind ``"normal"`` or ``"uniform"``; several parts must be vectors and
    are drawn in order and concatenated. ``dtype`` is the draws' dtype; the device follows the module
    (``.to(device)`` moves it with its model).
    """

    def __init__(self, *parts: tuple[str, tuple[int, ...] | int], dtype: torch.dtype = torch.float32):
        super().__init__()
        if not parts:
            raise ValueError("parts: expected at least one (kind, shape) pair")
        clean = []
        for kind, shape in parts:
            check_choice("kind", kind, KINDS)
            shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
            for s in shape:
                check_positive_int("shape", s)
            clean.append((kind, shape))
        if len(clean) > 1 and any(len(s) != 1 for _, s in clean):
            raise ValueError(f"parts: several parts must each be a vector (kind, (d,)), got {clean}")
        self.parts = tuple(clean)
        if len(clean) == 1:
            self.shape = clean[0][1]
        else:
            self.shape = (sum(s[0] for _, s in clean),)
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws, shape ``(n, *shape)``, on the module's device."""
        check_positive_int("n", n)
        draws = [(randn if kind == "normal" else rand)((n, *shape), like=self._anchor, generator=generator)
                 for kind, shape in self.parts]
        return draws[0] if len(draws) == 1 else torch.cat(draws, -1)

    def split(self, noise: torch.Tensor) -> list[torch.Tensor]:
        """A draw cut back into its parts (checked against the expected shape)."""
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape[1:]) != self.shape or noise.ndim < 2:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise: expected a tensor of shape (n, {', '.join(map(str, self.shape))}) "
                             f"(what base.sample returns), got {got}")
        if len(self.parts) == 1:
            return [noise]
        return list(noise.split([s[0] for _, s in self.parts], dim=-1))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The log-density of each draw (uniform parts: 0 inside the unit cube, -inf outside)."""
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for (kind, shape), part in zip(self.parts, self.split(x), strict=True):
            if kind == "normal":
                total = total + gaussian_log_prob(part, dims=len(shape))
            else:
                inside = ((part >= 0) & (part <= 1)).flatten(1).all(1)
                total = total + torch.where(inside, 0.0, float("-inf")).to(x.dtype)
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}{s}" for k, s in self.parts)


class Generative(nn.Module):
    """What every model shares: ``sample(n, generator, **cond) = transform(base.sample(n, generator), **cond)``.

    Subclasses set ``base`` and define ``transform``. ``networks()`` names the modules whose evaluations
    ``genlib.metrics.count_evaluations`` counts (by default every :class:`genlib.nn.MLP` of the model).
    """

    base: nn.Module

    def sample(self, n: int, generator: torch.Generator | None = None, **cond) -> torch.Tensor:
        """n samples in the data set's units, on the model's device: ``transform(base.sample(n, generator))``."""
        check_positive_int("n", n)
        return self.transform(self.base.sample(n, generator), **cond)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (or buffers)."""
        return module_device(self)

    def networks(self) -> list[nn.Module]:
        """The networks whose forward passes count as network evaluations."""
        from ..nn import MLP

        return [m for m in self.modules() if isinstance(m, MLP)]


class Latent(Generative):
    """A generative model of an autoencoder's codes, read in data space (latent diffusion, Rombach et al. 2022):
    ``transform = autoencoder.decode o prior.transform``, ``base = prior.base``.

    The autoencoder is trained beforehand and frozen here; ``loss(x)`` is the prior's loss on the codes
    ``autoencoder.encode(x)`` of data x (a VAE's posterior means), so the model trains on the data set itself.
    """

    def __init__(self, prior: Generative, autoencoder: nn.Module):
        super().__init__()
        for name in ("encode", "decode"):
            if not callable(getattr(autoencoder, name, None)):
                raise TypeError(f"autoencoder: expected a model with encode and decode, {type(autoencoder).__name__} "
                                f"has no {name}")
        self.prior = prior
        self.autoencoder = autoencoder.requires_grad_(False)

    @property
    def base(self) -> nn.Module:
        return self.prior.base

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of data x (no gradient: the autoencoder is fixed)."""
        with torch.no_grad():
            return self.autoencoder.encode(x)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The prior's training loss on the codes of x."""
        return self.prior.loss(self.encode(x))

    def standardize(self, x: torch.Tensor) -> None:
        """Set the prior's data scaling from the codes of a data set (see the prior's ``standardize``)."""
        self.prior.standardize(self.encode(x))

    def transform(self, noise: torch.Tensor, **cond) -> torch.Tensor:
        """Decode the prior's code for each base draw: data in the data set's units."""
        return self.autoencoder.decode(self.prior.transform(noise, **cond))

    def networks(self) -> list[nn.Module]:
        return [*self.prior.networks(), *self.autoencoder.networks()]
