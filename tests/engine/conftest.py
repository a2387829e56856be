"""Tiny pipelines, loaded once per session (the real loading path: built, saved, reloaded from disk)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded


@pytest.fixture(scope="session")
def load_tiny() -> Callable[[str], Loaded]:
    import torch

    from dit_explore.engine.models import load
    from dit_explore.engine.core.resolve import resolve

    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            cache[name] = load(resolve(name), torch.device("cpu"), torch.float32)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_generator(load_tiny: Callable[[str], Loaded]) -> Callable[[str], Generator]:
    cache: dict[str, Generator] = {}

    def get(name: str) -> Generator:
        if name not in cache:
            cache[name] = Generator(load_tiny(name))
        return cache[name]

    return get
