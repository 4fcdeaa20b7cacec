"""Hot-path latency: the timed call loops, ``benchmarks.throughput``'s part 1 and the suite's section 1.

Every call is timed on the training thread with ``time.perf_counter_ns``. The median cost of
an empty timed region (two back-to-back ``perf_counter_ns()`` calls plus storing the
difference) is measured first and subtracted from every sample (clamped at 0). The
single-scalar timed expression is literally ``run.log({key: x}, step=s)``: it includes
building the 1-key dict (~30 ns) and the attribute lookup, as a user's line would.

``hot_path`` (``python -m benchmarks.throughput``, part 1; one rank in this process, sender
thread and aggregator process running), loads:

* realistic: paced at 50 steps/s (sleeping between steps); each step makes one ``log()`` of
  a 100-key dict (the dict is built before the timer starts), then 10 single-scalar
  ``log({key: x}, step=s)`` calls and 10 ``run[key].append(x, step=s)`` calls;
* full: the same calls back to back, as fast as possible;
* disabled: the full-load calls on a ``mode="disabled"`` run (the floor: call overhead only).

Every run takes the library's default for ``Settings.rings`` (rings: a row of plain numbers at a
step goes into the rank's ring, which the aggregator reads) unless ``COORDINATOR_RINGS`` says
otherwise.

``hot_section`` (``python -m benchmarks.run``, section 1): the same loads with an 80-key dict
(+ 10 + 10 = 100 metrics per step), repeated, full load sustained in chunks for a fixed time;
the realistic and full loads also over the socket (``rings=False``: loads ``realistic, socket``
and ``full, socket``, every point through the rank's buffer and its sender thread), where the
sender thread's CPU time (≈ its GIL share) and each of its flush slices are measured over the
window (with rings it does not flush). ``timer_overhead`` and ``latency_summary`` also time the
peers' hot path (``benchmarks.peers``).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import med, thread_cpu

__all__ = ["hot_path", "hot_section", "latency_summary", "timer_overhead"]


def _settings(d: Path, socket: bool = False) -> Any:
    """A 1-rank run's settings without the system-metrics sampler.

    Every run here checks that exactly the points it logged were acknowledged; a run of the full
    suite lives past the sampler's first sample (10 s), whose ``system/*`` points would join the
    count. The sampler's own cost is measured by ``benchmarks.sampler_cost``. ``socket``: every
    point over the socket (``rings=False``, which overrides ``COORDINATOR_RINGS``); otherwise
    ``rings`` is left to the library's default and the environment, as a user's run leaves it.
    """
    import coordinator

    extra: dict[str, Any] = {"rings": False} if socket else {}
    return coordinator.Settings(rank=0, world_size=1, dir=str(d), system_metrics_interval_s=0, **extra)


def timer_overhead(n: int) -> tuple[int, array[int]]:
    """Median ns of an empty timed region shaped like the measured ones."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        _x = i * 0.5  # unused on purpose: mirrors the measured loops' per-iteration work outside the timer
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0
    return int(statistics.median(out)), out


def latency_summary(samples: array[int], overhead: int) -> dict[str, float]:
    """Count, p50/p99/max in µs and calls over 1 ms of ``samples`` (ns), the timer overhead subtracted."""
    s = sorted(max(0, v - overhead) for v in samples)
    n = len(s)
    return {
        "n": n,
        "p50": s[n // 2] / 1000,
        "p99": s[min(n - 1, int(n * 0.99))] / 1000,
        "max": s[-1] / 1000,
        "over_1ms": sum(1 for v in s if v > 1_000_000),
    }


def _full_scalar_log(run: Any, key: str, n: int, step0: int) -> array[int]:
    """``n`` timed ``run.log({key: x}, step=s)`` calls back to back; ns per call."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        x = i * 0.5
        s = step0 + i
        t0 = pc()
        run.log({key: x}, step=s)
        t1 = pc()
        out[i] = t1 - t0
    return out


def _full_append(run: Any, key: str, n: int, step0: int) -> array[int]:
    """``n`` timed ``run[key].append(x, step=s)`` calls back to back; ns per call."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        x = i * 0.5
        s = step0 + i
        t0 = pc()
        run[key].append(x, step=s)
        t1 = pc()
        out[i] = t1 - t0
    return out


def _full_dict_log(run: Any, keys: list[str], n: int, step0: int) -> array[int]:
    """``n`` timed ``run.log(<dict of keys>, step=s)`` calls back to back (dict built before the timer)."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        d = dict.fromkeys(keys, i * 0.5)
        s = step0 + i
        t0 = pc()
        run.log(d, step=s)
        t1 = pc()
        out[i] = t1 - t0
    return out


def _realistic(
    run: Any, seconds: float, rate: float, dict_keys: list[str], log_keys: list[str], app_keys: list[str]
) -> tuple[array[int], array[int], array[int], float]:
    """Paced steps: one 100-key log(), then scalar log() and append() calls; sleep to the next step."""
    pc = time.perf_counter_ns
    steps = max(1, int(seconds * rate))
    o_dict = array("q", bytes(8 * steps))
    o_log = array("q", bytes(8 * steps * len(log_keys)))
    o_app = array("q", bytes(8 * steps * len(app_keys)))
    period = int(1e9 / rate)
    j = k = 0
    late = 0
    t_next = pc()
    for s in range(steps):
        d = dict(zip(dict_keys, [s + i * 1e-3 for i in range(len(dict_keys))], strict=True))
        t0 = pc()
        run.log(d, step=s)
        t1 = pc()
        o_dict[s] = t1 - t0
        for key in log_keys:
            x = s * 0.25
            t0 = pc()
            run.log({key: x}, step=s)
            t1 = pc()
            o_log[j] = t1 - t0
            j += 1
        for key in app_keys:
            x = s * 0.75
            t0 = pc()
            run[key].append(x, step=s)
            t1 = pc()
            o_app[k] = t1 - t0
            k += 1
        t_next += period
        delay = t_next - pc()
        if delay > 0:
            time.sleep(delay / 1e9)
        else:
            late += 1
    return o_dict, o_log, o_app, late / steps


def hot_path(quick: bool, tmp: Path) -> dict[str, Any]:
    """Part 1. Returns the rows of the hot-path table and the timer overhead."""
    import coordinator

    n_calls = 50_000 if quick else 200_000
    n_dict = 2_000 if quick else 10_000
    seconds = 3.0 if quick else 10.0
    rate = 50.0
    dict_keys = [f"train/metric{i:03d}" for i in range(100)]
    log_keys = [f"train/scalar_log{i}" for i in range(10)]
    app_keys = [f"train/scalar_append{i}" for i in range(10)]
    overhead, _ = timer_overhead(max(n_calls, 100_000))
    rows: list[dict[str, Any]] = []
    checks: list[str] = []

    def add(load: str, call: str, samples: array[int], points_per_call: int = 1, note: str = "") -> None:
        r = latency_summary(samples, overhead)
        r.update(load=load, call=call, ppc=points_per_call, note=note)
        rows.append(r)

    def verify(run: Any, expected: int, what: str) -> None:
        st = run.stats()
        if st["acked"] != expected or st["lost"] or st["pending"] or st.get("dropped"):
            checks.append(f"{what}: stats {st} (expected {expected} points acked)")

    os.environ["COORDINATOR_AGG_STDERR"] = str(tmp / "hotpath-aggregator.log")
    try:
        # realistic: paced 50 steps/s
        run = coordinator.init_run(
            project="bench",
            name="hotpath-realistic",
            settings=_settings(tmp / "hotpath"),
        )
        try:
            o_dict, o_log, o_app, late = _realistic(run, seconds, rate, dict_keys, log_keys, app_keys)
            run.wait(120)
            steps = len(o_dict)
            verify(run, steps * (len(dict_keys) + len(log_keys) + len(app_keys)), "realistic")
        finally:
            run.stop(120)
        pace = f"{steps} steps at {rate:.0f}/s" + (f", {late:.0%} of steps overran" if late else "")
        add("realistic", 'log({"loss": x}, step=s)', o_log, note=pace)
        add("realistic", 'run["loss"].append(x, step=s)', o_app, note=pace)
        add("realistic", "log(<100-key dict>, step=s)", o_dict, 100, note=pace)

        # full: back to back
        run = coordinator.init_run(
            project="bench",
            name="hotpath-full",
            settings=_settings(tmp / "hotpath"),
        )
        try:
            o_log = _full_scalar_log(run, "loss", n_calls, 0)
            run.wait(120)
            o_app = _full_append(run, "loss_append", n_calls, 0)
            run.wait(120)
            o_dict = _full_dict_log(run, dict_keys, n_dict, 0)
            run.wait(120)
            verify(run, 2 * n_calls + 100 * n_dict, "full")
        finally:
            run.stop(120)
        add("full", 'log({"loss": x}, step=s)', o_log)
        add("full", 'run["loss"].append(x, step=s)', o_app)
        add("full", "log(<100-key dict>, step=s)", o_dict, 100)

        # disabled
        run = coordinator.init_run(
            project="bench",
            name="hotpath-disabled",
            mode="disabled",
            settings=_settings(tmp / "hotpath"),
        )
        try:
            o_log = _full_scalar_log(run, "loss", n_calls, 0)
            o_app = _full_append(run, "loss_append", n_calls, 0)
            o_dict = _full_dict_log(run, dict_keys, n_dict, 0)
        finally:
            run.stop()
        add("disabled", 'log({"loss": x}, step=s)', o_log)
        add("disabled", 'run["loss"].append(x, step=s)', o_app)
        add("disabled", "log(<100-key dict>, step=s)", o_dict, 100)
    finally:
        os.environ.pop("COORDINATOR_AGG_STDERR", None)
    return {"rows": rows, "overhead_ns": overhead, "checks": checks, "gc": gc.isenabled()}


# =============================================================================== suite section 1


class _SliceTimer:
    """Wraps the sender thread's ``_flush`` (instance attribute; the library is untouched) to time each slice."""

    def __init__(self, sender: Any, proc: Any) -> None:
        self.sender = sender
        self.proc = proc
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

    def sender_cpu(self) -> float | None:
        """CPU seconds the sender thread used so far."""
        return thread_cpu(self.proc, getattr(self.sender, "native_id", None))


def _window(run: Any, fn: Callable[[], Any], proc: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``fn()`` with the sender thread's CPU time and flush slices measured around it."""
    st = _SliceTimer(run._sender, proc) if getattr(run, "_sender", None) is not None else None
    c0 = st.sender_cpu() if st else None
    p0 = time.process_time()
    t0 = time.monotonic()
    out = fn()
    wall = time.monotonic() - t0
    c1 = st.sender_cpu() if st else None
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
    """Section 1 of the suite: the hot-path table (medians over ``repeats``) and the sender thread's share."""
    import psutil

    import coordinator

    proc = psutil.Process()
    n_calls = 30_000 if quick else 200_000
    full_s = 1.5 if quick else 5.0
    chunk = 10_000
    seconds = 1.5 if quick else 8.0
    rate = 50.0
    dict_keys = [f"train/metric{i:03d}" for i in range(80)]  # + 10 log() + 10 append() = 100 metrics/step
    log_keys = [f"train/scalar_log{i}" for i in range(10)]
    app_keys = [f"train/scalar_append{i}" for i in range(10)]
    overhead, _ = timer_overhead(100_000)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sender: dict[str, list[dict[str, Any]]] = {"realistic, socket": [], "full, socket": []}
    checks: list[str] = []

    def add(load: str, call: str, samples: Any, ppc: int = 1) -> None:
        r = latency_summary(samples, overhead)
        r["ppc"] = ppc
        rows.setdefault((load, call), []).append(r)

    os.environ["COORDINATOR_AGG_STDERR"] = str(tmp / "hotpath-aggregator.log")
    d = tmp / "hotpath"

    def start(load: str, rep: int, socket: bool) -> Any:
        """A run of one load's repeat, at the library's default or over the socket (``rings=False``)."""
        name = f"hot-{load}{'-socket' if socket else ''}-{rep}"
        return coordinator.init_run(project="bench", name=name, settings=_settings(d, socket))

    try:
        for rep in range(repeats):
            # Each load twice: at the library's default (rings: rows into the rank's ring), and with
            # every point over the socket (rings=False: the rank's buffer, its sender's flushes).
            for socket, tag in ((False, ""), (True, ", socket")):
                run = start("real", rep, socket)
                try:
                    (o_dict, o_log, o_app, late), info = _window(
                        run, lambda run=run: _realistic(run, seconds, rate, dict_keys, log_keys, app_keys), proc
                    )
                    run.wait(120)
                    st = run.stats()
                    exp = len(o_dict) * (len(dict_keys) + len(log_keys) + len(app_keys))
                    if st["acked"] != exp or st["lost"] or st["pending"]:
                        checks.append(f"realistic{tag} rep {rep}: stats {st}, expected {exp} acked")
                finally:
                    run.stop(120)
                info["late"] = late
                if socket:  # with rings the sender does not flush: its share is the socket path's story
                    sender["realistic" + tag].append(info)
                add("realistic" + tag, 'log({"loss": x}, step=s)', o_log)
                add("realistic" + tag, 'run["loss"].append(x, step=s)', o_app)
                add("realistic" + tag, "log(<80-key dict>, step=s)", o_dict, 80)

            for socket, tag in ((False, ""), (True, ", socket")):
                run = start("full", rep, socket)
                try:

                    def full(run: Any = run) -> tuple[Any, Any, Any]:
                        # Sustained: chunks of scalar log(), append() and 100-key dict log() calls, back to
                        # back, for full_s seconds, so the sender thread's share is measured at steady state.
                        a, b, c = array("q"), array("q"), array("q")
                        keys100 = [f"train/metric{i:03d}" for i in range(100)]
                        t_end = time.monotonic() + full_s
                        i = 0
                        while time.monotonic() < t_end:
                            a += _full_scalar_log(run, "loss", chunk, i * chunk)
                            b += _full_append(run, "loss_append", chunk, i * chunk)
                            c += _full_dict_log(run, keys100, chunk // 100, i * (chunk // 100))
                            i += 1
                        return a, b, c

                    (o_log, o_app, o_dict), info = _window(run, full, proc)
                    run.wait(120)
                    st = run.stats()
                    exp = len(o_log) + len(o_app) + 100 * len(o_dict)
                    if st["acked"] != exp or st["lost"] or st["pending"]:
                        checks.append(f"full{tag} rep {rep}: stats {st}, expected {exp} acked")
                finally:
                    run.stop(120)
                if socket:
                    sender["full" + tag].append(info)
                add("full" + tag, 'log({"loss": x}, step=s)', o_log)
                add("full" + tag, 'run["loss"].append(x, step=s)', o_app)
                add("full" + tag, "log(<100-key dict>, step=s)", o_dict, 100)

            run = coordinator.init_run(
                project="bench",
                name="hot-disabled",
                mode="disabled",
                settings=_settings(d),
            )
            try:
                add("disabled", 'log({"loss": x}, step=s)', _full_scalar_log(run, "loss", n_calls, 0))
                add("disabled", 'run["loss"].append(x, step=s)', _full_append(run, "loss_append", n_calls, 0))
                # The same paced loop as "realistic" on the no-op run: the floor of a call made after a
                # sleep (cold caches, CPU wake-up), to separate that from the library's own cost.
                if rep == 0 or not quick:
                    _, o_log, o_app, _ = _realistic(run, seconds / 2, rate, dict_keys, log_keys, app_keys)
                    add("disabled, realistic pacing", 'log({"loss": x}, step=s)', o_log)
                    add("disabled, realistic pacing", 'run["loss"].append(x, step=s)', o_app)
            finally:
                run.stop()
    finally:
        os.environ.pop("COORDINATOR_AGG_STDERR", None)
    table = latency_table(rows)
    sender_summary = {}
    for load, infos in sender.items():
        ok = [i for i in infos if "sender_share" in i]
        if ok:
            sender_summary[load] = {
                "share": med([i["sender_share"] for i in ok]),
                "cpu_s": med([i["sender_cpu_s"] for i in ok]),
                "wall_s": med([i["wall_s"] for i in ok]),
                "slice_p50_us": med([i.get("slice_p50_us", 0.0) for i in ok]),
                "slice_p99_us": med([i.get("slice_p99_us", 0.0) for i in ok]),
                "slice_max_us": max(i.get("slice_max_us", 0.0) for i in ok),
                "cpu_slice_p50_us": med([i.get("cpu_slice_p50_us", 0.0) for i in ok]),
                "cpu_slice_p99_us": med([i.get("cpu_slice_p99_us", 0.0) for i in ok]),
                "cpu_slice_max_us": max(i.get("cpu_slice_max_us", 0.0) for i in ok),
                "flushes": med([i.get("flushes", 0) for i in ok]),
                "late": med([i.get("late", 0.0) for i in ok]),
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
        # What the unmarked loads ran on: the library's default, unless COORDINATOR_RINGS turned it off.
        "default_rings": coordinator.Settings.resolve().rings,
    }


def latency_table(rows: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (load, call): the repeats' latency figures combined (medians of p50/p99, the worst max)."""
    return [
        {
            "load": load,
            "call": call,
            "ppc": rs[0].get("ppc", 1),
            "repeats": len(rs),
            "n": sum(r["n"] for r in rs),
            "p50": med([r["p50"] for r in rs]),
            "p99": med([r["p99"] for r in rs]),
            "max": max(r["max"] for r in rs),
            "over_1ms": sum(r["over_1ms"] for r in rs),
            "p50_all": [round(r["p50"], 3) for r in rs],
            "p99_all": [round(r["p99"], 3) for r in rs],
        }
        for (load, call), rs in rows.items()
    ]
