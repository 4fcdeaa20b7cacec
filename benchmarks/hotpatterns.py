"""Hot-path patterns beyond the suite's own, and the longest GIL stretch the sender thread takes (section 1).

Rows added to section 1's table (same columns, medians over repeats; one rank in this process,
sender thread and aggregator process running; at the library's default for ``Settings.rings``,
rings, but for the calls during a flush):

* ``scalar at new steps``: 100 single-scalar ``run.log({key: x}, step=s)`` calls per step, each
  at a new step (``s`` grows by one every call), 50 steps/s — how a new user logs;
* ``first call of a step`` / ``the other 99``: the same calls split by their place in the step;
  the first calls split again by whether the rank's sender flushed in the sleep before them (with
  rings it seldom does: a split with no call is left out).
  The first call after the loop's sleep finds the CPU cold (its caches and the lock's memory
  evicted while the thread slept; on a shared VM also the vCPU's) and takes ~10-40 µs where the
  others take ~0.5: it is 1 in 100 calls, so it *is* the pattern's p99. ``disabled, new steps:
  first call of a step`` is the same loop on a ``mode="disabled"`` run (``log()`` returns at
  once): the machine's floor for that first call; ``plain Python of log()'s shape`` runs the loop
  on a stand-in whose ``log`` does the column path's Python on its own dict: the interpreter's
  own share of that first call, which no change to the library removes;
* ``realistic, no step``: section 1's realistic load (an 80-key dict, 10 scalar ``log()`` and 10
  ``append()`` calls per step, 50 steps/s) with every call made without a step (``run.log(d)``,
  ``run[key].append(x)``): how a user of Neptune's API logs; the rank numbers each key's steps;
* ``full, socket, calls during a sender flush``: back-to-back scalar ``log()`` calls for a few
  seconds on a run with every point over the socket (``rings=False``: the sender's flushes are that
  path's; with rings none may start during the calls); each call is classified by whether the
  sender thread was inside a flush (``SenderThread._flush``, wrapped on the instance; the library
  is untouched) when the call started; the rows give those calls only.

GIL probe (``gil``): a probe thread loops ``t0 = perf_counter_ns(); time.sleep(50 µs)`` and records
how late it wakes up (elapsed - 50 µs) while the run logs at the realistic load (a 100-key dict
per step at 50 steps/s, the main thread sleeping in between). ``time.sleep`` releases the GIL; to
return, the probe needs it back, so its lateness is bounded below by the longest stretch another
thread holds the GIL without releasing it (CPython asks a holder to drop it after
``sys.getswitchinterval()``, 5 ms, so a pure-Python stretch shows as at most ~5 ms; a C call that
keeps the GIL shows in full). The same probe over the same paced loop on a ``mode="disabled"``
run is the floor (OS timer slack, other processes on a shared machine); the figure reported is
the probe's maximum and p99.9 lateness with the coordinator next to that floor, and the
lateness of the wake-ups that fell inside a sender flush. The probe runs on the default's run
(``coordinator``: rings) and on the socket run (``socket``, ``rings=False``, whose sender flushes
every 50 ms: the wake-ups behind a flush, which the performance goal is about, are that run's).
"""

from __future__ import annotations

import threading
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.common import med
from benchmarks.hotpath import latency_table

__all__ = ["patterns_section"]

_PROBE_NS = 50_000
_KEYS = 100
_RATE = 50.0


class _FlushFlag:
    """Wraps the sender's ``_flush`` on the instance: ``busy`` is True while a flush runs, ``spans`` their times."""

    def __init__(self, sender: Any) -> None:
        self.busy = False
        self.spans: list[tuple[int, int]] = []
        orig = sender._flush
        pc = time.perf_counter_ns

        def flagged(now: float) -> None:
            t0 = pc()
            self.busy = True
            try:
                orig(now)
            finally:
                self.busy = False
                self.spans.append((t0, pc()))

        sender._flush = flagged


def _scalar_new_steps(run: Any, seconds: float, flag: _FlushFlag | None = None) -> tuple[array[int], array[int]]:
    """100 ``log({key: x}, step=s)`` per paced step, every call at a new step.

    Returns the ns of each call, and per step whether the sender flushed (``flag``: started,
    ran or ended a flush) between the step before's last call and the step's first call: in the
    sleep before it (all 0 without ``flag``).
    """
    pc = time.perf_counter_ns
    steps = max(1, int(seconds * _RATE))
    out = array("q", bytes(8 * steps * _KEYS))
    flushed = array("q", bytes(8 * steps))
    period = int(1e9 / _RATE)
    t_next = pc()
    seen = 0
    for i in range(steps * _KEYS):
        x = i * 0.5
        if flag is not None and i % _KEYS == 0:
            n = len(flag.spans)
            flushed[i // _KEYS] = n > seen or flag.busy
            seen = n
        t0 = pc()
        run.log({"loss_new": x}, step=i)  # every call at a new step
        t1 = pc()
        out[i] = t1 - t0
        if (i + 1) % _KEYS == 0:
            if flag is not None:
                seen = len(flag.spans)  # a flush during the step's own calls is not in the sleep
            t_next += period
            delay = t_next - pc()
            if delay > 0:
                time.sleep(delay / 1e9)
    return out, flushed


def _realistic_no_step(run: Any, seconds: float) -> tuple[array[int], array[int], array[int], int]:
    """Section 1's realistic load without steps: per paced step one 80-key ``log(d)``, 10 ``log({key: x})`` and 10
    ``run[key].append(x)``. Returns the ns of each kind of call and the points logged."""
    pc = time.perf_counter_ns
    steps = max(1, int(seconds * _RATE))
    dict_keys = [f"nostep/metric{i:03d}" for i in range(80)]
    log_keys = [f"nostep/scalar_log{i}" for i in range(10)]
    handles = [run[f"nostep/scalar_append{i}"] for i in range(10)]
    o_dict, o_log, o_app = array("q", bytes(8 * steps)), array("q", bytes(80 * steps)), array("q", bytes(80 * steps))
    period = int(1e9 / _RATE)
    t_next = pc()
    j = 0
    for s in range(steps):
        d = dict(zip(dict_keys, [s + i * 1e-3 for i in range(80)], strict=True))
        t0 = pc()
        run.log(d)
        o_dict[s] = pc() - t0
        for i, key in enumerate(log_keys):
            x = s * 0.25
            t0 = pc()
            run.log({key: x})
            o_log[j + i] = pc() - t0
        for i, h in enumerate(handles):
            x = s * 0.75
            t0 = pc()
            h.append(x)
            o_app[j + i] = pc() - t0
        j += 10
        t_next += period
        delay = t_next - pc()
        if delay > 0:
            time.sleep(delay / 1e9)
    return o_dict, o_log, o_app, steps * 100


class _SameShape:
    """A stand-in for a run whose ``log`` does Python work of the same shape as the real one's
    column path (type checks, a dict of columns, two appends) on its own objects only: the first
    call after the loop's sleep then shows what the interpreter alone pays for a cold CPU."""

    def __init__(self) -> None:
        self._cols: dict[str, tuple[list[int], list[float]]] = {}

    def log(self, data: dict[str, float], step: int) -> None:
        if type(step) is not int or type(data) is not dict:
            raise TypeError("step must be an int and data a dict")
        cols = self._cols
        for k, v in data.items():
            c = cols.get(k)
            if c is None:
                c = cols[k] = ([], [])
            c[1].append(v)
            c[0].append(step)
            if len(c[0]) >= 10_000:  # the sender's cut, in the real run: keep the lists short
                del c[0][:], c[1][:]


def _during_flush(run: Any, flag: _FlushFlag, seconds: float) -> array[int]:
    """Back-to-back scalar ``log()`` calls; ns of those that started while the sender was flushing."""
    pc = time.perf_counter_ns
    out = array("q")
    t_end = time.monotonic() + seconds
    s = 0
    while time.monotonic() < t_end:
        for _ in range(1000):
            busy = flag.busy
            t0 = pc()
            run.log({"loss_flush": s * 0.5}, step=s)
            t1 = pc()
            if busy:
                out.append(t1 - t0)
            s += 1
    return out


def _probe(run: Any, seconds: float, flag: _FlushFlag | None) -> dict[str, float]:
    """Paced 100-key dict logging on the main thread while the probe thread measures its wake-up lateness."""
    lat = array("q")
    when = array("q")
    stop = threading.Event()
    pc = time.perf_counter_ns

    def probe() -> None:
        while not stop.is_set():
            t0 = pc()
            time.sleep(_PROBE_NS / 1e9)
            t1 = pc()
            lat.append(t1 - t0 - _PROBE_NS)
            when.append(t1)

    th = threading.Thread(target=probe, name="gil-probe", daemon=True)
    th.start()
    keys = [f"train/m{j:03d}" for j in range(_KEYS)]
    period = 1.0 / _RATE
    t_next = time.monotonic()
    try:
        for s in range(int(seconds * _RATE)):
            run.log(dict(zip(keys, [s + j * 1e-3 for j in range(_KEYS)], strict=True)), step=s)
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        stop.set()
        th.join(5)
    s_lat = sorted(lat)
    n = len(s_lat)
    res = {
        "wakeups": float(n),
        "max_us": s_lat[-1] / 1000 if n else 0.0,
        "p999_us": s_lat[min(n - 1, int(n * 0.999))] / 1000 if n else 0.0,
        "p50_us": s_lat[n // 2] / 1000 if n else 0.0,
    }
    if flag is not None and flag.spans:
        # Wake-ups that ended inside a flush, or within 1 ms after one (the GIL is handed over late).
        spans = sorted(flag.spans)
        inside: list[int] = []
        j = 0
        for t, v in sorted(zip(when, lat, strict=True)):
            while j < len(spans) and spans[j][1] + 1_000_000 < t:
                j += 1
            if j < len(spans) and spans[j][0] <= t:
                inside.append(v)
        res["in_flush_max_us"] = max(inside) / 1000 if inside else 0.0
        res["in_flush_wakeups"] = float(len(inside))
        res["flushes"] = float(len(spans))
    return res


def _probe_settled(run: Any, seconds: float, flag: _FlushFlag) -> dict[str, float]:
    """:func:`_probe` on ``run`` once its earlier calls are acknowledged, its flush spans counted afresh; the
    probe's own points acknowledged after it."""
    run.wait(120)
    flag.spans.clear()
    out = _probe(run, seconds, flag)
    run.wait(120)
    return out


def patterns_section(quick: bool, tmp: Path, repeats: int, overhead_ns: int) -> dict[str, Any]:
    """The extra hot-path rows (same shape as section 1's) and the GIL probe, medians over ``repeats``."""
    import coordinator
    from benchmarks.hotpath import latency_summary

    seconds = 2.0 if quick else 6.0
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    gil: dict[str, list[dict[str, float]]] = {"coordinator": [], "socket": [], "disabled": []}
    checks: list[str] = []
    in_ring: list[float] = []
    d = str(tmp / "hotpatterns")
    for rep in range(repeats):
        run = coordinator.init_run(
            project="bench", name=f"hot-patterns-{rep}", settings=coordinator.Settings(rank=0, world_size=1, dir=d)
        )
        try:
            flag = _FlushFlag(run._sender)
            lat, flushed = _scalar_new_steps(run, seconds, flag)
            r = latency_summary(lat, overhead_ns)
            rows.setdefault(("realistic, 100 scalars at new steps", 'log({"loss": x}, step=s)'), []).append(r)
            # The first call after the loop's sleep pays for a cold CPU (caches, the lock): 1 in 100 calls,
            # hence the p99 above; the other 99 show what a call at a new step costs.
            first = array("q", lat[::_KEYS])
            rest = array("q", (v for i, v in enumerate(lat) if i % _KEYS))
            r = latency_summary(first, overhead_ns)
            rows.setdefault(("new steps: first call of a step", 'log({"loss": x}, step=s)'), []).append(r)
            # Split by whether this rank's sender flushed in the sleep before it (about 2 steps in 5 at
            # 50 ms): the other sleeps still hold the aggregator's and the ZeroMQ threads' wake-ups.
            for was, label in ((1, "after a sleep with a sender flush"), (0, "after a sleep without one")):
                part = array("q", (v for v, f in zip(first, flushed, strict=True) if f == was))
                if part:
                    r = latency_summary(part, overhead_ns)
                    rows.setdefault((f"new steps: first call, {label}", 'log({"loss": x}, step=s)'), []).append(r)
            r = latency_summary(rest, overhead_ns)
            rows.setdefault(("new steps: the other 99 calls", 'log({"loss": x}, step=s)'), []).append(r)
            gil["coordinator"].append(_probe_settled(run, seconds, flag))
            before = run.stats()
            o_dict, o_log, o_app, points = _realistic_no_step(run, seconds)
            run.wait(120)
            st = run.stats()
            if st["acked"] - before["acked"] != points or st["lost"] or st["pending"]:
                checks.append(f"realistic, no step, rep {rep}: stats {st}, expected {points} more acked")
            in_ring.append((st.get("ring_points", 0) - before.get("ring_points", 0)) / points)
            for call, lat, ppc in (
                ('log({"loss": x})', o_log, 1),
                ('run["loss"].append(x)', o_app, 1),
                ("log(<80-key dict>)", o_dict, 80),
            ):
                r = latency_summary(lat, overhead_ns)
                r["ppc"] = ppc
                rows.setdefault(("realistic, no step", call), []).append(r)
        finally:
            run.stop(120)
        # The sender's flushes are the socket path's: with rings (the default) it hardly flushes, and
        # none may start during a call. Calls made during one, and the probe's wake-ups behind one, on
        # a run with every point over the socket.
        run = coordinator.init_run(
            project="bench",
            name=f"hot-patterns-socket-{rep}",
            settings=coordinator.Settings(rank=0, world_size=1, dir=d, rings=False),
        )
        try:
            flag = _FlushFlag(run._sender)
            during = _during_flush(run, flag, seconds / 2)
            if during:
                r = latency_summary(during, overhead_ns)
                rows.setdefault(("full, socket, calls during a sender flush", 'log({"loss": x}, step=s)'), []).append(r)
            gil["socket"].append(_probe_settled(run, seconds, flag))
        finally:
            run.stop(120)
        run = coordinator.init_run(
            project="bench",
            name="hot-patterns-off",
            mode="disabled",
            settings=coordinator.Settings(rank=0, world_size=1, dir=d),
        )
        try:
            gil["disabled"].append(_probe(run, seconds, None))
            # The floor of the first call after the loop's sleep: the same loop on a run that does nothing.
            lat, _ = _scalar_new_steps(run, seconds)
            r = latency_summary(array("q", lat[::_KEYS]), overhead_ns)
            rows.setdefault(("disabled, new steps: first call of a step", 'log({"loss": x}, step=s)'), []).append(r)
        finally:
            run.stop()
        # The interpreter's part of that first call: a function of log()'s shape that touches no run.
        lat, _ = _scalar_new_steps(_SameShape(), seconds)
        r = latency_summary(array("q", lat[::_KEYS]), overhead_ns)
        rows.setdefault(("plain Python of log()'s shape, new steps: first call of a step", "log(...)"), []).append(r)
    table = latency_table(rows)
    summary = {
        variant: {
            k: (max if k.endswith("max_us") else med)([x[k] for x in xs if k in x])
            for k in sorted({k for x in xs for k in x})
        }
        for variant, xs in gil.items()
        if xs
    }
    return {
        "rows": table,
        "gil": summary,
        "probe_us": _PROBE_NS / 1000,
        "seconds": seconds,
        "checks": checks,
        "no_step_in_ring": med(in_ring),
    }
