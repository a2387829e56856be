"""Placements on a GPU (run there: `pytest -m gpu`): pinned host copies, copies on a side stream,
compiled blocks. Every placement's images equal the full placement's (the same weights through the same
kernels), for the identity and a plan that reorders, repeats and groups blocks."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from dit_explore.engine.core.placement import candidates
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve

pytestmark = pytest.mark.gpu

REORDERED = Plan(orders=(("double", parse_order("0, 1, 2, 5, 5, 4, 3, [1-3]x2")),
                         ("single", parse_order("11, 10, [0-3], 4-9"))))


def _load(setting: str, resident: int, compile: bool) -> Any:
    import torch

    from dit_explore.engine.models import load

    source = resolve("toy-flux")
    places = candidates(source, 64, 64, None, dtype="bfloat16")
    placement = None if setting == "full" else dataclasses.replace(places[setting], resident_blocks=resident,
                                                                   evict_for_encoding=True)
    return load(source, torch.device("cuda"), torch.bfloat16, placement=placement, compile=compile)


@pytest.mark.parametrize("compile", [False, True])
def test_streamed_placements_draw_the_full_placements_images(compile: bool) -> None:
    """In a process of its own, as the engine holds one model in a process of its own. Run after the other
    gpu tests in one pytest process (which compile the same block code quantized, at other sizes and
    batches), the compiled full and offload loads drew a plan 1 level apart in some pixels (H100), even
    after torch._dynamo.reset(); alone, every placement matched bit for bit, eager and compiled."""
    code = f"import runpy; runpy.run_path({__file__!r})['check_placements']({compile})"  # any import mode
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip().endswith("3 placements x 2 plans: bit for bit"), done.stdout[-2000:]


def check_placements(compile: bool) -> None:
    import torch

    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.generate import Generator

    settings = dataclasses.replace(resolve_settings(resolve("toy-flux").defaults), steps=4)
    want = {}
    full = Generator(_load("full", 18, compile))
    for name, plan in (("identity", Plan()), ("reordered", REORDERED)):
        want[name] = np.asarray(full.generate("a red circle", settings, plan).image)
    for setting, resident in (("offload", 18), ("sequential", 3), ("sequential", 0)):
        loaded = _load(setting, resident, compile)
        generator = Generator(loaded)
        for name, plan in (("identity", Plan()), ("reordered", REORDERED)):
            got = np.asarray(generator.generate("a red circle", settings, plan).image)
            assert np.array_equal(got, want[name]), (setting, resident, name, compile)
        # The streamed blocks' weights are pinned on the host between uses, and on the device only ever in
        # the two slots; the encoders left the device.
        residency = loaded.residency
        units = [u for key, u in residency.blocks.items() if key not in residency.resident]
        assert all(h.is_pinned() for u in units for h in u.host)
        slots = {s.buffer.untyped_storage().data_ptr() for s in residency.slots}
        assert len(slots) == (2 if units else 0)
        for u in units:
            if u.on_device:
                assert {p.data.untyped_storage().data_ptr() for p in u.params} <= slots
        assert not any(u.on_device for u in loaded.residency.encoders)
        del generator, loaded
        torch.cuda.empty_cache()
    print("3 placements x 2 plans: bit for bit")
