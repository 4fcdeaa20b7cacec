"""Hugging Face Accelerate: every process logs into one run through ``accelerator.log``.

Usage::

    from accelerate import Accelerator
    from coordinator.integrations.accelerate import CoordinatorTracker

    accelerator = Accelerator(log_with=CoordinatorTracker(run_name="bert-ft"))
    accelerator.init_trackers("my-project", config={"lr": 3e-4, "batch_size": 32})
    for step, batch in enumerate(loader):
        ...
        accelerator.log({"train/loss": loss.item()}, step=step)   # on every process
    accelerator.end_training()

Each process logs its own values; the aggregator keeps every process's series and reduces them
across ranks (the key's policy, ``mean`` by default) into the main series, with no collective
in the training step.

**Every process, not only the main one.** Accelerate (1.x) runs ``Accelerator.init_trackers``
and ``Accelerator.log`` on the main process only, whatever a tracker's ``main_process_only``
says; only ``end_training`` reaches every process. Importing this module therefore wraps those
two methods of :class:`accelerate.Accelerator` once: each still runs as before, and afterwards,
on a process where Accelerate did not reach a :class:`CoordinatorTracker` of ``log_with``, the
wrapper hands it the same call (``start()`` and ``store_init_configuration(config)``, or
``log(values, step)``). Other trackers are untouched (they stay on the main process), and if a
later Accelerate calls trackers on every process itself, nothing is called twice. On every
process ``accelerator.get_tracker("coordinator")`` then returns the tracker and
``get_tracker("coordinator", unwrap=True)`` the :class:`coordinator.Run`.

**What is logged.** Numbers (``int``, ``float``, ``bool``, numpy scalars, one-element tensors
and arrays) become points; nested dicts are flattened into ``a/b`` keys. Strings and other
values that are not numbers (Accelerate allows ``str``; images, tables) are skipped with a
warning once per key: a series holds numbers only. Set a text field with
``tracker.tracker["notes/phase"] = "warmup"`` instead. ``init_trackers(config=...)`` is stored as
fields under ``hparams/`` (``hparams/lr``, nested dicts as ``hparams/optim/betas``).

**Run name and options.** ``CoordinatorTracker(project, run_name, **init_run_kwargs)``; the
constructor's ``project`` wins, else the ``project_name`` of ``init_trackers``. Options may also
come from ``init_trackers(..., init_kwargs={"coordinator": {"run_name": ..., "policies": ...}})``
(the constructor's win). ``accelerator.log(values, step=s, log_kwargs={"coordinator": {"policy":
"sum"}})`` sets those keys' reduction.

**Endings.** The run is opened by ``init_trackers`` (Accelerate's ``start()`` hook, called once
the process group exists, so the run finds its aggregator through it) or by the first ``log``.
``end_training()`` waits for the process's data and closes the run (before Accelerate destroys
the process group); without it, the run is closed at exit. Accelerate has no hook for an
exception: a training step that raises leaves the run ``failed`` through the run's own
recording of uncaught exceptions (the rank and the message are in its report); code that
catches the exception itself calls :meth:`CoordinatorTracker.fail`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import numbers
import threading
from collections.abc import Mapping
from typing import Any

import coordinator
from coordinator.errors import missing_extra

from ._lazy import CLOSE_TIMEOUT_S, LazyRun, flatten
from ._versions import check_tested

__all__ = ["CoordinatorTracker"]

_log = logging.getLogger("coordinator.integrations.accelerate")

try:
    _tracking = importlib.import_module("accelerate.tracking")
    _accelerator_module = importlib.import_module("accelerate.accelerator")
except ImportError as e:  # only without the extra
    raise missing_extra("coordinator.integrations.accelerate", "accelerate", e) from e

check_tested("accelerate", (1,), integration="accelerate")

_GeneralTracker: Any = _tracking.GeneralTracker


class CoordinatorTracker(_GeneralTracker):  # Accelerate's GeneralTracker, imported by name (Any to mypy)
    """An Accelerate tracker that logs on every process into one coordinator run.

    Pass it in ``Accelerator(log_with=...)`` (alone or in a list with other trackers); see the
    module's documentation for what Accelerate calls on which process.

    Args:
        project: the run's project; ``None``: the ``project_name`` given to
            ``accelerator.init_trackers`` (``"default"`` when the tracker is used without it).
        run_name: the run's name; ``None``: ``init_kwargs={"coordinator": {"run_name": ...}}`` of
            ``init_trackers``, else the coordinator's default.
        **init_run_kwargs: passed to :func:`coordinator.init_run` (``policies=``, ``mode=``,
            ``backend=``, ``backend_options=``, ``settings=coordinator.Settings(...)``, ...).
    """

    name = "coordinator"
    requires_logging_directory = False
    main_process_only = False

    def __init__(self, project: str | None = None, run_name: str | None = None, **init_run_kwargs: Any) -> None:
        super().__init__()
        self._project = project
        self._run_name = run_name
        self._init_run_kwargs = dict(init_run_kwargs)
        self._from_accelerate_project: str | None = None
        self._from_accelerate_kwargs: dict[str, Any] = {}
        self._lazy: LazyRun | None = None
        self._run: coordinator.Run | None = None
        self._lock = threading.Lock()
        self._skipped: set[str] = set()
        self._warned_closed = False
        # Counted so that the Accelerator wrappers see whether Accelerate reached this tracker.
        self._starts = 0
        self._logs = 0

    # -- the run ---------------------------------------------------------------------------

    def _lazy_run(self) -> LazyRun:
        with self._lock:
            if self._lazy is None:
                kwargs = dict(self._from_accelerate_kwargs)
                kwargs.update(self._init_run_kwargs)  # the constructor's options win
                name = self._run_name if self._run_name is not None else kwargs.pop("run_name", None)
                kwargs.pop("run_name", None)
                project = self._project or self._from_accelerate_project or "default"
                self._lazy = LazyRun(project, name, kwargs)
            return self._lazy

    def _configure(self, project_name: str | None, init_kwargs: Mapping[str, Any] | None) -> None:
        """Take ``init_trackers``' project name and ``init_kwargs["coordinator"]`` (before the run opens)."""
        with self._lock:
            if self._lazy is not None:
                if project_name and not self._project and project_name != self._lazy.project:
                    _log.warning(
                        "init_trackers(%r): the coordinator run was already opened in project %r",
                        project_name,
                        self._lazy.project,
                    )
                return
            self._from_accelerate_project = project_name or None
            self._from_accelerate_kwargs = dict(init_kwargs or {})

    @property
    def tracker(self) -> coordinator.Run:
        """The :class:`coordinator.Run` this tracker logs to (opened now if not yet)."""
        if self._run is None:
            self._run = self._lazy_run().get()
        return self._run

    @property
    def run(self) -> coordinator.Run:
        """Same as :attr:`tracker`."""
        return self.tracker

    @property
    def run_id(self) -> str:
        """The run's id (the same on every process); opens the run if not yet."""
        return self.tracker.id

    # -- Accelerate's hooks ------------------------------------------------------------------

    def start(self) -> None:
        """Open the run: Accelerate calls this from ``init_trackers``, after the process group exists."""
        self._starts += 1
        _ = self.tracker

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        """Store ``values`` (``init_trackers(config=...)``) as fields under ``hparams/``, flattened.

        Every process stores the same configuration; equal writes are stored once.
        """
        run = self.tracker
        for path, value in flatten("hparams", dict(values)).items():
            run[path] = value

    def log(self, values: Mapping[str, Any], step: int | None = None, *, policy: str | None = None) -> None:
        """Log this process's numeric ``values`` at ``step``; other values are skipped with a warning.

        Args:
            values: key -> number (nested dicts are flattened into ``a/b`` keys).
            step: the step; ``None``: per key, this process's previous step + 1.
            policy: cross-rank reduction of these keys (``mean``, ``sum``, ``min``, ``max``,
                ``rank0``, ``per_rank``, ``all``); from Accelerate:
                ``log_kwargs={"coordinator": {"policy": "sum"}}``.

        Raises:
            TypeError, ValueError: a malformed key or step (from :meth:`coordinator.Run.log`).
        """
        self._logs += 1
        points: dict[str, object] = {}
        self._collect("", values, points)
        if not points:
            return
        try:
            run = self.tracker
            run.log(points, step=step, policy=policy)
        except coordinator.ClosedError as e:
            if not self._warned_closed:
                self._warned_closed = True
                _log.warning("log() after the coordinator run was closed (end_training?): not logged: %s", e)

    def finish(self) -> None:
        """Wait for this process's data, then close the run (``end_training()`` calls it on every process)."""
        lazy = self._lazy
        if lazy is None:
            return
        lazy.wait(CLOSE_TIMEOUT_S)
        lazy.close(CLOSE_TIMEOUT_S)

    # -- beyond Accelerate's API -------------------------------------------------------------

    def fail(self, reason: str | BaseException) -> None:
        """Mark the run failed on this process (for code that catches the training's exception itself)."""
        self._lazy_run().fail(reason)

    def close(self) -> None:
        """Close the run without waiting first (idempotent); :meth:`finish` waits, then closes."""
        if self._lazy is not None:
            self._lazy.close(CLOSE_TIMEOUT_S)

    def _collect(self, prefix: str, values: Mapping[str, Any], out: dict[str, object]) -> None:
        for k, v in values.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                self._collect(f"{key}/", v, out)
            elif _is_number(v):
                out[key] = v
            elif key not in self._skipped:
                self._skipped.add(key)
                _log.warning(
                    "coordinator tracker: %r is a %s, not a number: skipped (now and later); "
                    "set a field with tracker.tracker[path] = value instead",
                    key,
                    type(v).__name__,
                )


def _is_number(v: object) -> bool:
    """A value :meth:`coordinator.Run.log` takes, checked without reading a tensor's data."""
    if isinstance(v, bool | int | float):
        return True
    if isinstance(v, str | bytes | complex):
        return False
    if isinstance(v, numbers.Real):  # numpy scalars
        return True
    numel = getattr(v, "numel", None)  # torch tensors: metadata only, no device sync
    if callable(numel) and hasattr(v, "dtype"):
        try:
            return bool(numel() == 1 and not getattr(v, "is_complex", lambda: False)())
        except Exception:  # an exotic object: not a number we can log
            return False
    size = getattr(v, "size", None)  # numpy arrays
    if isinstance(size, int) and hasattr(v, "dtype"):
        kind = getattr(getattr(v, "dtype", None), "kind", "")
        return size == 1 and kind in "biuf"
    return False


# -- make Accelerate reach this tracker on every process -----------------------------------------

_PATCH_MARK = "_coordinator_every_process"


def _ours(trackers: Any) -> list[CoordinatorTracker]:
    return [t for t in (trackers or ()) if isinstance(t, CoordinatorTracker)]


def _patch_accelerator(cls: Any) -> None:
    """Wrap ``cls.init_trackers`` and ``cls.log`` so our trackers are reached on every process (once)."""
    if getattr(cls, _PATCH_MARK, False):
        return
    original_init = cls.init_trackers
    original_log = cls.log

    def init_trackers(
        self: Any, project_name: str, config: dict[str, Any] | None = None, init_kwargs: dict[str, Any] | None = None
    ) -> Any:
        ours = _ours(getattr(self, "log_with", None))
        for t in ours:
            t._configure(project_name, (init_kwargs or {}).get(t.name))
        starts = [t._starts for t in ours]
        result = original_init(self, project_name, config=config, init_kwargs=init_kwargs)
        trackers = getattr(self, "trackers", None)
        for t, before in zip(ours, starts, strict=True):
            if t._starts != before:
                continue  # Accelerate reached it on this process (the main one)
            if isinstance(trackers, list) and t not in trackers:
                trackers.append(t)  # so end_training() and get_tracker() find it here too
            t.start()
            if config is not None:
                t.store_init_configuration(config)
        return result

    def log(
        self: Any, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, Any] | None = None
    ) -> Any:
        ours = _ours(getattr(self, "trackers", None))
        counts = [t._logs for t in ours]
        result = original_log(self, values, step=step, log_kwargs=log_kwargs)
        for t, before in zip(ours, counts, strict=True):
            if t._logs == before:  # not reached on this process
                t.log(values, step=step, **(log_kwargs or {}).get(t.name, {}))
        return result

    for wrapper, original in ((init_trackers, original_init), (log, original_log)):
        wrapper.__qualname__ = f"{cls.__name__}.{wrapper.__name__}"
        wrapper.__doc__ = (
            f"Accelerate's ``{wrapper.__name__}`` (main process), then, on a process it did not reach, "
            "the same call for each CoordinatorTracker (coordinator.integrations.accelerate)."
        )
        functools.update_wrapper(wrapper, original, assigned=(), updated=())  # sets only __wrapped__
    cls.init_trackers = init_trackers
    cls.log = log
    setattr(cls, _PATCH_MARK, True)


_patch_accelerator(_accelerator_module.Accelerator)
