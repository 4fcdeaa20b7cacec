"""The aggregator's doorbell: a Unix datagram socket beside its ipc socket, rung by a rank after a request."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from coordinator.transport.bell import Bell, Ringer, bell_path


def test_the_bell_lies_beside_an_ipc_socket_and_tcp_has_none() -> None:
    assert bell_path("ipc:///run/user/0/run-ab12/agg.sock") == "/run/user/0/run-ab12/agg.bell"
    assert bell_path("tcp://10.0.0.1:5555") is None
    assert bell_path("ipc://agg.sock") is None  # relative: the working directories may differ
    assert bell_path("ipc://@agg") is None  # abstract
    assert Ringer("tcp://10.0.0.1:5555").path is None


def test_a_ring_reaches_the_bell_and_a_drain_empties_it(tmp_path: Path) -> None:
    bell = Bell(str(tmp_path / "agg.bell"))
    ringer = Ringer(f"ipc://{tmp_path}/agg.sock")
    try:
        assert bell.drain() == 0
        ringer.ring()
        ringer.ring()
        assert bell.drain() == 2
        assert bell.drain() == 0
        assert ringer.missed == 0
    finally:
        ringer.close()
        bell.close()
    assert not (tmp_path / "agg.bell").exists()


def test_a_ring_without_a_bell_is_counted_and_raises_nothing(tmp_path: Path) -> None:
    ringer = Ringer(f"ipc://{tmp_path}/agg.sock")
    try:
        ringer.ring()
        assert ringer.missed == 1
        bell = Bell(str(tmp_path / "agg.bell"))  # an aggregator that comes back is rung again
        try:
            ringer.ring()
            assert bell.drain() == 1
            assert ringer.missed == 1
        finally:
            bell.close()
    finally:
        ringer.close()


def test_rings_on_a_full_bell_neither_block_nor_raise_and_a_drain_is_bounded(tmp_path: Path) -> None:
    bell = Bell(str(tmp_path / "agg.bell"))
    ringer = Ringer(f"ipc://{tmp_path}/agg.sock")
    try:
        for _ in range(5000):  # far beyond the socket's queue: the later rings find it full
            ringer.ring()
        first = bell.drain()
        assert 0 < first <= 256
        while bell.drain():
            pass
        assert ringer.missed == 0
    finally:
        ringer.close()
        bell.close()


def test_a_stale_bell_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "agg.bell"
    path.write_text("left by an aggregator that died")
    bell = Bell(str(path))
    try:
        Ringer(f"ipc://{tmp_path}/agg.sock").ring()
        assert bell.drain() == 1
    finally:
        bell.close()


def test_a_ring_that_fails_otherwise_warns_once_and_stops_ringing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_dir = tmp_path / ("d" * 120)  # a path longer than sockaddr_un holds
    ringer = Ringer(f"ipc://{long_dir}/agg.sock")
    with caplog.at_level(logging.WARNING, logger="coordinator.transport.bell"):
        ringer.ring()
        ringer.ring()
    assert ringer.path is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot ring the bell" in caplog.records[0].getMessage()
    assert os.listdir(tmp_path) == []
