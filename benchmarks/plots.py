"""The suite's plots: one PNG per section, each stamped with the command, versions and machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import log
from benchmarks.report import (
    T_FULL_P99_US,
    T_LIMIT_FRACTION,
    T_PPS,
    T_REAL_P50_US,
    T_REAL_P99_US,
    T_RSS_FLAT,
    T_SLOWDOWN,
)

__all__ = ["plots", "stamp"]


def stamp(meta: dict[str, Any]) -> str:
    """One line naming the command, date, machine and versions of a run."""
    m, v = meta["machine"], meta["versions"]
    return (
        f"{meta['command']}  |  {meta['date']}  |  {m['cpu']}, {m['cores']} cores  |  python {v['python']}, "
        f"coordinator {v['coordinator']} ({meta['git']}), pyzmq {v['pyzmq']}, torch {v['torch']}"
    )


def plots(res: dict[str, Any], meta: dict[str, Any], base: Path) -> dict[str, str]:
    """Write ``<base>-<section>.png`` for each section with numbers; returns section -> file name."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return {}
    stamp_text = stamp(meta)
    out: dict[str, str] = {}

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title, fontsize=11)
        fig.text(0.01, 0.005, stamp_text, fontsize=6, color="0.35", ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.04, 1, 0.95))
        p = base.with_name(f"{base.name}-{name}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out[name] = p.name

    hot = res.get("hot")
    pr = res.get("peers")
    if hot:
        fig, ax = plt.subplots(figsize=(11, 5))
        labels, p50, p99 = [], [], []
        for r in hot["rows"]:
            if r["ppc"] == 1:
                labels.append(f"coordinator {r['load']}\n{r['call'].split('(')[0].replace('run[', '[')}")
                p50.append(r["p50"])
                p99.append(r["p99"])
        if pr:
            for name, e in pr["peers"].items():
                h = (e.get("w1") or {}).get("hot")
                if h:
                    labels.append(f"{name}\n(full load)")
                    p50.append(h["p50"])
                    p99.append(h["p99"])
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
        ax.set_yscale("log")
        ax.set_xticks(list(x), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("µs per call (one scalar)")
        ax.axhline(T_REAL_P50_US, color="g", ls=":", lw=1, label=f"target realistic p50 {T_REAL_P50_US:g} µs")
        ax.axhline(T_REAL_P99_US, color="orange", ls=":", lw=1, label=f"target realistic p99 {T_REAL_P99_US:g} µs")
        ax.axhline(T_FULL_P99_US, color="r", ls=":", lw=1, label=f"target full-load p99 {T_FULL_P99_US:g} µs")
        ax.legend(fontsize=7)
        save(fig, "hot", "1. Hot path: one scalar per call (log scale)")
    tpr = res.get("throughput")
    if tpr:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        ks = sorted({c["k"] for c in tpr["cells"]}, reverse=True)
        for k in ks:
            cs = sorted((c for c in tpr["cells"] if c["k"] == k and c.get("pps")), key=lambda c: c["world"])
            axes[0].plot([c["world"] for c in cs], [c["pps"] for c in cs], "o-", label=f"coordinator, {k} keys/call")
            ls = [c for c in cs if c.get("limit_pps")]
            axes[0].plot([c["world"] for c in ls], [c["limit_pps"] for c in ls], "x--", label=f"raw PUSH/PULL, k={k}")
            li = [c for c in cs if c.get("inline_pps")]
            axes[0].plot(
                [c["world"] for c in li],
                [c["inline_pps"] for c in li],
                "+:",
                label=f"PUSH/PULL encoding in loop, k={k}",
            )
        axes[0].axhline(T_PPS, color="r", ls=":", lw=1, label=f"target {T_PPS:,}/s")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("ranks (processes)")
        axes[0].set_ylabel("points/s (durable / delivered)")
        axes[0].legend(fontsize=7)
        w4 = sorted(
            (c for c in tpr["cells"] if c["world"] == 4 and c.get("fraction") is not None), key=lambda c: c["k"]
        )
        bars = axes[1].bar([str(c["k"]) for c in w4], [c["fraction"] * 100 for c in w4])
        axes[1].bar_label(bars, [f"{c['fraction']:.1%}" for c in w4], fontsize=8)
        axes[1].axhline(T_LIMIT_FRACTION * 100, color="r", ls=":", label=f"target {T_LIMIT_FRACTION:.0%}")
        axes[1].set_xlabel("keys per log() call (4 ranks)")
        axes[1].set_ylabel("coordinator durable / raw limit (%)")
        axes[1].legend(fontsize=7)
        save(fig, "throughput", "2-3. Durable throughput vs ranks, and as a fraction of the raw transport")
    if pr:
        names, one, four = [], [], []
        cells = {(c["world"], c["k"]): c for c in (tpr or {}).get("cells", [])}
        if cells.get((1, 100), {}).get("pps"):
            names.append("coordinator")
            one.append(cells[(1, 100)]["pps"])
            four.append(cells.get((4, 100), {}).get("pps") or 0)
        for name, e in pr["peers"].items():
            if e.get("w1") or e.get("w4"):
                names.append(name)
                one.append((e.get("w1") or {}).get("pps") or 0)
                four.append((e.get("w4") or {}).get("pps") or 0)
        if names:
            fig, ax = plt.subplots(figsize=(10, 4.5))
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], one, 0.4, label="1 process")
            ax.bar([i + 0.2 for i in x], four, 0.4, label="4 processes (peer's DDP mode)")
            ax.set_yscale("log")
            ax.set_xticks(list(x), names, fontsize=8)
            ax.set_ylabel("points/s until durable (100-key dict per step)")
            ax.legend(fontsize=8)
            missing = [n for n, e in pr["peers"].items() if not e["available"]]
            if missing:
                ax.text(
                    0.99,
                    0.97,
                    "missing: " + ", ".join(missing),
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=8,
                )
            save(fig, "peers", "4. Peers: durable throughput, same workload, same run")
    ddp = res.get("ddp")
    if ddp and ddp.get("rows"):
        fig, ax = plt.subplots(figsize=(10, 4.5))
        rows = ddp["rows"]
        ax.bar([r["variant"] for r in rows], [r["step_ms"] for r in rows])
        for i, r in enumerate(rows):
            ax.text(i, r["step_ms"], f"{r['slowdown']:+.1%}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("ms per training step (median of repeats)")
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        save(fig, "ddp", f"5. CPU DDP (4 ranks, gloo) step time; target slowdown < {T_SLOWDOWN:.0%}")
    sc = res.get("scale")
    if sc and sc.get("rows"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        rows = sc["rows"]
        axes[0].plot([r["senders"] for r in rows], [r["pps"] for r in rows], "o-", label="points/s")
        axes[0].set_xscale("log", base=2)
        axes[0].set_xticks([r["senders"] for r in rows], [str(r["senders"]) for r in rows])
        axes[0].set_ylim(bottom=0)
        axes[0].set_xlabel("simulated senders")
        axes[0].set_ylabel("points/s durable")
        ax2 = axes[0].twinx()
        ax2.plot(
            [r["senders"] for r in rows],
            [r["rss_peak"] / 2**20 for r in rows],
            "s--",
            color="C1",
            label="aggregator RSS peak",
        )
        ax2.set_ylabel("aggregator RSS peak (MiB)")
        ax2.set_ylim(bottom=0)
        axes[0].legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
        ser = (sc.get("soak") or {}).get("rss_series")
        if ser:
            axes[1].plot([t for t, _ in ser], [v / 2**20 for _, v in ser])
            first = sc["soak"].get("rss_first")
            if first:
                axes[1].axhline(first / 2**20 * (1 + T_RSS_FLAT), color="r", ls=":", label="+10% of RSS at 1 s")
                axes[1].legend(fontsize=7)
            axes[1].set_xlabel("soak time (s)")
            axes[1].set_ylabel("aggregator RSS (MiB)")
            axes[1].set_ylim(bottom=0)
        save(fig, "scale", "6. Scale: one aggregator, many senders; soak at 64,000 points/s")
    return out
