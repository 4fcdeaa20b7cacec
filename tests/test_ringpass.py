"""CI's pass over the socket (``tests/ringpass.py``): the first pass records the tests that took a ring, the
second runs those and refuses a list it cannot trust."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ringpass import LOG_ENV

ROOT = Path(__file__).resolve().parent.parent

_SAMPLE = """
import os
from pathlib import Path

import coordinator
from coordinator.transport.ring import RingWriter


def test_no_ring():
    pass


def test_a_ring_made_and_removed():
    path = Path(os.environ["COORDINATOR_RING_DIR"]) / "coordinator-sample.ring"
    RingWriter(path, 1 << 16).close()
    path.unlink()


def test_a_run(tmp_path):
    with coordinator.init_run(project="p", settings=coordinator.Settings(dir=str(tmp_path))) as run:
        run.log({"a": 1.0}, step=0)
        run.wait(30)
        took = "ring" if run._ring is not None and run._ring.on else "socket"
    with open(os.environ["SAMPLE_PATHS"], "a") as f:
        print(took, file=f)


def test_a_run_over_the_socket(tmp_path, socket_path):
    with coordinator.init_run(project="p", settings=coordinator.Settings(dir=str(tmp_path))) as run:
        run.log({"a": 1.0}, step=0)
        assert run._ring is None
"""


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A suite of four tests with this repository's conftest (its ring directory and the plugin)."""
    d = tmp_path / "sample"
    d.mkdir()
    (d / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    (d / "test_sample.py").write_text(_SAMPLE)
    return d


def _pytest(suite: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environ.pop(LOG_ENV, None)
    environ.update(env)
    # The sample's own directory is its rootdir (node ids "test_sample.py::..."), wherever the checkout is: from a
    # checkout under /tmp, pytest would take the common ancestor of the working directory and the sample (/tmp).
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", f"--rootdir={suite}"]
    return subprocess.run(
        [*argv, str(suite), *args],
        cwd=suite,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_first_pass_lists_the_tests_that_took_a_ring_and_the_second_runs_only_those(
    sample: Path, tmp_path: Path
) -> None:
    log, paths = tmp_path / "ring-tests", tmp_path / "paths"
    first = _pytest(sample, **{LOG_ENV: str(log), "COORDINATOR_RINGS": "1", "SAMPLE_PATHS": str(paths)})
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(log.read_text().splitlines()) == [
        "test_sample.py::test_a_ring_made_and_removed",
        "test_sample.py::test_a_run",
    ]
    second = _pytest(sample, f"--only-ring-tests={log}", COORDINATOR_RINGS="0", SAMPLE_PATHS=str(paths))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 passed, 2 deselected" in second.stdout, second.stdout
    assert paths.read_text().split() == ["ring", "socket"]  # the run took its ring, then the socket


def test_a_missing_empty_or_stale_list_is_a_usage_error(sample: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    stale = tmp_path / "stale"
    stale.write_text("test_sample.py::test_a_ring_made_and_removed\ntest_sample.py::test_renamed\n")
    for path, says in ((tmp_path / "missing", "no such file"), (empty, "lists no test"), (stale, "not collected")):
        r = _pytest(sample, f"--only-ring-tests={path}")
        assert r.returncode == pytest.ExitCode.USAGE_ERROR and says in r.stderr, (path, r.stdout, r.stderr)
