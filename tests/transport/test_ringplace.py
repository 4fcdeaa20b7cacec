"""A ring goes where there is room for it; only paths named as rings count as rings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.transport.ringplace import pick_ring_dir, ring_named


def test_a_ring_goes_where_there_is_room_for_it(tmp_path: Path) -> None:
    shm, spool = tmp_path / "shm", tmp_path / "spool"
    shm.mkdir()
    spool.mkdir()
    assert pick_ring_dir(1 << 20, [shm, spool]) == shm
    assert pick_ring_dir(1 << 20, [tmp_path / "none", spool]) == spool
    free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
    with pytest.raises(ValueError, match=r"no directory has room .*under") as e:
        pick_ring_dir(1 << 20, [shm], headroom=2 * free / (1 << 20))
    assert str(shm) in str(e.value)
    with pytest.raises(ValueError, match="none given"):
        pick_ring_dir(1 << 20, [])


def test_only_absolute_paths_named_coordinator_ring_are_rings() -> None:
    assert ring_named(Path("/dev/shm/coordinator-run-0-1.ring"))
    assert not ring_named(Path("coordinator-run-0-1.ring"))  # relative: it would resolve against the reader's cwd
    assert not ring_named(Path("/data/run/run.db"))
    assert not ring_named(Path("/dev/shm/coordinator-run-0-1.ring.names"))
    assert not ring_named(Path("/dev/shm/other-run.ring"))
