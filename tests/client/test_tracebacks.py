"""Failures recorded where they happened (issue 13, item 4): the traceback a failed rank's BYE carries,
and the ``rank_failed`` event the aggregator makes of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client.endings import MAX_TRACEBACK_BYTES, Ending
from tests.client.helpers import open_store


def _raise_here(msg: str) -> None:
    raise ValueError(msg)


def _caught(msg: str) -> ValueError:
    try:
        _raise_here(msg)
    except ValueError as e:
        return e
    raise AssertionError("unreachable")


def _events(store_dir: Path) -> tuple[dict[str, Any], list[tuple[float, str, int | None, str]]]:
    s = open_store(store_dir)
    try:
        info = s.run_info()
        assert info.report is not None
        return info.report, s.events()
    finally:
        s.close()


def test_a_failure_by_an_exception_carries_its_redacted_traceback() -> None:
    e = Ending(["tok-abcdef-123"])
    e.mark_exception(_caught("token tok-abcdef-123 at http://u:pw-1234@host refused"))
    p = e.payload()
    assert p["ending"] == "failed" and p["reason"].startswith("ValueError: token ***")
    tb = p["traceback"]
    assert tb.startswith("Traceback (most recent call last):") and "in _raise_here" in tb
    assert "raise ValueError(msg)" in tb
    assert "tok-abcdef-123" not in tb and "pw-1234" not in tb and "***" in tb
    e.mark_exception(_caught("a second one"))  # the first failure stays, traceback and all
    assert e.payload()["traceback"] == tb


def test_a_long_traceback_keeps_its_last_16_kib() -> None:
    e = Ending()
    e.mark_exception(_caught("x" * 50_000 + " the end"))
    tb = e.payload()["traceback"]
    assert len(tb.encode()) <= MAX_TRACEBACK_BYTES
    assert tb.startswith("[... ") and "cut ...]" in tb and tb.rstrip().endswith("the end")


def test_endings_without_an_exception_carry_no_traceback() -> None:
    e = Ending()
    e.mark("failed", "the data loader gave up")
    assert "traceback" not in e.payload()
    e2 = Ending()
    e2.mark_exception(KeyboardInterrupt())
    assert e2.payload()["ending"] == "interrupted" and "traceback" not in e2.payload()
    e3 = Ending()
    e3.mark_exception(ValueError("never raised"))  # no traceback to show
    assert "traceback" not in e3.payload()


def test_run_fail_with_an_exception_records_a_rank_failed_event_with_its_traceback(store_dir: Path) -> None:
    run = coordinator.init_run()
    run.log({"a": 1.0}, step=0)
    run.fail(_caught("diverged at step 7"))
    run.stop()
    report, events = _events(store_dir)
    assert report["failed_ranks"] == {"0": "ValueError: diverged at step 7"}
    [(_, _, rank, detail)] = [e for e in events if e[1] == "rank_failed"]
    d = json.loads(detail)
    assert rank == 0 and d["type"] == "ValueError" and d["message"] == "diverged at step 7"
    assert d["reason"] == "ValueError: diverged at step 7"
    assert "in _raise_here" in d["traceback"] and "raise ValueError(msg)" in d["traceback"]


def test_run_fail_with_text_records_the_reason_without_a_type(store_dir: Path) -> None:
    run = coordinator.init_run()
    run.fail("the data loader gave up: x")
    run.stop()
    _, events = _events(store_dir)
    [(_, _, _, detail)] = [e for e in events if e[1] == "rank_failed"]
    assert json.loads(detail) == {
        "type": None,
        "message": "the data loader gave up: x",
        "reason": "the data loader gave up: x",
        "traceback": None,
    }


def test_a_with_block_left_by_an_exception_sends_the_traceback(store_dir: Path) -> None:
    with pytest.raises(RuntimeError), coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise RuntimeError("boom in the block")
    _, events = _events(store_dir)
    [(_, _, _, detail)] = [e for e in events if e[1] == "rank_failed"]
    d = json.loads(detail)
    assert d["type"] == "RuntimeError" and d["message"] == "boom in the block"
    assert 'raise RuntimeError("boom in the block")' in d["traceback"]


def test_a_clean_run_has_no_rank_failed_event(store_dir: Path) -> None:
    with coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
    _, events = _events(store_dir)
    assert not [e for e in events if e[1] == "rank_failed"]


def test_the_largest_goodbye_is_accepted_by_a_real_aggregator(store_dir: Path) -> None:
    """A 4 KiB reason and a 16 KiB traceback of multi-byte characters fit the BYE's limit."""
    run = coordinator.init_run()
    run.fail(_caught("é" * 60_000))
    run.stop()
    report, events = _events(store_dir)
    assert report["failed_ranks"]["0"].startswith("ValueError: éé")
    [(_, _, _, detail)] = [e for e in events if e[1] == "rank_failed"]
    tb = json.loads(detail)["traceback"]
    assert MAX_TRACEBACK_BYTES - 4 <= len(tb.encode()) <= MAX_TRACEBACK_BYTES
