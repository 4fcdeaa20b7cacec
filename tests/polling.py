"""Waiting in a test for something another thread or process does: a bounded poll, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``pred`` every ``interval`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False
