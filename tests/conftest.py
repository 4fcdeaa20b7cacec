"""Shared fixtures: an isolated store per test, and a check that nothing is left running."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store root, also exported as COORDINATOR_DIR for child processes."""
    d = tmp_path / "store"
    monkeypatch.setenv("COORDINATOR_DIR", str(d))
    for var in (
        "COORDINATOR_ENDPOINT",
        "COORDINATOR_RUN_ID",
        "COORDINATOR_MODE",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "TORCHELASTIC_RUN_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    return d


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves a coordinator thread or a child process behind."""
    before_threads = {t.ident for t in threading.enumerate()}
    yield
    me = psutil.Process(os.getpid())
    children = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    threads = [t for t in threading.enumerate() if t.ident not in before_threads and t.name.startswith("coordinator")]
    for p in children:
        p.kill()
    assert not children, f"child processes left behind: {[(p.pid, p.cmdline()) for p in children]}"
    assert not threads, f"threads left behind: {[t.name for t in threads]}"
