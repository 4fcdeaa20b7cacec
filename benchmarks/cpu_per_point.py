"""Section 7, CPU per logged point: every process of a paced 4-rank job, from ``/proc``, minus the same loop unlogged.

Launched by ``cpu_section`` (``benchmarks.run``, section ``cpu``) as::

    python -m torch.distributed.run --standalone --nproc_per_node=4 -m benchmarks.cpu_per_point \\
        --out RESULT.json --seconds 10 --repeats 5 --also-socket

The job (gloo, CPU) runs blocks of two variants, interleaved (``none``, ``coordinator``,
``coordinator``, ``none``, ...: drift of the shared machine hits both alike), after one warm-up
block. ``coordinator`` runs at the library's default (rings: each rank's rows go into its ring,
which the aggregator reads), or over the socket with ``--socket`` (``rings=False``: every point
through the rank's buffer and its sender thread over ZeroMQ). With ``--also-socket`` a third
variant, ``socket`` (``coordinator`` with ``rings=False``), runs in the same rotation (``none``,
``coordinator``, ``socket``, then ``socket``, ``coordinator``, ``none``), so that the default and
the socket path are compared within one job. Each block: set up (``init_run`` on every
rank, but for ``none``), one second of paced steps (start-up excluded), ``barrier``, rank 0 reads
the CPU time (user + system, every thread) of every process of the job from ``/proc`` — torchrun's
agent (the ranks' parent), every rank, and every descendant (the aggregator that rank 0's
``init_run`` started, anything else we start) —, ``--seconds`` of paced steps at 50 steps/s,
``barrier``, rank 0 reads them again, then tear-down (shutdown excluded). A step is a tiny DDP step
(so the collective and the training thread are real but cheap: the figure is about logging, not the
model) and, for ``coordinator`` and ``socket``, one ``run.log(<100-key dict>, step=s)`` per rank (with
``--scalars N``, then N ``run.log({key: x}, step=s)`` and N ``run[key].append(x, step=s)`` of other keys: the
suite's realistic step at 10, whose rows fill a ring with records of two sizes a step). With ``--epoch N`` the
dict's last key is ``epoch`` and every Nth step a validation dict ``{val/loss, val/acc, epoch}`` follows it, as
Lightning and transformers log them (two dicts that share a key).

CPU per point = (CPU-seconds per second of the job with logging - the same without) x the
window's length / the points logged in it (4 ranks x 100 keys x steps); the figure is the median
over repeats of each ``coordinator`` block against the median rate of the ``none`` blocks.
The per-process split (agent, ranks, aggregator) is reported the same way.

That difference is a small figure (about 0.02 core-seconds a second) taken from two large ones
(about 0.5), which swing by more than it between repeats. The job also reads what logging costs
directly, in the same windows: the aggregator's CPU (its threads' ``schedstat``, in
nanoseconds), the CPU of the threads coordinator runs in each rank (its Python threads, named
``coordinator-...``, and pyzmq's ``ZMQbg/...``, per thread from ``/proc/self/task``) and each
rank's training-thread CPU inside its ``log()`` calls (``time.thread_time_ns`` around each
call). That sum leaves out what logging costs the training thread outside the calls (caches, GIL
waits, a vCPU woken more often): the whole-job figure minus it is that share, as far as the
noise lets it show.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, exit_without_teardown, log, med, median_interval, run_job, task_cpu_s
from benchmarks.profiling import pyspy_start, stop_recorder

__all__ = [
    "N_KEYS",
    "RATE",
    "block_settings",
    "cpu_section",
    "job_cpu",
    "main",
    "own_threads_cpu",
    "threads_cpu",
    "used",
]

N_KEYS = 100
RATE = 50.0
"""Steps per second of the paced loop."""


def job_cpu(root_pid: int) -> dict[int, tuple[str, float]]:
    """``pid -> (role, CPU seconds)`` of ``root_pid`` and every descendant (user + system of all threads).

    The role is ``agent`` for ``root_pid``, ``aggregator`` for the coordinator's aggregator
    process, ``rank`` for torchrun's workers, ``other`` for anything else.
    """
    import psutil

    root = psutil.Process(root_pid)
    out: dict[int, tuple[str, float]] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            if p.pid == root_pid:
                role = "agent"
            else:
                cmd = " ".join(p.cmdline())
                role = (
                    "aggregator"
                    if "coordinator.aggregator" in cmd
                    else "rank"
                    if "benchmarks.cpu_per_point" in cmd
                    else "other"
                )
            out[p.pid] = (role, t.user + t.system)
        except psutil.Error:
            continue  # gone between the listing and the read: not part of a steady window
    return out


def threads_cpu(pid: int | str = "self", only: Callable[[int, str], bool] | None = None) -> dict[int, float]:
    """``tid -> CPU seconds`` of the threads of process ``pid`` (those ``only(tid, kernel name)`` keeps).

    Per thread from ``schedstat`` (nanoseconds), where a process's own figures count 10 ms ticks:
    about 0.2 s of an aggregator's CPU in a 10 s window is then read to 5%.
    """
    task = Path(f"/proc/{pid}/task")
    out: dict[int, float] = {}
    try:
        tids = os.listdir(task)
    except FileNotFoundError:
        return out  # the process is gone
    for tid in tids:
        try:
            if only is None or only(int(tid), (task / tid / "comm").read_text().strip()):
                out[int(tid)] = task_cpu_s(task / tid)
        except FileNotFoundError:
            continue  # ended between the listing and the read
    return out


def own_threads_cpu() -> dict[int, float]:
    """``tid -> CPU seconds`` of the threads coordinator runs in this process.

    Its Python threads are named ``coordinator-...`` (the sender, the system sampler, ...); pyzmq's
    I/O and reaper threads are ``ZMQbg/...`` to the kernel. Nothing else in the job uses ZeroMQ.
    """
    ours = {t.native_id for t in threading.enumerate() if t.name.startswith("coordinator")}
    return threads_cpu("self", lambda tid, comm: tid in ours or comm.startswith("ZMQbg"))


def used(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU seconds between two readings of :func:`threads_cpu` (a thread that started between them: all of its)."""
    return sum(c - a.get(tid, 0.0) for tid, c in b.items())


def block_settings(variant: str, flush_interval: float | None = None, socket: bool = False) -> dict[str, Any]:
    """The ``Settings`` fields a logged block of ``variant`` (``coordinator`` or ``socket``) sets beyond the job's own.

    A ``socket`` block, and every block with ``socket`` (``--socket``), sends every point over the socket
    (``rings=False``); a ``coordinator`` block otherwise leaves ``rings`` to the library's default and the
    environment, as a user's run does. ``flush_interval``: ``--flush-interval`` (the socket path's).

    Raises:
        ValueError: not a logged variant (a typo must not run the default under another name).
    """
    if variant not in ("coordinator", "socket"):
        raise ValueError(f"{variant!r}: not coordinator or socket")
    out: dict[str, Any] = {} if flush_interval is None else {"flush_interval_s": flush_interval}
    if socket or variant == "socket":
        out["rings"] = False
    return out


def _delta(a: dict[int, tuple[str, float]], b: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two readings, over the processes present in both."""
    out: dict[str, float] = {"agent": 0.0, "rank": 0.0, "aggregator": 0.0, "other": 0.0}
    for pid, (role, c1) in b.items():
        if pid in a:
            out[role] += c1 - a[pid][1]
    out["total"] = sum(out.values())
    out["appeared"] = float(len(set(b) - set(a)))
    out["vanished"] = float(len(set(a) - set(b)))
    return out


# ============================================================================ suite section (parent side)


def cpu_section(quick: bool, tmp: Path) -> dict[str, Any]:
    """Section ``cpu`` of the suite: launch this module under torchrun (4 ranks) and summarise its blocks."""
    seconds, repeats = (3.0, 2) if quick else (10.0, 5)
    d = tmp / "cpu"
    d.mkdir()
    out_json = d / "result.json"
    env = child_env(d)
    env.pop("TORCHELASTIC_RUN_ID", None)
    args = ["--seconds", str(seconds), "--repeats", str(repeats), "--also-socket"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    cmd += ["-m", "benchmarks.cpu_per_point", "--out", str(out_json), "--root", str(d), *args]
    res: dict[str, Any] = {
        "seconds": seconds,
        "repeats": repeats,
        "command": "python -m torch.distributed.run --standalone --nproc_per_node=4 -m benchmarks.cpu_per_point "
        + " ".join(args),
        "problems": [],
    }
    log(f"7: CPU per point: 4 ranks x 3 variants x {repeats} repeats x {seconds:g} s at {RATE:g} steps/s")
    code = run_job(cmd, d, env, d / "torchrun.log", 120 + 6 * repeats * (seconds + 10))
    if code != 0 or not out_json.exists():
        tail = (d / "torchrun.log").read_text(errors="replace")[-1500:]
        res["problems"].append(f"torchrun exit code {code}:\n{tail}")
        return res
    raw = json.loads(out_json.read_text())
    res["raw"] = raw
    res.update(summarise(raw))
    if raw["results"].get("socket"):
        res["socket"] = summarise(raw, "socket")
    return res


def summarise(raw: dict[str, Any], variant: str = "coordinator") -> dict[str, Any]:
    """Median CPU per point (total and per role) of the ``variant`` blocks (``coordinator`` or ``socket``) against
    the ``none`` blocks."""
    none, coord = raw["results"]["none"], raw["results"][variant]
    roles = ("total", "rank", "aggregator", "agent", "other")
    base = {r: med([b["cpu"][r] / b["wall_s"] for b in none]) for r in roles}
    per_point: dict[str, list[float]] = {r: [] for r in roles}
    for b in coord:
        for r in roles:
            per_point[r].append((b["cpu"][r] / b["wall_s"] - base[r]) * b["wall_s"] / b["points"] * 1e6)
    # Paired: each repeat's coordinator block against the none block next to it (they ran back to
    # back, so the machine's drift between repeats mostly cancels), with the median's interval.
    paired = [
        (c["cpu"]["total"] / c["wall_s"] - n["cpu"]["total"] / n["wall_s"]) / (c["points"] / c["wall_s"]) * 1e6
        for c, n in zip(coord, none, strict=True)
    ]
    point, lo, hi = median_interval(paired)
    direct: dict[str, Any] = {}
    if coord and all("direct" in b for b in coord):
        # What logging costs measured directly (no baseline): the aggregator, coordinator's threads
        # in the ranks and the training threads' time inside log(), per point of the block.
        parts: dict[str, list[float]] = {"aggregator": [], "rank_threads": [], "log_calls": []}
        for b in coord:
            parts["aggregator"].append(b["direct"].get("aggregator_s", b["cpu"]["aggregator"]) / b["points"] * 1e6)
            parts["rank_threads"].append(b["direct"]["threads_s"] / b["points"] * 1e6)
            parts["log_calls"].append(b["direct"]["log_calls_s"] / b["points"] * 1e6)
        sums = [sum(xs) for xs in zip(*parts.values(), strict=True)]
        direct = {
            "direct_us": med(sums),
            "direct_us_all": [round(x, 3) for x in sums],
            "direct_by_part_us": {k: med(v) for k, v in parts.items()},
        }
    return {
        **direct,
        "us_per_point": med(per_point["total"]),
        "us_per_point_all": [round(x, 3) for x in per_point["total"]],
        "us_paired": point,
        "us_paired_ci": [lo, hi],
        "us_paired_all": [round(x, 3) for x in paired],
        "by_role_us": {r: med(per_point[r]) for r in roles if r != "total"},
        "base_cpu_per_s": base["total"],
        "coord_cpu_per_s": med([b["cpu"]["total"] / b["wall_s"] for b in coord]),
        "points_per_s": med([b["points"] / b["wall_s"] for b in coord]),
        "late": max(b["late"] for b in [*none, *coord]),
    }


# ============================================================================ the job (each rank, under torchrun)


def main(argv: list[str] | None = None) -> int:
    """One rank of the paced job; rank 0 reads ``/proc`` around each window, prints the summary and writes ``--out``."""
    p = argparse.ArgumentParser(prog="benchmarks.cpu_per_point")
    p.add_argument(
        "--out", default=None, help="also write every block's figures here (JSON); rank 0 prints the summary"
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--root", default=None)
    p.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="Settings.flush_interval_s (A/B runs; the socket path's: with --socket, and the socket blocks)",
    )
    p.add_argument("--profile", default=None, help="py-spy the aggregator and rank 0 in the first logged window")
    p.add_argument(
        "--scalars",
        type=int,
        default=0,
        help="after the dict, N scalar log() calls and N append()s a step (the suite's realistic step: 10)",
    )
    p.add_argument(
        "--epoch",
        type=int,
        default=0,
        help="the dict's last key is `epoch`, and every Nth step a validation dict with `epoch` follows it",
    )
    p.add_argument(
        "--socket",
        action="store_true",
        help="the coordinator blocks over the socket (rings=False), not at the library's default (rings)",
    )
    p.add_argument(
        "--also-socket",
        action="store_true",
        help="a third variant, socket: coordinator with rings=False, interleaved",
    )
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import coordinator

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    root = Path(args.root or tempfile.mkdtemp(prefix="cpu-bench-"))
    torch.manual_seed(0)
    model = DDP(nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xb = torch.randn(8, 16, generator=torch.Generator().manual_seed(rank))
    keys = [f"train/m{j:03d}" for j in range(N_KEYS)]
    if args.epoch:
        keys[-1] = "epoch"
    val_every = args.epoch or 0
    scalars = [f"train/s{j:03d}" for j in range(args.scalars)]
    appended = [f"train/a{j:03d}" for j in range(args.scalars)]
    agent = os.getppid()
    period = 1.0 / RATE
    step = 0
    block = 0

    in_log_ns = 0
    val_points = 0

    def paced(run: Any, n: int, t_next: float) -> tuple[float, int]:
        nonlocal step, in_log_ns, val_points
        late = 0
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = model(xb).square().mean()
            loss.backward()
            opt.step()
            if run is not None:
                x = loss.item()
                row = dict(zip(keys, [x + j for j in range(N_KEYS)], strict=True))
                t = time.thread_time_ns()
                run.log(row, step=step)
                for k in scalars:
                    run.log({k: x}, step=step)
                for k in appended:
                    run[k].append(x, step=step)
                if val_every and step % val_every == val_every - 1:
                    run.log({"val/loss": x, "val/acc": 1.0 - x, "epoch": row["epoch"]}, step=step)
                    val_points += 3
                in_log_ns += time.thread_time_ns() - t
            step += 1
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
        return t_next, late

    def run_block(variant: str) -> dict[str, Any]:
        nonlocal block, in_log_ns, val_points
        block += 1
        run = None
        if variant != "none":
            more = block_settings(variant, args.flush_interval, args.socket)
            settings = coordinator.Settings(dir=str(root / "store"), handle_sigterm=False, capture_env=False, **more)
            run = coordinator.init_run(project="bench", name=f"cpu-block{block}", settings=settings)
        dist.barrier()
        paced(run, int(RATE), time.monotonic())  # 1 s: start-up excluded
        dist.barrier()
        a = job_cpu(agent) if rank == 0 else {}
        threads_a, in_log_ns, val_points = own_threads_cpu(), 0, 0
        aggregators = [pid for pid, (role, _) in a.items() if role == "aggregator"]
        agg_a = {pid: threads_cpu(pid) for pid in aggregators}
        spies = []
        if args.profile and run is not None and rank == 0 and block <= 3:
            # Not on the first logged block only by chance: block 2 or 3 is the first "coordinator".
            prof = Path(args.profile)
            spies = [pyspy_start(os.getpid(), prof / "rank0.txt", True)]
            spies += [pyspy_start(pid, prof / "aggregator.txt", False) for pid in aggregators[:1]]
        t0 = time.monotonic()
        n = int(args.seconds * RATE)
        _, late = paced(run, n, time.monotonic())
        dist.barrier()
        wall = time.monotonic() - t0
        b = job_cpu(agent) if rank == 0 else {}
        agg_s = sum(used(agg_a[pid], threads_cpu(pid)) for pid in aggregators)
        mine = [used(threads_a, own_threads_cpu()), in_log_ns / 1e9]
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        for spy in spies:
            stop_recorder(spy)
        if run is not None:
            run.stop(120)
        dist.barrier()
        world = dist.get_world_size()
        direct = {"aggregator_s": agg_s, "threads_s": sum(t for t, _ in every), "log_calls_s": sum(c for _, c in every)}
        points = (n * (N_KEYS + 2 * args.scalars) + val_points) * world if run else 0  # every rank logs the same
        return {"wall_s": wall, "cpu": _delta(a, b), "points": points, "late": late / n, "direct": direct}

    run_block("none")  # warm-up (not recorded)
    variants = ["none", "coordinator", "socket"] if args.also_socket else ["none", "coordinator"]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            results[v].append(run_block(v))
    if rank == 0:
        if args.out:
            Path(args.out).write_text(json.dumps({"seconds": args.seconds, "rate": RATE, "results": results}))
        print(json.dumps(summarise({"results": results}), indent=1))
        if args.also_socket:
            print("socket:", json.dumps(summarise({"results": results}, "socket"), indent=1))
    dist.destroy_process_group()
    if args.root is None:  # this rank's own temporary directory (its spool; rank 0's, the store too)
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
