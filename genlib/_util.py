"""Input validation and device-agnostic random numbers, shared by every genlib module."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn None / a string / a device into a torch.device (None means the CPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: expected a torch device or a name such as 'cpu' or 'cuda', got {device!r}") from err


def module_device(module, default=None) -> torch.device:
    """The device of a module's first parameter or buffer (`default`, or the CPU, when it has neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu") if default is None else torch.device(default)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Raise a ValueError naming `name` unless value is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive_float(name: str, value, allow_zero: bool = False) -> float:
    """Raise a ValueError naming `name` unless value is a finite float > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not (value == value) or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Raise a ValueError naming `name` and the known choices unless value is one of them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; expected one of {choices}")
    return value


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | None = None,
    last_dim: int | None = None,
    shape_tail: tuple[int, ...] | None = None,
    finite: bool = True,
    floating: bool = True,
    min_rows: int = 1,
) -> torch.Tensor:
    """Validate a tensor argument and return it; raise an error naming `name` and what was expected.

    Checks the type (a torch.Tensor), floating dtype, number of dimensions, the size of the last
    dimension(s), at least `min_rows` rows, and that every value is finite.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if last_dim is not None and (x.ndim < 1 or x.shape[-1] != last_dim):
        raise ValueError(f"{name}: expected last dimension {last_dim}, got shape {tuple(x.shape)}")
    if shape_tail is not None and tuple(x.shape[-len(shape_tail):]) != tuple(shape_tail):
        raise ValueError(f"{name}: expected shape (N, {', '.join(map(str, shape_tail))}), got {tuple(x.shape)}")
    if x.ndim >= 1 and x.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} row(s), got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
    return x


def randn(shape, *, like: torch.Tensor | None = None, device=None, dtype=None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise on `like`'s (or `device`'s) device, drawn from `generator` wherever it lives."""
    return _draw(torch.randn, shape, like, device, dtype, generator)


def rand(shape, *, like: torch.Tensor | None = None, device=None, dtype=None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform(0, 1) noise on `like`'s (or `device`'s) device, drawn from `generator` wherever it lives."""
    return _draw(torch.rand, shape, like, device, dtype, generator)


@contextlib.contextmanager
def seeded(seed: int | None, device=None):
    """Run a block with torch's global generators seeded by `seed`, then restore their state: a function may
    draw from the global stream (layer initialisation, dropout) without changing what its caller draws next.
    With seed None the block runs on the global stream as it is."""
    if seed is None:
        yield
        return
    devices = []
    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device).index or 0]
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def nats_to_bits_per_dim(nats, dim: int):
    """Convert a negative log-likelihood in nats per example to bits per dimension (bits per pixel for images)."""
    check_positive_int("dim", dim)
    return nats / (dim * math.log(2.0))


@contextlib.contextmanager
def evaluating(model):
    """Run the block with `model` (any nn.Module, or anything else: left alone) in eval mode, and give every
    submodule back its training flag afterwards: evaluating a model never changes it."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield model
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag


LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean=None, logvar=None, dims: int = 1) -> torch.Tensor:
    """log N(x | mean, diag exp(logvar)) summed over the last `dims` dimensions: genlib's one Gaussian density.

    ``mean`` and ``logvar`` broadcast against x (None: 0, the standard normal), so
    ``gaussian_log_prob(x[:, None], means, logvar)`` scores every row against every component.
    """
    if logvar is None:
        terms = LOG_2PI + (x if mean is None else x - mean).pow(2)
    else:  # the order of the operations fixes autograd's order of summing gradients: kept for reproducible weights
        if not isinstance(logvar, torch.Tensor):
            logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
        terms = LOG_2PI + logvar + (x if mean is None else x - mean).pow(2) * torch.exp(-logvar)
    return -0.5 * (terms if dims == 1 else terms.flatten(terms.ndim - dims)).sum(-1)

class NoiseTape:
    """Noise drawn beforehand and read in order: ``noise[:, 0]``, then ``noise[:, 1]``, ... genlib's
    ``randn`` and ``rand`` helpers accept a tape in place of a ``torch.Generator``, so a sampler that needs
    fresh noise at every step becomes a deterministic function of one tensor (a model's base draw)."""


    def __init__(self, noise: torch.Tensor, kind: str = "normal"):
        check_choice("kind", kind, ("normal", "uniform"))
        self.noise = check_tensor("noise", noise)
        if noise.ndim < 2:
            raise ValueError(f"noise: expected shape (n, draws, ...), got {tuple(noise.shape)}")
        self.kind = kind
        self.used = 0

    @property
    def remaining(self) -> int:
        """How many draws are left."""
        return self.noise.shape[1] - self.used

    def read(self, shape, kind: str, device, dtype) -> torch.Tensor:
        """The next draw, checked against the shape and kind the sampler asks for."""
        if kind != self.kind:
            raise ValueError(f"noise: the sampler asked for {kind} noise from a tape of {self.kind} noise")
        if self.remaining <= 0:
            raise ValueError(f"noise: the sampler needs more than the {self.noise.shape[1]} draws it was given")
        draw = self.noise[:, self.used]
        if tuple(draw.shape) != tuple(shape):
            raise ValueError(f"noise: the sampler asked for a draw of shape {tuple(shape)}, the tape holds "
                             f"{tuple(draw.shape)}")
        self.used += 1
        return draw.to(device=device, dtype=dtype)


def _draw(fn, shape, like, device, dtype, generator):
    if isinstance(generator, NoiseTape):
        if like is not None:
            device = like.device if device is None else device
            dtype = like.dtype if dtype is None else dtype
        return generator.read(shape, "normal" if fn is torch.randn else "uniform", device,
                              torch.get_default_dtype() if dtype is None else dtype)
    if like is not None:
        device = like.device if device is None else device
        dtype = like.dtype if dtype is None else dtype
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if generator is None:
        return fn(shape, device=device, dtype=dtype)
    if generator.device.type == device.type:
        return fn(shape, device=device, dtype=dtype, generator=generator)
    return fn(shape, dtype=dtype, generator=generator, device=generator.device).to(device)
