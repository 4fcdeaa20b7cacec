"""A chunk's steps blob: consecutive steps stored as a run of two numbers, any other steps as they are."""

from __future__ import annotations

import random
import sqlite3
from array import array
from pathlib import Path

import numpy as np
import pytest

from coordinator.core.columns import to_le
from coordinator.errors import SinkError
from coordinator.journal.records import MAIN_RANK, ChunkRow, StagedBlock, TxnData
from coordinator.journal.schema import SCHEMA_VERSION, schema_of
from coordinator.journal.stepblobs import RUN_BYTES, decode_steps, encode_steps
from coordinator.journal.store import LocalStore
from coordinator.journal.summary import summarize


def _blob(steps: list[int]) -> bytes:
    a = array("q", steps)
    return encode_steps(a, summarize(a, array("d", [1.0] * len(a))))


def _consecutive(steps: list[int]) -> bool:
    return bool(steps) and steps == list(range(steps[0], steps[0] + len(steps)))


def test_consecutive_steps_of_three_or_more_are_a_run_and_every_form_reads_back() -> None:
    rng = random.Random(3)
    cases = [[], [0], [5, 6], [5, 7], [0, 1, 2], [3, 4, 5, 6, 7], [0, 2, 3], [2, 1, 0], [7, 7, 8]]
    cases += [[0, 2, 1, 3], [2**40, 2**40 + 1, 2**40 + 2]]  # out of order with last - first == n - 1
    for _ in range(300):
        start, n = rng.randrange(10**9), rng.randrange(0, 60)
        steps = list(range(start, start + n))
        if n and rng.random() < 0.5:
            steps[rng.randrange(n)] += rng.choice([-3, -1, 1, 5])  # a gap, a repeat or a step back
        cases.append(steps)
    for steps in cases:
        blob = _blob(steps)
        run = len(steps) > 2 and _consecutive(steps)
        assert len(blob) == (RUN_BYTES if run else 8 * len(steps)), steps
        assert decode_steps(blob, len(steps)).tolist() == steps


@pytest.mark.parametrize(
    ("blob", "n"),
    [
        (b"\0" * 24, 2),
        (to_le(array("q", [0, 5])), 3),
        (b"\0" * 16, 1),
        (b"\0" * 7, 1),
        (to_le(array("q", [4, 3])), 2 + 1),
    ],
)
def test_a_blob_of_neither_form_is_refused(blob: bytes, n: int) -> None:
    with pytest.raises(SinkError, match="steps blob"):
        decode_steps(blob, n)


def _write(s: LocalStore) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """Chunks of every form, with what each series must read back."""
    run = array("q", range(100, 1100))
    gaps = array("q", range(0, 2000, 2))
    block = StagedBlock(("a", "b"), 2, 1, 1, 5.0, array("q", range(10, 510)), np.arange(1000.0).reshape(2, 500))
    s.commit(
        TxnData(
            key_policies={"a": "mean", "b": "mean"},
            rank_rows=[block],
            chunks=[
                ChunkRow("a", 0, 1, 1, 5.0, run, array("d", [float(x) for x in run])),
                ChunkRow("a", 1, 1, 1, 5.0, gaps, array("d", [-float(x) for x in gaps])),
                ChunkRow("a", MAIN_RANK, 0, 0, 5.0, run[:500], array("d", [0.5] * 500), array("i", [2] * 500)),
            ],
        )
    )
    return {
        ("a", 0): [(x, float(x)) for x in run],
        ("a", 1): [(x, -float(x)) for x in gaps],
        ("a", MAIN_RANK): [(x, 0.5) for x in run[:500]],
        ("a", 2): [(10 + i, float(i)) for i in range(500)],
        ("b", 2): [(10 + i, 500.0 + i) for i in range(500)],
    }


def _check_reads(s: LocalStore, want: dict[tuple[str, int], list[tuple[int, float]]]) -> None:
    for (key, rank), points in want.items():
        assert s.values(key, rank) == points
        mid = points[len(points) // 2][0]
        page = s.values_page(key, rank, after=mid, limit=7)  # from inside a run
        assert list(zip(page.steps, page.values, strict=True)) == [p for p in points if p[0] > mid][:7]
        assert s.last_point(key, rank) == points[-1]
    by_chunk = {(c.key, c.rank): list(zip(c.steps, c.values, strict=True)) for c in s.chunks_after(0, 10**9)}
    assert by_chunk == want
    main, rows = s.restore_view("a")  # the steps of rank chunks reaching past the main series' last
    assert main == (599, 0.5)
    read = {r[0]: list(zip(r[6], r[7], strict=True)) for r in rows if r[6] is not None}
    assert read == {r: want[("a", r)] for r in (0, 1)}


def test_a_store_keeps_consecutive_steps_as_runs_and_every_reader_reads_them(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "run.db")
    s.create_run("r1", "proj", "run", 3, 1000.0)
    want = _write(s)
    sizes = {
        (k, r): (n, size)
        for k, r, n, size in s._db.execute(
            "SELECT k.key, c.rank, c.n, length(c.steps) FROM chunks c JOIN keys k ON k.id = c.key_id"
        )
    }
    assert sizes == {
        ("a", 0): (1000, RUN_BYTES),
        ("a", 1): (1000, 8000),  # steps two apart: stored as they are
        ("a", MAIN_RANK): (500, RUN_BYTES),
        ("a", 2): (500, RUN_BYTES),  # a block's keys share the run
        ("b", 2): (500, RUN_BYTES),
    }
    _check_reads(s, want)
    s.close()
    ro = LocalStore(tmp_path / "run.db", readonly=True)
    _check_reads(ro, want)
    ro.close()


def test_a_v4_store_with_its_steps_as_they_are_is_read_and_migrated(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "run.db")
    s.create_run("r1", "proj", "run", 3, 1000.0)
    want = _write(s)
    s.close()
    db = sqlite3.connect(tmp_path / "run.db")  # what version 4 wrote: every blob 8 bytes a step
    for cid, n, blob in db.execute("SELECT id, n, steps FROM chunks").fetchall():
        db.execute("UPDATE chunks SET steps=? WHERE id=?", (to_le(decode_steps(blob, n)), cid))
    db.execute("UPDATE meta SET v='4' WHERE k='schema'")
    db.commit()
    db.close()
    ro = LocalStore(tmp_path / "run.db", readonly=True)
    assert schema_of(ro._db) == 4
    _check_reads(ro, want)
    ro.close()
    s = LocalStore(tmp_path / "run.db")
    assert schema_of(s._db) == SCHEMA_VERSION == 5
    _check_reads(s, want)
    s.close()
