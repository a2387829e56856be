"""Model resolution and loading: aliases, local folders, tiny builds, real-size random-weight architectures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.families import family
from dit_explore.engine.core.layout import Stack
from dit_explore.engine.core.plan import Plan
from dit_explore.engine.core.resolve import ModelError, resolve
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import Loaded, load, pick_device, pick_dtype, tiny_path
from dit_explore.engine.tiny import build_tiny_pipeline

# Published parameter counts of the real transformers (billions), and their block stacks.
REAL_SIZES = {
    "flux-schnell": (11.9, {"transformer_blocks": 19, "single_transformer_blocks": 38}),
    "flux-dev": (11.9, {"transformer_blocks": 19, "single_transformer_blocks": 38}),
    "sd3-medium": (2.0, {"transformer_blocks": 24}),
    "sd3.5-large": (8.1, {"transformer_blocks": 38}),
    "auraflow": (6.8, {"joint_transformer_blocks": 4, "single_transformer_blocks": 32}),
    "auraflow-v0.2": (6.8, {"joint_transformer_blocks": 4, "single_transformer_blocks": 32}),
}


@pytest.mark.parametrize("alias", sorted(REAL_SIZES))
def test_shipped_configs_build_the_real_size_architecture(alias: str) -> None:
    """On the meta device: no memory, but the real classes, parameter counts and block lists."""
    import diffusers

    spec = MODELS[alias]
    billions, stacks = REAL_SIZES[alias]
    with torch.device("meta"):
        transformer = getattr(diffusers, family(spec.family).transformer_class).from_config(dict(spec.transformer))
    assert sum(p.numel() for p in transformer.parameters()) / 1e9 == pytest.approx(billions, abs=0.1)
    assert {attr: len(getattr(transformer, attr)) for attr in stacks} == stacks
    assert {s.attr: s.blocks for s in spec.layout.stacks} == stacks


def test_sd3_layout_marks_the_context_pre_only_block() -> None:
    import diffusers

    with torch.device("meta"):
        transformer = diffusers.SD3Transformer2DModel.from_config(dict(MODELS["sd3-medium"].transformer))
    pre_only = [i for i, b in enumerate(transformer.transformer_blocks) if b.context_pre_only]
    assert pre_only == [23]
    assert MODELS["sd3-medium"].layout.stacks == (Stack("double", "transformer_blocks", 24, pre_only_last=True),)


def test_aliases_resolve_without_downloading() -> None:
    source = resolve("flux-schnell")
    assert (source.kind, source.family, source.location) == ("alias", "flux", "black-forest-labs/FLUX.1-schnell")
    assert source.defaults.steps == 4 and source.defaults.guidance == 0.0
    assert source.defaults.max_sequence_length == 256
    assert source.size_multiple == 16  # 8x VAE, 2x2 packing
    assert resolve("black-forest-labs/FLUX.1-schnell").family == "flux"  # a known repo id maps to its alias
    assert resolve("sd3-medium").max_side == 192 * 16
    assert resolve("auraflow").max_side == 96 * 16  # a 96x96 grid of positions


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-auraflow"])
def test_tiny_models_reload_from_disk_as_local_folders(name: str) -> None:
    folder = tiny_path(resolve(name))
    source = resolve(str(folder))
    assert source.kind == "local"
    assert source.layout == resolve(name).layout  # the catalog's tiny layout is what the builder builds
    assert source.size_multiple == resolve(name).size_multiple


def test_tiny_builds_are_deterministic(tmp_path: Path) -> None:
    build_tiny_pipeline(family("sd3"), tmp_path / "a")
    build_tiny_pipeline(family("sd3"), tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and any(f.suffix == ".safetensors" for f in files_a)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no model_index.json"),
        (lambda d: (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}'),
         "unsupported pipeline 'StableDiffusionPipeline'"),
        (lambda d: (d / "model_index.json").write_text('{"_class_name": "FluxPipeline"}'), "no config.json"),
        (lambda d: (d / "model_index.json").write_text("[1, 2"), "cannot read the pipeline index"),
    ],
)
def test_bad_local_folders_give_one_clear_line(tmp_path: Path, setup: Callable[[Path], object], message: str) -> None:
    setup(tmp_path)
    with pytest.raises(ModelError) as info:
        resolve(str(tmp_path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_model_names_the_accepted_forms() -> None:
    with pytest.raises(ModelError, match=r"not an alias .* local diffusers folder .* repo id"):
        resolve("flux_schnell")


def test_missing_weights_of_an_alias_explain_download_and_random_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ModelError) as info:
        load(resolve("sd3-medium"), torch.device("cpu"), torch.float32)
    text = str(info.value)
    assert "hf download stabilityai/stable-diffusion-3-medium-diffusers" in text and "--random-weights" in text


def test_random_weights_build_the_architecture_and_generate_with_pseudo_embeddings(tmp_path: Path) -> None:
    """The --random-weights path on a small config: transformer + VAE from configs, no text encoders."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_path(resolve("tiny-flux")), folder)
    source = resolve(str(folder))
    loaded = load(source, torch.device("cpu"), torch.float32, random_weights=True)
    assert loaded.random_weights
    assert loaded.pipe.text_encoder is None and loaded.pipe.text_encoder_2 is None
    assert len(loaded.transformer.single_transformer_blocks) == 8
    gen = Generator(loaded)
    settings = Settings(seed=0, steps=2, width=64, height=64, guidance=0.0, max_sequence_length=16)
    embeds, _, _ = gen.embeddings("a", settings)
    assert embeds["prompt_embeds"].shape == (1, 16, 32)  # (batch, max_sequence_length, joint_attention_dim)
    assert embeds["pooled_prompt_embeds"].shape == (1, 32)
    same = Generator(loaded).embeddings("a", settings)[0]["prompt_embeds"]
    other = Generator(loaded).embeddings("b", settings)[0]["prompt_embeds"]
    assert torch.equal(embeds["prompt_embeds"], same) and not torch.equal(same, other)
    image = gen.generate("a", settings, Plan()).image
    assert image.size == (64, 64) and np.asarray(image).std() > 0


def test_random_weights_are_drawn_alike_on_the_device_and_on_the_host(tmp_path: Path) -> None:
    """build_random draws every parameter from one seeded generator (N(0, 1/fan_in) matrices, ones and zeros
    for norms' weights and biases), wherever it puts them; nothing is left on the meta device."""
    from dit_explore.engine.models import build_random

    folder = tmp_path / "model"
    shutil.copytree(tiny_path(resolve("tiny-flux")), folder)
    source = resolve(str(folder))
    cpu = torch.device("cpu")
    direct = build_random(source, cpu, torch.float32).transformer  # type: ignore[attr-defined]
    hosted = build_random(source, cpu, torch.float32, on_host=True).transformer  # type: ignore[attr-defined]
    for (name, a), (_, b) in zip(direct.named_parameters(), hosted.named_parameters(), strict=True):
        assert a.device.type == "cpu" and torch.equal(a, b), name
        if a.dim() >= 2 and a.numel() >= 4096:
            fan_in = a[0].numel()
            assert 0.9 < float(a.detach().std()) * fan_in ** 0.5 < 1.1, name
        elif a.dim() == 1:
            assert torch.equal(a, torch.ones_like(a) if name.endswith("weight") else torch.zeros_like(a)), name
    assert all(not b.is_meta for b in direct.buffers())


def test_prompt_embeddings_are_cached(load_tiny: Callable[[str], Loaded]) -> None:
    gen = Generator(load_tiny("tiny-sd3"))
    settings = Settings(seed=0, steps=1, width=64, height=64, guidance=7.0, max_sequence_length=32)
    first, seconds, cached = gen.embeddings("cached prompt", settings)
    again, seconds_again, cached_again = gen.embeddings("cached prompt", settings)
    assert (cached, cached_again) == (False, True) and seconds > 0 and seconds_again == 0.0
    assert again is first
    assert set(first) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                          "negative_pooled_prompt_embeds"}  # guidance 7 > 1: classifier-free guidance


def test_device_and_dtype_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ModelError, match="not a device"):
        pick_device("tpu")


def test_model_index_family_detection(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_path(resolve("tiny-auraflow")), folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "AuraFlowPipeline"
    assert resolve(str(folder)).family == "auraflow"


def test_a_compile_failure_falls_back_to_eager_with_a_warning(load_tiny: Callable[[str], Loaded]) -> None:
    """If torch.compile cannot trace a block on the first call, the run goes on eagerly and says so."""
    import torch._dynamo.exc

    from dit_explore.engine.models import load

    loaded = load(resolve("tiny-flux"), torch.device("cpu"), torch.float32)
    settings = Settings(seed=0, steps=2, width=64, height=64, guidance=0.0, max_sequence_length=32)
    reference = Generator(load_tiny("tiny-flux")).generate("a", settings, Plan()).image

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise torch._dynamo.exc.Unsupported("Observed exception (simulated)")

    block = loaded.transformer.single_transformer_blocks[3]
    block._compiled_call_impl = refuse  # what Module.compile() installs, failing like Dynamo does
    loaded.compiled = True
    warnings: list[str] = []
    result = Generator(loaded, on_warning=warnings.append).generate("a", settings, Plan())
    assert len(warnings) == 1 and "compiling the blocks failed (Unsupported: Observed exception" in warnings[0]
    assert loaded.compiled is False and loaded.compile_error is not None
    assert block._compiled_call_impl is None
    assert np.array_equal(np.asarray(result.image), np.asarray(reference))


def test_a_model_error_is_not_mistaken_for_a_compile_failure(load_tiny: Callable[[str], Loaded]) -> None:
    from dit_explore.engine.models import load

    loaded = load(resolve("tiny-flux"), torch.device("cpu"), torch.float32)
    loaded.compiled = True

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a real bug")

    loaded.transformer.single_transformer_blocks[0]._compiled_call_impl = broken
    with pytest.raises(RuntimeError, match="a real bug"):
        settings = Settings(seed=0, steps=1, width=64, height=64, guidance=0.0, max_sequence_length=32)
        Generator(loaded).generate("a", settings, Plan())


def test_loading_settles_its_objects_out_of_the_collectors_way() -> None:
    """After a load, every object alive is in the collector's permanent generation: a later collection walks
    only what was made since, not the pipeline's hundreds of thousands of objects (models.settle_objects)."""
    import gc

    load(resolve("tiny-flux"), torch.device("cpu"), torch.float32)
    frozen = gc.get_freeze_count()
    walked = len(gc.get_objects())  # the objects a full collection would walk now
    assert frozen > 50_000 and walked < frozen / 20, (frozen, walked)


def test_the_engines_modules_import_the_libraries_quietly() -> None:
    """`python -m dit_explore.engine.…` entry points print nothing while diffusers, transformers and torchao
    are imported (their chatter about optional kernels and torchvision; engine/__init__.py). The control:
    the same imports with the libraries' own verbosity set back to warning do print it, so the quiet run
    is not quiet by accident; and a user's setting wins."""
    import os
    import subprocess
    import sys

    code = ("import os, dit_explore.engine.toy; from diffusers import FluxPipeline, StableDiffusion3Pipeline, "
            "AuraFlowPipeline; print(os.environ['DIFFUSERS_VERBOSITY'])")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "error", quiet.stderr[-2000:]
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "DIFFUSERS_VERBOSITY": "warning", "TRANSFORMERS_VERBOSITY": "warning"})
    assert loud.returncode == 0 and loud.stdout.strip() == "warning" and loud.stderr.strip(), loud.stderr[-2000:]
