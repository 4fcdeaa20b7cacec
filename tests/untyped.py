"""A value the type checker lets through: for tests that pass a wrong type on purpose.

A test that checks the ``TypeError`` (or ``ConfigError``) for a badly typed argument must hand
over exactly that argument. Passing it through :func:`bad` types it ``Any`` at the call, so the
checker accepts the call without a suppression comment (docs/conventions.md), and the value
itself is unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bad"]


def bad(value: object) -> Any:
    """``value`` itself, typed ``Any``: a deliberately wrong argument."""
    return value
