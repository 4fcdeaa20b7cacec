"""Backoff: exponential doubling with a cap, jitter to 50-100 %, Retry-After obeyed up to its cap, waits."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

from coordinator.core.retry import Backoff, parse_retry_after, retry_after_of, wait


def test_delay_doubles_per_attempt_up_to_the_cap() -> None:
    b = Backoff(base_s=0.5, max_s=3.0)
    top = [b.delay(n, rand=lambda: 1.0) for n in range(1, 7)]
    assert top == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jitter_keeps_between_half_and_all_of_the_delay() -> None:
    b = Backoff(base_s=2.0, max_s=60.0)
    assert b.delay(1, rand=lambda: 0.0) == 1.0
    for _ in range(200):
        assert 1.0 <= b.delay(1) <= 2.0


def test_a_huge_attempt_number_does_not_overflow() -> None:
    assert Backoff(base_s=1.0, max_s=5.0).delay(10_000, rand=lambda: 1.0) == 5.0


def test_retry_after_replaces_the_backoff_and_is_capped() -> None:
    b = Backoff(base_s=0.5, max_s=1.0, max_retry_after_s=10.0)
    assert b.delay(1, 7.0) == 7.0
    assert b.delay(1, 99.0) == 10.0
    assert b.delay(5, 0.0) == 0.0


def test_retry_after_is_read_from_an_attribute_or_response_headers_along_the_chain() -> None:
    class _Http(Exception):
        def __init__(self, headers: object) -> None:
            super().__init__("429")
            self.response = SimpleNamespace(headers=headers)

    class _Throttled(Exception):
        def __init__(self, retry_after_s: int) -> None:
            super().__init__("x")
            self.retry_after_s = retry_after_s  # as a client library's exception carries it

    assert retry_after_of(_Throttled(3)) == 3.0
    try:
        try:
            raise _Http({"Retry-After": "7"})
        except _Http as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert retry_after_of(outer) == 7.0
    assert retry_after_of(_Http(["not", "a", "mapping"])) is None
    assert retry_after_of(_Http({"Retry-After": "soon"})) is None
    assert retry_after_of(ValueError("x")) is None


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("-3") == 0.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    got = parse_retry_after(later)
    assert got is not None and 50 <= got <= 61
    assert parse_retry_after("tomorrow-ish") is None


def test_wait_sleeps_the_delay_when_nothing_interrupts() -> None:
    t0 = time.monotonic()
    assert wait(0.05) is True
    assert time.monotonic() - t0 >= 0.05


def test_wait_ends_early_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    assert wait(5.0, stop=stop) is False
    assert time.monotonic() - t0 < 1.0


def test_wait_gives_up_at_once_past_the_deadline() -> None:
    t0 = time.monotonic()
    assert wait(5.0, deadline=t0 - 1.0) is False
    assert time.monotonic() - t0 < 1.0


def test_wait_sleeps_until_a_deadline_shorter_than_the_delay_then_gives_up() -> None:
    deadline = time.monotonic() + 0.05
    assert wait(5.0, deadline=deadline) is False
    assert deadline <= time.monotonic() < deadline + 1.0
