"""One part of section 6 alone, from the command line: a scale trial or the soak, with its figures.

``python -m benchmarks.scale --senders 1024`` (one scale trial, as the suite runs it) or
``python -m benchmarks.scale --soak 600`` (the soak at 64 senders) reproduces one figure of the
section without the rest of the suite; ``--json FILE`` keeps the whole result (RSS series
included) for a report. This module owns the argument parsing and the printed summary; the trials
themselves are ``benchmarks.scale``'s, the plan ``benchmarks.scale_section``'s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_pps, log, mib

__all__ = ["cli_main", "summary_lines"]


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The figures of one trial (scale or soak) as a few readable lines."""
    share = res["agg_cpu"] / res["elapsed"] if res.get("agg_cpu") and res.get("elapsed") else None
    out = [
        f"{res['label']}: {res['senders']} senders in {res.get('procs', '?')} processes, "
        f"{res.get('acked_points', 0):,} points acked in {res.get('elapsed', 0):.2f} s = "
        f"{fmt_pps(res.get('pps'))} points/s",
        f"  ack latency p50 / p99: {_ms(res.get('ack_p50_ms'))} / {_ms(res.get('ack_p99_ms'))} ms; "
        f"aggregator CPU {'-' if share is None else f'{share:.0%}'} of one core",
        f"  aggregator RSS MiB: idle {mib(res.get('rss_idle'))}, connected {mib(res.get('rss_connected'))}, "
        f"peak {mib(res.get('rss_peak'))}, end {mib(res.get('rss_end'))}",
    ]
    if res.get("rss_warm") is not None:
        out.append(
            f"  soak RSS MiB: {mib(res.get('rss_first'))} at 1 s, {mib(res.get('rss_warm'))} at "
            f"{res['warm_t']:.0f} s, {mib(res.get('rss_last'))} at the end ({res['growth_warm']:+.1%}); every "
            f"sample from {res['warm_t']:.0f} s within {res['band_lo']:+.1%} .. {res['band_hi']:+.1%} of the "
            f"{res['warm_t']:.0f} s value: goal ±5% {'met' if res['flat'] else 'MISSED'}"
        )
    out.append(
        f"  verified: {res.get('stored_points', 0):,} points in the store, run {res.get('state')}: "
        + ("ok" if res.get("ok") else f"FAILED {res.get('problems')}")
    )
    if res.get("agg_warnings"):
        out.append(f"  aggregator log: {res['agg_warnings']} warnings, e.g. {res.get('agg_warning_sample')}")
    return out


def cli_main(argv: list[str]) -> int:
    """``--senders N`` or ``--soak SECONDS``: run that part alone, print its figures; 0 when verified."""
    from benchmarks.scale import scale_trial
    from benchmarks.scale_section import SENDERS_PER_PROC, soak_trial, trial_for

    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    part = ap.add_mutually_exclusive_group(required=True)
    part.add_argument("--senders", type=int, help="one scale trial with this many simulated senders")
    part.add_argument("--soak", type=float, metavar="SECONDS", help="the soak (64 paced senders) for this long")
    ap.add_argument("--procs", type=int, help=f"sender processes (default: 2, or N/{SENDERS_PER_PROC} above 1024)")
    ap.add_argument("--offered", type=float, metavar="PPS", help="with --senders: paced, offering this many points/s")
    ap.add_argument(
        "--rate",
        type=float,
        metavar="BPS",
        help="with --senders: paced, each sender sending this many batches/s of --keys x --steps points "
        "(ranks flushing every 1/BPS s)",
    )
    ap.add_argument("--steps", type=int, default=1, help="with --rate: steps in each batch (default 1)")
    ap.add_argument(
        "--aligned",
        action="store_true",
        help="with --rate: every sender sends at the same instants (a job's ranks flush on one grid), "
        "not spread over the interval",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="with --offered or --rate: seconds (default 10)")
    ap.add_argument("--batches", type=int, help="batches per sender (default: 2M points in all)")
    ap.add_argument("--keys", type=int, default=10, help="unpaced: keys in each batch (default 10)")
    ap.add_argument(
        "--batch-points",
        type=int,
        default=1000,
        help="unpaced: points in each batch, keys x steps (default 1000; 1 x 5000: one key logged flat out)",
    )
    ap.add_argument(
        "--window", type=int, default=4, help="unpaced: batches in flight per sender (default 4; a rank: 64)"
    )
    ap.add_argument("--json", type=Path, help="write the whole result (RSS series included) here")
    ap.add_argument("--keep", action="store_true", help="keep the trial directory (aggregator log, store)")
    args = ap.parse_args(argv)
    if args.keys < 1 or args.window < 1 or args.batch_points < args.keys or args.batch_points % args.keys:
        ap.error("--keys and --window must be positive, --batch-points a multiple of --keys")
    tmp = Path(tempfile.mkdtemp(prefix="coord-scale-"))
    try:
        if args.senders is not None and args.offered:
            from benchmarks.scale_section import paced_trial

            log(f"paced: {args.senders} senders offering {args.offered:,.0f} points/s for {args.duration:.0f} s")
            res = paced_trial(args.senders, tmp, args.offered, args.duration)
        elif args.senders is not None and args.rate:
            n = args.senders
            kw = trial_for(n)
            if args.procs:
                kw["procs"] = args.procs
            log(
                f"paced: {n} senders each sending {args.rate:g} batches/s of {args.keys} keys x {args.steps} "
                f"steps for {args.duration:.0f} s ({n * args.rate:,.0f} batches/s, "
                f"{n * args.rate * args.keys * args.steps:,.0f} points/s in all"
                f"{'; aligned' if args.aligned else ''})"
            )
            res = scale_trial(
                n,
                tmp,
                f"rate-{n}-{args.rate:g}",
                keys=args.keys,
                steps_per_batch=args.steps,
                rate=args.rate,
                duration=args.duration,
                timeout=args.duration + 300,
                aligned=args.aligned,
                **kw,
            )
        elif args.senders is not None:
            n = args.senders
            kw = trial_for(n)
            if args.procs:
                kw["procs"] = args.procs
            bp = args.batch_points
            batches = args.batches or max(2, 2_000_000 // (n * bp))
            log(
                f"scale: {n} senders in {kw['procs']} processes x {batches} batches of {bp} points "
                f"({args.keys} keys x {bp // args.keys} steps), {args.window} in flight"
            )
            res = scale_trial(
                n,
                tmp,
                f"scale-{n}",
                batches=batches,
                keys=args.keys,
                steps_per_batch=bp // args.keys,
                window=args.window,
                **kw,
            )
        else:
            log(f"soak: 64 senders, 64,000 points/s for {args.soak:.0f} s")
            res = soak_trial(tmp, args.soak, warm_t=30.0 if args.soak >= 60 else 5.0)
        for line in summary_lines(res):
            print(line, flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
        return 0 if res.get("ok") else 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
