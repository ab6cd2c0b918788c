"""Shared fixtures: every test runs on the CPU, and again on CUDA where a test takes `device`."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device this machine has: the CPU, and CUDA where available."""
    return torch.device(request.param)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty genlib model cache for one test."""
    monkeypatch.setenv("GENLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class TimeRecorder(torch.nn.Module):
    """A 2-d 'network' that outputs zeros and keeps the times it was called with (tests of time sampling)."""

    def __init__(self):
        super().__init__()
        self.dim, self.times = 2, []

    def forward(self, x, t):
        self.times.append(t.detach().reshape(-1).clone())
        return torch.zeros_like(x)


@pytest.fixture
def time_recorder() -> TimeRecorder:
    """A fresh :class:`TimeRecorder`."""
    return TimeRecorder()
