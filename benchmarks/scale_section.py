"""Section 6 of the suite: which scale trials, paced trials and soak run, and their rows for the report.

The trials themselves (the simulated senders, one aggregator, the point-by-point check) are
``benchmarks.scale``'s; this module owns the plan (sender counts, processes per sender count,
loads, the soak's length and its flatness goal) and the medians over repeats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import log, med, mib
from benchmarks.scale import scale_trial

__all__ = ["SENDERS_PER_PROC", "paced_trial", "scale_section", "soak_trial", "total_batches", "trial_for"]

SENDERS_PER_PROC = 64
"""Above 1024 senders, one simulated-sender process per this many senders (issue #12: 4096 as 64 x 64)."""


def trial_for(senders: int) -> dict[str, Any]:
    """The sender processes for ``senders``: 2 up to 1024 (the suite's long-standing shape), else 64 per process."""
    return {"procs": 2 if senders <= 1024 else -(-senders // SENDERS_PER_PROC)}


def total_batches(senders: int, total: int) -> int:
    """Batches of 1000 points per sender for about ``total`` points in all (at least 2 each)."""
    return max(2, total // (senders * 1000))


def paced_trial(senders: int, tmp: Path, offered: float, duration: float) -> dict[str, Any]:
    """``senders`` paced to offer ``offered`` points/s in all for ``duration`` (batches of 1000 points).

    Unpaced, every sender keeps its window full, so by Little's law the ack latency is the points
    in flight over the throughput (1024 x 4 x 1000 points at 1.6M points/s: 2.6 s) whatever the
    aggregator does; training ranks are paced by their steps, and this is the trial that says
    whether the aggregator keeps up with a given load and how long an ack then takes.
    """
    rate = offered / (senders * 1000)
    return scale_trial(
        senders,
        tmp,
        f"paced-{senders}-{offered / 1e6:g}M",
        rate=rate,
        duration=duration,
        timeout=duration + 300,
        **trial_for(senders),
    )


def soak_trial(tmp: Path, duration: float, warm_t: float) -> dict[str, Any]:
    """64 senders paced at 64,000 points/s for ``duration``; RSS every second, flat from ``warm_t`` or not.

    Issue #12's goal: every RSS sample from ``warm_t`` (30 s) to the end within ±5% of the value
    at ``warm_t`` (``band_lo``/``band_hi`` are the extremes; ``flat`` says met or missed).
    """
    # 10 batches/s each of 100 points (10 keys x 10 steps) per sender
    soak = scale_trial(
        64,
        tmp,
        "soak",
        steps_per_batch=10,
        rate=10.0,
        duration=duration,
        window=8,
        rss_every=1.0,
        timeout=duration + 120,
    )
    series = soak.get("rss_series") or []
    if series:
        first = next((v for t, v in series if t >= 1.0), series[0][1])
        warm = next((v for t, v in series if t >= warm_t), first)
        end = series[-1][1]
        after = [v for t, v in series if t >= warm_t] or [end]
        lo, hi = (min(after) - warm) / warm, (max(after) - warm) / warm
        soak.update(
            rss_first=first,
            rss_warm=warm,
            rss_last=end,
            warm_t=warm_t,
            growth=(end - first) / first,
            growth_warm=(end - warm) / warm,
            band_lo=lo,
            band_hi=hi,
            flat=max(-lo, hi) <= 0.05,
        )
    return soak


def scale_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    """Section 6 of the suite: scale trials over sender counts (medians), 4096 once (full), the soak."""
    sizes = [64, 256] if quick else [64, 256, 1024]
    total = 1_000_000 if quick else 2_000_000
    plan = [(n, rep) for rep in range(repeats) for n in sizes] + ([] if quick else [(4096, 0)])
    trials = []
    for n, rep in plan:
        batches = total_batches(n, total)
        kw = trial_for(n)
        label = f"scale-{n}-r{rep}"
        log(f"6: {label}: {n} senders in {kw['procs']} processes x {batches} batches of 1000 points")
        t = scale_trial(n, tmp, label, batches=batches, **kw)
        trials.append(t)
        log(
            f"   -> {t.get('pps', 0):,.0f} points/s, ack p99 {t.get('ack_p99_ms') or 0:,.0f} ms, aggregator RSS "
            f"peak {mib(t.get('rss_peak'))} MiB {'ok' if t['ok'] else t['problems'][:2]}"
        )
    rows = []
    for n in dict.fromkeys(n for n, _ in plan):
        ts = [t for t in trials if t["senders"] == n and t.get("pps")]
        if ts:
            rows.append(
                {
                    "senders": n,
                    "procs": ts[0]["procs"],
                    "pps": med([t["pps"] for t in ts]),
                    "pps_all": [round(t["pps"]) for t in ts],
                    "rss_connected": med([t["rss_connected"] for t in ts]),
                    "rss_peak": max(t["rss_peak"] or 0 for t in ts),
                    "rss_end": med([t["rss_end"] or 0 for t in ts]),
                    "agg_cpu_share": med([t["agg_cpu"] / t["elapsed"] for t in ts if t.get("agg_cpu")]),
                    "ack_p50_ms": med([t["ack_p50_ms"] for t in ts]),
                    "ack_p99_ms": med([t["ack_p99_ms"] for t in ts]),
                    "points": ts[0]["acked_points"],
                    "ok": all(t["ok"] for t in ts),
                    "warnings": sum(t.get("agg_warnings", 0) for t in ts),
                }
            )
    paced = []
    for n, offered, secs in [] if quick else [(1024, 1e6, 10.0), (4096, 5e5, 20.0)]:
        log(f"6: paced: {n} senders offering {offered:,.0f} points/s for {secs:.0f} s")
        t = paced_trial(n, tmp, offered, secs)
        t["offered"] = offered
        paced.append({k: v for k, v in t.items() if k != "rss_series"})
        log(
            f"   -> {t.get('pps', 0):,.0f} points/s, ack p50 / p99 {t.get('ack_p50_ms') or 0:,.0f} / "
            f"{t.get('ack_p99_ms') or 0:,.0f} ms {'ok' if t['ok'] else t['problems'][:2]}"
        )
    dur = 25.0 if quick else 600.0  # full: issue #12's 10 minutes
    log(f"6: soak: 64 senders, 64,000 points/s for {dur:.0f} s")
    soak = soak_trial(tmp, dur, warm_t=5.0 if quick else 30.0)
    log(
        f"   -> soak {soak.get('pps', 0):,.0f} points/s; RSS {mib(soak.get('rss_first'))} -> "
        f"{mib(soak.get('rss_last'))} MiB {'ok' if soak['ok'] else soak['problems'][:2]}"
    )
    return {
        "rows": rows,
        "trials": [{k: v for k, v in t.items() if k != "rss_series"} for t in trials],
        "paced": paced,
        "soak": soak,
    }
