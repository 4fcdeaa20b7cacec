"""Run references: an exact id, a unique prefix (exact wins), or 'latest'; ambiguity lists the candidates."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import ConfigError
from coordinator.journal.refs import MAX_CANDIDATES, resolve_ref
from coordinator.journal.store import LocalStore, run_dir
from tests.untyped import bad


def _run(root: Path, run_id: str, created: float) -> None:
    s = LocalStore(run_dir(root, run_id) / "run.db")
    try:
        s.create_run(run_id, "p", run_id, 1, created)
    finally:
        s.close()


def test_exact_prefix_latest_and_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no runs under"):
        resolve_ref(tmp_path, "latest")
    with pytest.raises(ConfigError, match="no runs under"):
        resolve_ref(tmp_path, "ddp")
    _run(tmp_path, "ddp-spirals-3f9a2c", 2.0)
    _run(tmp_path, "ddp-spirals-77aa01", 1.0)
    _run(tmp_path, "ddp", 0.5)
    assert resolve_ref(tmp_path, "ddp-spirals-3f9a2c") == "ddp-spirals-3f9a2c"
    assert resolve_ref(tmp_path, "ddp-spirals-3") == "ddp-spirals-3f9a2c"
    assert resolve_ref(tmp_path, "ddp") == "ddp"  # an exact id wins over the ids it prefixes
    assert resolve_ref(tmp_path, "latest") == "ddp-spirals-3f9a2c"  # the newest by creation
    with pytest.raises(ConfigError) as e:
        resolve_ref(tmp_path, "ddp-sp")
    assert "several runs match 'ddp-sp'" in str(e.value)
    assert "ddp-spirals-3f9a2c, ddp-spirals-77aa01" in str(e.value)
    with pytest.raises(ConfigError, match="no runs match 'mnist'"):
        resolve_ref(tmp_path, "mnist")
    for wrong in ("", None, 3):
        with pytest.raises(ConfigError, match="non-empty str"):
            resolve_ref(tmp_path, bad(wrong))


def test_a_long_candidate_list_is_cut(tmp_path: Path) -> None:
    for i in range(MAX_CANDIDATES + 3):
        _run(tmp_path, f"sweep-{i:02d}", float(i))
    with pytest.raises(ConfigError, match=r"sweep-09 \(and 3 more\)"):
        resolve_ref(tmp_path, "sweep")


def test_a_directory_without_a_journal_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "runs" / "claimed-000000").mkdir(parents=True)
    _run(tmp_path, "claimed-111111", 1.0)
    assert resolve_ref(tmp_path, "claimed") == "claimed-111111"
