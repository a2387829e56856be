"""The one generation code path: prompt -> embeddings (cached) -> denoise under a plan -> decode.

`dit-explore run`, the engine process and the benchmarks all call `Generator.generate`. The pipeline is
called with precomputed embeddings and `output_type="latent"`, so text encoding, the denoising loop and
the VAE decode are timed separately and a prompt is never encoded twice; everything else is the
pipeline's own code, so the identity plan reproduces plain diffusers bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from engine.executor import Check, Wrap, applied
from engine.models import Loaded, is_compile_failure
from engine.plan import Plan, dumps, format_order, format_steps
from engine.runs import versions
from engine.sampling import Settings, block_runs
from engine.timing import Intervals, sync

EMBEDDING_CACHE_SIZE = 32


@dataclass
class Generation:
    """One image and what it cost."""

    prompt: str
    settings: Settings
    image: Image.Image | None  # None when generated without decoding (analysis)
    latents: torch.Tensor  # final latents as the pipeline returned them (packed for Flux)
    text_encode: float  # seconds; 0.0 when the embeddings came from the cache
    encode_cached: bool
    transformer_steps: list[float]  # seconds of transformer forward per denoising step
    decode: float
    total: float
    block_runs: dict[str, Any] = field(default_factory=dict)

    def timing_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "text_encode": self.text_encode,
            "text_encode_cached": self.encode_cached,
            "transformer_steps": self.transformer_steps,
            "transformer_total": sum(self.transformer_steps),
            "decode": self.decode,
        }


StepCallback = Callable[[int, int, torch.Tensor], None]  # (steps done, total steps, latents)


def run_record(loaded: Loaded, plan: Plan, plan_source: str | None, prompts: list[str], settings: Settings) -> dict[str, Any]:
    """The run.json fields that describe a run before any image exists (the same for `dit-explore run`
    and the engine process); callers add images, timing and block_runs."""
    source = loaded.source
    return {
        "model": {
            "name": source.name,
            "location": source.location,
            "kind": source.kind,
            "random_weights": loaded.random_weights,
            "layout": source.layout.to_json(),
        },
        "plan": {
            "name": plan.name,
            "source": plan_source,
            "orders": {n: format_order(o) for n, o in plan.resolved(source.layout).items()},
            "active_steps": format_steps(plan.active_steps) if plan.active_steps else None,
            "identity": plan.is_identity(source.layout),
            "text": dumps(plan),
        },
        "prompts": list(prompts),
        "sampling": settings.to_json(),
        "device": str(loaded.device),
        "dtype": dtype_name(loaded.dtype),
        "versions": versions(),
    }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Generator:
    """Generates images from a loaded pipeline; keeps the text embeddings of recent prompts."""

    def __init__(self, loaded: Loaded, on_warning: Callable[[str], None] | None = None) -> None:
        self.loaded = loaded
        self.on_warning = on_warning or (lambda message: logging.getLogger("dit-explore").warning(message))
        self._embeddings: OrderedDict[tuple[Any, ...], dict[str, torch.Tensor]] = OrderedDict()

    @property
    def pipe(self) -> Any:
        return self.loaded.pipe

    def _cfg(self, settings: Settings) -> bool:
        return self.loaded.family != "flux" and settings.guidance > 1.0

    def embeddings(self, prompt: str, settings: Settings) -> tuple[dict[str, torch.Tensor], float, bool]:
        """Pipeline keyword arguments for `prompt`, the seconds spent encoding, and whether cached."""
        key = (prompt, self._cfg(settings), settings.max_sequence_length)
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached, 0.0, True
        start = time.perf_counter()
        with torch.inference_mode():
            if self.loaded.random_weights:
                embeds = _pseudo_embeddings(self.loaded, prompt, self._cfg(settings), settings.max_sequence_length)
            else:
                embeds = _encode(self.pipe, self.loaded.family, prompt, self._cfg(settings), settings, self.loaded.device)
        sync(self.loaded.device)
        seconds = time.perf_counter() - start
        self._embeddings[key] = embeds
        while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embeds, seconds, False

    def generate(
        self,
        prompt: str,
        settings: Settings,
        plan: Plan,
        *,
        check: Check = lambda: None,
        on_step: StepCallback | None = None,
        wrap: Wrap | None = None,
        decode: bool = True,
    ) -> Generation:
        """One image of `prompt` under `plan`. `check` runs between block executions (raise to cancel);
        the transformer's own block lists are restored whatever happens. `wrap` stands in for each
        plain block (see executor.build_list); without `decode` the image is None (analysis)."""
        device = self.loaded.device
        start = time.perf_counter()
        embeds, encode_seconds, cached = self.embeddings(prompt, settings)
        try:
            latents, per_step = self._denoise(embeds, settings, plan, check, on_step, wrap)
        except Exception as exc:
            if not (self.loaded.compiled and is_compile_failure(exc)):
                raise
            reason = self.loaded.fall_back_to_eager(exc)
            self.on_warning(f"compiling the blocks failed ({reason}); running them without compilation")
            latents, per_step = self._denoise(embeds, settings, plan, check, on_step, wrap)
        check()
        decode_start = time.perf_counter()
        image = self.decode(latents, settings) if decode else None
        sync(device)
        end = time.perf_counter()
        return Generation(
            prompt=prompt,
            settings=settings,
            image=image,
            latents=latents,
            text_encode=encode_seconds,
            encode_cached=cached,
            transformer_steps=[per_step.get(i, 0.0) for i in range(settings.steps)],
            decode=end - decode_start,
            total=end - start,
            block_runs=block_runs(plan, self.loaded.source, settings.steps),
        )

    def _denoise(self, embeds: dict[str, torch.Tensor], settings: Settings, plan: Plan, check: Check,
                 on_step: StepCallback | None, wrap: Wrap | None) -> tuple[torch.Tensor, dict[Any, float]]:
        """The pipeline's denoising loop under `plan`: final latents, and transformer seconds per step."""
        transformer = self.loaded.transformer
        intervals = Intervals(self.loaded.device)
        step = [0]
        hooks = [
            transformer.register_forward_pre_hook(lambda _m, _a: intervals.start(step[0])),
            transformer.register_forward_hook(lambda _m, _a, _o: intervals.stop()),
        ]
        try:
            with applied(transformer, self.loaded.layout, plan, check, wrap) as handle:

                def on_step_end(_pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                    step[0] = index + 1
                    handle.at_step(index + 1)
                    if on_step is not None:
                        on_step(index + 1, settings.steps, kwargs["latents"])
                    return {}

                latents = self.pipe(
                    **embeds,
                    num_inference_steps=settings.steps,
                    width=settings.width,
                    height=settings.height,
                    guidance_scale=settings.guidance,
                    generator=torch.Generator("cpu").manual_seed(settings.seed),
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                ).images
        finally:
            for hook in hooks:
                hook.remove()
        return latents, intervals.seconds_by_key()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, settings: Settings) -> Image.Image:
        """The VAE decode each pipeline does after its loop (same arithmetic, so results match)."""
        pipe = self.pipe
        vae = pipe.vae
        family = self.loaded.family
        if family == "flux":
            latents = pipe._unpack_latents(latents, settings.height, settings.width, pipe.vae_scale_factor)
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        elif family == "sd3":
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        else:
            if vae.dtype == torch.float16 and vae.config.force_upcast:
                pipe.upcast_vae()
                vae = pipe.vae
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


def _encode(
    pipe: Any, family: str, prompt: str, cfg: bool, settings: Settings, device: torch.device
) -> dict[str, torch.Tensor]:
    """The pipeline's own encode_prompt, returning the keyword arguments its __call__ takes."""
    max_len = settings.max_sequence_length
    kwargs: dict[str, Any] = {"device": device, **({"max_sequence_length": max_len} if max_len else {})}
    if family == "flux":
        embeds, pooled, _ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, **kwargs)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if family == "sd3":
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, do_classifier_free_guidance=cfg, **kwargs
        )
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if cfg:
            out.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
        return out
    embeds, mask, neg, neg_mask = pipe.encode_prompt(prompt=prompt, do_classifier_free_guidance=cfg, **kwargs)
    out = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    if cfg:
        out.update(negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask)
    return out


def _pseudo_embeddings(loaded: Loaded, prompt: str, cfg: bool, max_len: int | None) -> dict[str, torch.Tensor]:
    """Deterministic stand-ins of the text encoders' outputs, shaped as the real ones, for --random-weights
    (no text encoder is loaded there; the transformer's cost does not depend on the values)."""
    config = loaded.source.transformer_config
    seq = max_len or 256
    joint = int(config["joint_attention_dim"])
    pooled_dim = int(config.get("pooled_projection_dim", 0))
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    gen = torch.Generator("cpu").manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(loaded.device, loaded.dtype)

    family = loaded.family
    if family == "flux":
        return {"prompt_embeds": rand(1, seq, joint), "pooled_prompt_embeds": rand(1, pooled_dim)}
    if family == "sd3":
        tokens = 77 + seq  # CLIP's 77 tokens, then T5's
        out = {"prompt_embeds": rand(1, tokens, joint), "pooled_prompt_embeds": rand(1, pooled_dim)}
        if cfg:
            out.update(negative_prompt_embeds=rand(1, tokens, joint), negative_pooled_prompt_embeds=rand(1, pooled_dim))
        return out
    mask = torch.ones(1, seq, joint, device=loaded.device, dtype=torch.int64)
    out = {"prompt_embeds": rand(1, seq, joint), "prompt_attention_mask": mask}
    if cfg:
        out.update(negative_prompt_embeds=rand(1, seq, joint), negative_prompt_attention_mask=mask)
    return out
