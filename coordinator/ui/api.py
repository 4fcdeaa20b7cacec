"""The data of every page of the UI, as JSON-ready dicts: runs table, run page, series, live changes, compare.

Each method opens the run(s) it reads for this call only (:class:`~coordinator.ui.source.RunSource`)
and closes them before returning. Query parameters arrive as the strings of the URL; a bad one
raises :class:`BadRequest` (the server answers 400), an unknown run :class:`UnknownRun` (404).
The runs listing (state with stale detection, size, tags) is the CLI's ``scan_runs``, handed in
by whoever builds the :class:`Api` (the UI stage sits below the CLI and never imports it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from coordinator.errors import SinkError
from coordinator.journal.paths import writer_active
from coordinator.journal.records import MAIN_RANK
from coordinator.ui.downsample import MAX_BUCKETS, Buckets, downsample, grid
from coordinator.ui.source import RunSource, UnknownRun

__all__ = ["SYSTEM_PREFIX", "Api", "BadRequest", "RunRowLike", "UnknownRun"]

_log = logging.getLogger(__name__)

SYSTEM_PREFIX = "system/"
"""Series under this prefix (the system-metrics sampler's) are grouped apart on the run page."""

DEFAULT_BUCKETS = 800
MAX_COMPARE = 8
"""The most runs one compare view takes."""

_HEALTH_KINDS = frozenset(
    {"straggler", "rank_lost", "rank_restarted", "rank_failed", "rank_interrupted", "rank_returned", "rank_resumed"}
)
"""Events drawn as marks on the rank-health timeline (the rest are listed only)."""

Query = Mapping[str, Sequence[str]]
"""Parsed URL query: name -> its values (``urllib.parse.parse_qs``)."""


class BadRequest(ValueError):
    """A request parameter is missing or malformed (the server answers 400)."""


class RunRowLike(Protocol):
    """A row of the runs listing (``coordinator.cli.runs.RunRow``)."""

    def as_dict(self) -> dict[str, object]:
        """id, project, name, state, world_size, created, ended, points, size_bytes, tags, path."""


def _one(q: Query, name: str, default: str | None = None) -> str | None:
    vals = q.get(name)
    return vals[-1] if vals else default


def _int(q: Query, name: str, default: int | None = None) -> int | None:
    raw = _one(q, name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, got {raw!r}") from None


def _need(q: Query, name: str) -> str:
    raw = _one(q, name)
    if not raw:
        raise BadRequest(f"parameter {name!r} is required")
    return raw


def jsonable(v: Any) -> Any:
    """``v`` with NaN/inf as ``None``, tuples as lists and anything else JSON cannot hold as its ``str``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return str(v)


def _floats(a: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in a[keep].tolist()]


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
        project, state, name = _one(q, "project"), _one(q, "state"), (_one(q, "name") or "").lower()
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
        """The run page: run row, fields, series (metrics and system), rank health, events, report."""
        with RunSource(self.root, run_id) as src:
            rd = src.reader
            info = rd.run_info()
            state = "stale" if info.state == "running" and not writer_active(info.path) else info.state
            metrics: list[dict[str, Any]] = []
            system: list[dict[str, Any]] = []
            for s in rd.series_summary():
                s["ranks"] = sorted(s.pop("per_rank"))
                (system if s["key"].startswith(SYSTEM_PREFIX) else metrics).append(s)
            senders, events = rd.senders(), rd.events()
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
                    "metrics": metrics,
                    "system": system,
                    "senders": senders,
                    "events": [{"ts": t, "kind": k, "rank": r, "detail": d} for t, k, r, d in events],
                    "health": _timeline(info.created, end, senders, events),
                    "report": info.report,
                    "texts": _texts(rd),
                    "position": src.position(),
                }
            )
            return page

    def changes(self, run_id: str, q: Query) -> dict[str, Any]:
        """What changed since journal position ``since``: the keys with new chunks, the state, the event count."""
        since = _int(q, "since", 0)
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
        (default 800, at most :data:`~coordinator.ui.downsample.MAX_BUCKETS`), ``ranks`` (``1``: per-rank lines).
        """
        key = _need(q, "key")
        buckets = _int(q, "buckets", DEFAULT_BUCKETS)
        assert buckets is not None
        with RunSource(self.root, run_id) as src:
            if key not in src.key_ids():
                raise BadRequest(f"run {run_id!r} has no series {key!r}")
            lo, hi = self._range(q, src.step_range(key))
            try:
                grid(lo, hi, buckets)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            main = self._down(src, key, MAIN_RANK, lo, hi, buckets)
            per_rank = {r: self._down(src, key, r, lo, hi, buckets) for r in src.ranks(key)}
        return _series_json(key, main, per_rank, with_ranks=_one(q, "ranks") == "1")

    def _range(self, q: Query, have: tuple[int, int] | None) -> tuple[int, int]:
        lo, hi = _int(q, "lo"), _int(q, "hi")
        d_lo, d_hi = have if have is not None else (0, 0)
        return (d_lo if lo is None else lo), (d_hi if hi is None else hi)

    @staticmethod
    def _down(src: RunSource, key: str, rank: int, lo: int, hi: int, buckets: int) -> Buckets:
        s = src.series(key, rank)
        if s is None:
            width, count = grid(lo, hi, buckets)
            return Buckets.empty(lo, width, count)
        return downsample(s, lo, hi, buckets)

    # ------------------------------------------------------------------ compare

    def compare(self, q: Query) -> dict[str, Any]:
        """Two or more runs (``runs=a,b``): fields side by side, their keys, and ``key``'s series of each on a grid."""
        ids = [i for raw in q.get("runs", ()) for i in raw.split(",") if i]
        if not 2 <= len(ids) <= MAX_COMPARE:
            raise BadRequest(f"compare takes 2..{MAX_COMPARE} runs (runs=a,b), got {len(ids)}")
        key = _one(q, "key")
        buckets = _int(q, "buckets", DEFAULT_BUCKETS)
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
                "keys": sorted(set().union(*(s.key_ids() for s in sources))),
            }
            if key:
                ranges = [r for s in sources if (r := s.step_range(key)) is not None]
                if ranges:
                    lo, hi = self._range(q, (min(r[0] for r in ranges), max(r[1] for r in ranges)))
                    if hi < lo:
                        raise BadRequest(f"empty step range [{lo}, {hi}]")
                    series = [self._down(s, key, MAIN_RANK, lo, hi, buckets) for s in sources]
                    out["series"] = _compare_json(key, series)
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


def _series_json(key: str, main: Buckets, ranks: dict[int, Buckets], *, with_ranks: bool) -> dict[str, Any]:
    """Buckets as columns on one x grid (buckets where any series has a point), NaN as null."""
    keep = main.n > 0
    for b in ranks.values():
        keep |= b.n > 0
    xs = (main.lo + main.width * np.flatnonzero(keep)).tolist()
    t = main.t.copy()
    for b in ranks.values():  # a bucket only ranks reached takes its time from them
        t = np.where(np.isnan(t), b.t, t)
    out: dict[str, Any] = {
        "key": key,
        "lo": main.lo,
        "width": main.width,
        "x": xs,
        "t": _floats(t, keep),
        "points": main.points,
        "main": _cols(main, keep),
        "ranks": sorted(ranks),
    }
    if ranks:
        with np.errstate(invalid="ignore"):
            lo = np.fmin.reduce([b.min for b in ranks.values()])
            hi = np.fmax.reduce([b.max for b in ranks.values()])
        out["band"] = {"min": _floats(lo, keep), "max": _floats(hi, keep)}
    if with_ranks:
        out["per_rank"] = {str(r): _cols(b, keep) for r, b in ranks.items()}
    return out


def _compare_json(key: str, series: list[Buckets]) -> dict[str, Any]:
    keep = np.zeros(len(series[0].n), bool)
    for b in series:
        keep |= b.n > 0
    return {
        "key": key,
        "lo": series[0].lo,
        "width": series[0].width,
        "x": (series[0].lo + series[0].width * np.flatnonzero(keep)).tolist(),
        "runs": [_cols(b, keep) for b in series],
    }


def _cols(b: Buckets, keep: npt.NDArray[np.bool_]) -> dict[str, Any]:
    return {
        "n": b.n[keep].tolist(),
        "min": _floats(b.min, keep),
        "max": _floats(b.max, keep),
        "first": _floats(b.first, keep),
        "last": _floats(b.last, keep),
    }


def _timeline(
    t0: float, t1: float, senders: list[dict[str, Any]], events: list[tuple[float, str, int | None, str]]
) -> dict[str, Any]:
    """Per rank: its incarnations as segments (first seen .. last seen, end state) and its health events as marks."""
    ranks: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for s in senders:
        r = ranks.setdefault(s["rank"], {"segments": [], "marks": []})
        r["segments"].append(
            {"incarnation": s["incarnation"], "start": s["first_seen"], "end": s["last_seen"], "state": s["state"]}
        )
    for ts, kind, rank, detail in events:
        if rank is not None and kind in _HEALTH_KINDS:
            r = ranks.setdefault(rank, {"segments": [], "marks": []})
            r["marks"].append({"ts": ts, "kind": kind, "detail": detail})
    return {"t0": t0, "t1": t1, "ranks": {str(k): v for k, v in sorted(ranks.items())}}


def _texts(rd: Any) -> Any:
    """The text series' summary when the journal has them (``JournalReader.text_summary``), else ``None``."""
    summary = getattr(rd, "text_summary", None)
    if summary is None:
        return None
    try:
        return summary()
    except SinkError as e:  # the page still shows everything else; the failure is logged and shown
        _log.warning("cannot read the text series: %s", e)
        return {"error": str(e)}
