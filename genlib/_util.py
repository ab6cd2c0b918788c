"""Input validation and device-agnostic random numbers, shared by every genlib module."""

from __future__ import annotations

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


def _draw(fn, shape, like, device, dtype, generator):
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
