"""Item 2: a run's directory and everything in it are private to its owner (dirs 0700, files 0600).

A real run (aggregator process, a forwarder, an uploaded file) is inspected while it is open,
when the journal's -wal and -shm files exist, and again after it ended.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _modes(run_dir: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(run_dir.stat().st_mode)}
    for p in run_dir.rglob("*"):
        found[str(p.relative_to(run_dir))] = stat.S_IMODE(p.lstat().st_mode)
    return found


def _not_private(modes: dict[str, int], run_dir: Path) -> list[str]:
    bad = []
    for name, mode in modes.items():
        want = 0o700 if (run_dir / name).is_dir() else 0o600
        if mode != want:
            bad.append(f"{name}: {oct(mode)} (want {oct(want)})")
    return bad


def test_a_run_directory_and_all_its_files_are_owner_only(store_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import coordinator

    old = os.umask(0o022)  # the usual umask: what is not made private explicitly is 0644/0755
    try:
        src = tmp_path / "weights.bin"
        src.write_bytes(b"w" * 4096)
        logdir = tmp_path / "tb"
        with coordinator.init_run(backend="tensorboard", backend_options={"logdir": str(logdir)}) as run:
            for s in range(200):
                run.log({"loss": s / 10}, step=s)
            run["model/weights"].upload(src)
            run.wait(60)
            assert run.store_path is not None
            run_dir = Path(run.store_path).parent
            live = _modes(run_dir)
        ended = _modes(run_dir)
    finally:
        os.umask(old)
    names = set(live) | set(ended)
    assert {"run.db", "run.db-wal", "run.db-shm"} <= set(live), sorted(live)
    assert any(n.startswith("artifacts/") and n.count("/") == 2 for n in names), sorted(names)
    assert any(n.startswith("forward-tensorboard") for n in names), sorted(names)
    assert _not_private(live, run_dir) == []
    assert _not_private(ended, run_dir) == []
