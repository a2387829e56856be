"""The diagnosis behind tests/engine/test_placement_gpu.py running in a process of its own: in one fresh
process on a GPU, toy-flux compiled under the full placement, reloaded, and under offload (blocks evicted
for encoding or not), the identity and a reordered plan, each drawn twice; prints the largest pixel
difference of each against the first full load's image."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from dit_explore.engine.core.placement import candidates
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import load

REORDERED = Plan(orders=(("double", parse_order("0, 1, 2, 5, 5, 4, 3, [1-3]x2")),
                         ("single", parse_order("11, 10, [0-3], 4-9"))))
PLANS = (("id", Plan()), ("re", REORDERED))
source = resolve("toy-flux")
settings = dataclasses.replace(resolve_settings(source.defaults), steps=4)


def generator(setting: str, evict: bool = True) -> Generator:
    places = candidates(source, 64, 64, None, dtype="bfloat16")
    placement = None if setting == "full" else dataclasses.replace(places[setting], resident_blocks=18,
                                                                   evict_for_encoding=evict)
    return Generator(load(source, torch.device("cuda"), torch.bfloat16, placement=placement, compile=True))


def images(g: Generator) -> dict[str, Any]:
    return {name: np.asarray(g.generate("a red circle", settings, plan).image).astype(int) for name, plan in PLANS}


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    return {name: int(np.abs(a[name] - b[name]).max()) for name in a}


start = time.time()
g = generator("full")
first = images(g)
print("full same load repeat:", diff(first, images(g)), flush=True)
del g
torch.cuda.empty_cache()
print("full second load:", diff(first, images(generator("full"))), flush=True)
torch.cuda.empty_cache()
for evict in (True, False, True):
    g = generator("offload", evict)
    once = images(g)
    print("offload 18 evict", evict, "vs full:", diff(first, once), "repeat:", diff(once, images(g)), flush=True)
    del g
    torch.cuda.empty_cache()
print("wall", round(time.time() - start, 1))
