"""Fixtures of the aggregator tests: a fresh in-process Aggregator."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.aggregator import Aggregator
from tests.aggregator.helpers import make_cfg


@pytest.fixture
def agg(tmp_path: Path) -> Aggregator:
    """A fresh aggregator for a 2-rank world."""
    return Aggregator(make_cfg(tmp_path))
