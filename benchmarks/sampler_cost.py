"""CPU cost of the system-metrics sampler (``coordinator/client/system.py``, issue 13 item 1).

Run from the repository root::

    python -m benchmarks.sampler_cost --quick     # about 10 s
    python -m benchmarks.sampler_cost             # about 40 s

Two measurements, both CPU time (user + system), not wall time:

* **one sample** — the probes of a rank (``process``: psutil's process reading, the torch
  allocator reading when torch is imported) and of a node's local rank 0 (``+ node``: CPU, memory,
  disk and network counters, NVML when installed), read back to back on this thread and timed
  with ``time.thread_time`` (median and p99 over ``--samples`` readings, after 5 warm-up ones);
* **the thread** — a real run (``mode="async"``, an aggregator process) with the sampler at 1 s
  left alone for ``--seconds``: the sampler thread's CPU by its own ``time.thread_time`` and by
  psutil's per-thread counters, per sample (reading and ``log()``) and as a share of one core.
  Every sample is read back: ``system/process/rss_mb`` holds one point per sample on rank 0.

Prints a markdown table; ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import coordinator
from coordinator.client import system

__all__ = ["main", "markdown", "measure"]


def _sample_cpu(node: bool, n: int) -> dict[str, float]:
    """Median and p99 CPU seconds of one reading of every probe (this thread)."""
    probes, nvml = system.open_probes(node)
    sampler = system.SystemSampler(lambda *a, **k: None, rank=0, interval_s=1.0, node=node)
    try:
        for _ in range(5):
            sampler.sample_values(probes)
        xs: list[float] = []
        for _ in range(n):
            t0 = time.thread_time()
            sampler.sample_values(probes)
            xs.append(time.thread_time() - t0)
    finally:
        if nvml is not None:
            nvml.close()
    if sampler.errors:
        raise RuntimeError(f"probes failed while measured: {sampler.errors}")
    xs.sort()
    return {"median_s": statistics.median(xs), "p99_s": xs[min(len(xs) - 1, int(0.99 * len(xs)))], "n": n}


def _thread_cpu(seconds: float, root: Path) -> dict[str, Any]:
    """A real run with the sampler at 1 s for ``seconds``: its thread's CPU, checked against the store."""
    settings = coordinator.Settings(dir=str(root), system_metrics_interval_s=1.0, close_timeout_s=60)
    run = coordinator.init_run(project="bench", name="sampler-cost", mode="async", settings=settings)
    try:
        sampler = run._life.sampler
        if sampler is None or sampler.native_id is None:
            raise RuntimeError("the run started no sampler thread")
        me = psutil.Process()
        t_wall = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t_wall
        by_psutil = next((t.user_time + t.system_time for t in me.threads() if t.id == sampler.native_id), None)
        samples, by_thread_time, errors = sampler.samples, sampler.cpu_s, dict(sampler.errors)
        opening = sampler.open_cpu_s
        run.wait(60)
        stored = len(run["system/process/rss_mb"].fetch_values(rank=0))
    finally:
        run.stop()
    problems = []
    if errors:
        problems.append(f"sampler errors: {errors}")
    if stored < samples:
        problems.append(f"{samples} samples logged, {stored} stored")
    return {
        "seconds": wall,
        "samples": samples,
        "stored": stored,
        "cpu_s_thread_time": by_thread_time,
        "cpu_s_psutil": by_psutil,
        "open_cpu_s": opening,
        "cpu_per_sample_s": (by_thread_time - opening) / samples if samples else None,
        "core_share": by_thread_time / wall,
        "problems": problems,
    }


def measure(quick: bool, samples: int | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Every figure of the table (see the module doc)."""
    n = samples or (200 if quick else 2000)
    secs = seconds or (5.0 if quick else 30.0)
    with tempfile.TemporaryDirectory(prefix="sampler-bench-") as tmp:
        res: dict[str, Any] = {
            "process": _sample_cpu(False, n),
            "node": _sample_cpu(True, n),
            "thread": _thread_cpu(secs, Path(tmp)),
        }
    res["problems"] = res["thread"]["problems"]
    res["torch_imported"] = "torch" in sys.modules
    return res


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e6:,.0f} µs"


def markdown(res: dict[str, Any]) -> str:
    """The figures as a small markdown table."""
    th = res["thread"]
    pr, nd = res["process"], res["node"]
    psutil_ms = "-" if th["cpu_s_psutil"] is None else f"{th['cpu_s_psutil'] * 1e3:.0f} ms"
    rows = [
        ("one sample, a rank (process probes)", f"median {_us(pr['median_s'])}, p99 {_us(pr['p99_s'])}"),
        ("one sample, a node's local rank 0 (+ node probes)", f"median {_us(nd['median_s'])}, p99 {_us(nd['p99_s'])}"),
        (
            f"sampler thread at 1 s for {th['seconds']:.1f} s: {th['samples']} samples",
            f"{th['cpu_s_thread_time'] * 1e3:.1f} ms CPU (thread_time; psutil, 10 ms ticks: {psutil_ms})",
        ),
        ("of which opening the probes (once)", _us(th["open_cpu_s"])),
        ("CPU per sample in the thread (probes + `log()`)", _us(th["cpu_per_sample_s"])),
        ("share of one core at 1 s", f"{th['core_share'] * 100:.3f} %"),
    ]
    out = ["| sampler cost | measured |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]
    for p in res["problems"]:
        out.append(f"\nPROBLEM: {p}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; 1 if a sample was lost or a probe failed."""
    p = argparse.ArgumentParser(prog="benchmarks.sampler_cost", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 readings, 5 s of the thread (CI size)")
    p.add_argument("--samples", type=int, default=None, help="readings per probe set")
    p.add_argument("--seconds", type=float, default=None, help="how long the thread is measured")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = measure(a.quick, a.samples, a.seconds)
    print(markdown(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
