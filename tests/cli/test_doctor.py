"""``coordinator doctor``: a TensorBoard check leaves the user's logdir as it found it (issue 11, item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli.doctor import run_doctor

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("exists", [True, False])
def test_doctor_tensorboard_leaves_no_event_file_in_the_logdir(store_dir: Path, tmp_path: Path, exists: bool) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logdir = tmp_path / "tb"
    if exists:
        logdir.mkdir()
        (logdir / "mine.txt").write_text("the user's own file")
    results = list(run_doctor("tensorboard", {"logdir": str(logdir)}))
    assert all(ok for ok, _ in results), results
    assert any("read-back" in msg and "match" in msg for _, msg in results), results
    if exists:
        assert sorted(p.name for p in logdir.rglob("*")) == ["mine.txt"]
    else:
        assert not logdir.exists()


def test_doctor_keep_keeps_the_test_write(store_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logdir = tmp_path / "tb"
    results = list(run_doctor("tensorboard", {"logdir": str(logdir)}, keep=True))
    assert all(ok for ok, _ in results), results
    assert [p for p in logdir.rglob("events.out.tfevents.*")], "kept with --keep"
    kept = [msg for _, msg in results if msg.startswith("scratch run and aggregator log kept in ")]
    for msg in kept:
        import shutil

        shutil.rmtree(msg.removeprefix("scratch run and aggregator log kept in "), ignore_errors=True)


def test_doctor_says_which_path_ring_rows_take(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.cli.doctor import row_path_line
    from coordinator.client import rowpath

    monkeypatch.delenv(rowpath.PURE_ENV, raising=False)
    line = row_path_line()
    assert line.startswith("ring rows: C extension built" if rowpath.built() else "ring rows: Python only (the C")
    monkeypatch.setenv(rowpath.PURE_ENV, "1")
    assert row_path_line() == f"ring rows: Python only ({rowpath.PURE_ENV}=1), ~1.1 µs a scalar" or not rowpath.built()


def test_doctor_says_which_path_the_walk_over_a_ring_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.cli.doctor import ring_walk_line
    from coordinator.core.env import COORDINATOR_PUREPYTHON
    from coordinator.transport import ringscan

    monkeypatch.delenv(COORDINATOR_PUREPYTHON, raising=False)
    line = ring_walk_line()
    assert line.startswith("ring walk: C extension built" if ringscan.built() else "ring walk: Python only (the C")
    monkeypatch.setenv(COORDINATOR_PUREPYTHON, "1")
    assert (
        ring_walk_line() == "ring walk: Python only (COORDINATOR_PUREPYTHON=1), ~1.2 µs a record"
        or not ringscan.built()
    )
