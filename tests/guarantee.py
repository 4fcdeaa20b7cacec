"""Guarantee tests must run: in CI (``CI=true``) a skipped test that proves a README guarantee fails.

The tests named in README.md's guarantees table (and any marked ``@pytest.mark.guarantee``) are
guarantee tests. Some skip where the machine refuses what they need (a tmpfs mount, a network
namespace); CI runs as root, so there a skip means the promise went unproved, and the run fails.
Loaded by tests/conftest.py for every run (it acts only when ``CI=true``); the marker is
registered in pyproject.toml; ``tests/test_guarantees.py`` checks that every test the table
names exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path

import pytest

__all__ = ["README", "guarantee_tests"]

README = Path(__file__).resolve().parent.parent / "README.md"


def guarantee_tests(readme: Path = README) -> set[str]:
    """The test function names the README's guarantees table names."""
    text = readme.read_text()
    start = text.index("## Guarantees")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return set(re.findall(r"`(test_\w+)`", "\n".join(table)))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    names = guarantee_tests()
    for item in items:
        if getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.guarantee)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if rep.skipped and _in_ci() and item.get_closest_marker("guarantee") is not None and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"guarantee test skipped in CI (CI=true), so its README promise went unproved: {reason}"
