"""What ``coordinator show`` prints for a series in a terminal: sparklines and short numbers.

Pure functions (no I/O): ``show`` keeps the raw values in ``--json``. Events and incarnation
labels, which the web UI shows too, are :mod:`coordinator.core.events`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["BLOCKS", "number", "sparkline"]

BLOCKS = "▁▂▃▄▅▆▇█"
"""The eight heights of a sparkline, lowest first."""


def sparkline(values: Iterable[float | None]) -> str:
    """One block character per value, scaled from the smallest to the largest (a gap: a space).

    A flat series is a row of the middle block; infinities are drawn as the highest/lowest block.
    """
    vals = list(values)
    real = [v for v in vals if v is not None and math.isfinite(v)]
    if not real:
        return "".join(" " if v is None or math.isnan(v) else BLOCKS[-1 if v > 0 else 0] for v in vals)
    lo, hi = min(real), max(real)
    top = len(BLOCKS) - 1
    out = []
    for v in vals:
        if v is None or math.isnan(v):
            out.append(" ")
        elif not math.isfinite(v):
            out.append(BLOCKS[top if v > 0 else 0])
        elif hi == lo:
            out.append(BLOCKS[top // 2])
        else:
            out.append(BLOCKS[round((v - lo) / (hi - lo) * top)])
    return "".join(out)


def number(v: float | None) -> str:
    """A value in at most about 10 characters: ``0.02131``, ``1.235e+06``, ``-`` for none."""
    return "-" if v is None else f"{v:.4g}"
