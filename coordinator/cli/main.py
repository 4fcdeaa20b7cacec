"""The ``coordinator`` command: list and show stored runs, upload runs (to the store or a backend), doctor."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.errors import CoordinatorError
from coordinator.journal.store import LocalStore, RunInfo, list_runs, resolve_root, run_dir

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
        _out(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "project": r.project,
                        "name": r.name,
                        "state": r.state,
                        "world_size": r.world_size,
                        "created": r.created,
                        "ended": r.ended,
                        "points": (r.report or {}).get("points"),
                    }
                    for r in runs
                ],
                indent=2,
            )
        )
        return 0
    if not runs:
        _out(f"no runs under {root}")
        return 0
    _out(f"{'ID':<24} {'PROJECT':<12} {'NAME':<20} {'STATE':<9} {'RANKS':>5} {'POINTS':>10} {'CREATED':<19} DURATION")
    for r in runs:
        pts = (r.report or {}).get("points", "-")
        dur = f"{r.ended - r.created:.1f}s" if r.ended else "-"
        _out(
            f"{r.id:<24} {r.project[:12]:<12} {r.name[:20]:<20} {r.state:<9} {r.world_size:>5} "
            f"{pts!s:>10} {_when(r.created):<19} {dur}"
        )
    return 0


def _show_data(info: RunInfo, store: LocalStore) -> dict[str, Any]:
    return {
        "id": info.id,
        "project": info.project,
        "name": info.name,
        "state": info.state,
        "world_size": info.world_size,
        "created": info.created,
        "ended": info.ended,
        "fields": {p: _when(v) if t == "datetime" else v for p, (t, v) in store.fields().items()},
        "series": store.series_summary(),
        "conflicts": store.conflicts(),
        "events": [{"ts": ts, "kind": k, "rank": r, "detail": d} for ts, k, r, d in store.events()],
        "report": info.report,
        "path": str(info.path),
        "forwarders": _forwarders(info.path),
    }


def _forwarders(path: Path) -> dict[str, Any]:
    """Each backend's cursor file: where its forwarder stands and what it counted."""
    out: dict[str, Any] = {}
    for f in sorted(path.glob("forward-*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            out[f.stem.removeprefix("forward-")] = {"error": f"unreadable cursor file: {e}"}
            continue
        out[str(d.get("backend", f.stem))] = {
            "cursor": d.get("cursor"),
            "finished": d.get("finished"),
            "counters": d.get("counters", {}),
            "updated": d.get("updated"),
        }
    return out


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
    ranks: dict[str, dict[str, Any]] = {}
    for p, v in data["fields"].items():
        parts = p.split("/")
        if len(parts) == 4 and parts[:2] == ["sys", "ranks"]:
            ranks.setdefault(parts[2], {})[parts[3]] = v
            continue
        _out(f"  {p:<40} {v!r:.80}")
    if ranks:
        _out()
        _out("ranks (health: progress, rate, and lag behind the median rank)")
        _out(f"  {'RANK':>4} {'STATE':<8} {'LAST STEP':>10} {'STEPS/S':>9} {'LAG STEPS':>10} {'LAG S':>8}")
        stragglers = set(data["fields"].get("sys/stragglers") or [])
        for r in sorted(ranks, key=int):
            h = ranks[r]
            flag = "  straggler" if int(r) in stragglers else ""
            _out(
                f"  {r:>4} {h.get('state', '-'):<8} {h.get('last_step', '-'):>10} {h.get('steps_per_s', 0):>9.2f} "
                f"{h.get('lag_steps', '-')!s:>10} {h.get('lag_s', 0):>8.3f}{flag}"
            )
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
        for k in (
            "points",
            "main_points",
            "batches",
            "duplicate_batches",
            "bad_frames",
            "late_points",
            "replaced_points",
            "conflicts",
            "duration_s",
        ):
            _out(f"  {k:<18} {rep.get(k)}")
        for r, pr in rep.get("per_rank", {}).items():
            _out(
                f"  rank {r:<13} {pr['points']} points in {pr['batches']} batches, state {pr['state']}"
                + (f", {pr['undelivered']} undelivered" if pr.get("undelivered") else "")
            )
        for reason in rep.get("reasons", []):
            _out(f"  ! {reason}")
    for name, fw in data["forwarders"].items():
        _out()
        if "error" in fw:
            _out(f"forwarder {name}: {fw['error']}")
            continue
        c = fw["counters"]
        _out(
            f"forwarder {name}  cursor {fw['cursor']}, run {fw['finished'] or 'not finished'} in the backend, "
            f"updated {_when(fw['updated'])}"
        )
        _out("  " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    return 0


def _options(pairs: list[str] | None) -> dict[str, object]:
    opts: dict[str, object] = {}
    for pair in pairs or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CoordinatorError(f"--option takes key=value, got {pair!r}")
        opts[k.strip()] = v
    return opts


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, every 2 s otherwise."""

    def __init__(self, backend: str, total: int) -> None:
        self.backend = backend
        self.total = max(total, 0)
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.t0 = time.monotonic()

    def __call__(self, st: dict[str, Any], *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last < 2.0:
            return
        self.last = now
        done = (
            st["forwarded_points"]
            + st["thinned_points"]
            + st["stale_points"]
            + st["replaced_points"]
            + st["name_collisions"]
        )
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        line = (
            f"{self.backend}: {done:,}/{self.total:,} points{pct}, {st['forwarded_batches']} batches, "
            f"{st['retries']} retries, {now - self.t0:.1f} s"
        )
        end = "\n" if final or not self.tty else "\x1b[K"
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


def _sync_to(a: argparse.Namespace, root: Path) -> int:
    from coordinator.cli.upload import spool_root, upload_spools
    from coordinator.forward.forwarder import Forwarder

    run_id = a.run
    db = run_dir(root, run_id) / "run.db"
    spool = spool_root(root, run_id)
    state = None
    if db.exists():
        s = LocalStore(db, readonly=True)
        try:
            state = s.run_info().state
        finally:
            s.close()
    if spool.is_dir() and any(spool.iterdir()) and state != "running":
        rep = upload_spools(root, run_id)  # an offline run, or what a crashed job left: into the store first
        _out(f"run {run_id}: {rep['points']} points from spools stored, state {rep['state']}")
    info = _resolve(root, run_id)
    fwd = Forwarder(info.path / "run.db", a.to, _options(a.option))
    try:
        fwd.backend.check()
        chunks, points = fwd.pending()
        _out(
            f"run {info.id} -> {a.to}: {points:,} points in {chunks:,} chunks to send "
            f"(resuming at journal position {fwd.stats()['cursor']})"
        )
        prog = _Progress(a.to, points)
        try:
            st = fwd.drain(a.timeout, progress=prog)
        except BaseException:
            prog(fwd.stats(), final=True)  # the progress line ends before the error message
            raise
        prog(st, final=True)
    finally:
        fwd.release()
    _out(
        f"run {info.id} -> {a.to}: {st['forwarded_points']:,} points sent in {st['forwarded_batches']} batches, "
        f"{st['retries']} retries, {st['thinned_points']} thinned, {st['dropped_points']} dropped by the backend, "
        f"{st['stale_points']} stale; backend run {st['finished'] or 'left open (the run has not ended)'}"
    )
    return 0


def _cmd_sync(a: argparse.Namespace) -> int:
    from coordinator.cli.upload import upload_spools

    root = resolve_root(a.dir)
    if a.to:
        return _sync_to(a, root)
    if a.option:
        raise CoordinatorError("--option needs --to BACKEND")
    rep = upload_spools(root, a.run)
    _out(f"run {a.run}: {rep['points']} points from {len(rep['ranks_seen'])} ranks stored, state {rep['state']}")
    for reason in rep.get("reasons", []):
        _out(f"  ! {reason}")
    return 0 if rep["state"] == "finished" else 1


def _cmd_doctor(a: argparse.Namespace) -> int:
    from coordinator.cli.doctor import run_doctor

    ok = True
    for line_ok, line in run_doctor(a.backend, _options(a.option), keep=a.keep):
        _out(f"{'OK  ' if line_ok else 'FAIL'}  {line}")
        ok = ok and line_ok
    _out("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


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
    y.add_argument("run", help="run id (with --to also a unique prefix, or 'latest')")
    y.add_argument(
        "--to",
        metavar="BACKEND",
        help="push the stored run into a backend: mlflow, tensorboard, "
        "wandb, neptune (resumes where a previous push stopped)",
    )
    y.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="backend or forwarder option, repeatable (e.g. tracking_uri=http://127.0.0.1:5000)",
    )
    y.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (default: none)")
    y.set_defaults(fn=_cmd_sync)
    d = sub.add_parser("doctor", help="check the installation end to end (aggregator, store, optionally a backend)")
    d.add_argument("--backend", help="also check this backend: a test write and read-back")
    d.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option, repeatable")
    d.add_argument("--keep", action="store_true", help="keep the scratch run directory")
    d.set_defaults(fn=_cmd_doctor)
    a = p.parse_args(argv)
    try:
        return int(a.fn(a))
    except (CoordinatorError, ImportError) as e:  # ImportError: a backend's extra is not installed
        sys.stderr.write(f"coordinator: error: {e}\n")
        return 2
