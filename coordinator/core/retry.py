"""Backoff between retries: jittered exponential delays with a cap, and a server's ``Retry-After``.

One rule for every stage that retries (forwarders, reconnects, restarts), so they back off the
same way: the ``n``-th failed attempt waits ``base_s * 2**(n-1)`` seconds, capped at ``max_s``,
jittered to 50-100 % so that many retriers do not hit a recovering server in lock-step. A
server that says how long to wait (HTTP 429/503 ``Retry-After``) is obeyed instead, up to
``max_retry_after_s``.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "parse_retry_after", "retry_after_of", "wait"]

_MAX_DOUBLINGS = 30
"""Past this the exponent only overflows; the cap has long been reached."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before the next attempt, from the number of failed attempts so far.

    Attributes:
        base_s: delay after the first failure; doubles with each further one.
        max_s: longest delay without a ``Retry-After``.
        max_retry_after_s: longest wait a server's ``Retry-After`` can impose.
    """

    base_s: float
    max_s: float
    max_retry_after_s: float = math.inf

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure).

        Args:
            attempt: how many attempts have failed so far (>= 1).
            retry_after: what the server asked for (see :func:`retry_after_of`), if anything.
            rand: a source of uniform numbers in [0, 1) for the jitter (tests pin it).

        Returns:
            ``min(retry_after, max_retry_after_s)`` when the server asked, else the jittered
            exponential delay.
        """
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        d = min(self.max_s, self.base_s * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
        return d * (0.5 + rand() / 2)


def wait(delay: float, *, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
    """Sleep ``delay`` seconds unless ``stop`` is set or the ``deadline`` comes first.

    Args:
        delay: seconds to wait.
        stop: ends the wait early when set.
        deadline: a ``time.monotonic()`` time the wait must not pass.

    Returns:
        True when the full delay passed (retry now); False when ``stop`` was set or the
        deadline would pass before the delay did (give up: the deadline is then reached).
    """
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if delay > left:
            time.sleep(max(0.0, left))
            return False
    if stop is not None:
        return not stop.wait(delay)
    time.sleep(delay)
    return True


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds a server asked us to wait (HTTP 429/503 ``Retry-After``), if the client exposes it.

    Looks along the ``__cause__``/``__context__`` chain for a ``retry_after_s`` attribute or a
    ``response`` with headers (requests, httpx, bravado).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        direct = getattr(e, "retry_after_s", None)
        if isinstance(direct, (int, float)) and direct >= 0:
            return float(direct)
        headers = getattr(getattr(e, "response", None), "headers", None)
        if headers is not None:
            try:
                raw = headers.get("Retry-After")
            except (AttributeError, TypeError):  # not a mapping: nothing to read
                raw = None
            if raw:
                parsed = parse_retry_after(str(raw))
                if parsed is not None:
                    return parsed
        e = e.__cause__ or e.__context__
    return None


def parse_retry_after(raw: str) -> float | None:
    """A ``Retry-After`` header value (seconds, or an HTTP date) as seconds from now; None if unreadable."""
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass  # not a number of seconds: Retry-After may also be an HTTP date, tried next
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
