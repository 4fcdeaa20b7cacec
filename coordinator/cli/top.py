"""``coordinator top``: a live terminal view of a running job, redrawn every second until the run ends.

Per rank: state, restarts, step, steps/s, steps behind the fastest rank, seconds since last
heard of, points and points/s, spool bytes, host and pid; per tracker: how far its forwarder
trails the journal; the latest events. Everything is read from the run's files, read-only
(:mod:`coordinator.cli.snapshot`): it works from any terminal on the node that can read the
store, and never slows the job (WAL readers do not block the writer). When the run ends the
final frame stays on screen, a line says how it ended, and the command exits 0; ``--once``
prints one frame. A run that stays ``running`` without a live aggregator (it died) is reported
after ``--stale-after`` seconds, exit status 1.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text

from coordinator.cli.common import human_bytes, resolve_run, when
from coordinator.cli.series import ReadOnlyRun
from coordinator.cli.snapshot import Snapshot, rates, spool_root_of, take
from coordinator.errors import CoordinatorError
from coordinator.journal.store import resolve_root

__all__ = ["add_top_parser", "cmd_top", "render"]

_STATE_STYLE = {"live": "green", "closed": "cyan", "lost": "bold red", "failed": "bold red", "not joined": "yellow"}


def add_top_parser(sub: Any) -> None:
    """Register ``top`` on the command's subparsers."""
    p = sub.add_parser(
        "top",
        help="live view of a running job: per-rank state, step, rates, lag, spool bytes, forwarding lag",
        description="A live view of a running job, redrawn every second until it ends (read-only: "
        "usable from another terminal on the node).",
    )
    p.add_argument("run", nargs="?", default="latest", help="run id (or a unique prefix), or 'latest' (default)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between frames (default 1)")
    p.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="where the job's ranks spool (default: as the run's aggregator recorded it, else <store>/spool/<run id>)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=15.0,
        metavar="S",
        help="give up on a 'running' run whose aggregator is gone after this many seconds (default 15)",
    )
    p.set_defaults(fn=cmd_top)


def _num(v: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def render(snap: Snapshot) -> Group:
    """One frame: a headline, the ranks table, the forwarders table (if any), the latest events."""
    info = snap.info
    state = info.state if info.state != "running" or snap.live else "running (no live aggregator)"
    elapsed = (info.ended or snap.taken) - info.created
    head = Text.assemble(
        ("run ", "bold"),
        (info.id, "bold cyan"),
        f"  {info.project}/{info.name}  ",
        ("state ", "bold"),
        (state, _STATE_STYLE.get("live" if snap.running else "closed", "")),
        f"  world {info.world_size}  up {_age(elapsed)}  points {snap.points:,}  "
        f"journal {human_bytes(snap.journal_bytes)} (position {snap.journal_end:,})",
    )
    ranks = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    columns: list[tuple[str, JustifyMethod]] = [
        ("rank", "left"),
        ("state", "left"),
        ("rst", "right"),
        ("step", "right"),
        ("step/s", "right"),
        ("lag", "right"),
        ("seen", "right"),
        ("points", "right"),
        ("pts/s", "right"),
        ("spool", "right"),
        ("host:pid", "left"),
    ]
    for name, justify in columns:
        ranks.add_column(name, justify=justify)
    for r in snap.ranks:
        ranks.add_row(
            f"rank {r.rank}",
            Text("straggler", style="bold yellow")
            if r.straggler and r.state == "live"
            else Text(r.state, style=_STATE_STYLE.get(r.state, "")),
            str(r.restarts),
            _num(r.step, "{:,}"),
            _num(r.steps_per_s),
            _num(r.lag_steps, "{:,}"),
            "-" if r.state == "closed" else _age(r.seen_s),
            f"{r.points:,}",
            _num(r.points_per_s, "{:,.0f}"),
            human_bytes(r.spool_bytes) if r.spool_bytes else "-",
            "-" if r.host is None else f"{r.host}:{r.pid}",
        )
    parts: list[Any] = [head, ranks]
    if snap.forwarders:
        fwd = Table(
            box=None,
            pad_edge=False,
            padding=(0, 2, 0, 0),
            header_style="bold",
            title="forwarding",
            title_justify="left",
        )
        for name in ("backend", "position", "behind (chunks)", "behind (points)", "saved", "finished"):
            fwd.add_column(name, justify="left" if name in ("backend", "finished") else "right")
        for f in snap.forwarders:
            fwd.add_row(
                f.backend,
                f"{f.cursor:,}",
                f"{f.behind_chunks:,}",
                f"{f.behind_points:,}",
                _age(f.saved_s) + " ago" if f.saved_s is not None else "-",
                f.finished or "-",
            )
        parts.append(fwd)
    for ts, kind, rank, detail in snap.events:
        who = "" if rank is None else f" rank {rank}"
        parts.append(Text(f"{when(ts)}  {kind}{who}: {detail[:100]}", style="dim"))
    return Group(*parts)


def cmd_top(a: argparse.Namespace) -> int:
    """``coordinator top [RUN|latest] [--once]``."""
    if a.interval <= 0:
        raise CoordinatorError(f"--interval must be positive, got {a.interval}")
    root = resolve_root(a.dir)
    info = resolve_run(root, a.run)
    console = Console()
    with ReadOnlyRun(info.path / "run.db") as run:
        spool_root = spool_root_of(run, root, info.id) if a.spool_dir is None else resolve_root(a.spool_dir)
        snap = take(run, spool_root)
        if a.once or snap.info.state != "running":
            console.print(render(snap))
            return 0
        try:
            return _follow(console, run, snap, spool_root, a)
        except KeyboardInterrupt:
            return 130


def _follow(console: Console, run: ReadOnlyRun, snap: Snapshot, spool_root: Any, a: argparse.Namespace) -> int:
    """Redraw every ``a.interval`` seconds until the run ends; the exit status."""
    stale_since: float | None = None
    with Live(render(snap), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            time.sleep(a.interval)
            snap = rates(snap, take(run, spool_root))
            live.update(render(snap))
            if snap.info.state != "running":
                break
            if snap.live:
                stale_since = None
            elif stale_since is None:
                stale_since = time.monotonic()
            elif time.monotonic() - stale_since >= a.stale_after:
                break
    if snap.info.state == "running":
        console.print(f"run {snap.info.id}: still 'running' but its aggregator is gone (stale); see coordinator show")
        return 1
    console.print(f"run {snap.info.id} ended: {snap.info.state}")
    return 0
