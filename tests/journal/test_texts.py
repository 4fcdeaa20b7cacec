"""The journal's text series (schema 3): writes, replacement, bounded pages, summaries, journal order, migration."""

from __future__ import annotations

import shutil
import sqlite3
from array import array
from pathlib import Path

import pytest

from coordinator.journal.schema import SCHEMA_VERSION, schema_of
from coordinator.journal.store import TEXT_POLICY, ChunkRow, LocalStore, TextRow, TxnData
from coordinator.journal.texts import MAX_TEXT_PAGE_BYTES
from tests.untyped import bad

DATA = Path(__file__).parent / "data"


def _write(store: LocalStore, *rows: TextRow) -> None:
    txn = TxnData(key_policies={r.key: TEXT_POLICY for r in rows}, texts=list(rows))
    store.commit(txn)


def test_texts_round_trip_in_step_order_per_rank(tmp_path: Path) -> None:
    st = LocalStore(tmp_path / "run.db")
    _write(st, TextRow("gen", 0, 7, 1.0, [2, 0, 1], ["c", "a", "b"]), TextRow("gen", 1, 9, 1.0, [0], ["r1 ✓"]))
    assert st.texts("gen", 0) == [(0, "a"), (1, "b"), (2, "c")]
    assert st.texts("gen", 1) == [(0, "r1 ✓")]
    assert st.texts("gen", 2) == [] and st.texts("other", 0) == []
    assert st.text_keys() == ["gen"] and st.is_text("gen") and "gen" not in st.key_policies()
    st.close()


def test_a_repeated_step_keeps_its_latest_text(tmp_path: Path) -> None:
    st = LocalStore(tmp_path / "run.db")
    _write(st, TextRow("k", 0, 1, 1.0, [0, 1], ["a", "b"]))
    _write(st, TextRow("k", 0, 1, 2.0, [1], ["b2"]))
    assert st.texts("k", 0) == [(0, "a"), (1, "b2")]
    st.close()


def test_a_later_incarnation_replaces_the_earlier_ones_texts_from_its_first_step(tmp_path: Path) -> None:
    """core/incarnations.py's rule: incarnation 2 logs from step 2, so incarnation 1's steps >= 2 are stale."""
    st = LocalStore(tmp_path / "run.db")
    _write(st, TextRow("k", 0, 111, 1.0, [0, 1, 2, 3], ["a0", "a1", "a2", "a3"]))
    _write(st, TextRow("k", 0, 222, 2.0, [2, 3], ["b2", "b3"]))
    _write(st, TextRow("k", 1, 333, 2.0, [5], ["other rank"]))
    assert st.texts("k", 0) == [(0, "a0"), (1, "a1"), (2, "b2"), (3, "b3")]
    summary = {(s["key"], s["rank"]): s for s in st.text_summary()}
    assert summary[("k", 0)] == {"key": "k", "rank": 0, "n": 4, "last_step": 3, "last_text": "b3"}
    assert summary[("k", 1)]["n"] == 1
    assert st.text_last_steps(0) == {"k": 3} and st.last_steps(0) == {"k": 3}
    st.close()


def test_pages_are_bounded_by_count_and_resume_after_the_last_step(tmp_path: Path) -> None:
    st = LocalStore(tmp_path / "run.db")
    _write(st, TextRow("k", 0, 1, 1.0, list(range(25)), [f"t{i}" for i in range(25)]))
    got, after, pages = [], -1, 0
    while after is not None:
        page = st.text_page("k", 0, after, 10)
        assert len(page.steps) <= 10
        got += page.texts
        after, pages = page.next, pages + 1
    assert got == [f"t{i}" for i in range(25)] and pages == 3
    with pytest.raises(ValueError):
        st.text_page("k", 0, -1, 0)
    with pytest.raises(TypeError):
        st.text_page("k", bad("0"), -1, 5)
    st.close()


def test_a_page_stops_after_its_byte_budget(tmp_path: Path) -> None:
    big = "x" * 60_000
    n = MAX_TEXT_PAGE_BYTES // len(big) + 5
    st = LocalStore(tmp_path / "run.db")
    _write(st, TextRow("k", 0, 1, 1.0, list(range(n)), [big] * n))
    page = st.text_page("k", 0, -1, 10_000)
    assert 0 < len(page.texts) < n and page.next == page.steps[-1]
    assert len(st.texts("k", 0)) == n
    st.close()


def test_journal_order_and_position_for_forwarders(tmp_path: Path) -> None:
    st = LocalStore(tmp_path / "run.db")
    assert st.max_text_id() == 0 and st.texts_after(0, 10) == []
    _write(st, TextRow("a", 0, 1, 1.0, [0, 1], ["a0", "a1"]))
    _write(st, TextRow("b", 1, 2, 2.0, [0], ["b0"]))
    rows = st.texts_after(0, 10)
    assert [(r.key, r.rank, r.step, r.text) for r in rows] == [("a", 0, 0, "a0"), ("a", 0, 1, "a1"), ("b", 1, 0, "b0")]
    assert [r.id for r in rows] == sorted(r.id for r in rows) and st.max_text_id() == rows[-1].id
    assert st.texts_after(rows[0].id, 1) == [rows[1]]
    assert rows[2].incarnation == 2 and rows[2].ts == 2.0
    st.close()


def _as_v2(path: Path) -> None:
    """Turn a current store into what version 2 wrote: no texts table, schema 2."""
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE texts; UPDATE meta SET v='2' WHERE k='schema';")
    db.close()


def test_a_v2_store_is_migrated_to_v3_and_keeps_its_points(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    st = LocalStore(path)
    st.create_run("r", "p", "n", 1, 1.0)
    st.commit(
        TxnData(
            key_policies={"loss": "mean"}, chunks=[ChunkRow("loss", 0, 1, 1, 1.0, array("q", [0]), array("d", [2.5]))]
        )
    )
    st.close()
    _as_v2(path)
    ro = LocalStore(path, readonly=True)  # read-only: read as it is, no text series, never written
    assert schema_of(ro._db) == 2 and not ro.has_texts
    assert ro.text_summary() == [] and ro.max_text_id() == 0 and ro.texts_after(0, 5) == [] and ro.texts("k", 0) == []
    ro.close()
    st = LocalStore(path)
    assert schema_of(st._db) == SCHEMA_VERSION and st.has_texts
    assert st.values("loss", 0) == [(0, 2.5)]
    _write(st, TextRow("gen", 0, 1, 2.0, [0], ["after the upgrade"]))
    assert st.texts("gen", 0) == [(0, "after the upgrade")]
    st.close()


def test_a_v1_store_is_migrated_through_to_v3(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    shutil.copy(DATA / "v1-run.db", path)
    st = LocalStore(path)
    assert schema_of(st._db) == SCHEMA_VERSION and st.text_summary() == []
    _write(st, TextRow("gen", 0, 1, 2.0, [0], ["t"]))
    assert st.texts("gen", 0) == [(0, "t")]
    st.close()
