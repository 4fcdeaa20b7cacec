"""How long each thread holds the GIL in one stretch, and how long the training thread waits for it.

The GIL probe of section 1 (a thread that sleeps 50 µs and measures how late it wakes up) cannot
see below the operating system's own timer lateness: 0.3-3 ms on a shared VM, far above the
100 µs the performance goal sets for the sender's longest stretch. This benchmark measures the
stretches themselves. It puts Linux uprobes on CPython's ``take_gil`` (entry and return) and
``drop_gil`` (entry), records them with ``perf record`` for one logging process, and reads, per
thread:

* a *hold*: from ``take_gil`` returning to the next ``drop_gil`` of the same thread, the time
  that thread kept every other Python thread of the process out;
* a *wait*: from ``take_gil``'s entry to its return, the time a thread that wanted the GIL waited
  for it (the training thread's waits are what a training step feels).

The same recording takes the process's context switches (``--switch-events``), so each hold is
also given *on the CPU*: less the time the operating system had the holder switched out
(preempted by another process on a busy machine, which no slicing of ours can prevent).
The recording starts before ``init_run``, so the threads a run starts are seen from their first
stretch; the start-up (``init_run`` to 1 s after it returned) is reported apart.

The process logs as in the suite's GIL probe: one rank, a 100-key dict per step at 50 steps/s,
the training thread sleeping in between; with ``--load full`` it calls ``log({"loss": x}, step=s)``
back to back instead, so the training thread wants the GIL at every moment the sender holds it.
The run takes the library's default for ``Settings.rings`` (rings: its rows go into the rank's
ring, which the aggregator reads, and the sender does not flush) unless ``COORDINATOR_RINGS``
says otherwise; with ``--socket`` it sends every point over the socket (``rings=False``: the
sender's flushes, the stretches the performance goal is about; ``--spans`` then shows them).
The same loop on a ``mode="disabled"`` run gives the floor of the training thread's waits (the
probes' own cost, a few µs per event, is in every figure). Figures are medians over repeats, and
the longest of all repeats.

Needs Linux, root (uprobes are set up through tracefs), ``perf``, and a CPython whose
``take_gil``/``drop_gil`` symbols are in its ``libpython`` or executable (CPython 3.11 built with
``--enable-shared``, as pyenv's is; Debian's ``python3.11`` strips them). Without them it says what
is missing and exits 2.

    python -m benchmarks.gil_holds --seconds 6 --repeats 3   (--load full; --socket)
    python -m benchmarks.gil_holds --seconds 6 --repeats 1 --socket --spans 10   (what ran in the longest)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import gil_spans
from benchmarks.common import child_env, med
from benchmarks.profiling import stop_recorder
from benchmarks.workers import Worker, emit, wait_go
from coordinator.settings import Settings

__all__ = ["GilThread", "find_libpython", "main", "parse_events", "run_settings", "summarize"]

_GROUP = "coordgil"
_RATE = 50.0
_KEYS = 100
_EVENT = re.compile(r"^\s*(\d+)/(\d+)\s+(\d+\.\d+):\s+" + _GROUP + r":(\w+):")
_SWITCH = re.compile(r"^\s*(\d+)/(\d+)\s+(\d+\.\d+):\s+PERF_RECORD_SWITCH\s+(IN|OUT)\b")
"""``perf script -F pid,tid,time,event``: the recorded process's children (the aggregator it starts) are
recorded too (perf follows forks), and their lines are told apart by the pid."""


@dataclass
class GilThread:
    """One thread's GIL holds and waits, each as its (start, end) in monotonic nanoseconds."""

    holds: list[tuple[int, int]] = field(default_factory=list)
    waits: list[tuple[int, int]] = field(default_factory=list)


def _ns(stamp: str) -> int:
    """``perf script --ns`` seconds (``123.456789012``) as integer nanoseconds."""
    sec, _, frac = stamp.partition(".")
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def parse_events(lines: Iterable[str], pid: int) -> dict[int, GilThread]:
    """Per thread id of process ``pid``, its holds and waits from ``perf script -F pid,tid,time,event --ns`` lines.

    Events: ``take`` (``take_gil`` entered: the thread wants the GIL), ``taken__return`` (it has
    it), ``drop`` (``drop_gil`` entered: it gives it up). A hold or wait whose start falls
    before the recording began is skipped: only complete ones are counted.
    """
    out: dict[int, GilThread] = {}
    want: dict[int, int] = {}
    has: dict[int, int] = {}
    for line in lines:
        m = _EVENT.match(line)
        if m is None or int(m.group(1)) != pid:
            continue
        tid = int(m.group(2))
        t = _ns(m.group(3))
        ev = m.group(4)
        th = out.get(tid)
        if th is None:
            th = out[tid] = GilThread()
        if ev == "take":
            want[tid] = t
        elif ev.startswith("taken"):
            t0 = want.pop(tid, None)
            if t0 is not None:
                th.waits.append((t0, t))
            has[tid] = t
        elif ev == "drop":
            t0 = has.pop(tid, None)
            if t0 is not None:
                th.holds.append((t0, t))
    return out


def parse_switches(lines: Iterable[str], pid: int) -> dict[int, list[tuple[int, int]]]:
    """Per thread of process ``pid``, its (switched out, back in) times, from ``--show-switch-events`` lines."""
    out: dict[int, list[tuple[int, int]]] = {}
    gone: dict[int, int] = {}
    for line in lines:
        m = _SWITCH.match(line)
        if m is None or int(m.group(1)) != pid:
            continue
        tid, t = int(m.group(2)), _ns(m.group(3))
        if m.group(4) == "OUT":
            gone[tid] = t
        elif tid in gone:
            out.setdefault(tid, []).append((gone.pop(tid), t))
    return out


def on_cpu(spans: list[tuple[int, int]], away: list[tuple[int, int]]) -> list[int]:
    """Each span's length less its overlap with the thread's switched-out intervals (both sorted by start)."""
    res: list[int] = []
    j = 0
    for a, b in spans:
        while j < len(away) and away[j][1] <= a:
            j += 1
        off = 0
        k = j
        while k < len(away) and away[k][0] < b:
            off += min(b, away[k][1]) - max(a, away[k][0])
            k += 1
        res.append(b - a - off)
    return res


def _pct(xs: list[int], q: float) -> float:
    """The ``q`` quantile of sorted ``xs``, in µs (0 when empty)."""
    return xs[min(len(xs) - 1, int(len(xs) * q))] / 1000 if xs else 0.0


def summarize(
    threads: dict[int, GilThread],
    names: dict[int, str],
    away: dict[int, list[tuple[int, int]]] | None = None,
    window: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The figures of one recording: every thread's holds (also on the CPU) and waits.

    ``window``: only the holds and waits that start in it count (monotonic ns; the recording's
    timestamps are ``CLOCK_MONOTONIC``).
    """
    lo, hi = window if window is not None else (0, 1 << 62)
    res: dict[str, Any] = {"threads": {}}
    for tid, th in threads.items():
        name = names.get(tid, f"tid {tid}")
        spans = [s for s in th.holds if lo <= s[0] < hi]
        holds = sorted(b - a for a, b in spans)
        waits = sorted(b - a for a, b in th.waits if lo <= a < hi)
        if not holds and not waits:
            continue
        cpu = sorted(on_cpu(spans, away.get(tid, []))) if away is not None else []  # never switched out: all on it
        res["threads"][name] = {
            "cpu_hold_p99_us": _pct(cpu, 0.99),
            "cpu_hold_max_us": cpu[-1] / 1000 if cpu else 0.0,
            "holds": len(holds),
            "hold_p50_us": _pct(holds, 0.5),
            "hold_p99_us": _pct(holds, 0.99),
            "hold_p999_us": _pct(holds, 0.999),
            "hold_max_us": holds[-1] / 1000 if holds else 0.0,
            "wait_p50_us": _pct(waits, 0.5),
            "wait_p99_us": _pct(waits, 0.99),
            "wait_max_us": waits[-1] / 1000 if waits else 0.0,
            "waits_over_50us": sum(1 for w in waits if w > 50_000),
        }
    return res


def find_libpython() -> Path | None:
    """The file holding this interpreter's ``take_gil``: its ``libpython`` if it maps one, else the executable."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if re.search(r"/libpython3\.\d+\.so", path):
            return Path(path)
    return Path(os.path.realpath(sys.executable))


def _perf(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["perf", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _add_probes(lib: Path) -> str | None:
    """Set up the three uprobes; the reason when they cannot be."""
    if sys.platform != "linux":
        return "uprobes need Linux"
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    if os.geteuid() != 0:
        return "uprobes are set up through tracefs: run as root"
    _perf(["probe", "-q", "-d", f"{_GROUP}:*"])  # left over from an interrupted run
    p = _perf(
        [
            "probe",
            "-q",
            "-x",
            str(lib),
            "-a",
            f"{_GROUP}:take=take_gil",
            "-a",
            f"{_GROUP}:taken=take_gil%return",
            "-a",
            f"{_GROUP}:drop=drop_gil",
        ]
    )
    if p.returncode != 0:
        return f"perf probe on {lib} failed (no take_gil/drop_gil symbols?): {p.stderr.strip()[-300:]}"
    return None


def _remove_probes() -> None:
    _perf(["probe", "-q", "-d", f"{_GROUP}:*"])


# ------------------------------------------------------------------------------- the logging process


def _names() -> dict[int, str]:
    """This process's Python threads: native id -> name."""
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def run_settings(cfg: dict[str, Any]) -> Settings:
    """The logging process's settings: one rank in ``cfg["dir"]``; with ``cfg["socket"]`` every point over the
    socket (``rings=False``), otherwise ``rings`` left to the library's default and ``COORDINATOR_RINGS``."""
    extra: dict[str, Any] = {"rings": False} if cfg.get("socket") else {}
    return Settings(rank=0, world_size=1, dir=cfg["dir"], **extra)


def _worker(cfg: dict[str, Any]) -> int:
    """One logging process: a run (or a disabled one), the logging loop between GO and DONE."""
    import coordinator

    emit("STARTED", {"pid": os.getpid()})
    if sys.stdin.readline().strip() != "INIT":  # the parent's recorder is attached
        return 2
    marks = gil_spans.install() if cfg.get("spans") else None
    t_init = time.monotonic_ns()
    run = coordinator.init_run(project="bench", name="gil-holds", mode=cfg["mode"], settings=run_settings(cfg))
    emit("READY", {"names": _names(), "t_init": t_init})
    if wait_go() is None:
        run.stop(60)
        return 2
    t_go = time.monotonic_ns()
    if cfg.get("load") == "full":  # scalar log() calls back to back: the training thread always wants the GIL
        t_end = time.monotonic() + cfg["seconds"]
        s = 0
        while time.monotonic() < t_end:
            for _ in range(1000):
                run.log({"loss": s * 0.5}, step=s)
                s += 1
    else:
        keys = [f"train/m{j:03d}" for j in range(_KEYS)]
        period = 1.0 / _RATE
        t_next = time.monotonic()
        for s in range(int(cfg["seconds"] * _RATE)):
            run.log(dict(zip(keys, [s + j * 1e-3 for j in range(_KEYS)], strict=True)), step=s)
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    t_done = time.monotonic_ns()
    if marks is not None:
        marks.dump(Path(cfg["spans"]))
    emit("DONE", {"names": _names(), "window": [t_go, t_done]})
    sys.stdin.readline()  # STOP (or EOF)
    run.stop(60)
    return 0


def _record(
    mode: str, seconds: float, tmp: Path, load: str = "paced", spans: int = 0, socket: bool = False
) -> dict[str, Any]:
    """One logging process under ``perf record`` (its GIL events and context switches); its summary.

    ``spans``: mark the sender's code (:mod:`benchmarks.gil_spans`) and list its that many longest holds.
    ``socket``: the run sends every point over the socket (``rings=False``); otherwise it takes the
    library's default (rings: its rows go into the rank's ring, which the aggregator reads).
    """
    env = child_env(tmp)
    data = tmp / f"perf-{mode}.data"
    marks = tmp / f"marks-{mode}.json"
    cfg = {
        "mode": mode,
        "seconds": seconds,
        "dir": str(tmp / "runs"),
        "load": load,
        "spans": str(marks) if spans else "",
        "socket": socket,
    }
    w = Worker(cfg, env, tmp / f"{mode}.err", "benchmarks.gil_holds")
    perf: subprocess.Popen[bytes] | None = None
    try:
        pid = w.expect("STARTED", time.monotonic() + 60)["pid"]
        events = [a for e in ("take", "taken__return", "drop") for a in ("-e", f"{_GROUP}:{e}")]
        perf = subprocess.Popen(
            [
                "perf",
                "record",
                "-q",
                "-k",
                "CLOCK_MONOTONIC",
                "--switch-events",
                *events,
                "-p",
                str(pid),
                "-o",
                str(data),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attaches to the process (threads started later inherit its events)
        w.send("INIT")
        ready = w.expect("READY", time.monotonic() + 60)
        time.sleep(1.0)  # the start-up: the run's threads begin their work
        w.send(f"GO {time.monotonic()}")
        done = w.expect("DONE", time.monotonic() + seconds + 60)
    finally:
        stop_recorder(perf)
        w.send("STOP")
        w.close(60)
    script = _perf(["script", "-i", str(data), "-F", "pid,tid,time,event", "--ns", "--show-switch-events"], timeout=300)
    lines = script.stdout.splitlines()
    names = {int(k): v for k, v in {**ready["names"], **done["names"]}.items()}
    names[pid] = "MainThread"
    threads, away = parse_events(lines, pid), parse_switches(lines, pid)
    go, end = done["window"]
    out: dict[str, Any] = {
        "steady": summarize(threads, names, away, (go, end)),
        "start": summarize(threads, names, away, (ready["t_init"], go)),
    }
    if spans and marks.exists():
        tid = next(t for t, n in names.items() if n.startswith("coordinator-sender"))
        holds = [h for h in threads[tid].holds if go <= h[0] < end]
        out["spans"] = gil_spans.annotate(holds, on_cpu(holds, away.get(tid, [])), json.loads(marks.read_text()), spans)
    return out


def _row(results: list[dict[str, Any]], name: str, keys: tuple[str, ...]) -> dict[str, float]:
    """Medians over repeats of ``name``'s figures, and the largest of each."""
    got = [r["threads"][name] for r in results if name in r["threads"]]
    out: dict[str, float] = {}
    for k in keys:
        xs = [g[k] for g in got]
        out[k] = med(xs) if xs else 0.0
        out[k + "_worst"] = max(xs) if xs else 0.0
    return out


_HOLD = ("holds", "hold_p50_us", "hold_p99_us", "hold_p999_us", "hold_max_us", "cpu_hold_p99_us", "cpu_hold_max_us")
_WAIT = ("wait_p50_us", "wait_p99_us", "wait_max_us", "waits_over_50us", "hold_p50_us")


def report(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The lines printed: the steady window's sender and training thread, then the start-up's threads."""
    steady = {label: [r["steady"] for r in rs] for label, rs in runs.items()}
    out = ["while logging (GO to the last step):"]
    ours = sorted({n for r in steady["coordinator"] for n in r["threads"] if n.startswith("coordinator-")})
    for name in ours:
        r = _row(steady["coordinator"], name, _HOLD)
        out.append(
            f"  {name}: {r['holds']:.0f} holds, p50 {r['hold_p50_us']:.0f} µs, p99 {r['hold_p99_us']:.0f}, "
            f"p99.9 {r['hold_p999_us']:.0f}, longest {r['hold_max_us']:.0f} [{r['hold_max_us_worst']:.0f}] µs; "
            f"on the CPU: p99 {r['cpu_hold_p99_us']:.0f}, longest {r['cpu_hold_max_us']:.0f} "
            f"[{r['cpu_hold_max_us_worst']:.0f}] µs"
        )
    for label in ("coordinator", "disabled"):
        r = _row(steady[label], "MainThread", _WAIT)
        out.append(
            f"  training thread ({label}): waits for the GIL p50 {r['wait_p50_us']:.1f} µs, "
            f"p99 {r['wait_p99_us']:.1f}, "
            f"longest {r['wait_max_us']:.0f} [{r['wait_max_us_worst']:.0f}] µs, {r['waits_over_50us']:.0f} over 50 µs; "
            f"its own holds p50 {r['hold_p50_us']:.0f} µs"
        )
    start = [r["start"] for r in runs["coordinator"]]
    out.append("start-up (init_run, then 1 s):")
    for name in sorted({n for r in start for n in r["threads"] if n.startswith("coordinator-")}):
        r = _row(start, name, _HOLD)
        out.append(
            f"  {name}: {r['holds']:.0f} holds, longest {r['hold_max_us']:.0f} [{r['hold_max_us_worst']:.0f}] µs, "
            f"on the CPU {r['cpu_hold_max_us']:.0f} [{r['cpu_hold_max_us_worst']:.0f}] µs"
        )
    return out


def measure(
    seconds: float, repeats: int, load: str = "paced", spans: int = 0, socket: bool = False
) -> tuple[dict[str, list[dict[str, Any]]] | None, str]:
    """Interleaved recordings of both modes (see :func:`report`); None and the reason when uprobes cannot be used.

    ``spans``: the coordinator's recordings mark the sender's code (:mod:`benchmarks.gil_spans`).
    ``socket``: the coordinator's run sends every point over the socket (``rings=False``).
    """
    lib = find_libpython()
    why = _add_probes(lib) if lib is not None else "cannot read /proc/self/maps"
    if why is not None:
        return None, why
    runs: dict[str, list[dict[str, Any]]] = {"coordinator": [], "disabled": []}
    try:
        with tempfile.TemporaryDirectory(prefix="gil-holds-") as d:
            for _ in range(repeats):
                for mode, label in (("async", "coordinator"), ("disabled", "disabled")):
                    on = mode != "disabled"
                    runs[label].append(_record(mode, seconds, Path(d), load, spans if on else 0, socket and on))
    finally:
        _remove_probes()
    return runs, ""


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "_worker":
        return _worker(json.loads(argv[1]))
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gil_holds", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="logging time per recording (default 6)")
    ap.add_argument("--repeats", type=int, default=3, help="recordings of each mode, interleaved (default 3)")
    ap.add_argument("--json", type=Path, help="write every recording's figures here")
    ap.add_argument(
        "--load",
        choices=("paced", "full"),
        default="paced",
        help="paced: a 100-key dict at 50 steps/s (default); full: scalar log() calls back to back",
    )
    ap.add_argument(
        "--spans",
        type=int,
        default=0,
        metavar="N",
        help="mark the sender's code and list what ran in its N longest holds (benchmarks.gil_spans; "
        "the marks lengthen the holds)",
    )
    ap.add_argument(
        "--socket",
        action="store_true",
        help="the coordinator's run sends every point over the socket (rings=False), not at the library's default",
    )
    args = ap.parse_args(argv)
    runs, why = measure(args.seconds, args.repeats, args.load, args.spans, args.socket)
    if runs is None:
        print(f"gil_holds: not measured: {why}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    what = f"a {_KEYS}-key dict at {_RATE:.0f} steps/s" if args.load == "paced" else "scalar log() calls back to back"
    rings = not args.socket and Settings.from_env().rings  # the default, unless COORDINATOR_RINGS turned it off
    what += ", rings" if rings else ", over the socket (rings=False)"
    print(f"GIL stretches, one rank, {what}, {args.seconds:.0f} s x {args.repeats}")
    print("(medians over the recordings; [the largest])")
    for line in report(runs):
        print(line)
    for i, r in enumerate(runs["coordinator"]):
        if r.get("spans"):
            print(f"the sender's longest holds, recording {i + 1} (marked: see benchmarks.gil_spans):")
            print("\n".join(r["spans"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
