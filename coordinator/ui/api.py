"""The data of every page of the UI as JSON-ready dicts: runs, run page, summaries, series, texts, changes, compare.

Each method opens the run(s) it reads for this call only (:class:`~coordinator.ui.source.RunSource`)
and closes them before returning. Query parameters arrive as the strings of the URL; a bad one
raises :class:`BadRequest` (the server answers 400), an unknown run :class:`UnknownRun` (404).
The runs listing (state with stale detection, size, tags) is the CLI's ``scan_runs``, handed in
by whoever builds the :class:`Api` (the UI stage sits below the CLI and never imports it).
Every answer is bounded whatever the run's size: the run page summarises the first
:data:`SUMMARY_PAGE` keys and names the rest (``/summaries`` pages through them), a series is at
most :data:`~coordinator.journal.downsample.MAX_BUCKETS` buckets, a page of texts at most
:data:`MAX_TEXT_PAGE` texts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from coordinator.core.events import event_rows, incarnation_labels, label_of
from coordinator.core.summary import summary_lines
from coordinator.errors import SinkError
from coordinator.journal.downsample import MAX_BUCKETS, grid
from coordinator.journal.paths import writer_active
from coordinator.journal.records import MAIN_RANK
from coordinator.ui.charts import compare_json, down, series_json, summary
from coordinator.ui.query import BadRequest, Query, jsonable, need, one, one_int, ranged
from coordinator.ui.source import RunSource, UnknownRun

__all__ = ["SYSTEM_PREFIX", "Api", "BadRequest", "RunRowLike", "UnknownRun", "report_summary"]

_log = logging.getLogger(__name__)

SYSTEM_PREFIX = "system/"
"""Series under this prefix (the system-metrics sampler's) are grouped apart on the run page."""

DEFAULT_BUCKETS = 800
MAX_COMPARE = 8
"""The most runs one compare view takes."""
SUMMARY_PAGE = 40
"""Keys summarised on the run page (per group); ``/summaries`` pages through the rest."""
MAX_SUMMARY_PAGE = 500
TEXT_PAGE = 50
"""Texts per page of the text view (newest first)."""
MAX_TEXT_PAGE = 1000
LAST_TEXT_CHARS = 500
"""The run page shows at most this many characters of each text series' last text."""
_NEWEST = 2**63 - 1

_HEALTH_KINDS = frozenset(
    {"straggler", "rank_lost", "rank_restarted", "rank_failed", "rank_interrupted", "rank_returned", "rank_resumed"}
)
"""Events drawn as marks on the rank-health timeline (the rest are listed only)."""


class RunRowLike(Protocol):
    """A row of the runs listing (``coordinator.cli.runs.RunRow``)."""

    def as_dict(self) -> dict[str, object]:
        """id, project, name, state, world_size, created, ended, points, size_bytes, tags, path."""


class Api:
    """Answers the UI's JSON endpoints from the stores under one root.

    Args:
        root: the store root (``<root>/runs/<id>/run.db``).
        scan: lists the runs under a root as rows (``coordinator.cli.runs.scan_runs``).
    """

    def __init__(self, root: Path, scan: Callable[[Path], Sequence[RunRowLike]]) -> None:
        self.root = root
        self._scan = scan

    # ------------------------------------------------------------------ runs table

    def runs(self, q: Query) -> dict[str, Any]:
        """The runs table: every run passing the filters (``project``, ``tag`` (all of them), ``state``, ``name``)."""
        rows = [r.as_dict() for r in self._scan(self.root)]
        now = time.time()
        for r in rows:
            created, ended = r.get("created"), r.get("ended")
            if isinstance(created, (int, float)):
                end = ended if isinstance(ended, (int, float)) else now
                r["duration_s"] = max(0.0, end - created)
            r.pop("path", None)  # the page needs no filesystem paths
        project, state, name = one(q, "project"), one(q, "state"), (one(q, "name") or "").lower()
        tags = set(q.get("tag", ()))
        shown = [
            r
            for r in rows
            if (not project or r.get("project") == project)
            and (not state or r.get("state") == state)
            and (not name or name in str(r.get("name", "")).lower() or name in str(r.get("id", "")).lower())
            and tags.issubset(_tags(r))
        ]
        return {
            "runs": jsonable(shown),
            "total": len(rows),
            "projects": sorted({str(r.get("project")) for r in rows}),
            "tags": sorted({t for r in rows for t in _tags(r)}),
            "states": sorted({str(r.get("state")) for r in rows}),
        }

    # ------------------------------------------------------------------ run page

    def run(self, run_id: str) -> dict[str, Any]:
        """The run page: run row, fields, series (metrics and system), rank health, events, report.

        Incarnations carry their short label (``r1#2``, :mod:`coordinator.core.events`) beside the
        raw number, events their readable ``text`` beside the raw ``detail``, and the report its
        ``summary``: the headline and one line per anomaly, worst first.
        """
        with RunSource(self.root, run_id) as src:
            rd = src.reader
            info = rd.run_info()
            state = "stale" if info.state == "running" and not writer_active(info.path) else info.state
            policies = rd.key_policies()
            metrics = [k for k in policies if not k.startswith(SYSTEM_PREFIX)]
            system = [k for k in policies if k.startswith(SYSTEM_PREFIX)]
            groups: dict[str, int] = {}
            for k in system:
                g = k[len(SYSTEM_PREFIX) :].split("/", 1)[0]
                groups[g] = groups.get(g, 0) + 1
            senders, events = rd.senders(), rd.events()
            labels = incarnation_labels(senders)
            senders = [{**s, "label": label_of(s["incarnation"], s["rank"], labels)} for s in senders]
            rows = event_rows(events, labels, failure_hint=None)  # the page has no failures section
            end = info.ended or time.time()
            page: dict[str, Any] = jsonable(
                {
                    "run": {
                        "id": info.id,
                        "project": info.project,
                        "name": info.name,
                        "state": state,
                        "world_size": info.world_size,
                        "created": info.created,
                        "ended": info.ended,
                        "duration_s": max(0.0, end - info.created),
                    },
                    "fields": {p: v for p, (_, v) in rd.fields().items()},
                    "conflicts": rd.conflicts(),
                    "metrics": [summary(src, k, policies[k]) for k in metrics[:SUMMARY_PAGE]],
                    "metrics_total": len(metrics),
                    "metrics_next": SUMMARY_PAGE if len(metrics) > SUMMARY_PAGE else None,
                    "system": [summary(src, k, policies[k]) for k in system[:SUMMARY_PAGE]],
                    "system_total": len(system),
                    "system_groups": groups,
                    "senders": senders,
                    "events": rows,
                    "health": _timeline(info.created, end, senders, rows),
                    "report": info.report,
                    "summary": report_summary(info.report, state),
                    "texts": _texts(rd),
                    "position": src.position(),
                }
            )
            return page

    def summaries(self, run_id: str, q: Query) -> dict[str, Any]:
        """A page of key summaries (what the run page holds for its first keys), in key order.

        Parameters: ``group`` (``metrics``, the default, or ``system``: keys under ``system/``),
        ``prefix`` (keys starting with it), ``match`` (keys containing it, any case), ``offset``,
        ``limit`` (default :data:`SUMMARY_PAGE`, at most :data:`MAX_SUMMARY_PAGE`).
        """
        group = one(q, "group", "metrics")
        if group not in ("metrics", "system"):
            raise BadRequest(f"parameter 'group' must be metrics or system, got {group!r}")
        prefix, match = one(q, "prefix", "") or "", (one(q, "match", "") or "").lower()
        offset = ranged(q, "offset", 0, 0, 2**31)
        limit = ranged(q, "limit", SUMMARY_PAGE, 1, MAX_SUMMARY_PAGE)
        with RunSource(self.root, run_id) as src:
            policies = src.reader.key_policies()
            keys = [
                k
                for k in policies
                if k.startswith(SYSTEM_PREFIX) == (group == "system") and k.startswith(prefix) and match in k.lower()
            ]
            page = keys[offset : offset + limit]
            out: dict[str, Any] = jsonable(
                {
                    "summaries": [summary(src, k, policies[k]) for k in page],
                    "total": len(keys),
                    "next": offset + limit if offset + limit < len(keys) else None,
                }
            )
            return out

    def texts(self, run_id: str, q: Query) -> dict[str, Any]:
        """A page of one rank's text series, newest first.

        Parameters: ``key`` (required), ``rank`` (default: the lowest rank that logged it),
        ``before`` (texts with a smaller step; default: from the newest), ``limit`` (default
        :data:`TEXT_PAGE`, at most :data:`MAX_TEXT_PAGE`).
        """
        key = need(q, "key")
        limit = ranged(q, "limit", TEXT_PAGE, 1, MAX_TEXT_PAGE)
        before = one_int(q, "before", _NEWEST)
        assert before is not None
        with RunSource(self.root, run_id) as src:
            ranks = src.text_ranks(key)
            if not ranks:
                raise BadRequest(f"run {run_id!r} has no text series {key!r}")
            rank = one_int(q, "rank", ranks[0])
            if rank not in ranks:
                raise BadRequest(f"rank {rank} logged no text of {key!r} (ranks: {ranks})")
            page = src.texts_before(key, rank, before, limit)
        return {
            "key": key,
            "rank": rank,
            "ranks": ranks,
            "total": page.total,
            "texts": [
                {"step": s, "ts": t, "text": x} for s, t, x in zip(page.steps, page.times, page.texts, strict=True)
            ],
            "next": page.next,
        }

    def changes(self, run_id: str, q: Query) -> dict[str, Any]:
        """What changed since journal position ``since``: the keys with new chunks, the state, the event count."""
        since = one_int(q, "since", 0)
        assert since is not None
        with RunSource(self.root, run_id) as src:
            info = src.reader.run_info()
            state = "stale" if info.state == "running" and not writer_active(info.path) else info.state
            return {
                "position": src.position(),
                "keys": src.changed_keys(since),
                "state": state,
                "events": src.event_count(),
            }

    # ------------------------------------------------------------------ series

    def series(self, run_id: str, q: Query) -> dict[str, Any]:
        """One key downsampled: main series, the ranks' band (min-max across ranks) and, with ``ranks=1``, each rank.

        Parameters: ``key`` (required), ``lo``/``hi`` (step range; default the key's), ``buckets``
        (default 800, at most :data:`~coordinator.journal.downsample.MAX_BUCKETS`), ``ranks`` (``1``: per-rank lines).
        """
        key = need(q, "key")
        buckets = one_int(q, "buckets", DEFAULT_BUCKETS)
        assert buckets is not None
        with RunSource(self.root, run_id) as src:
            if key not in src.key_ids() or src.reader.is_text(key):
                raise BadRequest(f"run {run_id!r} has no series {key!r}")
            lo, hi = self._range(q, src.step_range(key))
            try:
                grid(lo, hi, buckets)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            main = down(src, key, MAIN_RANK, lo, hi, buckets)
            per_rank = {r: down(src, key, r, lo, hi, buckets) for r in src.ranks(key)}
        return series_json(key, main, per_rank, with_ranks=one(q, "ranks") == "1")

    def _range(self, q: Query, have: tuple[int, int] | None) -> tuple[int, int]:
        lo, hi = one_int(q, "lo"), one_int(q, "hi")
        d_lo, d_hi = have if have is not None else (0, 0)
        return (d_lo if lo is None else lo), (d_hi if hi is None else hi)

    # ------------------------------------------------------------------ compare

    def compare(self, q: Query) -> dict[str, Any]:
        """Two or more runs (``runs=a,b``): fields side by side, their keys, and ``key``'s series of each on a grid."""
        ids = [i for raw in q.get("runs", ()) for i in raw.split(",") if i]
        if not 2 <= len(ids) <= MAX_COMPARE:
            raise BadRequest(f"compare takes 2..{MAX_COMPARE} runs (runs=a,b), got {len(ids)}")
        key = one(q, "key")
        buckets = one_int(q, "buckets", DEFAULT_BUCKETS)
        assert buckets is not None
        if not 0 < buckets <= MAX_BUCKETS:
            raise BadRequest(f"buckets must be in 1..{MAX_BUCKETS}, got {buckets}")
        sources = []
        try:
            for i in ids:
                sources.append(RunSource(self.root, i))
            fields = [{p: v for p, (_, v) in s.reader.fields().items()} for s in sources]
            paths = sorted(set().union(*fields))
            out: dict[str, Any] = {
                "runs": [_brief(s) for s in sources],
                "fields": {p: [f.get(p) for f in fields] for p in paths},
                "keys": sorted(set().union(*(s.reader.key_policies() for s in sources))),  # numeric series
            }
            if key:
                ranges = [r for s in sources if (r := s.step_range(key)) is not None]
                if ranges:
                    lo, hi = self._range(q, (min(r[0] for r in ranges), max(r[1] for r in ranges)))
                    if hi < lo:
                        raise BadRequest(f"empty step range [{lo}, {hi}]")
                    series = [down(s, key, MAIN_RANK, lo, hi, buckets) for s in sources]
                    out["series"] = compare_json(key, series)
            answer: dict[str, Any] = jsonable(out)
            return answer
        finally:
            for s in sources:
                s.close()


def _tags(row: Mapping[str, object]) -> list[str]:
    tags = row.get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _brief(src: RunSource) -> dict[str, Any]:
    info = src.reader.run_info()
    return {"id": info.id, "project": info.project, "name": info.name, "state": info.state}


def report_summary(report: Mapping[str, Any] | None, state: str) -> list[dict[str, str]]:
    """The report's summary lines (:func:`~coordinator.core.summary.summary_lines`) as ``{level, text}``.

    ``level``: ``head`` (the headline), ``ok`` (a clean run's one line), ``trouble`` (data lost or
    refused, a failure), ``note`` (something the run recovered from), ``open`` (no report yet).
    """
    lines = summary_lines(report, state)
    if report is None:
        return [{"level": "open", "text": lines[0]}]
    if len(lines) == 1:
        return [{"level": "ok", "text": lines[0]}]
    out = [{"level": "head", "text": lines[0]}]
    for line in lines[1:]:
        level = "trouble" if line.startswith("! ") else "note"
        out.append({"level": level, "text": line[2:] if line[:2] in ("! ", "~ ") else line})
    return out


def _timeline(t0: float, t1: float, senders: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rank: its incarnations as segments (first seen .. last seen, end state) and its health events as marks."""
    ranks: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for s in senders:
        r = ranks.setdefault(s["rank"], {"segments": [], "marks": []})
        r["segments"].append(
            {
                "incarnation": s["incarnation"],
                "label": s["label"],
                "start": s["first_seen"],
                "end": s["last_seen"],
                "state": s["state"],
            }
        )
    for e in events:
        if e["rank"] is not None and e["kind"] in _HEALTH_KINDS:
            r = ranks.setdefault(e["rank"], {"segments": [], "marks": []})
            r["marks"].append({"ts": e["ts"], "kind": e["kind"], "detail": e["detail"], "text": e["text"]})
    return {"t0": t0, "t1": t1, "ranks": {str(k): v for k, v in sorted(ranks.items())}}


def _texts(rd: Any) -> Any:
    """Per (key, rank) of each text series: n, last step and last text (cut to :data:`LAST_TEXT_CHARS`).

    An unreadable texts table gives ``{"error": ...}``: the page still shows everything else.
    """
    try:
        rows = rd.text_summary()
    except SinkError as e:  # logged and shown, never hidden
        _log.warning("cannot read the text series: %s", e)
        return {"error": str(e)}
    for r in rows:
        text = r.get("last_text")
        if isinstance(text, str) and len(text) > LAST_TEXT_CHARS:
            r["last_text"], r["cut"] = text[:LAST_TEXT_CHARS], len(text)
    return rows
