"""The DDP job's steps set against the logging's turns on the CPU: which steps a flush slows, and by how much.

The suite's DDP figure (:mod:`benchmarks.ddp_overhead`) is a block's mean step time: it says how
much logging costs the step, not where. Here the same job runs with every rank writing each step's
start and end (``ddp_overhead --timeline``), and every rank's sender thread and the aggregator's
loop recording their *turns*: each stretch between two of their blocking waits (the sender's
``LoopIO.wait``, the aggregator's ``Poller.poll``), with its wall times and the thread's CPU. A step
(the same index on every rank; its time is the slowest rank's, as in the suite) is *touched* when a
turn of any rank's sender or of the aggregator overlaps it. Per variant the report splits the step
time into touched and untouched steps, and the slowdown against the unlogged baseline into the
part the touched steps carry and the rest; it sets the touched steps' extra time beside the CPU of
the turns inside them. Not seen: the ZeroMQ I/O threads, and the aggregator's threads but its loop.

How: the job runs with a ``sitecustomize`` first on its ``PYTHONPATH`` that calls :func:`install`
in every Python process of it; the aggregator writes its turns at exit, a rank at the end of its
job (``ddp_overhead`` calls :func:`dump`: it ends without the interpreter's teardown).

    python -m benchmarks.ddp_timeline [--steps 150] [--repeats 5] \\
        [--variants coordinator+wake5ms,coordinator-flush500ms+wake5ms]
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, med, run_job
from benchmarks.ddp_overhead import WARM, with_baselines

__all__ = ["Turn", "analyse", "dump", "install", "main", "measure", "report"]

_OUT_ENV = "DDP_TIMELINE_OUT"
_TURNS: list[tuple[float, float, int]] = []
"""This process's turns: (start, end) on ``time.perf_counter`` (CLOCK_MONOTONIC, one clock for
every process of the machine) and the thread's CPU in ns."""
_ROLE: list[str] = []


@dataclass(frozen=True, slots=True)
class Turn:
    """One stretch of a logging thread between two of its blocking waits."""

    start: float
    end: float
    cpu_ns: int
    who: str
    """``sender`` (a rank's sender thread) or ``aggregator`` (its loop)."""


def _record_turns(module: str, attr: str, mine: Callable[[], bool]) -> None:
    """Wrap the blocking wait ``module.attr``: the time between one call's return and the next call is a turn."""
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    inner = getattr(owner, name)
    # When this thread's last wait returned, and its CPU then; thread-local, since a new thread
    # may get an ended one's identifier (each block of the job starts a new sender thread).
    back = threading.local()
    pc, cpu = time.perf_counter, time.thread_time_ns

    @functools.wraps(inner)
    def wait(*args: Any, **kwargs: Any) -> Any:
        if not mine():
            return inner(*args, **kwargs)
        last: tuple[float, int] | None = getattr(back, "last", None)
        if last is not None:
            _TURNS.append((last[0], pc(), cpu() - last[1]))
        try:
            return inner(*args, **kwargs)
        finally:
            back.last = (pc(), cpu())

    setattr(owner, name, wait)


def install() -> None:
    """Record this process's turns if it is the job's aggregator or one of its ranks (else nothing)."""
    out = os.environ.get(_OUT_ENV)
    if not out:
        return
    cmdline = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    if b"coordinator.aggregator" in cmdline:
        main_thread = threading.get_ident()
        _ROLE.append(f"aggregator-{os.getpid()}")
        _record_turns("zmq", "Poller.poll", lambda: threading.get_ident() == main_thread)
        atexit.register(dump)
    elif b"benchmarks.ddp_overhead" in cmdline:
        _ROLE.append(f"sender-r{os.environ.get('RANK', '?')}")
        _record_turns(
            "coordinator.transport.loopio",
            "LoopIO.wait",
            lambda: threading.current_thread().name.startswith("coordinator-sender"),
        )


def dump() -> None:
    """Write this process's turns to the job's folder (nothing when :func:`install` recorded none)."""
    out = os.environ.get(_OUT_ENV)
    if out and _ROLE:
        Path(out, f"turns-{_ROLE[0]}.json").write_text(json.dumps({"role": _ROLE[0], "turns": _TURNS}))


def load(folder: Path) -> tuple[list[dict[str, Any]], list[Turn]]:
    """The ranks' step records (``rank<r>.json``) and every process's turns (``turns-*.json``) in ``folder``."""
    ranks = [json.loads(f.read_text()) for f in sorted(folder.glob("rank*.json"))]
    turns = []
    for f in sorted(folder.glob("turns-*.json")):
        d = json.loads(f.read_text())
        who = "aggregator" if str(d["role"]).startswith("aggregator") else "sender"
        turns += [Turn(float(a), float(b), int(c), who) for a, b, c in d["turns"]]
    return ranks, sorted(turns, key=lambda t: t.start)


def _steps(ranks: list[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """Every step of every block: (variant, its start on the first rank to start, its end on the last
    to end, its time: the slowest rank's)."""
    if not ranks:
        raise ValueError("no rank wrote its steps")
    blocks = [r["blocks"] for r in ranks]
    if len({len(b) for b in blocks}) != 1:
        raise ValueError(f"the ranks wrote different numbers of blocks: {[len(b) for b in blocks]}")
    out = []
    for per_rank in zip(*blocks, strict=True):
        variants = {b["variant"] for b in per_rank}
        if len(variants) != 1:
            raise ValueError(f"the ranks ran different variants in one block: {sorted(variants)}")
        (variant,) = variants
        for step in zip(*[zip(b["starts"], b["times"], strict=True) for b in per_rank], strict=True):
            start = min(s for s, _ in step)
            end = max(s + t for s, t in step)
            out.append((variant, start, end, max(t for _, t in step)))
    return out


def analyse(ranks: list[dict[str, Any]], turns: list[Turn]) -> dict[str, dict[str, Any]]:
    """Per variant: its steps split by whether a logging turn overlapped them, and the slowdown split with them.

    Raises:
        ValueError: the ranks' records do not line up (a different number of blocks or steps, or variants).
    """
    starts = [t.start for t in turns]
    longest = max((t.end - t.start for t in turns), default=0.0)
    groups: dict[str, dict[str, list[float]]] = {}
    for variant, a, b, dur in _steps(ranks):
        g = groups.setdefault(variant, {"all": [], "touched": [], "untouched": [], "cpu_ms": [], "by": []})
        lo = bisect.bisect_left(starts, a - longest)
        hi = bisect.bisect_right(starts, b)
        inside = [t for t in turns[lo:hi] if t.end > a and t.start < b]
        g["all"].append(dur)
        g["touched" if inside else "untouched"].append(dur)
        if inside:
            g["cpu_ms"].append(sum(t.cpu_ns for t in inside) / 1e6)
            g["by"].append(float(len({t.who for t in inside}) == 2))
    out: dict[str, dict[str, Any]] = {}
    for variant, g in groups.items():
        base_name = "none" + WARM if variant.endswith(WARM) else "none"
        base = statistics.fmean(groups[base_name]["all"]) if base_name in groups else float("nan")
        n, k = len(g["all"]), len(g["touched"])
        mean_t = statistics.fmean(g["touched"]) if g["touched"] else float("nan")
        mean_u = statistics.fmean(g["untouched"]) if g["untouched"] else float("nan")
        out[variant] = {
            "baseline": base_name,
            "steps": n,
            "step_ms": 1000 * statistics.fmean(g["all"]),
            "touched_share": k / n,
            "touched_ms": 1000 * mean_t,
            "untouched_ms": 1000 * mean_u,
            "touched_median_ms": 1000 * med(g["touched"]),
            "untouched_median_ms": 1000 * med(g["untouched"]),
            "slowdown": statistics.fmean(g["all"]) / base - 1,
            "from_touched": (k / n) * (mean_t - base) / base if k else 0.0,
            "from_untouched": ((n - k) / n) * (mean_u - base) / base if k < n else 0.0,
            "extra_ms_per_touched": 1000 * (mean_t - base) if k else float("nan"),
            "cpu_ms_per_touched": statistics.fmean(g["cpu_ms"]) if g["cpu_ms"] else float("nan"),
            "both_share": statistics.fmean(g["by"]) if g["by"] else float("nan"),
        }
    return out


def report(rows: dict[str, dict[str, Any]]) -> str:
    """The analysis as a text table, one line per variant (the baselines first)."""
    lines = [
        "variant: steps, step ms (vs its baseline), touched share, touched / untouched mean ms (medians), "
        "slowdown from touched + untouched steps, a touched step's extra ms against the turns' CPU in it",
    ]
    for v, r in sorted(rows.items(), key=lambda kv: (not kv[0].startswith("none"), kv[0])):
        lines.append(
            f"  {v}: {r['steps']} steps, {r['step_ms']:.2f} ms ({100 * r['slowdown']:+.1f}%), "
            f"touched {100 * r['touched_share']:.0f}%: {r['touched_ms']:.2f} / {r['untouched_ms']:.2f} ms "
            f"({r['touched_median_ms']:.2f} / {r['untouched_median_ms']:.2f}); "
            f"{100 * r['from_touched']:+.1f}% + {100 * r['from_untouched']:+.1f}%; "
            f"{r['extra_ms_per_touched']:.2f} ms extra for {r['cpu_ms_per_touched']:.2f} ms of CPU "
            f"(sender and aggregator both in {100 * r['both_share']:.0f}%)"
            if r["touched_share"]
            else f"  {v}: {r['steps']} steps, {r['step_ms']:.2f} ms ({100 * r['slowdown']:+.1f}%), no turn in any step"
        )
    return "\n".join(lines)


_SITECUSTOMIZE = "from benchmarks.ddp_timeline import install\n\ninstall()\n"


def measure(
    variants: list[str], steps: int, repeats: int, keep: Path | None = None, ranks: int = 4, timeout_s: float = 1800
) -> dict[str, dict[str, Any]]:
    """Launch the DDP job (``ranks`` ranks) with ``variants`` and their baselines under the recorder; its analysis.

    ``keep``: a folder to copy the raw records to (each rank's steps, each process's turns).

    Raises:
        RuntimeError: the job failed or ran past its time.
    """
    chosen, missing = with_baselines(variants, {})
    if missing:
        raise ValueError(f"peers are not recorded here: {missing}")
    with tempfile.TemporaryDirectory(prefix="ddp-timeline-") as tmp:
        d = Path(tmp)
        site, out = d / "site", d / "out"
        site.mkdir()
        out.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = child_env(d)
        env.pop("TORCHELASTIC_RUN_ID", None)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        env[_OUT_ENV] = str(out)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd += ["-m", "benchmarks.ddp_overhead", "--out", str(d / "result.json"), "--root", str(d)]
        cmd += ["--steps", str(steps), "--repeats", str(repeats), "--variants", ",".join(chosen)]
        cmd += ["--timeline", str(out)]
        code = run_job(cmd, d, env, d / "torchrun.log", timeout_s)
        if code != 0:
            tail = (d / "torchrun.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the DDP job failed ({'timed out' if code is None else code}):\n{tail}")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                (keep / f.name).write_bytes(f.read_bytes())
        return analyse(*load(out))


def main(argv: list[str] | None = None) -> None:
    """Run the job and print, per variant, where its slowdown is."""
    ap = argparse.ArgumentParser(prog="benchmarks.ddp_timeline", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="steps per block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="coordinator+wake5ms,coordinator-flush500ms+wake5ms")
    ap.add_argument("--keep", type=Path, default=None, help="copy the raw records here")
    ap.add_argument("--ranks", type=int, default=4)
    args = ap.parse_args(argv)
    print(report(measure(args.variants.split(","), args.steps, args.repeats, args.keep, args.ranks)))


if __name__ == "__main__":
    main()
