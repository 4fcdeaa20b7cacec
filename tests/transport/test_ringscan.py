"""The walk over a ring's records gives the same runs in C as in Python, and leaves every record that does not read
whole to the Python loop, which says whether it is late or damaged."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from coordinator.core.env import COORDINATOR_PUREPYTHON
from coordinator.transport import ringscan
from coordinator.transport.ring import HEADER_BYTES, RingDamaged, RingReader, RingWriter
from coordinator.transport.ringscan import span_table

needs_c = pytest.mark.skipif(not ringscan.built(), reason="the C extension was not built (no compiler at install)")


def test_ci_builds_the_extension() -> None:
    """CI installs with a compiler: there the C walk must be the one the suite runs."""
    if os.environ.get("CI") != "true":
        pytest.skip("not CI: an install without a compiler takes the Python loop")
    assert ringscan.built(), "the C extension coordinator.transport._ringscan did not build in CI"


def _table(r: RingReader, pure: bool, monkeypatch: pytest.MonkeyPatch, final: bool = False) -> list[list[int]]:
    if pure:
        monkeypatch.setenv(COORDINATOR_PUREPYTHON, "1")
    else:
        monkeypatch.delenv(COORDINATOR_PUREPYTHON, raising=False)
    t: np.ndarray = span_table(r, final=final)
    assert t.dtype == np.int64 and t.shape[1:] == (3,)
    return t.tolist()


@needs_c
def test_the_c_walk_gives_the_python_loops_runs_over_many_laps_of_mixed_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of random sizes (runs of one to 40, skip marks at each lap's end) read in passes of random
    length by two readers, one walking in C, one in Python: the same runs, the same cursor after each pass,
    and the C walk alone reaches the end of each pass (skip marks and all: no record left to Python)."""
    from coordinator.transport._ringscan import scan

    w = RingWriter(tmp_path / "r", 4096)
    c, py = RingReader(tmp_path / "r"), RingReader(tmp_path / "r")
    rng = random.Random(11)
    passes = runs = 0
    for _ in range(3000):
        body = bytes([rng.randrange(256)]) * rng.choice((3, 8, 8, 24, 40, 200))
        for _ in range(rng.choice((1, 1, 2, 5, 40))):
            if not w.put(body):
                assert scan(c.map, c.cursor, w.written, c.capacity)[0] == w.written
                got = _table(c, False, monkeypatch)
                assert got == _table(py, True, monkeypatch) and c.cursor == py.cursor == w.written
                passes, runs = passes + 1, runs + len(got)
                c.release(c.cursor)
                py.release(py.cursor)
                assert w.put(body)
    assert passes > 50 and runs > 2000
    w.close()
    c.close()
    py.close()


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_a_record_that_does_not_read_whole_ends_the_walk_late_then_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """Ten 8-byte records, the 7th's tail not visible yet: the runs before it, the cursor at it; with ``final``
    it is damage (the C walk stops there and the Python loop says so); once its tail lands, the rest."""
    if not pure and not ringscan.built():
        pytest.skip("the C extension was not built")
    w = RingWriter(tmp_path / "r", 4096)
    r = RingReader(tmp_path / "r")
    for i in range(10):
        w.put(bytes([i]) * 8)  # 24 bytes each
    tail = HEADER_BYTES + 6 * 24 + 16
    w.map[tail : tail + 8] = struct.pack("<II", 0, 8)
    assert _table(r, pure, monkeypatch) == [[8, 0, 6]] and r.cursor == 144
    assert _table(r, pure, monkeypatch) == []
    with pytest.raises(RingDamaged, match="the record at 144 is damaged: its two ends disagree"):
        _table(r, pure, monkeypatch, final=True)
    w.map[tail : tail + 8] = struct.pack("<II", 18, 8)
    w.put(b"x" * 40)
    assert _table(r, pure, monkeypatch) == [[8, 144, 4], [40, 240, 1]] and r.cursor == w.written
    w.map[HEADER_BYTES + 296 : HEADER_BYTES + 304] = struct.pack("<II", 3000, 37)  # a length past what was written
    w._written[0] = 304
    with pytest.raises(RingDamaged, match="runs past"):
        _table(r, pure, monkeypatch, final=True)
    w.close()
    r.close()


@needs_c
def test_the_c_walk_refuses_a_map_shorter_than_the_ring_it_is_told_of(tmp_path: Path) -> None:
    from coordinator.transport._ringscan import scan

    with pytest.raises(ValueError, match="shorter than the ring"):
        scan(bytes(HEADER_BYTES + 4096), 0, 8, 8192)
    with pytest.raises(ValueError, match="power of two"):
        scan(bytes(HEADER_BYTES + 4096), 0, 8, 4095)
    assert scan(bytes(HEADER_BYTES + 4096), 0, 0, 4096) == (0, b"")
