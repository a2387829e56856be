"""The `dit-explore` command line.

Import-light on purpose: nothing heavy (torch, diffusers, textual) is imported until a subcommand
needs it, so `dit-explore models` and `--help` answer instantly. Bad input is one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from dit_explore.engine.core.catalog import DEFAULT_MODEL
from dit_explore.engine.core.devices import QUANTIZATIONS
from dit_explore.engine.core.placement import CHOICES as PLACEMENTS
from dit_explore.engine.core.signals import how_stopped, stopped_like_ctrl_c

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's usual)")
    p.add_argument("--width", type=int, help="image width in pixels")
    p.add_argument("--height", type=int, help="image height in pixels")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's usual)")


def _device(text: str) -> str:
    """--device, checked by name before anything starts (engine/core/devices.py)."""
    from dit_explore.engine.core.devices import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem.removeprefix(f"--device {text}: "))
    return text


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=_device, help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--random-weights", action="store_true",
                   help="build the real-size architecture with random weights (no download)")
    p.add_argument("--compile", action="store_true",
                   help="compile each block (regional torch.compile): faster steps, no recompiles on plan changes")
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="quantize the transformer blocks with torchao (int8: int8 weights; fp8: FP8 weights and "
                        "activations, GPUs with FP8 matmuls; fp8-weights: FP8 weights; the baseline is the "
                        "quantized full model); needs the [quantize] extra")
    p.add_argument("--memory", choices=PLACEMENTS, default="auto",
                   help="where the weights live on a GPU: full (all on it), offload (text encoders visit it to "
                        "encode), sequential (blocks stream in from host memory, as many as fit stay); auto "
                        "(default): the first of these that fits, decided before loading")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dit-explore",
        usage="dit-explore [MODEL] [options]  |  dit-explore COMMAND ...",
        description="Explore what the layers of a diffusion transformer do: skip, repeat, reverse and "
        "parallelize blocks of Flux, SD3 and AuraFlow, and compare the images. Without a COMMAND, "
        "opens the interactive explorer on MODEL (see dit-explore MODEL --help).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    run = sub.add_parser("run", prog="dit-explore run", help="run a plan headless and write images + run.json",
                         description="Run an execution plan headless; writes one PNG per prompt and run.json to --out.")
    run.add_argument("model", metavar="MODEL", nargs="?", default=DEFAULT_MODEL,
                     help=f"alias, Hugging Face repo id or local diffusers folder (default {DEFAULT_MODEL})")
    run.add_argument("--plan", metavar="FILE", help="a .plan.toml file, or a PNG written by dit-explore (replay)")
    run.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt; repeat for several images")
    run.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line")
    _add_sampling(run)
    _add_device(run)
    run.add_argument("--out", metavar="DIR", required=True, type=Path, help="output directory (created atomically)")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    run.add_argument("--cache", metavar="KIND:T", help="run the full model under a diffusers cache with threshold T "
                     "(flux family): first-block:T (FirstBlockCache: on each step, whether the blocks after the "
                     "first run) or mag:T (MagCache, after its calibration run: whether any block runs)")
    run.add_argument("--trace-plan", metavar="FILE", help="with --cache and one prompt: save the steps the cache "
                     "computed as a static plan (replay it with --plan)")

    models = sub.add_parser("models", prog="dit-explore models", help="list the models dit-explore knows by name",
                            description="List model aliases with their block stacks; with --memory, what each "
                                        "needs on a device and whether it fits there now.")
    models.add_argument("--memory", action="store_true",
                        help="predict each model's peak memory (one image at its default size, from its configs: "
                             "nothing is loaded) in the device's dtype and with 8-bit blocks (--quantize), against "
                             "what the device has free now")
    models.add_argument("--device", default="auto", type=_device, help="with --memory: cpu, cuda, cuda:N or auto "
                        "(default auto)")

    analyze = sub.add_parser("analyze", prog="dit-explore analyze", help="measure block-similarity matrices and group the blocks",
                             description="Cosine similarity of every pair of block outputs (image tokens, "
                             "conditional row), averaged over prompts and steps; grouped into first / middle / "
                             "last. Writes similarity.json and similarity.png to --out.")
    analyze.add_argument("model", metavar="MODEL", nargs="?", default=DEFAULT_MODEL)
    analyze.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: five "
                         "varied built-in prompts)")
    analyze.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line")
    _add_sampling(analyze)
    _add_device(analyze)
    analyze.add_argument("--groups", type=int, metavar="K", help="group into exactly K groups (default: automatic)")
    analyze.add_argument("--no-cache", action="store_true", help="measure again even if this analysis is cached")
    analyze.add_argument("--out", metavar="DIR", required=True, type=Path)
    analyze.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")

    plan_cmd = sub.add_parser("plans", prog="dit-explore plans",
                              help="write the study's strategies for each middle group of an analysis",
                              description="For each middle group of each stack found by `dit-explore analyze`, "
                              "write the study's strategies (skip first block, skip, middle repeat, reverse, "
                              "parallel, looped parallel x3) as plan files.")
    plan_cmd.add_argument("model", metavar="MODEL")
    plan_cmd.add_argument("--from-groups", metavar="DIR", type=Path, required=True,
                          help="an analyze output folder (or its similarity.json)")
    plan_cmd.add_argument("--out", metavar="DIR", type=Path, help="where to write (default saved_plans/MODEL)")
    plan_cmd.add_argument("--overwrite", action="store_true", help="write into a folder that already holds plans")
    bench = sub.add_parser("bench", prog="dit-explore bench", help="measure what plans cost, side by side, on this device",
                           description="Measures, in one process on the same inputs: the identity plan's overhead, "
                           "skip plans against their ideal (FLOP) ratio, parallel groups against their members, "
                           "the similarity capture's cost, end-to-end image latency and achieved TFLOP/s against "
                           "the device's matmul peak; with --compile also compile time and the first call after a "
                           "plan change.")
    bench.add_argument("--model", default=DEFAULT_MODEL, help=f"alias or tiny-* (default {DEFAULT_MODEL})")
    _add_sampling(bench)
    _add_device(bench)
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--only", nargs="+", metavar="SECTION",
                       help="measure only these sections (the overhead always): skip, parallel, cached, "
                            "branches, similarity, end_to_end, throughput")

    evaluate = sub.add_parser("eval", prog="dit-explore eval",
                              help="score a model (or a plan) on the captioned-shapes grammar",
                              description="Generate every caption of the toy models' shapes grammar (324; caption "
                              "i with seed S+i), read each image back with a weight-free scorer, and print the "
                              "accuracy per attribute and all-correct against chance, the seconds per image and "
                              "the plan's block executions against the full model's.")
    evaluate.add_argument("model", metavar="MODEL", help="alias (toy-flux, ...), Hugging Face repo id or local folder")
    evaluate.add_argument("--plan", metavar="FILE", help="a .plan.toml file, or a PNG written by dit-explore")
    evaluate.add_argument("--seed", type=int, help="base seed S: caption i runs with seed S+i (default 0)")
    evaluate.add_argument("--steps", type=int, help="denoising steps (default: the model's usual)")
    evaluate.add_argument("--guidance", type=float, help="guidance scale (default: the model's usual)")
    _add_device(evaluate)
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N captions of a fixed shuffle "
                          "(quick checks on CPU)")
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")

    study = sub.add_parser("study", prog="dit-explore study",
                           help="the Painters study: saved strategies x prompts, metrics and a contact sheet",
                           description="Run the full model and each plan (default: the study's six saved "
                           "strategies for MODEL) on every prompt and seed; measure each image against the full "
                           "model's (PSNR, MAD, SSIM, MS-SSIM, HaarPSI and FSIM with piq; the shapes scorer for toy "
                           "captions). Writes "
                           "contact_sheet.png, results.csv, results.json, summary.md and images/ to --out.")
    study.add_argument("model", metavar="MODEL", nargs="?", default=DEFAULT_MODEL)
    study.add_argument("--plans", nargs="+", metavar="FILE", help="plan files to study instead of the saved six")
    study.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: the "
                       "model's five analysis prompts)")
    study.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line")
    study.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds, each prompt runs with each "
                       "(default: --seed, else 0)")
    _add_sampling(study)
    _add_device(study)
    study.add_argument("--out", metavar="DIR", required=True, type=Path, help="output directory (created atomically)")
    study.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier study")

    sweep = sub.add_parser("sweep", prog="dit-explore sweep", help="a family of plans against the full model: "
                           "table, plot, contact sheet",
                           description="Run a family of plans (skip-each, skip-middle-n, repeat-middle-n, "
                           "parallel-width, step-window) on every prompt and seed, each measured against the full "
                           "model; writes results.csv, results.json, plot.png and contact_sheet.png to --out. "
                           "Finished items are kept as they finish; --resume continues an interrupted sweep.")
    sweep.add_argument("model", metavar="MODEL")
    sweep.add_argument("kind", metavar="KIND", choices=("skip-each", "skip-middle-n", "repeat-middle-n",
                                                        "parallel-width", "step-window"),
                       help="skip-each, skip-middle-n, repeat-middle-n, parallel-width or step-window")
    sweep.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: the "
                       "model's default prompt)")
    sweep.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line")
    sweep.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds (default: --seed, else 0)")
    sweep.add_argument("--plan", metavar="FILE", help="step-window: the plan to window (default: skip the "
                       "middle group)")
    sweep.add_argument("--window", type=int, metavar="N", help="step-window: steps per window (default a quarter)")
    _add_sampling(sweep)
    _add_device(sweep)
    sweep.add_argument("--out", metavar="DIR", required=True, type=Path, help="output directory")
    sweep.add_argument("--resume", action="store_true", help="continue the sweep in --out where it stopped")
    sweep.add_argument("--overwrite", action="store_true", help="start afresh in --out if it holds a sweep")
    sweep.add_argument("--batch", type=int, metavar="N", help="images (prompts x seeds) per batch of a plan, 1 to 16 "
                       "(default: as many as fit in memory; the chosen size is printed and saved)")
    sweep.add_argument("--gpus", type=int, metavar="N", help="spread the sweep over N processes, one per GPU "
                       "(torch.distributed; results identical to one GPU's)")
    return parser


SUBCOMMANDS = ("run", "models", "analyze", "plans", "bench", "eval", "study", "sweep")


def _command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers of build_parser()'s parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def build_tui_parser() -> argparse.ArgumentParser:
    from dit_explore.tui.config import GRAPHICS

    p = _Parser(prog="dit-explore", description="Open the layer explorer on MODEL (default: the built-in "
                f"{DEFAULT_MODEL}). Other commands: {', '.join(SUBCOMMANDS)} (dit-explore COMMAND --help).")
    p.add_argument("model", metavar="MODEL", nargs="?", default=DEFAULT_MODEL,
                   help="alias, Hugging Face repo id or local diffusers folder")
    p.add_argument("--plan", metavar="FILE", help="open with a plan loaded (.plan.toml or a dit-explore PNG)")
    p.add_argument("--graphics", choices=GRAPHICS, help="image protocol (default: config, else detected)")
    p.add_argument("--plans-dir", type=Path, default=Path("saved_plans"), help="where ctrl+s saves plans")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are written as they arrive")
    p.add_argument("--theme", metavar="NAME", help="color theme: dit-dark, dit-light or one of yours in "
                   "~/.config/dit-explore/themes (default: config, else dit-dark)")
    _add_device(p)
    return p


def tui_main(argv: list[str]) -> int:
    """Check everything the explorer needs (model, plan, config, theme) before any screen appears."""
    args = build_tui_parser().parse_args(argv)
    from dit_explore.engine.core import plan as plans
    from dit_explore.engine.core.resolve import ModelError, resolve
    from dit_explore.tui.config import ConfigError, config_path, load_config
    from dit_explore.tui.themes import DEFAULT_THEME, ThemeError, available_themes, check_theme

    def fail(message: str) -> int:
        from dit_explore.engine.core.text import printable_lines

        for line in printable_lines(message).split("\n"):  # no raw ESC/BEL from a shared file reaches the terminal
            print(f"dit-explore: error: {line}", file=sys.stderr)
        return EXIT_USAGE

    try:
        source = resolve(args.model)
        config = load_config()
        themes = available_themes()
        plan = plans.load(args.plan) if args.plan else plans.Plan()
        if args.plan:
            plans.validate(plan, source.layout, source=args.plan)
        theme = args.theme or config.theme or DEFAULT_THEME
        check_theme(theme, themes, "--theme" if args.theme else f"{config_path()}: ui.theme =" if config.theme else "theme")
    except (ModelError, ConfigError, ThemeError, plans.PlanError) as exc:
        return fail(str(exc))
    from dit_explore.tui.probe import import_textual_image, probe

    # Ask the terminal once, before Textual takes it over, keeping any key typed meanwhile (tui/probe.py).
    facts = probe(args.graphics or config.graphics or "auto")
    graphics = facts.graphics
    if graphics == "tgp":
        os.environ["COLORTERM"] = "truecolor"  # Kitty placeholders need truecolor; plain ssh often drops it
    import_textual_image(facts)

    from dit_explore.tui.app import ExplorerApp
    from dit_explore.tui.errors import start_logging

    start_logging()
    app = ExplorerApp(source, plan=plan, graphics=graphics, plans_dir=args.plans_dir, runs_dir=args.runs_dir,
                      theme=theme, keymap=config.keymap, device=args.device, dtype=args.dtype,
                      random_weights=args.random_weights, compile=args.compile, quantize=args.quantize,
                      memory=args.memory, typed=facts.typed)
    result = app.run()
    # A crash (Textual printed the traceback) leaves return_code 1 and no result: never report success.
    return app.return_code or (result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        return tui_main(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # the subcommand's parser says it, so the message names the subcommand
        _command_parsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    from dit_explore.engine.headless import UsageError

    try:
        with stopped_like_ctrl_c():
            return _dispatch(args)
    except UsageError as exc:
        from dit_explore.engine.core.text import printable_lines

        for line in printable_lines(str(exc)).split("\n"):  # control characters escaped, one problem a line
            print(f"dit-explore {args.command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # ctrl+c, SIGTERM, SIGHUP
        what, code = how_stopped(exc)
        print(f"dit-explore {args.command}: {what}", file=sys.stderr)
        return code


def _dispatch(args: argparse.Namespace) -> int:
    from dit_explore.engine import headless
    from dit_explore.engine.core.plan import Sampling

    if args.command == "models":
        return headless.models_command(memory=args.memory, device=args.device)
    if args.command == "plans":
        return headless.plans_command(args.model, args.from_groups, args.out, args.overwrite)
    options = headless.ModelOptions(args.device, args.dtype, args.random_weights, args.compile, args.quantize,
                                    args.memory)
    if args.command == "eval":
        return headless.eval_command(headless.EvalRequest(
            model=args.model, plan=args.plan, sampling=Sampling(seed=args.seed, steps=args.steps, guidance=args.guidance),
            options=options, json_path=args.json, limit=args.limit))
    sampling = Sampling(seed=args.seed, steps=args.steps, width=args.width, height=args.height, guidance=args.guidance)
    if args.command == "run":
        return headless.run_command(headless.RunRequest(
            model=args.model, out=args.out, plan=args.plan, prompts=tuple(args.prompt or ()),
            prompts_file=args.prompts, sampling=sampling, options=options, overwrite=args.overwrite,
            cache=args.cache, trace_plan=args.trace_plan))
    if args.command == "analyze":
        return headless.analyze_command(headless.AnalyzeRequest(
            model=args.model, out=args.out, prompts=tuple(args.prompt or ()), prompts_file=args.prompts,
            sampling=sampling, options=options, groups=args.groups, use_cache=not args.no_cache,
            overwrite=args.overwrite))
    if args.command == "study":
        return headless.study_command(headless.StudyRequest(
            model=args.model, out=args.out, prompts=tuple(args.prompt or ()), prompts_file=args.prompts,
            seeds=tuple(args.seeds or ()), plan_files=tuple(args.plans or ()), sampling=sampling, options=options,
            overwrite=args.overwrite))
    if args.command == "sweep":
        return headless.sweep_command(headless.SweepRequest(
            model=args.model, kind=args.kind, out=args.out, prompts=tuple(args.prompt or ()), prompts_file=args.prompts,
            seeds=tuple(args.seeds or ()), plan_file=args.plan, window=args.window, sampling=sampling,
            options=options, resume=args.resume, overwrite=args.overwrite, batch=args.batch, gpus=args.gpus))
    if args.command == "bench":
        return headless.bench_command(headless.BenchRequest(
            model=args.model, sampling=sampling, options=options, json_path=args.json,
            only=tuple(args.only) if args.only else None))
    raise AssertionError(args.command)


def entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entry()
