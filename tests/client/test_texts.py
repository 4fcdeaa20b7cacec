"""Text series on the rank: checks at the call site, redaction, reading back (live and read-only), console capture."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client.modes import ReadOnlyRun
from coordinator.errors import ClosedError


def _settings(root: Path, **kw: Any) -> coordinator.Settings:
    return coordinator.Settings(
        dir=str(root), handle_sigterm=False, capture_env=False, system_metrics_interval_s=0, **kw
    )


def _rank0_report(run: coordinator.Run) -> dict[str, Any]:
    """Rank 0's part of the report stored with the run, read through a run opened read-only."""
    assert isinstance(run, ReadOnlyRun)
    report = run._store.run_info().report
    assert report is not None, "the run ended with a report"
    per_rank: dict[str, Any] = report["per_rank"]["0"]
    return per_rank


def test_bad_texts_and_mixed_kinds_raise_at_the_call_site_and_keep_nothing(store_dir: Path) -> None:
    with coordinator.init_run(settings=_settings(store_dir)) as run:
        run["loss"].append(1.0, step=0)
        run["gen"].append("ok", step=0)
        with pytest.raises(TypeError, match="numeric series"):
            run["loss"].append("text")
        with pytest.raises(TypeError, match="text series"):
            run["gen"].append(2.0)
        with pytest.raises(TypeError, match="text series"):
            run.log({"gen": 2.0})
        with pytest.raises(ValueError, match="exceeds 65536"):
            run["gen"].append("é" * 40_000)  # 80,000 bytes of UTF-8
        with pytest.raises(ValueError, match="not valid UTF-8"):
            run["gen"].append("\ud800")
        with pytest.raises(ValueError, match="reduction policy"):
            run["gen"].append("x", policy="sum")
        with pytest.raises(ValueError, match="text series"):
            run["gen"] = "a field now"
        with pytest.raises(ValueError, match="per rank"):
            run["gen"].fetch_values()
        run["gen"].extend(["a", "b"], steps=[1, 2])
        run.wait(30)
        assert run["gen"].fetch_values(rank=0) == [(0, "ok"), (1, "a"), (2, "b")]
        assert run["gen"].fetch_last() == "b"
        with pytest.raises(TypeError, match="as_numpy"):
            run["gen"].fetch_values(rank=0, as_numpy=True)
        assert run.stats()["acked"] == 4
    ro = coordinator.init_run(mode="read-only", with_id=run.id, settings=_settings(store_dir))
    try:
        assert ro["gen"].fetch_values(rank=0) == [(0, "ok"), (1, "a"), (2, "b")]
        assert ro["gen"].fetch_last() == "b"
        with pytest.raises(ClosedError):
            ro["gen"].append("no")
    finally:
        ro.stop()


def test_texts_are_redacted_and_counted(store_dir: Path) -> None:
    s = _settings(store_dir, redact_values=(r"[\w.]+@[\w.]+",))
    with coordinator.init_run(settings=s) as run:
        run["gen"].append("mail me at a.b@example.com or c@d.org", step=0)
        run.wait(30)
        assert run["gen"].fetch_values(rank=0) == [(0, "mail me at [redacted] or [redacted]")]
    report = coordinator.init_run(mode="read-only", with_id=run.id, settings=_settings(store_dir))
    try:
        assert _rank0_report(report)["redacted"] == 2
    finally:
        report.stop()


def test_console_capture_tees_prints_and_logging_and_restores_the_streams(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before_out, before_err = sys.stdout, sys.stderr
    handler = logging.StreamHandler(sys.stderr)  # bound to the real stream before the capture
    log = logging.getLogger("test-console")
    log.addHandler(handler)
    log.propagate = False
    try:
        s = _settings(store_dir, capture_output=True, console_max_line_bytes=10, console_max_lines_per_s=1000)
        with coordinator.init_run(settings=s) as run:
            assert sys.stdout is not before_out
            print("short")
            print("a line longer than ten bytes")
            sys.stdout.write("no newline yet")
            log.warning("via logging")
            run.wait(30)
        assert sys.stdout is before_out and sys.stderr is before_err and handler.stream is before_err
    finally:
        log.removeHandler(handler)
    ro = coordinator.init_run(mode="read-only", with_id=run.id, settings=_settings(store_dir))
    try:
        out = [t for _, t in ro["monitoring/stdout"].fetch_values(rank=0)]
        assert out == ["short", "a line lon", "no newline"]  # cut to 10 bytes; the partial line at close
        assert [t for _, t in ro["monitoring/stderr"].fetch_values(rank=0)] == ["via loggin"]
        per_rank = _rank0_report(ro)
        assert per_rank["console_cut_lines"] == 3 and per_rank["console_lines"] == 4
    finally:
        ro.stop()


def test_console_lines_over_the_rate_are_dropped_and_counted(store_dir: Path) -> None:
    s = _settings(store_dir, console_max_lines_per_s=5)
    with coordinator.init_run(settings=s, capture_output=True) as run:  # the init_run keyword
        for i in range(50):
            print(f"line {i}")
    ro = coordinator.init_run(mode="read-only", with_id=run.id, settings=_settings(store_dir))
    try:
        kept = ro["monitoring/stdout"].fetch_values(rank=0)
        per_rank = _rank0_report(ro)
        assert 5 <= len(kept) < 50 and per_rank["console_dropped_lines"] == 50 - len(kept)
    finally:
        ro.stop()
