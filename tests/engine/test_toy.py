"""The trained toy models' machinery on CPU: vocabularies, the space-to-depth autoencoder, the training
objective against the pipelines' own transformer calls, a short training run saved and loaded back through
the project's loader, the loader's refusal of foreign classes, and the size budget of the three toys."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dit_explore.engine import toy
from dit_explore.engine.core import catalog, shapes
from dit_explore.engine.core.families import Family, family
from dit_explore.engine.core.memory import estimate, text_encoder_parameters, toy_text_encoder
from dit_explore.engine.core.plan import Plan
from dit_explore.engine.core.resolve import ModelError, resolve
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.core.toy_vocab import GRAMMAR_WORDS, vocab_size
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import load
from dit_explore.engine.preview import preview_image
from dit_explore.engine.toy_autoencoder import SpaceToDepthAutoencoder

FAMILIES = ("flux", "sd3", "auraflow")
CPU = torch.device("cpu")
BUDGET = 40_000_000  # bytes: all toy files together (the 40 MB)

# Narrow stand-ins of each family's ToySpec transformer (same text encoders, same 12 latent channels).
TINY_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "flux": {"patch_size": 1, "in_channels": 48, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16,
             "num_attention_heads": 2, "joint_attention_dim": 64, "pooled_projection_dim": 64,
             "guidance_embeds": False, "axes_dims_rope": (4, 6, 6)},
    "sd3": {"sample_size": 32, "patch_size": 2, "in_channels": 12, "out_channels": 12, "num_layers": 2,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 64, "caption_projection_dim": 32,
            "pooled_projection_dim": 64, "pos_embed_max_size": 32},
    "auraflow": {"sample_size": 32, "patch_size": 2, "in_channels": 12, "out_channels": 12, "num_mmdit_layers": 1,
                 "num_single_dit_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                 "joint_attention_dim": 64, "caption_projection_dim": 32, "pos_embed_max_size": 256},
}


def tiny_spec(of: Family) -> Any:
    assert of.toy is not None
    return replace(of.toy, transformer=TINY_TRANSFORMERS[of.name])


# ------------------------------------------------------------------------------------------ tokenizers


def test_tokenizers_make_every_grammar_word_one_token_and_survive_reload(tmp_path: Path) -> None:
    clip, t5 = toy.clip_tokenizer(), toy.t5_tokenizer()
    assert set(GRAMMAR_WORDS) == shapes.WORDS and len(GRAMMAR_WORDS) == 19
    for tokenizer in (clip, t5):
        for word in GRAMMAR_WORDS:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (type(tokenizer).__name__, word, ids)
        # Eight words, eight tokens (plus the specials around them).
        assert len(tokenizer(shapes.CAPTIONS[0], add_special_tokens=False).input_ids) == 8
    assert (len(clip), len(t5)) == (vocab_size("clip"), vocab_size("t5"))
    # Words outside the grammar still encode, spelled out, without unknowns.
    for tokenizer in (clip, t5):  # (CLIP's unknown token is its end token: look between the specials)
        assert tokenizer.unk_token_id not in tokenizer("a lighthouse at dusk", add_special_tokens=False).input_ids
    assert len(clip("lighthouse", add_special_tokens=False).input_ids) > 1
    texts = [*shapes.CAPTIONS, "a lighthouse at dusk", "A  Small RED circle"]
    for name, tokenizer in (("clip", clip), ("t5", t5)):
        tokenizer.save_pretrained(tmp_path / name)
        again = type(tokenizer).from_pretrained(tmp_path / name)
        assert [again(t).input_ids for t in texts] == [tokenizer(t).input_ids for t in texts], name
        assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str(), name
        assert again.model_max_length == tokenizer.model_max_length
    assert clip.model_max_length == toy.CLIP_TOKENS
    # The pipelines' padding: CLIP to its 16 positions, start token first, end token after the words.
    ids = clip(shapes.CAPTIONS[0], padding="max_length", max_length=clip.model_max_length).input_ids
    assert len(ids) == 16 and ids[0] == clip.bos_token_id and ids[9] == clip.eos_token_id


# ------------------------------------------------------------------------------------------ autoencoder


def test_space_to_depth_autoencoder_is_exact_and_loads_from_its_folder(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), generator=gen)
    x = pixels.float() / 127.5 - 1
    ae = SpaceToDepthAutoencoder()
    z = ae.encode(x).latents
    assert z.shape == (2, 12, 32, 32)
    # Channel c*4 + 2i + j at (y, x) is colour c of pixel (2y + i, 2x + j), counted by hand.
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, c * 4 + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(ae.decode(z).sample, x)
    assert torch.equal(ae.decode(z, return_dict=False)[0], x)
    ae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["block_out_channels"] == [3, 12] and config["scaling_factor"] == 1.0 and config["shift_factor"] == 0.0
    again = SpaceToDepthAutoencoder.from_pretrained(tmp_path / "vae", dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16 and again.config.latent_channels == 12
    assert torch.equal(again.to(torch.float32).decode(z).sample, x)


def test_previews_of_space_to_depth_latents_are_the_downscaled_image() -> None:
    rng = np.random.default_rng(0)
    image = shapes.render_batch([shapes.ATTRIBUTES[5]], rng)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    latents = SpaceToDepthAutoencoder().encode(x).latents
    expected = image.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))  # 2x2 means, by hand
    for name in FAMILIES:
        preview = np.asarray(preview_image(family(name), latents)).astype(np.float64)
        assert preview.shape == (32, 32, 3)
        assert np.abs(preview - expected).max() <= 1.0, name


# ------------------------------------------------------------------------------------- the objective


def _pipeline_call(pipe: Any, of: Family, embeds: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
    """The keyword arguments the pipeline itself passes its transformer at the first of 3 steps, and
    the latents it started from (spatial)."""
    seen: list[dict[str, Any]] = []

    def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not seen:
            seen.append({**({"hidden_states": args[0]} if args else {}), **kwargs})

    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(**embeds, num_inference_steps=3, guidance_scale=0.0, width=64, height=64,
             generator=torch.Generator().manual_seed(1), output_type="latent")
    finally:
        handle.remove()
    kwargs = seen[0]
    return kwargs, of.spatial_latents(pipe, kwargs["hidden_states"], 64, 64)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_calls_the_transformer_as_the_pipeline_does(name: str) -> None:
    of = family(name)
    pipe = toy.build_pipeline(of, tiny_spec(of))
    embeds = toy.encode_captions(pipe, of, shapes.CAPTIONS[:1], 16, CPU)
    with torch.no_grad():
        theirs, latents = _pipeline_call(pipe, of, embeds)
        sigma = pipe.scheduler.sigmas[:1].float()  # the first step's noise level
        assert float(sigma) == pytest.approx(1.0)
        ours = of.transformer_kwargs(pipe, latents, sigma, embeds)
        expected = pipe.transformer(**{k: v for k, v in theirs.items() if k != "return_dict"}, return_dict=False)[0]
        got = pipe.transformer(**ours, return_dict=False)[0]
    assert torch.allclose(got, expected, atol=1e-5), name


# The timestep each pipeline passes its transformer, in units of sigma (read off the pipelines' loops).
TIMESTEP_PER_SIGMA = {"flux": 1.0, "sd3": 1000.0, "auraflow": 1.0}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_pipeline_turns_the_trained_target_into_the_image(name: str) -> None:
    """A transformer that predicts the training target exactly for one image (the velocity noise - x0 of
    x_t = (1 - sigma) x0 + sigma noise) makes the pipeline's own sampler return that image: the objective
    and the sampler agree on direction, scale and noise level."""
    of = family(name)
    pipe = toy.build_pipeline(of, tiny_spec(of))
    caption = shapes.CAPTIONS[100]
    image = torch.from_numpy(shapes.render_batch([shapes.parse_caption(caption)], np.random.default_rng(0)))
    x0 = toy.to_latents(pipe, image)

    def oracle(*args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        xt = of.spatial_latents(pipe, args[0] if args else kwargs["hidden_states"], 64, 64)
        sigma = kwargs["timestep"].float().view(-1, 1, 1, 1) / TIMESTEP_PER_SIGMA[name]
        velocity = (xt - (1 - sigma) * x0) / sigma - x0
        if name == "flux":  # the pipeline's packed layout
            velocity = pipe._pack_latents(velocity, *velocity.shape)
        return (velocity,)

    pipe.transformer.forward = oracle
    embeds = toy.encode_captions(pipe, of, [caption], 16, CPU)
    out = pipe(**embeds, num_inference_steps=4, guidance_scale=0.0, width=64, height=64, output_type="np").images
    assert np.array_equal((out[0] * 255).round().astype(np.uint8), image[0].numpy())


@pytest.mark.parametrize("name", FAMILIES)
def test_thirty_steps_on_a_fixed_batch_halve_the_loss(name: str) -> None:
    of = family(name)
    pipe = toy.build_pipeline(of, tiny_spec(of), seed=0)
    captions = shapes.CAPTIONS[::81]  # 4 captions
    images = torch.from_numpy(shapes.render_batch([shapes.parse_caption(c) for c in captions], np.random.default_rng(0)))
    gen = torch.Generator().manual_seed(0)
    x0 = toy.to_latents(pipe, images)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(len(captions), generator=gen))
    with torch.no_grad():
        embeds = toy.encode_captions(pipe, of, captions, 16, CPU)
    # A high learning rate and no warm-up: 30 steps must show it (ratios 0.38-0.42 measured for the three).
    config = toy.TrainConfig(seconds=0, max_steps=30, lr=1e-2, warmup=0, log_every=1, eval_every=0)
    result, ema = toy.train(pipe, of, lambda: (x0, noise, sigma, embeds), config, CPU, log=lambda _line: None)
    assert result.steps == 30 and len(result.curve) == 30
    first, last = result.curve[0]["loss"], result.curve[-1]["loss"]
    # The first loss is the untrained model's; recompute it independently of the training loop.
    fresh = toy.build_pipeline(of, tiny_spec(of), seed=0)
    with torch.no_grad():
        s = sigma.view(-1, 1, 1, 1)
        out = fresh.transformer(**of.transformer_kwargs(fresh, (1 - s) * x0 + s * noise, sigma, embeds), return_dict=False)[0]
        untrained = float(((of.spatial_latents(fresh, out, 64, 64) - (noise - x0)) ** 2).mean())
    assert first == pytest.approx(untrained, rel=1e-4)
    assert last <= 0.5 * first, (first, last)
    # The EMA moved towards the trained weights.
    assert ema.updates == 30


# ------------------------------------------------------------------------------ a run, saved and loaded


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A narrow toy-flux trained for a few steps on 3 captions by the CLI's own run(), in toys/toy-flux/."""
    out = tmp_path_factory.mktemp("toys") / "toy-flux"
    config = toy.TrainConfig(seconds=120, max_steps=4, batch=4, jitters=2, eval_every=0, log_every=2)
    record = toy.run("toy-flux", out, config, CPU, captions=shapes.CAPTIONS[:3], eval_batch=3,
                     log=lambda _line: None, command=["test"], spec=tiny_spec(family("flux")))
    return out, record


def test_a_run_writes_the_folder_its_record_and_its_archive(trained: tuple[Path, dict[str, Any]]) -> None:
    out, record = trained
    assert json.loads((out / toy.TRAINING_RECORD).read_text()) == record
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["vae"] == ["dit_explore.engine.toy_autoencoder", "SpaceToDepthAutoencoder"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.py"))
    header = json.loads(_safetensors_header(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert record["steps"] == 4 and [p["step"] for p in record["loss_curve"]] == [2, 4]
    assert set(record["accuracy"]) == {"20_steps", "4_steps"}
    assert record["accuracy"]["20_steps"]["n"] == 3 and 0.0 <= record["accuracy"]["20_steps"]["accuracy"]["all"] <= 1.0
    assert record["seed"] == 0 and record["versions"]["diffusers"] and record["device"]["type"] == "cpu"
    assert record["folder_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file()
                                         and p.name != toy.TRAINING_RECORD)
    assert (out.parent / "toy-flux-samples.png").is_file()
    with tarfile.open(out.parent / "toy-flux.tar.gz") as tar:
        names = set(tar.getnames())
    assert "toy-flux/model_index.json" in names and "toy-flux/training.json" in names
    assert "toy-flux/transformer/diffusion_pytorch_model.safetensors" in names


def test_a_run_that_fails_after_saving_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder is built in a hidden staging folder and renamed into place with its training.json: a
    failure while scoring the saved pipeline (or ctrl+c) removes it, and no samples or archive appear."""
    saved: list[Path] = []
    real_save = toy.save_pipeline

    def save(pipe: Any, folder: Path, *args: Any) -> None:
        real_save(pipe, folder, *args)
        saved.append(folder)
        assert (folder / "model_index.json").is_file() and not (tmp_path / "toy-flux").exists()

    def scoring(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "save_pipeline", save)
    monkeypatch.setattr(toy, "evaluate", scoring)
    config = toy.TrainConfig(seconds=60, max_steps=1, batch=2, jitters=1, eval_every=0, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        toy.run("toy-flux", tmp_path / "toy-flux", config, CPU, captions=shapes.CAPTIONS[:2], eval_batch=2,
                log=lambda _line: None, spec=tiny_spec(family("flux")))
    assert len(saved) == 1 and saved[0].parent == tmp_path and saved[0].name.startswith(".toy-flux.partial-")
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder, no samples, no archive


def test_sigterm_stops_the_training_command_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal

    def run(*_args: Any, **_kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(toy, "run", run)
    assert toy.main(["train", "toy-flux", "--out", "unused", "--device", "cpu"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "[toy-flux] stopped by SIGTERM: nothing written\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back

    def late(_model: str, out: Path, *_args: Any, **_kwargs: Any) -> None:  # stopped once the folder is in place
        out.mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "run", late)
    assert toy.main(["train", "toy-flux", "--out", str(tmp_path / "toy"), "--device", "cpu"]) == 130
    assert capsys.readouterr().err == (f"[toy-flux] interrupted: {tmp_path / 'toy'} is complete, its samples or "
                                       "archive may be missing\n")


def _safetensors_header(path: Path) -> str:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return raw[8:8 + size].decode()


def test_a_saved_toy_loads_as_its_catalog_alias_and_generates(trained: tuple[Path, dict[str, Any]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = trained
    monkeypatch.setattr(catalog, "TOYS_DIR", out.parent)
    monkeypatch.setitem(catalog.MODELS, "toy-flux", replace(catalog.MODELS["toy-flux"], transformer=TINY_TRANSFORMERS["flux"]))
    source = resolve("toy-flux")
    assert (source.kind, Path(source.location)) == ("toy", out)
    loaded = load(source, CPU, torch.float32)
    pipe: Any = loaded.pipe
    assert type(pipe.vae) is SpaceToDepthAutoencoder and pipe.vae_scale_factor == 2
    import hashlib  # the revision is the trained weights' contents, the same wherever the package lies

    weights = (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert loaded.revision == "toy-" + hashlib.sha256(weights).hexdigest()[:16]
    settings = Settings(seed=0, steps=3, width=64, height=64, guidance=0.0, max_sequence_length=16)
    result = Generator(loaded).generate(shapes.CAPTIONS[0], settings, Plan())
    assert result.image is not None and result.image.size == (64, 64)
    # The generated image is the decode of the final latents: exact space-to-depth, by hand.
    latents = loaded.family.spatial_latents(loaded.pipe, result.latents, 64, 64)[0]
    pixels = torch.nn.functional.pixel_shuffle(latents[None], 2)[0].clamp(-1, 1)
    expected = ((pixels / 2 + 0.5) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(result.image).astype(np.float64) - expected).max() <= 1


def test_an_untrained_toy_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "TOYS_DIR", tmp_path)
    source = resolve("toy-sd3")  # resolves (layout, sizes) without the folder
    assert source.layout.stacks[0].blocks == 12
    with pytest.raises(ModelError) as caught:
        load(source, CPU, torch.float32)
    message = str(caught.value)
    assert message.startswith("toy-sd3 has not been trained/shipped yet") and "\n" not in message


def test_the_loader_refuses_any_other_component_class(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = trained
    for component, entry in (("vae", ["dit_explore.engine.tiny", "SpaceToDepthAutoencoder"]),
                             ("vae", ["os", "system"]),
                             ("scheduler", ["my_package.schedulers", "MyScheduler"])):
        folder = tmp_path / f"{component}-{entry[0]}"
        shutil.copytree(out, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index[component] = entry
        (folder / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ModelError) as caught:
            load(resolve(str(folder)), CPU, torch.float32)
        message = str(caught.value)
        assert f"names {entry[0]}.{entry[1]} for its {component}" in message and "never other code" in message
        assert "\n" not in message
    # Code shipped in the folder for a diffusers-named component is refused too.
    folder = tmp_path / "with-code"
    shutil.copytree(out, folder)
    (folder / "scheduler" / "diffusers.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(ModelError, match="never runs it"):
        load(resolve(str(folder)), CPU, torch.float32)


# ------------------------------------------------------------------------------------------- the budget


def test_the_three_toys_fit_40_mb_in_bf16_and_memory_counts_them() -> None:
    total = 0
    for name in FAMILIES:
        of = family(name)
        assert of.toy is not None
        pipe = toy.build_pipeline(of)
        modules = {k: m for k, m in vars(pipe).items() if isinstance(m, torch.nn.Module)}
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
        assert counts["vae"] == 0
        assert counts["transformer"] == of.transformer_parameters(of.toy.transformer)
        encoders = {spec.slot: text_encoder_parameters(toy_text_encoder(spec)) for spec in of.toy.text_encoders}
        assert encoders == {k: v for k, v in counts.items() if k.startswith("text_encoder")}
        # The memory estimate before loading counts exactly these weights (float32 on CPU).
        source = resolve(f"toy-{name}")
        assert estimate(source, 64, 64, device_kind="cpu").weights == 4 * sum(counts.values())
        total += 2 * sum(counts.values())
        # Deep enough for first, middle and last to mean something.
        assert sum(stack.blocks for stack in source.layout.stacks) >= {"flux": 16, "sd3": 12, "auraflow": 14}[name]
    assert total <= BUDGET, f"{total / 1e6:.1f} MB"


SHIPPED = sorted(p.parent.name for p in catalog.TOYS_DIR.glob("*/model_index.json"))


@pytest.mark.parametrize("alias", SHIPPED)
def test_shipped_toys_are_their_specs_and_met_their_targets(alias: str) -> None:
    folder = catalog.toy_folder(alias)
    spec = catalog.MODELS[alias]
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert {k: config[k] for k in spec.transformer} == {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in spec.transformer.items()}
    record = json.loads((folder / toy.TRAINING_RECORD).read_text())
    assert record["accuracy"]["20_steps"]["n"] == 324
    target = family(spec.family).toy
    assert target is not None and record["accuracy"]["20_steps"]["accuracy"]["all"] >= target.target


def test_shipped_toys_fit_the_budget_together() -> None:
    files = [p for p in catalog.TOYS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= BUDGET
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt", ".py")]


def test_train_refuses_what_is_not_a_toy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert toy.main(["train", "tiny-flux", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'tiny-flux' is not a toy model (choose one of: toy-flux, toy-sd3, toy-auraflow)")
    assert not (tmp_path / "x").exists()
