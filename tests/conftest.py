"""Shared fixtures. Tiny models are built once per test session into a private cache folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import Loaded

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


# Tiny pipelines, loaded once per session (the real loading path: built, saved, reloaded from disk).
@pytest.fixture(scope="session")
def load_tiny() -> Callable[[str], Loaded]:
    import torch

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.models import load

    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            cache[name] = load(resolve(name), torch.device("cpu"), torch.float32)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_generator(load_tiny: Callable[[str], Loaded]) -> Callable[[str], Generator]:
    from dit_explore.engine.generate import Generator

    cache: dict[str, Generator] = {}

    def get(name: str) -> Generator:
        if name not in cache:
            cache[name] = Generator(load_tiny(name))
        return cache[name]

    return get
