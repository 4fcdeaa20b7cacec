"""How this rank's process left its run: clean, failed or interrupted, and why (sent with the BYE).

A ``with`` block left by an exception, ``Run.fail()``, an uncaught exception (``sys.excepthook``
and ``threading.excepthook`` are chained; at exit ``sys.last_value`` is looked at too),
KeyboardInterrupt, and the launcher's SIGTERM each mark the rank's :class:`Ending`; ``stop()``
sends it. A failure wins over an interruption, and the first reason of each is kept. Reasons are
redacted (backend secrets, URL passwords) and cut to 4 KiB. A failure by an exception also sends
its formatted traceback (redacted the same way, its last 16 KiB kept), so the run shows where the
rank died.
"""

from __future__ import annotations

import sys
import threading
import traceback
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from coordinator.core.redact import redact_text
from coordinator.core.states import RankEnd, RankEnding

__all__ = [
    "MAX_REASON_BYTES",
    "MAX_TRACEBACK_BYTES",
    "Ending",
    "ending_of",
    "install_hooks",
    "note_signal",
    "reason_of",
    "reason_text",
    "signalled",
    "traceback_of",
    "uncaught_at_exit",
]

MAX_REASON_BYTES = 4096
MAX_TRACEBACK_BYTES = 16 * 1024
"""Longest traceback a BYE carries (its end is kept: the raising line and the message)."""

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


def reason_text(reason: object) -> str:
    """``Run.fail``'s reason as text: an exception's ``Type: message``, or the message.

    Raises:
        TypeError: neither a str nor an exception.
    """
    if isinstance(reason, BaseException):
        return reason_of(reason)
    if isinstance(reason, str):
        return reason or "Run.fail()"
    raise TypeError(f"fail() takes a message (str) or an exception, got {type(reason).__name__}")


def reason_of(exc: BaseException) -> str:
    """``Type: message`` of an exception (its module for non-builtins)."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    msg = str(exc)
    return f"{name}: {msg}" if msg else name


def traceback_of(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (chained causes included), as Python prints it."""
    return "".join(traceback.format_exception(exc))


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
        self.traceback: str | None = None
        """The formatted traceback of the exception that failed the rank (redacted, cut), if any."""
        self.declared = False
        """The code said so itself (``Run.fail``): stop() then reports the run's state, it does not raise it."""
        _ENDINGS.add(self)

    def mark(self, ending: RankEnding, reason: str | None, exc: BaseException | None = None) -> None:
        """Record ``ending`` unless a graver one is recorded already (the first reason of each kind stays).

        Args:
            exc: the exception that failed the rank: its traceback is kept with a ``failed`` ending.
        """
        with self._lock:
            if _RANK[ending] > _RANK[self.ending]:
                self.ending = ending
                self.reason = None if reason is None else self._clean(reason)
                self.traceback = None
                if ending == "failed" and exc is not None and exc.__traceback__ is not None:
                    self.traceback = self._clean(traceback_of(exc), MAX_TRACEBACK_BYTES, tail=True)

    def mark_exception(self, exc: BaseException | None) -> None:
        """Record how leaving by ``exc`` ends the rank (``None``: a normal end, after a signal maybe)."""
        self.mark(*ending_of(exc), exc=exc)

    def payload(self) -> RankEnd:
        """The BYE's ``ending``, ``reason`` and ``traceback``."""
        with self._lock:
            end = RankEnd(ending=self.ending)
            if self.reason is not None:
                end["reason"] = self.reason
            if self.traceback is not None:
                end["traceback"] = self.traceback
            return end

    def _clean(self, text: str, limit: int = MAX_REASON_BYTES, *, tail: bool = False) -> str:
        """Redacted, and cut to ``limit`` bytes: its start is kept, or with ``tail`` its end."""
        text = redact_text(text, self._secrets)
        raw = text.encode("utf-8", "replace")
        if len(raw) <= limit:
            return text
        if not tail:
            return raw[: limit - 3].decode("utf-8", "ignore") + "..."
        head = f"[... {len(raw) - limit} bytes of the traceback cut ...]\n"
        return head + raw[len(raw) - limit + len(head) :].decode("utf-8", "ignore")


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
        e.mark(ending, reason, exc)
