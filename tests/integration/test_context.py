"""Run context in real jobs (issue 13, items 2 and 4): a 2-rank torchrun job in a git repository made
here, whose rank 1 dies of an exception mid-run, read back with ``coordinator show --json``; and
an exception in a background thread."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.client.helpers import git
from tests.integration._torchrun import ROOT, WORKERS, torchrun

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

_SECRET = "sk-live-0123456789abcdef"


def _repo(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The jobs' working directory (the store's parent) as a git repository holding the script."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = store_dir.parent
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(repo.parent))
    git(repo, "init", "-q", "-b", "main")
    shutil.copy(WORKERS / "context_rank.py", repo / "train.py")
    (repo / ".gitignore").write_text("store/\nout/\n")
    git(repo, "add", "train.py", ".gitignore")
    git(repo, "commit", "-q", "-m", "train")
    git(repo, "remote", "add", "origin", f"https://ci:{_SECRET}@git.example.com/org/train.git")
    (repo / "out").mkdir()
    return repo


def _show(store_dir: Path) -> dict[str, Any]:
    p = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--dir", str(store_dir), "show", "latest", "--json"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def test_a_rank_raising_mid_run_is_shown_first_with_its_traceback_and_the_run_has_its_context(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(store_dir, monkeypatch)
    out = repo / "out"
    res = torchrun(
        str(repo / "train.py"), "--out", str(out), "--fail-rank", "1", "--api-key", _SECRET, nproc=2, store=store_dir
    )
    assert res.returncode != 0, "rank 1 raised: the job must fail"
    assert "diverged at step 7" in res.stderr

    data = _show(store_dir)
    assert data["state"] == "failed", data["report"]
    [f] = [x for x in data["failures"] if x["rank"] == 1]
    assert f["reason"] == "ValueError: diverged at step 7"
    assert f["type"] == "ValueError" and f["message"] == "diverged at step 7"
    assert 'raise ValueError("diverged at step 7")' in f["traceback"]
    assert "train.py" in f["traceback"] and "in step_of_training" in f["traceback"]
    assert data["report"]["failed_ranks"]["1"] == "ValueError: diverged at step 7"
    assert [e["rank"] for e in data["events"] if e["kind"] == "rank_failed"] == [1]

    fields = data["fields"]
    assert fields["sys/git/commit"] == git(repo, "rev-parse", "HEAD")
    assert fields["sys/git/branch"] == "main" and fields["sys/git/dirty"] is False
    assert fields["sys/git/remote"] == "https://ci:***@git.example.com/org/train.git"
    assert "sys/git/diff" not in fields
    assert fields["sys/env/torch"] and fields["sys/env/python"] and fields["sys/env/packages_hash"]
    for r in (0, 1):
        assert fields[f"sys/ranks/{r}/pid"] == int((out / f"rank{r}.pid").read_text())
        assert fields[f"sys/ranks/{r}/launcher"] == "torchrun"
        assert fields[f"sys/ranks/{r}/host"]
        argv = fields[f"sys/ranks/{r}/argv"]
        assert "train.py" in argv and "--api-key '***'" in argv, argv
    assert _SECRET not in json.dumps(data)


def test_an_exception_in_a_background_thread_is_recorded_with_its_traceback(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(store_dir, monkeypatch)
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# changed\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), RANK="0", WORLD_SIZE="1")
    p = subprocess.run(
        [sys.executable, str(repo / "train.py"), "--out", str(repo / "out"), "--thread"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 1 and "ZeroDivisionError" in p.stderr, p.stderr[-3000:]
    data = _show(store_dir)
    assert data["state"] == "failed"
    [f] = data["failures"]
    assert f["rank"] == 0 and f["type"] == "ZeroDivisionError" and f["message"] == "division by zero"
    assert f["reason"] == "uncaught in thread loader: ZeroDivisionError: division by zero"
    assert "in loader" in f["traceback"] and "_ = 1 / 0" in f["traceback"]
    fields = data["fields"]
    assert fields["sys/git/dirty"] is True and fields["sys/ranks/0/launcher"] == "plain"
    diff = Path(fields["sys/git/diff"][4]).read_text()
    assert diff == git(repo, "diff", "HEAD") + "\n" and "+# changed" in diff
