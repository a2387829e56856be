"""Load a resolved model into a diffusers pipeline on a device.

Three ways in, one way out (a `Loaded`):
- built-in tiny models: built once with a fixed seed into the cache folder, then loaded from disk like
  any checkpoint (so the real loading code is what the tests exercise);
- aliases, hub repos and local folders: `from_pretrained(..., use_safetensors=True)`, never remote code;
- `--random-weights`: the real-size transformer and VAE built from their shipped configs directly on
  the device, with no text encoders (the generation code feeds deterministic pseudo-embeddings).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dit_explore.engine.core.families import Family, TextEncoderShape
from dit_explore.engine.core.layout import Layout
from dit_explore.engine.core.placement import Placement
from dit_explore.engine.core.resolve import ModelError, ModelSource, cache_dir
from dit_explore.engine.core.sampling import Settings
from dit_explore.engine.executor import prepare_averaging, set_placer
from dit_explore.engine.placement import Residency

# Built-in models (random tiny ones, trained toys): --random-weights has nothing to build for them.
BUILT_IN = ("tiny", "toy")
TINY_BUILD_VERSION = 3  # bump when engine/tiny.py changes how it builds (a family's TinySpec is hashed in)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Loaded:
    """A pipeline ready to generate, with what the executor and the generation code need to know."""

    source: ModelSource
    pipe: object  # a diffusers pipeline of the source's family
    device: torch.device
    dtype: torch.dtype
    random_weights: bool
    load_seconds: float
    revision: str = ""  # what identifies these weights (hub snapshot, tiny build, ...): part of cache keys
    compiled: bool = False  # blocks are compiled (regional torch.compile)
    compile_error: str | None = None  # why compilation was given up, if it was
    quantization: str | None = None  # the blocks' quantization (--quantize), None: the model's dtype
    placement: Placement | None = None  # where the weights live (--memory); None: all on the device
    residency: Residency | None = None  # what moves the weights of a placement other than full

    @property
    def precision(self) -> str:
        """The dtype and the blocks' quantization, as runs, sweep keys and the explorer name them:
        `bfloat16`, or `float32+int8`."""
        name = str(self.dtype).removeprefix("torch.")
        return f"{name}+{self.quantization}" if self.quantization else name

    def fall_back_to_eager(self, exc: BaseException) -> str:
        """Compilation failed on a first call: run the blocks eagerly from now on; returns one line."""
        uncompile_blocks(self.transformer, self.layout)
        self.compiled = False
        self.compile_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return self.compile_error

    @property
    def offloaded(self) -> str | None:
        """The placement in words when some weights live in host memory (`--memory offload`, `sequential`);
        None when all are on the device."""
        if self.placement is None or self.placement.setting == "full":
            return None
        return self.placement.describe()

    @property
    def layout(self) -> Layout:
        return self.source.layout

    @property
    def family(self) -> Family:
        """The model family: what differs between Flux, SD3, AuraFlow (engine/core/families/)."""
        return self.source.family_info

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer  # type: ignore[attr-defined]


def compile_blocks(transformer: torch.nn.Module, layout: Layout, device: torch.device, dtype: torch.dtype) -> None:
    """Regional compilation: each block compiled on its own (diffusers' compile_repeated_blocks only knows
    Flux). Blocks of one class share a graph, and a plan only swaps the lists holding them, so a plan
    change never recompiles. The first call pays the blocks' compilation; the parallel groups' averaging
    kernels compile here, so that no plan change ever does. If they cannot compile, groups average
    eagerly (the blocks' own compile failure, if any, is reported at their first call)."""
    for stack in layout.stacks:
        for block in getattr(transformer, stack.attr):
            block.compile(fullgraph=True)
    try:
        prepare_averaging(device, dtype)
    except Exception as exc:
        if not is_compile_failure(exc):
            raise


QUANTIZE_EXTRA = "pip install --no-deps torchao==0.18.0 (the [quantize] extra)"


def quantization_problem(kind: str, device: torch.device) -> str | None:
    """Why `--quantize kind` cannot run on `device` (one line), checked before anything is loaded: FP8
    matmuls need a GPU that has them (compute capability 8.9: Ada, Hopper and later)."""
    if kind != "fp8":
        return None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (f"--quantize fp8 needs a GPU with FP8 matmuls (compute capability 8.9+: Ada, Hopper) and this is "
            f"{where}; --quantize fp8-weights keeps the weights in FP8 on any device")


def quantize_blocks(transformer: torch.nn.Module, layout: Layout, kind: str) -> None:
    """Quantize every block's linear layers in place with torchao:

    - `int8`: int8 weights, one scale per output channel; activations in the model's dtype
      (`Int8WeightOnlyConfig`);
    - `fp8`: FP8 (e4m3) weights and activations, one scale per row of each, FP8 matmuls
      (`Float8DynamicActivationFloat8WeightConfig`, per-row: what diffusers documents for Flux);
    - `fp8-weights`: FP8 (e4m3) weights, one scale per output channel, dequantized for a matmul in the
      model's dtype (`Float8WeightOnlyConfig`): half of bf16's weight memory, on any device.

    The blocks stay the same modules, so plans swap them as before and regional compilation compiles them.
    A ModelError of one line when torchao is not installed or the kind is unknown."""
    from dit_explore.engine.core.devices import QUANTIZATIONS

    if kind not in QUANTIZATIONS:
        raise ModelError(f"--quantize {kind}: unknown (known: {', '.join(QUANTIZATIONS)})")
    # (load() has quieted the libraries, torchao's import chatter included.)
    # Compiling a quantized block: torch suggests torchao's tensor subclass implement a hash for its caches.
    warnings.filterwarnings("ignore", message=r".* does not implement _stable_hash_for_caching", category=UserWarning)
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            Int8WeightOnlyConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise ModelError(f"--quantize {kind} needs torchao: {QUANTIZE_EXTRA}") from None
    configs = {"int8": Int8WeightOnlyConfig, "fp8-weights": Float8WeightOnlyConfig,
               "fp8": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())}
    for stack in layout.stacks:
        for block in getattr(transformer, stack.attr):
            quantize_(block, configs[kind]())


def uncompile_blocks(transformer: torch.nn.Module, layout: Layout) -> None:
    for stack in layout.stacks:
        for block in getattr(transformer, stack.attr):
            block._compiled_call_impl = None


def settle_objects() -> None:
    """Collect the garbage of loading (or of a first compiled call), then move every object still alive
    into the collector's permanent generation (`gc.freeze`). A loaded pipeline is several hundred thousand
    Python objects that live as long as the process, and a full collection walks them all in the middle of
    whichever call happens to trigger it: 180 ms with toy-sd3 loaded on the 2-core CPU, against well
    under a millisecond once they are frozen. Reference counting still frees frozen objects; only cycles
    among them stay, and these are the model's own."""
    gc.collect()
    gc.freeze()


def is_compile_failure(exc: BaseException) -> bool:
    """An error raised by torch.compile itself (tracing or code generation), not by the model."""
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (progress bars, hub and optional-dependency warnings) off the
    user's terminal; real errors still raise."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torchao (which diffusers imports when it is installed) says at import that its optional native kernels
    # are missing and makes torch's pytree warn about its enums: harmless, and not the user's concern.
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def pick_device(requested: str) -> torch.device:
    """The device `requested` names: auto, cpu, cuda or cuda:N. Other torch devices (mps, meta, xpu, ...)
    are refused with one line: the engine's timing, memory checks and generation are built for these."""
    from dit_explore.engine.core.devices import device_problem
    from dit_explore.engine.core.text import shown

    problem = device_problem(requested)
    if problem is not None:
        raise ModelError(problem)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {shown(requested)}: no CUDA device is available here (try --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelError(f"--device {shown(requested)}: this machine has {count} CUDA device(s): cuda:0-{count - 1}")
    return device


def free_memory(device: torch.device) -> tuple[int | None, str]:
    """What a request may still use on `device` (bytes; None when unknown) and how a message names it:
    a GPU's free memory plus what torch's caching allocator holds unused there, or this machine's
    available memory (engine/core/memory.py)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"{device} ({torch.cuda.get_device_name(device)})"
    from dit_explore.engine.core.memory import available_memory

    return available_memory(), "this machine"


def plan_memory(source: ModelSource, settings: Settings, device: torch.device, dtype: str, requested: str, *,
                random_weights: bool = False, quantization: str | None = None, analysis: bool = False,
                cached_spans: int = 0) -> Placement | None:
    """The memory plan of a request on `device` (engine/core/placement.py) against what it has free now:
    where the weights go (`requested`: --memory), or a ModelError of one line naming what would fit.
    None on a device kind the memory model does not know."""
    from dit_explore.engine.core.memory import DEVICE_KINDS
    from dit_explore.engine.core.placement import PlacementError, plan_placement

    if device.type not in DEVICE_KINDS:
        return None
    available, where = free_memory(device)
    try:
        return plan_placement(source, settings.width, settings.height, available, requested, device_kind=device.type,
                              where=where, guidance=settings.guidance, dtype=dtype,
                              max_sequence_length=settings.max_sequence_length, random_weights=random_weights,
                              analysis=analysis, cached_spans=cached_spans, quantization=quantization)
    except PlacementError as exc:
        raise ModelError(str(exc)) from None


def parameter_bytes(pipe: object) -> int:
    """The bytes of every parameter of a pipeline's modules (a tied parameter once)."""
    seen: set[int] = set()
    total = 0
    for component in vars(pipe).values():
        if isinstance(component, torch.nn.Module):
            for p in component.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere, unless asked."""
    if requested is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise ModelError(f"--dtype {requested}: choose one of {', '.join(DTYPES)}")
    return DTYPES[requested]


def tiny_build_id(source: ModelSource) -> str:
    """What identifies a tiny build: the builder's version and a hash of the family's TinySpec, so a
    changed spec is a new build (and a new revision in every cache key), never a stale folder."""
    spec = source.family_info.tiny
    digest = hashlib.sha256(repr((source.family, spec)).encode()).hexdigest()[:12]
    return f"v{TINY_BUILD_VERSION}-{digest}"


def _tiny_target(source: ModelSource) -> Path:
    return cache_dir() / "tiny" / f"{source.location}-{tiny_build_id(source)}"


def tiny_built(source: ModelSource) -> bool:
    return (_tiny_target(source) / "model_index.json").exists()


def tiny_path(source: ModelSource) -> Path:
    """The folder of a built-in tiny model, built (atomically, once) if missing."""
    from dit_explore.engine.tiny import build_tiny_pipeline

    target = _tiny_target(source)
    if tiny_built(source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.location}-", dir=target.parent))
    try:
        build_tiny_pipeline(source.family_info, staging / "pipe")
        try:
            os.replace(staging / "pipe", target)
        except OSError:
            if not (target / "model_index.json").exists():  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _component_progress(report: Callable[[str, float | None], None]) -> Iterator[None]:
    """Report each pipeline component as diffusers loads it. diffusers walks the components through
    `diffusers.utils.logging.tqdm`; wrapping that iterable (for the duration of one load) turns its
    progress bar into (stage, fraction) reports. Without that hook, loading still works, unreported."""
    import diffusers.utils.logging as dlog

    original = getattr(dlog, "tqdm", None)
    if original is None:
        yield
        return

    def tracking(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
        if iterable is None:
            return original(*args, **kwargs)
        items = list(iterable)

        def walk() -> Iterator[Any]:
            for i, item in enumerate(items):
                name = item[0] if isinstance(item, tuple) else str(item)
                report(f"loading {name}", i / max(1, len(items)))
                yield item

        return walk()

    dlog.tqdm = tracking
    try:
        yield
    finally:
        dlog.tqdm = original


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_random(source: ModelSource, device: torch.device, dtype: torch.dtype, text_encoders: bool = False,
                 on_host: bool = False) -> object:
    """The real-size transformer and VAE from their configs with random weights, in a pipeline without text
    encoders; with `text_encoders`, the family's real-size text encoders too (from their declared shapes;
    the tokenizers of the family's toy model, whose ids all fall inside the real vocabularies).

    Fast at any size: each model is built with its parameters on the meta device (its buffers real), then
    every parameter is drawn on `device` from one seeded generator, in the model's order, and put on the
    device, or with `on_host` in host memory one parameter at a time (a placement that streams weights: the
    model never has to fit the device whole). Matrices are drawn from N(0, 1/fan_in) (the scale torch's
    default initialisation keeps), 1-D weights are ones and biases zeros (norms and their shifts): the
    same values wherever they are put, so every placement draws the same images."""
    import diffusers

    family = source.family_info
    transformer_cls = getattr(diffusers, family.transformer_class)
    pipeline_cls = getattr(diffusers, family.pipeline_class)
    target = torch.device("cpu") if on_host else device
    generator = torch.Generator(device).manual_seed(0)
    transformer = _materialized(lambda: transformer_cls.from_config(dict(source.transformer_config)), device,
                                target, dtype, generator)
    vae = _materialized(lambda: diffusers.AutoencoderKL.from_config(dict(source.vae_config)), device, target, dtype,
                        generator)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(dict(source.scheduler_config))
    components: dict[str, object] = {"transformer": transformer.eval(), "vae": vae.eval(), "scheduler": scheduler}
    components.update({slot: None for slot in family.text_slots})
    if text_encoders:
        components.update(_random_text_encoders(family, device, target, dtype, generator))
    return pipeline_cls(**components)


def _materialized(build: Callable[[], torch.nn.Module], device: torch.device, target: torch.device,
                  dtype: torch.dtype, generator: torch.Generator) -> torch.nn.Module:
    """`build()` with random parameters drawn on `device` and put on `target` (see build_random)."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights(include_buffers=False), _default_dtype(dtype):
        module = build()
    for name, param in list(module.named_parameters()):
        shape = tuple(param.shape)
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) / math.sqrt(fan_in)
        elif name.endswith("weight"):
            value = torch.ones(shape, device=device)
        else:
            value = torch.zeros(shape, device=device)
        set_module_tensor_to_device(module, name, target, value=value.to(dtype))
    module.to(target, dtype)
    return module


def encoder_config(shape: TextEncoderShape) -> Any:
    """The transformers config of a declared text encoder shape (engine/core/families/)."""
    import transformers

    if shape.model_class.startswith("CLIP"):
        return transformers.CLIPTextConfig(vocab_size=shape.vocab, hidden_size=shape.width, intermediate_size=shape.ff,
                                           num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                           max_position_embeddings=shape.positions,
                                           projection_dim=shape.projection or shape.width)
    config = transformers.UMT5Config if shape.model_class.startswith("UMT5") else transformers.T5Config
    return config(vocab_size=shape.vocab, d_model=shape.width, d_kv=shape.head_dim or shape.width // shape.heads,
                  d_ff=shape.ff, num_layers=shape.layers, num_heads=shape.heads,
                  feed_forward_proj="gated-gelu" if shape.gated else "relu")


def _random_text_encoders(family: Family, device: torch.device, target: torch.device, dtype: torch.dtype,
                          generator: torch.Generator) -> dict[str, object]:
    import transformers

    from dit_explore.engine.core.resolve import resolve

    if family.memory is None or family.toy is None:
        raise ModelError(f"the {family.name} family declares no text encoder shapes to build")
    toy = Path(toy_path(resolve(f"toy-{family.name}")))
    out: dict[str, object] = {}
    for spec, shape in zip(family.toy.text_encoders, family.memory.text_encoders, strict=True):
        out[spec.slot] = _materialized(functools.partial(getattr(transformers, shape.model_class), encoder_config(shape)),
                                       device, target, dtype, generator).eval()
        out[spec.tokenizer_slot] = transformers.AutoTokenizer.from_pretrained(toy / spec.tokenizer_slot)
    return out


def load(
    source: ModelSource,
    device: torch.device,
    dtype: torch.dtype,
    *,
    random_weights: bool = False,
    compile: bool = False,
    quantize: str | None = None,
    placement: Placement | None = None,
    random_text_encoders: bool = False,
    on_status: Callable[[str, float | None], None] = lambda _stage, _fraction: None,
) -> Loaded:
    """Load `source` onto `device`; raises ModelError with one actionable line when it cannot.
    `placement`: where the weights live (engine/core/placement.py; None: all on the device);
    `random_text_encoders`: --random-weights builds the real-size text encoders too.
    `on_status(stage, fraction)` reports progress (fraction in [0, 1], or None when unknown)."""
    import time

    from dit_explore.engine.placement import place

    quiet_libraries()
    start = time.perf_counter()
    problem = quantization_problem(quantize, device) if quantize is not None else None
    streamed = placement is not None and placement.setting != "full"
    if problem is None and streamed and quantize is not None:
        problem = (f"--quantize {quantize} with --memory {placement.setting} is not supported: torchao's "  # type: ignore[union-attr]
                   "quantized tensors cannot be copied in and out the way a placement streams weights (they lack "
                   "empty_like and views); 8-bit blocks take half the memory with --memory full")
    if problem is not None:
        raise ModelError(problem)
    if random_weights and source.kind not in BUILT_IN:
        on_status(f"building random {source.name} weights on {device}", None)
        pipe = build_random(source, device, dtype, text_encoders=random_text_encoders, on_host=streamed)
    else:
        if source.kind == "tiny":
            on_status(f"building {source.name} (first use only)" if not tiny_built(source) else
                      f"loading {source.name}", None)
            location = str(tiny_path(source))
        elif source.kind == "toy":
            location = toy_path(source)
        else:
            location = source.location
        with _component_progress(on_status):
            pipe = _from_pretrained(source, location, dtype)
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    on_status(f"placing {source.name} on {device}" + (f" ({placement.describe()})" if streamed else ""), 1.0)  # type: ignore[union-attr]
    stacks = [stack.attr for stack in source.layout.stacks]
    residency = place(pipe, placement, device, stacks, source.family_info.text_slots)
    if residency is not None:
        set_placer(pipe.transformer, residency)  # type: ignore[attr-defined]
    if quantize is not None:
        on_status(f"quantizing the blocks ({quantize})", 1.0)
        quantize_blocks(pipe.transformer, source.layout, quantize)  # type: ignore[attr-defined]
    if compile:
        on_status("compiling blocks (the first generation pays it)", 1.0)
        compile_blocks(pipe.transformer, source.layout, device, dtype)  # type: ignore[attr-defined]
    random = random_weights and source.kind not in BUILT_IN
    settle_objects()
    return Loaded(source, pipe, device, dtype, random, time.perf_counter() - start, revision(source, pipe, random),
                  compiled=compile, quantization=quantize, placement=placement, residency=residency)


def revision(source: ModelSource, pipe: object, random_weights: bool) -> str:
    """A string that changes when the weights do, without hashing gigabytes."""
    if random_weights:
        return "random-weights-seed0"
    if source.kind == "tiny":
        return f"tiny-build-{tiny_build_id(source)}"
    if source.kind == "toy":  # its trained weights' contents: the same wherever the package is installed
        weights = Path(source.location) / "transformer" / "diffusion_pytorch_model.safetensors"
        return "toy-" + hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    where = str(pipe.config.get("_name_or_path") or "")  # type: ignore[attr-defined]
    parts = Path(where).parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):  # a hub cache snapshot folder
        return parts[parts.index("snapshots") + 1]
    folder = Path(source.location)
    if folder.is_dir():  # local folder: its files' sizes and times stand in for their contents
        stats = sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
                       for p in folder.rglob("*") if p.is_file())
        return "local-" + hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    return "unknown"


def toy_path(source: ModelSource) -> str:
    """The shipped folder of a trained toy model; ModelError (one line) while it has not been trained."""
    folder = Path(source.location)
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{source.name} has not been trained/shipped yet (no {folder}); train it with "
                         f"`python -m dit_explore.engine.toy train {source.name} --out DIR`")
    return str(folder)


# The one component class from outside diffusers and transformers a model_index.json may name: the toy
# models' autoencoder. diffusers resolves such a class only from modules already imported, so it is
# imported here, and nothing else is.
OWN_COMPONENTS = frozenset({("dit_explore.engine.toy_autoencoder", "SpaceToDepthAutoencoder")})


def _index_file(location: str) -> Path | None:
    """The model_index.json of a local folder, or of a hub repo already in the local cache; None if neither."""
    folder = Path(location)
    if folder.is_dir():
        return folder / "model_index.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location, "model_index.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, unreadable cache: diffusers reports what it finds
        return None
    return Path(cached) if isinstance(cached, str) else None


def _diffusers_pipeline_module(library: str) -> bool:
    """Whether `library` names one of diffusers' own pipeline packages (a component class of theirs)."""
    import importlib.util

    if not library.isidentifier():
        return False
    try:
        return importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None
    except (ImportError, ValueError):
        return False


def check_components(name: str, location: str) -> None:
    """Refuse, with one line, a pipeline whose model_index.json names a component class from anywhere but
    diffusers or transformers (dit-explore never runs code a checkpoint brings), except exactly
    OWN_COMPONENTS, whose module it imports; also refuse component code shipped in the folder itself."""
    import importlib
    import json

    path = _index_file(location)
    if path is None or not path.is_file():
        return  # diffusers reports the missing index
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # diffusers reports the unreadable index
    if not isinstance(index, dict):
        return
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry == [None, None]:
            continue
        library, cls = entry
        if not isinstance(library, str) or not isinstance(cls, str):
            raise ModelError(f"{name}: model_index.json: component {component!r} is {entry!r}, not [library, class]")
        if (library, cls) in OWN_COMPONENTS:
            importlib.import_module(library)
            continue
        if library in ("diffusers", "transformers") or _diffusers_pipeline_module(library):
            if (path.parent / component / f"{library}.py").exists():
                raise ModelError(f"{name}: {component}/{library}.py: the checkpoint brings its own code for "
                                 f"{component}; dit-explore never runs it")
            continue
        raise ModelError(f"{name}: model_index.json names {library}.{cls} for its {component}: dit-explore loads "
                         f"only diffusers and transformers classes (and its own SpaceToDepthAutoencoder), never "
                         f"other code")


def _from_pretrained(source: ModelSource, location: str, dtype: torch.dtype) -> object:
    import diffusers

    cls = getattr(diffusers, source.family_info.pipeline_class)
    check_components(source.name, location)
    try:
        return cls.from_pretrained(location, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:  # hub errors (offline, missing files) are OSError/ValueError kin
        if source.kind in ("alias", "repo"):
            raise ModelError(
                f"{source.name}: the weights of {source.location} are not in the local Hugging Face cache and "
                f"could not be downloaded; get them with `hf download {source.location}` (gated repos need "
                f"`hf auth login` first), or explore the architecture with --random-weights"
            ) from None
        raise ModelError(f"{source.name}: cannot load: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
