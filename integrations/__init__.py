"""Integrations of coordinator with training frameworks (imported lazily, extras named on error)."""

from __future__ import annotations

__all__: list[str] = []
