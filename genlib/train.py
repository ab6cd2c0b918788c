"""One training loop for every model with a ``loss`` (or several players' losses, as in a GAN): minibatches,
optimizers and their schedules, gradient clipping, weight averaging with a warm-up, history, a progress bar, and
clear errors when the data or the loss is not finite."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ._util import check_choice, check_positive_float, check_positive_int, check_tensor, module_device, randn, seeded

__all__ = ["History", "TrainingDiverged", "Player", "fit", "batches", "progress_bar"]


class TrainingDiverged(RuntimeError):
    """Training blew up: the loss, a gradient or the parameters became non-finite, or grew by orders of magnitude."""


# blow-up: the loss or the parameters' norm grows this many times past where it started (plus one)
BLOW_UP = 1e6


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


@dataclass
class Player:
    """One optimiser's share of a training step, for models whose update is not one loss (a GAN's two players).

    ``loss(*batch)`` returns the player's scalar loss on a fresh minibatch; the player makes ``updates``
    gradient steps on its ``params`` per training step, with its own optimiser (``lr``, ``betas`` and
    ``optimizer`` default to fit's). ``average``: the weight average (``ema``) covers its parameters.
    ``after_update(model)`` runs after each of its steps (weight clipping, say)."""

    name: str
    params: list
    loss: Callable[..., torch.Tensor]
    updates: int = 1
    lr: float | None = None
    betas: tuple[float, float] | None = None
    optimizer: str | None = None
    average: bool = True
    after_update: Callable[[nn.Module], None] | None = None


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


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
    jitter: float | None = None,
    players: list[Player] | None = None,
) -> History:
    """Train `model` by minimising ``model.loss(*batch)`` (or ``loss_fn(model, *batch)``) with minibatch gradient steps.

    `data` is a tensor (N, ...) or a tuple of tensors sharing N (for example images and labels).
    The model and data move to `device` (default: the model's device). Returns a :class:`History`,
    also stored as ``model.history``. Raises ValueError if the data hold NaN/inf and
    :class:`TrainingDiverged` naming the step if the loss does. With ``ema`` (a decay in (0, 1), e.g. 0.999)
    the model ends with the exponential moving average of its parameters over the run instead of the last
    iterate; the average is warmed up (its decay is min(ema, (1 + k) / (10 + k)) at step k) so that it does
    not keep the untrained start. With ``jitter`` (a standard deviation) every minibatch of the first tensor
    gets fresh N(0, jitter^2) noise drawn from a generator seeded by `seed`: a kernel smoothing of the training
    set. A model with a ``step_metrics()`` method has what it returns logged into the history after every step.

    ``players`` replaces the one loss by several (see :class:`Player`): each training step runs every player's
    updates in order, and the history logs each player's last loss as ``<name>_loss`` (``loss`` holds the last
    player's). ``schedule`` ('constant' or 'cosine', after ``warmup`` steps) runs over each player's updates.
    """
    data = _as_tuple(data)
    for i, d in enumerate(data):
        check_tensor(f"data[{i}]" if len(data) > 1 else "data", d, floating=d.is_floating_point())
        if d.shape[0] != data[0].shape[0]:
            raise ValueError(f"data: all tensors must share the first dimension, got {[t.shape[0] for t in data]}")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_float("lr", lr)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_positive_float("weight_decay", weight_decay, allow_zero=True)
    _check_betas("betas", betas)
    if clip_grad is not None:
        check_positive_float("clip_grad", clip_grad)
    check_choice("schedule", schedule, ("constant", "cosine"))
    check_positive_int("warmup", warmup, minimum=0)
    if seed is not None:
        check_positive_int("seed", seed, minimum=0)
    if ema is not None and not (isinstance(ema, (int, float)) and 0.0 < ema < 1.0):
        raise ValueError(f"ema: expected a decay in (0, 1), got {ema!r}")
    if jitter is not None:
        check_positive_float("jitter", jitter, allow_zero=True)
    if players is None:
        if loss_fn is None and not hasattr(model, "loss"):
            raise TypeError(f"model: {type(model).__name__} has no loss(); pass loss_fn=")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model: has no trainable parameters")
        one = (lambda *b: loss_fn(model, *b)) if loss_fn is not None else model.loss
        players = [Player("model", params, one)]
    else:
        if loss_fn is not None:
            raise ValueError("loss_fn: players bring their own losses; pass one or the other")
        for pl in players:
            check_positive_int(f"players[{pl.name}].updates", pl.updates)
            check_choice(f"players[{pl.name}].optimizer", pl.optimizer or optimizer, OPTIMIZERS)
            if pl.lr is not None:
                check_positive_float(f"players[{pl.name}].lr", pl.lr)
            if pl.betas is not None:
                _check_betas(f"players[{pl.name}].betas", pl.betas)
            if not pl.params:
                raise ValueError(f"players: {pl.name} has no trainable parameters")
    device = module_device(model, data[0].device) if device is None else torch.device(device)
    model.to(device)
    data = tuple(d.to(device) for d in data)
    with seeded(seed, device):  # the run draws from a seeded stream; the caller's global state is restored after
        return _fit(model, data, players, steps, batch_size, lr, optimizer, weight_decay, betas, clip_grad, schedule,
                    warmup, seed, callback, progress, desc, ema, jitter, device)


def _check_betas(name: str, betas) -> None:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    if not (ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"{name}: expected two numbers in [0, 1), got {betas!r}")


def _diverged(what: str, value: float, start: float | None, step: int, steps: int, lr: float) -> TrainingDiverged:
    since = f"; it started at {start:.4g}" if start is not None else ""
    return TrainingDiverged(f"{what} became {value:.4g} at step {step} of {steps} (lr={lr}{since}): the model "
                            "diverged. Try a smaller learning rate or stronger gradient clipping.")


def _total_norm(params) -> float:
    return float(torch.nn.utils.get_total_norm([p.detach() for p in params]))


def _optimizer(name: str, params, lr: float, betas, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _fit(model, data, players, steps, batch_size, lr, optimizer, weight_decay, betas, clip_grad, schedule, warmup,
         seed, callback, progress, desc, ema, jitter, device) -> History:
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    jitter_gen = torch.Generator(device=device).manual_seed(0 if seed is None else seed) if jitter else None
    step_metrics = getattr(model, "step_metrics", None)
    opts = [_optimizer(pl.optimizer or optimizer, pl.params, pl.lr or lr, pl.betas or betas, weight_decay)
            for pl in players]
    scheds = [_schedule(o, schedule, steps * pl.updates, warmup) for o, pl in zip(opts, players, strict=True)]
    averaged_params = [p for pl in players if pl.average for p in pl.params]
    averaged = [p.detach().clone() for p in averaged_params] if ema is not None else None
    several = len(players) > 1
    start_norms = [_total_norm(pl.params) for pl in players]
    first_losses: list[float | None] = [None] * len(players)
    history = History()
    stream = batches(data, min(batch_size, data[0].shape[0]), gen)
    start = time.perf_counter()
    model.train()
    bar = progress_bar(steps, desc or f"fit {type(model).__name__}", progress)
    try:
        for step in range(steps):
            for k, (pl, opt, sched) in enumerate(zip(players, opts, scheds, strict=True)):
                for _ in range(pl.updates):
                    batch = next(stream)
                    if jitter_gen is not None:
                        noise = randn(batch[0].shape, like=batch[0], generator=jitter_gen)
                        batch = (batch[0] + jitter * noise, *batch[1:])
                    loss = pl.loss(*batch)
                    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                        raise ValueError(f"loss: expected a scalar tensor, got {got}")
                    value = loss.item()
                    if first_losses[k] is None:
                        first_losses[k] = abs(value)
                    first_loss = first_losses[k]
                    who = f"the {pl.name} " if several else "the "
                    where = (step, steps, pl.lr or lr)
                    if not math.isfinite(value) or abs(value) > BLOW_UP * (first_loss + 1):
                        raise _diverged(f"{who}loss", value, first_loss, *where)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip_grad is not None:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(pl.params, clip_grad))
                        if not math.isfinite(grad_norm):
                            raise _diverged(f"{who}gradient's norm", grad_norm, None, *where)
                    opt.step()
                    norm = _total_norm(pl.params)
                    if not math.isfinite(norm) or norm > BLOW_UP * (start_norms[k] + 1):
                        raise _diverged(f"{who}parameters' norm", norm, start_norms[k], *where)
                    if sched is not None:
                        sched.step()
                    if pl.after_update is not None:
                        pl.after_update(model)
                if several:
                    history.log(**{f"{pl.name}_loss": value})
            if averaged is not None:
                # the average starts at the first iterates (decay min(ema, (1+k)/(10+k)) warms it up)
                decay = min(ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for a, p in zip(averaged, averaged_params, strict=True):
                        a.lerp_(p.detach(), 1.0 - decay)
            history.loss.append(value)
            if callable(step_metrics):
                history.log(**step_metrics())
            if callback is not None:
                callback(step, model, history)
            bar.update(1)
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    if averaged is not None:
        with torch.no_grad():
            for p, a in zip(averaged_params, averaged, strict=True):
                p.copy_(a)
    model.eval()
    history.steps = steps
    history.seconds = time.perf_counter() - start
    model.history = history
    return history


def _schedule(opt, schedule: str, steps: int, warmup: int):
    if schedule == "constant" and warmup == 0:
        return None

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
