"""Helpers the benchmark modules share: paths, child environment, formatting, medians, marks, machine facts."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "ENV_TO_CLEAR",
    "INCONCLUSIVE",
    "MIN_PAIRED_REPEATS",
    "RESULTS",
    "ROOT",
    "Status",
    "child_env",
    "cpu_model",
    "fmt_pps",
    "git_rev",
    "interval_text",
    "kill_tree",
    "leftovers",
    "log",
    "mark",
    "med",
    "median_interval",
    "mib",
    "paired_change",
    "result_base",
    "rings_on",
    "run_job",
    "task_cpu_s",
    "thread_cpu",
    "versions",
    "within",
    "write_atomic",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# Launcher and coordinator variables of the shell that started the benchmark: a child that
# inherited them would join that job instead of the trial's own run.
ENV_TO_CLEAR = (
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


# =============================================================================== formatting


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the report)."""
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    """Median, NaN for no samples (a cell whose every repeat failed still gets a row)."""
    return float(statistics.median(xs)) if xs else float("nan")


MIN_PAIRED_REPEATS = 5
"""Fewest paired repeats :func:`paired_change` gives an interval for."""


def paired_change(
    xs: list[float], base: list[float], seed: int = 0, resamples: int = 4000
) -> tuple[float, float, float]:
    """The median of ``xs[i] / base[i] - 1`` over paired repeats, and its 95% bootstrap interval.

    Each repeat's pair ran close together (the DDP job interleaves its variants), so the machine's
    drift between repeats, which swings a variant's own median by as much as the 2% goal, mostly
    cancels in the ratio. The interval resamples the repeats (``resamples`` times, a fixed seed:
    the same input gives the same figures); with 5 repeats it is wide, and says so. Below
    :data:`MIN_PAIRED_REPEATS` repeats there is no interval (NaN, NaN): resampling 2 or 3 values
    only spans them, which would read as far more certain than it is.

    Raises:
        ValueError: the lists differ in length or are empty, or a base figure is not positive.
    """
    if len(xs) != len(base) or not xs:
        raise ValueError(f"paired_change needs two lists of one length, got {len(xs)} and {len(base)}")
    if min(base) <= 0:
        raise ValueError("paired_change needs positive base figures")
    return median_interval([x / b - 1 for x, b in zip(xs, base, strict=True)], seed, resamples)


def median_interval(values: list[float], seed: int = 0, resamples: int = 4000) -> tuple[float, float, float]:
    """The median of ``values`` (one per repeat) and its 95% bootstrap interval.

    The repeats are resampled ``resamples`` times with a fixed seed (the same input gives the same
    figures). Below :data:`MIN_PAIRED_REPEATS` values the interval is (NaN, NaN).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("median_interval needs at least one value")
    point = float(statistics.median(values))
    if len(values) < MIN_PAIRED_REPEATS:
        return point, float("nan"), float("nan")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return point, meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def interval_text(point: float, lo: float, hi: float, fmt: str) -> str:
    """``fmt`` of the point and ``[lo, hi]`` (e.g. ``+4.8% [-1.2%, +9.5%]``); without an interval, says why."""
    if math.isnan(lo) or math.isnan(hi):
        return f"{fmt.format(point)} [no interval below {MIN_PAIRED_REPEATS} repeats]"
    return f"{fmt.format(point)} [{fmt.format(lo)}, {fmt.format(hi)}]"


INCONCLUSIVE = "inconclusive"
"""A target's status when the 95% interval of its figure holds values on both sides of it."""

Status = bool | str | None
"""A target's status: met (True), missed (False), :data:`INCONCLUSIVE`, or not measured (None)."""


def within(point: float, lo: float, hi: float, limit: float, *, strict: bool = False) -> Status:
    """Whether a figure that must stay at or below ``limit`` (below it, ``strict``) does, given its interval.

    Met when the whole 95% interval is on the good side, missed when the whole of it is beyond,
    :data:`INCONCLUSIVE` when it holds both: the repeats cannot tell. Without an interval (too few
    repeats: NaN) the point figure decides, as it must.
    """

    def ok(x: float) -> bool:
        return x < limit if strict else x <= limit

    if math.isnan(lo) or math.isnan(hi):
        return ok(point)
    if ok(hi):
        return True
    if not ok(lo):
        return False
    return INCONCLUSIVE


def fmt_pps(x: float | None) -> str:
    """Points per second with thousands separators; ``-`` when not measured."""
    return "-" if x is None else f"{x:,.0f}"


def mib(n: float | None) -> str:
    """Bytes as whole MiB; ``-`` when not measured."""
    return "-" if n is None else f"{n / 2**20:.0f}"


def mark(ok: Status) -> str:
    """A target's status cell: met, **missed**, inconclusive, or n/a when it could not be measured."""
    if ok is None:
        return "n/a"
    if ok == INCONCLUSIVE:
        return "inconclusive (the 95% interval holds both sides)"
    return "met" if ok else "**missed**"


# =============================================================================== result files


def result_base(kind: str, started: dt.datetime, quick: bool) -> Path:
    """``results/<kind>-<host>-<date>[-quick]``, without a suffix: a quick run never overwrites a full one."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    return RESULTS / f"{kind}-{host}-{started.strftime('%Y-%m-%d')}{'-quick' if quick else ''}"


def write_atomic(path: Path, text: str) -> None:
    """Write through a ``.tmp`` sibling, so an interrupted run never leaves half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# =============================================================================== child processes


def child_env(trial_dir: Path) -> dict[str, str]:
    """Environment of a trial's worker processes: this checkout's coordinator, a fresh job identity."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
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


def thread_cpu(proc: Any, tid: int | None) -> float | None:
    """CPU seconds (user + system) of thread ``tid`` of psutil process ``proc``; None if it is gone."""
    if tid is None:
        return None
    for t in proc.threads():
        if t.id == tid:
            return float(t.user_time + t.system_time)
    return None


def task_cpu_s(task: Path) -> float:
    """A thread's CPU seconds from its ``/proc/<pid>/task/<tid>`` folder: ``schedstat``'s nanoseconds on
    the CPU where the kernel keeps them, else ``stat``'s utime + stime (10 ms ticks)."""
    try:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    except (FileNotFoundError, IndexError, ValueError):
        f = (task / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_job(cmd: list[str], cwd: Path, env: dict[str, str], log_file: Path, timeout_s: float) -> int | None:
    """Run a launcher (torchrun, a Lightning script) in its own session, output to ``log_file``.

    Returns:
        Its exit code, or ``None`` when it ran past ``timeout_s`` (its whole tree is then killed).
    """
    with open(log_file, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(30)
            return None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, and reap them."""
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


def leftovers() -> list[str]:
    """``"<pid> <command line>"`` of every descendant of this process still running."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    return out


# =============================================================================== machine facts


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of Python, the coordinator and the libraries on its data path."""
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


def git_rev() -> str:
    """The checkout's commit, and whether coordinator/ differs from it (the code measured)."""
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


def exit_without_teardown(code: int) -> NoReturn:
    """End a torchrun worker with ``code`` once its results are written, skipping interpreter teardown.

    Twice in about 20 launches a rank aborted in teardown with a C++ "terminate called without an
    active exception" (a native thread torn down at exit; not reproducible on demand), which would
    turn a finished measurement into a failed job.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def rings_on() -> Iterator[None]:
    """``COORDINATOR_RINGS=1`` while the block runs (then as it was).

    ``Settings(rings=True)`` equals the default, so it does not override the environment: a run
    started in ``COORDINATOR_RINGS=0`` (CI's socket step) would take the socket instead.
    """
    before = os.environ.get("COORDINATOR_RINGS")
    os.environ["COORDINATOR_RINGS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COORDINATOR_RINGS", None)
        else:
            os.environ["COORDINATOR_RINGS"] = before
