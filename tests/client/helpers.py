"""Helpers of the client tests."""

from __future__ import annotations

from pathlib import Path

from coordinator.journal.store import LocalStore, list_runs


def open_store(store_dir: Path) -> LocalStore:
    """The only run under ``store_dir``, opened read-only."""
    [info] = list_runs(store_dir)
    return LocalStore(info.path / "run.db", readonly=True)
