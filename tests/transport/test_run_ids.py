"""Run ids are short and readable: ``<slug of the name, else the project>-<6 hex>``."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.journal.store import run_dir
from coordinator.transport.discovery import new_run_id, slug


def test_slug() -> None:
    assert slug("DDP Spirals") == "ddp-spirals"
    assert slug("  résumé: v2 / lr=0.1 ") == "r-sum-v2-lr-0-1"
    assert slug("a" * 40) == "a" * 24
    assert slug("abc-" + "x" * 30, limit=4) == "abc"  # no trailing dash after the cut
    assert slug("ÄÖÜ") == ""


def test_new_run_id(tmp_path: Path) -> None:
    rid = new_run_id("DDP Spirals")
    assert re.fullmatch(r"ddp-spirals-[0-9a-f]{6}", rid), rid
    assert re.fullmatch(r"run-[0-9a-f]{6}", new_run_id(None))
    assert re.fullmatch(r"run-[0-9a-f]{6}", new_run_id("???"))
    assert len({new_run_id("x") for _ in range(200)}) >= 199  # 24 random bits each
    run_dir(tmp_path, new_run_id("../etc"))  # always a safe directory name
