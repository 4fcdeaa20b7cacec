"""A fetched series as a pandas DataFrame (``Handle.fetch_values(..., as_frame=True)``, as Neptune's ``fetch_values``).

pandas is optional (the ``export`` extra); it is imported only when a frame is asked for.
"""

from __future__ import annotations

import importlib
from array import array
from typing import Any

from coordinator.errors import missing_extra

__all__ = ["FRAME_COLUMNS", "pandas", "to_frame"]

FRAME_COLUMNS = ("step", "value")
"""The frame's columns, in order."""


def pandas() -> Any:
    """The pandas module (untyped, so handed out as a module object).

    Raises:
        MissingExtraError: pandas is not installed.
    """
    try:
        return importlib.import_module("pandas")
    except ImportError as e:
        raise missing_extra("fetch_values(as_frame=True)", "export", e) from e


def to_frame(pd: Any, steps: array[int], values: array[float] | list[str]) -> Any:
    """A DataFrame with columns ``step`` (int64) and ``value`` (float64, or text for a text series)."""
    import numpy as np

    step_col = np.frombuffer(steps, dtype=np.int64).copy()  # a copy: the frame outlives the page buffers
    value_col: Any = (
        pd.Series(values, dtype="object")
        if isinstance(values, list)
        else np.frombuffer(values, dtype=np.float64).copy()
    )
    return pd.DataFrame({"step": step_col, "value": value_col})
