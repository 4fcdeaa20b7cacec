"""How a rank ends (issue 11, item 13): the ending and reason its BYE carries, as the stored run shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client.delivery import ErrorQueue
from coordinator.client.endings import MAX_REASON_BYTES, Ending
from tests.client.helpers import open_store
from tests.untyped import bad


def _report(store_dir: Path) -> tuple[str, dict[str, Any]]:
    s = open_store(store_dir)
    try:
        info = s.run_info()
        assert info.report is not None
        return info.state, info.report
    finally:
        s.close()


def test_with_block_left_by_an_exception_fails_the_run_with_type_and_message(store_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="boom") as ei, coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise RuntimeError("boom")
    state, report = _report(store_dir)
    assert state == "failed"
    assert report["failed_ranks"] == {"0": "RuntimeError: boom"}
    # Rank 0's stop() reports the failed run too, as a note on the user's exception.
    assert any("closed as failed" in n for n in getattr(ei.value, "__notes__", []))


def test_keyboard_interrupt_in_a_with_block_interrupts_the_run(store_dir: Path) -> None:
    with pytest.raises(KeyboardInterrupt), coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise KeyboardInterrupt
    state, report = _report(store_dir)
    assert state == "interrupted"
    assert list(report["interrupted_ranks"]) == ["0"] and report["failed_ranks"] == {}


def test_sys_exit_zero_in_a_with_block_is_a_clean_end(store_dir: Path) -> None:
    with pytest.raises(SystemExit), coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        raise SystemExit(0)
    assert _report(store_dir)[0] == "finished"


def test_fail_marks_the_run_failed_with_a_redacted_reason_and_wins_over_an_interrupt(store_dir: Path) -> None:
    run = coordinator.init_run()
    run.log({"a": 1.0}, step=0)
    run.fail(ConnectionError("could not reach http://bob:hunter2-secret@mlflow.local:5000"))
    run.fail("a second reason is not kept")
    run.log({"a": 2.0}, step=1)  # the rank keeps running
    with pytest.raises(KeyboardInterrupt), run:
        raise KeyboardInterrupt
    state, report = _report(store_dir)
    assert state == "failed"
    reason = report["failed_ranks"]["0"]
    assert reason == "ConnectionError: could not reach http://bob:***@mlflow.local:5000"
    assert "hunter2" not in str(report)
    with pytest.raises(coordinator.ClosedError):
        run.fail("after the end")


def test_stop_after_fail_reports_the_failed_run_without_raising_it_again(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rank 0 declared the failure itself: stop() logs the run's end instead of raising DeliveryError."""
    run = coordinator.init_run()
    run.log({"a": 1.0}, step=0)
    run.fail("the data loader gave up")
    run.stop()  # no DeliveryError: the caller knows why
    assert _report(store_dir)[0] == "failed"
    assert any("closed as failed" in r.getMessage() for r in caplog.records)


def test_fail_rejects_a_reason_that_is_neither_text_nor_an_exception(store_dir: Path) -> None:
    with coordinator.init_run() as run, pytest.raises(TypeError, match="fail"):
        run.fail(bad(42))
    assert _report(store_dir)[0] == "finished"


def test_reason_is_cut_to_4_kib_and_secrets_of_the_backend_options_are_masked() -> None:
    e = Ending(["tok-abcdef-123"])
    e.mark("failed", "token tok-abcdef-123 refused; " + "é" * 5000)
    p = e.payload()
    assert p["ending"] == "failed"
    assert "tok-abcdef-123" not in p["reason"] and "***" in p["reason"]
    assert len(p["reason"].encode()) <= MAX_REASON_BYTES
    e.mark("interrupted", "later")  # a failure is never downgraded
    assert e.payload()["ending"] == "failed"


def test_errors_queued_for_wait_are_bounded_and_counted(store_dir: Path) -> None:
    """A background error on every batch for hours must not grow memory: the first 100 are kept, the rest counted."""
    run = coordinator.init_run()
    try:
        for i in range(10_000):
            run._buf.fail(coordinator.DeliveryError(f"batch {i} refused"))
        assert isinstance(run._buf.errors, ErrorQueue) and len(run._buf.errors) == 100
        with pytest.raises(coordinator.DeliveryError, match="batch 0 refused") as ei:
            run.wait(30)
        assert "9999 more error(s)" in "".join(ei.value.__notes__)
        run.wait(30)  # raised once
    finally:
        run.stop()
