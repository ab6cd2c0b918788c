"""Network building blocks shared by the families: an MLP with an optional time embedding, and a
small convolutional encoder / decoder for 8x8 images."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._util import check_choice, check_positive_int, check_tensor

__all__ = ["ACTIVATIONS", "SinusoidalEmbedding", "MLP", "ConvEncoder", "ConvDecoder", "DigitsClassifier"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU,
               "elu": nn.ELU, "softplus": nn.Softplus}


class SinusoidalEmbedding(nn.Module):
    """Embed a scalar time t (any shape broadcastable to (B,)) as [sin(w_i t), cos(w_i t)] of size `dim`.

    Frequencies w_i are geometric from 1 to `max_freq`; `scale` multiplies t first (use 1000 for t in [0, 1]).
    """

    def __init__(self, dim: int = 32, scale: float = 1.0, max_freq: float = 1000.0):
        super().__init__()
        check_positive_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim: expected an even number, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_freq) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs)
        self.scale = float(scale)
        self.dim = dim

    def forward(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=self.freqs.dtype, device=self.freqs.device).reshape(-1)
        if batch is not None and t.numel() == 1:
            t = t.expand(batch)
        angles = (self.scale * t)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


_CPU_CHUNK = 16_384  # rows per chunk when an MLP evaluates a large batch on the CPU without autograd


class MLP(nn.Module):
    """A multilayer perceptron x -> y, optionally conditioned on a time t through a sinusoidal embedding
    concatenated to the input (``time_embed_dim > 0``) and on a class label (``n_classes > 0``)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "silu",
        time_embed_dim: int = 0,
        time_scale: float = 1.0,
        n_classes: int = 0,
        zero_last: bool = False,
    ):
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("out_dim", out_dim)
        check_positive_int("hidden", hidden)
        check_positive_int("depth", depth)
        check_choice("activation", activation, ACTIVATIONS)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.time_embed = SinusoidalEmbedding(time_embed_dim, scale=time_scale) if time_embed_dim else None
        self.label_embed = nn.Embedding(n_classes, hidden) if n_classes else None
        width = in_dim + time_embed_dim + (hidden if n_classes else 0)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        last = nn.Linear(width, out_dim)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x: expected last dimension {self.in_dim}, got shape {tuple(x.shape)}")
        parts = [x]
        if self.time_embed is not None:
            if t is None:
                raise ValueError("t: this MLP is time-conditioned; pass a time")
            parts.append(self.time_embed(t, batch=x.shape[0]).to(x.dtype))
        if self.label_embed is not None:
            if y is None:
                raise ValueError("y: this MLP is class-conditioned; pass labels")
            parts.append(self.label_embed(y).to(x.dtype))
        h = torch.cat(parts, dim=-1) if len(parts) > 1 else x
        if h.device.type == "cpu" and h.ndim == 2 and h.shape[0] > _CPU_CHUNK and not torch.is_grad_enabled():
            # large batches without autograd (sampling 10^5 points) in cache-sized chunks: faster on CPU
            return torch.cat([self.net(c) for c in h.split(_CPU_CHUNK)])
        return self.net(h)


class ConvEncoder(nn.Module):
    """An 8x8 image (B, C, 8, 8) to a vector (B, out_dim): two strided convolutions and a linear layer."""

    def __init__(self, out_dim: int, in_channels: int = 1, channels: int = 32, activation: str = "silu"):
        super().__init__()
        check_positive_int("out_dim", out_dim)
        check_choice("activation", activation, ACTIVATIONS)
        act = ACTIVATIONS[activation]
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), act(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), act(),      # 4x4
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), act(),  # 2x2
            nn.Flatten(),
            nn.Linear(2 * channels * 4, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, 8, 8):
            raise ValueError(f"x: expected images of shape (B, {self.in_channels}, 8, 8), got {tuple(x.shape)}")
        return self.net(x)


class ConvDecoder(nn.Module):
    """A vector (B, in_dim) to an 8x8 map (B, out_channels, 8, 8): a linear layer and two upsampling convolutions."""

    def __init__(self, in_dim: int, out_channels: int = 1, channels: int = 32, activation: str = "silu"):
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_choice("activation", activation, ACTIVATIONS)
        act = ACTIVATIONS[activation]
        self.in_dim = in_dim
        self.channels = channels
        self.fc = nn.Sequential(nn.Linear(in_dim, 2 * channels * 4), act())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), act(),  # 4x4
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), act(),      # 8x8
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"z: expected shape (B, {self.in_dim}), got {tuple(z.shape)}")
        h = self.fc(z).view(z.shape[0], 2 * self.channels, 2, 2)
        return self.net(h)


class DigitsClassifier(nn.Module):
    """A small CNN for the 8x8 digits (inputs in 0..16). ``features`` gives its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
            nn.Flatten(), nn.Linear(128, 64), nn.Tanh(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate features of images (B, 1, 8, 8) in 0..16."""
        x = check_tensor("x", x, ndim=4, shape_tail=(1, 8, 8))
        return self.body(x / 16.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self(x), y)
