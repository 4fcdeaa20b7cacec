"""Text series forwarded after an elastic restart (the replacement rule), and texts a tracker cuts, counted.

Real journals (``LocalStore``) with a restarted rank, forwarded by the real forwarder to real
trackers (TensorBoard event files read back by TensorBoard's own reader; Neptune's offline
operation log): what reaches the tracker is what the journal's readers return, each text once.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest

from coordinator.forward.forwarder import Forwarder
from coordinator.forward.texts import TEXTS_PER_BATCH
from coordinator.journal.store import MAIN_RANK, TEXT_POLICY, ChunkRow, LocalStore, TextRow, TxnData
from tests.forward.test_sending import tb_texts
from tests.untyped import bad

KEY = "samples/gen"
N = TEXTS_PER_BATCH + 100
"""Texts the first incarnation of rank 0 logs: more than one batch, so the rule holds across batches."""
RESUME = 300
"""The step the restarted rank 0 (a later incarnation) logs from."""


def _restarted_store(db: Path) -> LocalStore:
    """Rank 0: incarnation 11 logs steps 0..N-1, then incarnation 22 logs from RESUME; rank 1 never restarts."""
    st = LocalStore(db)
    st.create_run("r1", "p", "restart", 2, 1000.0)
    st.commit(
        TxnData(
            key_policies={KEY: TEXT_POLICY},
            senders={
                (0, 11): (1, N, 1, 1000.0, 1001.0, "fenced", 1, "h"),
                (1, 33): (1, 10, 1, 1000.0, 1001.0, "live", 3, "h"),
            },
            texts=[
                TextRow(KEY, 0, 11, 1001.0, list(range(N)), [f"old {s}" for s in range(N)]),
                TextRow(KEY, 1, 33, 1001.0, list(range(10)), [f"r1 {s}" for s in range(10)]),
            ],
        )
    )
    return st


def _restart(st: LocalStore) -> None:
    st.commit(
        TxnData(
            key_policies={KEY: TEXT_POLICY},
            senders={(0, 22): (1, 50, 1, 1002.0, 1003.0, "closed", 2, "h")},
            texts=[TextRow(KEY, 0, 22, 1002.0, list(range(RESUME, RESUME + 50)), [f"new {s}" for s in range(50)])],
        )
    )


def _forward(db: Path, logdir: Path) -> dict[str, object]:
    fwd = Forwarder(db, "tensorboard", {"logdir": str(logdir)})
    try:
        return fwd.drain(60)
    finally:
        fwd.release()


def test_texts_a_restart_replaced_are_not_forwarded_across_batches(tmp_path: Path) -> None:
    """The tracker gets exactly the journal's reading of each rank's series; the replaced ones count as stale."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = tmp_path / "runs" / "r1" / "run.db"
    st = _restarted_store(db)
    _restart(st)
    want0, want1 = st.texts(KEY, 0), st.texts(KEY, 1)
    st.finish_run("finished", {})
    st.close()
    assert want0 == [(s, f"old {s}") for s in range(RESUME)] + [(RESUME + i, f"new {i}") for i in range(50)]
    got_st = _forward(db, tmp_path / "tb")
    got = tb_texts(tmp_path / "tb")
    assert got[f"ranks/0/{KEY}"] == want0, "each current text once; none the restart replaced"
    assert got[f"ranks/1/{KEY}"] == want1
    assert got_st["stale_texts"] == N - RESUME
    assert got_st["forwarded_texts"] == len(want0) + len(want1)
    assert got_st["replaced_texts"] == 0


def test_texts_forwarded_before_the_restart_was_committed_stay_and_nothing_more_is_stale(tmp_path: Path) -> None:
    """What the tracker accepted before the restart reached the journal cannot be withdrawn (as for numeric
    points); after it, only the new incarnation's texts go, and nothing is counted twice."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = tmp_path / "runs" / "r1" / "run.db"
    st = _restarted_store(db)
    first = _forward(db, tmp_path / "tb")
    assert first["forwarded_texts"] == N + 10 and first["stale_texts"] == 0
    _restart(st)
    st.finish_run("finished", {})
    st.close()
    second = _forward(db, tmp_path / "tb")
    assert second["forwarded_texts"] == 50 and second["stale_texts"] == 0
    steps = [s for s, _ in tb_texts(tmp_path / "tb")[f"ranks/0/{KEY}"]]
    assert len(steps) == N + 50 and sorted(set(steps)) == list(range(N))


def test_text_lineage_reads_each_incarnation_in_start_order(tmp_path: Path) -> None:
    st = _restarted_store(tmp_path / "run.db")
    _restart(st)
    try:
        assert st.text_lineage(KEY, 0) == [(11, 0), (22, RESUME)]
        assert st.text_lineage(KEY, 1) == [(33, 0)]
        assert st.text_lineage("no/such", 0) == [] and st.text_lineage(KEY, 5) == []
        with pytest.raises(TypeError):
            st.text_lineage(KEY, bad("0"))
    finally:
        st.close()


def test_neptune_counts_the_texts_it_cuts_to_1000_characters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Texts over 1000 characters are stored cut by Neptune: each is counted as cut_texts, warned once per series."""
    pytest.importorskip("neptune", reason="the neptune extra is not installed (pip install 'coordinator[neptune]')")
    db = tmp_path / "runs" / "r1" / "run.db"
    st = LocalStore(db)
    st.create_run("r1", "p", "long", 1, 1000.0)
    lengths = [999, 1000, 1001, 5000, 10, 65_536]
    st.commit(
        TxnData(
            key_policies={KEY: TEXT_POLICY},
            senders={(0, 1): (1, len(lengths), 1, 1000.0, 1001.0, "closed", 1, "h")},
            texts=[
                TextRow(KEY, 0, 1, 1001.0, list(range(len(lengths))), [str(i % 10) * n for i, n in enumerate(lengths)])
            ],
        )
    )
    st.finish_run("finished", {})
    st.close()
    data_dir = tmp_path / "np"
    fwd = Forwarder(db, "neptune", {"mode": "offline", "project": "ws/cut", "data_dir": str(data_dir)})
    try:
        got = fwd.drain(120)
    finally:
        fwd.release()
    assert got["cut_texts"] == 3 and got["forwarded_texts"] == len(lengths), got
    warned = [r for r in caplog.records if "cut_texts" in r.getMessage()]
    assert len(warned) == 1
    ops = [
        json.loads(line)["obj"]
        for c in (data_dir / "offline").glob("run__*")
        for f in sorted(c.glob("data-*.log"))
        for line in f.read_text().splitlines()
    ]
    stored = [len(v["value"]) for o in ops if o["type"] == "LogStrings" for v in o["values"]]
    assert stored == [min(n, 1000) for n in lengths], "what Neptune stores: the first 1000 characters"


def test_a_text_series_named_like_a_metric_key_is_not_sent_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rank 0's text series ``gen`` would be ``ranks/0/gen``, a metric key: its texts count as name_collisions."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = tmp_path / "runs" / "r1" / "run.db"
    st = LocalStore(db)
    st.create_run("r1", "p", "clash", 2, 1000.0)
    st.commit(
        TxnData(
            key_policies={"ranks/0/gen": "mean", "gen": TEXT_POLICY},
            senders={
                (0, 1): (1, 8, 1, 1000.0, 1001.0, "closed", 1, "h"),
                (1, 2): (1, 3, 1, 1000.0, 1001.0, "closed", 2, "h"),
            },
            chunks=[
                ChunkRow(
                    "ranks/0/gen",
                    MAIN_RANK,
                    0,
                    0,
                    1001.0,
                    array("q", [0, 1]),
                    array("d", [1.0, 2.0]),
                    array("i", [1, 1]),
                )
            ],
            texts=[TextRow("gen", 0, 1, 1001.0, [0, 1, 2], ["a", "b", "c"]), TextRow("gen", 1, 2, 1001.0, [0], ["r1"])],
        )
    )
    st.finish_run("finished", {})
    st.close()
    got_st = _forward(db, tmp_path / "tb")
    assert got_st["name_collisions"] == 3 and got_st["forwarded_texts"] == 1, got_st
    texts = tb_texts(tmp_path / "tb")
    assert "ranks/0/gen" not in texts and texts["ranks/1/gen"] == [(0, "r1")]
    assert sum("'ranks/0/gen'" in r.getMessage() for r in caplog.records) == 1
