"""A sweep over several GPUs: one process per GPU, each with its own engine (model), through torch.distributed.

    dit-explore sweep MODEL KIND --out DIR --gpus N          (N processes on this machine)
    torchrun --nproc_per_node N -m dit_explore.engine.sweep_ranks REQUEST.json
    accelerate launch --num_processes N -m dit_explore.engine.sweep_ranks REQUEST.json

`--gpus N` writes the request (REQUEST.json: the command's arguments) and starts N processes with
torch.multiprocessing.spawn; any launcher that sets torch.distributed's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torchrun, `accelerate launch`, also across nodes with their own
flags, e.g. `accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --main_process_port
PORT --num_processes 8 -m dit_explore.engine.sweep_ranks REQUEST.json`, --out on a filesystem every node
shares) can run the module directly. The process group is NCCL's on GPUs (the environment's NCCL settings
are kept as they are), gloo on CPU; its collectives only pass small objects (the batch size, the sweep's
record) and wait at barriers.

How the work is shared (engine/sweep.py): the jobs are whole batches (a plan on up to --batch prompt x seed
columns), formed from the job list alone — the batch size is chosen once, by rank 0, and sent to all — so
every image is the one a single process computes. First the full model's images (the baselines), split by
predicted cost (block executions x steps x images, longest first to the least loaded), then a barrier,
then the plans, split the same way, each measured against the baselines read back from disk. Each process
appends its finished items to DIR/items.rank<R>.jsonl (synced per batch); at the end rank 0 gathers every
items file into results.json/csv, the plot and the contact sheet. `--resume` reads every items file, so a
sweep interrupted on N GPUs continues on any number. Compiled blocks share one compile cache directory
(TORCHINDUCTOR_CACHE_DIR, unless set). DIR/ranks.json records each process's load time, busy time and
items, and the sweep's wall time after loading (what BENCHMARKS.md's scaling figures are made of).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from dit_explore.engine import headless
from dit_explore.engine.core import plan as plans
from dit_explore.engine.core.text import shown
from dit_explore.engine.sweep import REQUEST_JSON

RANKS_JSON = "ranks.json"
BARRIER_TIMEOUT = datetime.timedelta(hours=12)  # the baselines of one process may take long on a big sweep


def request_to_json(req: headless.SweepRequest) -> dict[str, Any]:
    data = dataclasses.asdict(req)
    data["out"] = str(req.out.resolve())
    data["gpus"] = None  # a rank runs its share; it never launches
    return data


def request_from_json(data: dict[str, Any]) -> headless.SweepRequest:
    fields = dict(data)
    fields["out"] = Path(fields["out"])
    for name in ("prompts", "seeds"):
        fields[name] = tuple(fields[name])
    fields["sampling"] = plans.Sampling(**fields["sampling"])
    fields["options"] = headless.ModelOptions(**fields["options"])
    return headless.SweepRequest(**fields)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(req: headless.SweepRequest) -> int:
    """`--gpus N`: N processes on this machine (one per GPU; on `--device cpu`, N CPU processes over gloo, for
    testing), each running `rank_main`; their exit code (2: one line was printed by a rank)."""
    import torch
    import torch.multiprocessing as mp

    assert req.gpus is not None
    n = req.gpus
    cpu = req.options.device == "cpu" or (req.options.device == "auto" and not torch.cuda.is_available())
    if not cpu:
        if req.options.device not in ("auto", "cuda"):
            raise headless.UsageError(f"--gpus {n}: with --device {req.options.device}; use --device cuda (each "
                                      "process takes its own GPU)")
        count = torch.cuda.device_count()
        if n > count:
            raise headless.UsageError(f"--gpus {n}: this machine has {count} CUDA device(s)")
    req.out.mkdir(parents=True, exist_ok=True)
    request = req.out / REQUEST_JSON
    request.write_text(json.dumps(request_to_json(req), indent=1) + "\n", encoding="utf-8")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_compile_cache()))
    headless._say(f"{n} processes ({'CPU, gloo' if cpu else 'one per GPU, NCCL'})…")
    port = _free_port()
    try:
        mp.start_processes(_spawned, args=(n, str(request), port), nprocs=n, join=True, start_method="spawn")
    except mp.ProcessExitedException as exc:
        return 2 if exc.exit_code == 2 else 1
    except mp.ProcessRaisedException as exc:
        headless._say(f"error: a sweep process failed: {str(exc).strip().splitlines()[-1]}")
        return 1
    return 0


def threads_per_process(local_world: int) -> int:
    """CPU threads for each of `local_world` processes on this machine: OMP_NUM_THREADS when set (torchrun
    sets 1), else an equal share of the cores this process may use. torch's default, every core in every
    process, oversubscribes them and the thread pools spin against each other (a 2-process tiny-flux sweep
    on 2 cores ran 11x slower than one process)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return max(1, cores // local_world)


def _compile_cache() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("DIT_EXPLORE_CACHE") or user_cache_dir("dit-explore")) / "inductor"


def _spawned(rank: int, world: int, request: str, port: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    code = rank_main(request)
    if code:
        sys.exit(code)


def rank_main(request_path: str) -> int:
    """One process of a multi-process sweep (torch.distributed's environment variables set by the
    launcher); see the module."""
    try:
        return _rank(request_from_json(json.loads(Path(request_path).read_text(encoding="utf-8"))))
    except headless.UsageError as exc:
        headless._say(f"error: {exc}")
        return 2


def _rank(req: headless.SweepRequest) -> int:
    import torch
    import torch.distributed as dist

    from dit_explore.engine.generate import Generator
    from dit_explore.engine.sweep import Sweep, _claim, _prepare, _report, choose_batch, plan_sweep, split_by_cost

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    cpu = req.options.device == "cpu" or not torch.cuda.is_available()
    if cpu:
        device = "cpu"
        # The processes on this machine (torchrun and accelerate set LOCAL_WORLD_SIZE; --gpus N: all N).
        torch.set_num_threads(threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    else:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT,
                                device_id=torch.device(device))
    # Barriers over gloo: they wait for the slowest process without holding a GPU stream.
    waits = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    try:
        source, settings, prompts, seeds, window, base, _dtype = _prepare(req)
        started = time.perf_counter()
        loaded = headless._load(source, dataclasses.replace(req.options, device=device))
        load_seconds = time.perf_counter() - started
        generator = Generator(loaded, on_warning=lambda message: headless._say(f"[rank {rank}] warning: {message}"))
        columns = [(p, s) for p in prompts for s in seeds]
        shared: list[Any] = [None]
        if rank == 0:  # the middle group's analysis is measured (and cached) once, the record written once
            items, meta = plan_sweep(req.kind, generator, source, settings, window, base, prompts, seeds)
            meta["batch"] = choose_batch(source, settings, loaded, len(columns), req.batch)
            meta["processes"] = world
            _claim(req, meta)
            shared = [(items, meta)]
        dist.broadcast_object_list(shared, src=0, group=waits)
        items, meta = shared[0]
        job = Sweep(req.out, source, generator, items, columns,
                    settings, meta, meta["batch"], items_file=f"items.rank{rank}.jsonl")
        dist.barrier(group=waits)
        began = time.perf_counter()
        busy = 0.0
        for phase in ("baselines", "plans"):
            if phase == "plans":
                dist.barrier(group=waits)
                job.refresh()
            batches = job.baselines() if phase == "baselines" else job.plans()
            share = split_by_cost(batches, world)[rank]
            t = time.perf_counter()
            job.run(share)
            busy += time.perf_counter() - t
            headless._say(f"[rank {rank}] {phase}: {len(share)} of {len(batches)} batches, cost "
                          f"{sum(b.cost for b in share)} of {sum(b.cost for b in batches)}, "
                          f"{time.perf_counter() - t:.1f} s")
        mine = {"rank": rank, "device": device, "load_seconds": load_seconds, "busy_seconds": busy,
                "generate_seconds": job.generate_seconds, "items": job.ran, "batches": job.batch_seconds}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine, group=waits)
        wall = time.perf_counter() - began
        if rank == 0:
            job.refresh()
            from dit_explore.engine.core.runs import write_atomic

            record = {"processes": world, "batch": job.batch, "sweep_seconds": wall, "ranks": gathered}
            write_atomic(req.out / RANKS_JSON, (json.dumps(record, indent=1) + "\n").encode())
            _report(job, sum(g["items"] for g in gathered))
            headless._say(f"{world} process{'es' if world > 1 else ''}: the sweep took {wall:.1f} s after loading "
                          f"(loads {', '.join(format(g['load_seconds'], '.1f') for g in gathered)} s)")
        dist.barrier(group=waits)
        return 0
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        print(f"usage: python -m dit_explore.engine.sweep_ranks REQUEST.json (written by `dit-explore sweep --gpus N` "
              f"into --out as {REQUEST_JSON}); got {' '.join(map(shown, args)) or 'nothing'}", file=sys.stderr)
        return 2
    return rank_main(args[0])


if __name__ == "__main__":
    sys.exit(main())
