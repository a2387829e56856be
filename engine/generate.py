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
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from dit_explore.engine.core.plan import Plan, dumps, format_order, format_steps
from dit_explore.engine.core.runs import versions
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing, block_runs
from dit_explore.engine.executor import Check, Wrap, applied
from dit_explore.engine.models import Loaded, is_compile_failure
from dit_explore.engine.timing import Intervals, sync

EMBEDDING_CACHE_SIZE = 32


@dataclass
class Generation:
    """One image and what it cost."""

    prompt: str
    settings: Settings
    image: Image.Image | None  # None when generated without decoding (analysis)
    latents: torch.Tensor  # final latents as the pipeline returned them (packed for Flux)
    timing: Timing
    block_runs: BlockRuns


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
        return self.loaded.family.uses_cfg(settings.guidance)

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
                embeds = self.loaded.family.encode_prompt(self.pipe, prompt, self._cfg(settings),
                                                          settings.max_sequence_length, self.loaded.device)
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
        timing = Timing(total=end - start, text_encode=encode_seconds, text_encode_cached=cached,
                        transformer_steps=tuple(per_step.get(i, 0.0) for i in range(settings.steps)),
                        decode=end - decode_start)
        return Generation(prompt=prompt, settings=settings, image=image, latents=latents, timing=timing,
                          block_runs=block_runs(plan, self.loaded.layout, settings.steps))

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
        family = self.loaded.family
        if family.upcasts_vae and pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.upcast_vae()
        latents = family.latents_for_vae(pipe, latents, settings.width, settings.height)
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


def _pseudo_embeddings(loaded: Loaded, prompt: str, cfg: bool, max_len: int | None) -> dict[str, torch.Tensor]:
    """Deterministic stand-ins of the text encoders' outputs, shaped as the family declares, for
    --random-weights (no text encoder is loaded there; the transformer's cost does not depend on the
    values)."""
    shapes = loaded.family.pseudo_embeddings(loaded.source.transformer_config, max_len or 256, cfg)
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for name, spec in shapes.items():
        if spec.mask:
            out[name] = torch.ones(spec.shape, device=loaded.device, dtype=torch.int64)
        else:
            out[name] = torch.randn(spec.shape, generator=gen).to(loaded.device, loaded.dtype)
    return out
