"""The trained toy models (toy-flux, toy-sd3, toy-auraflow): build, train, evaluate and save them.

    python -m dit_explore.engine.toy train toy-flux --out DIR [--seconds 460] [--max-steps N] [--seed 0]
                                                     [--device cuda:1] [--batch 256] [--lr 1e-3] [--no-compile]

Random tiny models have no layer structure worth exploring; these are small models of the real classes
trained on a world small enough to learn in minutes: one coloured shape on a dark background, captioned
`a {size} {color} {shape} at the {position}` (engine/core/shapes.py, 324 captions). What each family's toy
is (transformer config, text encoders, defaults, the accuracy it must reach) is data in that family's
module (`Family.toy`, a ToySpec); this module turns it into a pipeline and trains it:

- the components: the family's transformer class at the ToySpec's config; frozen random tiny text encoders
  (engine/tiny.py's, seed 0) behind whole-word tokenizers (engine/core/toy_vocab.py); the exact
  parameter-free space-to-depth autoencoder (engine/toy_autoencoder.py); the flow-matching Euler scheduler;
- the data, all on the device before the first step: a bank of renders (every caption x `jitters` random
  positions and backgrounds, uint8) and the text embeddings of every caption and of the empty caption,
  computed by the family's own encode_prompt, so training sees exactly what sampling will;
- the objective: rectified flow, x_t = (1 - t) x0 + t noise with t logit-normal (sigmoid of a standard
  normal), the transformer called as the pipeline calls it (`Family.transformer_kwargs`) and regressed on
  noise - x0; 10% of captions replaced by the empty one (so classifier-free guidance means something);
- the pilot's recipe (../shared/toy-models.md) with a higher learning rate: AdamW 1e-3 (3e-4 reached 27%
  all-correct where 1e-3 reached 62% in the same 240 s), betas (0.9, 0.95), 200 warm-up steps, batch 256,
  bf16 autocast and torch.compile on CUDA, gradients clipped at 1, EMA 0.999 of the weights (the EMA is
  what ships); the last 50% of the time budget decays the learning rate linearly to 10%;
- time-bound: `--seconds` of training (plus `--max-steps`), then the EMA weights are saved as a bf16
  pipeline folder, loaded back through dit-explore's own loader and scored by sampling all 324 captions
  (seeds 0..323, as `dit-explore run` would with --seed i) at 20 and at 4 steps without guidance;
  `training.json` in the folder records the configuration, loss curve, accuracies, device and versions,
  `DIR-samples.png` beside it shows the 20-step samples, and `DIR.tar.gz` carries the folder home.

The shipped folders live in engine/toys/<alias>/ (package data); the catalog's toy entries load them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, T5TokenizerFast

from dit_explore.engine.core import shapes
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.families import Family, ToySpec, family
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.runs import OWNER_FILE, StagedDirectory, write_atomic
from dit_explore.engine.core.signals import how_stopped, stopped_like_ctrl_c
from dit_explore.engine.core.toy_vocab import T5_SPECIALS, clip_vocabulary, t5_pieces
from dit_explore.engine.models import load, pick_device, quiet_libraries
from dit_explore.engine.tiny import _scheduler, _text_encoder, _without_transformers_progress_bars
from dit_explore.engine.toy_autoencoder import SpaceToDepthAutoencoder

CLIP_TOKENS = 16  # the toy CLIPs' sequence: a caption is 8 words, plus start and end
TRAINING_RECORD = "training.json"

# ------------------------------------------------------------------------------------------ tokenizers


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with a merge path to every grammar word (one token each), 16 positions.
    `model_max_length` sets the pipelines' CLIP sequence (they pad and truncate to it)."""
    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_TOKENS)


def t5_tokenizer() -> T5TokenizerFast:
    """A T5-shaped Unigram tokenizer: every grammar word one piece, characters for everything else; ids
    0/1/2 are pad/eos/unk and `</s>` ends every sequence, as in real T5.

    The pre-tokenizer (split on whitespace, then Metaspace) and the absent normalizer are what
    T5TokenizerFast.from_pretrained rebuilds from the saved folder (transformers 5), so the tokenizer
    training uses is the one that ships, for any spacing of any prompt."""
    pad, eos, unk = T5_SPECIALS
    backend = Tokenizer(models.Unigram(t5_pieces(), unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, unk_token=unk, extra_ids=0,
                           model_max_length=512)


TOKENIZERS: Mapping[str, Callable[[], Any]] = {"clip": clip_tokenizer, "t5": t5_tokenizer}

# ------------------------------------------------------------------------------------------- building


def toy_family(model: str) -> Family:
    """The family of a toy alias (toy-flux, toy-sd3, toy-auraflow); ValueError naming the choices."""
    spec = MODELS.get(model)
    if spec is None or not spec.toy:
        toys = ", ".join(alias for alias, s in MODELS.items() if s.toy)
        raise ValueError(f"{model!r} is not a toy model (choose one of: {toys})")
    return family(spec.family)


def spec_of(of: Family) -> ToySpec:
    if of.toy is None:
        raise ValueError(f"the {of.name} family declares no toy model")
    return of.toy


def build_pipeline(of: Family, spec: ToySpec | None = None, seed: int = 0) -> Any:
    """A fresh (untrained) toy pipeline of the family: its transformer class from `seed`, frozen text
    encoders (seed 0, as the tiny models'), the space-to-depth autoencoder, the scheduler."""
    spec = spec or spec_of(of)
    components: dict[str, Any] = {}
    for encoder in spec.text_encoders:
        tokenizer = TOKENIZERS[encoder.tokenizer]()
        components[encoder.tokenizer_slot] = tokenizer
        components[encoder.slot] = _text_encoder(encoder, tokenizer).requires_grad_(False)
    torch.manual_seed(seed)
    transformer = getattr(diffusers, of.transformer_class)(**spec.transformer)
    components.update(transformer=transformer, vae=SpaceToDepthAutoencoder(), scheduler=_scheduler(spec.scheduler_shift))
    pipe = getattr(diffusers, of.pipeline_class)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe: Any, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """save_pretrained in `dtype` (safetensors only) into `out_dir`, which must not exist yet or hold
    nothing but a staging folder's owner marker."""
    if out_dir.exists() and any(p.name != OWNER_FILE for p in out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists")
    pipe.to("cpu", dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _without_transformers_progress_bars():
        pipe.save_pretrained(out_dir, safe_serialization=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != OWNER_FILE)


# ------------------------------------------------------------------------------------------------ data


def encode_captions(pipe: Any, of: Family, captions: Sequence[str], max_sequence_length: int | None,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """The family's encode_prompt of each caption (no guidance), stacked: row i is caption i."""
    rows = [of.encode_prompt(pipe, caption, False, max_sequence_length, device) for caption in captions]
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


def to_latents(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> the pipeline's latents: [-1, 1], the autoencoder, its shift and scale."""
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    z = pipe.vae.encode(x).latents
    config = pipe.vae.config
    return (z - (config.shift_factor or 0.0)) * config.scaling_factor


@dataclass
class Bank:
    """The training data on the device: `images` (captions x jitters, H, W, 3) uint8, caption-major (row r
    shows caption r // jitters); the embeddings of every caption (row i: caption i) and of ""."""

    images: torch.Tensor
    jitters: int
    embeds: dict[str, torch.Tensor]
    empty: dict[str, torch.Tensor]


def make_bank(pipe: Any, of: Family, captions: Sequence[str], jitters: int, rng: np.random.Generator,
              device: torch.device, max_sequence_length: int | None, size: int = 64) -> Bank:
    attrs = [shapes.parse_caption(c) for c in captions for _ in range(jitters)]
    images = torch.from_numpy(shapes.render_batch(attrs, rng, size=size)).to(device)
    with torch.no_grad():
        embeds = encode_captions(pipe, of, captions, max_sequence_length, device)
        empty = encode_captions(pipe, of, [""], max_sequence_length, device)
    return Bank(images, jitters, embeds, empty)


# ---------------------------------------------------------------------------------------------- training


def velocity_loss(pipe: Any, of: Family, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                  embeds: Mapping[str, torch.Tensor], forward: Callable[..., Any] | None = None) -> torch.Tensor:
    """Rectified-flow loss: the transformer, called as the pipeline calls it at noise level `sigma`,
    against the velocity noise - x0 (mean squared error, float32). `forward` replaces the call of
    `pipe.transformer` (its torch.compile'd wrapper, which shares its parameters)."""
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    call = forward if forward is not None else pipe.transformer
    out = call(**of.transformer_kwargs(pipe, xt, sigma, embeds), return_dict=False)[0]
    factor = pipe.vae_scale_factor
    pred = of.spatial_latents(pipe, out, x0.shape[-1] * factor, x0.shape[-2] * factor)
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


@dataclass(frozen=True)
class TrainConfig:
    seconds: float = 460.0
    max_steps: int | None = None
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 200
    cooldown: float = 0.5  # the last fraction of the run decays the learning rate linearly to 10%
    ema: float = 0.999
    dropout: float = 0.1  # share of captions replaced by the empty one
    jitters: int = 32  # renders per caption in the bank
    seed: int = 0
    log_every: int = 50  # steps between loss records
    eval_every: float = 120.0  # seconds between quick accuracy checks of the EMA (4 steps); 0: none
    grad_clip: float = 1.0
    compile: bool = True  # on CUDA, torch.compile the transformer's training forward (the EMA and saving see the module)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)  # step, seconds, loss, lr
    checks: list[dict[str, Any]] = field(default_factory=list)  # step, seconds, 4-step accuracy of the EMA


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup` steps, constant, then a linear decay to 10% over the last `cooldown`
    of the run (`progress` in [0, 1]: the larger of elapsed time and steps over their budgets)."""
    warm = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    start = 1.0 - config.cooldown
    decay = 1.0 if progress <= start else max(0.1, 1.0 - 0.9 * (progress - start) / max(config.cooldown, 1e-9))
    return config.lr * warm * decay


class Ema:
    """Exponential moving average of a module's parameters (float32), warmed up: the decay is at most
    (1 + n) / (10 + n) after n updates, so the first averages follow the weights."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average (twice restores them)."""
        for p, s in zip(self.params, self.shadow):
            live = p.detach().float().clone()
            p.copy_(s)
            s.copy_(live)


# One training batch: clean latents x0, noise, noise levels sigma (batch,) and the embeddings (by key).
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def bank_batches(pipe: Any, bank: Bank, config: TrainConfig, device: torch.device) -> Callable[[], Batch]:
    """Random batches from the bank: images uniformly (caption and jitter), `config.dropout` of their
    captions replaced by the empty one, Gaussian noise, sigma logit-normal; seeded by `config.seed`."""
    generator = torch.Generator(device).manual_seed(config.seed)
    n_images = bank.images.shape[0]

    def draw() -> Batch:
        index = torch.randint(n_images, (config.batch,), device=device, generator=generator)
        caption = index // bank.jitters
        drop = torch.rand(config.batch, device=device, generator=generator) < config.dropout
        embeds = {}
        for key, table in bank.embeds.items():
            rows = table[caption]
            dropped = drop.view(-1, *([1] * (rows.dim() - 1)))
            embeds[key] = torch.where(dropped, bank.empty[key].expand_as(rows), rows)
        with torch.no_grad():
            x0 = to_latents(pipe, bank.images[index])
        noise = torch.randn(x0.shape, device=device, generator=generator)
        sigma = torch.sigmoid(torch.randn(config.batch, device=device, generator=generator))
        return x0, noise, sigma, embeds

    return draw


def train(pipe: Any, of: Family, draw: Callable[[], Batch], config: TrainConfig, device: torch.device,
          log: Callable[[str], None] = print,
          check: Callable[[int], dict[str, Any]] | None = None) -> tuple[TrainResult, Ema]:
    """Train the pipeline's transformer on batches from `draw` (bank_batches) until `config.seconds` or
    `config.max_steps`; returns the record and the EMA (`ema.swap()` puts the averaged weights in the
    transformer). `check` (steps done) measures the EMA's accuracy every `config.eval_every` seconds,
    inside the time budget. The loss of each step is taken before its update."""
    transformer = pipe.transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0, fused=cuda)
    ema = Ema(transformer, config.ema)
    forward = torch.compile(transformer) if config.compile and cuda else None
    result = TrainResult(steps=0, seconds=0.0)
    running = torch.zeros((), device=device)
    counted = 0
    start = time.perf_counter()
    next_check = config.eval_every if config.eval_every > 0 else math.inf
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        progress = elapsed / config.seconds if config.seconds > 0 else 0.0
        if config.max_steps is not None:
            progress = max(progress, step / max(config.max_steps, 1))
        if progress >= 1.0:
            break
        lr = learning_rate(config, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0, noise, sigma, embeds = draw()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = velocity_loss(pipe, of, x0, noise, sigma, embeds, forward)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        ema.update()
        running += loss.detach()
        counted += 1
        step += 1
        if step % config.log_every == 0:
            seconds = time.perf_counter() - start
            mean = float(running) / counted
            result.curve.append({"step": step, "seconds": round(seconds, 2), "loss": mean, "lr": lr})
            log(f"step {step:6d}  {seconds:6.1f} s  loss {mean:.4f}  lr {lr:.2e}")
            running.zero_()
            counted = 0
        if check is not None and time.perf_counter() - start >= next_check:
            next_check += config.eval_every
            transformer.eval()
            ema.swap()
            found = check(step)
            ema.swap()
            transformer.train()
            result.checks.append({"step": step, "seconds": round(time.perf_counter() - start, 2), **found})
    result.steps = step
    result.seconds = time.perf_counter() - start
    transformer.eval()
    return result, ema


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def sample(pipe: Any, embeds: Mapping[str, torch.Tensor], steps: int, seeds: Sequence[int], batch: int = 324,
           size: int = 64, autocast: bool = False) -> np.ndarray:
    """Images (N, size, size, 3) uint8 through the pipeline's own __call__, no guidance; image i from a CPU
    generator seeded seeds[i] (as `dit-explore run --seed` draws its noise)."""
    device = pipe.transformer.device
    out = []
    for start in range(0, len(seeds), batch):
        part = {key: value[start:start + batch] for key, value in embeds.items()}
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch]]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
            images = pipe(**part, num_inference_steps=steps, guidance_scale=0.0, width=size, height=size,
                          generator=generators, output_type="np").images
        out.append((np.asarray(images, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def evaluate(pipe: Any, embeds: Mapping[str, torch.Tensor], captions: Sequence[str], steps: int,
             batch: int = 324, autocast: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Sample every caption (seed i for caption i) and score the images (shapes.score): its JSON and the
    images."""
    images = sample(pipe, embeds, steps, range(len(captions)), batch, autocast=autocast)
    return shapes.score(images, captions).to_json(), images


def grid(images: np.ndarray, columns: int = 18) -> Image.Image:
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    return Image.fromarray(canvas, "RGB")


# -------------------------------------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(model: str, out_dir: Path, config: TrainConfig, device: torch.device, *, archive: bool = True,
        captions: Sequence[str] = shapes.CAPTIONS, eval_batch: int = 324, log: Callable[[str], None] = print,
        command: Sequence[str] = (), spec: ToySpec | None = None, init: Path | None = None) -> dict[str, Any]:
    """Train MODEL's toy, save its EMA weights as a bf16 pipeline folder at `out_dir`, load it back through
    dit-explore's loader, score it at 20 and 4 steps, and write training.json (returned), DIR-samples.png
    and (with `archive`) DIR.tar.gz. `captions` (all 324 by default) are what it trains and scores on;
    `spec` replaces the family's ToySpec (the tests train a narrower one); `init`, a folder this wrote
    before, starts from its weights (a second stage: training.json then counts both)."""
    of = toy_family(model)
    spec = spec or spec_of(of)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists (the trained folder is written there)")
    # Built in a hidden staging folder beside `out_dir` and renamed into place once training.json is in
    # it: an interrupted or failed run leaves nothing behind (a killed one, a folder the next run sweeps).
    staged = StagedDirectory(out_dir, marker=TRAINING_RECORD, what="toy model")
    try:
        record = _train_into(model, of, spec, staged.staging, config, device, captions=captions,
                             eval_batch=eval_batch, log=log, command=command, init=init)
        staged.commit()
    except BaseException:
        staged.abort()
        raise
    write_atomic(out_dir.parent / f"{out_dir.name}-samples.png", record.pop("samples"))
    if archive:
        archive_path = out_dir.parent / f"{out_dir.name}.tar.gz"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(out_dir, arcname=out_dir.name)
        write_atomic(archive_path, buffer.getvalue())
    log(f"wrote {out_dir} ({record['folder_bytes'] / 1e6:.1f} MB) in {record['wall_seconds']:.0f} s")
    return record


def _train_into(model: str, of: Family, spec: ToySpec, out_dir: Path, config: TrainConfig, device: torch.device, *,
                captions: Sequence[str], eval_batch: int, log: Callable[[str], None], command: Sequence[str],
                init: Path | None) -> dict[str, Any]:
    """`run` inside the (staging) folder `out_dir`: train, save, score, write training.json; the record,
    with the sample grid's PNG bytes under "samples" (written beside the folder once it is in place)."""
    quiet_libraries()
    wall = time.perf_counter()
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN attention failed in the backward pass (torch 2.11, CUDA 13)
        torch.backends.cuda.matmul.allow_tf32 = True
    pipe = build_pipeline(of, spec, seed=config.seed)
    resumed: dict[str, Any] | None = None
    if init is not None:  # go on from a trained folder's (EMA) weights: a second stage of training
        trained = type(pipe.transformer).from_pretrained(init / "transformer", torch_dtype=torch.float32)
        pipe.transformer.load_state_dict(trained.state_dict())
        record_file = init / TRAINING_RECORD
        earlier = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
        resumed = {"folder": str(init), "command": earlier.get("command"), "accuracy": earlier.get("accuracy"),
                   "steps": earlier.get("total_steps", earlier.get("steps", 0)),  # every stage before this one
                   "train_seconds": earlier.get("total_train_seconds", earlier.get("train_seconds", 0.0))}
        log(f"{model}: starting from the weights of {init} ({resumed['steps']} steps, "
            f"{resumed['train_seconds']} s of training)")
    pipe.to(device)
    sequence = spec.defaults.max_sequence_length
    bank = make_bank(pipe, of, captions, config.jitters, np.random.default_rng(config.seed), device, sequence,
                     size=spec.defaults.width)
    log(f"{model}: transformer {parameter_count(pipe.transformer):,} parameters; bank {tuple(bank.images.shape)} "
        f"on {_device_name(device)}; setup {time.perf_counter() - wall:.1f} s")

    def check(step: int) -> dict[str, Any]:
        scores, _ = evaluate(pipe, bank.embeds, captions, 4, eval_batch, autocast=True)
        log(f"step {step:6d}  EMA at 4 steps: all {scores['accuracy']['all']:.1%}  "
            + "  ".join(f"{k} {v:.0%}" for k, v in scores["accuracy"].items() if k != "all"))
        return {"accuracy_4_steps": scores["accuracy"]}

    result, ema = train(pipe, of, bank_batches(pipe, bank, config, device), config, device, log=log,
                        check=check if config.eval_every > 0 else None)
    ema.swap()  # ship the average
    log(f"trained {result.steps} steps in {result.seconds:.1f} s")
    save_pipeline(pipe, out_dir)  # (moves it to the CPU; into the staging folder, which exists)

    # Score what ships: the saved folder, loaded the way the explorer loads a folder.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = load(resolve(str(out_dir)), device, dtype)
    reloaded: Any = loaded.pipe
    with torch.no_grad():
        embeds = encode_captions(reloaded, of, captions, sequence, device)
    accuracy: dict[str, Any] = {}
    samples = None
    for steps in (spec.defaults.steps, 4):
        began = time.perf_counter()
        scores, images = evaluate(reloaded, embeds, captions, steps, eval_batch)
        accuracy[f"{steps}_steps"] = {**scores, "seconds": round(time.perf_counter() - began, 2)}
        log(f"{steps:2d} steps: all-correct {scores['accuracy']['all']:.1%}  "
            + "  ".join(f"{k} {v:.1%}" for k, v in scores["accuracy"].items() if k != "all"))
        samples = images if samples is None else samples
    assert samples is not None
    png = io.BytesIO()
    grid(samples).save(png, format="PNG")

    record: dict[str, Any] = {
        "model": model,
        "family": of.name,
        "command": list(command),
        "seed": config.seed,
        "train": asdict(config),
        "toy": {"transformer": dict(spec.transformer), "text_encoders": [asdict(t) for t in spec.text_encoders],
                "scheduler_shift": spec.scheduler_shift, "defaults": asdict(spec.defaults), "target": spec.target},
        "parameters": {"transformer": parameter_count(reloaded.transformer)},
        "captions": len(captions),
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "resumed": resumed,  # the stages this one went on from (their steps and seconds together), or null
        "total_steps": result.steps + (resumed["steps"] if resumed else 0),
        "total_train_seconds": round(result.seconds + (resumed["train_seconds"] if resumed else 0.0), 2),
        "steps_per_second": round(result.steps / max(result.seconds, 1e-9), 3),
        "loss_curve": result.curve,
        "checks": result.checks,
        "accuracy": accuracy,
        "target_met": accuracy[f"{spec.defaults.steps}_steps"]["accuracy"]["all"] >= spec.target,
        "device": {"type": device.type, "name": _device_name(device)},
        "dtype_saved": "bfloat16",
        "versions": _versions(),
    }
    record["wall_seconds"] = round(time.perf_counter() - wall, 2)
    record["folder_bytes"] = folder_bytes(out_dir)  # the pipeline's files, this record aside
    text = json.dumps(record, indent=1) + "\n"
    (out_dir / TRAINING_RECORD).write_text(text, encoding="utf-8")
    return {**json.loads(text), "samples": png.getvalue()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_explore.engine.toy",
                                     description="Train a toy model on the captioned shapes and save its pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one toy model and write its pipeline folder")
    p.add_argument("model", help="toy-flux, toy-sd3 or toy-auraflow")
    p.add_argument("--out", required=True, type=Path, help="the pipeline folder to write (must not exist)")
    p.add_argument("--seconds", type=float, default=TrainConfig.seconds, help="training time budget (default 460)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup, help="warm-up steps of the learning rate")
    p.add_argument("--cooldown", type=float, default=TrainConfig.cooldown,
                   help="last share of the run that decays the learning rate linearly to 10%%")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=TrainConfig.compile,
                   help="torch.compile the transformer for training on CUDA (default: on)")
    p.add_argument("--jitters", type=int, default=TrainConfig.jitters, help="renders per caption in the bank")
    p.add_argument("--eval-every", type=float, default=TrainConfig.eval_every,
                   help="seconds between 4-step accuracy checks of the EMA (0: none)")
    p.add_argument("--log-every", type=int, default=TrainConfig.log_every)
    p.add_argument("--no-archive", action="store_true", help="do not write DIR.tar.gz")
    p.add_argument("--init", type=Path, default=None,
                   help="a folder this command wrote before: go on training from its weights (a second stage)")
    args = parser.parse_args(argv)
    config = TrainConfig(seconds=args.seconds, max_steps=args.max_steps, batch=args.batch, lr=args.lr,
                         warmup=args.warmup, cooldown=args.cooldown, compile=args.compile, jitters=args.jitters,
                         seed=args.seed, log_every=args.log_every, eval_every=args.eval_every)

    def log(line: str) -> None:
        print(f"[{args.model}] {line}", flush=True)

    try:
        with stopped_like_ctrl_c():
            device = pick_device(args.device)
            run(args.model, args.out, config, device, archive=not args.no_archive, log=log, init=args.init,
                command=["python", "-m", "dit_explore.engine.toy", *(sys.argv[1:] if argv is None else argv)])
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # ctrl+c, SIGTERM, SIGHUP
        what, code = how_stopped(exc)
        # --out did not exist when the run began: if it does now, the stop came after the folder was in
        # place, while its samples or archive were written beside it.
        written = f"{args.out} is complete, its samples or archive may be missing" if args.out.exists() else \
            "nothing written"
        print(f"[{args.model}] {what}: {written}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
