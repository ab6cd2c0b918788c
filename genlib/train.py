"""One training loop for every model with a ``loss``: minibatches, optimizer, gradient clipping,
history, a progress bar, and clear errors when the data or the loss is not finite."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ._util import check_choice, check_positive_float, check_positive_int, check_tensor

__all__ = ["History", "TrainingDiverged", "fit", "batches", "progress_bar"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite during training."""


@dataclass
class History:
    """What a training run recorded: the loss per step (and any extra series), steps and wall time."""

    loss: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A plain dict (floats, ints, lists) that ``torch.load(weights_only=True)`` can read back."""
        return {"loss": list(self.loss), "extra": {k: list(v) for k, v in self.extra.items()},
                "steps": int(self.steps), "seconds": float(self.seconds)}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(list(d["loss"]), {k: list(v) for k, v in d.get("extra", {}).items()}, int(d["steps"]),
                   float(d["seconds"]))

    def log(self, **values: float) -> None:
        """Append named values to the extra series."""
        for k, v in values.items():
            self.extra.setdefault(k, []).append(float(v))


class _StaticBar:
    """A progress bar for executed notebooks on the static site: prints one tqdm-formatted line at the end."""

    def __init__(self, total: int, desc: str, enabled: bool):
        import time as _time

        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self.postfix = ""
        self.start = _time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        import sys
        import time as _time

        from tqdm import tqdm

        if self.enabled:
            line = tqdm.format_meter(self.n, self.total, _time.perf_counter() - self.start, prefix=self.desc,
                                     postfix=self.postfix or None, ncols=100)
            print(line, file=sys.stdout, flush=True)


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A ``tqdm.auto`` progress bar: a live widget in notebooks, text in terminals.

    With ``GENLIB_PROGRESS=static`` (set by ``make book`` and ``make test``) it prints a single final
    tqdm line instead, which reads well in the executed notebooks of the static site.
    """
    import os

    if os.environ.get("GENLIB_PROGRESS", "auto") == "static":
        return _StaticBar(total, desc, enabled)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, mininterval=0.5,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def batches(data: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator):
    """An endless stream of random minibatches (sampled without replacement within each epoch)."""
    n = data[0].shape[0]
    while True:
        perm = torch.randperm(n, generator=generator).to(data[0].device)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[start:start + batch_size]
            yield tuple(d[idx] for d in data)


def _as_tuple(data) -> tuple[torch.Tensor, ...]:
    if isinstance(data, torch.Tensor):
        return (data,)
    if isinstance(data, (tuple, list)) and data and all(isinstance(d, torch.Tensor) for d in data):
        return tuple(data)
    raise TypeError(f"data: expected a tensor or a tuple of tensors, got {type(data).__name__}")


def fit(
    model: nn.Module,
    data,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    clip_grad: float | None = 1.0,
    schedule: str = "constant",
    warmup: int = 0,
    seed: int | None = 0,
    device=None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    callback: Callable[[int, nn.Module, History], None] | None = None,
    progress: bool = True,
    desc: str | None = None,
    ema: float | None = None,
) -> History:
    """Train `model` by minimising ``model.loss(*batch)`` (or ``loss_fn(model, *batch)``) with minibatch gradient steps.

    `data` is a tensor (N, ...) or a tuple of tensors sharing N (for example images and labels).
    The model and data move to `device` (default: the model's device). Returns a :class:`History`,
    also stored as ``model.history``. Raises ValueError if the data hold NaN/inf and
    :class:`TrainingDiverged` naming the step if the loss does. With ``ema`` (a decay in (0, 1), e.g. 0.999)
    the model ends with the exponential moving average of its parameters over the run instead of the last iterate.
    """
    data = _as_tuple(data)
    for i, d in enumerate(data):
        check_tensor(f"data[{i}]" if len(data) > 1 else "data", d, floating=d.is_floating_point())
        if d.shape[0] != data[0].shape[0]:
            raise ValueError(f"data: all tensors must share the first dimension, got {[t.shape[0] for t in data]}")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_float("lr", lr)
    check_choice("optimizer", optimizer, ("adam", "adamw", "sgd"))
    check_choice("schedule", schedule, ("constant", "cosine"))
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema: expected a decay in (0, 1), got {ema}")
    if loss_fn is None and not hasattr(model, "loss"):
        raise TypeError(f"model: {type(model).__name__} has no loss(); pass loss_fn=")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else data[0].device
    device = torch.device(device)
    model.to(device)
    data = tuple(d.to(device) for d in data)
    if seed is not None:
        torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    sched = _schedule(opt, schedule, steps, warmup)
    averaged = [p.detach().clone() for p in params] if ema is not None else None
    history = History()
    stream = batches(data, min(batch_size, data[0].shape[0]), gen)
    start = time.perf_counter()
    model.train()
    bar = progress_bar(steps, desc or f"fit {type(model).__name__}", progress)
    try:
        for step in range(steps):
            batch = next(stream)
            loss = loss_fn(model, *batch) if loss_fn is not None else model.loss(*batch)
            if loss.ndim != 0:
                raise ValueError(f"loss: expected a scalar, got shape {tuple(loss.shape)}")
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at step {step} of {steps} (lr={lr}); the model diverged. "
                    "Try a smaller learning rate or stronger gradient clipping.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            opt.step()
            if sched is not None:
                sched.step()
            if averaged is not None:
                # the average starts at the first iterates (decay min(ema, (1+k)/(10+k)) warms it up)
                decay = min(ema, (1 + step) / (10 + step))
                for a, p in zip(averaged, params, strict=True):
                    a.lerp_(p.detach(), 1.0 - decay)
            history.loss.append(loss.item())
            if callback is not None:
                callback(step, model, history)
            bar.update(1)
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    if averaged is not None:
        with torch.no_grad():
            for p, a in zip(params, averaged, strict=True):
                p.copy_(a)
    model.eval()
    history.steps = steps
    history.seconds = time.perf_counter() - start
    model.history = history
    return history


def _schedule(opt, schedule: str, steps: int, warmup: int):
    if schedule == "constant" and warmup == 0:
        return None
    import math

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
