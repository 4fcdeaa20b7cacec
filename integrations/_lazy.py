"""The run an integration logs to: opened on first use, ended once, never hanging the framework.

Every framework integration (Lightning logger, HF callback, Accelerate tracker) holds one
:class:`LazyRun`. It opens the run only when something is logged (by then the framework has set
up its process group, so the run finds its aggregator through the framework's store), on every
rank; waits for the rank's data when training ends; marks the run failed when training raised;
and closes it on an explicit ``close()`` or at process exit, each with a bounded timeout, so a
stuck aggregator cannot hang the framework's own shutdown.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import coordinator

__all__ = ["CLOSE_TIMEOUT_S", "LazyRun", "flatten", "with_placement"]

_log = logging.getLogger("coordinator.integrations")

CLOSE_TIMEOUT_S = 60.0
"""Longest an integration waits for its run's data at the end of training or at exit."""


class LazyRun:
    """One run, opened by the first :meth:`get` with the arguments given at construction.

    Thread-safe. After :meth:`close` a later :meth:`get` opens nothing and raises
    :class:`coordinator.ClosedError`.
    """

    def __init__(self, project: str | None, name: str | None, init_kwargs: Mapping[str, Any]) -> None:
        self.project = project
        self.name = name
        self._kwargs = dict(init_kwargs)
        self._run: coordinator.Run | None = None
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self._at_exit)

    @property
    def opened(self) -> bool:
        """Whether the run has been opened (and not closed yet)."""
        return self._run is not None and not self._closed

    def get(self) -> coordinator.Run:
        """The run, opened now if this is the first use.

        Raises:
            ClosedError: :meth:`close` was called before.
            CoordinatorError: ``init_run`` failed (bad settings, no aggregator).
        """
        with self._lock:
            if self._closed:
                raise coordinator.ClosedError("this integration's run was closed")
            if self._run is None:
                self._run = coordinator.init_run(self.project or "default", self.name, **with_placement(self._kwargs))
            return self._run

    def wait(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Wait until this rank's data is durable (and forwarded); logs instead of raising a timeout.

        The end of training must not fail because a tracker is slow: what is not confirmed stays
        in the journal and the spool, and the run's report says so.
        """
        run = self._run
        if run is None or self._closed:
            return
        try:
            run.wait(timeout)
        except coordinator.CoordinatorTimeoutError as e:
            _log.warning("run %s: data not confirmed at the end of training: %s", run.id, e)

    def fail(self, reason: str | BaseException) -> None:
        """Mark the run failed (opening it, so the failure is recorded even with nothing logged)."""
        try:
            self.get().fail(reason)
        except coordinator.ClosedError:
            _log.warning("run already closed; failure not recorded: %s", reason)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the run (idempotent). Errors of the run's delivery are logged, not raised."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            run = self._run
        atexit.unregister(self._at_exit)
        if run is None:
            return
        try:
            run.stop(timeout)
        except coordinator.CoordinatorError as e:
            _log.error("run %s: closing failed: %s", run.id, e)

    def _at_exit(self) -> None:
        self.close(min(CLOSE_TIMEOUT_S, 30.0))


def with_placement(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``init_run`` arguments with this process's rank and world size from ``torch.distributed``.

    Some launchers (Lightning's ``ddp``, ``ddp_spawn``, Fabric) set ``LOCAL_RANK`` and
    ``WORLD_SIZE`` but not ``RANK``; the process group knows the global rank. Explicit
    ``Settings(rank=..., world_size=...)`` or ``$COORDINATOR_RANK`` win.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return kwargs
    if "COORDINATOR_RANK" in os.environ or "COORDINATOR_WORLD_SIZE" in os.environ:
        return kwargs
    settings = kwargs.get("settings") or coordinator.Settings()
    if settings.rank is not None or settings.world_size is not None:
        return kwargs
    settings = dataclasses.replace(settings, rank=dist.get_rank(), world_size=dist.get_world_size())
    return dict(kwargs, settings=settings)


def flatten(prefix: str, value: object, out: dict[str, object] | None = None) -> dict[str, object]:
    """Nested dicts, namespaces and dataclass-like objects as ``prefix/a/b`` -> value pairs.

    Values a run field cannot hold (objects, None, nested lists) become their ``str()``, so a
    framework's config is recorded whole instead of rejected.
    """
    out = {} if out is None else out
    if hasattr(value, "__dict__") and not isinstance(value, type) and type(value).__module__ == "argparse":
        value = vars(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
        return out
    if value is None:
        out[prefix] = "None"
    elif isinstance(value, bool | int | float | str):
        out[prefix] = value
    elif isinstance(value, list | tuple) and all(isinstance(x, bool | int | float | str) for x in value):
        out[prefix] = list(value)
    else:
        out[prefix] = str(value)
    return out


def logged_already(last: dict[str, tuple[int, float]], key: str, step: int, num: float) -> bool:
    """Whether ``num`` is the number ``key`` was last logged with, at ``step`` (NaN equal to NaN); if not, it is
    remembered as the key's last. The frameworks repeat ``epoch`` in every dict of a step (Lightning's training
    and validation dicts; transformers' end-of-training log and ``evaluate()``): logged once, not counted as a
    replacement of itself."""
    had = last.get(key)
    if had is not None and had[0] == step and (had[1] == num or (math.isnan(had[1]) and math.isnan(num))):
        return True
    last[key] = (step, num)
    return False
