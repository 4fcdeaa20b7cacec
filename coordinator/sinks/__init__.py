"""Sinks: the embedded local store (the journal) and, later, adapters fed from it."""

from __future__ import annotations

__all__: list[str] = []
