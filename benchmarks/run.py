"""The benchmark suite: coordinator vs the transport limit and vs peer trackers, in one run.

Run from the repository root (``pip install -e '.[torch,bench]'`` for the peers and plots)::

    python -m benchmarks.run --quick    # CI: under 2 minutes on 2 cores; peers mostly skipped
    python -m benchmarks.run --full     # everything (about 20-25 minutes on 2 cores)

Writes ``benchmarks/results/suite-<host>-<date>[-quick].md`` (tables, targets met/missed,
notes), one PNG per section next to it (each stamped with the command, versions and machine),
and the raw numbers as ``.json``. Every figure is a median over repeats made in this run; every
ratio (coordinator / limit, slowdown / no logging) is computed from numbers of this run.

Sections (details in each module's docstring):

1. hot path — ``run.log({"loss": x}, step=s)`` and ``run["loss"].append(x, step=s)`` on the
   training thread at the realistic load (100 metrics per step, 50 steps/s) and at full load;
   mode ``disabled``; the sender thread's CPU share (≈ its GIL share) and its flush slices;
2. throughput vs ranks (1, 2, 4, 8) and keys per call (1, 10, 100), durable, exactly-once
   verified (``benchmarks.throughput.trial``);
3. the limit: raw PUSH/PULL with pre-built 1000-point batches (``benchmarks.limit``);
4. peers (``benchmarks.peers``);
5. training overhead in a CPU DDP job (``benchmarks.ddp_overhead``, under torchrun);
6. scale (64/256/1024 simulated senders) and a soak (``benchmarks.scale``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks import throughput as tp

ROOT = tp.ROOT
RESULTS = tp.RESULTS

# Targets, from the issue ("Benchmarks: prove it is the fastest way to log"). Not to be weakened.
T_REAL_P50_US = 1.0
T_REAL_P99_US = 5.0
T_FULL_P99_US = 50.0
T_LIMIT_FRACTION = 0.5
T_PPS = 1_000_000
T_SLOWDOWN = 0.01
T_RSS_FLAT = 0.10


def _log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _fmt_pps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else tp._mark(ok)


# =============================================================================== 1. hot path


class _SliceTimer:
    """Wraps the sender thread's ``_flush`` (instance attribute; the library is untouched) to time each slice."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender
        self.slices: list[int] = []
        self.cpu_slices: list[int] = []
        orig = sender._flush
        pc = time.perf_counter_ns
        tt = time.thread_time_ns  # CPU time of the calling (sender) thread
        out = self.slices
        cpu = self.cpu_slices

        def timed(now: float) -> None:
            t0 = pc()
            c0 = tt()
            orig(now)
            cpu.append(tt() - c0)
            out.append(pc() - t0)

        sender._flush = timed

    def thread_cpu(self) -> float | None:
        return tp._sender_cpu(_PROC, getattr(self.sender, "native_id", None))


_PROC: Any = None


def _window(run: Any, fn: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``fn()`` with the sender thread's CPU time and flush slices measured around it."""
    st = _SliceTimer(run._sender) if getattr(run, "_sender", None) is not None else None
    c0 = st.thread_cpu() if st else None
    p0 = time.process_time()
    t0 = time.monotonic()
    out = fn()
    wall = time.monotonic() - t0
    c1 = st.thread_cpu() if st else None
    info: dict[str, Any] = {"wall_s": wall, "process_cpu_s": time.process_time() - p0}
    if st is not None and c0 is not None and c1 is not None:
        info["sender_cpu_s"] = c1 - c0
        info["sender_share"] = (c1 - c0) / wall
        sl = sorted(st.slices)
        if sl:
            info["flushes"] = len(sl)
            info["slice_p50_us"] = sl[len(sl) // 2] / 1000
            info["slice_p99_us"] = sl[min(len(sl) - 1, int(len(sl) * 0.99))] / 1000
            info["slice_max_us"] = sl[-1] / 1000
            cs = sorted(st.cpu_slices)
            info["cpu_slice_p50_us"] = cs[len(cs) // 2] / 1000
            info["cpu_slice_p99_us"] = cs[min(len(cs) - 1, int(len(cs) * 0.99))] / 1000
            info["cpu_slice_max_us"] = cs[-1] / 1000
    return out, info


def hot_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    import psutil

    import coordinator

    global _PROC
    _PROC = psutil.Process()
    n_calls = 30_000 if quick else 200_000
    full_s = 1.5 if quick else 5.0
    chunk = 10_000
    seconds = 1.5 if quick else 8.0
    rate = 50.0
    dict_keys = [f"train/metric{i:03d}" for i in range(80)]  # + 10 log() + 10 append() = 100 metrics/step
    log_keys = [f"train/scalar_log{i}" for i in range(10)]
    app_keys = [f"train/scalar_append{i}" for i in range(10)]
    overhead, _ = tp._timer_overhead(100_000)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sender: dict[str, list[dict[str, Any]]] = {"realistic": [], "full": []}
    checks: list[str] = []

    def add(load: str, call: str, samples: Any, ppc: int = 1) -> None:
        r = tp._summary(samples, overhead)
        r["ppc"] = ppc
        rows.setdefault((load, call), []).append(r)

    os.environ["COORDINATOR_AGG_STDERR"] = str(tmp / "hotpath-aggregator.log")
    d = tmp / "hotpath"
    try:
        for rep in range(repeats):
            run = coordinator.init_run(project="bench", name=f"hot-real-{rep}", rank=0, world_size=1, dir=d)
            try:
                (o_dict, o_log, o_app, late), info = _window(
                    run, lambda run=run: tp._realistic(run, seconds, rate, dict_keys, log_keys, app_keys)
                )
                run.wait(120)
                st = run.stats()
                exp = len(o_dict) * (len(dict_keys) + len(log_keys) + len(app_keys))
                if st["acked"] != exp or st["lost"] or st["pending"]:
                    checks.append(f"realistic rep {rep}: stats {st}, expected {exp} acked")
            finally:
                run.stop(120)
            info["late"] = late
            sender["realistic"].append(info)
            add("realistic", 'log({"loss": x}, step=s)', o_log)
            add("realistic", 'run["loss"].append(x, step=s)', o_app)
            add("realistic", "log(<80-key dict>, step=s)", o_dict, 80)

            run = coordinator.init_run(project="bench", name=f"hot-full-{rep}", rank=0, world_size=1, dir=d)
            try:

                def full(run: Any = run) -> tuple[Any, Any, Any]:
                    # Sustained: chunks of scalar log(), append() and 100-key dict log() calls, back to
                    # back, for full_s seconds, so the sender thread's share is measured at steady state.
                    a, b, c = array("q"), array("q"), array("q")
                    keys100 = [f"train/metric{i:03d}" for i in range(100)]
                    t_end = time.monotonic() + full_s
                    i = 0
                    while time.monotonic() < t_end:
                        a += tp._full_scalar_log(run, "loss", chunk, i * chunk)
                        b += tp._full_append(run, "loss_append", chunk, i * chunk)
                        c += tp._full_dict_log(run, keys100, chunk // 100, i * (chunk // 100))
                        i += 1
                    return a, b, c

                (o_log, o_app, o_dict), info = _window(run, full)
                run.wait(120)
                st = run.stats()
                exp = len(o_log) + len(o_app) + 100 * len(o_dict)
                if st["acked"] != exp or st["lost"] or st["pending"]:
                    checks.append(f"full rep {rep}: stats {st}, expected {exp} acked")
            finally:
                run.stop(120)
            sender["full"].append(info)
            add("full", 'log({"loss": x}, step=s)', o_log)
            add("full", 'run["loss"].append(x, step=s)', o_app)
            add("full", "log(<100-key dict>, step=s)", o_dict, 100)

            run = coordinator.init_run(
                project="bench", name="hot-disabled", mode="disabled", rank=0, world_size=1, dir=d
            )
            try:
                add("disabled", 'log({"loss": x}, step=s)', tp._full_scalar_log(run, "loss", n_calls, 0))
                add("disabled", 'run["loss"].append(x, step=s)', tp._full_append(run, "loss_append", n_calls, 0))
                # The same paced loop as "realistic" on the no-op run: the floor of a call made after a
                # sleep (cold caches, CPU wake-up), to separate that from the library's own cost.
                if rep == 0 or not quick:
                    _, o_log, o_app, _ = tp._realistic(run, seconds / 2, rate, dict_keys, log_keys, app_keys)
                    add("disabled, realistic pacing", 'log({"loss": x}, step=s)', o_log)
                    add("disabled, realistic pacing", 'run["loss"].append(x, step=s)', o_app)
            finally:
                run.stop()
    finally:
        os.environ.pop("COORDINATOR_AGG_STDERR", None)
    table = []
    for (load, call), rs in rows.items():
        table.append(
            {
                "load": load,
                "call": call,
                "ppc": rs[0]["ppc"],
                "repeats": len(rs),
                "n": sum(r["n"] for r in rs),
                "p50": _med([r["p50"] for r in rs]),
                "p99": _med([r["p99"] for r in rs]),
                "max": max(r["max"] for r in rs),
                "over_1ms": sum(r["over_1ms"] for r in rs),
                "p50_all": [round(r["p50"], 3) for r in rs],
                "p99_all": [round(r["p99"], 3) for r in rs],
            }
        )
    sender_summary = {}
    for load, infos in sender.items():
        ok = [i for i in infos if "sender_share" in i]
        if ok:
            sender_summary[load] = {
                "share": _med([i["sender_share"] for i in ok]),
                "cpu_s": _med([i["sender_cpu_s"] for i in ok]),
                "wall_s": _med([i["wall_s"] for i in ok]),
                "slice_p50_us": _med([i.get("slice_p50_us", 0.0) for i in ok]),
                "slice_p99_us": _med([i.get("slice_p99_us", 0.0) for i in ok]),
                "slice_max_us": max(i.get("slice_max_us", 0.0) for i in ok),
                "cpu_slice_p50_us": _med([i.get("cpu_slice_p50_us", 0.0) for i in ok]),
                "cpu_slice_p99_us": _med([i.get("cpu_slice_p99_us", 0.0) for i in ok]),
                "cpu_slice_max_us": max(i.get("cpu_slice_max_us", 0.0) for i in ok),
                "flushes": _med([i.get("flushes", 0) for i in ok]),
                "late": _med([i.get("late", 0.0) for i in ok]),
            }
    return {
        "rows": table,
        "sender": sender_summary,
        "overhead_ns": overhead,
        "checks": checks,
        "gc": gc.isenabled(),
        "calls": n_calls,
        "full_s": full_s,
        "seconds": seconds,
        "switchinterval_ms": sys.getswitchinterval() * 1000,
    }


# =============================================================================== 2 + 3. throughput and limit


def throughput_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
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
            _log(f"2: {label}: {world} x {points[k]:,} points in calls of {k} keys")
            t = tp.trial(world, k, points[k], tmp, label)
            trials.append(t)
            _log(f"   -> {t.get('pps', 0):,.0f} points/s {'ok' if t['ok'] else 'FAILED ' + str(t['problems'][:2])}")
            lab = f"limit-n{world}-k{k}-r{rep}"
            lt = limit_trial(world, k, max(points[k], limit_points), tmp, lab)
            limits.append(lt)
            _log(f"3: {lab}: raw PUSH/PULL {lt.get('pps', 0):,.0f} points/s {'ok' if lt['ok'] else lt['problems']}")
            lt = limit_trial(world, k, points[k], tmp, lab + "-inline", inline=True)
            inline.append(lt)
            _log(
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
                pps=_med([t["pps"] for t in good]),
                pps_all=[round(t["pps"]) for t in good],
                elapsed=_med([t["elapsed"] for t in good]),
                log_phase=_med([t["log_phase"] for t in good]),
                agg_cpu_share=_med([t["agg_cpu"] / t["elapsed"] for t in good if t.get("agg_cpu") is not None]),
                agg_rss_peak=max((t.get("agg_rss_peak") or 0) for t in good),
                client_rss_peak=max((t.get("client_rss_peak") or 0) for t in good),
                client_rss_end=max(max(t["client_rss_end"]) for t in good),
                client_cpu=_med([max(t["client_cpu"]) for t in good]),
                sender_cpu=_med([max(s or 0.0 for s in t["sender_cpu"]) for t in good]),
                other_load=_med([t["other_load"] for t in good]),
            )
        if lgood:
            c.update(
                limit_pps=_med([t["pps"] for t in lgood]),
                limit_all=[round(t["pps"]) for t in lgood],
                limit_points_per_rank=lgood[0]["points_per_rank"],
                batch_bytes=lgood[0].get("batch_bytes"),
            )
        igood = [t for t in inline if t["world"] == world and t["k"] == k and t.get("pps") and t["ok"]]
        if igood:
            c["inline_pps"] = _med([t["pps"] for t in igood])
        if good and lgood:
            c["fraction"] = c["pps"] / c["limit_pps"]
        if good and igood:
            c["fraction_inline"] = c["pps"] / c["inline_pps"]
        cells_out.append(c)
    return {"cells": cells_out, "trials": trials, "limits": limits + inline}


# =============================================================================== 4. peers


def peers_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    from benchmarks import peers as pm

    if quick:
        plan = {"tensorboard": (20_000, 2_000), "trackio": (50_000, 5_000)}
        worlds = (1,)
    else:
        plan = {
            "tensorboard": (200_000, 20_000),
            "wandb": (100_000, 5_000),
            "mlflow-sync": (10_000, 300),
            "mlflow-async": (50_000, 3_000),
            "neptune": (50_000, 10_000),
            "trackio": (200_000, 20_000),
        }
        worlds = (1, 4)
    out: dict[str, Any] = {"peers": {}, "skipped_quick": [] if not quick else [p for p in pm.PEERS if p not in plan]}
    for name in pm.PEERS:
        ok, ver = pm.available(name)
        entry: dict[str, Any] = {
            "available": ok,
            "version": ver,
            "mode": pm.PEERS[name][1],
            "how": pm.PEERS[name][2],
            "trials": [],
        }
        out["peers"][name] = entry
        if not ok or name not in plan:
            continue
        points, hot = plan[name]
        for rep in range(repeats):
            for world in worlds:
                label = f"peer-{name}-n{world}-r{rep}"
                _log(f"4: {label}: {points:,} points per logging rank, {hot:,} hot-path calls")
                t = pm.peer_trial(name, world, points, hot if world == 1 else 0, tmp, label)
                entry["trials"].append(t)
                _log(
                    f"   -> {t.get('pps', 0):,.0f} points/s; hot p50 {((t.get('hot') or {}).get('p50') or 0):.1f} µs;"
                    f" lost {t.get('lost')} dup {t.get('duplicated')} "
                    f"{'' if t['ok'] else t['problems'][:2]}"
                )
        for world in worlds:
            ts = [t for t in entry["trials"] if t["world"] == world and t.get("pps")]
            if not ts:
                continue
            agg = {
                "pps": _med([t["pps"] for t in ts]),
                "pps_all": [round(t["pps"]) for t in ts],
                "log_s": _med([t["log_s"] for t in ts]),
                "finish_s": _med([t["finish_s"] for t in ts]),
                "lost": sum(t.get("lost", 0) for t in ts),
                "duplicated": sum(t.get("duplicated", 0) for t in ts),
                "found": sum(t.get("found", 0) for t in ts),
                "active": ts[0]["active_ranks"],
                "init_s": _med([t["init_s"] for t in ts]),
                "rss": max(t.get("rss", 0) for t in ts),
                "points": ts[0]["logged_points"],
                "ok": all(t["ok"] for t in ts),
            }
            hots = [t["hot"] for t in ts if t.get("hot")]
            if hots:
                agg["hot"] = {
                    "p50": _med([h["p50"] for h in hots]),
                    "p99": _med([h["p99"] for h in hots]),
                    "max": max(h["max"] for h in hots),
                    "n": sum(h["n"] for h in hots),
                }
            entry[f"w{world}"] = agg
    return out


# =============================================================================== 5. DDP training overhead


def ddp_section(quick: bool, tmp: Path, peers_available: dict[str, bool]) -> dict[str, Any]:
    variants = ["none", "coordinator", "allreduce", "allreduce-packed"]
    if not quick:
        variants.insert(2, "coordinator-flush50ms")
    want = ["tensorboard"] if quick else ["tensorboard", "wandb", "mlflow-async", "trackio", "neptune"]
    missing = [p for p in want if not peers_available.get(p)]
    variants[2:2] = [f"peer:{p}" for p in want if peers_available.get(p)]
    steps, repeats = (30, 2) if quick else (150, 5)
    d = tmp / "ddp"
    d.mkdir()
    out_json = d / "result.json"
    env = tp._child_env(d)
    env.pop("TORCHELASTIC_RUN_ID", None)
    env.update({"OMP_NUM_THREADS": "1"})
    from benchmarks.peers import peer_env

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
    _log(f"5: DDP: 4 ranks x {len(variants)} variants x {repeats} repeats x {steps} steps")
    logf = d / "torchrun.log"
    t0 = time.monotonic()
    with open(logf, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(120 if quick else 1800)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait(30)
            code = None
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
    base = _med([b["mean_s"] for b in raw["results"]["none"]])
    rows = []
    for v in variants:
        bs = raw["results"][v]
        m = _med([b["mean_s"] for b in bs])
        rows.append(
            {
                "variant": v,
                "step_ms": m * 1000,
                "step_ms_all": [round(b["mean_s"] * 1000, 3) for b in bs],
                "median_step_ms": _med([b["median_s"] for b in bs]) * 1000,
                "slowdown": m / base - 1,
                "setup_s": _med([b["setup_s"] for b in bs]),
                "close_s": _med([b["close_s"] for b in bs]),
            }
        )
    res["rows"] = rows
    return res


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    for p in [*kids]:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        psutil.Process(pid).kill()
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.wait(10)


# =============================================================================== 6. scale and soak


def scale_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    from benchmarks.scale import scale_trial

    sizes = [64, 256] if quick else [64, 256, 1024]
    total = 1_000_000 if quick else 2_000_000
    trials = []
    for rep in range(repeats):
        for n in sizes:
            batches = max(2, total // (n * 1000))
            label = f"scale-{n}-r{rep}"
            _log(f"6: {label}: {n} senders x {batches} batches of 1000 points")
            t = scale_trial(n, tmp, label, batches=batches)
            trials.append(t)
            _log(
                f"   -> {t.get('pps', 0):,.0f} points/s, aggregator RSS peak {tp._mib(t.get('rss_peak'))} MiB "
                f"{'ok' if t['ok'] else t['problems'][:2]}"
            )
    rows = []
    for n in sizes:
        ts = [t for t in trials if t["senders"] == n and t.get("pps")]
        if ts:
            rows.append(
                {
                    "senders": n,
                    "pps": _med([t["pps"] for t in ts]),
                    "pps_all": [round(t["pps"]) for t in ts],
                    "rss_connected": _med([t["rss_connected"] for t in ts]),
                    "rss_peak": max(t["rss_peak"] or 0 for t in ts),
                    "rss_end": _med([t["rss_end"] or 0 for t in ts]),
                    "agg_cpu_share": _med([t["agg_cpu"] / t["elapsed"] for t in ts if t.get("agg_cpu")]),
                    "ack_p50_ms": _med([t["ack_p50_ms"] for t in ts]),
                    "ack_p99_ms": _med([t["ack_p99_ms"] for t in ts]),
                    "points": ts[0]["acked_points"],
                    "ok": all(t["ok"] for t in ts),
                    "warnings": sum(t.get("agg_warnings", 0) for t in ts),
                }
            )
    # soak: 64 senders, 10 batches/s each of 100 points (10 keys x 10 steps) = 64,000 points/s steady
    dur = 25.0 if quick else 300.0
    _log(f"6: soak: 64 senders, 64,000 points/s for {dur:.0f} s")
    soak = scale_trial(
        64, tmp, "soak", steps_per_batch=10, rate=10.0, duration=dur, window=8, rss_every=1.0, timeout=dur + 120
    )
    series = soak.get("rss_series") or []
    if series:
        first = next((v for t, v in series if t >= 1.0), series[0][1])
        warm_t = 5.0 if quick else 30.0
        warm = next((v for t, v in series if t >= warm_t), first)
        end = series[-1][1]
        soak.update(
            rss_first=first,
            rss_warm=warm,
            rss_last=end,
            warm_t=warm_t,
            growth=(end - first) / first,
            growth_warm=(end - warm) / warm,
        )
    _log(
        f"   -> soak {soak.get('pps', 0):,.0f} points/s; RSS {tp._mib(soak.get('rss_first'))} -> "
        f"{tp._mib(soak.get('rss_last'))} MiB {'ok' if soak['ok'] else soak['problems'][:2]}"
    )
    return {"rows": rows, "trials": [{k: v for k, v in t.items() if k != "rss_series"} for t in trials], "soak": soak}


# =============================================================================== report


def _machine() -> dict[str, Any]:
    import platform

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    with contextlib.suppress(Exception):
        import psutil

        mem = psutil.virtual_memory().total
    return {
        "host": socket.gethostname(),
        "cpu": tp._cpu_model(),
        "cores": os.cpu_count(),
        "usable": usable,
        "mem_gib": None if mem is None else round(mem / 2**30, 1),
        "kernel": platform.release(),
    }


def _all_versions() -> dict[str, str]:
    v = dict(tp._versions())
    for dist in ("torch", "matplotlib", "tensorboard", "wandb", "mlflow", "neptune", "trackio"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "missing"
    return v


def _stamp(meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    return (
        f"{meta['command']}  |  {meta['date']}  |  {m['cpu']}, {m['cores']} cores  |  python {v['python']}, "
        f"coordinator {v['coordinator']} ({meta['git']}), pyzmq {v['pyzmq']}, torch {v['torch']}"
    )


def _targets(res: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    hot = res.get("hot")
    if hot:
        by = {(r["load"], r["call"]): r for r in hot["rows"]}
        r = by.get(("realistic", 'log({"loss": x}, step=s)'))
        if r:
            out.append(
                (
                    f"`log()` one scalar, realistic load: p50 <= {T_REAL_P50_US:g} µs",
                    f"{r['p50']:.2f} µs",
                    r["p50"] <= T_REAL_P50_US,
                )
            )
            out.append(
                (
                    f"`log()` one scalar, realistic load: p99 <= {T_REAL_P99_US:g} µs",
                    f"{r['p99']:.2f} µs",
                    r["p99"] <= T_REAL_P99_US,
                )
            )
        r = by.get(("full", 'log({"loss": x}, step=s)'))
        if r:
            out.append(
                (
                    f"`log()` one scalar, full load: p99 <= {T_FULL_P99_US:g} µs",
                    f"{r['p99']:.2f} µs",
                    r["p99"] <= T_FULL_P99_US,
                )
            )
    tpr = res.get("throughput")
    if tpr:
        for c in tpr["cells"]:
            if c["world"] != 4:
                continue
            if c.get("fraction") is not None:
                out.append(
                    (
                        f"4 ranks, {c['k']} keys/call: durable >= {T_LIMIT_FRACTION:.0%} of raw PUSH/PULL",
                        f"{c['fraction']:.1%} ({_fmt_pps(c['pps'])} of {_fmt_pps(c['limit_pps'])})",
                        c["fraction"] >= T_LIMIT_FRACTION,
                    )
                )
            if c.get("pps"):
                out.append(
                    (
                        f"4 ranks, {c['k']} keys/call: durable >= {T_PPS:,} points/s",
                        f"{_fmt_pps(c['pps'])}",
                        c["pps"] >= T_PPS,
                    )
                )
    ddp = res.get("ddp")
    if ddp and ddp.get("rows"):
        rows = {r["variant"]: r for r in ddp["rows"]}
        c = rows.get("coordinator")
        if c:
            out.append(
                (
                    f"DDP step slowdown, coordinator 100 metrics/step from every rank: < {T_SLOWDOWN:.0%}",
                    f"{c['slowdown']:+.1%}",
                    c["slowdown"] < T_SLOWDOWN,
                )
            )
            others = [r for v, r in rows.items() if v.startswith("peer:") or v.startswith("allreduce")]
            for r in others:
                out.append(
                    (
                        f"DDP slowdown lower than {r['variant']}",
                        f"{c['slowdown']:+.1%} vs {r['slowdown']:+.1%}",
                        c["slowdown"] < r["slowdown"],
                    )
                )
    soak = (res.get("scale") or {}).get("soak")
    if soak and soak.get("rss_first"):
        out.append(
            (
                f"aggregator RSS flat within {T_RSS_FLAT:.0%} over the {soak['duration']:.0f} s soak",
                f"{tp._mib(soak['rss_first'])} -> {tp._mib(soak['rss_last'])} MiB ({soak['growth']:+.1%})",
                abs(soak["growth"]) <= T_RSS_FLAT,
            )
        )
    return out


def report(res: dict[str, Any], meta: dict[str, Any], pngs: dict[str, str]) -> str:
    m, v = meta["machine"], meta["versions"]
    md = [
        f"# coordinator benchmark suite ({meta['mode']})",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; wall time {meta['wall_s']:.0f} s",
        f"- machine: {m['host']}; CPU: {m['cpu']}; cores: {m['cores']} ({m['usable']} usable); memory "
        f"{m['mem_gib']} GiB; Linux {m['kernel']}; load average at the start {meta['load0'][0]:.2f}, at the end "
        f"{meta['load1'][0]:.2f} (the machine may be shared: see 'other load' in section 2)",
        f"- coordinator {v['coordinator']} ({meta['git']}); python {v['python']}, pyzmq {v['pyzmq']}, msgpack "
        f"{v['msgpack']}, SQLite {v['sqlite']}, psutil {v['psutil']}, torch {v['torch']}, matplotlib {v['matplotlib']}",
        f"- peers: tensorboard {v['tensorboard']}, wandb {v['wandb']}, mlflow {v['mlflow']}, neptune {v['neptune']}, "
        f"trackio {v['trackio']}",
        f"- repeats: {meta['repeats']} per cell (figures are medians of the repeats; ratios within this run)",
    ]
    if meta.get("skipped"):
        md.append(f"- **skipped in this mode**: {'; '.join(meta['skipped'])}")
    md.append("")
    tg = _targets(res)
    md += ["## Targets", "", "| target | measured | status |", "| --- | --- | --- |"]
    md += [f"| {a} | {b} | {_mark(c)} |" for a, b, c in tg]
    md.append("")
    # ---- 1
    hot = res.get("hot")
    if hot:
        md += ["## 1. Hot path", ""]
        if "hot" in pngs:
            md += [f"![hot path]({pngs['hot']})", ""]
        md += [
            f"One rank in this process (`rank=0, world_size=1`), sender thread and aggregator running; each call "
            f"timed with `perf_counter_ns`, timer overhead ({hot['overhead_ns']} ns) subtracted. realistic: 50 "
            "steps/s, each step one 80-key `log()` + 10 scalar `log()` + 10 `append()` = 100 metrics; full: "
            f"chunks of 10,000 scalar `log()`, 10,000 `append()` and 100 100-key `log()` calls back to back "
            f"for {hot['full_s']:g} s; disabled: {hot['calls']:,} calls on "
            '`mode="disabled"`. p50/p99: median over the repeats; max and calls > 1 ms: over all repeats. '
            f"GC {'on' if hot['gc'] else 'off'}; `sys.getswitchinterval()` = {hot['switchinterval_ms']:g} ms.",
            "",
            "| load | call | calls | p50 µs | p99 µs | max µs | calls > 1 ms | p50 per repeat | p99 per repeat |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in hot["rows"]:
            md.append(
                f"| {r['load']} | `{r['call']}` | {r['n']:,} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['max']:,.0f} | "
                f"{r['over_1ms']} | {r['p50_all']} | {r['p99_all']} |"
            )
        if hot["sender"]:
            md += [
                "",
                "**Sender thread** (CPU time of the `coordinator-sender` thread from `/proc` via psutil, over "
                "the measured window; a pure-Python thread holds the GIL for about its CPU time, minus the ZeroMQ "
                "send, which releases it). Per flush = each `SenderThread._flush` call (swap the buffer, encode, "
                "send), timed by wrapping the method on the instance from the benchmark: its CPU time "
                "(`time.thread_time_ns`, ≈ GIL held) and its wall time (which also counts waiting for the GIL "
                "while the training thread runs: up to the switch interval per hand-over).",
                "",
                "| load | window s | sender CPU s | CPU share (≈ GIL share) | flushes | CPU per flush p50 / p99 / "
                "max µs | wall per flush p50 / p99 / max µs | steps overrun |",
                "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
            ]
            for load, s in hot["sender"].items():
                md.append(
                    f"| {load} | {s['wall_s']:.2f} | {s['cpu_s']:.3f} | {s['share']:.1%} | {s['flushes']:.0f} | "
                    f"{s['cpu_slice_p50_us']:.0f} / {s['cpu_slice_p99_us']:,.0f} / "
                    f"{s['cpu_slice_max_us']:,.0f} | "
                    f"{s['slice_p50_us']:.0f} / {s['slice_p99_us']:,.0f} / {s['slice_max_us']:,.0f} | "
                    f"{s['late']:.0%} |"
                )
        for c in hot["checks"]:
            md.append(f"\n**delivery check failed**: {c}")
        md.append("")
    # ---- 2 + 3
    tpr = res.get("throughput")
    if tpr:
        md += ["## 2. Throughput vs ranks and keys per call; 3. the limit", ""]
        if "throughput" in pngs:
            md += [f"![throughput]({pngs['throughput']})", ""]
        md += [
            "coordinator: N rank processes log P points each as fast as they can in `log()` calls of K keys, then "
            "`wait()`; points/s = N·P / (common start → last rank's `wait()` returned: every point committed to "
            "SQLite and acked). Every trial is verified point by point (every rank's series of every key, and the "
            "reduced main series, read back: each step exactly once with its value). limit: the same N processes "
            "push pre-built 1000-point msgpack batches (same columnar format) over raw pyzmq PUSH → one PULL "
            "receiver over ipc that discards them (more points per rank than the coordinator trial, so that "
            "the clock runs long enough: points/s is what compares). Each cell's coordinator and limit trials "
            "run back to back.",
            "",
            "| ranks | keys/call | points/rank | coordinator points/s | per repeat | limit points/s | of limit | "
            "limit encoding in the loop | of that | "
            "aggregator CPU | aggregator RSS MiB peak | client RSS MiB peak | client CPU s (sender) | other load | "
            "verified |",
            "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for c in tpr["cells"]:
            md.append(
                f"| {c['world']} | {c['k']} | {c['points_per_rank'] or 0:,} | {_fmt_pps(c.get('pps'))} | "
                f"{c.get('pps_all', '-')} | {_fmt_pps(c.get('limit_pps'))} | "
                f"{'-' if c.get('fraction') is None else format(c['fraction'], '.1%')} | "
                f"{_fmt_pps(c.get('inline_pps'))} | "
                f"{'-' if c.get('fraction_inline') is None else format(c['fraction_inline'], '.1%')} | "
                f"{'-' if c.get('agg_cpu_share') is None else format(c['agg_cpu_share'], '.0%')} | "
                f"{tp._mib(c.get('agg_rss_peak'))} | {tp._mib(c.get('client_rss_peak'))} | "
                f"{c.get('client_cpu', 0):.2f} ({c.get('sender_cpu', 0):.2f}) | {c.get('other_load', 0):.2f} | "
                f"{'ok' if c['ok'] else '**FAILED**'} |"
            )
        for t in tpr["trials"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**:", "", "```", *[p[:500] for p in t["problems"][:8]], "```"]
        for t in tpr["limits"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**: {t['problems'][:3]}"]
        md.append("")
    # ---- 4
    pr = res.get("peers")
    if pr:
        md += ["## 4. Peers (same workload, same run)", ""]
        if "peers" in pngs:
            md += [f"![peers]({pngs['peers']})", ""]
        md += [
            "Hot path: one scalar per call, back to back, in a single process (coordinator: section 1, full load). "
            "Durable points/s: each logging process logs the same 100-key dict per step as fast as it can, then "
            "the peer's flush/finish (the clock stops when it returns). Multi-process: 4 processes started "
            "together, each peer in its documented DDP mode; the peer's output is read back (event files, `.wandb` "
            "log, SQLite, offline op log) and every (key, step) of every logging rank counted: missing and "
            "duplicated. `rank0` mode records 1 of the 4 ranks by design.",
            "",
            "| logger | version | DDP mode | hot p50 µs | hot p99 µs | hot max µs | 1 process: points/s durable "
            "(log s + finish s) | 4 processes: points/s durable | ranks recorded | lost | duplicated | how |",
            "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | --- |",
        ]
        co = _coordinator_peer_row(res)
        if co:
            md.append(co)
        for name, e in pr["peers"].items():
            if not e["available"]:
                md.append(
                    f"| {name} | **missing**: {e['version']} | {e['mode']} | missing | missing | missing | "
                    f"missing | missing | - | - | - | {e['how']} |"
                )
                continue
            w1, w4 = e.get("w1"), e.get("w4")
            if not w1 and not w4:
                why = "skipped (--quick)" if name in pr.get("skipped_quick", []) else "**failed** (see below)"
                md.append(f"| {name} | {e['version']} | {e['mode']} | {why} | | | | | | | | {e['how']} |")
                continue
            h = (w1 or {}).get("hot") or {}
            one = f"{_fmt_pps(w1['pps'])} ({w1['log_s']:.2f} + {w1['finish_s']:.2f})" if w1 else "not run"
            four = f"{_fmt_pps(w4['pps'])} ({w4['log_s']:.2f} + {w4['finish_s']:.2f})" if w4 else "not run"
            rec = f"{w4['active']} of 4" if w4 else "-"
            lost = sum(x.get("lost", 0) for x in (w1, w4) if x)
            dup = sum(x.get("duplicated", 0) for x in (w1, w4) if x)
            md.append(
                f"| {name} | {e['version']} | {e['mode']} | {h.get('p50', float('nan')):.1f} | "
                f"{h.get('p99', float('nan')):.1f} | {h.get('max', float('nan')):,.0f} | {one} | {four} | "
                f"{rec} | "
                f"{lost} | {dup} | {e['how']} |"
            )
        for e in pr["peers"].values():
            for t in e.get("trials", []):
                if not t["ok"]:
                    md += ["", f"**{t['label']}**: " + " | ".join(p[:400] for p in t["problems"][:3])]
        md.append("")
    # ---- 5
    ddp = res.get("ddp")
    if ddp:
        md += ["## 5. Training overhead (CPU DDP, 4 ranks, gloo)", ""]
        if "ddp" in pngs:
            md += [f"![ddp]({pngs['ddp']})", ""]
        md += [
            f"`{ddp['command']}` (one launch; variants interleaved, order rotated each repeat, after a warm-up "
            "block). Model: MLP 256-512-512-10, batch 64 per rank, SGD; `torch.set_num_threads(1)`. Step time = "
            "the slowest rank's mean over the block; median over the repeats. Logging = 100 metrics per step. "
            "Setup/close = opening and draining the logger around a block (not in the step time). 4 ranks share "
            "2 cores, so every CPU cycle a logger (or its aggregator / service process) takes is taken from "
            "training.",
            "",
        ]
        if ddp.get("missing"):
            md.append(f"Peers missing (not installed): {', '.join(ddp['missing'])}.\n")
        if ddp.get("rows"):
            md += [
                "| variant | step ms | per repeat | slowdown vs none | setup s | close s |",
                "| --- | ---: | --- | ---: | ---: | ---: |",
            ]
            for r in ddp["rows"]:
                md.append(
                    f"| {r['variant']} | {r['step_ms']:.3f} | {r['step_ms_all']} | {r['slowdown']:+.1%} | "
                    f"{r['setup_s']:.2f} | {r['close_s']:.2f} |"
                )
        for p in ddp.get("problems", []):
            md += [
                "",
                "**DDP job failed** (a worker crashed or torchrun failed; numbers above, if any, were "
                "written before it):",
                "",
                "```",
                p[:2500],
                "```",
            ]
        md.append("")
    # ---- 6
    sc = res.get("scale")
    if sc:
        md += ["## 6. Scale and soak", ""]
        if "scale" in pngs:
            md += [f"![scale]({pngs['scale']})", ""]
        md += [
            "One real aggregator (`python -m coordinator.aggregator`, started by the benchmark with world_size = "
            "senders) fed by simulated senders: 2 processes, each with many DEALER sockets speaking the "
            "coordinator's wire protocol (HELLO, numbered columnar batches of 10 keys x 100 steps, window of 4 "
            "unacked batches, BYE). points/s = acked points / time to the last ack; every rank's point count is "
            "read back from the store and checked.",
            "",
            "| senders | points | points/s | per repeat | aggregator CPU | RSS MiB connected | RSS MiB peak | "
            "ack latency p50 / p99 ms | aggregator warnings | verified |",
            "| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for r in sc["rows"]:
            md.append(
                f"| {r['senders']} | {r['points']:,} | {_fmt_pps(r['pps'])} | {r['pps_all']} | "
                f"{r['agg_cpu_share']:.0%} | {tp._mib(r['rss_connected'])} | {tp._mib(r['rss_peak'])} | "
                f"{r['ack_p50_ms']:.0f} / {r['ack_p99_ms']:.0f} | {r['warnings']} | "
                f"{'ok' if r['ok'] else '**FAILED**'} |"
            )
        for t in sc["trials"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**: {t['problems'][:3]}"]
        s = sc["soak"]
        md += [
            "",
            f"**Soak**: 64 senders x 10 batches/s x 100 points = 64,000 points/s for {s['duration']:.0f} s "
            f"({s.get('acked_points', 0):,} points, {_fmt_pps(s.get('pps'))} points/s achieved). Aggregator RSS "
            f"(sampled every second): {tp._mib(s.get('rss_idle'))} MiB idle, {tp._mib(s.get('rss_first'))} MiB at "
            f"1 s, {tp._mib(s.get('rss_warm'))} MiB at {s.get('warm_t', 0):.0f} s, {tp._mib(s.get('rss_last'))} MiB "
            f"at the end (peak {tp._mib(s.get('rss_peak'))} MiB): {s.get('growth', 0):+.1%} from 1 s, "
            f"{s.get('growth_warm', 0):+.1%} from {s.get('warm_t', 0):.0f} s to the end; "
            f"{'verified' if s['ok'] else '**FAILED**: ' + '; '.join(s['problems'][:3])}.",
            "",
        ]
    if res.get("notes"):
        md += ["## Notes", "", *res["notes"], ""]
    return "\n".join(md)


def _coordinator_peer_row(res: dict[str, Any]) -> str | None:
    hot = res.get("hot")
    tpr = res.get("throughput")
    if not hot:
        return None
    by = {(r["load"], r["call"]): r for r in hot["rows"]}
    h = by.get(("full", 'log({"loss": x}, step=s)'))
    one = four = "-"
    if tpr:
        cells = {(c["world"], c["k"]): c for c in tpr["cells"]}
        c1, c4 = cells.get((1, 100)), cells.get((4, 100))
        if c1 and c1.get("pps"):
            one = f"{_fmt_pps(c1['pps'])} (section 2)"
        if c4 and c4.get("pps"):
            four = f"{_fmt_pps(c4['pps'])} (section 2)"
        ok = all(c["ok"] for c in tpr["cells"])
    else:
        ok = True
    lost = "0" if ok else "see 2"
    return (
        f"| **coordinator** | {res['meta_versions']['coordinator']} | every rank | {h['p50']:.2f} | "
        f"{h['p99']:.2f} | "
        f"{h['max']:,.0f} | {one} | {four} | 4 of 4 | {lost} | {lost} | `run.log(dict, step=s)`; verified in "
        "section 2 |"
    )


# =============================================================================== plots


def plots(res: dict[str, Any], meta: dict[str, Any], base: Path) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return {}
    stamp = _stamp(meta)
    out: dict[str, str] = {}

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title, fontsize=11)
        fig.text(0.01, 0.005, stamp, fontsize=6, color="0.35", ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.04, 1, 0.95))
        p = base.with_name(f"{base.name}-{name}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out[name] = p.name

    hot = res.get("hot")
    pr = res.get("peers")
    if hot:
        fig, ax = plt.subplots(figsize=(11, 5))
        labels, p50, p99 = [], [], []
        for r in hot["rows"]:
            if r["ppc"] == 1:
                labels.append(f"coordinator {r['load']}\n{r['call'].split('(')[0].replace('run[', '[')}")
                p50.append(r["p50"])
                p99.append(r["p99"])
        if pr:
            for name, e in pr["peers"].items():
                h = (e.get("w1") or {}).get("hot")
                if h:
                    labels.append(f"{name}\n(full load)")
                    p50.append(h["p50"])
                    p99.append(h["p99"])
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
        ax.set_yscale("log")
        ax.set_xticks(list(x), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("µs per call (one scalar)")
        ax.axhline(T_REAL_P50_US, color="g", ls=":", lw=1, label=f"target realistic p50 {T_REAL_P50_US:g} µs")
        ax.axhline(T_REAL_P99_US, color="orange", ls=":", lw=1, label=f"target realistic p99 {T_REAL_P99_US:g} µs")
        ax.axhline(T_FULL_P99_US, color="r", ls=":", lw=1, label=f"target full-load p99 {T_FULL_P99_US:g} µs")
        ax.legend(fontsize=7)
        save(fig, "hot", "1. Hot path: one scalar per call (log scale)")
    tpr = res.get("throughput")
    if tpr:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        ks = sorted({c["k"] for c in tpr["cells"]}, reverse=True)
        for k in ks:
            cs = sorted((c for c in tpr["cells"] if c["k"] == k and c.get("pps")), key=lambda c: c["world"])
            axes[0].plot([c["world"] for c in cs], [c["pps"] for c in cs], "o-", label=f"coordinator, {k} keys/call")
            ls = [c for c in cs if c.get("limit_pps")]
            axes[0].plot([c["world"] for c in ls], [c["limit_pps"] for c in ls], "x--", label=f"raw PUSH/PULL, k={k}")
            li = [c for c in cs if c.get("inline_pps")]
            axes[0].plot(
                [c["world"] for c in li],
                [c["inline_pps"] for c in li],
                "+:",
                label=f"PUSH/PULL encoding in loop, k={k}",
            )
        axes[0].axhline(T_PPS, color="r", ls=":", lw=1, label=f"target {T_PPS:,}/s")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("ranks (processes)")
        axes[0].set_ylabel("points/s (durable / delivered)")
        axes[0].legend(fontsize=7)
        w4 = sorted(
            (c for c in tpr["cells"] if c["world"] == 4 and c.get("fraction") is not None), key=lambda c: c["k"]
        )
        bars = axes[1].bar([str(c["k"]) for c in w4], [c["fraction"] * 100 for c in w4])
        axes[1].bar_label(bars, [f"{c['fraction']:.1%}" for c in w4], fontsize=8)
        axes[1].axhline(T_LIMIT_FRACTION * 100, color="r", ls=":", label=f"target {T_LIMIT_FRACTION:.0%}")
        axes[1].set_xlabel("keys per log() call (4 ranks)")
        axes[1].set_ylabel("coordinator durable / raw limit (%)")
        axes[1].legend(fontsize=7)
        save(fig, "throughput", "2-3. Durable throughput vs ranks, and as a fraction of the raw transport")
    if pr:
        names, one, four = [], [], []
        cells = {(c["world"], c["k"]): c for c in (tpr or {}).get("cells", [])}
        if cells.get((1, 100), {}).get("pps"):
            names.append("coordinator")
            one.append(cells[(1, 100)]["pps"])
            four.append(cells.get((4, 100), {}).get("pps") or 0)
        for name, e in pr["peers"].items():
            if e.get("w1") or e.get("w4"):
                names.append(name)
                one.append((e.get("w1") or {}).get("pps") or 0)
                four.append((e.get("w4") or {}).get("pps") or 0)
        if names:
            fig, ax = plt.subplots(figsize=(10, 4.5))
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], one, 0.4, label="1 process")
            ax.bar([i + 0.2 for i in x], four, 0.4, label="4 processes (peer's DDP mode)")
            ax.set_yscale("log")
            ax.set_xticks(list(x), names, fontsize=8)
            ax.set_ylabel("points/s until durable (100-key dict per step)")
            ax.legend(fontsize=8)
            missing = [n for n, e in pr["peers"].items() if not e["available"]]
            if missing:
                ax.text(
                    0.99,
                    0.97,
                    "missing: " + ", ".join(missing),
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=8,
                )
            save(fig, "peers", "4. Peers: durable throughput, same workload, same run")
    ddp = res.get("ddp")
    if ddp and ddp.get("rows"):
        fig, ax = plt.subplots(figsize=(10, 4.5))
        rows = ddp["rows"]
        ax.bar([r["variant"] for r in rows], [r["step_ms"] for r in rows])
        for i, r in enumerate(rows):
            ax.text(i, r["step_ms"], f"{r['slowdown']:+.1%}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("ms per training step (median of repeats)")
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        save(fig, "ddp", f"5. CPU DDP (4 ranks, gloo) step time; target slowdown < {T_SLOWDOWN:.0%}")
    sc = res.get("scale")
    if sc and sc.get("rows"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        rows = sc["rows"]
        axes[0].plot([r["senders"] for r in rows], [r["pps"] for r in rows], "o-", label="points/s")
        axes[0].set_xscale("log", base=2)
        axes[0].set_xticks([r["senders"] for r in rows], [str(r["senders"]) for r in rows])
        axes[0].set_ylim(bottom=0)
        axes[0].set_xlabel("simulated senders")
        axes[0].set_ylabel("points/s durable")
        ax2 = axes[0].twinx()
        ax2.plot(
            [r["senders"] for r in rows],
            [r["rss_peak"] / 2**20 for r in rows],
            "s--",
            color="C1",
            label="aggregator RSS peak",
        )
        ax2.set_ylabel("aggregator RSS peak (MiB)")
        ax2.set_ylim(bottom=0)
        axes[0].legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
        ser = (sc.get("soak") or {}).get("rss_series")
        if ser:
            axes[1].plot([t for t, _ in ser], [v / 2**20 for _, v in ser])
            first = sc["soak"].get("rss_first")
            if first:
                axes[1].axhline(first / 2**20 * (1 + T_RSS_FLAT), color="r", ls=":", label="+10% of RSS at 1 s")
                axes[1].legend(fontsize=7)
            axes[1].set_xlabel("soak time (s)")
            axes[1].set_ylabel("aggregator RSS (MiB)")
            axes[1].set_ylim(bottom=0)
        save(fig, "scale", "6. Scale: one aggregator, many senders; soak at 64,000 points/s")
    return out


# =============================================================================== main


def _notes(res: dict[str, Any]) -> list[str]:
    """Observations computed from this run's numbers (the bottleneck analysis is in the commit/report)."""
    out = []
    tpr = res.get("throughput")
    if tpr:
        for c in tpr["cells"]:
            if c["world"] == 4 and c.get("agg_cpu_share") is not None and c.get("pps"):
                out.append(
                    f"- 4 ranks, {c['k']} keys/call: the aggregator process used {c['agg_cpu_share']:.0%} of a "
                    f"core during the window; the limit run shows the transport is not the ceiling "
                    f"({_fmt_pps(c.get('limit_pps'))} points/s)."
                )
    hot = res.get("hot")
    if hot and hot.get("sender"):
        s = hot["sender"].get("full")
        if s:
            out.append(
                f"- At full load the sender thread used {s['share']:.0%} of a core (≈ its share of the GIL); "
                f"its longest flush took {s['cpu_slice_max_us']:,.0f} µs of CPU ({s['slice_max_us']:,.0f} µs "
                f"wall). CPython hands the GIL over after {hot['switchinterval_ms']:g} ms at most, so one "
                "`log()` call can wait up to that long behind the sender."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="CI size: under 2 minutes on 2 cores; most peers skipped")
    g.add_argument("--full", action="store_true", help="every section at full size (~20-25 min on 2 cores)")
    p.add_argument("--only", default="", help="comma list of sections to run: hot,throughput,peers,ddp,scale")
    p.add_argument("--repeats", type=int, default=None, help="repeats per cell (default: 2 quick, 3 full)")
    p.add_argument("--no-write", action="store_true", help=f"do not write under {RESULTS}")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    args = p.parse_args(argv)
    quick = args.quick
    only = {s for s in args.only.split(",") if s}
    repeats = args.repeats or (2 if quick else 3)
    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    for k in tp._ENV_TO_CLEAR:
        os.environ.pop(k, None)
    t_wall = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="coordinator-suite-"))
    _log(f"working in {tmp}")
    res: dict[str, Any] = {}
    skipped: list[str] = []
    from benchmarks import peers as pm

    avail = {n: pm.available(n)[0] for n in pm.PEERS}

    def want(s: str) -> bool:
        return not only or s in only

    try:
        if want("hot"):
            _log("1: hot path")
            res["hot"] = hot_section(quick, tmp, repeats if not quick else 2)
        if want("throughput"):
            res["throughput"] = throughput_section(quick, tmp, 1 if quick else repeats)
            if quick:
                skipped.append("section 2/3 with 2 and 8 ranks and 10 keys/call, 1 repeat per cell")
        if want("peers"):
            res["peers"] = peers_section(quick, tmp, 1 if quick else 2)
            if quick:
                skipped.append(
                    f"peers {', '.join(res['peers']['skipped_quick'])} and the 4-process peer runs "
                    "(minutes of imports, service start-up and slow flushes)"
                )
        if want("ddp"):
            if importlib.util.find_spec("torch") is None:
                res["ddp"] = {"problems": ["torch is not installed (pip install -e '.[torch]')"], "missing": []}
            else:
                res["ddp"] = ddp_section(quick, tmp, avail)
                if quick:
                    skipped.append("DDP peers other than TensorBoard; DDP blocks of 30 steps x 2 repeats")
        if want("scale"):
            res["scale"] = scale_section(quick, tmp, 1 if quick else 2)
            if quick:
                skipped.append("1024 senders; the soak is 25 s instead of 5 minutes")
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        left = tp._leftovers()
        for line in left:
            with contextlib.suppress(Exception):
                _kill_tree(int(line.split()[0]))
        if left:
            _log(f"WARNING: child processes were still running (killed): {left}")
        if args.keep:
            _log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    cmd = " ".join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    meta = {
        "mode": "quick" if quick else "full",
        "command": cmd,
        "date": started.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": time.monotonic() - t_wall,
        "machine": _machine(),
        "versions": _all_versions(),
        "git": tp._git_rev(),
        "load0": load0,
        "load1": os.getloadavg(),
        "repeats": repeats,
        "skipped": skipped,
    }
    res["meta_versions"] = meta["versions"]
    res["notes"] = _notes(res)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    base = RESULTS / f"suite-{host}-{started.strftime('%Y-%m-%d')}{'-quick' if quick else ''}"
    pngs: dict[str, str] = {}
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        pngs = plots(res, meta, base)
    md = report(res, meta, pngs)
    print(md)
    if not args.no_write:
        tmpf = base.with_suffix(".md.tmp")
        tmpf.write_text(md + "\n")
        os.replace(tmpf, base.with_suffix(".md"))
        base.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res}, default=str, indent=1))
        _log(f"written {base.with_suffix('.md').relative_to(ROOT)} (+ .json, {len(pngs)} PNG)")
    failed = []
    if res.get("hot", {}).get("checks"):
        failed.append("hot-path delivery checks")
    for c in (res.get("throughput") or {}).get("cells", []):
        if not c["ok"]:
            failed.append(f"throughput n{c['world']} k{c['k']}")
    for r in (res.get("scale") or {}).get("rows", []):
        if not r["ok"]:
            failed.append(f"scale {r['senders']}")
    if res.get("scale") and not res["scale"]["soak"]["ok"]:
        failed.append("soak")
    if (res.get("ddp") or {}).get("problems"):
        failed.append("ddp")
    if left:
        failed.append("stray processes")
    if failed:
        _log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
