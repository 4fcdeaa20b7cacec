"""Durable throughput: one trial of N rank processes (``trial``, ``_worker``) and the suite's sections 2-3.

A trial: N real rank processes (this module's ``_worker`` sub-command), each calling
``coordinator.init_run(project="bench", settings=Settings(rank=r, world_size=N, dir=...))``; after every rank is
ready, the parent sends one common start time, every rank logs P points as fast as it can in
``log()`` calls of K keys each, then calls ``run.wait()``. The clock runs from the common
start time until the last rank's ``wait()`` returned (every point committed to the run's
SQLite store and acknowledged); points/s = N * P / elapsed. Then every rank's series of every
key, and the reduced main series, is read back through ``init_run(with_id=...,
mode="read-only")`` and compared point by point (each step exactly once, each value as
logged); any difference is a problem of the trial. Client RSS (psutil, every rank), the
aggregator's peak RSS and its CPU use during the timed window are reported; the aggregator is
found as the child of rank 0 started with ``-m coordinator.aggregator``.

Every child process is reaped with a timeout (killed by pid if it overstays).

``throughput_section`` is section 2 (and 3) of ``python -m benchmarks.run``: trials over ranks
and keys per call, each cell's coordinator trial back to back with the raw PUSH/PULL limit
(``benchmarks.limit``). ``python -m benchmarks.throughput`` is this module's own command line
(``benchmarks.throughput_cli``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, log, med, thread_cpu
from benchmarks.profiling import pyspy_start, stop_recorder
from benchmarks.workers import Worker, emit, wait_go
from coordinator.aggregator.counters import PROBLEMS

__all__ = ["throughput_section", "trial", "worker_main"]

# =============================================================================== worker (one rank)


def worker_main(argv: list[str]) -> int:
    """``_worker '<json>'``: one rank of a throughput trial, driven over stdin/stdout."""
    cfg = json.loads(argv[0])
    import psutil

    import coordinator

    rank, world, k, points = cfg["rank"], cfg["world"], cfg["keys"], cfg["points"]
    proc = psutil.Process()
    t0 = time.monotonic()
    extra = {"backpressure": cfg["backpressure"]} if cfg.get("backpressure") else {}
    # No system sampler: a trial counts and reads back the points it logged, and one that ran
    # past the sampler's 10 s (8 ranks in a slow hour) failed on the system/* points in its store
    # and in its acked count (the sampler's cost is benchmarks.sampler_cost's to measure).
    settings = coordinator.Settings(
        rank=rank, world_size=world, dir=str(cfg["dir"]), system_metrics_interval_s=0, **extra
    )
    run = coordinator.init_run(project="bench", name=cfg["name"], settings=settings)
    init_s = time.monotonic() - t0
    sender = getattr(run, "_sender", None)
    tid = getattr(sender, "native_id", None)
    keys = [f"m{j:03d}" for j in range(k)]
    steps = points // k
    emit("READY", {"run_id": run.id, "pid": os.getpid(), "init_s": init_s, "rss": proc.memory_info().rss})
    if wait_go() is None:
        run.stop(60)
        return 2
    cpu0 = proc.cpu_times()
    scpu0 = thread_cpu(proc, tid)
    off = float(rank)
    if k == 1:
        key = keys[0]
        for s in range(steps):
            run.log({key: s * 8.0 + off}, step=s)
    else:
        fromkeys = dict.fromkeys
        for s in range(steps):
            run.log(fromkeys(keys, s * 8.0 + off), step=s)
    t_logged = time.monotonic()
    run.wait(cfg["wait_timeout"])
    t_end = time.monotonic()
    cpu1 = proc.cpu_times()
    scpu1 = thread_cpu(proc, tid)
    emit(
        "DONE",
        {
            "t_logged": t_logged,
            "t_end": t_end,
            "rss": proc.memory_info().rss,
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "sender_cpu_s": None if scpu0 is None or scpu1 is None else scpu1 - scpu0,
            "stats": run.stats(),
        },
    )
    sys.stdin.readline()  # "STOP" (or EOF: the parent is gone; stop anyway)
    t0 = time.monotonic()
    run.stop(cfg["wait_timeout"])
    emit("STOPPED", {"stop_s": time.monotonic() - t0})
    return 0


# =============================================================================== trial (parent side)


class _Sampler(threading.Thread):
    """Samples RSS of the given processes every ``interval`` s; keeps the peaks."""

    def __init__(self, procs: dict[str, Any], interval: float = 0.1) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.procs = procs
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        import psutil

        for name, p in self.procs.items():
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss
                self.peak[name] = max(self.peak.get(name, 0), rss)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)
        self.sample()


def _busy(c: Any) -> float:
    """Busy CPU seconds of a psutil ``cpu_times`` (idle, iowait and steal left out)."""
    return float(sum(getattr(c, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq")))


def _cpu_snapshot(procs: dict[str, Any]) -> tuple[float, Any, float]:
    """(monotonic time, system-wide cpu_times, CPU seconds of this script and its processes so far)."""
    import psutil

    ours = _busy(psutil.Process().cpu_times())
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            c = p.cpu_times()
            ours += c.user + c.system
    return time.monotonic(), psutil.cpu_times(), ours


def _other_load(a: tuple[float, Any, float], b: tuple[float, Any, float]) -> tuple[float, float]:
    """Cores used by other processes of the machine between two snapshots, and cores stolen (VM)."""
    wall = max(1e-9, b[0] - a[0])
    other = (_busy(b[1]) - _busy(a[1])) - (b[2] - a[2])
    steal = getattr(b[1], "steal", 0.0) - getattr(a[1], "steal", 0.0)
    return max(0.0, other) / wall, max(0.0, steal) / wall


def _find_aggregator(rank0_pid: int, deadline: float) -> Any:
    """The psutil process of the aggregator that rank 0's ``init_run`` started (None if not found in time)."""
    import psutil

    while time.monotonic() < deadline:
        try:
            for p in psutil.Process(rank0_pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "coordinator.aggregator" in p.cmdline():  # python -m coordinator.aggregator
                        return p
        except psutil.Error:
            return None
        time.sleep(0.05)
    return None


def _verify(store: Path, run_id: str, world: int, keys: list[str], steps: int) -> tuple[list[str], dict[str, Any]]:
    """Read every series back; returns (problems, run report)."""
    import coordinator
    from coordinator.journal.store import LocalStore, run_dir

    problems: list[str] = []
    ro = coordinator.init_run(with_id=run_id, mode="read-only", settings=coordinator.Settings(dir=str(store)))
    try:
        for key in keys:
            for r in range(world):
                got = ro[key].fetch_values(rank=r)
                if len(got) != steps:
                    problems.append(f"{key} rank {r}: {len(got)} points, expected {steps}")
                    continue
                expected = [(s, s * 8.0 + r) for s in range(steps)]
                if got != expected:
                    bad = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
                    dup = sum(c - 1 for c in Counter(s for s, _ in got).values())
                    problems.append(
                        f"{key} rank {r}: point {bad} is {got[bad]}, expected {expected[bad]} ({dup} duplicate steps)"
                    )
            main = ro[key].fetch_values()
            mean_off = (world - 1) / 2
            if main != [(s, s * 8.0 + mean_off) for s in range(steps)]:
                problems.append(f"{key} main series: {len(main)} points, expected {steps} means")
    finally:
        ro.stop()
    st = LocalStore(run_dir(store, run_id) / "run.db", readonly=True)
    try:
        info = st.run_info()
        summary = {s["key"]: s["per_rank"] for s in st.series_summary()}
    finally:
        st.close()
    for key in keys:
        per_rank = summary.get(key, {})
        if per_rank != {r: steps for r in range(world)}:
            problems.append(f"{key}: series_summary per-rank counts {per_rank}, expected {steps} each")
    extra = set(summary) - set(keys)
    if extra:
        problems.append(f"unexpected keys in the store: {sorted(extra)[:5]}")
    if info.state != "finished":
        problems.append(f"run state {info.state!r}: {(info.report or {}).get('reasons')}")
    rep = info.report or {}
    for c in PROBLEMS:
        if rep.get(c):
            problems.append(f"aggregator report: {c}={rep[c]}")
    return problems, rep


def trial(
    world: int,
    k: int,
    points: int,
    tmp: Path,
    label: str,
    profile_dir: Path | None = None,
    backpressure: str | None = None,
) -> dict[str, Any]:
    """One trial: ``world`` ranks logging ``points`` each in calls of ``k`` keys, then verified.

    ``backpressure``: passed to ``init_run`` when given (else the library's default).
    """
    trial_dir = tmp / label
    trial_dir.mkdir(parents=True)
    store = trial_dir / "store"
    env = child_env(trial_dir)
    steps = points // k
    points = steps * k
    wait_timeout = 60.0 + world * points / 20_000
    workers: list[Worker] = []
    res: dict[str, Any] = {
        "world": world,
        "k": k,
        "points_per_rank": points,
        "total": world * points,
        "label": label,
        "problems": [],
    }
    sampler: _Sampler | None = None
    spies: list[subprocess.Popen[bytes] | None] = []
    import psutil

    try:
        for r in range(world):
            cfg = {
                "rank": r,
                "world": world,
                "keys": k,
                "points": points,
                "dir": str(store),
                "name": label,
                "wait_timeout": wait_timeout,
                "backpressure": backpressure,
            }
            workers.append(Worker(cfg, env, trial_dir / f"rank{r}.stderr"))
        deadline = time.monotonic() + 120
        ready = [w.expect("READY", deadline) for w in workers]
        run_ids = {x["run_id"] for x in ready}
        if len(run_ids) != 1:
            raise RuntimeError(f"ranks joined different runs: {run_ids}")
        run_id = run_ids.pop()
        agg = _find_aggregator(workers[0].proc.pid, time.monotonic() + 5)
        procs = {f"rank{w.rank}": psutil.Process(w.proc.pid) for w in workers}
        if agg is not None:
            procs["aggregator"] = agg
        sampler = _Sampler(procs)
        sampler.start()
        if profile_dir is not None:
            if agg is not None:
                spies.append(pyspy_start(agg.pid, profile_dir / f"{label}-aggregator.txt", threads=False))
            spies.append(pyspy_start(workers[0].proc.pid, profile_dir / f"{label}-rank0.txt", threads=True))
            time.sleep(1.0)  # let py-spy attach
        agg_cpu0 = agg.cpu_times() if agg is not None else None
        load0 = _cpu_snapshot(procs)
        t_start = time.monotonic() + 0.3
        for w in workers:
            w.send(f"GO {t_start!r}")
        deadline = time.monotonic() + wait_timeout + 30
        done = [w.expect("DONE", deadline) for w in workers]
        t_all = max(d["t_end"] for d in done)
        agg_cpu1 = agg.cpu_times() if agg is not None else None
        other, steal = _other_load(load0, _cpu_snapshot(procs))
        agg_rss_end = None
        if agg is not None:
            with contextlib.suppress(psutil.Error):
                agg_rss_end = agg.memory_info().rss
        for p in spies:
            stop_recorder(p)
        spies = []
        sampler.stop()
        elapsed = t_all - t_start
        res.update(
            run_id=run_id,
            elapsed=elapsed,
            pps=world * points / elapsed,
            log_phase=max(d["t_logged"] for d in done) - t_start,
            init_s=max(x["init_s"] for x in ready),
            client_rss_ready=max(x["rss"] for x in ready),
            client_rss_end=[d["rss"] for d in done],
            client_rss_peak=max(sampler.peak.get(f"rank{w.rank}", 0) for w in workers),
            client_cpu=[d["cpu_s"] for d in done],
            sender_cpu=[d["sender_cpu_s"] for d in done],
            agg_pid=None if agg is None else agg.pid,
            agg_rss_peak=sampler.peak.get("aggregator"),
            agg_rss_end=agg_rss_end,
            agg_cpu=None
            if agg_cpu0 is None or agg_cpu1 is None
            else (agg_cpu1.user + agg_cpu1.system) - (agg_cpu0.user + agg_cpu0.system),
            other_load=other,
            steal=steal,
        )
        for d in done:
            st = d["stats"]
            if st["acked"] != points or st["pending"] or st["lost"] or st.get("dropped"):
                res["problems"].append(f"client stats after wait(): {st}")
        for w in workers:
            w.send("STOP")
        deadline = time.monotonic() + 120
        stops = [w.expect("STOPPED", deadline) for w in workers]
        res["stop_s"] = max(s["stop_s"] for s in stops)
    except Exception as e:  # reported and turned into a non-zero exit by main()
        res["problems"].append(f"trial failed: {type(e).__name__}: {e}")
    finally:
        for p in spies:
            stop_recorder(p)
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        for w in workers:
            code = w.close(60)
            if code != 0:
                res["problems"].append(f"rank {w.rank} exit code {code}: {w.stderr_tail(600)}")
    if "run_id" in res:  # also after a failure: what did reach the store?
        t0 = time.monotonic()
        try:
            problems, rep = _verify(store, res["run_id"], world, [f"m{j:03d}" for j in range(k)], steps)
        except Exception as e:
            problems, rep = [f"verification could not read the store: {type(e).__name__}: {e}"], {}
        res["problems"] += problems
        res["verify_s"] = time.monotonic() - t0
        res["agg_report"] = {c: rep.get(c) for c in ("batches", "points", "main_points", "duplicate_batches")}
    agg_log = trial_dir / "aggregator.log"
    if agg_log.exists():
        lines = agg_log.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln]
        if bad:
            res["agg_warnings"] = bad[:5]
        if res["problems"]:
            res["problems"].append("aggregator log ends with:\n" + "\n".join(ln[:300] for ln in lines[-25:]))
    res["ok"] = not res["problems"]
    return res


def throughput_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    """Sections 2 and 3 of the suite: per (ranks, keys per call) cell, medians of the trials and of the limit."""
    from benchmarks.limit import limit_trial

    if quick:
        cells = [(1, 100), (4, 100), (4, 1)]
        points = {100: 400_000, 10: 400_000, 1: 200_000}
    else:
        cells = [(w, k) for k in (100, 10, 1) for w in (1, 2, 4, 8)]
        points = {100: 1_000_000, 10: 1_000_000, 1: 300_000}
    limit_points = 2_000_000 if quick else 5_000_000
    trials: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    inline: list[dict[str, Any]] = []
    for rep in range(repeats):
        for world, k in cells:  # interleaved: a cell's coordinator and limit trials run back to back
            label = f"tp-n{world}-k{k}-r{rep}"
            log(f"2: {label}: {world} x {points[k]:,} points in calls of {k} keys")
            t = trial(world, k, points[k], tmp, label)
            trials.append(t)
            log(f"   -> {t.get('pps', 0):,.0f} points/s {'ok' if t['ok'] else 'FAILED ' + str(t['problems'][:2])}")
            lab = f"limit-n{world}-k{k}-r{rep}"
            lt = limit_trial(world, k, max(points[k], limit_points), tmp, lab)
            limits.append(lt)
            log(f"3: {lab}: raw PUSH/PULL {lt.get('pps', 0):,.0f} points/s {'ok' if lt['ok'] else lt['problems']}")
            lt = limit_trial(world, k, points[k], tmp, lab + "-inline", inline=True)
            inline.append(lt)
            log(
                f"3: {lab}-inline: PUSH/PULL encoding in the loop {lt.get('pps', 0):,.0f} points/s "
                f"{'ok' if lt['ok'] else lt['problems']}"
            )
    cells_out = []
    for world, k in cells:
        ts = [t for t in trials if t["world"] == world and t["k"] == k]
        ls = [t for t in limits if t["world"] == world and t["k"] == k]
        good = [t for t in ts if t.get("pps") and t["ok"]]
        lgood = [t for t in ls if t.get("pps") and t["ok"]]
        c: dict[str, Any] = {
            "world": world,
            "k": k,
            "repeats": len(ts),
            "ok": all(t["ok"] for t in ts),
            "points_per_rank": ts[0]["points_per_rank"] if ts else None,
        }
        if good:
            c.update(
                pps=med([t["pps"] for t in good]),
                pps_all=[round(t["pps"]) for t in good],
                elapsed=med([t["elapsed"] for t in good]),
                log_phase=med([t["log_phase"] for t in good]),
                agg_cpu_share=med([t["agg_cpu"] / t["elapsed"] for t in good if t.get("agg_cpu") is not None]),
                agg_rss_peak=max((t.get("agg_rss_peak") or 0) for t in good),
                client_rss_peak=max((t.get("client_rss_peak") or 0) for t in good),
                client_rss_end=max(max(t["client_rss_end"]) for t in good),
                client_cpu=med([max(t["client_cpu"]) for t in good]),
                sender_cpu=med([max(s or 0.0 for s in t["sender_cpu"]) for t in good]),
                other_load=med([t["other_load"] for t in good]),
            )
        if lgood:
            c.update(
                limit_pps=med([t["pps"] for t in lgood]),
                limit_all=[round(t["pps"]) for t in lgood],
                limit_points_per_rank=lgood[0]["points_per_rank"],
                batch_bytes=lgood[0].get("batch_bytes"),
            )
        igood = [t for t in inline if t["world"] == world and t["k"] == k and t.get("pps") and t["ok"]]
        if igood:
            c["inline_pps"] = med([t["pps"] for t in igood])
        if good and lgood:
            c["fraction"] = c["pps"] / c["limit_pps"]
        if good and igood:
            c["fraction_inline"] = c["pps"] / c["inline_pps"]
        cells_out.append(c)
    return {"cells": cells_out, "trials": trials, "limits": limits + inline}


if __name__ == "__main__":
    # Workers are started as ``python -m benchmarks.throughput _worker '<json>'``; anything else is
    # the command line, which lives in its own module (report and argument parsing).
    if sys.argv[1:2] == ["_worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    from benchmarks.throughput_cli import main

    sys.exit(main())
