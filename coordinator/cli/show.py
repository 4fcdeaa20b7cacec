"""``coordinator show``: a stored run's failures, fields, rank health, series, conflicts, events and report.

Failures come first: each failed rank, why (the final report's ``failed_ranks``) and, when it died
of an exception, its type, message and traceback (its ``rank_failed`` event). Series are
summarised from the journal's per-chunk summaries (count, first, last, min, max, and a sparkline:
:mod:`coordinator.journal.downsample`), so showing a run of any length reads no whole series; each
series also shows the spread of the ranks' last values. Events read as sentences with short
incarnation labels (:mod:`coordinator.core.events`), and the report as a few lines, anomalies first
(:mod:`coordinator.core.summary`); ``--json`` keeps every raw value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coordinator.cli.common import out, resolve_run, when
from coordinator.cli.render import number, sparkline
from coordinator.core.events import event_rows, incarnation_labels
from coordinator.core.redact import redact_tree
from coordinator.core.summary import summary_lines
from coordinator.journal.downsample import series_sketch
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
    labels = incarnation_labels(store.senders())
    events = event_rows(store.events(), labels)
    data = {
        "id": info.id,
        "project": info.project,
        "name": info.name,
        "state": info.state,
        "world_size": info.world_size,
        "created": info.created,
        "ended": info.ended,
        "failures": failures(info.report, events),
        "fields": {p: when(v) if t == "datetime" else v for p, (t, v) in store.fields().items()},
        "series": [_with_shape(store, s) for s in store.series_summary()],
        "conflicts": store.conflicts(),
        "incarnations": {str(inc): label for inc, label in labels.items()},
        "events": events,
        "report": info.report,
        "summary": summary_lines(info.report, info.state),
        "path": str(info.path),
        "forwarders": _forwarders(info.path),
        "staged_points": store.staged_points(),
    }
    if hasattr(store, "text_summary"):  # text series, where the journal has them
        data["text_series"] = store.text_summary()
    return data


def _with_shape(store: LocalStore, s: dict[str, Any]) -> dict[str, Any]:
    """A series' summary plus its sparkline values and each rank's last (step, value) and their spread.

    The sparkline is of the main series, else (a ``per_rank`` key) of the lowest rank's series.
    """
    ranks = sorted(s["per_rank"])
    rank_last = {r: store.last_point(s["key"], r) for r in ranks}
    lasts = [p[1] for p in rank_last.values() if p is not None and p[1] == p[1]]  # NaN is no value
    main = s["points"] > 0 or not ranks
    drawn, n = (-1, s["points"]) if main else (ranks[0], s["per_rank"][ranks[0]])
    return {
        **s,
        "sparkline": series_sketch(store, s["key"], drawn, points=n),
        "sparkline_rank": None if drawn == -1 else drawn,
        "rank_last": {str(r): p for r, p in rank_last.items()},
        "spread": [min(lasts), max(lasts)] if lasts else None,
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
    out(f"  state      {info.state if info.state in ('running', 'finished') else info.state.upper()}")
    out(f"  ranks      {info.world_size}")
    out(f"  created    {when(info.created)}    ended {when(info.ended)}")
    out(f"  store      {info.path}")
    if data["staged_points"]:  # journal/staging.py: acknowledged rank points not yet in the series below
        out(
            f"  staged     {data['staged_points']} rank points not yet in the series below "
            "(a live run writes them within ~2 s; a crashed one at its next `coordinator sync`)"
        )
    out()
    if data["failures"]:
        _print_failures(data["failures"])
        out()
    out("report")
    for line in data["summary"]:
        out(f"  {line}")
    out()
    _print_fields(data["fields"])
    out()
    _print_series(data["series"])
    if data.get("text_series"):
        out()
        _print_text_series(data["text_series"])
    if data["conflicts"]:
        out()
        out("conflicts (field writes that disagreed; the lowest rank's value is kept)")
        for c in data["conflicts"]:
            out(f"  {c['path']}: rank {c['rank']} wrote {c['value']!r:.60}; kept rank {c['kept_rank']}'s value")
    out()
    out("events")
    for e in data["events"]:
        out(f"  {when(e['ts'])[11:]}  {e['kind']:<16} {e['text']}")
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
    """One line per key: points, a sparkline, the last step and value, and the ranks' spread (from chunk summaries)."""
    out("series (TREND: the main series from first to last step; RANKS: min–max of the ranks' last values)")
    width = max([len(s["key"]) for s in series] + [3])
    width = min(width, 40)
    out(f"  {'KEY':<{width}} {'POINTS':>9}  {'TREND':<24} {'STEP':>9} {'LAST':>10}  RANKS")
    for s in series:
        step, last = s["last"] if s["last"] else ("-", None)
        spread = "-" if s["spread"] is None else f"{number(s['spread'][0])}–{number(s['spread'][1])}"
        if s["spread"] is not None and s["spread"][0] == s["spread"][1]:
            spread = number(s["spread"][0])
        trend = sparkline(s["sparkline"])
        if s["sparkline_rank"] is not None:
            trend = f"{trend} (rank {s['sparkline_rank']})"
        key = s["key"] if len(s["key"]) <= width else s["key"][: width - 1] + "…"
        out(f"  {key:<{width}} {s['points']:>9}  {trend:<24} {step!s:>9} {number(last):>10}  {spread}")


def _print_text_series(text: list[dict[str, Any]]) -> None:
    """The last text of each text series and rank, on one line."""
    out("text series (the last text of each key and rank)")
    for t in text:
        who = "main" if t.get("rank") in (None, -1) else f"rank {t['rank']}"
        line = " ".join(str(t.get("last_text") or "").split())
        line = line if len(line) <= 90 else line[:89] + "…"
        out(f"  {t['key']}  {who}  {t.get('n', 0)} texts, step {t.get('last_step', '-')}: {line}")


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
