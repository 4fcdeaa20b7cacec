"""Section 5, training overhead: a CPU DDP job (gloo, small MLP) timed per step, with and without logging.

Launched by ``ddp_section`` (``benchmarks.run``, section 5) as::

    python -m torch.distributed.run --standalone --nproc_per_node=4 -m benchmarks.ddp_overhead \\
        --out RESULT.json --steps 200 --repeats 5 --variants none,coordinator,...

All variants run inside one launch, in blocks of ``--steps`` steps, interleaved (the order
rotates every repeat so drift of the shared machine hits every variant alike), after one
warm-up block. Every block: set up (open the run / writer), ``barrier``, time each training
step including its logging, ``barrier``, tear down (drain/close: timed separately, not in the
step time). Variants:

* ``none`` — no logging;
* ``coordinator`` — every rank ``run.log(<100 metrics>, step=s)`` every step, at the library's
  default (rings: each row into the rank's ring, read by the aggregator before its commits; no
  sender flushes);
* ``coordinator-socket`` — the same with ``Settings(rings=False)``: every point through the rank's
  buffer and its sender thread over ZeroMQ (the library's default before rings);
* ``coordinator-flush<N>ms`` — ``coordinator-socket`` with ``Settings(flush_interval_s=N / 1000)``
  instead of the default 50 ms (the flush interval is the socket path's: with rings the sender
  does not flush): ``coordinator-flush5ms`` is what waking the sender ten times as often costs
  (5 ms was the default until issue #12's round 6, when this variant measured the other way
  round); ``coordinator-flush200ms`` what a longer kill window buys;
  ``coordinator-flush<N>ms-copies<M>ms`` also sets ``kill_window_s=M / 1000``: the sender copies the
  uncut points every M ms between its flushes (``coordinator-flush500ms-copies50ms``: a 50 ms kill
  window at 500 ms flushes);
* ``coordinator-disabled`` — the same calls on a ``mode="disabled"`` run (``log()`` returns at
  once; no sender, no aggregator): what building the dict and calling ``log()`` cost the step;
* ``coordinator-nolog`` — a live run (sender, aggregator) whose dict is built but never logged:
  what the run's presence costs the step;
* ``peer:<name>`` — rank 0 only logs the same 100 metrics through a peer (TensorBoard,
  W&B offline, MLflow async, trackio, Neptune offline), set up by ``benchmarks.trackers`` as
  in the peer table (section 4);
* any of them with ``+wake5ms`` appended — the same, with a thread on every rank that wakes up
  every 5 ms and does nothing else. On a VM the step time depends on how soon an idle vCPU runs
  again after a rank's wait in gloo, and a thread that wakes often keeps it from idling: on the
  2-core VM ``none+wake5ms`` ran 11-14% faster than ``none``, and ``coordinator-flush5ms`` faster
  than ``none`` too (docs/performance.md, round 11). The ``+wake5ms`` variants, compared with
  ``none+wake5ms``, measure what logging costs with that effect the same for every variant;
* ``allreduce`` — Lightning's ``sync_dist=True`` pattern: one ``all_reduce`` per metric (100
  per step), then rank 0 keeps the means (written to TensorBoard when it is installed);
* ``allreduce-packed`` — the same 100 metrics packed into one tensor, one ``all_reduce``.

``--timeline DIR``: each rank also writes every step's start and end (``time.perf_counter``) to
``DIR/rank<r>.json``, for :mod:`benchmarks.ddp_timeline`, which sets them against the logging's
turns on the CPU.

The metrics are 100 floats derived from the step's loss (``loss.item()`` once, shared by every
logging variant). Step time of a block = the slowest rank's mean (DDP runs at that pace);
each variant's figure is the median over the repeats; slowdown = median / median(none) - 1.
The report also gives the *paired* slowdown: the median over repeats of each repeat's ratio to
that repeat's ``none`` block, with a 95% bootstrap interval (``common.paired_change``): the
machine's drift between repeats mostly cancels in a ratio of blocks run minutes apart at most.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, exit_without_teardown, log, med, paired_change, run_job
from benchmarks.trackers import open_tracker, peer_env

__all__ = ["N_METRICS", "WARM", "coordinator_settings", "ddp_section", "flush_ms", "main", "with_baselines"]

N_METRICS = 100
WARM = "+wake5ms"
"""Suffix of a variant that runs with a thread waking every 5 ms on every rank (its baseline: ``none+wake5ms``)."""
_FLUSH = re.compile(r"coordinator-flush([1-9][0-9]*)ms(?:-copies([1-9][0-9]*)ms)?")


def flush_ms(variant: str) -> int:
    """The flush interval in ms of a ``coordinator-flush<N>ms`` variant (``+wake5ms`` already removed).

    Raises:
        ValueError: not such a variant (a typo must not run the default interval under another name).
    """
    return _flush_match(variant)[0]


def _flush_match(variant: str) -> tuple[int, int | None]:
    """(N, M) of ``coordinator-flush<N>ms`` or ``coordinator-flush<N>ms-copies<M>ms`` (M None without copies).

    Raises:
        ValueError: not such a variant, or copies not more often than the flushes.
    """
    m = _FLUSH.fullmatch(variant)
    if m is None:
        raise ValueError(f"{variant!r} is not coordinator-flush<N>ms[-copies<M>ms] (N, M positive whole numbers of ms)")
    n, copies = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
    if copies is not None and copies >= n:
        raise ValueError(f"{variant!r}: copies every {copies} ms would not come between flushes every {n} ms")
    return n, copies


def coordinator_settings(variant: str) -> dict[str, Any]:
    """The ``Settings`` fields a ``coordinator...`` variant (``+wake5ms`` already removed) sets beyond the bench's own.

    Raises:
        ValueError: a variant of no known kind (a typo must not run the default under another name).
    """
    if variant == "coordinator":
        return {}
    if variant == "coordinator-disabled":
        return {"mode": "disabled"}
    if variant == "coordinator-nolog":
        return {}
    if variant == "coordinator-socket":
        return {"rings": False}
    if variant.startswith("coordinator-flush"):  # the socket path's flush interval: with rings nothing flushes
        n, copies = _flush_match(variant)
        interval: dict[str, Any] = {"rings": False, "flush_interval_s": n / 1000}
        return interval | ({} if copies is None else {"kill_window_s": copies / 1000})
    raise ValueError(
        f"{variant!r}: not coordinator, coordinator-disabled, coordinator-nolog, coordinator-socket or "
        "coordinator-flush<N>ms[-copies<M>ms]"
    )


class _Logger:
    """One variant's logging, set up and torn down around a block."""

    def __init__(self, variant: str, rank: int, world: int, root: Path, block: int) -> None:
        warm = variant.endswith(WARM)
        variant = variant.removesuffix(WARM)
        self.variant, self.rank, self.world, self.root, self.block = variant, rank, world, root, block
        self.keys = [f"train/m{j:03d}" for j in range(N_METRICS)]
        self.obj: Any = None
        self.tb: Any = None
        self.waker: threading.Thread | None = None
        self.stop = threading.Event()
        if warm:  # a thread that only wakes up every 5 ms, next to the variant's logging (module's notes)
            self.waker = threading.Thread(target=self._wake, name="wake5ms", daemon=True)
            self.waker.start()
        if variant.startswith("coordinator"):
            import coordinator

            extra = coordinator_settings(variant)
            self.obj = coordinator.init_run(
                project="bench",
                name=f"ddp-block{block}",
                # Steady-state logging cost: the one-time environment capture at start (git, the
                # package list: ~0.1 s of CPU on rank 0) would overlap these short blocks.
                settings=coordinator.Settings(
                    dir=str(root / "coordinator"), handle_sigterm=False, capture_env=False, **extra
                ),
            )
        elif variant.startswith("peer:") and rank == 0:
            self.obj = open_tracker(
                variant[5:], root, f"block{block}", run_name=f"ddp-block{block}", project="bench-ddp"
            )
        elif variant.startswith("allreduce") and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(root / "tb-allreduce" / f"block{block}"))
            except ImportError:
                self.tb = None

    def _wake(self) -> None:
        while not self.stop.wait(0.005):
            pass

    def log(self, loss: Any, step: int) -> None:
        v = self.variant
        if v == "none":
            return
        x = loss.item()
        if v == "coordinator-nolog":
            dict(zip(self.keys, [x + j for j in range(N_METRICS)], strict=True))  # built, not logged
        elif v.startswith("coordinator"):
            self.obj.log(dict(zip(self.keys, [x + j for j in range(N_METRICS)], strict=True)), step=step)
        elif v.startswith("peer:"):
            if self.obj is not None:
                self.obj.many(dict(zip(self.keys, [x + j for j in range(N_METRICS)], strict=True)), step)
        elif v == "allreduce":
            import torch
            import torch.distributed as dist

            means = []
            for j in range(N_METRICS):  # Lightning: self.log(k, v, sync_dist=True) -> one all_reduce per value
                t = torch.tensor(x + j)
                dist.all_reduce(t)
                means.append(float(t) / self.world)
            if self.rank == 0:
                self._rank0(means, step)
        elif v == "allreduce-packed":
            import torch
            import torch.distributed as dist

            t = torch.tensor([x + j for j in range(N_METRICS)])
            dist.all_reduce(t)
            if self.rank == 0:
                self._rank0((t / self.world).tolist(), step)
        else:
            raise ValueError(v)

    def _rank0(self, values: list[float], step: int) -> None:
        if self.tb is not None:
            for k, val in zip(self.keys, values, strict=True):
                self.tb.add_scalar(k, val, step)

    def close(self) -> None:
        if self.waker is not None:
            self.stop.set()
            self.waker.join(5)
            if self.waker.is_alive():
                raise RuntimeError("the wake5ms thread did not stop within 5 s")
        if self.variant.startswith("coordinator"):
            self.obj.stop()
        elif self.variant.startswith("peer:") and self.obj is not None:
            self.obj.finish()
        if self.tb is not None:
            self.tb.close()


# ============================================================================ suite section 5 (parent side)


def with_baselines(chosen: list[str], peers_available: dict[str, bool]) -> tuple[list[str], list[str]]:
    """``chosen`` with its baselines first (``none``; ``none+wake5ms`` for a ``+wake5ms`` variant),
    once each, less the peers not installed; and those peers' names.

    Raises:
        ValueError: a ``coordinator...`` variant of no known kind (checked before the launch).
    """
    for v in chosen:
        if v.startswith("coordinator"):
            coordinator_settings(v.removesuffix(WARM))
    bases = ["none"] + (["none" + WARM] if any(v.endswith(WARM) for v in chosen) else [])
    peers = {v: v[5:].removesuffix(WARM) for v in chosen if v.startswith("peer:")}
    missing = sorted({p for p in peers.values() if not peers_available.get(p)})
    return list(dict.fromkeys(bases + [v for v in chosen if peers.get(v) not in missing])), missing


def ddp_section(
    quick: bool,
    tmp: Path,
    peers_available: dict[str, bool],
    chosen: list[str] | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Section 5 of the suite: launch this module under torchrun (4 ranks) and summarise its blocks.

    ``chosen``: these variants instead of the section's (``benchmarks.ddp_ab``); ``none``, and
    ``none+wake5ms`` when a ``+wake5ms`` variant is chosen, are added as their baselines, and a
    peer that is not installed is left out. ``size``: (steps, repeats) instead of the section's.
    """
    if chosen is None:
        variants = ["none", "coordinator", "coordinator-socket", "allreduce", "allreduce-packed"]
        if not quick:
            variants.insert(3, "coordinator-flush5ms")
            variants += ["none" + WARM, "coordinator" + WARM, "coordinator-socket" + WARM]
        want = ["tensorboard"] if quick else ["tensorboard", "wandb", "mlflow-async", "trackio", "neptune"]
        missing = [p for p in want if not peers_available.get(p)]
        variants[3:3] = [f"peer:{p}" for p in want if peers_available.get(p)]
    else:
        variants, missing = with_baselines(chosen, peers_available)
    steps, repeats = size if size is not None else (30, 2) if quick else (150, 5)
    d = tmp / "ddp"
    d.mkdir()
    out_json = d / "result.json"
    env = child_env(d)
    env.pop("TORCHELASTIC_RUN_ID", None)
    env.update({"OMP_NUM_THREADS": "1"})
    env.update(peer_env(d))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "benchmarks.ddp_overhead",
        "--out",
        str(out_json),
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
        "--variants",
        ",".join(variants),
        "--root",
        str(d),
    ]
    res: dict[str, Any] = {
        "variants": variants,
        "steps": steps,
        "repeats": repeats,
        "missing": missing,
        "command": "python -m torch.distributed.run --standalone --nproc_per_node=4 -m "
        f"benchmarks.ddp_overhead --steps {steps} --repeats {repeats} --variants " + ",".join(variants),
        "problems": [],
    }
    log(f"5: DDP: 4 ranks x {len(variants)} variants x {repeats} repeats x {steps} steps")
    logf = d / "torchrun.log"
    t0 = time.monotonic()
    code = run_job(cmd, d, env, logf, 120 if quick else 1800)
    res["wall_s"] = time.monotonic() - t0
    if code != 0:
        text = logf.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        # The workers' own messages come first; torchrun's summary names the root-cause rank and signal.
        head = "\n".join(ln[:300] for ln in lines[:12])
        cause = text[text.find("Root Cause") :][:700] if "Root Cause" in text else text[-700:]
        res["problems"].append(
            f"torchrun exit code {code} "
            f"({'after' if out_json.exists() else 'before'} the results were written):\n"
            f"{head}\n...\n{cause}"
        )
    if not out_json.exists():
        return res
    raw = json.loads(out_json.read_text())
    res["raw"] = raw
    rows = []
    for v in variants:
        baseline = "none" + WARM if v.endswith(WARM) else "none"  # both always run (see with_baselines)
        none = [b["mean_s"] for b in raw["results"][baseline]]
        base = med(none)
        bs = raw["results"][v]
        m = med([b["mean_s"] for b in bs])
        paired, lo, hi = paired_change([b["mean_s"] for b in bs], none)
        rows.append(
            {
                "variant": v,
                "baseline": baseline,
                "step_ms": m * 1000,
                "step_ms_all": [round(b["mean_s"] * 1000, 3) for b in bs],
                "median_step_ms": med([b["median_s"] for b in bs]) * 1000,
                "slowdown": m / base - 1,
                "paired": paired,
                "paired_ci": [lo, hi],
                "setup_s": med([b["setup_s"] for b in bs]),
                "close_s": med([b["close_s"] for b in bs]),
            }
        )
    res["rows"] = rows
    return res


# ============================================================================ the job (each rank, under torchrun)


def main(argv: list[str] | None = None) -> int:
    """One rank of the DDP job: every variant's blocks, rank 0 writes the results to ``--out``."""
    p = argparse.ArgumentParser(prog="benchmarks.ddp_overhead")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="none,coordinator,allreduce,allreduce-packed")
    p.add_argument("--root", default=None)
    p.add_argument(
        "--timeline",
        default=None,
        help="a folder: each rank writes every step's start and end there (benchmarks.ddp_timeline)",
    )
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    root = Path(args.root or tempfile.mkdtemp(prefix="ddp-bench-"))
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    xb = torch.randn(64, 256, generator=gen)
    yb = torch.randint(0, 10, (64,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    step = 0
    block = 0
    timeline: list[dict[str, Any]] = []

    def run_block(variant: str) -> dict[str, float]:
        nonlocal step, block
        block += 1
        t0 = time.monotonic()
        lg = _Logger(variant, rank, world, root, block)
        setup_s = time.monotonic() - t0
        dist.barrier()
        times = []
        starts = []
        pc = time.perf_counter
        for _ in range(args.steps):
            t_a = pc()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            lg.log(loss, step)
            times.append(pc() - t_a)
            starts.append(t_a)
            step += 1
        if args.timeline:
            timeline.append({"variant": variant, "starts": starts, "times": times})
        dist.barrier()
        t0 = time.monotonic()
        lg.close()
        close_s = time.monotonic() - t0
        mine = torch.tensor([statistics.fmean(times), statistics.median(times), setup_s, close_s], dtype=torch.float64)
        allr = [torch.zeros(4, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(allr, mine)
        dist.barrier()
        return {
            "mean_s": max(float(t[0]) for t in allr),  # the slowest rank sets the pace
            "median_s": max(float(t[1]) for t in allr),
            "setup_s": max(float(t[2]) for t in allr),
            "close_s": max(float(t[3]) for t in allr),
        }

    run_block("none")  # warm-up (not recorded)
    t_all = time.monotonic()
    for rep in range(args.repeats):
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for v in order:
            results[v].append(run_block(v))
    wall = time.monotonic() - t_all
    if args.timeline:
        from benchmarks.ddp_timeline import dump

        Path(args.timeline, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "blocks": timeline[1:]}))
        dump()  # this rank's sender turns, when the job runs under benchmarks.ddp_timeline
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "world": world,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "wall_s": wall,
                    "results": results,
                    "torch": torch.__version__,
                }
            )
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())  # every result is written and every logger closed by now
