"""``coordinator show``: a stored run's failures, fields, rank health, series, conflicts, events and report.

Failures come first: each failed rank, why (the final report's ``failed_ranks``) and, when it died
of an exception, its type, message and traceback (its ``rank_failed`` event). Series are
summarised from the journal's per-chunk summaries (count, first, last, min, max), so showing a run
of any length reads no whole series.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coordinator.aggregator.counters import HEADLINE
from coordinator.cli.common import out, resolve_run, when
from coordinator.core.counters import UNDELIVERED
from coordinator.core.redact import redact_tree
from coordinator.journal.store import LocalStore, RunInfo, resolve_root, run_dir

__all__ = ["cmd_show", "failures", "show_data"]


def failures(report: dict[str, Any] | None, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failed rank, by rank: ``{rank, reason, type, message, traceback}``.

    The reason is the report's (the run's final word); type, message and traceback come from the
    rank's last ``rank_failed`` event (``None`` where it sent none: lost, ``Run.fail("text")``).
    A run without a report yet (still open, or its aggregator died) shows the ranks its events name.
    """
    detail: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["kind"] != "rank_failed" or e["rank"] is None:
            continue
        try:
            d = json.loads(e["detail"])
        except ValueError:
            d = None
        detail[e["rank"]] = d if isinstance(d, dict) else {"message": str(e["detail"])}
    if report is not None:  # the run's final word: an earlier life of a restarted rank is no failure
        reasons = {int(r): why for r, why in (report.get("failed_ranks") or {}).items()}
    else:
        reasons = {r: d.get("reason") or d.get("message") or "failed" for r, d in detail.items()}
    return [
        {
            "rank": r,
            "reason": why,
            "type": detail.get(r, {}).get("type"),
            "message": detail.get(r, {}).get("message"),
            "traceback": detail.get(r, {}).get("traceback"),
        }
        for r, why in sorted(reasons.items())
    ]


def show_data(info: RunInfo, store: LocalStore) -> dict[str, Any]:
    """Everything ``show`` prints (``show --json`` prints exactly this)."""
    events = [{"ts": ts, "kind": k, "rank": r, "detail": d} for ts, k, r, d in store.events()]
    return {
        "id": info.id,
        "project": info.project,
        "name": info.name,
        "state": info.state,
        "world_size": info.world_size,
        "created": info.created,
        "ended": info.ended,
        "failures": failures(info.report, events),
        "fields": {p: when(v) if t == "datetime" else v for p, (t, v) in store.fields().items()},
        "series": store.series_summary(),
        "conflicts": store.conflicts(),
        "events": events,
        "report": info.report,
        "path": str(info.path),
        "forwarders": _forwarders(info.path),
    }


def _forwarders(path: Path) -> dict[str, Any]:
    """Each backend's cursor file: where its forwarder stands and what it counted."""
    found: dict[str, Any] = {}
    for f in sorted(path.glob("forward-*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            found[f.stem.removeprefix("forward-")] = {"error": f"unreadable cursor file: {e}"}
            continue
        found[str(d.get("backend", f.stem))] = {
            "cursor": d.get("cursor"),
            "finished": d.get("finished"),
            "counters": d.get("counters", {}),
            "updated": d.get("updated"),
        }
    return found


def cmd_show(a: argparse.Namespace) -> int:
    """``coordinator show RUN [--json]``."""
    root = resolve_root(a.dir)
    info = resolve_run(root, a.run)
    store = LocalStore(run_dir(root, info.id) / "run.db", readonly=True)
    try:
        data = redact_tree(show_data(info, store))  # no credential printed, whatever the store holds
    finally:
        store.close()
    if a.json:
        out(json.dumps(data, indent=2, default=str))
        return 0
    out(f"run {info.id}  ({info.project}/{info.name})")
    out(f"  state      {info.state}")
    out(f"  ranks      {info.world_size}")
    out(f"  created    {when(info.created)}    ended {when(info.ended)}")
    out(f"  store      {info.path}")
    out()
    if data["failures"]:
        _print_failures(data["failures"])
        out()
    _print_fields(data["fields"])
    out()
    _print_series(data["series"])
    if data["conflicts"]:
        out()
        out("conflicts (field writes that disagreed; the lowest rank's value is kept)")
        for c in data["conflicts"]:
            out(f"  {c['path']}: rank {c['rank']} wrote {c['value']!r:.60}; kept rank {c['kept_rank']}'s value")
    out()
    out("events")
    for e in data["events"]:
        who = f"rank {e['rank']}" if e["rank"] is not None else ""
        detail = "(see failures above)" if e["kind"] == "rank_failed" else e["detail"] or ""
        out(f"  {when(e['ts'])}  {e['kind']:<14} {who:<8} {detail}")
    out()
    _print_report(data["report"])
    _print_forwarders(data["forwarders"])
    return 0


def _print_failures(found: list[dict[str, Any]]) -> None:
    """Each failed rank and why; its traceback indented below."""
    out("failures")
    for f in found:
        out(f"  rank {f['rank']}: {f['reason']}")
        for line in (f["traceback"] or "").rstrip("\n").splitlines():
            out(f"      {line}")


def _print_fields(fields: dict[str, Any]) -> None:
    """The fields; the per-rank fields ``sys/ranks/<r>/*`` (health, process) as a table."""
    out("fields")
    ranks: dict[str, dict[str, Any]] = {}
    for p, v in fields.items():
        parts = p.split("/")
        if len(parts) == 4 and parts[:2] == ["sys", "ranks"]:
            ranks.setdefault(parts[2], {})[parts[3]] = v
            continue
        out(f"  {p:<40} {v!r:.80}")
    if not ranks:
        return
    out()
    out("ranks (health: progress, rate, and lag behind the median rank; the process: host, pid, launcher)")
    out(
        f"  {'RANK':>4} {'STATE':<8} {'LAST STEP':>10} {'STEPS/S':>9} {'LAG STEPS':>10} {'LAG S':>8}"
        f"  {'HOST':<20} {'PID':>8} LAUNCHER"
    )
    stragglers = set(fields.get("sys/stragglers") or [])
    for r in sorted(ranks, key=int):
        h = ranks[r]
        flag = "  straggler" if int(r) in stragglers else ""
        out(
            f"  {r:>4} {h.get('state', '-'):<8} {h.get('last_step', '-'):>10} {h.get('steps_per_s', 0):>9.2f} "
            f"{h.get('lag_steps', '-')!s:>10} {h.get('lag_s', 0):>8.3f}  {str(h.get('host', '-'))[:20]:<20} "
            f"{h.get('pid', '-')!s:>8} {h.get('launcher', '-')}{flag}"
        )
    for r in sorted((r for r in ranks if "argv" in ranks[r]), key=int):
        out(f"  rank {r} ran: {ranks[r]['argv']:.200}")


def _print_series(series: list[dict[str, Any]]) -> None:
    """One line per key, from the journal's chunk summaries (no point is read where chunks do not overlap)."""
    out("series")
    out(
        f"  {'KEY':<32} {'POLICY':<8} {'POINTS':>10} {'LAST (step, value)':<28} {'MIN':>10} {'MAX':>10}"
        "  PER-RANK POINTS"
    )
    for s in series:
        last = f"({s['last'][0]}, {s['last'][1]:.6g})" if s["last"] else "-"
        lo, hi = (f"{s[k]:.4g}" if s.get(k) is not None else "-" for k in ("min", "max"))
        per = " ".join(f"{r}:{n}" for r, n in s["per_rank"].items())
        out(f"  {s['key'][:32]:<32} {s['policy']:<8} {s['points']:>10} {last:<28} {lo:>10} {hi:>10}  {per}")


def _print_report(rep: dict[str, Any] | None) -> None:
    if rep is None:
        out("report     (none yet: the run is still open or its aggregator died; see events)")
        return
    out("report")
    for k in HEADLINE:
        out(f"  {k:<18} {rep.get(k)}")
    for r, pr in rep.get("per_rank", {}).items():
        out(
            f"  rank {r:<13} {pr['points']} points in {pr['batches']} batches, state {pr['state']}"
            + (f", {pr[UNDELIVERED]} undelivered" if pr.get(UNDELIVERED) else "")
        )
    for reason in rep.get("reasons", []):
        out(f"  ! {reason}")


def _print_forwarders(forwarders: dict[str, Any]) -> None:
    for name, fw in forwarders.items():
        out()
        if "error" in fw:
            out(f"forwarder {name}: {fw['error']}")
            continue
        c = fw["counters"]
        out(
            f"forwarder {name}  cursor {fw['cursor']}, run {fw['finished'] or 'not finished'} in the backend, "
            f"updated {when(fw['updated'])}"
        )
        out("  " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
