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
