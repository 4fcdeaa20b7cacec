"""Redaction of personal data before a field leaves the rank (``redact_keys``, ``redact_values``, ``redact``).

Applied on the client, before a field is buffered: to the fields the user sets (``run[p] = v``)
and to the environment capture (``sys/ranks/<r>/argv``, ``sys/git/remote``, ...). Metric values
(numbers of ``log``/``append``) are never touched, and the hot path does not change.

In this order, per field:

1. a path matching a ``redact_keys`` glob (``fnmatch``: ``*`` also crosses ``/``) has its value
   replaced by ``"[redacted]"`` (a list: each item; an artifact: its record);
2. every match of a ``redact_values`` regex in a str value (or a list's str items) is replaced by
   ``"[redacted]"``;
3. ``redact(path, value)`` returns the value to store (``value`` as stored: str, int, float, bool,
   a list, a datetime as POSIX seconds; artifacts are not passed); ``None`` drops the field. If it
   raises, or returns what is not a field value, the field is dropped, counted, and warned about
   once: it never raises into training.

Each replacement (a glob hit, each regex match, a changed or dropped value) is counted; the rank
sends the count as its BYE counter ``redacted`` (the report's ``per_rank`` section).
Artifact contents (the ``sys/git/diff`` file, uploaded files) are not scanned.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from coordinator.core.values import FieldValue, to_field_value
from coordinator.errors import ConfigError
from coordinator.settings import Settings

__all__ = ["REDACTED", "Redactor", "compile_patterns"]

_log = logging.getLogger("coordinator")

REDACTED = "[redacted]"
"""What a redacted value (or part of one) becomes."""


def compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """The ``redact_values`` regexes compiled.

    Raises:
        ConfigError: a pattern is not a str or not a valid regex (named in the message).
    """
    out: list[re.Pattern[str]] = []
    for p in patterns:
        if not isinstance(p, str):
            raise ConfigError(f"Settings.redact_values: a pattern must be a str, got {p!r:.80}")
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"Settings.redact_values: {p!r:.200} is not a valid regex: {e}") from None
    return tuple(out)


class Redactor:
    """One rank's redaction of fields; thread-safe (its count is guarded by a lock).

    Args:
        keys: globs of field paths whose values are replaced.
        values: regexes whose matches in str values are replaced.
        func: ``callable(path, value) -> value`` applied last, or ``None``.

    Raises:
        ConfigError: a bad regex, or ``func`` is not callable.
    """

    def __init__(
        self, keys: Iterable[str] = (), values: Iterable[str] = (), func: Callable[[str, Any], Any] | None = None
    ) -> None:
        if func is not None and not callable(func):
            raise ConfigError(f"Settings.redact must be a callable(path, value) -> value, got {type(func).__name__}")
        self._keys = tuple(keys)
        for k in self._keys:
            if not isinstance(k, str):
                raise ConfigError(f"Settings.redact_keys: a glob must be a str, got {k!r:.80}")
        self._key_re = re.compile("|".join(fnmatch.translate(k) for k in self._keys)) if self._keys else None
        self._values = compile_patterns(values)
        self._func = func
        self._lock = threading.Lock()
        self._count = 0
        self._warned = False

    @classmethod
    def from_settings(cls, s: Settings) -> Redactor | None:
        """The redactor of ``s``, or ``None`` when it redacts nothing."""
        if not (s.redact_keys or s.redact_values or s.redact is not None):
            return None
        return cls(s.redact_keys, s.redact_values, s.redact)

    def count(self) -> int:
        """Redactions so far (every glob hit, regex match, changed or dropped value)."""
        with self._lock:
            return self._count

    def apply(self, items: Iterable[tuple[str, FieldValue]]) -> list[tuple[str, FieldValue]]:
        """``items`` redacted; a field the callable drops (or fails on) is left out."""
        out: list[tuple[str, FieldValue]] = []
        n = 0
        for path, fv in items:
            got, hits = self._one(path, fv)
            n += hits
            if got is not None:
                out.append((path, got))
        if n:
            with self._lock:
                self._count += n
        return out

    def _one(self, path: str, fv: FieldValue) -> tuple[FieldValue | None, int]:
        tag, val = fv
        hits = 0
        if self._key_re is not None and self._key_re.match(path):
            hits += 1
            fv = ("list", [REDACTED for _ in val]) if tag == "list" else ("str", REDACTED)
            tag, val = fv
        if self._values:
            if tag == "str":
                val, k = self._sub(val)
                hits += k
            elif tag == "list":
                new: list[Any] = []
                for item in val:
                    if isinstance(item, str):
                        item, k = self._sub(item)
                        hits += k
                    new.append(item)
                val = new
            fv = (tag, val)
        if self._func is None or tag == "artifact":
            return fv, hits
        try:
            got = self._func(path, val)
            if got is None:
                return None, hits + 1
            if type(got) is type(val) and got == val:
                return fv, hits
            return to_field_value(path, got), hits + 1
        except Exception as e:  # a user callable must never raise into training
            self._warn(path, e)
            return None, hits + 1

    def _sub(self, text: str) -> tuple[str, int]:
        total = 0
        for pat in self._values:
            text, k = pat.subn(REDACTED, text)
            total += k
        return text, total

    def _warn(self, path: str, e: Exception) -> None:
        with self._lock:
            first = not self._warned
            self._warned = True
        if first:  # the path is named, never the value (it is what the callable was to redact)
            _log.warning(
                "redact(): %s on field %r; the field is dropped (and every later failing one, counted "
                "in the report's 'redacted', without another warning)",
                type(e).__name__,
                path,
            )
