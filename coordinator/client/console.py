"""Console capture (``capture_output=True``): a rank's stdout and stderr lines as its text series.

``sys.stdout`` and ``sys.stderr`` are replaced by tees that write everything to the real stream
at once and cut it into lines; logging handlers already bound to the real streams are pointed
at the tees too, so ``print()`` and the ``logging`` module both arrive. Complete lines go into a
bounded queue; the capture's own thread appends them, without ever blocking on a full buffer, to
the text series ``monitoring/stdout`` and ``monitoring/stderr`` (Neptune's names). A line longer
than ``console_max_line_bytes`` is cut, lines beyond ``console_max_lines_per_s`` (a token
bucket) or a full queue are dropped; each is counted and reported in the rank's BYE counters
(``console_cut_lines``, ``console_dropped_lines``). What the capture's thread itself prints
(the library's own warnings while appending) goes to the real stream only: no recursion.
:meth:`ConsoleCapture.stop` puts the real streams back and joins the thread.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from coordinator.errors import CoordinatorError
from coordinator.settings import Settings

__all__ = ["MAX_QUEUED_LINES", "STDERR_KEY", "STDOUT_KEY", "ByeCounted", "ConsoleCapture", "start_console"]

_log = logging.getLogger("coordinator")

STDOUT_KEY = "monitoring/stdout"
STDERR_KEY = "monitoring/stderr"
MAX_QUEUED_LINES = 10_000
"""Lines waiting for the capture's thread; more are dropped (and counted)."""
_JOIN_TIMEOUT_S = 5.0

AppendText = Callable[[str, str, "int | None", bool], bool]
"""``append(key, text, step, block)``: the run's text append; False when its buffer had no room."""


class ByeCounted(Protocol):
    """Where a rank's extra BYE counters are read from (the run's lifecycle)."""

    counters: Callable[[], dict[str, int]]


def start_console(
    append: AppendText, settings: Settings, rank: int, live: bool, bye: ByeCounted
) -> ConsoleCapture | None:
    """The run's console capture when ``settings.capture_output`` is on and the run sends (else ``None``).

    Its counters become part of the rank's BYE (``bye.counters``), so the report shows cut lines.
    """
    if not (settings.capture_output and live):
        return None
    cap = ConsoleCapture.start(append, settings, rank)
    bye.counters = cap.counters
    return cap


class _Tee(io.TextIOBase):
    """A text stream that writes to the real one and hands complete lines to the capture."""

    def __init__(self, real: TextIO, key: str, capture: ConsoleCapture) -> None:
        super().__init__()
        self.real = real
        self.key = key
        self._capture = capture
        self._partial: list[str] = []
        self._partial_len = 0
        self._overflow = False

    @property
    def encoding(self) -> str:
        return getattr(self.real, "encoding", "utf-8") or "utf-8"

    # typeshed types TextIOBase.encoding as a plain attribute, so an override must accept assignment;
    # at runtime it is read-only on every text stream, and stays so here.
    @encoding.setter
    def encoding(self, value: str) -> None:
        raise AttributeError("the encoding of a captured stream is the real stream's")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    def flush(self) -> None:
        self.real.flush()

    def write(self, s: str) -> int:
        n = self.real.write(s)
        if s and threading.current_thread() is not self._capture.thread:  # our own output: the real stream only
            self._capture.feed(self, s)
        return len(s) if n is None else n

    def take_lines(self, s: str, cap: int) -> list[str]:
        """Complete lines of what was written so far (capture lock held).

        A partial line past ``cap`` characters is let out at once (to be cut) and the rest of
        that line, up to its newline, is skipped: memory stays bounded for a line that never ends.
        """
        parts = s.split("\n")
        out: list[str] = []
        for i, p in enumerate(parts):
            if i < len(parts) - 1:
                if self._overflow:  # the tail of a line already let out
                    self._overflow = False
                    continue
                self._partial.append(p)
                out.append("".join(self._partial))
                self._partial, self._partial_len = [], 0
            elif p and not self._overflow:
                self._partial.append(p)
                self._partial_len += len(p)
                if self._partial_len > cap:
                    out.append("".join(self._partial))
                    self._partial, self._partial_len, self._overflow = [], 0, True
        return out

    def rest(self) -> str | None:
        """The partial last line, taken (capture lock held)."""
        if not self._partial:
            return None
        line = "".join(self._partial)
        self._partial, self._partial_len = [], 0
        return line


class ConsoleCapture:
    """Captures this process's ``sys.stdout``/``sys.stderr`` lines into a run's text series.

    Create with :meth:`start`; :meth:`stop` (idempotent) restores the streams.
    """

    def __init__(self, append: AppendText, max_lines_per_s: float, max_line_bytes: int, rank: int) -> None:
        self._append = append
        self._rate = max_lines_per_s
        self._max_bytes = max_line_bytes
        self._tokens = max(1.0, max_lines_per_s)
        self._refilled = time.monotonic()
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, str]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.lines = 0
        """Lines appended to the text series."""
        self.cut = 0
        """Lines cut to ``max_line_bytes``."""
        self.dropped = 0
        """Lines dropped: over the rate, the queue full, or the run's buffer full."""
        self.thread = threading.Thread(target=self._main, name=f"coordinator-console-r{rank}", daemon=True)
        self._tees: list[_Tee] = []
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    @classmethod
    def start(cls, append: AppendText, settings: Settings, rank: int) -> ConsoleCapture:
        """Install the tees on ``sys.stdout``/``sys.stderr`` and start the capture's thread."""
        cap = cls(append, settings.console_max_lines_per_s, settings.console_max_line_bytes, rank)
        cap.thread.start()
        out, err = sys.stdout, sys.stderr
        cap._tees = [_Tee(out, STDOUT_KEY, cap), _Tee(err, STDERR_KEY, cap)]
        by_stream = {id(out): cap._tees[0], id(err): cap._tees[1]}
        for h in _stream_handlers():
            tee = by_stream.get(id(h.stream))
            if tee is not None:
                cap._handlers.append((h, h.setStream(tee)))
        sys.stdout, sys.stderr = cap._tees[0], cap._tees[1]
        return cap

    def counters(self) -> dict[str, int]:
        """The rank's console counters for its BYE (the report's ``per_rank``)."""
        with self._lock:
            return {"console_lines": self.lines, "console_cut_lines": self.cut, "console_dropped_lines": self.dropped}

    def feed(self, tee: _Tee, s: str) -> None:
        """What a tee got written (any thread): its complete lines, rate-limited, into the queue."""
        with self._lock:
            if self._stopping:
                return
            lines = tee.take_lines(s, self._max_bytes)
            if lines:
                self._queue_lines(tee.key, lines)
        if lines:
            self._wake.set()

    def _queue_lines(self, key: str, lines: list[str]) -> None:
        now = time.monotonic()
        self._tokens = min(max(1.0, self._rate), self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        for line in lines:
            if self._tokens < 1 or len(self._queue) >= MAX_QUEUED_LINES:
                self.dropped += 1
                continue
            self._tokens -= 1
            self._queue.append((key, line))

    def _main(self) -> None:
        while True:
            self._wake.wait(0.2)
            self._wake.clear()
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                done = self._stopping
            for key, line in batch:
                self._send(key, line)
            if done and not batch:
                return

    def _send(self, key: str, line: str) -> None:
        raw = line.encode("utf-8", "replace")
        cut = len(raw) > self._max_bytes
        if cut:
            line = raw[: self._max_bytes].decode("utf-8", "ignore")
        try:
            ok = self._append(key, line, None, False)
        except (CoordinatorError, TypeError, ValueError) as e:  # a closed run, a key used as numbers
            ok = False
            _log.debug("console line not kept: %s", e)  # the capture's thread: the real stream only
        with self._lock:
            if ok:
                self.lines += 1
                self.cut += cut
            else:
                self.dropped += 1

    def stop(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        """Put the real streams (and the logging handlers' streams) back, send the last lines, join the thread."""
        if not self._tees:
            return
        out, err = self._tees
        if sys.stdout is out:
            sys.stdout = out.real
        if sys.stderr is err:
            sys.stderr = err.real
        for h, real in self._handlers:
            if h.stream in self._tees:
                h.setStream(real)
        with self._lock:
            for tee in self._tees:
                last = tee.rest()
                if last is not None:
                    self._queue_lines(tee.key, [last])
            self._stopping = True
        self._tees = []
        self._wake.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            _log.error("the console capture's thread did not stop within %.0f s", timeout)
        c = self.counters()
        if c["console_cut_lines"] or c["console_dropped_lines"]:
            _log.warning(
                "console capture: %d lines kept, %d cut to %d bytes, %d dropped (over %s lines/s or a full buffer)",
                c["console_lines"],
                c["console_cut_lines"],
                self._max_bytes,
                c["console_dropped_lines"],
                self._rate,
            )


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every ``StreamHandler`` (not file handlers) of the root and the known loggers."""
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    out: list[logging.StreamHandler[Any]] = []
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and h not in out:
                out.append(h)
    return out
