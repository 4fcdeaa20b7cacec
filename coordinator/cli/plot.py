"""``coordinator plot``: runs' series drawn into a PNG (main series, rank band or per-rank lines, events).

One panel per key; on each, every run named: its main (reduced) series as a line, the spread of
its ranks (min-max across ranks per step) as a band, or with ``--ranks`` each rank's own series
as a thin line, and vertical markers where ranks restarted, were lost, failed or came back, or
the aggregator restarted (the journal's events, placed at the step the main series had reached).
Each series is reduced to one step bucket per pixel column by the journal's downsampler
(:mod:`coordinator.journal.downsample`: chunks inside a bucket from their summaries, only the
chunks crossing a bucket boundary read), so memory and reads stay bounded for any length. Drawn with
matplotlib's Agg canvas (no display, no pyplot state): the ``plot`` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from coordinator.cli.common import err, out, resolve_run
from coordinator.cli.series import ReadOnlyRun, retry_busy
from coordinator.errors import CoordinatorError, missing_extra
from coordinator.journal.downsample import MAX_BUCKETS, Buckets, Read, band, downsample
from coordinator.journal.records import MAIN_RANK, RunInfo
from coordinator.journal.store import resolve_root

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["EVENT_MARKS", "add_plot_parser", "cmd_plot", "ema", "envelope"]

EVENT_MARKS = {
    "rank_restarted": ("restart", "#b2182b"),
    "rank_lost": ("lost", "#000000"),
    "rank_failed": ("failed", "#c51b7d"),
    "rank_returned": ("returned", "#1b7837"),
    "aggregator_restarted": ("aggregator restart", "#525252"),
}
"""Journal event kind -> (marker label, colour) of the events a plot marks."""

_MAX_LABELLED_EVENTS = 12
"""Markers beyond this many per panel are drawn without a label (they would overlap)."""


def add_plot_parser(sub: Any) -> None:
    """Register ``plot`` on the command's subparsers."""
    p = sub.add_parser(
        "plot",
        help="draw runs' series into a PNG: main series, rank band or per-rank lines, restarts and lost ranks",
        description="Draw series of one or more runs into a PNG (needs the 'plot' extra: matplotlib). "
        "Short form for one run and one key: coordinator plot RUN KEY -o out.png",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="RUN",
        help="run ids (or unique prefixes, or 'latest'); without --key the last argument is the key",
    )
    p.add_argument("--key", action="append", metavar="KEY", help="a series to draw, repeatable (one panel each)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the PNG to write")
    p.add_argument(
        "--ranks", action="store_true", help="draw each rank's own series as a thin line instead of the band"
    )
    p.add_argument("--no-band", action="store_true", help="draw neither the rank band nor rank lines")
    p.add_argument("--no-events", action="store_true", help="leave out the event markers")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="W",
        help="smooth the main series with an exponential moving average of weight W in [0, 1) (0.9: strong); "
        "the raw line stays, faint",
    )
    p.add_argument("--logy", action="store_true", help="logarithmic value axis")
    p.add_argument("--title", help="title above the panels")
    p.add_argument("--width", type=float, default=10.0, metavar="INCHES", help="figure width (default 10)")
    p.add_argument("--dpi", type=int, default=150, help="resolution (default 150)")
    p.set_defaults(fn=cmd_plot)


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` class and ``rcParams`` (the ``plot`` extra)."""
    try:
        from matplotlib import rcParams
        from matplotlib.figure import Figure
    except ImportError as e:
        raise missing_extra("coordinator plot", "plot", e) from e
    return Figure, rcParams


def cmd_plot(a: argparse.Namespace) -> int:
    """``coordinator plot RUN [RUN ...] --key KEY [--key KEY ...] -o out.png``."""
    runs_refs, keys = (a.targets, a.key) if a.key else (a.targets[:-1], a.targets[-1:])
    if not runs_refs:
        raise CoordinatorError("plot needs a run and a key: coordinator plot RUN KEY -o out.png (or RUN ... --key KEY)")
    if not 0.0 <= a.smooth < 1.0:
        raise CoordinatorError(f"--smooth takes a weight in [0, 1), got {a.smooth}")
    if a.width <= 0 or a.dpi <= 0:
        raise CoordinatorError("--width and --dpi must be positive")
    Figure, rc = _matplotlib()
    root = resolve_root(a.dir)
    infos = [resolve_run(root, r) for r in runs_refs]
    fig = Figure(figsize=(a.width, 3.6 * len(keys) + 0.6), dpi=a.dpi, layout="constrained")
    columns = max(64, int(a.width * a.dpi))
    drawn = 0
    for i, key in enumerate(keys):
        ax = fig.add_subplot(len(keys), 1, i + 1)
        drawn += _panel(ax, infos, key, a, columns, list(rc["axes.prop_cycle"].by_key()["color"]))
    if not drawn:
        raise CoordinatorError(f"none of the runs has a point of {', '.join(map(repr, keys))}")
    if a.title:
        fig.suptitle(a.title)
    path = Path(a.output)
    fig.savefig(path, format="png")
    out(f"wrote {path} ({drawn} series of {len(infos)} run(s), {len(keys)} panel(s))")
    return 0


def _panel(ax: Axes, infos: list[RunInfo], key: str, a: argparse.Namespace, columns: int, colors: list[str]) -> int:
    """Draw ``key`` of every run on ``ax`` (run n in ``colors[n]``); the number of runs that had it."""
    drawn = 0
    for n, info in enumerate(infos):
        color = colors[n % len(colors)]
        with ReadOnlyRun(info.path / "run.db") as run:
            if key not in run.metric_keys():
                err(f"coordinator: run {info.id} has no series {key!r}")
                continue
            drawn += 1
            label = info.id if len(infos) > 1 else "main (reduced)"
            rank_colors = colors[1:] if len(infos) == 1 else [color]  # one run: a colour per rank
            _draw_run(ax, run, key, a, columns, color, label, rank_colors)
            if not a.no_events:
                _draw_events(ax, run, key, color)
    ax.set_title(key)
    ax.set_xlabel("step")
    if a.logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize="small")
    return drawn


def _reduce(run: ReadOnlyRun, key: str, rank: int, lo: int, hi: int, columns: int, read: Read) -> Buckets | None:
    """One series in at most ``columns`` step buckets; read again from the start if SQLite was busy."""
    src = run.source(key, rank)
    if src is None:
        return None
    return retry_busy(lambda: downsample(src, lo, hi, columns, read=read))


def _draw_run(
    ax: Axes,
    run: ReadOnlyRun,
    key: str,
    a: argparse.Namespace,
    columns: int,
    color: str,
    label: str,
    rank_colors: list[str],
) -> None:
    """The main series, then the band or the rank lines, of one run."""
    ranks = [] if a.no_band else run.ranks_of(key)
    stats = [run.reader.series_stats(key, r) for r in (MAIN_RANK, *ranks)]
    firsts = [s.first[0] for s in stats if s.first is not None]
    lasts = [s.last[0] for s in stats if s.last is not None]
    if not firsts:
        return
    lo, hi = min(firsts), max(lasts)
    columns = min(columns, MAX_BUCKETS)
    # smoothing averages each bucket's points: only an exact mean will do, so every point is read
    main = _reduce(run, key, MAIN_RANK, lo, hi, columns, "all" if a.smooth > 0 else "boundaries")
    if main is not None:
        _main_line(ax, main, a.smooth, color, label)
    parts = [p for r in ranks if (p := _reduce(run, key, r, lo, hi, columns, "boundaries")) is not None]
    if a.ranks:
        for n, (r, part) in enumerate(zip(ranks, parts, strict=True)):
            x, y = envelope(part)
            c = rank_colors[n % len(rank_colors)]
            ax.plot(x, y, color=c, linewidth=0.7, alpha=0.6, label=f"rank {r}" if len(ranks) <= 8 else None)
    elif parts:
        b_min, b_max = band(parts)
        keep = ~np.isnan(b_min)
        if keep.any():
            where = f"{len(ranks)} ranks" if len(ranks) != 1 else "rank"
            ax.fill_between(
                parts[0].starts[keep],
                b_min[keep],
                b_max[keep],
                color=color,
                alpha=0.2,
                linewidth=0,
                label=f"{where} min–max",
            )


def envelope(b: Buckets) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Points of a line that shows every bucket's extent: (x, min), (x, max) per bucket with a value.

    Buckets of one step hold one point each: the line is the series itself.
    """
    keep = ~np.isnan(b.min)  # a bucket of NaN points only draws nothing
    x = b.starts[keep]
    if b.width == 1:
        return x, b.last[keep]
    return np.repeat(x, 2), np.column_stack((b.min[keep], b.max[keep])).ravel()


def ema(values: NDArray[np.float64], weight: float) -> NDArray[np.float64]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start (the UI's is the same).

    Raises:
        ValueError: ``weight`` outside ``[0, 1)``.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"the smoothing weight must be in [0, 1), got {weight}")
    out = np.empty_like(values)
    acc = 0.0
    for i, v in enumerate(values.tolist()):
        acc = acc * weight + (1.0 - weight) * v
        out[i] = acc / (1.0 - weight ** (i + 1))
    return out


def _main_line(ax: Axes, main: Buckets, smooth: float, color: str, label: str) -> None:
    x, y = envelope(main)
    if not len(x):
        return
    if smooth > 0:
        mean = main.mean
        keep = ~np.isnan(mean)
        ax.plot(x, y, color=color, linewidth=0.8, alpha=0.3)
        ax.plot(
            main.starts[keep],
            ema(mean[keep], smooth),
            color=color,
            linewidth=1.6,
            label=f"{label} (smoothed {smooth:g})",
        )
    else:
        ax.plot(x, y, color=color, linewidth=1.4, label=label)


def _draw_events(ax: Axes, run: ReadOnlyRun, key: str, color: str) -> None:
    """Vertical markers for restarts, lost, failed and returning ranks, grouped by (kind, step)."""
    marks: dict[tuple[str, int], list[int | None]] = {}
    for ts, kind, rank, _ in retry_busy(run.reader.events):
        if kind not in EVENT_MARKS:
            continue
        step = run.step_at(key, ts)
        if step is None and rank is not None:
            step = run.step_at(key, ts, rank)
        if step is not None:
            marks.setdefault((kind, step), []).append(rank)
    for n, ((kind, step), ranks) in enumerate(sorted(marks.items(), key=lambda m: m[0][1])):
        label, mark_color = EVENT_MARKS[kind]
        ax.axvline(step, color=mark_color, linestyle="--", linewidth=1.0)
        if n < _MAX_LABELLED_EVENTS:
            who = sorted(r for r in ranks if r is not None)
            text = f"{label} {_rank_list(who)}".strip()
            ax.annotate(
                text,
                xy=(step, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                rotation=90,
                va="top",
                fontsize="x-small",
                color=mark_color,
            )


def _rank_list(ranks: list[int]) -> str:
    if not ranks:
        return ""
    return ("rank " if len(ranks) == 1 else "ranks ") + json.dumps(ranks)[1:-1].replace(" ", "")
