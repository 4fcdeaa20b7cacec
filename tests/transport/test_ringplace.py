"""A ring goes where there is room for it; only paths named as rings count as rings; a ring no process
holds is found, and only such a ring is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.transport.ring import RingReader, RingWriter
from coordinator.transport.ringplace import (
    left_rings,
    pick_ring_dir,
    place_ring,
    remove_left,
    ring_files,
    ring_named,
)
from coordinator.transport.ringrows import names_path


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


def test_a_short_first_place_takes_a_halved_ring_down_to_the_smallest_before_the_next_takes_it_whole(
    tmp_path: Path,
) -> None:
    shm, spool = tmp_path / "shm", tmp_path / "spool"
    shm.mkdir()
    spool.mkdir()
    big = 1 << 24
    assert place_ring(big, [shm, spool], smallest=1 << 20) == (shm, big)  # room for the whole: kept whole
    free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
    short = free / (big / 2)  # a headroom under which the whole and a half do not fit, a quarter does
    assert place_ring(big, [shm, spool], smallest=1 << 20, headroom=short, keep=0.0) == (shm, big // 4)
    # A smaller ring leaves `keep` of the file system free: none does where it asks for more than is free.
    total = os.statvfs(shm).f_blocks * os.statvfs(shm).f_frsize
    with pytest.raises(ValueError, match="no directory has room"):
        place_ring(big, [shm, spool], smallest=1 << 20, headroom=short, keep=free / total)
    # Not as small as that, or no smallest given: the whole, asked of every place (here on one disk: none has it).
    for smallest in (big // 2, None):
        with pytest.raises(ValueError, match=f"no directory has room for a {big}-byte ring: {shm}.*; {spool}"):
            place_ring(big, [shm, spool], smallest=smallest, headroom=short, keep=0.0)
    assert place_ring(big, [tmp_path / "none", spool], smallest=1 << 20) == (spool, big)  # the next place: whole


def test_only_absolute_paths_named_coordinator_ring_are_rings() -> None:
    assert ring_named(Path("/dev/shm/coordinator-run-0-1.ring"))
    assert not ring_named(Path("coordinator-run-0-1.ring"))  # relative: it would resolve against the reader's cwd
    assert not ring_named(Path("/data/run/run.db"))
    assert not ring_named(Path("/dev/shm/coordinator-run-0-1.ring.names"))
    assert not ring_named(Path("/dev/shm/other-run.ring"))


_WRITE_AND_WAIT = """
import sys, time
from pathlib import Path
from coordinator.transport.ring import RingWriter
w = RingWriter(Path(sys.argv[1]), 4096)
assert w.put(b"a row never read")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_ring_is_held_while_its_writer_or_a_reader_has_it_and_left_once_neither_does(tmp_path: Path) -> None:
    """The lock each end holds: a SIGKILLed writer's ring is left (its unread bytes counted); a live writer's
    or reader's is in use; a closed writer's is left until a reader maps it. A file with a ring's name that
    is not a ring is not one."""
    killed = tmp_path / "coordinator-old-run-3-7.ring"
    proc = subprocess.Popen([sys.executable, "-c", _WRITE_AND_WAIT, str(killed)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert [r.held for r in ring_files([tmp_path])] == [True]  # another process's writer
    finally:
        proc.kill()
        proc.wait(timeout=10)
    live = RingWriter(tmp_path / "coordinator-new-0-1.ring", 4096)
    (tmp_path / "coordinator-junk-0-1.ring").write_bytes(b"not a ring" * 40)
    left = left_rings([tmp_path, tmp_path / "absent"])
    assert [(r.path, r.run_id, r.rank, r.incarnation, r.writer_pid) for r in left] == [
        (killed, "old-run", 3, 7, proc.pid)
    ]
    assert left[0].unread == 32 and left[0].bytes >= 4096
    assert [r.path.name for r in ring_files([tmp_path]) if r.held] == ["coordinator-new-0-1.ring"]
    live.close()
    reader = RingReader(live.path)
    assert sorted(r.path.name for r in left_rings([tmp_path])) == ["coordinator-old-run-3-7.ring"]
    reader.close()
    assert len(left_rings([tmp_path])) == 2


def test_only_a_left_ring_is_removed_with_its_names_file(tmp_path: Path) -> None:
    held = RingWriter(tmp_path / "coordinator-a-0-1.ring", 4096)
    gone = RingWriter(tmp_path / "coordinator-b-0-1.ring", 4096)
    gone.close()
    names_path(gone.path).write_bytes(b"names")
    junk = tmp_path / "coordinator-c-0-1.ring"
    junk.write_bytes(b"not a ring" * 100)
    unstamped = tmp_path / "coordinator-d-0-1.ring"
    unstamped.write_bytes(bytes(4096))  # allocated by a writer that died before it wrote the header
    assert remove_left(held.path) is None and held.path.exists()
    assert remove_left(junk) is None and junk.exists()
    gone_early = remove_left(unstamped)
    assert gone_early is not None and gone_early.unread == 0 and not unstamped.exists()
    assert remove_left(Path("coordinator-b-0-1.ring")) is None  # not named as a ring: relative
    removed = remove_left(gone.path)
    assert removed is not None and removed.run_id == "b" and not removed.held
    assert not gone.path.exists() and not names_path(gone.path).exists()
    assert remove_left(gone.path) is None
    held.close()
