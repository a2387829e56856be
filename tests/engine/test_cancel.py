"""Cancel lands within a layer, wherever the engine is: before the first block, inside a huge block, and
inside the VAE decode (on tiny-flux at sizes where those stretches take seconds on CPU).

The engine these tests drive is this file run as a module (`python -m tests.engine.test_cancel`): the real
engine, with markers written to its log as the decode and the blocks start and end, so a test can cancel
at a known point and then check where the run stopped. Timed asserts are not used: each test asserts
ordering facts (the cancel landed before the stretch would have ended: no image, no step, no "end"
marker) and records the latency from cancel to `done`, printed and kept as a test property.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core.protocol import Event
from dit_explore.tui.client import EngineClient
from tests.engine.requests import Runner, drain, module_loop, serving, until_done
from tests.engine.requests import run as submit_run

MARKED_ENGINE = "tests.engine.test_cancel"
NO_BLOCKS = 'version = 1\n[order]\ndouble = ""\nsingle = ""\n'  # a step costs next to nothing: straight to decode
IDENTITY = "version = 1\n"
LATENCIES: dict[str, float] = {}


@pytest.fixture(scope="module")
def run() -> Iterator[Runner]:
    yield from module_loop()


@pytest.fixture(scope="module")
def engine(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    yield from serving(run, tmp_path_factory.mktemp("logs"), MARKED_ENGINE)
    if LATENCIES:
        print("\ncancel latencies (s, from sending cancel to receiving done):",
              ", ".join(f"{k} {v:.3f}" for k, v in LATENCIES.items()))


async def wait_for_marker(log: Path, marker: str, after: int, timeout: float = 120) -> int:
    """Poll the engine's log for `marker` written after byte `after`; the offset past it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = log.read_bytes()
        found = data.find(marker.encode(), after)
        if found >= 0:
            return found + len(marker)
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {marker!r} in {log} within {timeout} s")


def jobs(events: list[Event], job: int, kind: str) -> list[Any]:
    return [e for e in events if kind == e.TYPE and getattr(e, "job", None) == job]


def cancel_at(engine: EngineClient, run: Callable[[Coroutine[Any, Any, Any]], Any], marker: str | None,
              sampling: dict[str, Any], plan: str, name: str, record_property: Callable[[str, object], None],
              ) -> tuple[list[Event], int, str]:
    """Submit a run, cancel it when `marker` appears in the log (at once when None); the events up to its
    `done`, and the log written after the marker."""
    drain(engine)
    log = engine.log_path
    start = log.stat().st_size

    async def scenario() -> tuple[list[Event], int, int]:
        job = await submit_run(engine, plan, ["cancel me"], sampling, baseline=False, previews=False)
        offset = start if marker is None else await wait_for_marker(log, marker, start)
        sent = time.monotonic()
        await engine.cancel(job)
        events = await until_done(engine, job)
        LATENCIES[name] = time.monotonic() - sent
        record_property(f"cancel_latency_{name}_s", round(LATENCIES[name], 3))
        return events, job, offset

    events, job, offset = run(scenario())
    after = log.read_bytes()[offset:].decode(errors="replace")
    return events, job, after


def serves_next_run(engine: EngineClient, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
    job = run(submit_run(engine, IDENTITY, ["after the cancel"], baseline=False))
    done = jobs(run(until_done(engine, job)), job, "done")[0]
    assert done.status == "ok" and done.blocks_restored is True


def test_cancel_right_after_submit_stops_before_the_first_step(engine: EngineClient, run: Any,
                                                               record_property: Any) -> None:
    events, job, _after = cancel_at(engine, run, None, {"width": 1024, "height": 1024, "steps": 1}, IDENTITY,
                                    "right_after_submit", record_property)
    done = jobs(events, job, "done")[0]
    assert done.status == "cancelled" and done.blocks_restored is True
    assert jobs(events, job, "progress") == [] and jobs(events, job, "image") == []
    serves_next_run(engine, run)


def test_cancel_inside_a_huge_first_block(engine: EngineClient, run: Any, record_property: Any) -> None:
    """2048 px: 65536 image tokens, so one block's attention alone takes many seconds on CPU; the cancel
    lands between chunks of it."""
    events, job, after = cancel_at(engine, run, "MARK block start", {"width": 2048, "height": 2048, "steps": 1},
                                   IDENTITY, "inside_first_block", record_property)
    done = jobs(events, job, "done")[0]
    assert done.status == "cancelled" and done.blocks_restored is True
    assert "MARK block end" not in after  # the block the cancel found running never finished
    assert jobs(events, job, "progress") == [] and jobs(events, job, "image") == []
    serves_next_run(engine, run)


@pytest.mark.parametrize("marker", ["MARK decode start", "MARK up block 1"])
def test_cancel_during_the_decode(engine: EngineClient, run: Any, record_property: Any, marker: str) -> None:
    """768 px: the decode takes seconds on CPU (the mid block's attention over 36864 latent pixels, then
    convolutions up to full resolution). At its start the cancel lands in the attention; at the second up
    block, between convolutions."""
    name = "decode_start" if marker.endswith("start") else "decode_up_block_1"
    events, job, after = cancel_at(engine, run, marker, {"width": 768, "height": 768, "steps": 1}, NO_BLOCKS,
                                   name, record_property)
    done = jobs(events, job, "done")[0]
    assert done.status == "cancelled" and done.blocks_restored is True
    assert len(jobs(events, job, "progress")) == 1  # the one step ran; the decode had begun
    assert jobs(events, job, "image") == []
    assert "MARK decode end" not in after  # the cancel landed before the decode would have finished
    serves_next_run(engine, run)


def test_chunked_attention_is_bit_identical_and_checks_between_chunks() -> None:
    import torch

    from dit_explore.engine.generate import attention_in_chunks

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 8192, 32) for _ in range(3))
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    checks: list[int] = []
    with attention_in_chunks(lambda: checks.append(1)):
        chunked = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        chunks = len(checks)
        masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(8192, 8192, dtype=torch.bool))
    assert torch.equal(full, chunked) and chunks > 1
    assert torch.equal(full, masked) and len(checks) == chunks  # with a mask: one call as it is, no checks
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_a_cancel_leaves_no_hooks_behind(tiny_generator: Any) -> None:
    """Cancelled mid-decode in-process: the forward pre-hooks and the attention replacement are gone."""
    import torch

    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.engine.executor import Cancelled

    gen = tiny_generator("tiny-flux")
    settings = resolve_settings(gen.loaded.source.defaults, plans.Sampling(width=128, height=128, steps=1))
    calls = [0]

    def check() -> None:
        calls[0] += 1
        if calls[0] == 200:  # well into the VAE (the whole run makes a few hundred checks at this size)
            raise Cancelled()

    with pytest.raises(Cancelled):
        gen.generate("hooks", settings, plans.Plan(), check=check)
    pipe = gen.pipe
    for component in (pipe.vae, pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        assert all(not m._forward_pre_hooks for m in component.modules())
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    assert gen.generate("hooks", settings, plans.Plan()).image is not None


def _marked_engine() -> int:
    """The engine with log markers: the decode's start and end, each up block of the decoder, and the
    start and end of each Flux double block."""
    import diffusers
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
    from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D

    from dit_explore.engine.server import main

    def mark(text: str) -> None:
        os.write(2, f"\nMARK {text}\n".encode())

    decode = diffusers.AutoencoderKL.decode
    up_forward = UpDecoderBlock2D.forward
    block_forward = FluxTransformerBlock.forward
    up_blocks = [0]

    def marked_decode(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("decode start")
        up_blocks[0] = 0
        out = decode(self, *args, **kwargs)
        mark("decode end")
        return out

    def marked_up(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark(f"up block {up_blocks[0]}")
        up_blocks[0] += 1
        return up_forward(self, *args, **kwargs)

    def marked_block(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("block start")
        out = block_forward(self, *args, **kwargs)
        mark("block end")
        return out

    diffusers.AutoencoderKL.decode = marked_decode  # type: ignore[method-assign]
    UpDecoderBlock2D.forward = marked_up  # type: ignore[method-assign]
    FluxTransformerBlock.forward = marked_block  # type: ignore[method-assign]
    return main()


if __name__ == "__main__":
    sys.exit(_marked_engine())
