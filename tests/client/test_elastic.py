"""Under torchrun: a restarted worker group continues its job's run; a fresh job with the same
rendezvous id gets a new one; concurrent rank 0s never lose each other's records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.client import elastic
from coordinator.client.elastic import MAX_RECORDS, elastic_run_id, index_path
from coordinator.errors import ConfigError
from coordinator.transport.discovery import Placement

ROOT = Path(__file__).resolve().parents[2]


def _placement(restart: int) -> Placement:
    return Placement(rank=0, world_size=2, local_rank=0, restart_count=restart, local_world_size=2)


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "nightly/job 7")
    monkeypatch.setattr(elastic, "_calls", {})


def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted worker is a new process: its init_run calls are counted from 0 again."""
    monkeypatch.setattr(elastic, "_calls", {})


def test_outside_torchrun_there_is_no_elastic_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert elastic_run_id(tmp_path, _placement(0), "x") is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert elastic_run_id(tmp_path, _placement(0), "x") is None
    assert not (tmp_path / "elastic").exists()


@pytest.mark.usefixtures("job")
def test_restart_continues_and_a_fresh_job_gets_a_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = elastic_run_id(tmp_path, _placement(0), "DDP Spirals")
    assert first is not None and first.startswith("ddp-spirals-") and len(first) == len("ddp-spirals-") + 6
    second_call = elastic_run_id(tmp_path, _placement(0), "DDP Spirals")  # a second init_run in the process
    assert second_call != first
    _fresh_process(monkeypatch)
    assert elastic_run_id(tmp_path, _placement(1), "DDP Spirals") == first  # the restart continues it
    assert elastic_run_id(tmp_path, _placement(1), "DDP Spirals") == second_call
    _fresh_process(monkeypatch)
    again = elastic_run_id(tmp_path, _placement(0), "DDP Spirals")  # a new job, same --rdzv-id
    assert again not in (first, second_call)
    _fresh_process(monkeypatch)
    assert elastic_run_id(tmp_path, _placement(2), "DDP Spirals") == again
    index = json.loads(index_path(tmp_path, "nightly/job 7", 0).read_text())
    assert index["rdzv_id"] == "nightly/job 7" and index["call"] == 0
    assert [r["run_id"] for r in index["runs"]] == [first, again]
    assert index["runs"][0]["agent_pid"] == os.getppid()
    assert index_path(tmp_path, "nightly/job 7", 0).stat().st_mode & 0o777 == 0o600


@pytest.mark.usefixtures("job")
def test_a_restart_prefers_its_own_agents_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = elastic_run_id(tmp_path, _placement(0), "a")
    _fresh_process(monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(elastic.os, "getppid", lambda: 1)  # another job's agent, same rendezvous id, later
        other = elastic_run_id(tmp_path, _placement(0), "a")
    _fresh_process(monkeypatch)
    assert other != mine
    assert elastic_run_id(tmp_path, _placement(1), "a") == mine


@pytest.mark.usefixtures("job")
def test_a_restart_without_a_record_starts_one_and_a_damaged_index_is_replaced(tmp_path: Path) -> None:
    path = index_path(tmp_path, "nightly/job 7", 0)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    run_id = elastic_run_id(tmp_path, _placement(3), None)
    assert run_id is not None and run_id.startswith("run-")
    assert [r["run_id"] for r in json.loads(path.read_text())["runs"]] == [run_id]


@pytest.mark.usefixtures("job")
def test_the_index_keeps_the_latest_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = []
    for _ in range(MAX_RECORDS + 2):
        _fresh_process(monkeypatch)
        ids.append(elastic_run_id(tmp_path, _placement(0), "a"))
    runs = json.loads(index_path(tmp_path, "nightly/job 7", 0).read_text())["runs"]
    assert [r["run_id"] for r in runs] == ids[-MAX_RECORDS:]


_CLAIM = """
import sys
from pathlib import Path
from coordinator.client.elastic import elastic_run_id
from coordinator.transport.discovery import Placement
p = Placement(rank=0, world_size=1, local_rank=0, restart_count=0)
print(elastic_run_id(Path(sys.argv[1]), p, "race"))
"""


def test_concurrent_rank0s_lose_no_record(tmp_path: Path) -> None:
    """Eight fresh jobs' rank 0s (real processes) claim runs of one rendezvous id at once: every claim is kept."""
    env = dict(os.environ, TORCHELASTIC_RUN_ID="shared", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", _CLAIM, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    got = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        got.append(out.strip())
    assert len(set(got)) == 8
    runs = json.loads(index_path(tmp_path, "shared", 0).read_text())["runs"]
    assert sorted(r["run_id"] for r in runs) == sorted(got)


def test_a_fresh_job_never_takes_the_id_of_a_stored_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: None
) -> None:
    """Ids are 6 random hex digits: one that clashes with a stored run (or a record) is drawn again."""
    from coordinator.journal.paths import run_dir

    run_dir(tmp_path, "x-aaaaaa").mkdir(parents=True)
    drawn = iter(["x-aaaaaa", "x-aaaaaa", "x-bbbbbb"])
    monkeypatch.setattr(elastic, "new_run_id", lambda label: next(drawn))
    assert elastic_run_id(tmp_path, _placement(0), "x") == "x-bbbbbb"
    _fresh_process(monkeypatch)  # a fresh job with the same rendezvous id: its index records x-bbbbbb
    monkeypatch.setattr(elastic, "new_run_id", lambda label: "x-bbbbbb")  # recorded, not stored yet
    with pytest.raises(ConfigError, match="no unused run id"):
        elastic_run_id(tmp_path, _placement(0), "x")


def test_outside_torchrun_a_new_run_id_never_names_a_stored_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain (not torchrun) job draws its id through the same check: a clash is drawn again."""
    from coordinator.client.elastic import unused_run_id
    from coordinator.journal.paths import run_dir

    run_dir(tmp_path, "y-aaaaaa").mkdir(parents=True)
    drawn = iter(["y-aaaaaa", "y-cccccc"])
    monkeypatch.setattr(elastic, "new_run_id", lambda label: next(drawn))
    assert unused_run_id(tmp_path, "y") == "y-cccccc"
