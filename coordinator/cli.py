"""The ``coordinator`` command: list and show stored runs, upload offline runs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from coordinator.errors import CoordinatorError
from coordinator.sinks.local import LocalStore, RunInfo, list_runs, resolve_root, run_dir

__all__ = ["main"]


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _resolve(root: Path, ref: str) -> RunInfo:
    runs = list_runs(root)
    if not runs:
        raise CoordinatorError(f"no runs under {root}")
    if ref == "latest":
        return runs[-1]
    matches = [r for r in runs if r.id == ref] or [r for r in runs if r.id.startswith(ref)]
    if len(matches) != 1:
        raise CoordinatorError(f"{'no' if not matches else 'several'} runs match {ref!r} under {root}")
    return matches[0]


def _cmd_runs(a: argparse.Namespace) -> int:
    root = resolve_root(a.dir)
    runs = list_runs(root)
    if a.json:
        _out(json.dumps([{"id": r.id, "project": r.project, "name": r.name, "state": r.state,
                          "world_size": r.world_size, "created": r.created, "ended": r.ended,
                          "points": (r.report or {}).get("points")} for r in runs], indent=2))  # fmt: skip
        return 0
    if not runs:
        _out(f"no runs under {root}")
        return 0
    _out(f"{'ID':<24} {'PROJECT':<12} {'NAME':<20} {'STATE':<9} {'RANKS':>5} {'POINTS':>10} {'CREATED':<19} DURATION")
    for r in runs:
        pts = (r.report or {}).get("points", "-")
        dur = f"{r.ended - r.created:.1f}s" if r.ended else "-"
        _out(f"{r.id:<24} {r.project[:12]:<12} {r.name[:20]:<20} {r.state:<9} {r.world_size:>5} "
             f"{pts!s:>10} {_when(r.created):<19} {dur}")  # fmt: skip
    return 0


def _show_data(info: RunInfo, store: LocalStore) -> dict[str, Any]:
    return {
        "id": info.id, "project": info.project, "name": info.name, "state": info.state,
        "world_size": info.world_size, "created": info.created, "ended": info.ended,
        "fields": {p: v for p, (_, v) in store.fields().items()},
        "series": store.series_summary(),
        "conflicts": store.conflicts(),
        "events": [{"ts": ts, "kind": k, "rank": r, "detail": d} for ts, k, r, d in store.events()],
        "report": info.report,
        "path": str(info.path),
    }  # fmt: skip


def _cmd_show(a: argparse.Namespace) -> int:
    root = resolve_root(a.dir)
    info = _resolve(root, a.run)
    store = LocalStore(run_dir(root, info.id) / "run.db", readonly=True)
    try:
        data = _show_data(info, store)
    finally:
        store.close()
    if a.json:
        _out(json.dumps(data, indent=2, default=str))
        return 0
    _out(f"run {info.id}  ({info.project}/{info.name})")
    _out(f"  state      {info.state}")
    _out(f"  ranks      {info.world_size}")
    _out(f"  created    {_when(info.created)}    ended {_when(info.ended)}")
    _out(f"  store      {info.path}")
    _out()
    _out("fields")
    for p, v in data["fields"].items():
        _out(f"  {p:<40} {v!r:.80}")
    _out()
    _out("series")
    _out(f"  {'KEY':<32} {'POLICY':<8} {'POINTS':>8} {'LAST (step, value)':<28} PER-RANK POINTS")
    for s in data["series"]:
        last = f"({s['last'][0]}, {s['last'][1]:.6g})" if s["last"] else "-"
        per = " ".join(f"{r}:{n}" for r, n in s["per_rank"].items())
        _out(f"  {s['key'][:32]:<32} {s['policy']:<8} {s['points']:>8} {last:<28} {per}")
    if data["conflicts"]:
        _out()
        _out("conflicts (field writes that disagreed; the lowest rank's value is kept)")
        for c in data["conflicts"]:
            _out(f"  {c['path']}: rank {c['rank']} wrote {c['value']!r:.60}; kept rank {c['kept_rank']}'s value")
    _out()
    _out("events")
    for e in data["events"]:
        who = f"rank {e['rank']}" if e["rank"] is not None else ""
        _out(f"  {_when(e['ts'])}  {e['kind']:<14} {who:<8} {e['detail'] or ''}")
    rep = info.report
    _out()
    if rep is None:
        _out("report     (none yet: the run is still open or its aggregator died; see events)")
    else:
        _out("report")
        for k in ("points", "main_points", "batches", "duplicate_batches", "bad_frames", "late_points",
                  "replaced_points", "conflicts", "duration_s"):  # fmt: skip
            _out(f"  {k:<18} {rep.get(k)}")
        for r, pr in rep.get("per_rank", {}).items():
            _out(f"  rank {r:<13} {pr['points']} points in {pr['batches']} batches, state {pr['state']}"
                 + (f", {pr['undelivered']} undelivered" if pr.get("undelivered") else ""))  # fmt: skip
        for reason in rep.get("reasons", []):
            _out(f"  ! {reason}")
    return 0


def _cmd_sync(a: argparse.Namespace) -> int:
    from coordinator.offline import upload_spools

    root = resolve_root(a.dir)
    rep = upload_spools(root, a.run)
    _out(f"run {a.run}: {rep['points']} points from {len(rep['ranks_seen'])} ranks stored, state {rep['state']}")
    for reason in rep.get("reasons", []):
        _out(f"  ! {reason}")
    return 0 if rep["state"] == "finished" else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``coordinator`` console script."""
    p = argparse.ArgumentParser(prog="coordinator", description="Inspect and upload coordinator runs.")
    p.add_argument("--dir", help="store root (default $COORDINATOR_DIR or ./.coordinator)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("runs", help="list stored runs")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(fn=_cmd_runs)
    s = sub.add_parser("show", help="show a run's fields, series, events and final report")
    s.add_argument("run", help="run id (or a unique prefix), or 'latest'")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=_cmd_show)
    y = sub.add_parser("sync", help="upload an offline run, or what a crashed job left in its spools, into the store")
    y.add_argument("run", help="run id")
    y.set_defaults(fn=_cmd_sync)
    a = p.parse_args(argv)
    try:
        return int(a.fn(a))
    except CoordinatorError as e:
        sys.stderr.write(f"coordinator: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
