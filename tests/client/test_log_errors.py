"""A rejected ``log()`` raises its TypeError/ValueError alone: no internal error chained to it."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

import coordinator
from tests.untyped import bad


class _NotANumber:
    """``float()`` of it fails inside the value check (an internal error the user need not see)."""

    def __float__(self) -> float:
        raise ValueError("__float__ refused")


@pytest.mark.parametrize(
    ("data", "exc"),
    [
        ({"loss": "0.5"}, TypeError),
        ({"loss": 1.0, "acc": [1.0, 2.0]}, TypeError),
        ({"loss": _NotANumber()}, TypeError),
        ({"loss": 10**400}, ValueError),
        ({"a//b": 1.0}, ValueError),
        ({5: 1.0}, TypeError),
    ],
)
def test_a_rejected_log_has_no_chained_traceback(store_dir: Path, data: dict[object, object], exc: type) -> None:
    with coordinator.init_run(project="t", mode="offline") as run:
        run.log({"loss": 0.25}, step=0)  # the key exists: the fast path fails first, then the precise check
        with pytest.raises(exc) as info:
            run.log(bad(data), step=1)
        e = info.value
        assert e.__cause__ is None and e.__suppress_context__, (e.__cause__, e.__context__)
        text = "".join(traceback.format_exception(e))
        assert "During handling of the above exception" not in text
        assert "The above exception was the direct cause" not in text
        assert "__float__ refused" not in text
        assert text.count("Traceback (most recent call last)") == 1


@pytest.mark.parametrize("call", ["dict", "scalar", "append", "text"])
def test_a_step_past_int64_is_a_value_error_alone_and_nothing_else_is_lost(store_dir: Path, call: str) -> None:
    """The hot paths take any non-negative int without a bound check; one past 2**63-1 fails
    where it is appended, and must still reach the caller as the ValueError a bad step gets."""
    big = 2**63
    with coordinator.init_run(project="t") as run:
        run.log({"a": 1.0, "b": 2.0}, step=0)  # a frame of (a, b)
        run["c"].append(1.0, step=0)
        run["notes"].append("first", step=0)
        with pytest.raises(ValueError, match=r"2\*\*63-1") as info:
            if call == "dict":
                run.log({"a": 3.0, "b": 4.0}, step=big)
            elif call == "scalar":
                run.log({"c": 3.0}, step=big)
            elif call == "append":
                run["c"].append(3.0, step=big)
            else:
                run["notes"].append("second", step=big)
        e = info.value
        assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), (e.__cause__, e.__context__)
        run.log({"a": 5.0, "b": 6.0}, step=1)
        run["c"].append(7.0, step=1)
        run.wait(30)
        assert run.stats()["acked"] == 7  # 4 before (a, b, c and a text), 3 after: nothing of the refused call
