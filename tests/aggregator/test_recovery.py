"""Spool recovery: an offline run's or a lost rank's spool replayed once, into the journal."""

from __future__ import annotations

import itertools
from array import array
from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator, AggregatorConfig, replay_spools
from coordinator.aggregator.recovery import recover_spools
from coordinator.errors import ConfigError
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import MAIN_RANK, LocalStore, run_dir
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from coordinator.transport.spool import SegmentedSpool, SpoolWriter
from tests.aggregator.helpers import RUN, batch, hello, make_cfg, payload


def _spool(directory: Path, rank: int, inc: int, records: list[tuple[int, int, bytes]]) -> None:
    """Write (kind, seq, payload) records of (rank, inc) as its sender would have spooled them."""
    sp = SegmentedSpool(directory / f"rank-{rank}-{inc}", segment_bytes=1 << 20, max_bytes=1 << 30)
    for kind, seq, data in records:
        sp.append(kind, seq, wire.encode_envelope(kind, RUN, rank, inc, seq), data)
    sp.close(remove_if_empty=False)


def _offline_run(root: Path, steps: int) -> None:
    """A 1-rank offline run's spool: metadata, HELLO, one batch per step, BYE."""
    meta = SpoolWriter(spool_dir(root, RUN) / "run.meta")
    meta.append(0, 0, b"", wire.encode_map({"run_id": RUN, "project": "p", "name": "off", "world_size": 1}))
    meta.close()
    records = [(wire.HELLO, 0, wire.encode_map({"pid": 1, "host": "h"}))]
    records += [(wire.BATCH, s + 1, payload(metrics={"loss": {s: float(s)}})) for s in range(steps)]
    records.append((wire.BYE, 0, wire.encode_map({"undelivered": 0, "accepted": steps, "dropped_points": 0})))
    _spool(spool_dir(root, RUN), 0, 1, records)


def test_replay_spools_stores_an_offline_run_and_finishes_it(tmp_path: Path) -> None:
    """Every spooled point is stored once, the main series reduced, the run finished, the spool removed."""
    _offline_run(tmp_path, 300)  # more than one commit's worth of records
    rep = replay_spools(tmp_path, RUN)
    assert rep["state"] == "finished", rep["reasons"]
    assert (rep["points"], rep["recovered_points"], rep["batches"]) == (300, 300, 300)
    assert rep["per_rank"]["0"]["accepted"] == 300
    assert not (spool_dir(tmp_path, RUN) / "rank-0-1").exists()
    s = LocalStore(run_dir(tmp_path, RUN) / "run.db", readonly=True)
    try:
        assert s.run_info().name == "off"
        assert s.values("loss", 0) == [(i, float(i)) for i in range(300)]
        assert len(s.values("loss", MAIN_RANK)) == 300
    finally:
        s.close()


def test_replaying_again_stores_nothing_twice(tmp_path: Path) -> None:
    """A spool replayed after its points were committed adds duplicates only."""
    _offline_run(tmp_path, 5)
    replay_spools(tmp_path, RUN)
    _offline_run(tmp_path, 5)  # the same records again (as if the directory had not been removed)
    rep = replay_spools(tmp_path, RUN)
    assert rep["points"] == 5 and rep["duplicate_batches"] == 5


def test_replay_without_store_or_metadata_is_a_config_error(tmp_path: Path) -> None:
    """Nothing to upload: a ConfigError naming the run."""
    with pytest.raises(ConfigError, match="nothing to upload"):
        replay_spools(tmp_path, RUN)


def test_recover_spools_skips_live_senders_and_takes_lost_ones(tmp_path: Path) -> None:
    """A live sender's spool is left alone; a lost sender's unacknowledged batches are ingested."""
    a = Aggregator(make_cfg(tmp_path, world=2))
    root = tmp_path / "spool"
    hello(a, 0)
    hello(a, 1)
    batch(a, 1, 1, metrics={"k": {0: 1.0}})
    _spool(root, 0, 1, [(wire.BATCH, 1, payload(metrics={"k": {0: 9.0}}))])
    unacked = [(wire.BATCH, s, payload(metrics={"k": {s - 1: float(s)}})) for s in (1, 2, 3)]
    _spool(root, 1, 1, unacked)  # seq 1 was committed; 2 and 3 were not
    assert recover_spools(a, root) == 0  # both senders are live
    a.senders[(1, 1)].state = "lost"
    assert recover_spools(a, root) == 2
    assert a.senders[(1, 1)].last_seq == 3 and a.counters["duplicate_batches"] == 1
    assert (root / "rank-0-1").exists() and not (root / "rank-1-1").exists()
    assert a.store.values("k", 1) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert a.store.values("k", 0) == []


def test_a_foreign_record_in_a_spool_is_skipped_and_counted(tmp_path: Path) -> None:
    """A record of another rank in a rank's spool is a bad frame, not ingested."""
    a = Aggregator(AggregatorConfig(run_id=RUN, store_path=str(tmp_path / "run.db"), world_size=2))
    root = tmp_path / "spool"
    d = root / "rank-1-1"
    sp = SegmentedSpool(d, segment_bytes=1 << 20, max_bytes=1 << 30)
    sp.append(wire.BATCH, 1, wire.encode_envelope(wire.BATCH, RUN, 0, 1, 1), payload(metrics={"k": {0: 1.0}}))
    sp.close(remove_if_empty=False)
    assert recover_spools(a, root, skip_live=False) == 0
    assert a.counters["bad_frames"] == 1 and a.counters["points"] == 0


def _copied(d: Path, gens: list[tuple[list[int], tuple[int, int] | None]]) -> None:
    """Copy files in spool directory ``d`` as a rank's sender writes them: per generation, the steps of
    key ``k`` (value = step + 0.5) and the batch numbers it was cut as (None: never cut)."""
    b = Buffer(1_000_000)
    c = Copies(d, b, rank=1, window_s=0.05, clock=itertools.count(100.0).__next__)  # each call: a copy due
    for steps, seqs in gens:
        col = b.cols.setdefault("k", (array("q"), array("d")))
        for s in steps:
            col[0].append(s)
            col[1].append(s + 0.5)
        with b.lock:
            c.check()
        gen = b.cut({})[0]
        if seqs is not None:
            c.cut(gen, *seqs)
            c.spooled(seqs[1])  # written ahead (or, for a test, as if a kill came before: the spool lacks it)
        c.cut_done(gen, c.now())  # the next generation may be copied


def _lost_rank_1(tmp_path: Path) -> tuple[Aggregator, Path]:
    """An aggregator that stored batch 1 of rank 1 (key ``k``, step 0), then lost the rank."""
    a = Aggregator(make_cfg(tmp_path, world=2))
    hello(a, 0)
    hello(a, 1)
    batch(a, 1, 1, metrics={"k": {0: 0.5}})
    a.senders[(1, 1)].state = "lost"
    return a, tmp_path / "spool"


def test_copies_the_spool_does_not_hold_are_recovered_after_it_each_point_once(tmp_path: Path) -> None:
    """Generation 0 was cut as batch 2 and written ahead (the spool holds it): its copy is skipped, without a
    report. Generation 1 was never cut: it goes in after the spool, as batch 3."""
    a, root = _lost_rank_1(tmp_path)
    _spool(root, 1, 1, [(wire.BATCH, 2, payload(metrics={"k": {1: 1.5, 2: 2.5}}))])
    _copied(root / "rank-1-1", [([1, 2], (2, 2)), ([3, 4], None)])
    assert recover_spools(a, root) == 4
    assert a.store.values("k", 1) == [(s, s + 0.5) for s in range(5)]
    assert a.senders[(1, 1)].last_seq == 3 and a.counters["recovered_points"] == 4
    assert not (root / "rank-1-1").exists()
    a.commit()
    assert not [e for e in a.store.events() if e[1] == "copies_skipped"]  # generation 0 was whole in the spool


def test_a_copy_cut_but_never_written_ahead_goes_in(tmp_path: Path) -> None:
    """Generation 0 was cut as batch 2 and the rank killed before its write-ahead (the spool is empty): its copy
    goes in as batch 2. (No later generation was copied: its copies wait for the write-ahead.)"""
    a, root = _lost_rank_1(tmp_path)
    _copied(root / "rank-1-1", [([1, 2], (2, 2))])
    assert recover_spools(a, root) == 2
    assert a.store.values("k", 1) == [(s, s + 0.5) for s in range(3)]
    assert a.senders[(1, 1)].last_seq == 2


def test_copies_replayed_again_after_their_commit_store_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload that crashed after its commit, before the directory went: the copy file says where it went in."""
    a, root = _lost_rank_1(tmp_path)
    _copied(root / "rank-1-1", [([1, 2], None)])
    monkeypatch.setattr("coordinator.aggregator.recovery.shutil.rmtree", lambda *a, **k: None)
    assert recover_spools(a, root) == 2
    assert recover_spools(a, root) == 0
    assert a.store.values("k", 1) == [(0, 0.5), (1, 1.5), (2, 2.5)]


def test_a_generation_killed_between_two_writes_ahead_goes_in_past_what_the_spool_holds(tmp_path: Path) -> None:
    """Cut as batches 2-3, only 2 reached the spool: its points of each key are the first ones; the copy's
    others go in, once."""
    a, root = _lost_rank_1(tmp_path)
    _spool(root, 1, 1, [(wire.BATCH, 2, payload(metrics={"k": {1: 1.5}}))])
    _copied(root / "rank-1-1", [([1, 2], (2, 3))])
    assert recover_spools(a, root) == 2
    assert a.store.values("k", 1) == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert a.senders[(1, 1)].last_seq == 3


def test_a_generation_the_aggregator_holds_in_part_but_the_spool_not_is_reported_not_replayed(tmp_path: Path) -> None:
    """Batches 2-3 were its cut; the aggregator has 2, the spool nothing to count it by: an event says so."""
    a, root = _lost_rank_1(tmp_path)
    batch(a, 1, 2, metrics={"k": {1: 1.5}})  # sent live, not written ahead (it revives the rank)
    a.senders[(1, 1)].state = "lost"
    _copied(root / "rank-1-1", [([1, 2], (2, 3))])
    assert recover_spools(a, root) == 0
    assert a.store.values("k", 1) == [(0, 0.5), (1, 1.5)]
    a.commit()
    [ev] = [e for e in a.store.events() if e[1] == "copies_skipped"]
    assert "batches 2-3" in ev[3] and "2 copied points are not replayed" in ev[3]


def test_coordinator_sync_recovers_the_copies_of_a_crashed_job(tmp_path: Path) -> None:
    """After the whole job died (no aggregator at its end), ``replay_spools`` takes the copies too."""
    _offline_run(tmp_path, 3)  # batches 1-3: steps 0-2
    d = spool_dir(tmp_path, RUN) / "rank-0-1"
    b = Buffer(1_000_000)
    c = Copies(d, b, rank=0, window_s=0.05, clock=itertools.count(100.0).__next__)
    b.cols["loss"] = (array("q", [3, 4]), array("d", [3.0, 4.0]))
    with b.lock:
        c.check()
    rep = replay_spools(tmp_path, RUN)
    assert rep["points"] == 5 and rep["recovered_points"] == 5
    s = LocalStore(run_dir(tmp_path, RUN) / "run.db", readonly=True)
    try:
        assert s.values("loss", 0) == [(i, float(i)) for i in range(5)]
    finally:
        s.close()
