"""Hostile or incompatible peers on the aggregator's socket: dropped, counted, answered; real ranks unaffected."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
import zmq

import coordinator
from coordinator.journal.store import list_runs
from coordinator.transport import wire

pytestmark = pytest.mark.integration


def _frames(run_id: str) -> list[list[bytes]]:
    env = wire.encode_envelope
    big = os.urandom(70 * 1024 * 1024)
    return [
        [b"garbage"],
        [os.urandom(64), os.urandom(64)],
        [b"\xc1", b"\xc1"],
        [env(wire.BATCH, run_id, 0, 1, 1)[:-3], b"\x80"],
        [msgpack.packb([99, wire.BATCH, run_id, 0, 1, 1]), b"\x80"],
        [env(wire.BATCH, "other-run", 0, 1, 1), wire.encode_batch([], [], 1.0)],
        [env(wire.BATCH, run_id, 0, 7, 1), wire.encode_batch([], [], 1.0)],  # never said HELLO
        [env(wire.HELLO, run_id, 99, 7, 0), wire.encode_map({})],  # rank outside the world
        [env(wire.BATCH, run_id, 0, 2**63 - 1, 2**63 - 1), b"\x92\x01"],
        [env(wire.PING, run_id, 0, 1, 0), msgpack.packb({"a": msgpack.ExtType(5, b"x")})],
        [env(wire.QUERY, run_id, 0, 1, 0), b"\x91" * 5000 + b"\x90"],
        [big, b"\x80"],
    ]


def test_garbage_frames_are_dropped_counted_and_the_run_completes(store_dir: Path) -> None:
    """Random bytes, truncated and oversized frames, wrong version/run/rank: the real rank's data all arrive."""
    with coordinator.init_run() as run:
        for s in range(1000):
            run.log({"a": float(s)}, step=s)
        ctx = zmq.Context()
        try:
            evil = ctx.socket(zmq.DEALER)
            evil.setsockopt(zmq.LINGER, 0)
            assert run.endpoint is not None
            evil.connect(run.endpoint)
            for fr in _frames(run.id):
                evil.send_multipart(fr)
            replies = 0
            while evil.poll(1000):
                evil.recv_multipart()
                replies += 1
            assert replies >= 4  # version, wrong run, unknown sender, bad rank get typed errors
            evil.close()
        finally:
            ctx.term()
        for s in range(1000, 2000):
            run.log({"a": float(s)}, step=s)
        run.wait(30)
        assert len(run["a"].fetch_values(rank=0)) == 2000
    [info] = list_runs(store_dir)
    assert info.report is not None and info.report["bad_frames"] >= 7
    assert info.report["unknown_sender"] >= 3
    assert info.report["points"] == 2000


def test_version_mismatch_is_refused_naming_both_versions(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank speaking another protocol version gets a clear error naming both versions, not misread data."""
    with coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        run.wait(30)
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            assert run.endpoint is not None
            s.connect(run.endpoint)
            s.send_multipart([msgpack.packb([wire.PROTOCOL + 1, wire.HELLO, run.id, 0, 5, 0]), wire.encode_map({})])
            assert s.poll(5000)
            _env, body = s.recv_multipart()
            reply = wire.decode_map(body)
            assert reply["code"] == "version"
            assert str(wire.PROTOCOL) in reply["message"] and str(wire.PROTOCOL + 1) in reply["message"]
            s.close()
        finally:
            ctx.term()


def test_client_of_another_version_fails_loudly_at_wait(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose protocol differs from its aggregator's raises ProtocolError(code='version') from wait()."""
    with coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        run.wait(30)
        monkeypatch.setattr(wire, "PROTOCOL", wire.PROTOCOL + 1)
        run.log({"a": 2.0}, step=1)
        with pytest.raises(coordinator.ProtocolError) as ei:
            run.wait(timeout=15)
        assert ei.value.code == "version"
        monkeypatch.setattr(wire, "PROTOCOL", wire.PROTOCOL - 1)
        with pytest.raises(coordinator.ProtocolError):
            run.stop(timeout=10)
