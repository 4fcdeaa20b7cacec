"""The README's guarantees table names tests that exist, and in CI a skipped guarantee test fails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.guarantee import README, guarantee_tests

ROOT = Path(__file__).resolve().parent.parent


def test_every_row_of_the_guarantees_table_names_an_existing_test() -> None:
    text = README.read_text()
    start = text.index("## Guarantees")
    section = text[start : text.index("\n## ", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| promise")]
    assert rows and all(re.search(r"`test_\w+`", r) for r in rows), "a promise without a test"
    defined = {
        m.group(1)
        for f in (ROOT / "tests").rglob("test_*.py")
        for m in re.finditer(r"^(?:async )?def (test_\w+)", f.read_text(), re.M)
    }
    missing = guarantee_tests() - defined
    assert not missing, f"the README names tests that do not exist: {sorted(missing)}"


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skips.py"
    test.write_text(
        "import pytest\n\n"
        "@pytest.mark.guarantee\n"
        "def test_needs_root():\n"
        "    pytest.skip('cannot mount a tmpfs here')\n\n"
        "def test_other():\n"
        "    pytest.skip('not a guarantee')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CI": ci, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.guarantee",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-q",
            "-n",
            "0",
            "--rootdir",
            str(tmp_path),
            "-c",
            "/dev/null",
            str(test),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_in_ci_a_skipped_guarantee_test_fails_the_run(tmp_path: Path) -> None:
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "1 failed, 1 skipped" in ci.stdout and "guarantee test skipped in CI" in ci.stdout, ci.stdout
    local = _run(tmp_path, "")
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout + local.stderr
