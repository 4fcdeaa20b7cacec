"""Report text of section 7 (CPU per point) and of section 1's GIL probe; their targets (issue #12, goals 1 and 3)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import Status, interval_text, within

__all__ = ["T_CPU_US", "T_GIL_US", "cpu_markdown", "cpu_targets", "gil_markdown"]

T_CPU_US = 1.0
"""Goal: CPU µs per logged point, every process of the job summed."""
T_GIL_US = 100.0
"""Goal: longest stretch the sender thread holds the GIL."""


def cpu_targets(res: dict[str, Any]) -> list[tuple[str, str, Status]]:
    """(target, measured, status) rows for the suite's targets table.

    The CPU goal is judged on the paired figure's 95% interval (:func:`benchmarks.common.within`):
    a paced job's CPU swings by more than the goal between repeats on a shared machine, and a
    median alone (once -0.14 µs) would call it met or missed by chance.
    """
    out: list[tuple[str, str, Status]] = []
    cpu = res.get("cpu") or {}
    target = f"CPU per logged point, whole job, 4 ranks: <= {T_CPU_US:g} µs"
    if "us_per_point" in cpu:
        out.append(_cpu_row(target, cpu))
    if "us_per_point" in cpu.get("socket", {}):
        out.append(_cpu_row(f"{target}, over the socket (`rings=False`)", cpu["socket"]))
    gils = (res.get("hot") or {}).get("gil") or {}
    # The library's default (rings: its sender seldom flushes, so a probe may find no flush to be behind),
    # then the run with every point over the socket, whose sender flushes every 50 ms.
    for name, tag in (("coordinator", ""), ("socket", ", over the socket (`rings=False`)")):
        gil = gils.get(name)
        if gil and "in_flush_max_us" in gil:
            v = gil["in_flush_max_us"]
            what = f"longest GIL wait behind a sender flush{tag}: <= {T_GIL_US:g} µs"
            out.append((what, f"{v:,.0f} µs", v <= T_GIL_US))
    return out


def _cpu_row(target: str, cpu: dict[str, Any]) -> tuple[str, str, Status]:
    """The targets table's row of one variant's summary (:func:`benchmarks.cpu_per_point.summarise`)."""
    us = cpu["us_per_point"]
    if "us_paired" not in cpu:  # a result file from before the paired figure
        return target, f"{us:.2f} µs", us <= T_CPU_US
    point, (lo, hi) = cpu["us_paired"], cpu["us_paired_ci"]
    text = f"{us:.2f} µs (paired: {interval_text(point, lo, hi, '{:.2f} µs')})"
    status = within(point, lo, hi, T_CPU_US)
    if "direct_us" in cpu:
        text += f"; measured directly: {cpu['direct_us']:.2f} µs"
        if min(cpu["direct_us_all"]) > T_CPU_US:
            status = False
    return target, text, status


def cpu_markdown(cpu: dict[str, Any]) -> str:
    """Section 7 of the report."""
    lines = [
        f"`{cpu['command']}`: 4 ranks (torchrun, gloo CPU), a 100-key dict per step at 50 steps/s; CPU time "
        "(user + system, all threads) of every process of the job (torchrun's agent, the ranks, the "
        "aggregator, any other descendant) from `/proc` at the start and end of a steady window of "
        f"{cpu['seconds']:g} s marked by rank 0 (start-up and shutdown excluded), minus the same loop without "
        f"logging, divided by the points logged in the window; {cpu['repeats']} interleaved repeats, median.",
        "",
    ]
    for p in cpu.get("problems", []):
        lines += [f"**problem**: {p[:1500]}", ""]
    if "us_per_point" not in cpu:
        return "\n".join(lines)
    roles = cpu["by_role_us"]
    lines += [
        "| CPU µs per point | ranks (all threads) | aggregator | torchrun agent | other | per repeat | "
        "points/s | job CPU/s without / with logging |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        f"| **{cpu['us_per_point']:.2f}** | {roles['rank']:.2f} | {roles['aggregator']:.2f} | {roles['agent']:.2f} | "
        f"{roles['other']:.2f} | {cpu['us_per_point_all']} | {cpu['points_per_s']:,.0f} | "
        f"{cpu['base_cpu_per_s']:.3f} / {cpu['coord_cpu_per_s']:.3f} |",
        "",
    ]
    if "us_paired" in cpu:
        lo, hi = cpu["us_paired_ci"]
        lines += [
            "Paired (each repeat's logged block against the unlogged block beside it, then the median and its 95% "
            f"bootstrap interval over the repeats): {interval_text(cpu['us_paired'], lo, hi, '{:.2f} µs')}, per "
            f"repeat {cpu['us_paired_all']}. The target is judged on this interval: on a shared machine the "
            "job's CPU swings by more than the goal between repeats, and the unlogged loop itself costs more "
            "when nothing else keeps the vCPUs awake, so a median alone can land on either side of it.",
            "",
        ]
    if "direct_us" in cpu:
        part = cpu["direct_by_part_us"]
        lines += [
            f"Measured directly in the same windows: **{cpu['direct_us']:.2f} µs** a point, per repeat "
            f"{cpu['direct_us_all']}: the aggregator process {part['aggregator']:.2f}, the threads coordinator runs "
            f"in the ranks (the sender, pyzmq's I/O thread, any other `coordinator-` thread) "
            f"{part['rank_threads']:.2f}, and the training threads' CPU inside `log()` {part['log_calls']:.2f} "
            "(medians of each part). No baseline is subtracted, so it does not swing with the machine; it leaves "
            "out what logging costs the training thread outside its calls, which is the whole-job figure minus "
            "this one, as far as that figure's noise lets it show.",
            "",
        ]
    socket = cpu.get("socket", {})
    if "direct_us" in socket:
        part = socket["direct_by_part_us"]
        lo, hi = socket["us_paired_ci"]
        lines += [
            "Over the socket (`rings=False`; the same job's `socket` blocks, interleaved with the others: each "
            "rank's rows go through its buffer and its sender thread over ZeroMQ): "
            f"**{socket['direct_us']:.2f} µs** a point measured directly, per repeat {socket['direct_us_all']} "
            f"(the aggregator process {part['aggregator']:.2f}, the ranks' coordinator threads "
            f"{part['rank_threads']:.2f}, `log()` {part['log_calls']:.2f}); the whole job minus the unlogged loop "
            f"{socket['us_per_point']:.2f} µs, paired {interval_text(socket['us_paired'], lo, hi, '{:.2f} µs')}.",
            "",
        ]
    if cpu.get("late"):
        lines += [f"Up to {cpu['late']:.0%} of the steps of a window overran their 20 ms (the machine was busy).", ""]
    return "\n".join(lines)


def gil_markdown(hot: dict[str, Any]) -> str:
    """The GIL probe's paragraph and table under section 1."""
    gil = hot.get("gil")
    if not gil:
        return ""
    lines = [
        f"**GIL probe** (`benchmarks.hotpatterns`): a thread sleeps {hot.get('probe_us', 50):g} µs in a loop and "
        "records how late it wakes up while the main thread logs a 100-key dict per step at 50 steps/s. To wake "
        "it needs the GIL, so its lateness is at least the stretch another thread held the GIL (a pure-Python "
        "holder is asked to drop it after the switch interval). "
        + (
            "The `coordinator` row runs at the library's default (rings: the sender seldom flushes); the "
            "`socket` row sends every point over the socket (`rings=False`: the sender flushes every 50 ms). "
            if "socket" in gil
            else ""  # a result file from before rings were the default: its `coordinator` row is the socket's
        )
        + 'The `disabled` row is the same loop on a `mode="disabled"` run: the floor of this machine (timer slack, '
        "other processes).",
        "",
        "| run | wake-ups | p50 µs | p99.9 µs | max µs | max µs within 1 ms of a sender flush | flushes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, g in gil.items():
        lines.append(
            f"| {name} | {g['wakeups']:,.0f} | {g['p50_us']:.0f} | {g['p999_us']:,.0f} | {g['max_us']:,.0f} | "
            f"{g.get('in_flush_max_us', float('nan')):,.0f} | {g.get('flushes', 0):.0f} |"
        )
    holds = hot.get("gil_holds")
    if holds:
        lines += ["", "**GIL stretches** (`benchmarks.gil_holds`, uprobes on CPython's `take_gil`/`drop_gil`):"]
        if "lines" in holds:
            lines += ["", "```", *holds["lines"], "```"]
        else:
            lines.append(f"not measured: {holds['skipped']}.")
    return "\n".join(lines) + "\n"
