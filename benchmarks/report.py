"""The suite's markdown report: targets met or missed, one part per section, notes from this run's numbers."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import Status, fmt_pps, interval_text, mark, mib, within
from benchmarks.lightning_overhead import markdown as lightning_markdown
from benchmarks.report_cpu import cpu_markdown, cpu_targets, gil_markdown
from benchmarks.sampler_cost import markdown as sampler_markdown

__all__ = [
    "T_FULL_P99_US",
    "T_LIMIT_FRACTION",
    "T_PPS",
    "T_REAL_P50_US",
    "T_REAL_P99_US",
    "T_RSS_FLAT",
    "T_SLOWDOWN",
    "notes",
    "paired_text",
    "report",
    "targets",
]

# Targets, from the issue ("Benchmarks: prove it is the fastest way to log"). Not to be weakened.
T_REAL_P50_US = 1.0
T_REAL_P99_US = 5.0
T_FULL_P99_US = 50.0
T_LIMIT_FRACTION = 0.5
T_PPS = 1_000_000
T_SLOWDOWN = 0.01
T_RSS_FLAT = 0.10


def paired_text(r: dict[str, Any]) -> str:
    """``+4.8% [-1.2%, +9.5%]``: a DDP variant's paired slowdown and its 95% interval ("n/a" in older results)."""
    if "paired" not in r:
        return "n/a"
    lo, hi = r["paired_ci"]
    return interval_text(r["paired"], lo, hi, "{:+.1%}")


def _slowdown_status(r: dict[str, Any]) -> Status:
    """A DDP variant's slowdown against the goal, judged on its paired interval (the plain figure without one)."""
    lo, hi = r.get("paired_ci", (math.nan, math.nan))
    if math.isnan(lo) or math.isnan(hi):
        return bool(r["slowdown"] < T_SLOWDOWN)
    return within(r["paired"], lo, hi, T_SLOWDOWN, strict=True)


def _ddp_targets(
    label: str, c: dict[str, Any], warm: dict[str, Any] | None, rows: dict[str, dict[str, Any]]
) -> list[tuple[str, str, Status]]:
    """The DDP rows of the targets table for one coordinator variant ``c`` (``label``): its slowdown, the same
    with the 5 ms waker (``warm``), and below each peer and hand-written allreduce of the run."""
    out: list[tuple[str, str, Status]] = [
        (
            f"DDP step slowdown, {label} 100 metrics/step from every rank: < {T_SLOWDOWN:.0%}",
            f"{c['slowdown']:+.1%} (paired: {paired_text(c)})",
            _slowdown_status(c),
        )
    ]
    if warm:
        out.append(
            (
                f"DDP step slowdown, {label}, with a 5 ms waker on every rank of every variant: < {T_SLOWDOWN:.0%}",
                f"{warm['slowdown']:+.1%} (paired: {paired_text(warm)})",
                _slowdown_status(warm),
            )
        )
    for r in [r for v, r in rows.items() if v.startswith("peer:") or v.startswith("allreduce")]:
        out.append(
            (
                f"DDP slowdown of {label} lower than {r['variant']}",
                f"{c['slowdown']:+.1%} vs {r['slowdown']:+.1%}",
                c["slowdown"] < r["slowdown"],
            )
        )
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, Status]]:
    """(target, measured, status) for every target this run measured."""
    out: list[tuple[str, str, Status]] = []
    hot = res.get("hot")
    if hot:
        by = {(r["load"], r["call"]): r for r in hot["rows"]}
        limits = (
            ("realistic", "p50", T_REAL_P50_US),
            ("realistic", "p99", T_REAL_P99_US),
            ("full", "p99", T_FULL_P99_US),
        )
        for tag in ("", ", socket"):  # the library's default (rings), then every point over the socket
            what = "`log()` one scalar" + (" over the socket (`rings=False`)" if tag else "")
            for load, stat, limit in limits:
                r = by.get((load + tag, 'log({"loss": x}, step=s)'))
                if r:
                    out.append((f"{what}, {load} load: {stat} <= {limit:g} µs", f"{r[stat]:.2f} µs", r[stat] <= limit))
        for call, what in (('log({"loss": x})', "`log()` one scalar"), ('run["loss"].append(x)', "`append()`")):
            r = by.get(("realistic, no step", call))
            for stat, limit in (("p50", T_REAL_P50_US), ("p99", T_REAL_P99_US)):
                if r:
                    out.append(
                        (
                            f"{what} without a step, realistic load: {stat} <= {limit:g} µs",
                            f"{r[stat]:.2f} µs",
                            r[stat] <= limit,
                        )
                    )
    tpr = res.get("throughput")
    if tpr:
        for c in tpr["cells"]:
            if c["world"] != 4:
                continue
            if c.get("fraction") is not None:
                out.append(
                    (
                        f"4 ranks, {c['k']} keys/call: durable >= {T_LIMIT_FRACTION:.0%} of raw PUSH/PULL",
                        f"{c['fraction']:.1%} ({fmt_pps(c['pps'])} of {fmt_pps(c['limit_pps'])})",
                        c["fraction"] >= T_LIMIT_FRACTION,
                    )
                )
            if c.get("pps"):
                out.append(
                    (
                        f"4 ranks, {c['k']} keys/call: durable >= {T_PPS:,} points/s",
                        f"{fmt_pps(c['pps'])}",
                        c["pps"] >= T_PPS,
                    )
                )
    lt = res.get("lightning")
    if lt and "met" in lt:
        out.append(
            ("Lightning DDP CPU, 20 metrics/step: CoordinatorLogger overhead below sync_dist's", "see 5b", lt["met"])
        )
    ddp = res.get("ddp")
    if ddp and ddp.get("rows"):
        rows = {r["variant"]: r for r in ddp["rows"]}
        for name, label in (
            ("coordinator", "coordinator"),
            ("coordinator-socket", "coordinator over the socket (`rings=False`)"),
        ):
            c = rows.get(name)
            if c:
                out += _ddp_targets(label, c, rows.get(name + "+wake5ms"), rows)
    soak = (res.get("scale") or {}).get("soak")
    if soak and soak.get("rss_first"):
        out.append(
            (
                f"aggregator RSS flat within {T_RSS_FLAT:.0%} over the {soak['duration']:.0f} s soak",
                f"{mib(soak['rss_first'])} -> {mib(soak['rss_last'])} MiB ({soak['growth']:+.1%})",
                abs(soak["growth"]) <= T_RSS_FLAT,
            )
        )
    if soak and "flat" in soak and soak["warm_t"] >= 30:  # the goal is about the full (10-minute) soak
        out.append(
            (
                f"aggregator RSS within ±5% from {soak['warm_t']:.0f} s to the end of the soak (issue #12, goal 6)",
                f"{soak['band_lo']:+.1%} .. {soak['band_hi']:+.1%} of the {soak['warm_t']:.0f} s value",
                bool(soak["flat"]),
            )
        )
    out += cpu_targets(res)
    return out


def report(res: dict[str, Any], meta: dict[str, Any], pngs: dict[str, str]) -> str:
    """The markdown report of one suite run (``pngs``: section -> plot file name, linked when present)."""
    m, v = meta["machine"], meta["versions"]
    md = [
        f"# coordinator benchmark suite ({meta['mode']})",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; wall time {meta['wall_s']:.0f} s",
        f"- machine: {m['host']}; CPU: {m['cpu']}; cores: {m['cores']} ({m['usable']} usable); memory "
        f"{m['mem_gib']} GiB; Linux {m['kernel']}; load average at the start {meta['load0'][0]:.2f}, at the end "
        f"{meta['load1'][0]:.2f} (the machine may be shared: see 'other load' in section 2)",
        f"- coordinator {v['coordinator']} ({meta['git']}); python {v['python']}, pyzmq {v['pyzmq']}, msgpack "
        f"{v['msgpack']}, SQLite {v['sqlite']}, psutil {v['psutil']}, torch {v['torch']}, matplotlib {v['matplotlib']}",
        f"- peers: tensorboard {v['tensorboard']}, wandb {v['wandb']}, mlflow {v['mlflow']}, neptune {v['neptune']}, "
        f"trackio {v['trackio']}",
        f"- repeats: {meta['repeats']} per cell (figures are medians of the repeats; ratios within this run)",
    ]
    if meta.get("skipped"):
        md.append(f"- **skipped in this mode**: {'; '.join(meta['skipped'])}")
    md.append("")
    tg = targets(res)
    md += ["## Targets", "", "| target | measured | status |", "| --- | --- | --- |"]
    md += [f"| {a} | {b} | {mark(c)} |" for a, b, c in tg]
    md.append("")
    # ---- 1
    hot = res.get("hot")
    if hot:
        md += ["## 1. Hot path", ""]
        if "hot" in pngs:
            md += [f"![hot path]({pngs['hot']})", ""]
        md += [
            f"One rank in this process (`rank=0, world_size=1`), sender thread and aggregator running; each call "
            f"timed with `perf_counter_ns`, timer overhead ({hot['overhead_ns']} ns) subtracted. realistic: 50 "
            "steps/s, each step one 80-key `log()` + 10 scalar `log()` + 10 `append()` = 100 metrics; full: "
            f"chunks of 10,000 scalar `log()`, 10,000 `append()` and 100 100-key `log()` calls back to back "
            f"for {hot['full_s']:g} s; disabled: {hot['calls']:,} calls on "
            '`mode="disabled"`. p50/p99: median over the repeats; max and calls > 1 ms: over all repeats. '
            f"GC {'on' if hot['gc'] else 'off'}; `sys.getswitchinterval()` = {hot['switchinterval_ms']:g} ms."
            + _hot_rings_text(hot),
            "",
            "| load | call | calls | p50 µs | p99 µs | max µs | calls > 1 ms | p50 per repeat | p99 per repeat |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in hot["rows"]:
            md.append(
                f"| {r['load']} | `{r['call']}` | {r['n']:,} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['max']:,.0f} | "
                f"{r['over_1ms']} | {r['p50_all']} | {r['p99_all']} |"
            )
        if hot["sender"]:
            md += [
                "",
                "**Sender thread** on the runs over the socket (`rings=False`; with rings, the default, it does "
                "not flush): CPU time of the `coordinator-sender` thread from `/proc` via psutil, over "
                "the measured window (a pure-Python thread holds the GIL for about its CPU time, minus the ZeroMQ "
                "send, which releases it). Per flush = each `SenderThread._flush` call (swap the buffer, encode, "
                "send), timed by wrapping the method on the instance from the benchmark: its CPU time "
                "(`time.thread_time_ns`, ≈ GIL held) and its wall time (which also counts waiting for the GIL "
                "while the training thread runs: up to the switch interval per hand-over).",
                "",
                "| load | window s | sender CPU s | CPU share (≈ GIL share) | flushes | CPU per flush p50 / p99 / "
                "max µs | wall per flush p50 / p99 / max µs | steps overrun |",
                "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
            ]
            for load, s in hot["sender"].items():
                md.append(
                    f"| {load} | {s['wall_s']:.2f} | {s['cpu_s']:.3f} | {s['share']:.1%} | {s['flushes']:.0f} | "
                    f"{s['cpu_slice_p50_us']:.0f} / {s['cpu_slice_p99_us']:,.0f} / "
                    f"{s['cpu_slice_max_us']:,.0f} | "
                    f"{s['slice_p50_us']:.0f} / {s['slice_p99_us']:,.0f} / {s['slice_max_us']:,.0f} | "
                    f"{s['late']:.0%} |"
                )
        if hot.get("no_step_in_ring") is not None:
            md.append(
                f"\n`realistic, no step` (`benchmarks.hotpatterns`): section 1's realistic load, every call without a "
                f"step; {hot['no_step_in_ring']:.1%} of its points went into the rank's ring (median of the repeats), "
                "each numbered on the rank."
            )
        for c in hot["checks"]:
            md.append(f"\n**delivery check failed**: {c}")
        md += ["", gil_markdown(hot)]
    # ---- 2 + 3
    tpr = res.get("throughput")
    if tpr:
        md += ["## 2. Throughput vs ranks and keys per call; 3. the limit", ""]
        if "throughput" in pngs:
            md += [f"![throughput]({pngs['throughput']})", ""]
        md += [
            "coordinator: N rank processes log P points each as fast as they can in `log()` calls of K keys, then "
            "`wait()`; points/s = N·P / (common start → last rank's `wait()` returned: every point committed to "
            "SQLite and acked). Every trial is verified point by point (every rank's series of every key, and the "
            "reduced main series, read back: each step exactly once with its value). limit: the same N processes "
            "push pre-built 1000-point msgpack batches (same columnar format) over raw pyzmq PUSH → one PULL "
            "receiver over ipc that discards them (more points per rank than the coordinator trial, so that "
            "the clock runs long enough: points/s is what compares). Each cell's coordinator and limit trials "
            "run back to back.",
            "",
            "| ranks | keys/call | points/rank | coordinator points/s | per repeat | limit points/s | of limit | "
            "limit encoding in the loop | of that | "
            "aggregator CPU | aggregator RSS MiB peak | client RSS MiB peak | client CPU s (sender) | other load | "
            "verified |",
            "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for c in tpr["cells"]:
            md.append(
                f"| {c['world']} | {c['k']} | {c['points_per_rank'] or 0:,} | {fmt_pps(c.get('pps'))} | "
                f"{c.get('pps_all', '-')} | {fmt_pps(c.get('limit_pps'))} | "
                f"{'-' if c.get('fraction') is None else format(c['fraction'], '.1%')} | "
                f"{fmt_pps(c.get('inline_pps'))} | "
                f"{'-' if c.get('fraction_inline') is None else format(c['fraction_inline'], '.1%')} | "
                f"{'-' if c.get('agg_cpu_share') is None else format(c['agg_cpu_share'], '.0%')} | "
                f"{mib(c.get('agg_rss_peak'))} | {mib(c.get('client_rss_peak'))} | "
                f"{c.get('client_cpu', 0):.2f} ({c.get('sender_cpu', 0):.2f}) | {c.get('other_load', 0):.2f} | "
                f"{'ok' if c['ok'] else '**FAILED**'} |"
            )
        for t in tpr["trials"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**:", "", "```", *[p[:500] for p in t["problems"][:8]], "```"]
        for t in tpr["limits"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**: {t['problems'][:3]}"]
        md.append("")
    # ---- 4
    pr = res.get("peers")
    if pr:
        md += ["## 4. Peers (same workload, same run)", ""]
        if "peers" in pngs:
            md += [f"![peers]({pngs['peers']})", ""]
        md += [
            "Hot path: one scalar per call, back to back, in a single process (coordinator: section 1, full load). "
            "Durable points/s: each logging process logs the same 100-key dict per step as fast as it can, then "
            "the peer's flush/finish (the clock stops when it returns). Multi-process: 4 processes started "
            "together, each peer in its documented DDP mode; the peer's output is read back (event files, `.wandb` "
            "log, SQLite, offline op log) and every (key, step) of every logging rank counted: missing and "
            "duplicated. `rank0` mode records 1 of the 4 ranks by design.",
            "",
            "| logger | version | DDP mode | hot p50 µs | hot p99 µs | hot max µs | 1 process: points/s durable "
            "(log s + finish s) | 4 processes: points/s durable | ranks recorded | lost | duplicated | how |",
            "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | --- |",
        ]
        co = _coordinator_peer_row(res)
        if co:
            md.append(co)
        for name, e in pr["peers"].items():
            if not e["available"]:
                md.append(
                    f"| {name} | **missing**: {e['version']} | {e['mode']} | missing | missing | missing | "
                    f"missing | missing | - | - | - | {e['how']} |"
                )
                continue
            w1, w4 = e.get("w1"), e.get("w4")
            if not w1 and not w4:
                why = "skipped (--quick)" if name in pr.get("skipped_quick", []) else "**failed** (see below)"
                md.append(f"| {name} | {e['version']} | {e['mode']} | {why} | | | | | | | | {e['how']} |")
                continue
            h = (w1 or {}).get("hot") or {}
            one = f"{fmt_pps(w1['pps'])} ({w1['log_s']:.2f} + {w1['finish_s']:.2f})" if w1 else "not run"
            four = f"{fmt_pps(w4['pps'])} ({w4['log_s']:.2f} + {w4['finish_s']:.2f})" if w4 else "not run"
            rec = f"{w4['active']} of 4" if w4 else "-"
            lost = sum(x.get("lost", 0) for x in (w1, w4) if x)
            dup = sum(x.get("duplicated", 0) for x in (w1, w4) if x)
            md.append(
                f"| {name} | {e['version']} | {e['mode']} | {h.get('p50', float('nan')):.1f} | "
                f"{h.get('p99', float('nan')):.1f} | {h.get('max', float('nan')):,.0f} | {one} | {four} | "
                f"{rec} | "
                f"{lost} | {dup} | {e['how']} |"
            )
        for e in pr["peers"].values():
            for t in e.get("trials", []):
                if not t["ok"]:
                    md += ["", f"**{t['label']}**: " + " | ".join(p[:400] for p in t["problems"][:3])]
        md.append("")
    # ---- 5
    ddp = res.get("ddp")
    if ddp:
        md += ["## 5. Training overhead (CPU DDP, 4 ranks, gloo)", ""]
        if "ddp" in pngs:
            md += [f"![ddp]({pngs['ddp']})", ""]
        md += [
            f"`{ddp['command']}` (one launch; variants interleaved, order rotated each repeat, after a warm-up "
            "block). Model: MLP 256-512-512-10, batch 64 per rank, SGD; `torch.set_num_threads(1)`. Step time = "
            "the slowest rank's mean over the block; median over the repeats. Logging = 100 metrics per step. "
            "Setup/close = opening and draining the logger around a block (not in the step time). 4 ranks share "
            "2 cores, so every CPU cycle a logger (or its aggregator / service process) takes is taken from "
            "training. Paired = the median over repeats of each block's ratio to the same repeat's `none` "
            "block, with a 95% bootstrap interval over the repeats, which says how much of a figure is the "
            "machine's noise: the slowdown targets above are judged on it (met when the whole interval is "
            "below the goal, missed when the whole of it is above, inconclusive otherwise; the plain "
            "slowdown decides below 5 repeats), the comparisons with peers on the plain figures. "
            "The baseline is `none`, "
            "and `none+wake5ms` for a `+wake5ms` variant (every rank runs a thread that only wakes up every "
            "5 ms: on a VM an idle vCPU is slow to run again, which a logger's own wake-ups hide; with the "
            "waker everywhere that effect is the same for every variant).",
            "",
        ]
        if ddp.get("missing"):
            md.append(f"Peers missing (not installed): {', '.join(ddp['missing'])}.\n")
        if ddp.get("rows"):
            md += [
                "| variant | step ms | per repeat | slowdown vs baseline | paired [95% interval] | setup s | close s |",
                "| --- | ---: | --- | ---: | --- | ---: | ---: |",
            ]
            for r in ddp["rows"]:
                md.append(
                    f"| {r['variant']} | {r['step_ms']:.3f} | {r['step_ms_all']} | {r['slowdown']:+.1%} | "
                    f"{paired_text(r)} | {r['setup_s']:.2f} | {r['close_s']:.2f} |"
                )
        for p in ddp.get("problems", []):
            md += [
                "",
                "**DDP job failed** (a worker crashed or torchrun failed; numbers above, if any, were "
                "written before it):",
                "",
                "```",
                p[:2500],
                "```",
            ]
        md.append("")
    lt = res.get("lightning")
    if lt:
        md += ["## 5b. Lightning DDP: CoordinatorLogger vs sync_dist", "", lightning_markdown(lt)]
    sm = res.get("sampler")
    if sm:
        md += ["## 5c. System-metrics sampler: CPU cost", "", sampler_markdown(sm)]
    if res.get("cpu"):
        md += ["## 7. CPU per logged point (whole job)", "", cpu_markdown(res["cpu"])]
    # ---- 6
    sc = res.get("scale")
    if sc:
        md += ["## 6. Scale and soak", ""]
        if "scale" in pngs:
            md += [f"![scale]({pngs['scale']})", ""]
        md += [
            "One real aggregator (`python -m coordinator.aggregator`, started by the benchmark with world_size = "
            "senders) fed by simulated senders: 2 processes (64 senders per process above 1024), each with many "
            "DEALER sockets speaking the "
            "coordinator's wire protocol (HELLO, numbered columnar batches of 10 keys x 100 steps, window of 4 "
            "unacked batches, BYE). points/s = acked points / time to the last ack; every rank's point count is "
            "read back from the store and checked.",
            "",
            "| senders | points | points/s | per repeat | aggregator CPU | RSS MiB connected | RSS MiB peak | "
            "ack latency p50 / p99 ms | aggregator warnings | verified |",
            "| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for r in sc["rows"]:
            md.append(
                f"| {r['senders']} | {r['points']:,} | {fmt_pps(r['pps'])} | {r['pps_all']} | "
                f"{r['agg_cpu_share']:.0%} | {mib(r['rss_connected'])} | {mib(r['rss_peak'])} | "
                f"{r['ack_p50_ms']:.0f} / {r['ack_p99_ms']:.0f} | {r['warnings']} | "
                f"{'ok' if r['ok'] else '**FAILED**'} |"
            )
        for t in sc["trials"]:
            if not t["ok"]:
                md += ["", f"**{t['label']} FAILED**: {t['problems'][:3]}"]
        if sc.get("paced"):
            md += [
                "",
                "Paced (issue #12's ack-latency goals): each sender offers an equal share of a fixed load; "
                "unpaced, a full window per sender makes the ack latency the points in flight over the throughput.",
                "",
                "| senders | offered points/s | achieved | aggregator CPU | ack p50 / p99 ms | RSS MiB peak "
                "| verified |",
                "| ---: | ---: | ---: | ---: | --- | ---: | --- |",
            ]
            for t in sc["paced"]:
                share = t["agg_cpu"] / t["elapsed"] if t.get("agg_cpu") and t.get("elapsed") else 0.0
                md.append(
                    f"| {t['senders']} | {fmt_pps(t['offered'])} | {fmt_pps(t.get('pps'))} | {share:.0%} | "
                    f"{t.get('ack_p50_ms') or 0:.0f} / {t.get('ack_p99_ms') or 0:.0f} | {mib(t.get('rss_peak'))} | "
                    f"{'ok' if t['ok'] else '**FAILED** ' + '; '.join(t['problems'][:2])} |"
                )
        s = sc["soak"]
        md += [
            "",
            f"**Soak**: 64 senders x 10 batches/s x 100 points = 64,000 points/s for {s['duration']:.0f} s "
            f"({s.get('acked_points', 0):,} points, {fmt_pps(s.get('pps'))} points/s achieved). Aggregator RSS "
            f"(sampled every second): {mib(s.get('rss_idle'))} MiB idle, {mib(s.get('rss_first'))} MiB at "
            f"1 s, {mib(s.get('rss_warm'))} MiB at {s.get('warm_t', 0):.0f} s, {mib(s.get('rss_last'))} MiB "
            f"at the end (peak {mib(s.get('rss_peak'))} MiB): {s.get('growth', 0):+.1%} from 1 s, "
            f"{s.get('growth_warm', 0):+.1%} from {s.get('warm_t', 0):.0f} s to the end; "
            f"{'verified' if s['ok'] else '**FAILED**: ' + '; '.join(s['problems'][:3])}."
            + (
                f" Every sample from {s['warm_t']:.0f} s within {s['band_lo']:+.1%} .. {s['band_hi']:+.1%} of the "
                f"{s['warm_t']:.0f} s value: ±5% {'met' if s['flat'] else '**missed**'}."
                if "flat" in s
                else ""
            ),
            "",
        ]
    if res.get("notes"):
        md += ["## Notes", "", *res["notes"], ""]
    return "\n".join(md)


def _hot_rings_text(hot: dict[str, Any]) -> str:
    """Section 1's sentence on what its unmarked and ``, socket`` loads ran on ("" for a result file from before
    rings were the default, whose unmarked loads ran over the socket)."""
    if "default_rings" not in hot:
        return ""
    default = (
        "rings (each row of plain numbers into the rank's ring, which the aggregator reads)"
        if hot["default_rings"]
        else "which `COORDINATOR_RINGS=0` turned to the socket in this run"
    )
    return (
        f" Unmarked loads run at the library's default, {default}; loads marked `, socket` send every point "
        "over the socket (`rings=False`: the rank's buffer and its sender thread)."
    )


def _coordinator_peer_row(res: dict[str, Any]) -> str | None:
    """The coordinator's row of the peer table, from sections 1 and 2 (None without section 1)."""
    hot = res.get("hot")
    tpr = res.get("throughput")
    if not hot:
        return None
    by = {(r["load"], r["call"]): r for r in hot["rows"]}
    h = by.get(("full", 'log({"loss": x}, step=s)'))
    one = four = "-"
    if tpr:
        cells = {(c["world"], c["k"]): c for c in tpr["cells"]}
        c1, c4 = cells.get((1, 100)), cells.get((4, 100))
        if c1 and c1.get("pps"):
            one = f"{fmt_pps(c1['pps'])} (section 2)"
        if c4 and c4.get("pps"):
            four = f"{fmt_pps(c4['pps'])} (section 2)"
        ok = all(c["ok"] for c in tpr["cells"])
    else:
        ok = True
    lost = "0" if ok else "see 2"
    return (
        f"| **coordinator** | {res['meta_versions']['coordinator']} | every rank | {h['p50']:.2f} | "
        f"{h['p99']:.2f} | "
        f"{h['max']:,.0f} | {one} | {four} | 4 of 4 | {lost} | {lost} | `run.log(dict, step=s)`; verified in "
        "section 2 |"
    )


def notes(res: dict[str, Any]) -> list[str]:
    """Observations computed from this run's numbers (the bottleneck analysis is in the commit/report)."""
    out = []
    tpr = res.get("throughput")
    if tpr:
        for c in tpr["cells"]:
            if c["world"] == 4 and c.get("agg_cpu_share") is not None and c.get("pps"):
                out.append(
                    f"- 4 ranks, {c['k']} keys/call: the aggregator process used {c['agg_cpu_share']:.0%} of a "
                    f"core during the window; the limit run shows the transport is not the ceiling "
                    f"({fmt_pps(c.get('limit_pps'))} points/s)."
                )
    hot = res.get("hot")
    if hot and hot.get("sender"):
        # "full": a result file from before rings were the default, when the default load was the socket's.
        s = hot["sender"].get("full, socket") or hot["sender"].get("full")
        if s:
            out.append(
                f"- At full load over the socket (`rings=False`) the sender thread used {s['share']:.0%} of a core "
                "(≈ its share of the GIL); "
                f"its longest flush took {s['cpu_slice_max_us']:,.0f} µs of CPU ({s['slice_max_us']:,.0f} µs "
                "wall). A flush is not one hold of the GIL: the sender lets it go between slices of its work "
                "(cut, encoding, copies, sends), so a `log()` call waits for the slice the sender is in, not for "
                "the flush; the sender's longest single hold is in section 1's GIL stretches (uprobes)."
            )
    return out
