"""Where runs live: the store root, a run's directory, listing the runs under a root."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coordinator.errors import ConfigError
from coordinator.journal.store import LocalStore, list_runs, resolve_root, run_dir


def _make_run(root: Path, run_id: str, created: float, state: str | None = None) -> None:
    s = LocalStore(run_dir(root, run_id) / "run.db")
    try:
        s.create_run(run_id, "p", f"name-{run_id}", 1, created)
        if state:
            s.finish_run(state, {"id": run_id}, ended=created + 1)
    finally:
        s.close()


def test_list_runs_lists_every_run_oldest_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Runs are listed by creation time; broken or empty run dirs are skipped with a warning."""
    _make_run(tmp_path, "b-run", 300.0, "finished")
    _make_run(tmp_path, "a-run", 200.0)
    _make_run(tmp_path, "c-run", 100.0, "failed")
    (tmp_path / "runs" / "empty-dir").mkdir()
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "run.db").write_bytes(b"garbage" * 200)
    LocalStore(tmp_path / "runs" / "no-row" / "run.db").close()
    with caplog.at_level(logging.WARNING, logger="coordinator.journal.paths"):
        runs = list_runs(tmp_path)
    assert [(r.id, r.created, r.state) for r in runs] == [
        ("c-run", 100.0, "failed"),
        ("a-run", 200.0, "running"),
        ("b-run", 300.0, "finished"),
    ]
    assert runs[0].report == {"id": "c-run"} and runs[1].report is None
    assert runs[2].path == tmp_path / "runs" / "b-run"
    skipped = [r.getMessage() for r in caplog.records if "skipping unreadable run" in r.getMessage()]
    assert len(skipped) == 2
    assert any("broken" in m for m in skipped) and any("no-row" in m for m in skipped)


def test_list_runs_without_runs_dir_is_empty(tmp_path: Path) -> None:
    """A root with no runs directory lists nothing."""
    assert list_runs(tmp_path / "nothing-here") == []


@pytest.mark.parametrize("run_id", ["", ".", "..", "a/b", "../x", "a\x00b"])
def test_run_dir_rejects_unsafe_run_ids(tmp_path: Path, run_id: str) -> None:
    """Run ids that would escape or break the runs directory are ConfigErrors (also ValueErrors)."""
    with pytest.raises(ConfigError):
        run_dir(tmp_path, run_id)
    with pytest.raises(ValueError):
        run_dir(tmp_path, run_id)


def test_run_dir_places_runs_under_root(tmp_path: Path) -> None:
    """A run lives at <root>/runs/<run_id>."""
    assert run_dir(tmp_path, "abc-1") == tmp_path / "runs" / "abc-1"


def test_resolve_root_prefers_argument_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The explicit root wins over COORDINATOR_DIR, which wins over ./.coordinator."""
    monkeypatch.setenv("COORDINATOR_DIR", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("COORDINATOR_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_root() == tmp_path / ".coordinator"
