"""Shared fixtures. Tiny models are built once per test session into a private cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports engine.resolve, and inherited by CLI subprocesses.
_CACHE = Path(tempfile.mkdtemp(prefix="dit-explore-test-cache-"))
os.environ.setdefault("DIT_EXPLORE_CACHE", str(_CACHE))
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
