"""Hot-path latency and end-to-end durable throughput of the coordinator.

Run from the repository root::

    python -m benchmarks.throughput            # full: a few minutes
    python -m benchmarks.throughput --quick    # under ~90 s on 2 cores
    python -m benchmarks.throughput --quick --profile   # + py-spy profile of a 4-rank run

Part 1, hot path (in this process, one rank, sender thread and aggregator process running):
the cost of one ``run.log({"loss": x}, step=s)`` call and of one ``run[k].append(x, step=s)``
call on the training thread, timed call by call with ``time.perf_counter_ns``. The median
cost of an empty timed region (two back-to-back ``perf_counter_ns()`` calls plus storing the
difference) is measured first and subtracted from every sample (clamped at 0). Loads:

* realistic: paced at 50 steps/s (sleeping between steps); each step makes one ``log()`` of
  a 100-key dict (the dict is built before the timer starts), then 10 single-scalar
  ``log({key: x}, step=s)`` calls and 10 ``run[key].append(x, step=s)`` calls;
* full: the same calls back to back, as fast as possible;
* disabled: the full-load calls on a ``mode="disabled"`` run (the floor: call overhead only).

The single-scalar timed expression is literally ``run.log({key: x}, step=s)``: it includes
building the 1-key dict (~30 ns) and the attribute lookup, as a user's line would.

Part 2, durable throughput: N in {1, 2, 4} real rank processes (this script's ``_worker``
sub-command), each calling ``coordinator.init_run(rank=r, world_size=N, dir=..., project=
"bench")``; after every rank is ready, the parent sends one common start time, every rank logs
P points as fast as it can in ``log()`` calls of K keys each, then calls ``run.wait()``. The
clock runs from the common start time until the last rank's ``wait()`` returned (every
point committed to the run's SQLite store and acknowledged); points/s = N * P / elapsed.
Then every rank's series of every key, and the reduced main series, is read back through
``init_run(with_id=..., mode="read-only")`` and compared point by point (each step exactly
once, each value as logged); any difference makes the script exit non-zero. Client RSS
(psutil, every rank), the aggregator's peak RSS and its CPU use during the timed window are
reported; the aggregator is found as the child of rank 0 with ``coordinator.aggregator.core`` in
its command line.

Part 3: a markdown report (printed and written to
``benchmarks/results/throughput-<hostname>-<date>.md``; ``-quick`` is appended in quick mode
so that a quick run never overwrites a full one) with the command line, versions, CPU, core
count and date, and each target marked met or missed:

* ``log()`` p50 <= 2 us and p99 <= 20 us (single-scalar calls, realistic and full load);
* 4 ranks >= 500,000 points/s durable.

Every child process is reaped with a timeout (killed by pid if it overstays); the script
checks at the end that none of its descendants is left.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PROTO = "@@BENCH "
"""Prefix of the worker -> parent protocol lines on the worker's stdout."""

# Targets (from the project brief).
TARGET_P50_US = 2.0
TARGET_P99_US = 20.0
TARGET_4RANK_PPS = 500_000

_ENV_TO_CLEAR = (
    "COORDINATOR_ENDPOINT",
    "COORDINATOR_RUN_ID",
    "COORDINATOR_MODE",
    "COORDINATOR_DIR",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "SLURM_PROCID",
    "SLURM_NTASKS",
)


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


# =============================================================================== part 1: hot path


def _timer_overhead(n: int) -> tuple[int, array[int]]:
    """Median ns of an empty timed region shaped like the measured ones."""
    pc = time.perf_counter_ns
    out = array("q", bytes(8 * n))
    for i in range(n):
        x = i * 0.5  # noqa: F841 - mirrors the measured loops' per-iteration work outside the timer
        t0 = pc()
        t1 = pc()
        out[i] = t1 - t0
    return int(statistics.median(out)), out


def _summary(samples: array[int], overhead: int) -> dict[str, float]:
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
    overhead, _ = _timer_overhead(max(n_calls, 100_000))
    rows: list[dict[str, Any]] = []
    checks: list[str] = []

    def add(load: str, call: str, samples: array[int], points_per_call: int = 1, note: str = "") -> None:
        r = _summary(samples, overhead)
        r.update(load=load, call=call, ppc=points_per_call, note=note)
        rows.append(r)

    def verify(run: Any, expected: int, what: str) -> None:
        st = run.stats()
        if st["acked"] != expected or st["lost"] or st["pending"] or st.get("dropped"):
            checks.append(f"{what}: stats {st} (expected {expected} points acked)")

    os.environ["COORDINATOR_AGG_STDERR"] = str(tmp / "hotpath-aggregator.log")
    try:
        # realistic: paced 50 steps/s
        run = coordinator.init_run(project="bench", name="hotpath-realistic", rank=0, world_size=1, dir=tmp / "hotpath")
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
        run = coordinator.init_run(project="bench", name="hotpath-full", rank=0, world_size=1, dir=tmp / "hotpath")
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
            project="bench", name="hotpath-disabled", mode="disabled", rank=0, world_size=1, dir=tmp / "hotpath"
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


# =============================================================================== part 2: worker


def _emit(tag: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{PROTO}{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def _sender_cpu(proc: Any, tid: int | None) -> float | None:
    if tid is None:
        return None
    for t in proc.threads():
        if t.id == tid:
            return float(t.user_time + t.system_time)
    return None


def worker_main(argv: list[str]) -> int:
    """``_worker '<json>'``: one rank of a throughput trial, driven over stdin/stdout."""
    cfg = json.loads(argv[0])
    import psutil

    import coordinator

    rank, world, k, points = cfg["rank"], cfg["world"], cfg["keys"], cfg["points"]
    proc = psutil.Process()
    t0 = time.monotonic()
    extra = {"backpressure": cfg["backpressure"]} if cfg.get("backpressure") else {}
    run = coordinator.init_run(project="bench", name=cfg["name"], rank=rank, world_size=world, dir=cfg["dir"], **extra)
    init_s = time.monotonic() - t0
    sender = getattr(run, "_sender", None)
    tid = getattr(sender, "native_id", None)
    keys = [f"m{j:03d}" for j in range(k)]
    steps = points // k
    _emit("READY", {"run_id": run.id, "pid": os.getpid(), "init_s": init_s, "rss": proc.memory_info().rss})
    line = sys.stdin.readline()
    if not line.startswith("GO "):
        run.stop(60)
        return 2
    t_start = float(line.split()[1])
    while True:  # coarse sleep, then spin the last millisecond
        left = t_start - time.monotonic()
        if left <= 0:
            break
        time.sleep(left - 0.001 if left > 0.002 else 0)
    cpu0 = proc.cpu_times()
    scpu0 = _sender_cpu(proc, tid)
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
    scpu1 = _sender_cpu(proc, tid)
    _emit(
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
    line = sys.stdin.readline()  # "STOP" (or EOF: the parent is gone; stop anyway)
    t0 = time.monotonic()
    run.stop(cfg["wait_timeout"])
    _emit("STOPPED", {"stop_s": time.monotonic() - t0})
    return 0


# =============================================================================== part 2: parent


class _Worker:
    """One rank process and a thread turning its protocol lines into a queue."""

    def __init__(
        self,
        cfg: dict[str, Any],
        env: dict[str, str],
        stderr_path: Path,
        module: str = "benchmarks.throughput",
        sub: str = "_worker",
    ) -> None:
        """Start ``python -m <module> <sub> '<cfg as JSON>'`` (other benchmark modules reuse this)."""
        self.rank = cfg.get("rank", 0)
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, sub, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=ROOT,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"bench-reader-{self.rank}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                self.lines.put(line[len(PROTO) :])
        self.lines.put(None)

    def expect(self, tag: str, deadline: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"rank {self.rank}: no {tag} before the deadline") from None
        if line is None:
            raise RuntimeError(
                f"rank {self.rank}: exited (code {self.proc.poll()}) before {tag}; "
                f"see {self.stderr_path}:\n{self.stderr_tail()}"
            )
        got, _, payload = line.partition(" ")
        if got != tag:
            raise RuntimeError(f"rank {self.rank}: expected {tag}, got {line!r:.200}")
        data: dict[str, Any] = json.loads(payload)
        return data

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self, timeout: float) -> int | None:
        """Wait for exit; kill this worker and its descendants (by pid) if it overstays."""
        import psutil

        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            try:
                kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            for p in [*kids]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self.proc.kill()
            self.proc.wait(10)
            for p in kids:
                with contextlib.suppress(psutil.Error):
                    p.wait(10)
        self._reader.join(5)
        self._err.close()
        return code


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
    import psutil

    while time.monotonic() < deadline:
        try:
            for p in psutil.Process(rank0_pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "coordinator.aggregator.core" in " ".join(p.cmdline()):
                        return p
        except psutil.Error:
            return None
        time.sleep(0.05)
    return None


def _child_env(trial_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_TO_CLEAR}
    # Consecutive trials are launched by this same parent, so without a distinct job identity
    # they would share one rendezvous file (discovery keys it on launcher variables + parent
    # pid, and the per-process call counter restarts at 0 in every new worker): a record left
    # by a failed trial would then be read by the next one. torchrun sets this variable too; recent
    # versions of the library also derive the run id from it (one fresh id per trial here).
    env["TORCHELASTIC_RUN_ID"] = f"bench-{uuid.uuid4().hex[:12]}"
    env["COORDINATOR_AGG_STDERR"] = str(trial_dir / "aggregator.log")
    if str(ROOT) not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _verify(store: Path, run_id: str, world: int, keys: list[str], steps: int) -> tuple[list[str], dict[str, Any]]:
    """Read every series back; returns (problems, run report)."""
    import coordinator
    from coordinator.journal.store import LocalStore, run_dir

    problems: list[str] = []
    ro = coordinator.init_run(with_id=run_id, mode="read-only", dir=store)
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
    for c in ("duplicate_batches", "late_points", "replaced_points", "bad_frames", "gaps"):
        if rep.get(c):
            problems.append(f"aggregator report: {c}={rep[c]}")
    return problems, rep


def _pyspy(pid: int, out: Path, threads: bool) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return None
    cmd = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"]
    if threads:
        cmd.append("--threads")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pyspy_stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is None:
        return
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def _profile_summary(path: Path, top: int = 14) -> list[str]:
    """Self and inclusive sample shares of the hottest functions in a py-spy raw (collapsed) file."""
    if not path.exists():
        return [f"(no profile at {path})"]
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    thread_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        cnt = int(n)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            thread_c[frames[0]] += cnt
            frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += cnt
        names = [re.sub(r" \((?:[^()]*/)?([^()/]+:\d+)\)$", r" (\1)", f) for f in frames]
        self_c[names[-1]] += cnt
        for f in set(re.sub(r":\d+\)$", ")", f) for f in names):
            incl[f] += cnt
    if not total:
        return ["(empty profile)"]
    out = [f"{total} samples"]
    if thread_c:
        out.append("threads: " + ", ".join(f"{t} {c / total:.0%}" for t, c in thread_c.most_common(4)))
    out.append("self time (leaf frame):")
    out += [f"  {c / total:6.1%}  {f}" for f, c in self_c.most_common(top)]
    out.append("inclusive:")
    out += [f"  {c / total:6.1%}  {f}" for f, c in incl.most_common(top)]
    return out


def trial(
    world: int,
    k: int,
    points: int,
    tmp: Path,
    label: str,
    profile_dir: Path | None = None,
    backpressure: str | None = None,
) -> dict[str, Any]:
    """Part 2: one run of ``world`` ranks logging ``points`` each in calls of ``k`` keys.

    ``backpressure``: passed to ``init_run`` when given (else the library's default).
    """
    trial_dir = tmp / label
    trial_dir.mkdir(parents=True)
    store = trial_dir / "store"
    env = _child_env(trial_dir)
    steps = points // k
    points = steps * k
    wait_timeout = 60.0 + world * points / 20_000
    workers: list[_Worker] = []
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
            workers.append(_Worker(cfg, env, trial_dir / f"rank{r}.stderr"))
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
                spies.append(_pyspy(agg.pid, profile_dir / f"{label}-aggregator.txt", threads=False))
            spies.append(_pyspy(workers[0].proc.pid, profile_dir / f"{label}-rank0.txt", threads=True))
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
            _pyspy_stop(p)
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
            _pyspy_stop(p)
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


# =============================================================================== part 3: report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    import msgpack
    import psutil
    import zmq

    import coordinator

    return {
        "python": platform.python_version(),
        "coordinator": getattr(coordinator, "__version__", "?"),
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
        "msgpack": ".".join(map(str, msgpack.version)),
        "psutil": psutil.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "coordinator"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"git {out.stdout.strip()}, coordinator/ {'with uncommitted changes' if dirty else 'as committed'}"
    except (OSError, subprocess.SubprocessError):
        return "git ?"


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    load0: tuple[float, float, float],
    hot: dict[str, Any] | None,
    trials: list[dict[str, Any]],
    profile: list[str],
    wall: float,
) -> str:
    import coordinator

    v = _versions()
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    la = os.getloadavg()
    md: list[str] = [
        f"# coordinator throughput benchmark ({'quick' if args.quick else 'full'})",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, '-m', 'benchmarks.throughput', *sys.argv[1:]])}`",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')}; wall time {wall:.0f} s",
        f"- host: {socket.gethostname()}; CPU: {_cpu_model()}; cores: {cores} ({usable} usable); "
        f"load average (1/5/15 min) at the start {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}, "
        f"at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}",
        f"- python {v['python']}, coordinator {v['coordinator']} ({_git_rev()}; "
        f"from {Path(coordinator.__file__).parent}), pyzmq {v['pyzmq']}, "
        f"msgpack {v['msgpack']}, psutil {v['psutil']}, SQLite {v['sqlite']}",
        "",
    ]
    # ---- targets
    tgt: list[tuple[str, str, bool]] = []
    if hot:
        for r in hot["rows"]:
            if r["load"] in ("realistic", "full") and r["ppc"] == 1 and r["call"].startswith("log("):
                tgt.append(
                    (
                        f"`log()` p50 <= {TARGET_P50_US:g} µs ({r['load']} load)",
                        f"{r['p50']:.2f} µs",
                        r["p50"] <= TARGET_P50_US,
                    )
                )
                tgt.append(
                    (
                        f"`log()` p99 <= {TARGET_P99_US:g} µs ({r['load']} load)",
                        f"{r['p99']:.2f} µs",
                        r["p99"] <= TARGET_P99_US,
                    )
                )
    for k in sorted({t["k"] for t in trials if t["world"] == 4}, reverse=True):
        runs = [t for t in trials if t["world"] == 4 and t["k"] == k and t.get("pps")]
        if runs:
            best = statistics.median(t["pps"] for t in runs)
            tgt.append(
                (
                    f"4 ranks >= {TARGET_4RANK_PPS:,} points/s durable ({k} keys/call)",
                    f"{best:,.0f} points/s",
                    best >= TARGET_4RANK_PPS,
                )
            )
    if tgt:
        md += ["## Targets", "", "| target | measured | status |", "| --- | ---: | --- |"]
        md += [f"| {a} | {b} | {_mark(c)} |" for a, b, c in tgt]
        md.append("")
    # ---- hot path
    if hot:
        md += [
            "## 1. Hot path (training thread, sender thread and aggregator running)",
            "",
            f"Per call, `time.perf_counter_ns` around the call; the timer overhead ({hot['overhead_ns']} ns, "
            "median of an empty timed region) is subtracted from every sample. One rank "
            f"(`rank=0, world_size=1`), garbage collector {'on' if hot['gc'] else 'off'}. "
            "realistic = paced 50 steps/s with sleeps; each step one 100-key `log()` (dict built before the "
            "timer), 10 single-key `log()` and 10 `append()` calls. full = back to back. "
            'disabled = `mode="disabled"`.',
            "",
            "| load | call | calls | p50 µs | p99 µs | max µs | calls > 1 ms | target p50 <= 2 / p99 <= 20 µs | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in hot["rows"]:
            if r["ppc"] == 1 and r["load"] != "disabled":
                t = f"p50 {_mark(r['p50'] <= TARGET_P50_US)}, p99 {_mark(r['p99'] <= TARGET_P99_US)}"
            elif r["ppc"] > 1:
                t = f"n/a ({r['p50'] / r['ppc'] * 1000:.0f} ns/point at p50)"
            else:
                t = "floor"
            md.append(
                f"| {r['load']} | `{r['call']}` | {r['n']:,} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['max']:,.0f} | {r['over_1ms']} | {t} | {r['note']} |"
            )
        for c in hot["checks"]:
            md.append(f"\n**delivery check failed**: {c}")
        md.append("")
    # ---- throughput
    if trials:
        md += [
            "## 2. End-to-end durable throughput",
            "",
            "N rank processes log P points each as fast as they can (`log()` calls of K keys), then `wait()`. "
            "Clock: from the common start time to the last rank's `wait()` return (every point committed to "
            "SQLite — WAL, `synchronous=NORMAL` — and acknowledged). `log` = time until the last rank's last "
            "`log()` returned. Verified: every rank's series of every key and the main (mean) series read back "
            "through a read-only run, each step exactly once with its value, and `series_summary()` counts. "
            "Client RSS: each rank's RSS after its `wait()` returned (largest rank right after `init_run()`; "
            "largest peak, sampled every 0.1 s). "
            "CPU: seconds used during the timed window. Other load: cores busy with processes that are not "
            "part of this benchmark during the window (the machine is shared), and cores stolen by the "
            "hypervisor. "
            f"`init_run(backpressure=...)`: {args.backpressure or 'library default'}.",
            "",
            "| ranks | keys/call | points/rank | total points | elapsed s | log s | points/s | target | verified | "
            "client RSS MiB per rank | client CPU s per rank (sender thread) | aggregator RSS MiB peak | "
            "aggregator CPU | other load, cores (steal) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | --- | --- |",
        ]
        for t in trials:
            if not t.get("pps"):
                md.append(
                    f"| {t['world']} | {t['k']} | {t['points_per_rank']:,} | {t['total']:,} | - | - | - | - | "
                    f"**FAILED** | - | - | - | - | - |"
                )
                continue
            target = _mark(t["pps"] >= TARGET_4RANK_PPS) if t["world"] == 4 else "-"
            cpu = " / ".join(
                f"{c:.2f} ({s:.2f})" if s is not None else f"{c:.2f}"
                for c, s in zip(t["client_cpu"], t["sender_cpu"], strict=True)
            )
            agg_cpu = "-" if t["agg_cpu"] is None else f"{t['agg_cpu']:.2f} s ({t['agg_cpu'] / t['elapsed']:.0%})"
            md.append(
                f"| {t['world']} | {t['k']} | {t['points_per_rank']:,} | {t['total']:,} | {t['elapsed']:.2f} | "
                f"{t['log_phase']:.2f} | {t['pps']:,.0f} | {target} | {'ok' if t['ok'] else '**FAILED**'} | "
                f"{' / '.join(_mib(x) for x in t['client_rss_end'])} (init {_mib(t['client_rss_ready'])}, "
                f"peak {_mib(t['client_rss_peak'])}) | {cpu} | "
                f"{_mib(t['agg_rss_peak'])} | {agg_cpu} | {t['other_load']:.2f} ({t['steal']:.2f}) |"
            )
        md.append("")
        failed = [t for t in trials if not t["ok"]]
        for t in failed:
            md += [f"**{t['label']} FAILED** (run {t.get('run_id', '?')}):", "", "```", *t["problems"][:12], "```", ""]
        warned = [t for t in trials if t.get("agg_warnings")]
        for t in warned:
            md.append(f"aggregator warnings in {t['label']}: " + " | ".join(t["agg_warnings"]))
        if failed or warned:
            md.append("")
    if profile:
        md += ["## Profile (py-spy, separate 4-rank run, not in the table above)", "", "```", *profile, "```", ""]
    return "\n".join(md)


# =============================================================================== main


def _leftovers() -> list[str]:
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``_worker`` is the internal per-rank sub-command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes; under ~90 s on 2 cores")
    p.add_argument("--repeat", type=int, default=None, help="trials per (ranks, keys) (default: 1 quick, 2 full)")
    p.add_argument("--skip-hot-path", action="store_true", help="only the throughput trials")
    p.add_argument("--skip-throughput", action="store_true", help="only the hot-path measurements")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run one 4-rank trial per key count under py-spy (aggregator + rank 0)",
    )
    p.add_argument("--no-write", action="store_true", help=f"do not write the report under {RESULTS}")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    p.add_argument(
        "--backpressure",
        default=None,
        help="init_run(backpressure=...) for the throughput ranks (default: the library's default)",
    )
    args = p.parse_args(argv)

    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()
    # Every process this script starts (ranks, and through them the aggregators) imports the
    # coordinator of this checkout, whatever the working directory or the installed copy.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    t_wall = time.monotonic()
    quick = args.quick
    repeat = args.repeat or (1 if quick else 2)
    key_counts = [100, 1] if quick else [100, 10, 1]
    # points per rank by keys per call: one-key calls cost a Python call per point on both ends.
    # Full mode: 3M points per rank, more than max_buffer_points (2M) and than a full send window.
    points = {100: 1_000_000, 10: 1_000_000, 1: 300_000} if quick else {100: 3_000_000, 10: 3_000_000, 1: 1_000_000}
    tmp = Path(tempfile.mkdtemp(prefix="coordinator-bench-"))
    print(f"# working in {tmp}", file=sys.stderr)
    hot = None
    trials: list[dict[str, Any]] = []
    profile: list[str] = []
    try:
        if not args.skip_hot_path:
            print("# part 1: hot path", file=sys.stderr)
            hot = hot_path(quick, tmp)
        if not args.skip_throughput:
            for k in key_counts:
                for world in (1, 2, 4):
                    for rep in range(repeat):
                        label = f"n{world}-k{k}-r{rep}"
                        print(
                            f"# part 2: {label}: {world} x {points[k]:,} points in calls of {k} keys", file=sys.stderr
                        )
                        t = trial(world, k, points[k], tmp, label, backpressure=args.backpressure)
                        trials.append(t)
                        print(
                            f"#   -> {t.get('pps', 0):,.0f} points/s, elapsed {t.get('elapsed', 0):.2f} s, "
                            f"{'ok' if t['ok'] else 'FAILED: ' + '; '.join(p[:300] for p in t['problems'][:3])}",
                            file=sys.stderr,
                        )
        if args.profile:
            pdir = tmp / "profiles"
            pdir.mkdir()
            for k in key_counts:
                label = f"profile-n4-k{k}"
                print(f"# profile: {label}", file=sys.stderr)
                t = trial(4, k, points[k], tmp, label, profile_dir=pdir, backpressure=args.backpressure)
                profile.append(
                    f"--- 4 ranks, {k} keys/call: {t.get('pps', 0):,.0f} points/s under py-spy "
                    f"({'ok' if t['ok'] else 'FAILED'})"
                )
                for who in ("aggregator", "rank0"):
                    profile.append(f"[{who}]")
                    profile += _profile_summary(pdir / f"{label}-{who}.txt")
                if not t["ok"]:
                    trials.append(t)
    except KeyboardInterrupt:
        print("# interrupted", file=sys.stderr)
        return 130
    finally:
        left = _leftovers()
        if left:
            print(f"# WARNING: child processes still running: {left}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"# kept {tmp}", file=sys.stderr)
    md = report(args, started, load0, hot, trials, profile, time.monotonic() - t_wall)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
        name = f"throughput-{host}-{started.strftime('%Y-%m-%d')}{'-quick' if quick else ''}.md"
        tmpf = RESULTS / (name + ".tmp")
        tmpf.write_text(md + "\n")
        os.replace(tmpf, RESULTS / name)
        print(f"\n(written to {(RESULTS / name).relative_to(ROOT)})", file=sys.stderr)
    failed = [t for t in trials if not t["ok"]] or (hot and hot["checks"])
    if failed or left:
        print("# FAILED: see the report above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
