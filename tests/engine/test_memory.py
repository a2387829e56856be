"""The memory estimator (engine/core/memory.py): its parameter counts against the real classes, its
breakdown against hand computation, its predictions against measured peaks, and the refusals it drives
(the engine process, and `dit-explore run` before anything loads)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core import memory
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.families import family
from dit_explore.engine.core.memory import (
    check_fits,
    check_request,
    estimate,
    text_encoder_parameters,
    tiny_text_encoder,
    vae_parameters,
)
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.models import encoder_config

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("alias", sorted(MODELS))
def test_transformer_and_vae_parameter_counts_are_exact(alias: str) -> None:
    """Every catalog model on the meta device (the tiny VAEs' full configs only exist once built: below)."""
    import diffusers
    import torch

    spec = MODELS[alias]
    of = family(spec.family)
    with torch.device("meta"):
        transformer = getattr(diffusers, of.transformer_class).from_config(dict(spec.transformer))
        vae = None if spec.tiny else diffusers.AutoencoderKL.from_config(dict(spec.vae))
    assert of.transformer_parameters(spec.transformer) == sum(p.numel() for p in transformer.parameters())
    in_blocks = sum(p.numel() for stack in of.stacks for p in getattr(transformer, stack.attr).parameters())
    assert of.transformer_parameter_split(spec.transformer) == (
        sum(p.numel() for p in transformer.parameters()) - in_blocks, in_blocks)
    counts = of.block_parameters(spec.transformer)
    assert counts is not None
    assert counts[1] == {stack.name: [sum(p.numel() for p in block.parameters())
                                      for block in getattr(transformer, stack.attr)] for stack in of.stacks}
    if vae is not None:
        assert vae_parameters(spec.vae) == sum(p.numel() for p in vae.parameters())


def test_sd35_medium_dual_attention_is_counted() -> None:
    import diffusers
    import torch

    config = {**MODELS["sd3-medium"].transformer, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm",
              "pos_embed_max_size": 384}
    with torch.device("meta"):
        model = diffusers.SD3Transformer2DModel.from_config(config)
    assert family("sd3").transformer_parameters(config) == sum(p.numel() for p in model.parameters())
    counts = family("sd3").block_parameters(config)
    assert counts is not None and counts[1]["double"] == [sum(p.numel() for p in b.parameters())
                                                          for b in model.transformer_blocks]


def test_declared_text_encoders_count_as_their_classes() -> None:
    import torch
    import transformers

    shapes = {s for f in ("flux", "sd3", "auraflow") for s in family(f).memory.text_encoders}  # type: ignore[union-attr]
    counted = {}
    for shape in shapes:
        with torch.device("meta"):
            model = getattr(transformers, shape.model_class)(encoder_config(shape))
        counted[shape] = sum(p.numel() for p in model.parameters())
        assert text_encoder_parameters(shape) == counted[shape], shape
    # The published sizes: CLIP-L 123M (124M with its projection), CLIP-G 695M, the T5-XXL encoder 4.76B,
    # AuraFlow's UMT5 (Pile-T5-XL) 1.22B.
    assert sorted(round(n / 1e6) for n in counted.values()) == [123, 124, 695, 1224, 4762]


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-auraflow"])
def test_tiny_models_weights_match_the_loaded_pipeline(name: str, load_tiny: Callable[[str], Any]) -> None:
    from dit_explore.engine.models import parameter_bytes

    loaded = load_tiny(name)
    pipe = loaded.pipe
    for spec in loaded.family.tiny.text_encoders:
        actual = sum(p.numel() for p in getattr(pipe, spec.slot).parameters())
        assert text_encoder_parameters(tiny_text_encoder(spec)) == actual
    assert vae_parameters(pipe.vae.config) == sum(p.numel() for p in pipe.vae.parameters())
    # Before loading, the catalog's tiny VAE config leaves the quant convs at diffusers' default (present):
    # the estimate may count 92 parameters the tiny VAE does not have, never fewer.
    predicted = estimate(loaded.source, 64, 64).weights
    assert 0 <= predicted - parameter_bytes(pipe) <= 92 * 4


# ------------------------------------------------------------------------------------------ breakdown


def test_breakdown_of_tiny_flux_at_256_by_hand() -> None:
    source = resolve("tiny-flux")
    got = estimate(source, 256, 256)
    # Weights: transformer (D = 2 heads x 16 = 32; 4 double, 8 single blocks), float32.
    d = 32
    double = 2 * (d * 6 * d + 6 * d) + 8 * (d * d + d) + 2 * (d * 4 * d + 4 * d + 4 * d * d + d) + 4 * 16
    single = (d * 3 * d + 3 * d) + 3 * (d * d + d) + (d * 4 * d + 4 * d) + (5 * d * d + d) + 2 * 16
    embed = (256 * d + d + d * d + d) + (32 * d + d + d * d + d) + (32 * d + d) + (16 * d + d)
    out = (d * 2 * d + 2 * d) + (d * 16 + 16)
    assert got.parts["transformer weights"] == 4 * (embed + 4 * double + 8 * single + out) == 4 * 293136
    # Denoising: 256 / 8 = 32 x 32 image tokens, 32 text tokens; one block at Flux's declared 14.5 units per
    # token, plus its input, in (tokens x 32) float32 tensors.
    tokens = 32 * 32 + 32
    assert got.parts["block activations"] == int((14.5 * tokens + tokens) * d * 4)
    # VAE decode (latent 64 x 64 with 4 channels; blocks 16, 32, 32): the peak is the second up block's
    # upsampler, where the latents (as handed over, scaled, and through the post-quant conv, which the
    # catalog's tiny config leaves at diffusers' default), that block's input (32 x 128^2) and its last
    # output (the same size), the interpolation (32 x 256^2) and the convolution's output and its copy
    # (2 x 32 x 256^2) are alive.
    z = 4 * 64 * 64
    assert got.parts["VAE decode"] == 4 * (3 * z + 2 * 32 * 128 * 128 + 3 * 32 * 256 * 256)
    assert got.phase == "VAE decode"
    assert got.working == got.phases["VAE decode"] + got.runtime + got.allocator
    assert got.total == got.working + got.weights


def test_cfg_doubles_the_transformer_activations_and_not_the_decode() -> None:
    source = resolve("tiny-sd3")
    with_cfg, without = estimate(source, 256, 256, guidance=7.0), estimate(source, 256, 256, guidance=1.0)
    assert with_cfg.parts["block activations"] == 2 * without.parts["block activations"]
    assert with_cfg.parts["VAE decode"] == without.parts["VAE decode"]


def test_bfloat16_on_cuda_halves_the_weights() -> None:
    source = resolve("flux-schnell")
    cpu, cuda = estimate(source, 1024, 1024), estimate(source, 1024, 1024, device_kind="cuda")
    assert (cpu.dtype, cuda.dtype) == ("float32", "bfloat16")
    assert cpu.weights == 2 * cuda.weights
    assert 23.5e9 < cuda.weights < 34e9  # 11.9B transformer + 4.9B text encoders + 84M VAE, 2 bytes each
    assert estimate(source, 1024, 1024, random_weights=True).parts["text encoder weights"] == 0


def test_a_request_that_cannot_fit_is_one_line_naming_the_limit() -> None:
    source = resolve("flux-schnell")
    huge = estimate(source, 100000, 100000, device_kind="cuda")
    message = check_fits(huge, 80 * 10**9, loaded=True, multiple=source.size_multiple, where="cuda:0")
    assert message is not None and "\n" not in message
    assert message.startswith("100000x100000 needs about ") and "(VAE decode " in message
    assert "but cuda:0 has 80 GB available; at most about " in message
    side = int(message.rsplit(" ", 1)[1].split("x")[0])
    assert side % 16 == 0 and estimate(source, side, side, device_kind="cuda").working <= 80 * 10**9
    assert estimate(source, side + 16, side + 16, device_kind="cuda").working > 80 * 10**9
    assert check_fits(estimate(source, 1024, 1024, device_kind="cuda"), 80 * 10**9, loaded=True) is None
    weights_alone = check_request(source, 512, 512, 20 * 10**9)
    assert weights_alone is not None and "for its weights alone" in weights_alone
    assert check_request(source, 512, 512, None) is None  # nothing known about the memory: no refusal


def test_available_memory_reads_this_machine() -> None:
    available = memory.available_memory()
    assert available is not None and 0 < available < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------ measured

# (model, size) measured in fresh processes, the engine's situation at its first request. Exactly (glibc
# mapping every block of 64 KiB or more, so the resident set follows the live tensors run after run) for
# the estimator's tensor terms, and as the engine runs for the whole estimate. BENCHMARKS.md has the full
# table (python -m dit_explore.engine.memory_bench).
MEASURED = [("tiny-flux", 384, True), ("tiny-flux", 384, False), ("tiny-sd3", 256, True), ("tiny-sd3", 256, False),
            ("tiny-auraflow", 128, True)]


def _measure(model: str, size: int, exact: bool) -> dict[str, Any]:
    from dit_explore.engine.memory_bench import run_child

    return run_child({"kind": "generation", "model": model, "width": size, "height": size, "device": "cpu",
                      "dtype": None, "random_weights": False}, timeout=300, exact=exact)


def test_the_estimate_never_underestimates_a_measured_peak(load_tiny: Callable[[str], Any]) -> None:
    for name in {m for m, _, _ in MEASURED}:
        load_tiny(name)  # built once, before the measuring processes share the cache
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda task: _measure(*task), MEASURED))
    for (model, size, exact), result in zip(MEASURED, results):
        predicted = estimate(resolve(model), size, size)
        if exact:  # the tensors and the runtime, without the allocator's allowance: within +20%
            ratio = (predicted.working - predicted.allocator) / result["peak"]
            assert 1.0 <= ratio <= 1.2, (model, size, ratio, result)
        else:  # the resident set as the engine runs: never above the estimate
            ratio = predicted.working / result["peak"]
            assert ratio >= 1.0, (model, size, ratio, result)
        print(f"{model} {size} {'exact' if exact else 'as run'}: estimate / measured {ratio:.2f}")


# ------------------------------------------------------------------------------------------ refusals


def test_the_engine_refuses_what_cannot_fit_and_serves_on(tmp_path: Path) -> None:
    from dit_explore.tui.client import EngineClient
    from tests.engine.requests import next_event, wait_ready
    from tests.engine.requests import run as submit_run

    async def until_done(client: EngineClient, job: int) -> list[Any]:
        events = []
        while True:
            event = await next_event(client, 120)
            events.append(event)
            if event.TYPE == "done" and event.job == job:
                return events

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        client = EngineClient("tiny-flux", log_path=tmp_path / "engine.log")
        await client.start()
        try:
            # Sent while the model loads: checked when the job starts.
            early = await until_done(client, await submit_run(client, "version = 1\n", ["huge"],
                                                              {"width": 16384, "height": 16384}, baseline=False))
            await wait_ready(client)
            # Sent to a ready, idle engine: refused as the request is read.
            ready = await until_done(client, await submit_run(client, "version = 1\n", ["huge"],
                                                              {"width": 16384, "height": 16384}, baseline=False))
            after = await until_done(client, await submit_run(client, "version = 1\n", ["fits"], baseline=False))
        finally:
            await client.shutdown()
        return early, ready, after

    early, ready, after = asyncio.run(scenario())
    for events in (early, ready):
        errors = [e for e in events if e.TYPE == "error"]
        done = next(e for e in events if e.TYPE == "done")
        assert len(errors) == 1 and "\n" not in errors[0].message
        assert errors[0].message.startswith("run: 16384x16384 needs about ")
        assert "(VAE decode " in errors[0].message and "at most about " in errors[0].message
        assert done.status == "error" and [e for e in events if e.TYPE in ("progress", "image")] == []
    assert next(e for e in after if e.TYPE == "done").status == "ok"


def test_headless_run_refuses_before_loading_anything(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIT_EXPLORE_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", "from dit_explore.tui.cli import entry; entry()", "run", "tiny-flux",
                           "--width", "16384", "--height", "16384", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("dit-explore run: error: 16384x16384 needs about ")
    assert "this machine has" in lines[0] and "at most about " in lines[0]
    assert not out.exists() and not cache.exists()  # no model was built or loaded, nothing written


def test_memory_bench_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    from dit_explore.engine.memory_bench import table

    row = {"model": "tiny-flux", "size": "64x64", "estimate": 2.6e7, "estimate_phase": "VAE decode",
           "measured": 2.4e7, "measured_min": 2.3e7, "ratio": 26 / 24, "estimate_tensors": 2.4e7,
           "measured_tensors": 2.2e7, "ratio_tensors": 24 / 22, "estimate_decode": 1.9e6,
           "measured_decode": 1.2e7, "estimate_denoise": 2.4e5, "measured_denoise": 1.2e7, "estimate_weights": 2.4e6,
           "measured_weights": 2.4e6}
    text = table([row])
    assert text.splitlines()[0].startswith("model") and "tiny-flux" in text and "1.08" in text
    json.dumps({"rows": [row]})


@pytest.mark.parametrize("kind", ["int8", "fp8-weights"])
def test_quantized_transformer_weights_are_estimated_from_the_config(kind: str) -> None:
    """--quantize stores the blocks' parameters in one byte each: the estimate against the bytes a quantized
    toy-flux really holds (8-bit weights, their scales, the float32 rest). At toy size the uncounted
    scales and biases (4 bytes per output channel each, of 256-wide layers) are a few percent; at real
    size they are about 0.1% (Flux: counted on the meta device below)."""
    import torch
    import torch.nn as nn

    pytest.importorskip("torchao")
    from dit_explore.engine.models import load

    source = resolve("toy-flux")
    loaded = load(source, torch.device("cpu"), torch.float32, quantize=kind)

    def nbytes(t: torch.Tensor) -> int:
        if hasattr(t, "qdata"):
            return int(t.qdata.nbytes + t.scale.nbytes)
        return int(t.numel() * t.element_size())

    held = sum(nbytes(p) for p in loaded.transformer.parameters())
    est = estimate(source, 64, 64, dtype="float32", quantization=kind).parts["transformer weights"]
    plain = estimate(source, 64, 64, dtype="float32").parts["transformer weights"]
    assert est < plain / 2 and est <= held <= est * 1.08, (est, held, plain)

    import diffusers

    spec = MODELS["flux-schnell"]
    with torch.device("meta"):
        flux = diffusers.FluxTransformer2DModel.from_config(dict(spec.transformer))
    linears = [m for stack in family("flux").stacks for m in getattr(flux, stack.attr).modules()
               if isinstance(m, nn.Linear)]
    uncounted = sum(2 * m.out_features * 2 for m in linears)  # a bf16 scale and a bf16 bias per output channel
    assert uncounted < 0.002 * family("flux").transformer_parameter_split(spec.transformer)[1]  # type: ignore[index]


def test_the_check_before_loading_counts_quantized_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real-size Flux on the CPU (float32, random weights): its transformer alone (48 GB) is refused where
    30 GB is free, and the same request with --quantize int8 (blocks in one byte per parameter) passes.
    Nothing is loaded: the check reads the configs only."""
    from dit_explore.engine import headless, models
    from dit_explore.engine.core.sampling import resolve_settings

    monkeypatch.setattr(models, "free_memory", lambda _device: (30 * 10**9, "this machine"))
    source = resolve("flux-schnell")
    settings = resolve_settings(source.defaults)
    plain = headless.ModelOptions(device="cpu", dtype="float32", random_weights=True)
    with pytest.raises(headless.UsageError, match="for its weights alone but this machine has 30 GB available"):
        headless.check_memory(source, settings, plain)
    headless.check_memory(source, settings, headless.ModelOptions(device="cpu", dtype="float32", random_weights=True,
                                                                  quantize="int8"))


def test_models_memory_says_what_fits_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`dit-explore models --memory`: every alias at its default size, in the device's dtype and with 8-bit
    blocks, each need the estimate's (computed here again) and marked against the device's free memory."""
    from dit_explore.engine import models
    from dit_explore.engine.core.memory import format_bytes
    from dit_explore.engine.core.sampling import resolve_settings
    from dit_explore.tui.cli import main

    free = 40 * 10**9
    monkeypatch.setattr(models, "free_memory", lambda _device: (free, "this machine"))
    assert main(["models", "--memory", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Predicted peak on this machine (40 GB free now), nothing loaded:"
    rows = {line.split()[0]: line.split() for line in lines[3:-1]}
    assert set(rows) == set(MODELS)
    for alias in MODELS:
        source = resolve(alias)
        settings = resolve_settings(source.defaults)
        cells = []
        for kind in (None, "int8"):
            need = estimate(source, settings.width, settings.height, guidance=settings.guidance, dtype="float32",
                            device_kind="cpu", max_sequence_length=settings.max_sequence_length,
                            quantization=kind).total
            cells += [*format_bytes(need).split(), "fits" if need <= free else "too", *([] if need <= free else ["big"])]
        assert rows[alias][1:] == [f"{settings.width}x{settings.height}", *cells], alias  # no placement: one memory
    assert rows["flux-schnell"][4:6] == ["too", "big"] and rows["flux-schnell"][-1] == "fits"  # 72 GB; 36 GB
