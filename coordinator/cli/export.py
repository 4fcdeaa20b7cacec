"""``coordinator export``: a run's series as CSV, JSON Lines or Parquet, streamed in bounded memory.

One row per point: ``run``, ``key``, ``rank`` (empty/null for the main series), ``step``,
``value``, ``time``. ``time`` is when the point was stored: the timestamp (unix seconds) of the
journal chunk that holds its current value, that is the rank's batch time, or for the main series
the time it was reduced; it is not the moment ``log()`` was called. Series are read one chunk
group at a time (:meth:`coordinator.cli.series.ReadOnlyRun.timed_pages`), the same points
``fetch_values`` returns, and written as they are read; the file appears under its name only
once complete. Parquet needs pyarrow (the ``export`` extra). A progress bar is drawn on stderr
when it is a terminal.

Text series (:mod:`coordinator.cli.textseries`) are exported too, one row per text: in CSV and
JSON Lines the text is the ``value`` (a key is numeric or text for the whole run, so the key says
which); in Parquet, whose columns have one type, a file that holds texts has a seventh column
``text`` (string; null for numbers) and a text's ``value`` is null. Texts are per rank, never
reduced: ``--ranks main`` (the default) exports every rank's texts of a text key.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import math
import os
import sys
from array import array
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from coordinator.cli.common import err, resolve_run
from coordinator.cli.progress import progress_bar
from coordinator.cli.series import ReadOnlyRun, parse_ranks, retry_busy
from coordinator.cli.textseries import TextSeries
from coordinator.errors import CoordinatorError, missing_extra
from coordinator.journal.records import MAIN_RANK
from coordinator.journal.store import resolve_root

__all__ = ["COLUMNS", "FORMATS", "TEXT_COLUMN", "add_export_parser", "cmd_export", "text_ranks"]

COLUMNS = ("run", "key", "rank", "step", "value", "time")
"""The columns of every format, in order."""

TEXT_COLUMN = "text"
"""Parquet only: the column holding a text series' texts, after ``time`` (present when the file holds texts)."""

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
"""File suffix -> format, for ``--format`` left out."""

_ROW_GROUP = 262_144
"""Rows per Parquet row group (buffered, then written: bounded memory)."""


def add_export_parser(sub: Any) -> None:
    """Register ``export`` on the command's subparsers."""
    p = sub.add_parser(
        "export",
        help="write a run's series to CSV, JSON Lines or Parquet (columns run,key,rank,step,value,time)",
        description="Write a run's series, one row per point: run, key, rank (empty for the main series), "
        "step, value, time. time: when the point was stored, in unix seconds: the timestamp of the "
        "journal chunk holding it (the rank's batch time; for the main series, when it was reduced), "
        "not the moment log() was called. Non-finite values: nan/inf in CSV, the strings "
        '"NaN", "Infinity", "-Infinity" in JSON Lines. Text series: one row per text, the text as '
        "the value (Parquet: a text column, value null); texts are per rank, and --ranks main "
        "exports every rank's texts.",
    )
    p.add_argument("run", help="run id (or a unique prefix), or 'latest'")
    p.add_argument("--key", action="append", metavar="GLOB", help="keys to export (glob, repeatable; default: all)")
    p.add_argument(
        "--ranks",
        default="main",
        help="main: the reduced series (default); all: main and every rank's own series; a list like 0,1 or main,0,1",
    )
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: from the file's suffix")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write ('-': stdout, csv/jsonl)")
    p.set_defaults(fn=cmd_export)


def _format_of(a: argparse.Namespace) -> str:
    if a.format:
        return str(a.format)
    fmt = FORMATS.get(Path(a.output).suffix.lower())
    if fmt is None:
        raise CoordinatorError(f"cannot tell the format of {a.output!r}: give --format csv, jsonl or parquet")
    return fmt


def cmd_export(a: argparse.Namespace) -> int:
    """``coordinator export RUN [--key GLOB] [--ranks main|all|0,1] --format csv|jsonl|parquet -o FILE``."""
    fmt = _format_of(a)
    ranks = parse_ranks(a.ranks)
    if a.output == "-" and fmt == "parquet":
        raise CoordinatorError("parquet cannot be written to stdout: give -o FILE")
    pa = _pyarrow() if fmt == "parquet" else None
    info = resolve_run(resolve_root(a.dir), a.run)
    with ReadOnlyRun(info.path / "run.db") as run:
        texts = TextSeries(run)
        keys, text_keys = run.metric_keys(a.key), texts.keys(a.key)
        if not keys and not text_keys:
            raise CoordinatorError(f"run {info.id} has no series matching {' '.join(a.key or ['*'])}")
        series = [(k, r) for k in keys for r in ([MAIN_RANK, *run.ranks_of(k)] if ranks is None else ranks)]
        text_series = [(k, r) for k in text_keys for r in text_ranks(texts.ranks_of(k), ranks)]
        total = sum(_count(run, k, r) for k, r in series) + sum(texts.count(k, r) for k, r in text_series)
        written = 0
        with _output(a.output, binary=fmt == "parquet") as f:
            sink: _Sink = (
                _Csv(f, info.id)
                if fmt == "csv"
                else _Jsonl(f, info.id)
                if fmt == "jsonl"
                else _Parquet(f, info.id, pa, with_text=bool(text_series))
            )
            with progress_bar(f"export {info.id}", total) as bar:
                for key, rank in series:
                    for steps, values, times in run.timed_pages(key, rank):
                        sink.write(key, rank, steps, values, times)
                        written += len(steps)
                        bar.advance(len(steps))
                for key, rank in text_series:
                    for t_steps, t_texts, t_times in texts.timed_pages(key, rank):
                        sink.write_texts(key, rank, t_steps, t_texts, t_times)
                        written += len(t_steps)
                        bar.advance(len(t_steps))
            sink.close()
    where = "stdout" if a.output == "-" else a.output
    n_series, n_keys = len(series) + len(text_series), len(keys) + len(text_keys)
    err(
        f"exported {written:,} points and texts of {n_series} series ({n_keys} key(s), {len(text_keys)} of text) "
        f"of run {info.id} to {where} ({fmt})"
    )
    return 0


def text_ranks(logged: list[int], selected: list[int] | None) -> list[int]:
    """The ranks of a text series to export: texts are never reduced, so ``main`` means every rank that logged it.

    Args:
        logged: the ranks that logged the text series.
        selected: ``--ranks`` parsed (``None``: all).
    """
    if selected is None or MAIN_RANK in selected:
        return logged
    return [r for r in logged if r in selected]


def _pyarrow() -> Any:
    try:
        return importlib.import_module("pyarrow")  # untyped: imported as a module object
    except ImportError as e:
        raise missing_extra("coordinator export --format parquet", "export", e) from e


@contextlib.contextmanager
def _output(name: str, *, binary: bool) -> Any:
    """The open output: stdout, or ``<name>.partial`` renamed to ``name`` once the block succeeded."""
    if name == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(name)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(
            tmp, "wb" if binary else "w", newline=None if binary else "", encoding=None if binary else "utf-8"
        ) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _count(run: ReadOnlyRun, key: str, rank: int) -> int:
    """Points of a series, from the chunk summaries (no point is read)."""
    return retry_busy(lambda: run.reader.series_stats(key, rank)).points


class _Sink(Protocol):
    """Writes pages of one run's points in one format."""

    def write(self, key: str, rank: int, steps: array[int], values: array[float], times: array[float]) -> None:
        """Write one page of series (``key``, ``rank``)."""

    def write_texts(self, key: str, rank: int, steps: list[int], texts: list[str], times: list[float]) -> None:
        """Write one page of text series (``key``, ``rank``)."""

    def close(self) -> None:
        """Finish the file (footer, buffered rows)."""


class _Csv:
    def __init__(self, f: IO[str], run_id: str) -> None:
        self._w = csv.writer(f, lineterminator="\n")
        self._w.writerow(COLUMNS)
        self._run = run_id

    def write(self, key: str, rank: int, steps: array[int], values: array[float], times: array[float]) -> None:
        r = "" if rank == MAIN_RANK else rank
        run = self._run
        self._w.writerows((run, key, r, s, repr(v), repr(t)) for s, v, t in zip(steps, values, times, strict=True))

    def write_texts(self, key: str, rank: int, steps: list[int], texts: list[str], times: list[float]) -> None:
        r = "" if rank == MAIN_RANK else rank
        run = self._run
        self._w.writerows((run, key, r, s, x, repr(t)) for s, x, t in zip(steps, texts, times, strict=True))

    def close(self) -> None:
        """Nothing is buffered."""


def _json_value(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


class _Jsonl:
    def __init__(self, f: IO[str], run_id: str) -> None:
        self._f = f
        self._run = run_id

    def write(self, key: str, rank: int, steps: array[int], values: array[float], times: array[float]) -> None:
        head = {"run": self._run, "key": key, "rank": None if rank == MAIN_RANK else rank}
        dumps = json.dumps
        self._f.writelines(
            dumps({**head, "step": s, "value": _json_value(v), "time": t}, allow_nan=False) + "\n"
            for s, v, t in zip(steps, values, times, strict=True)
        )

    def write_texts(self, key: str, rank: int, steps: list[int], texts: list[str], times: list[float]) -> None:
        head = {"run": self._run, "key": key, "rank": None if rank == MAIN_RANK else rank}
        dumps = json.dumps
        self._f.writelines(
            dumps({**head, "step": s, "value": x, "time": t}) + "\n"
            for s, x, t in zip(steps, texts, times, strict=True)
        )

    def close(self) -> None:
        """Nothing is buffered."""


class _Parquet:
    """Buffers pages into row groups of about :data:`_ROW_GROUP` rows; numbers and texts in separate groups."""

    def __init__(self, f: IO[bytes], run_id: str, pa: Any, *, with_text: bool = False) -> None:
        self._pa = pa
        pq = importlib.import_module("pyarrow.parquet")
        fields = [
            ("run", pa.string()),
            ("key", pa.string()),
            ("rank", pa.int32()),
            ("step", pa.int64()),
            ("value", pa.float64()),
            ("time", pa.float64()),
        ]
        # a column has one type: texts get their own (only in a file that holds any, so a
        # numeric export keeps the six documented columns)
        self._schema = pa.schema(fields + ([(TEXT_COLUMN, pa.string())] if with_text else []))
        self._with_text = with_text
        self._w = pq.ParquetWriter(f, self._schema)
        self._run = run_id
        self._buf: list[tuple[str, int, array[int], array[float], array[float]]] = []
        self._texts: list[tuple[str, int, list[int], list[str], list[float]]] = []
        self._rows = 0

    def write(self, key: str, rank: int, steps: array[int], values: array[float], times: array[float]) -> None:
        if self._texts:
            self._flush()
        self._buf.append((key, rank, steps, values, times))
        self._rows += len(steps)
        if self._rows >= _ROW_GROUP:
            self._flush()

    def write_texts(self, key: str, rank: int, steps: list[int], texts: list[str], times: list[float]) -> None:
        if not self._with_text:
            raise RuntimeError("this Parquet file was opened without a text column")
        if self._buf:
            self._flush()
        self._texts.append((key, rank, steps, texts, times))
        self._rows += len(steps)
        if self._rows >= _ROW_GROUP:
            self._flush()

    def _heads(self, pages: list[Any]) -> list[Any]:
        """The run, key and rank columns of buffered pages (``(key, rank, steps, ...)``)."""
        pa = self._pa
        keys: list[str] = []
        ranks: list[int | None] = []
        for key, rank, s, *_ in pages:
            keys.extend([key] * len(s))
            ranks.extend([None if rank == MAIN_RANK else rank] * len(s))
        return [
            pa.array([self._run] * self._rows, pa.string()),
            pa.array(keys, pa.string()),
            pa.array(ranks, pa.int32()),
        ]

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = self._pa
        if self._buf:
            columns = [
                *self._heads(self._buf),
                pa.array(np.concatenate([np.frombuffer(b[2], dtype=np.int64) for b in self._buf])),
                pa.array(np.concatenate([np.frombuffer(b[3], dtype=np.float64) for b in self._buf])),
                pa.array(np.concatenate([np.frombuffer(b[4], dtype=np.float64) for b in self._buf])),
            ]
            if self._with_text:
                columns.append(pa.nulls(self._rows, pa.string()))
        else:
            columns = [
                *self._heads(self._texts),
                pa.array([s for b in self._texts for s in b[2]], pa.int64()),
                pa.nulls(self._rows, pa.float64()),
                pa.array([t for b in self._texts for t in b[4]], pa.float64()),
                pa.array([x for b in self._texts for x in b[3]], pa.string()),
            ]
        self._w.write_table(pa.Table.from_arrays(columns, schema=self._schema))
        self._buf, self._texts, self._rows = [], [], 0

    def close(self) -> None:
        self._flush()
        self._w.close()
