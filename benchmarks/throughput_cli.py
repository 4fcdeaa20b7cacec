"""The ``python -m benchmarks.throughput`` command: hot path, durable throughput trials and their markdown report.

Run from the repository root::

    python -m benchmarks.throughput            # full: a few minutes
    python -m benchmarks.throughput --quick    # under ~90 s on 2 cores
    python -m benchmarks.throughput --quick --profile   # + py-spy profile of a 4-rank run

Part 1, hot path: ``benchmarks.hotpath.hot_path``. Part 2, durable throughput with N in
{1, 2, 4} ranks (``--ranks 4,8 --keys 100`` picks the cells): ``benchmarks.throughput.trial``,
every trial verified point by point; any difference makes the command exit non-zero.

Part 3: a markdown report (printed and written to
``benchmarks/results/throughput-<hostname>-<date>.md``; ``-quick`` is appended in quick mode
so that a quick run never overwrites a full one) with the command line, versions, CPU, core
count and date, and each target marked met or missed:

* ``log()`` p50 <= 2 us and p99 <= 20 us (single-scalar calls, realistic and full load);
* 4 ranks >= 500,000 points/s durable.

The command checks at the end that none of its descendants is left.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    ROOT,
    cpu_model,
    git_rev,
    leftovers,
    mark,
    mib,
    result_base,
    versions,
    write_atomic,
)
from benchmarks.hotpath import hot_path
from benchmarks.profiling import profile_summary
from benchmarks.throughput import trial, worker_main

__all__ = ["TARGET_4RANK_PPS", "TARGET_P50_US", "TARGET_P99_US", "main", "report"]

# Targets (from the project brief).
TARGET_P50_US = 2.0
TARGET_P99_US = 20.0
TARGET_4RANK_PPS = 500_000


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    load0: tuple[float, float, float],
    hot: dict[str, Any] | None,
    trials: list[dict[str, Any]],
    profile: list[str],
    wall: float,
) -> str:
    """The markdown report of one run of the command."""
    import coordinator

    v = versions()
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
        f"- host: {socket.gethostname()}; CPU: {cpu_model()}; cores: {cores} ({usable} usable); "
        f"load average (1/5/15 min) at the start {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}, "
        f"at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}",
        f"- python {v['python']}, coordinator {v['coordinator']} ({git_rev()}; "
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
        md += [f"| {a} | {b} | {mark(c)} |" for a, b, c in tgt]
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
                t = f"p50 {mark(r['p50'] <= TARGET_P50_US)}, p99 {mark(r['p99'] <= TARGET_P99_US)}"
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
            target = mark(t["pps"] >= TARGET_4RANK_PPS) if t["world"] == 4 else "-"
            cpu = " / ".join(
                f"{c:.2f} ({s:.2f})" if s is not None else f"{c:.2f}"
                for c, s in zip(t["client_cpu"], t["sender_cpu"], strict=True)
            )
            agg_cpu = "-" if t["agg_cpu"] is None else f"{t['agg_cpu']:.2f} s ({t['agg_cpu'] / t['elapsed']:.0%})"
            md.append(
                f"| {t['world']} | {t['k']} | {t['points_per_rank']:,} | {t['total']:,} | {t['elapsed']:.2f} | "
                f"{t['log_phase']:.2f} | {t['pps']:,.0f} | {target} | {'ok' if t['ok'] else '**FAILED**'} | "
                f"{' / '.join(mib(x) for x in t['client_rss_end'])} (init {mib(t['client_rss_ready'])}, "
                f"peak {mib(t['client_rss_peak'])}) | {cpu} | "
                f"{mib(t['agg_rss_peak'])} | {agg_cpu} | {t['other_load']:.2f} ({t['steal']:.2f}) |"
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
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts of the trials (e.g. 4,8)")
    p.add_argument("--keys", default=None, help="comma-separated keys per call (default: 100,1 quick, 100,10,1 full)")
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
    key_counts = [int(k) for k in args.keys.split(",")] if args.keys else [100, 1] if quick else [100, 10, 1]
    worlds = [int(w) for w in args.ranks.split(",")]
    if not worlds or min(worlds) < 1 or not set(key_counts) <= {100, 10, 1}:
        p.error("--ranks takes positive counts, --keys a subset of 100,10,1")
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
                for world in worlds:
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
                    profile += profile_summary(pdir / f"{label}-{who}.txt")
                if not t["ok"]:
                    trials.append(t)
    except KeyboardInterrupt:
        print("# interrupted", file=sys.stderr)
        return 130
    finally:
        left = leftovers()
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
        base = result_base("throughput", started, quick)
        out = base.with_name(base.name + ".md")
        write_atomic(out, md + "\n")
        print(f"\n(written to {out.relative_to(ROOT)})", file=sys.stderr)
    failed = [t for t in trials if not t["ok"]] or (hot and hot["checks"])
    if failed or left:
        print("# FAILED: see the report above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
