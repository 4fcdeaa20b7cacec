"""Hugging Face ``Trainer``: every process logs through the coordinator, one run, no race.

Add one callback::

    from coordinator.integrations.transformers import CoordinatorCallback

    cb = CoordinatorCallback(project="demo", name="bert-ddp")
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[cb])
    trainer.train()

The callback is active in **every** process (W&B's callback logs from the main process only).
The Trainer hands every rank the same all-gathered loss, so the Trainer's own series are equal
across ranks; what every rank gains is one run written without a race, its own extra metrics
(``cb.run.log({...}, step=state.global_step)`` from user code: the aggregator keeps each rank's
series and reduces them, mean by default, with no collective in the training step) and the
system metrics.

Naming (the convention of W&B's callback): the Trainer's ``loss`` is ``train/loss``,
``eval_loss`` is ``eval/loss``, ``test_*`` is ``test/*``; the one-off entries of the end of
training (``train_runtime``, ``train_samples_per_second``, ``total_flos``, ...) are fields
``summary/<key>`` (written by rank 0: they are per-process timings, and one value per field
avoids a conflict); ``TrainingArguments`` are fields ``hparams/<argument>`` (tokens dropped)
and the model's config ``hparams/model/<key>``.

The Trainer has no callback for an exception: an uncaught exception in any process marks the
run ``failed`` by itself (the run's own exception recording); code that catches the exception
and goes on calls :meth:`CoordinatorCallback.fail`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, SupportsFloat, cast

import coordinator
import coordinator.errors

from ._lazy import CLOSE_TIMEOUT_S, LazyRun, flatten, logged_already
from ._versions import check_tested

try:
    from transformers import TrainerCallback
except ImportError as _e:  # only without the extra
    raise coordinator.errors.missing_extra("coordinator.integrations.transformers", "transformers", _e) from _e

__all__ = ["SUMMARY_KEYS", "CoordinatorCallback", "metric_name"]

check_tested("transformers", (5,), integration="transformers")

_log = logging.getLogger("coordinator.integrations")

SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)
"""Keys of the Trainer's end-of-training log that are recorded as ``summary/<key>`` fields, not series."""

_RANK_DEPENDENT_ARGS = frozenset({"local_rank"})
"""``TrainingArguments`` that differ between processes of one job (recording them would be a conflict)."""

_SECRET = re.compile(r"(_token$|^token$|secret|password|api_key|apikey|credential)", re.IGNORECASE)


def metric_name(key: str) -> str:
    """The run key of a Trainer log key: ``eval_x`` -> ``eval/x``, ``test_x`` -> ``test/x``, else ``train/x``."""
    for prefix in ("eval", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


def _number(value: object) -> float | None:
    """``value`` as a float if it is a metric the run takes (numbers, numpy scalars, 1-element tensors)."""
    if isinstance(value, str | bytes):
        return None
    try:
        return float(cast(SupportsFloat, value))  # float() is the check: what it refuses returns None below
    except (TypeError, ValueError, RuntimeError):
        return None


def _field_value(value: object) -> object:
    """A summary value as a field: Python numbers and strings as given, numpy/tensor scalars unwrapped."""
    item = getattr(value, "item", None)
    if not isinstance(value, bool | int | float | str) and callable(item):
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return value if isinstance(value, bool | int | float | str) else str(value)


class CoordinatorCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that logs the Trainer's metrics to a coordinator run on every process.

    The run is opened lazily (at ``on_train_begin``, or on the first use of :attr:`run`), after the
    Trainer set up its process group, so every process finds the aggregator of rank 0 through the
    ``torch.distributed`` store. ``on_train_end`` waits until this process's data is durable but
    does not close the run, so ``trainer.evaluate()`` after ``trainer.train()`` still logs; the run
    is closed at process exit or by :meth:`close`.

    Args:
        project: the run's project; default: ``TrainingArguments.project`` when the Trainer gives
            one, else ``"default"``.
        name: the run's name; default: ``TrainingArguments.run_name`` when set.
        **init_run_kwargs: passed to :func:`coordinator.init_run` unchanged (``with_id=``, ``mode=``,
            ``policies=``, ``backend=``, ``backend_options=``, ``settings=``).
    """

    def __init__(self, project: str | None = None, name: str | None = None, **init_run_kwargs: Any) -> None:
        self._lazy = LazyRun(project, name, init_run_kwargs)
        self._project_given = project is not None
        self._name_given = name is not None
        self._last: dict[str, tuple[int, float]] = {}
        self._skipped: set[str] = set()

    # -- public --------------------------------------------------------------------------------

    @property
    def run(self) -> coordinator.Run:
        """The run (opened now on first use): log this process's own metrics with ``run.log(..., step=)``.

        Raises:
            ClosedError: :meth:`close` was called before.
        """
        return self._lazy.get()

    @property
    def run_id(self) -> str:
        """The run's id, the same in every process (opens the run on first use)."""
        return self.run.id

    def fail(self, reason: str | BaseException) -> None:
        """Mark the run failed (for code that catches the Trainer's exception and goes on)."""
        self._lazy.fail(reason)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the run now (idempotent; otherwise done at process exit), waiting at most ``timeout`` s."""
        self._lazy.close(timeout)

    # -- Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Open the run and record the ``TrainingArguments`` and the model config under ``hparams/``."""
        self._name_from(args)
        try:
            run = self._lazy.get()
        except coordinator.ClosedError:
            _log.warning("CoordinatorCallback: the run was closed; this training is not recorded")
            return
        fields = flatten("hparams", _training_arguments(args))
        config = getattr(model, "config", None)
        to_dict = getattr(config, "to_dict", None)
        if callable(to_dict):
            flatten("hparams/model", to_dict(), fields)
        _set_fields(run, fields)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Log the Trainer's metrics at ``state.global_step`` (``train/*``, ``eval/*``); summaries as fields."""
        if logs:
            self._log(args, int(state.global_step), logs)

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Log ``trainer.predict()``'s metrics (``test/*`` by default) at ``state.global_step``."""
        if metrics:
            self._log(args, int(state.global_step), metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Wait (bounded) until this process's data is durable; the run stays open for ``evaluate()``."""
        self._lazy.wait()

    # -- internals -----------------------------------------------------------------------------

    def _name_from(self, args: Any) -> None:
        """Take the run's project and name from the ``TrainingArguments`` unless given."""
        if self._lazy.opened:
            return
        if not self._project_given and isinstance(getattr(args, "project", None), str) and args.project:
            self._lazy.project = args.project
        run_name = getattr(args, "run_name", None)
        if not self._name_given and isinstance(run_name, str) and run_name and run_name != args.output_dir:
            self._lazy.name = run_name

    def _log(self, args: Any, step: int, logs: Mapping[str, Any]) -> None:
        self._name_from(args)
        try:
            run = self._lazy.get()
        except coordinator.ClosedError:
            _log.warning("CoordinatorCallback: the run was closed; metrics at step %d not logged", step)
            return
        metrics: dict[str, float] = {}
        summary: dict[str, object] = {}
        for key, value in logs.items():
            key = str(key)
            if key in SUMMARY_KEYS:
                summary[f"summary/{key}"] = _field_value(value)
                continue
            name = metric_name(key)
            num = _number(value)
            if num is None:
                if name not in self._skipped:
                    self._skipped.add(name)
                    _log.info("CoordinatorCallback: %s is not a number (%r); not logged", name, value)
                continue
            # The end-of-training log repeats `epoch` at the last step, as does evaluate().
            if not logged_already(self._last, name, step, num):
                metrics[name] = num
        if metrics:
            try:
                run.log(metrics, step=step)
            except (TypeError, ValueError):  # a metric name the run rejects: log the others
                for name, num in metrics.items():
                    try:
                        run.log({name: num}, step=step)
                    except (TypeError, ValueError) as e:
                        if name not in self._skipped:
                            self._skipped.add(name)
                            _log.warning("CoordinatorCallback: %s not logged: %s", name, e)
        if summary and run.rank == 0:
            _set_fields(run, summary)


def _training_arguments(args: Any) -> dict[str, Any]:
    """``args.to_dict()`` without tokens and secrets and without the per-process ``local_rank``."""
    to_dict = getattr(args, "to_dict", None)
    d: Mapping[str, Any] = to_dict() if callable(to_dict) else vars(args)
    return {k: v for k, v in d.items() if k not in _RANK_DEPENDENT_ARGS and not _SECRET.search(str(k))}


def _set_fields(run: coordinator.Run, fields: Mapping[str, object]) -> None:
    """Set each field; one the run rejects (a malformed name, an oversized string) is skipped with a warning."""
    for path, value in fields.items():
        try:
            run[path] = value
        except (TypeError, ValueError) as e:
            _log.warning("CoordinatorCallback: field %s not recorded: %s", path, e)
