"""Automatic step numbering: a point logged without a step gets its rank's previous step for the key + 1.

This is training semantics, so it lives with the client; the sender calls it on each column it
cuts from the buffer (off the training thread), before the batch is numbered and sent, and
:meth:`StepNumbering.frame` on each frame (a dict's rows: numbered for all its keys at once) to
record where it ended. A rank that resumes a run (``init_run(with_id=...)``, an elastic restart)
continues after the last step it stored in its earlier incarnations: the aggregator's WELCOME says
where that was (``last_steps``), and :meth:`StepNumbering.welcome` takes it. The same call on a
cut column first resolves the device scalars (:mod:`~coordinator.client.devices`) the training
thread deferred.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable
from itertools import repeat
from typing import Any

from coordinator.core.numbering import explicit, number_steps

__all__ = ["StepNumbering"]

_log = logging.getLogger("coordinator")


class StepNumbering:
    """Per key, the last step this rank logged. Used by one thread (the sender's).

    Args:
        rank: this rank (for messages).
        resolve: called with each cut column's steps before numbering (the run's deferred
            device scalars are written into the column's values); ``None``: nothing to resolve.
        pending: whether a deferred device scalar waits to be resolved (buffer lock held; the
            sender's copies of the uncut generation cannot take one: :meth:`deferred`).
    """

    __slots__ = ("_auto", "_last", "_pending", "_rank", "_resolve", "on_welcome", "welcomed")

    def __init__(
        self,
        rank: int = 0,
        resolve: Callable[[array[int]], None] | None = None,
        pending: Callable[[], bool] | None = None,
    ) -> None:
        self._last: dict[str, int] = {}
        self._rank = rank
        self._resolve = resolve
        self._pending = pending
        self._auto: set[str] | None = set()
        """Keys numbered automatically before the first WELCOME (None once welcomed)."""
        self.welcomed = threading.Event()
        """Set by the first WELCOME: from then on a resumed rank's automatic steps are right."""
        self.on_welcome: Callable[[dict[str, Any]], None] | None = None
        """Also given every WELCOME's whole payload (the rank's ring: whether the aggregator reads it)."""

    def welcome(self, last_steps: Any, body: dict[str, Any] | None = None) -> None:
        """The aggregator's WELCOME: continue each key after ``last_steps[key]`` (sender thread).

        ``last_steps`` is ``{key: last stored step of this rank over its earlier incarnations}``
        (absent for a rank with no stored points). A key this incarnation already logged keeps
        its own numbering: a later WELCOME (after a reconnect) never moves it.
        """
        if isinstance(last_steps, dict):
            for key, step in last_steps.items():
                if type(key) is not str or type(step) is not int or step < -1:
                    _log.warning("rank %d: ignoring a malformed last step %r: %r in WELCOME", self._rank, key, step)
                    continue
                if self._auto is not None and key in self._auto:
                    _log.warning(
                        "rank %d: %r was numbered from step 0 before the aggregator said this rank had stored up "
                        "to step %d (log with explicit steps when resuming)",
                        self._rank,
                        key,
                        step,
                    )
                self._last.setdefault(key, step)
        elif last_steps is not None:
            _log.warning("rank %d: ignoring malformed last_steps in WELCOME: %r", self._rank, type(last_steps))
        self._auto = None
        if self.on_welcome is not None and body is not None:
            self.on_welcome(body)
        self.welcomed.set()

    def deferred(self) -> bool:
        """A tensor logged waits to be read on the sender thread (buffer lock held): a copy cannot take its column."""
        return self._pending is not None and self._pending()

    def frame(self, keys: tuple[str, ...], steps: array[int]) -> bool:
        """Number a cut frame's rows logged without a step, in place, and record where its keys ended.

        A frame is a dict's key tuple, so its keys share every row's step: where no row is -1
        (the dict was logged at explicit steps) there is nothing to number, only the last step
        to record (one C-level update for all keys), so that a later ``log()`` without a step
        continues after it. Rows logged without a step are numbered once for all the keys when
        the keys were last logged at the same step (the usual case: the dict is logged alone).
        The tensors logged in its rows are read first, as a column's are (``resolve``).

        Returns:
            False where they were not (a key also logged on its own, or in another dict): nothing
            is numbered, and the frame must go per key (:meth:`Frame.columns
            <coordinator.transport.frames.Frame.columns>`, each then numbered by :meth:`__call__`).
        """
        if self._resolve is not None:  # the values of tensors logged in its rows, read now
            self._resolve(steps)
        if explicit(steps):
            self._last.update(zip(keys, repeat(steps[-1])))
            return True
        lasts = set(map(self._last.get, keys, repeat(-1)))
        if len(lasts) != 1:
            return False
        last, _ = number_steps(steps, lasts.pop())
        if self._auto is not None:
            self._auto.update(keys)
        self._last.update(zip(keys, repeat(last)))
        return True

    def __call__(self, key: str, steps: array[int]) -> None:
        """Replace each -1 in ``steps`` (no step given) by the previous step for ``key`` + 1, in place."""
        if self._resolve is not None:
            self._resolve(steps)
        if not steps:
            return
        last, numbered = number_steps(steps, self._last.get(key, -1))
        if numbered and self._auto is not None:
            self._auto.add(key)
        self._last[key] = last

    def last(self, key: str) -> int:
        """The last step of ``key`` so far (-1: none), from which the next point without a step is numbered.

        The copies of the uncut generation record it with a key's column (any thread): until that
        generation is cut, the sender (which changes it at a cut, and a WELCOME for a key not
        logged yet: a resumed rank's first) leaves it as it is.
        """
        return self._last.get(key, -1)
