"""``coordinator runs``: the columns stay aligned whatever the ids, names and projects."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator, AggregatorConfig
from coordinator.cli.main import main
from coordinator.journal.store import run_dir


def _run(root: Path, run_id: str, project: str, name: str) -> None:
    cfg = AggregatorConfig(
        run_id=run_id, store_path=str(run_dir(root, run_id) / "run.db"), world_size=1, project=project, name=name
    )
    Aggregator(cfg).finalize()


def test_columns_are_aligned_whatever_the_id_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, "a-1", "p", "short")
    _run(tmp_path, "ddp-spirals-3f9a2c", "examples", "ddp-spirals")
    _run(tmp_path, "te-8e9e6c7a-02fd-4679-954a-e9adeb971e66-0", "a-very-long-project-name-indeed", "n" * 60)
    assert main(["--dir", str(tmp_path), "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    header = lines[0]
    for col in ("PROJECT", "NAME", "STATE", "CREATED", "TAGS"):  # left-aligned: each starts where its title does
        at = header.index(col)
        for line in lines[1:]:
            assert line[at - 2 : at] == "  " and line[at] != " ", (col, line)
    for col in ("RANKS", "POINTS", "SIZE"):  # right-aligned: each ends where its title does
        end = header.index(col) + len(col)
        for line in lines[1:]:
            assert line[end - 1] != " " and line[end] == " ", (col, line)
    assert lines[3].startswith("te-8e9e6c7a-02fd-4679-954a-e9adeb971e66-0  ")  # an id is never cut
    assert "n" * 31 + "…" in lines[3] and "n" * 33 not in lines[3]
