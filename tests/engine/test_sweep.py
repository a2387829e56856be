"""`dit-explore sweep`: the plans of each kind (by hand), a sweep end to end, resumed after an interruption,
a refused plan recorded while the sweep goes on, and bad input."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.catalog import MODELS
from dit_explore.engine.core.plan import Group
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.sweep import ITEMS, largest_middle, sweep_items
from dit_explore.tui.cli import main

LAYOUT = MODELS["toy-flux"].layout  # double 6 + single 12


def sweep_cli(*args: str) -> int:
    try:
        return main(["sweep", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def single(item_plan: object) -> tuple[object, ...]:
    orders = dict(item_plan.orders)  # type: ignore[attr-defined]
    return tuple(orders["single"])


def test_largest_middle_group_and_its_fallback() -> None:
    groups = {"double": [(0, 0), (1, 4), (5, 5)], "single": [(0, 3), (4, 9), (10, 11)]}
    assert largest_middle(LAYOUT, groups) == ("single", 4, 9)
    assert largest_middle(LAYOUT, {"double": [(0, 0), (1, 4), (5, 5)], "single": [(0, 5), (6, 11)]}) == ("double", 1, 4)
    assert largest_middle(LAYOUT, None) == ("single", 3, 8)  # the middle half of the largest stack


def test_the_plans_of_each_kind_by_hand() -> None:
    middle = ("single", 4, 9)
    skip_each = sweep_items("skip-each", LAYOUT, middle, 20, 5, None)
    assert len(skip_each) == 18 and skip_each[6 + 3].label == "single: skip 3"
    assert single(skip_each[6 + 3].plan) == (0, 1, 2, *range(4, 12))
    assert dict(skip_each[2].plan.orders)["double"] == (0, 1, 3, 4, 5)

    skip_n = sweep_items("skip-middle-n", LAYOUT, middle, 20, 5, None)
    assert [i.x for i in skip_n] == list(range(7)) and skip_n[0].plan.orders == ()  # n = 0: the full model
    assert single(skip_n[2].plan) == (*range(6), *range(8, 12))  # 6-7: centred in 4-9
    assert single(skip_n[6].plan) == (0, 1, 2, 3, 10, 11)

    repeat = sweep_items("repeat-middle-n", LAYOUT, middle, 20, 5, None)
    assert single(repeat[2].plan) == (0, 1, 2, 3, 4, 6, 6, 6, 8, 9, 10, 11)  # centre block 6 in place of 5-7

    parallel = sweep_items("parallel-width", LAYOUT, middle, 20, 5, None)
    assert len(parallel) == 10 and {i.series for i in parallel} == {"looped x1", "looped x3"}
    assert single(parallel[-1].plan) == (0, 1, 2, 3, Group(tuple(range(4, 10)), 3), 10, 11)

    windows = sweep_items("step-window", LAYOUT, middle, 20, 5, None)
    assert windows[0].x is None and windows[0].plan.active_steps is None
    assert [i.plan.active_steps for i in windows[1:]] == [tuple(range(s, s + 5)) for s in (0, 5, 10, 15)]
    assert all(single(i.plan) == (0, 1, 2, 3, 10, 11) for i in windows)
    # A plan's guidance branches are windowed with it (SD3: an extra pass on steps 3-7 of 20).
    sd3 = MODELS["sd3-medium"].layout
    slg = plans.loads('version = 2\nname = "slg"\n[extra]\nscale = 2.8\nsteps = "3-7"\n[extra.order]\n'
                      'double = "0-6, 10-23"\n[uncond]\n')
    windows = sweep_items("step-window", sd3, ("double", 8, 15), 20, 5, slg)
    assert windows[0].plan.extra == slg.extra and windows[0].plan.uncond == slg.uncond  # every step
    assert [i.plan.extra.steps if i.plan.extra else None for i in windows[1:]] == [(3, 4), (5, 6, 7), None, None]
    assert [i.plan.uncond.steps if i.plan.uncond else None for i in windows[1:]] == [
        tuple(range(s, s + 5)) for s in (0, 5, 10, 15)]


def test_a_sweep_end_to_end_then_resumed_after_an_interruption(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    args = ["toy-flux", "skip-middle-n", "--steps", "4", "--device", "cpu", "--out", str(out)]
    assert sweep_cli(*args) == 0
    assert {"sweep.json", ITEMS, "images", "results.json", "results.csv", "plot.png", "contact_sheet.png"} <= \
        {p.name for p in out.iterdir()}
    first = json.loads((out / "results.json").read_text())
    rows = first["rows"]
    assert first["middle_group"] == ["single", 4, 9]  # toy-flux's shipped analysis
    assert [r["x"] for r in rows[1:]] == list(range(7))
    assert [r["block_executions"] for r in rows[1:]] == [(18 - n) * 4 for n in range(7)]
    assert rows[1]["identical"] and rows[1]["ssim"] == pytest.approx(1.0)  # n = 0 is the full model
    assert Image.open(out / "plot.png").size[0] > 500
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:4] == ["series", "x", "plan", "plan_file"] and list(table[0])[-1] == "batch"
    assert [(t["series"], t["x"], t["plan"], t["batch"]) for t in table] == [
        ("" if r["series"] is None else str(r["series"]), "" if r["x"] is None else str(r["x"]), r["plan"],
         str(r["batch"])) for r in rows]
    # Interrupted: three items finished, a fourth cut short mid-line.
    lines = (out / ITEMS).read_text().splitlines()
    (out / ITEMS).write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    (out / "results.json").unlink()
    capsys.readouterr()
    assert sweep_cli(*args, "--resume") == 0
    said = capsys.readouterr().err
    # n = 0 has the full model's key: its image is the full model's, generated once (7 distinct items).
    assert "8 items (7 distinct), 4 run now, 3 from before, 0 failed" in said, said
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [r["key"] for r in again] == [r["key"] for r in rows]
    for before, after in zip(rows, again):
        assert after["mad"] == pytest.approx(before["mad"]) and after["ssim"] == pytest.approx(before["ssim"])
    # Without --resume an existing sweep is refused; resuming with other settings too.
    assert sweep_cli(*args) == 2
    assert sweep_cli("toy-flux", "skip-middle-n", "--steps", "5", "--device", "cpu", "--out", str(out), "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--resume continues it" in err[0] and "settings" in err[1]


def test_a_failed_plan_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One plan's latents go non-finite (as a float16 overflow would): its row keeps the error, every other
    plan runs, and a resume does not run the failed one again."""
    from dit_explore.engine import generate

    real = generate.Generator.generate_batch

    def failing(self: generate.Generator, prompts: object, seeds: object, settings: object, plan: object,
                **kwargs: object) -> object:
        if getattr(plan, "name", None) == "double: skip 1":
            raise generate.NonFiniteError("the latents became non-finite at step 1")
        return real(self, prompts, seeds, settings, plan, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generate.Generator, "generate_batch", failing)
    out = tmp_path / "sweep"
    args = ["tiny-flux", "skip-each", "--steps", "2", "--prompt", "p", "--device", "cpu", "--out", str(out)]
    assert sweep_cli(*args) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 1 + 4 + 8  # the full model, then every block of tiny-flux's two stacks
    assert [(r["plan"], r["error"]) for r in rows if r.get("error")] == [
        ("double: skip 1", "the latents became non-finite at step 1")]
    assert all(r.get("image") and (out / r["image"]).is_file() for r in rows if not r.get("error"))
    summary = {s["plan"]: s for s in json.loads((out / "results.json").read_text())["summary"]}
    assert summary["double: skip 1"]["errors"] == 1 and summary["double: skip 1"]["images"] == 0
    calls: list[object] = []
    monkeypatch.setattr(generate.Generator, "generate_batch", lambda *a, **k: calls.append(a))
    assert sweep_cli(*args, "--resume") == 0
    assert calls == []  # everything, the failure included, was finished before


@pytest.mark.parametrize(("args", "says"), [
    (["toy-flux", "skip-all"], "invalid choice"),
    (["toy-flux", "skip-each", "--plan", "x.plan.toml"], "step-window"),
    (["toy-flux", "step-window", "--window", "0"], "--window 0"),
    (["toy-flux", "skip-each", "--seeds", "2", "2"], "named twice"),
    (["toy-flux", "skip-each", "--gpus", "0"], "--gpus 0: must be between 1 and 64"),
    (["toy-flux", "skip-each", "--batch", "17"], "--batch 17: must be between 1 and 16"),
])
def test_bad_input_is_one_line(args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert sweep_cli(*args, "--device", "cpu", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()
    taken = tmp_path / "file"
    taken.write_text("mine")
    assert sweep_cli("toy-flux", "skip-each", "--out", str(taken)) == 2
    assert taken.read_text() == "mine"


def test_batches_are_formed_from_the_job_list_and_split_by_cost() -> None:
    from dit_explore.engine.sweep import Batch, form_batches, split_by_cost

    # plan 0 (the full model, 18 block executions an image) on 5 columns, plan 2 (17) on columns 1 and 3.
    batches = form_batches({2: [1, 3], 0: [0, 1, 2, 3, 4]}, 2, [18, 16, 17])
    assert batches == [Batch(0, (0, 1), 36), Batch(0, (2, 3), 36), Batch(0, (4,), 18), Batch(2, (1, 3), 34)]
    # Longest first to the least loaded, ties to the lower rank: 36 -> r0, 36 -> r1, 34 -> r2, 18 -> r2.
    assert split_by_cost(batches, 3) == [[batches[0]], [batches[1]], [batches[2], batches[3]]]
    assert split_by_cost(batches, 1) == [batches]
    # By cost, not by count: one large job against three small ones.
    mixed = [Batch(1, (0,), 90), Batch(2, (0,), 30), Batch(3, (0,), 30), Batch(4, (0,), 30)]
    assert [sum(b.cost for b in share) for share in split_by_cost(mixed, 2)] == [90, 90]


def test_two_processes_make_the_images_of_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--gpus 2 on the CPU (two processes over gloo): the same batches, so the same bytes in every image,
    and one results folder gathered from both processes' items files. Each process takes its share of the
    cores; the one-process run here takes the same number of threads (the CPU's sums follow them)."""
    import torch

    from dit_explore.engine.sweep_ranks import threads_per_process

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    common = ["tiny-flux", "skip-each", "--steps", "2", "--device", "cpu", "--batch", "2",
              "--prompt", "a red circle", "--prompt", "b", "--prompt", "c"]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(2))
    try:
        assert sweep_cli(*common, "--out", str(tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    assert sweep_cli(*common, "--gpus", "2", "--out", str(tmp_path / "two")) == 0
    said = capsys.readouterr().err
    assert "39 items, 39 run now, 0 from before, 0 failed; batches of 2" in said, said
    one = json.loads((tmp_path / "one" / "results.json").read_text())["rows"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["rows"]
    assert [r["key"] for r in one] == [r["key"] for r in two] and len(one) == 3 * 13
    for a, b in zip(one, two):
        assert (tmp_path / "one" / a["image"]).read_bytes() == (tmp_path / "two" / b["image"]).read_bytes()
        assert a["mad"] == b["mad"] and a["batch"] == b["batch"]
    ranks = json.loads((tmp_path / "two" / "ranks.json").read_text())
    assert ranks["processes"] == 2 and sorted(r["items"] for r in ranks["ranks"]) == [19, 20]
    assert {p.name for p in (tmp_path / "two").glob("items*.jsonl")} == {"items.rank0.jsonl", "items.rank1.jsonl"}


def test_cpu_processes_share_the_cores_unless_omp_num_threads_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from dit_explore.engine import sweep_ranks

    monkeypatch.setattr(sweep_ranks.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [sweep_ranks.threads_per_process(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert sweep_ranks.threads_per_process(2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty or nonsense: the share
    assert sweep_ranks.threads_per_process(2) == 4
    monkeypatch.delattr(sweep_ranks.os, "sched_getaffinity")  # macOS: every core
    monkeypatch.setattr(sweep_ranks.os, "cpu_count", lambda: 6)
    assert sweep_ranks.threads_per_process(4) == 1 and sweep_ranks.threads_per_process(3) == 2


def test_a_batch_of_one_is_the_single_image_and_a_batch_starts_from_each_seeds_noise() -> None:
    """generate_batch of one prompt gives run's image byte for byte; a batch of three gives each image its own
    seed's image (the same noise; the batch's arithmetic may move a level or two, never more)."""
    import numpy as np
    import torch

    from dit_explore.engine.core.resolve import resolve
    from dit_explore.engine.generate import Generator
    from dit_explore.engine.models import load

    source = resolve("tiny-flux")
    generator = Generator(load(source, torch.device("cpu"), torch.float32))
    settings = replace(resolve_settings(source.defaults), steps=3)
    prompts, seeds = ["a red circle", "b", "a blue square at the top"], [5, 0, 7]
    singles = [np.asarray(generator.generate(p, replace(settings, seed=s), plans.Plan(name="x").with_order(
        "single", (0, 2, 3))).image, dtype=np.int16) for p, s in zip(prompts, seeds)]
    plan = plans.Plan(name="x").with_order("single", (0, 2, 3))
    one = generator.generate_batch(prompts[:1], seeds[:1], settings, plan)
    assert np.array_equal(np.asarray(one.images[0], dtype=np.int16), singles[0])
    three = generator.generate_batch(prompts, seeds, settings, plan)
    for image, single in zip(three.images, singles):
        assert np.abs(np.asarray(image, dtype=np.int16) - single).max() <= 2
    # Different seeds really are different images (the comparison above is not vacuous).
    assert np.abs(singles[0] - singles[2]).mean() > 5
    assert three.block_runs.total == 3 * 3 + 4 * 3  # per image: 3 single + 4 double blocks, 3 steps


@pytest.mark.parametrize("overlap", [False, True])
def test_a_full_disk_mid_sweep_is_one_line_and_keeps_every_finished_item(
        overlap: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Also when batches are recorded in the recording thread while the next generates (as on a GPU)."""
    import errno

    from dit_explore.engine import sweep as sweeps

    monkeypatch.setattr(sweeps, "overlaps", lambda device: overlap)

    real, calls = sweeps._append, []

    def filling(path: Path, rows: list[dict[str, object]]) -> None:
        calls.append(len(rows))
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, rows)

    monkeypatch.setattr(sweeps, "_append", filling)
    out = tmp_path / "sweep"
    args = ["tiny-flux", "skip-each", "--steps", "2", "--prompt", "p", "--device", "cpu", "--out", str(out)]
    assert sweep_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("cannot write items.jsonl: No space left on device; the items finished before are kept, "
                            "--resume continues"), err[-1]
    assert len((out / ITEMS).read_text().splitlines()) == 3 and not (out / "results.json").exists()
    monkeypatch.setattr(sweeps, "_append", real)
    assert sweep_cli(*args, "--resume") == 0
    assert "13 items, 10 run now, 3 from before, 0 failed" in capsys.readouterr().err


def test_an_empty_prompts_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert sweep_cli("toy-flux", "skip-each", "--prompts", str(empty), "--out", str(tmp_path / "s")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompts.txt" in err[0], err
    assert not (tmp_path / "s").exists()


def test_the_scaling_report_by_hand(tmp_path: Path) -> None:
    """Two hand-made `--gpus` folders: 1 process (40 images in 20 s, first batch 4 images in 4 s) and 2
    processes (40 images in 11 s, first batches 4 in 3 s and 4 in 5 s)."""
    from dit_explore.engine.sweep_bench import report_markdown, scaling_report

    def folder(name: str, ranks: list[dict[str, object]], wall: float) -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "ranks.json").write_text(json.dumps({"processes": len(ranks), "batch": 4, "sweep_seconds": wall,
                                                    "ranks": ranks}))
        summary = [{"plan": "full model", "ms_per_step": 10.0, "block_executions": 40},
                   {"plan": "skip 0", "ms_per_step": 9.9, "block_executions": 36},  # predicted 9.0: +10%
                   {"plan": "skip 1", "ms_per_step": 8.55, "block_executions": 36}]  # -5%
        (out / "results.json").write_text(json.dumps({"summary": summary}))
        # Two items' images: the 2-process folder's second differs from the 1-process folder's.
        digest = {"a": "11", "b": "22" if name == "one" else "33"}
        (out / "items.rank0.jsonl").write_text("".join(json.dumps({"key": k, "sha256": digest[k]}) + "\n"
                                                       for k in ("a", "b")))
        return out

    one = folder("one", [{"items": 40, "generate_seconds": 19.0, "load_seconds": 2.0, "batches": [[4, 4.0], [4, 2.0]]}],
                 20.0)
    two = folder("two", [{"items": 20, "generate_seconds": 10.0, "load_seconds": 2.5, "batches": [[4, 3.0]]},
                         {"items": 20, "generate_seconds": 9.9, "load_seconds": 2.6, "batches": [[4, 5.0]]}], 11.0)
    report = scaling_report([two, one])
    runs = {r["processes"]: r for r in report["runs"]}
    assert runs[1]["steady_throughput"] == pytest.approx(36 / 16) and runs[2]["steady_throughput"] == pytest.approx(32 / 6)
    assert runs[2]["efficiency"] == pytest.approx((32 / 6) / (2 * 36 / 16)) and runs[1]["efficiency"] == pytest.approx(1)
    assert runs[2]["idle"] == pytest.approx([1 - 10 / 11, 1 - 9.9 / 11]) and runs[1]["idle"] == pytest.approx([0.05])
    assert [p["error"] for p in report["prediction"]] == pytest.approx([0.1, -0.05])
    assert report["prediction_max_abs_error"] == pytest.approx(0.1)
    assert report["prediction_median_abs_error"] == pytest.approx(0.075)
    text = report_markdown(report)
    assert runs[2]["identical_to_single"] == [1, 2] and runs[1]["identical_to_single"] == [2, 2]
    assert "| 2 | 40 | 4 | 11.0 | 3.64 | 5.33 | 1.185 | 10.0% | 2.5, 2.6 | 1 of 2 |" in text  # idle: 1 - 9.9 / 11
    assert "median |error| 7.5%, largest 10.0%" in text


def test_recording_overlaps_the_next_batch_and_gives_the_same_items(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With overlap (a GPU's default, forced here on the CPU), batch k is written and measured in the
    recording thread while batch k+1 generates: the first plan's recording waits until the second plan
    has started generating, which could never happen if recording ran inline (the baselines are recorded
    before any plan runs: the plans read them). The items are the inline
    sweep's, and a cancel while a batch generates still records every batch generated before it."""
    import threading

    from dit_explore.engine import sweep as sweeps

    args = ["tiny-flux", "skip-each", "--steps", "2", "--prompt", "p", "--device", "cpu"]
    assert sweep_cli(*args, "--out", str(tmp_path / "inline")) == 0
    inline = json.loads((tmp_path / "inline" / "results.json").read_text())["rows"]

    second_started, threads, waited = threading.Event(), set(), []
    real_generate, real_record = sweeps.Sweep._generate, sweeps.Sweep._record
    generated: list[int] = []

    def generate(self: sweeps.Sweep, batch: sweeps.Batch) -> object:
        generated.append(batch.plan)
        if len(generated) == 3:  # the baseline, the first plan, the second plan
            second_started.set()
        return real_generate(self, batch)

    def record(self: sweeps.Sweep, batch: sweeps.Batch, result: object, error: object) -> object:
        threads.add(threading.current_thread().name)
        if batch.plan == 1:
            waited.append(second_started.wait(timeout=60))
        return real_record(self, batch, result, error)

    monkeypatch.setattr(sweeps, "overlaps", lambda device: True)
    monkeypatch.setattr(sweeps.Sweep, "_generate", generate)
    monkeypatch.setattr(sweeps.Sweep, "_record", record)
    assert sweep_cli(*args, "--out", str(tmp_path / "overlapped")) == 0
    assert waited == [True] and all(name.startswith("sweep-record") for name in threads), (waited, threads)
    rows = json.loads((tmp_path / "overlapped" / "results.json").read_text())["rows"]
    assert [r["key"] for r in rows] == [r["key"] for r in inline]
    for a, b in zip(rows, inline):
        assert (a["mad"], a["ssim"], a["psnr"]) == (b["mad"], b["ssim"], b["psnr"])
        png = (tmp_path / "overlapped" / a["image"]).read_bytes()
        assert png == (tmp_path / "inline" / b["image"]).read_bytes()
        assert a["sha256"] == b["sha256"] == hashlib.sha256(png).hexdigest()  # the row names its image's bytes

    # A cancel raised while the fourth batch generates: the three before it are all recorded.
    generated.clear()

    def cancelling(self: sweeps.Sweep, batch: sweeps.Batch) -> object:
        generated.append(batch.plan)
        if len(generated) == 4:
            raise KeyboardInterrupt
        return real_generate(self, batch)

    monkeypatch.setattr(sweeps.Sweep, "_generate", cancelling)
    monkeypatch.setattr(sweeps.Sweep, "_record", real_record)
    out = tmp_path / "cancelled"
    assert sweep_cli(*args, "--out", str(out)) != 0
    lines = [json.loads(line) for line in (out / ITEMS).read_text().splitlines()]
    assert len(lines) == 3 and all((out / row["image"]).is_file() for row in lines)


@pytest.mark.gpu
def test_on_a_gpu_recording_on_its_own_stream_gives_the_inline_items(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA (overlap on, metrics on the recording stream, warmed first) the rows are those of a sweep
    recorded inline on the default stream: the same images, the same metrics to 1e-9."""
    from dit_explore.engine import sweep as sweeps

    args = ["toy-flux", "skip-each", "--steps", "4", "--prompt", "a small red circle at the top", "--device", "cuda"]
    assert sweep_cli(*args, "--out", str(tmp_path / "overlapped")) == 0
    monkeypatch.setattr(sweeps, "overlaps", lambda device: False)
    assert sweep_cli(*args, "--out", str(tmp_path / "inline")) == 0
    rows, inline = (json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("overlapped", "inline"))
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in inline]
    for a, b in zip(rows, inline):
        for metric in ("ssim", "psnr", "haarpsi", "fsim", "mad"):
            assert (a[metric] is None and b[metric] is None) or a[metric] == pytest.approx(b[metric], abs=1e-9)
