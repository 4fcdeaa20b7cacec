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
        [--variants coordinator-socket+wake5ms,coordinator-flush500ms+wake5ms]

The default variants compare the socket path's flush intervals (50 ms and 500 ms, both with
``rings=False``: with rings, the library's default, the sender does not flush); add
``coordinator+wake5ms`` for the turns at the library's default.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import functools
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

from benchmarks.common import child_env, run_job
from benchmarks.ddp_overhead import WARM, with_baselines
from benchmarks.paced_parts import job_args, resolve

__all__ = ["Step", "Turn", "analyse", "dump", "install", "main", "measure", "report"]

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
    owner, name = resolve(module, attr)
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
    cmdline = job_args(_OUT_ENV)
    if cmdline is None:
        return
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


Step = tuple[float, float, float]
"""One step of a block: its start on the first rank to start, its end on the last to end, its time
(the slowest rank's)."""


def _blocks(ranks: list[dict[str, Any]]) -> list[tuple[str, list[Step]]]:
    """Every block, in the order run: its variant and its steps."""
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
        steps = [
            (min(s for s, _ in step), max(s + t for s, t in step), max(t for _, t in step))
            for step in zip(*[zip(b["starts"], b["times"], strict=True) for b in per_rank], strict=True)
        ]
        out.append((variants.pop(), steps))
    return out


class _Overlaps:
    """Which turns overlap a span of time (turns sorted by start)."""

    def __init__(self, turns: list[Turn]) -> None:
        self.turns = turns
        self.starts = [t.start for t in turns]
        self.longest = max((t.end - t.start for t in turns), default=0.0)

    def of(self, a: float, b: float, shift: float = 0.0) -> list[Turn]:
        """The turns that overlap [a, b] once moved by ``shift`` seconds."""
        lo = bisect.bisect_left(self.starts, a - shift - self.longest)
        hi = bisect.bisect_right(self.starts, b - shift)
        return [t for t in self.turns[lo:hi] if t.end + shift > a and t.start + shift < b]


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def analyse(ranks: list[dict[str, Any]], turns: list[Turn]) -> dict[str, dict[str, Any]]:
    """Per variant: its steps split by whether a logging turn overlapped them, and the slowdown split with them.

    A long step is more likely to overlap a turn than a short one, so touched steps are longer
    even where a turn costs nothing. Each logged block's turns are therefore also laid over its
    baseline's block of the same repeat (moved by the difference of their starts), and its touched
    and untouched steps are compared with the baseline's steps that the same turns would have
    touched, or not.

    Raises:
        ValueError: the ranks' records do not line up (a different number of blocks or steps, or variants).
    """
    over = _Overlaps(turns)
    blocks = _blocks(ranks)
    by_variant: dict[str, list[list[Step]]] = {}
    for variant, steps in blocks:
        by_variant.setdefault(variant, []).append(steps)
    out: dict[str, dict[str, Any]] = {}
    for variant, runs in by_variant.items():
        base_name = "none" + WARM if variant.endswith(WARM) else "none"
        base_runs = by_variant.get(base_name, [])
        base = _mean([d for steps in base_runs for _, _, d in steps])
        g: dict[str, list[float]] = {k: [] for k in ("all", "touched", "untouched", "cpu_ms", "by", "p_t", "p_u")}
        for i, steps in enumerate(runs):
            for a, b, d in steps:
                inside = over.of(a, b)
                g["all"].append(d)
                g["touched" if inside else "untouched"].append(d)
                if inside:
                    g["cpu_ms"].append(sum(t.cpu_ns for t in inside) / 1e6)
                    g["by"].append(float(len({t.who for t in inside}) == 2))
            if variant != base_name and i < len(base_runs):  # the same turns over the baseline's block
                shift = base_runs[i][0][0] - steps[0][0]
                for a, b, d in base_runs[i]:
                    g["p_t" if over.of(a, b, shift) else "p_u"].append(d)
        n, k = len(g["all"]), len(g["touched"])
        mean_t, mean_u = _mean(g["touched"]), _mean(g["untouched"])
        p_t, p_u = _mean(g["p_t"]), _mean(g["p_u"])
        out[variant] = {
            "baseline": base_name,
            "steps": n,
            "step_ms": 1000 * _mean(g["all"]),
            "touched_share": k / n,
            "touched_ms": 1000 * mean_t,
            "untouched_ms": 1000 * mean_u,
            "baseline_touched_ms": 1000 * p_t,
            "baseline_untouched_ms": 1000 * p_u,
            "slowdown": _mean(g["all"]) / base - 1,
            "from_touched": (k / n) * (mean_t - p_t) / base if k else 0.0,
            "from_untouched": ((n - k) / n) * (mean_u - p_u) / base if k < n else 0.0,
            "extra_ms_per_touched": 1000 * (mean_t - p_t) if k else float("nan"),
            "cpu_ms_per_touched": _mean(g["cpu_ms"]),
            "both_share": _mean(g["by"]),
        }
    return out


def report(rows: dict[str, dict[str, Any]]) -> str:
    """The analysis as a text table, one line per variant (the baselines first)."""
    lines = [
        "variant: steps, step ms (vs its baseline); touched share: touched / untouched step ms (the baseline's "
        "steps the same turns would have touched / not); slowdown from touched + untouched steps; a touched "
        "step's extra ms against the turns' CPU in it",
    ]
    for v, r in sorted(rows.items(), key=lambda kv: (not kv[0].startswith("none"), kv[0])):
        head = f"  {v}: {r['steps']} steps, {r['step_ms']:.2f} ms ({100 * r['slowdown']:+.1f}%)"
        if not r["touched_share"]:
            lines.append(f"{head}, no turn in any step")
            continue
        lines.append(
            f"{head}; touched {100 * r['touched_share']:.0f}%: {r['touched_ms']:.2f} / {r['untouched_ms']:.2f} ms "
            f"({r['baseline_touched_ms']:.2f} / {r['baseline_untouched_ms']:.2f}); "
            f"{100 * r['from_touched']:+.1f}% + {100 * r['from_untouched']:+.1f}%; "
            f"{r['extra_ms_per_touched']:.2f} ms extra for {r['cpu_ms_per_touched']:.2f} ms of CPU "
            f"(sender and aggregator both in {100 * r['both_share']:.0f}%)"
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
    ap.add_argument("--variants", default="coordinator-socket+wake5ms,coordinator-flush500ms+wake5ms")
    ap.add_argument("--keep", type=Path, default=None, help="copy the raw records here")
    ap.add_argument("--ranks", type=int, default=4)
    args = ap.parse_args(argv)
    print(report(measure(args.variants.split(","), args.steps, args.repeats, args.keep, args.ranks)))


if __name__ == "__main__":
    main()
