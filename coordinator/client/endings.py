"""How this rank's process left its run: clean, failed or interrupted, and why (sent with the BYE).

A ``with`` block left by an exception, ``Run.fail()``, an uncaught exception (``sys.excepthook``
and ``threading.excepthook`` are chained; at exit ``sys.last_value`` is looked at too),
KeyboardInterrupt, and the launcher's SIGTERM each mark the rank's :class:`Ending`; ``stop()``
sends it. A failure wins over an interruption, and the first reason of each is kept. Reasons are
redacted (backend secrets, URL passwords) and cut to 4 KiB.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from coordinator.core.redact import redact_text
from coordinator.core.states import RankEnd, RankEnding

__all__ = [
    "MAX_REASON_BYTES",
    "Ending",
    "ending_of",
    "install_hooks",
    "note_signal",
    "reason_of",
    "signalled",
    "uncaught_at_exit",
]

MAX_REASON_BYTES = 4096

_RANK: dict[RankEnding, int] = {"clean": 0, "interrupted": 1, "failed": 2}

_signal: list[int] = []
"""The signal (SIGTERM) that made this process exit, once our handler saw one."""

_ENDINGS: weakref.WeakSet[Ending] = weakref.WeakSet()
"""Every open run's ending in this process (an uncaught exception marks them all)."""

_hooks_lock = threading.Lock()
_hooks_installed = False


def note_signal(signum: int) -> None:
    """The process is stopping because of ``signum`` (SIGTERM turned into SystemExit)."""
    if not _signal:
        _signal.append(signum)


def signalled() -> int | None:
    """The signal noted by :func:`note_signal`, if any."""
    return _signal[0] if _signal else None


def reason_of(exc: BaseException) -> str:
    """``Type: message`` of an exception (its module for non-builtins)."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    msg = str(exc)
    return f"{name}: {msg}" if msg else name


def ending_of(exc: BaseException | None) -> tuple[RankEnding, str | None]:
    """The ending a process leaving by ``exc`` has (``None``: normal end)."""
    if exc is None:
        return ("interrupted", f"signal {signalled()}") if signalled() else ("clean", None)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", reason_of(exc) if str(exc) else "KeyboardInterrupt (SIGINT)"
    if isinstance(exc, SystemExit):
        if signalled():
            return "interrupted", f"signal {signalled()} (SystemExit {exc.code})"
        if exc.code in (None, 0):
            return "clean", None
        return "failed", f"SystemExit: {exc.code}"
    return "failed", reason_of(exc)


class Ending:
    """One rank's ending as far as known; only ever moves clean -> interrupted -> failed.

    Args:
        secrets: strings to mask in a reason (the run's backend credentials).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(secrets)
        self._lock = threading.Lock()
        self.ending: RankEnding = "clean"
        self.reason: str | None = None
        self.declared = False
        """The code said so itself (``Run.fail``): stop() then reports the run's state, it does not raise it."""
        _ENDINGS.add(self)

    def mark(self, ending: RankEnding, reason: str | None) -> None:
        """Record ``ending`` unless a graver one is recorded already (the first reason of each kind stays)."""
        with self._lock:
            if _RANK[ending] > _RANK[self.ending]:
                self.ending = ending
                self.reason = None if reason is None else self._clean(reason)

    def mark_exception(self, exc: BaseException | None) -> None:
        """Record how leaving by ``exc`` ends the rank (``None``: a normal end, after a signal maybe)."""
        self.mark(*ending_of(exc))

    def payload(self) -> RankEnd:
        """The BYE's ``ending`` and ``reason``."""
        with self._lock:
            end = RankEnd(ending=self.ending)
            if self.reason is not None:
                end["reason"] = self.reason
            return end

    def _clean(self, reason: str) -> str:
        text = redact_text(reason, self._secrets)
        raw = text.encode("utf-8", "replace")
        if len(raw) > MAX_REASON_BYTES:
            text = raw[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
        return text


def install_hooks() -> None:
    """Chain ``sys.excepthook`` and ``threading.excepthook`` once per process, to mark open runs."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        prev_sys = sys.excepthook
        prev_thread = threading.excepthook

        def sys_hook(et: type[BaseException], ev: BaseException, tb: TracebackType | None) -> None:
            if not hasattr(sys, "ps1"):  # in an interactive session an error ends nothing
                _mark_all(ev, None)
            prev_sys(et, ev, tb)

        def thread_hook(args: Any) -> None:
            if args.exc_value is not None:
                _mark_all(args.exc_value, args.thread)
            prev_thread(args)

        sys.excepthook = sys_hook
        threading.excepthook = thread_hook


def uncaught_at_exit() -> BaseException | None:
    """The exception that is ending the interpreter (read by the atexit hook), if any."""
    if hasattr(sys, "ps1"):
        return None
    return getattr(sys, "last_value", None)


def _mark_all(exc: BaseException, thread: threading.Thread | None) -> None:
    ending, reason = ending_of(exc)
    if thread is not None and reason is not None:
        ending, reason = "failed", f"uncaught in thread {thread.name}: {reason}"
    for e in list(_ENDINGS):
        e.mark(ending, reason)
