"""The one generation code path: prompt -> embeddings (cached) -> denoise under a plan -> decode.

`dit-explore run`, the engine process and the benchmarks all call `Generator.generate`. The pipeline is
called with precomputed embeddings and `output_type="latent"`, so text encoding, the denoising loop and
the VAE decode are timed separately and a prompt is never encoded twice; everything else is the
pipeline's own code, so the identity plan reproduces plain diffusers bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from dit_explore.engine.branches import applied_with_branches
from dit_explore.engine.core.plan import Plan, dumps, format_order, format_steps, validate_guidance
from dit_explore.engine.core.runs import versions
from dit_explore.engine.core.sampling import BlockRuns, Settings, Timing, block_runs
from dit_explore.engine.executor import Check, Wrap
from dit_explore.engine.models import Loaded, is_compile_failure, settle_objects
from dit_explore.engine.timing import Intervals, StepInputs, sync

EMBEDDING_CACHE_SIZE = 32
# Multiply-adds of one chunk of queries when attention runs in chunks (attention_in_chunks): about a
# tenth of a second on two CPU cores.
ATTENTION_CHUNK_MACS = 1 << 31


@dataclass
class Generation:
    """One image and what it cost."""

    prompt: str
    settings: Settings
    image: Image.Image | None  # None when generated without decoding (analysis)
    latents: torch.Tensor  # final latents as the pipeline returned them (packed for Flux)
    timing: Timing
    block_runs: BlockRuns
    # The arguments of the last transformer call (references, not copies): what the side-by-side timing
    # of plan and full model reuses (engine/timing.py), so it needs no generation of its own.
    last_inputs: StepInputs | None = None


@dataclass
class BatchGeneration:
    """Images denoised as one batch (Generator.generate_batch) and what the batch cost: the timing is the
    whole batch's (its transformer steps ran all images at once)."""

    prompts: list[str]
    seeds: list[int]
    settings: Settings
    images: list[Image.Image]
    timing: Timing
    block_runs: BlockRuns  # per image


StepCallback = Callable[[int, int, torch.Tensor], None]  # (steps done, total steps, latents)
HUGE_GUIDANCE = 1000.0  # a NaN/inf run with guidance at least this large names the guidance as the likely cause


class NonFiniteError(ValueError):
    """The latents or the decoded image became NaN or infinite (a guidance far too large, an overflow in
    float16): one line saying where, which the engine reports as the job's error and `dit-explore run`
    prints before exiting with code 2."""


def _all_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def _first_non_finite(flags: list[torch.Tensor]) -> int | None:
    """The 0-based index of the first False among per-step `isfinite(...).all()` flags, read with one
    device sync after the loop (a check inside the loop would stall the GPU once per step)."""
    if not flags:
        return None
    finite = torch.stack(flags).cpu()
    bad = (~finite).nonzero()
    return int(bad[0, 0]) if len(bad) else None


def _likely_cause(settings: Settings, dtype: torch.dtype) -> str:
    if abs(settings.guidance) >= HUGE_GUIDANCE:
        return f" (guidance {settings.guidance:g} is too large?)"
    if dtype == torch.float16:
        return " (an overflow in float16? try --dtype bfloat16)"
    return ""


def _no_check() -> None:
    return None


@contextlib.contextmanager
def attention_in_chunks(check: Check) -> Iterator[None]:
    """Within this context, torch's scaled_dot_product_attention over many queries runs in chunks of
    queries, with `check` between them. On CPU one call can take seconds (the VAE's mid-block attention
    of tiny-flux at 1024 px: 65536 queries, 4-8 s on two cores), and no layer boundary is inside it.
    Each query's output depends on that query alone, so the result is bit-identical (checked by
    tests/engine/test_cancel.py). Masked, causal or dropout attention runs as it is. Not for compiled code
    (the replacement is plain Python); callers use it on CPU without compiled blocks."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def chunked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                dropout_p: float = 0.0, is_causal: bool = False, *args: Any, **kwargs: Any) -> torch.Tensor:
        plain = attn_mask is None and not dropout_p and not is_causal and not args and set(kwargs) <= {"scale"}
        rows = query.shape[-2] if query.dim() >= 3 else 0
        if plain and rows and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
            heads = query.numel() // (rows * query.shape[-1])
            step = max(256, ATTENTION_CHUNK_MACS // max(1, heads * key.shape[-2] * (query.shape[-1] + value.shape[-1])))
            if rows > step:
                out = query.new_empty((*query.shape[:-1], value.shape[-1]))
                for start in range(0, rows, step):
                    check()
                    out[..., start:start + step, :] = original(query[..., start:start + step, :], key, value, **kwargs)
                return out
        return original(query, key, value, attn_mask, dropout_p, is_causal, *args, **kwargs)

    functional.scaled_dot_product_attention = chunked
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def checked(modules: Iterable[torch.nn.Module], check: Check) -> Iterator[None]:
    """Call `check` before every submodule of `modules` runs (forward pre-hooks, removed afterwards), so
    that a cancel lands inside the long stretches that have no block boundary — the text encoders, the
    VAE decode (seconds at large sizes on CPU), a big block's own layers — within one layer's time."""
    if check is _no_check:
        yield
        return
    handles = [sub.register_forward_pre_hook(lambda _m, _a: check()) for module in modules for sub in module.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
            "orders": {n: format_order(o) for n, o in plan.resolved(source.layout).items()},  # the default order
            "active_steps": format_steps(plan.active_steps) if plan.active_steps else None,
            "step_orders": [{"steps": format_steps(t.steps),  # every stack's order on the table's steps
                             "orders": {n: format_order(o) for n, o in plan.resolved_at(source.layout, t.steps[0]).items()}}
                            for t in plan.step_orders],
            "identity": plan.is_identity(source.layout),
            "text": dumps(plan),
        },
        "prompts": list(prompts),
        "sampling": settings.to_json(),
        "device": str(loaded.device),
        "dtype": dtype_name(loaded.dtype),
        "quantization": loaded.quantization,  # the blocks' (--quantize); the baseline is the quantized full model
        "placement": loaded.placement.to_record() if loaded.placement is not None else None,  # --memory
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
        self._settled = False  # objects settled after the first compiled generation (models.settle_objects)

    @property
    def pipe(self) -> Any:
        return self.loaded.pipe

    def _cfg(self, settings: Settings) -> bool:
        return self.loaded.family.uses_cfg(settings.guidance)

    def _text_encoders(self) -> list[torch.nn.Module]:
        pipe = self.pipe
        return [m for m in (getattr(pipe, slot, None) for slot in self.loaded.family.text_slots)
                if isinstance(m, torch.nn.Module)]

    def _transformer_parts(self) -> list[torch.nn.Module]:
        """What of the transformer a cancel may interrupt: all of it on CPU, where one block can take
        seconds; elsewhere (and with compiled blocks, which hooks would break) all but the blocks."""
        transformer = self.loaded.transformer
        if self.loaded.device.type == "cpu" and not self.loaded.compiled:
            return [transformer]
        stacks = {stack.attr for stack in self.loaded.layout.stacks}
        return [child for name, child in transformer.named_children() if name not in stacks]

    def embeddings(self, prompt: str, settings: Settings,
                   check: Check = _no_check) -> tuple[dict[str, torch.Tensor], float, bool]:
        """Pipeline keyword arguments for `prompt`, the seconds spent encoding, and whether cached.
        `check` runs before each layer of the text encoders (raise to cancel)."""
        key = (prompt, self._cfg(settings), settings.max_sequence_length)
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached, 0.0, True
        start = time.perf_counter()
        with torch.inference_mode(), checked(self._text_encoders(), check):
            if self.loaded.random_weights and not self._text_encoders():
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
        check: Check = _no_check,
        on_step: StepCallback | None = None,
        wrap: Wrap | None = None,
        decode: bool = True,
    ) -> Generation:
        """One image of `prompt` under `plan`. `check` runs between block executions and before each layer
        of the text encoders, of the VAE and (on CPU) of the blocks (raise to cancel); the transformer's
        own block lists are restored whatever happens. `wrap` stands in for each plain block (see
        executor.build_list); without `decode` the image is None (analysis)."""
        device = self.loaded.device
        start = time.perf_counter()
        check()
        with contextlib.ExitStack() as interruptible:
            if device.type == "cpu" and not self.loaded.compiled and check is not _no_check:
                interruptible.enter_context(attention_in_chunks(check))
            return self._generate(prompt, settings, plan, check, on_step, wrap, decode, start)

    def _generate(self, prompt: str, settings: Settings, plan: Plan, check: Check, on_step: StepCallback | None,
                  wrap: Wrap | None, decode: bool, start: float) -> Generation:
        device = self.loaded.device
        embeds, encode_seconds, cached = self.embeddings(prompt, settings, check)
        latents, per_step, last_inputs = self._denoise_or_fall_back(embeds, settings, plan, check, on_step, wrap)
        check()
        decode_start = time.perf_counter()
        image = self.decode(latents, settings, check) if decode else None
        sync(device)
        end = time.perf_counter()
        timing = Timing(total=end - start, text_encode=encode_seconds, text_encode_cached=cached,
                        transformer_steps=tuple(per_step.get(i, 0.0) for i in range(settings.steps)),
                        decode=end - decode_start)
        return Generation(prompt=prompt, settings=settings, image=image, latents=latents, timing=timing,
                          block_runs=block_runs(plan, self.loaded.layout, settings.steps), last_inputs=last_inputs)

    def _denoise_or_fall_back(self, embeds: dict[str, torch.Tensor], settings: Settings, plan: Plan, check: Check,
                              on_step: StepCallback | None, wrap: Wrap | None, seeds: Sequence[int] | None = None,
                              ) -> tuple[torch.Tensor, dict[Any, float], StepInputs | None]:
        """`_denoise`; when compiled blocks fail to compile, once more without compilation (and a warning)."""
        try:
            with checked(self._transformer_parts(), check):
                denoised = self._denoise(embeds, settings, plan, check, on_step, wrap, seeds)
            if self.loaded.compiled and not self._settled:  # the first compiled call made Dynamo's objects
                settle_objects()
                self._settled = True
            return denoised
        except Exception as exc:
            if not (self.loaded.compiled and is_compile_failure(exc)):
                raise
            reason = self.loaded.fall_back_to_eager(exc)
            self.on_warning(f"compiling the blocks failed ({reason}); running them without compilation")
            with checked(self._transformer_parts(), check):
                return self._denoise(embeds, settings, plan, check, on_step, wrap, seeds)

    def generate_batch(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings, plan: Plan, *,
                       check: Check = _no_check) -> BatchGeneration:
        """The images of `prompts[i]` with `seeds[i]` under `plan`, denoised as one batch: one pipeline
        call whose initial noise is drawn image by image from each seed's own generator (so each image starts
        from the noise its single generation draws), decoded one by one. The arithmetic of a batch may differ
        from batch 1 in the last bits, so a batch's images are the same whenever the same batch is formed
        (engine/sweep.py forms them from the job list alone). The embeddings of prompts with differing shapes
        cannot share a batch: a ValueError."""
        if not prompts or len(prompts) != len(seeds):
            raise ValueError("generate_batch: as many seeds as prompts, at least one")
        start = time.perf_counter()
        check()
        encoded = [self.embeddings(prompt, settings, check) for prompt in prompts]
        parts = [e for e, _, _ in encoded]
        shapes = {tuple((k, tuple(v.shape)) for k, v in sorted(p.items())) for p in parts}
        if len(shapes) > 1:
            raise ValueError("generate_batch: the prompts' embeddings differ in shape; they cannot share a batch")
        embeds = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        latents, per_step, _ = self._denoise_or_fall_back(embeds, settings, plan, check, None, None, list(seeds))
        check()
        decode_start = time.perf_counter()
        images = [self.decode(latents[i:i + 1], replace(settings, seed=seed), check) for i, seed in enumerate(seeds)]
        sync(self.loaded.device)
        end = time.perf_counter()
        timing = Timing(total=end - start, text_encode=sum(s for _, s, _ in encoded),
                        text_encode_cached=all(c for _, _, c in encoded),
                        transformer_steps=tuple(per_step.get(i, 0.0) for i in range(settings.steps)),
                        decode=end - decode_start)
        return BatchGeneration(prompts=list(prompts), seeds=list(seeds), settings=settings, images=images,
                               timing=timing, block_runs=block_runs(plan, self.loaded.layout, settings.steps))

    def _denoise(self, embeds: dict[str, torch.Tensor], settings: Settings, plan: Plan, check: Check,
                 on_step: StepCallback | None, wrap: Wrap | None,
                 seeds: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[Any, float], StepInputs | None]:
        """The pipeline's denoising loop under `plan`: final latents, transformer seconds per step, and the
        arguments of the last transformer call. With `seeds`, the embeddings are a batch and image i's
        noise comes from a generator seeded with seeds[i]; else one image, seeded with the settings' seed."""
        transformer = self.loaded.transformer
        validate_guidance(plan, self.loaded.layout, settings.guidance)
        intervals = Intervals(self.loaded.device)
        step = [0]
        finite: list[torch.Tensor] = []

        last: list[StepInputs] = []

        def before(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            last[:] = [StepInputs(args, dict(kwargs))]
            intervals.start(step[0])

        hooks = [
            transformer.register_forward_pre_hook(before, with_kwargs=True),
            transformer.register_forward_hook(lambda _m, _a, _o: intervals.stop()),
        ]
        try:
            with applied_with_branches(transformer, self.loaded.layout, plan, step, scheduler=self.pipe.scheduler,
                                       check=check, wrap=wrap) as handle:

                def on_step_end(_pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                    step[0] = index + 1
                    handle.at_step(index + 1)
                    finite.append(torch.isfinite(kwargs["latents"]).all())  # no sync: read after the loop
                    if on_step is not None:
                        on_step(index + 1, settings.steps, kwargs["latents"])
                    return {}

                latents = self.pipe(
                    **embeds,
                    num_inference_steps=settings.steps,
                    width=settings.width,
                    height=settings.height,
                    guidance_scale=settings.guidance,
                    generator=(torch.Generator("cpu").manual_seed(settings.seed) if seeds is None
                               else [torch.Generator("cpu").manual_seed(seed) for seed in seeds]),
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                ).images
        finally:
            for hook in hooks:
                hook.remove()
        bad = _first_non_finite(finite)
        if bad is not None:
            raise NonFiniteError(f"the latents became NaN/inf at step {bad + 1} of {settings.steps}"
                                 f"{_likely_cause(settings, self.loaded.dtype)}")
        return latents, intervals.seconds_by_key(), (last[0] if last else None)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, settings: Settings, check: Check = _no_check) -> Image.Image:
        """The VAE decode each pipeline does after its loop (same arithmetic, so results match). `check`
        runs before each of the VAE's layers and before the postprocessing (raise to cancel)."""
        pipe = self.pipe
        family = self.loaded.family
        if family.upcasts_vae and pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.upcast_vae()
        latents = family.latents_for_vae(pipe, latents, settings.width, settings.height)
        with checked([pipe.vae], check):
            image = pipe.vae.decode(latents, return_dict=False)[0]
        check()
        if not _all_finite(image):
            raise NonFiniteError(f"the decoded image is NaN/inf (the VAE overflowed in {dtype_name(image.dtype)}?)")
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
