"""CI's second pass over the socket runs the tests whose runs took a ring in the first pass, not every test.

Rings are the default (``Settings.rings``), so ``.ci/run``'s first pass (the README's test command) takes
every run that can have one through one; its second pass runs the suite again with
``COORDINATOR_RINGS=0``, the path of a rank on another node and of ``rings=False``. A test none of whose
runs took a ring in the first pass (it starts no run, its runs went over the socket anyway, or it tests
something else) would only repeat itself there, so the second pass leaves it out:

* ``COORDINATOR_TESTS_RING_LOG=FILE`` (set by ``.ci/run`` around the first pass): each test that took a
  ring appends its node id to ``FILE``. ``tests/conftest.py``'s ``no_leftover_rings`` sees it: the
  session's ring directory (``COORDINATOR_RING_DIR``, which reaches the test's subprocesses) has its
  modification time set to zero before each test, and any ring made or removed in it during the test
  moves it.
* ``--only-ring-tests FILE``: run only the tests ``FILE`` lists. A missing or empty file, or one naming a
  test this collection does not have, is a usage error: the second pass never runs nothing, or less
  than it should, in silence.

Loaded by tests/conftest.py for every run; without the variable and the option it does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["LOG_ENV", "record"]

LOG_ENV = "COORDINATOR_TESTS_RING_LOG"


def record(nodeid: str) -> None:
    """Append ``nodeid`` to the file ``COORDINATOR_TESTS_RING_LOG`` names, if it names one (one line, one
    ``write`` in append mode: the xdist workers' lines do not interleave)."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(nodeid + "\n")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--only-ring-tests",
        metavar="FILE",
        default=None,
        help="run only the tests FILE lists (one node id a line: those whose runs took a ring, recorded by a "
        f"first pass with {LOG_ENV}=FILE)",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("--only-ring-tests")
    if path is None:
        return
    try:
        listed = {line for line in Path(path).read_text().splitlines() if line}
    except FileNotFoundError:
        raise pytest.UsageError(f"--only-ring-tests {path}: no such file (did the first pass record it?)") from None
    if not listed:
        raise pytest.UsageError(f"--only-ring-tests {path}: it lists no test (the first pass recorded none)")
    unknown = listed - {item.nodeid for item in items}
    if unknown:
        raise pytest.UsageError(f"--only-ring-tests {path}: {len(unknown)} tests not collected, e.g. {min(unknown)}")
    keep = [item for item in items if item.nodeid in listed]
    drop = [item for item in items if item.nodeid not in listed]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
