"""Helpers of the client tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from coordinator.journal.store import LocalStore, list_runs


def open_store(store_dir: Path) -> LocalStore:
    """The only run under ``store_dir``, opened read-only."""
    [info] = list_runs(store_dir)
    return LocalStore(info.path / "run.db", readonly=True)


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity (bounded); its stdout, stripped."""
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
