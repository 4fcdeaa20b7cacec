"""Shared fixtures: an isolated store per test, and a check that nothing is left running."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# In CI (CI=true) a skipped test that proves a README guarantee fails the run: tests/guarantee.py.
pytest_plugins = ["tests.guarantee", "tests.ringpass"]

# Tests count points exactly: the system-metrics sampler (on by default, every 10 s) is off unless a
# test turns it on (tests/client/test_system.py, tests/integration/test_system_metrics.py).
os.environ.setdefault("COORDINATOR_SYSTEM_METRICS_INTERVAL_S", "0")


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


@pytest.fixture(scope="session", autouse=True)
def private_ring_dir() -> Iterator[Path]:
    """This session's rings (``Settings.rings``) live in a fresh directory, not ``/dev/shm``: a test that
    leaves one behind is found (:func:`no_leftover_rings`), and nothing is left in the machine's memory."""
    saved = os.environ.get("COORDINATOR_RING_DIR")
    base = Path(tempfile.mkdtemp(prefix="rings-"))
    os.environ["COORDINATOR_RING_DIR"] = str(base)
    try:
        yield base
    finally:
        if saved is None:
            os.environ.pop("COORDINATOR_RING_DIR", None)
        else:
            os.environ["COORDINATOR_RING_DIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leftover_rings(private_ring_dir: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a ring behind (a closed rank's ring is removed once the aggregator read it).

    Also says whether the test took a ring (tests/ringpass.py, for CI's pass over the socket): the directory's
    modification time is set to zero first, and a ring made or removed in it moves it."""
    before = set(private_ring_dir.iterdir())
    os.utime(private_ring_dir, ns=(0, 0))
    yield
    if private_ring_dir.stat().st_mtime_ns != 0:
        from tests.ringpass import record  # here: imported first as a plugin (pytest_plugins), its asserts rewritten

        record(request.node.nodeid)
    left = sorted(set(private_ring_dir.iterdir()) - before)
    for p in left:
        p.unlink(missing_ok=True)
    assert not left, f"rings left behind: {[p.name for p in left]}"


@pytest.fixture
def socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of this test (its subprocesses too) send every point over the socket, whatever
    ``COORDINATOR_RINGS`` says: for a test of that path's own machinery (the buffer's frames, the
    sender's cuts, copies and flushes, backpressure, spools) or of a job killed whole whose rings
    would stay for ``coordinator sync``. The environment reaches a test's subprocesses too, which
    ``Settings(rings=False)`` in the test would not."""
    monkeypatch.setenv("COORDINATOR_RINGS", "0")


@pytest.fixture
def ring_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of this test (its subprocesses too) take rings, whatever ``COORDINATOR_RINGS`` says: for a test of
    the rings' own machinery, which must run in CI's socket step (``COORDINATOR_RINGS=0``, ``.ci/run``) as in
    the default one. ``Settings(rings=True)`` would not do: a field equal to its default does not override the
    environment."""
    monkeypatch.setenv("COORDINATOR_RINGS", "1")


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir() -> Iterator[Path]:
    """This session's sockets and rendezvous files live in a fresh base directory (not the shared
    ``/tmp/coordinator-<uid>``), which must be empty again at the end: nothing left in the system
    temp directory."""
    saved = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(tempfile.mkdtemp(prefix="ct-"))  # short: an ipc socket path has ~100 characters
    os.environ["XDG_RUNTIME_DIR"] = str(base)
    try:
        yield base / f"coordinator-{os.getuid()}"
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        left = sorted(str(p) for p in base.rglob("*") if p.name != f"coordinator-{os.getuid()}")
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the test session left files in its runtime directory: {left}"


@pytest.fixture(autouse=True)
def no_leftover_files(private_runtime_dir: Path) -> Iterator[None]:
    """Fail a test that leaves a socket directory or rendezvous file behind."""
    before = set(private_runtime_dir.iterdir()) if private_runtime_dir.is_dir() else set()
    yield
    after = set(private_runtime_dir.iterdir()) if private_runtime_dir.is_dir() else set()
    left = sorted(str(p) for p in after - before)
    for p in after - before:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    assert not left, f"files left behind in the runtime directory: {left}"
