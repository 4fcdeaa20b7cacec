"""Lightning: ``CoordinatorLogger``, a logger that logs on every rank and lets the aggregator reduce.

.. code-block:: python

    from coordinator.integrations.lightning import CoordinatorLogger

    trainer = Trainer(strategy="ddp", devices=4, logger=CoordinatorLogger("demo", "resnet"))
    # in the LightningModule, no sync_dist: every rank logs its own value, no collective
    self.log("train/loss", loss)

Lightning calls a logger's ``log_metrics`` on every rank; the built-in loggers drop the call on
ranks other than 0 (``rank_zero_only``), which is why ``self.log(..., sync_dist=True)`` (one
blocking all-reduce per metric per call) is the usual way to get a cross-rank mean. This logger
keeps every rank's call: each rank's values become its own series and the aggregator reduces
them into the main series by the key's policy (mean by default), off the training path.

Works with ``lightning.pytorch`` (``pip install lightning``) and, when only that is installed,
``pytorch_lightning``; with the ``Trainer``'s ``ddp``, ``ddp_spawn`` and ``torchrun``-launched
jobs, and with Fabric (``Fabric(loggers=[CoordinatorLogger(...)])``, ``fabric.log_dict``).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.util
import os
import sys
import threading
from typing import Any

import coordinator
from coordinator.errors import missing_extra

from ._lazy import CLOSE_TIMEOUT_S, LazyRun, flatten, logged_already
from ._versions import check_tested

__all__ = ["CoordinatorLogger"]

_log = logging.getLogger("coordinator.integrations.lightning")


def _logger_base() -> tuple[Any, str]:
    """Lightning's ``Logger`` base class and the distribution it comes from.

    Imported by name, so type checking does not depend on which Lightning (if any) is installed.
    """
    try:
        return importlib.import_module("lightning.pytorch.loggers").Logger, "lightning"
    except ImportError as first:
        try:
            return importlib.import_module("pytorch_lightning.loggers").Logger, "pytorch-lightning"
        except ImportError:
            raise missing_extra("coordinator.integrations.lightning", "lightning", first) from first


_BASE = _logger_base()
_Logger: Any = _BASE[0]
check_tested(_BASE[1], (2,), integration="lightning")


def _process_group_ready() -> bool:
    """Whether opening the run now finds the right rank: a process group exists, or none is coming."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1


class CoordinatorLogger(_Logger):  # Lightning's Logger, imported by name (Any to mypy)
    """A Lightning ``Logger`` that logs every rank's metrics to one coordinator run.

    The run is opened on first use on each rank (Lightning touches ``experiment`` in its setup
    hook, after the process group exists, so the run finds its aggregator through the process
    group's store), with the global rank of ``torch.distributed``.

    * ``log_metrics(metrics, step)`` → ``run.log(metrics, step=step)`` on every rank: the main
      series of a key is the cross-rank reduction (mean unless ``policies=`` says otherwise),
      each rank's own values its per-rank series; ``sync_dist`` is not needed.
    * ``log_hyperparams(params)`` → fields ``hparams/<name>`` (nested dicts and
      ``argparse.Namespace`` flattened: ``hparams/optimizer/lr``).
    * ``finalize("success")`` waits until this rank's data is durable; ``finalize("failed")``
      marks the run failed with the exception being handled (its type and message), except for
      ``KeyboardInterrupt`` / ``SystemExit`` (a signal), which the run records as interrupted.
    * ``after_save_checkpoint`` uploads the best and last checkpoint files when ``log_model``.
    * The run is closed by :meth:`close` or at process exit, also in the worker processes of
      ``ddp_spawn`` and ``ddp_fork`` (so ``trainer.test()`` after ``trainer.fit()`` still logs).

    Args:
        project: project name of the run (default ``"default"``).
        name: run name (default: the run id).
        log_model: upload checkpoints saved by ``ModelCheckpoint`` (rank 0 only, where
            Lightning reports them) as fields ``checkpoints/best`` and ``checkpoints/last``.
        **init_run_kwargs: passed to :func:`coordinator.init_run` (``policies=``, ``mode=``,
            ``backend=``, ``settings=coordinator.Settings(...)``, ...).
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        log_model: bool = False,
        **init_run_kwargs: Any,
    ) -> None:
        super().__init__()
        self._project = project
        self._name = name
        self._log_model = log_model
        self._init_kwargs = dict(init_run_kwargs)
        self._setup_process_state()

    def _setup_process_state(self) -> None:
        self._lazy: LazyRun | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._uploaded: dict[str, tuple[str, float]] = {}
        self._last: dict[str, tuple[int, float]] = {}
        """Each key's last (step, number) logged: Lightning repeats ``epoch`` in every dict of a step."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into ``ddp_spawn`` workers without this process's run: each opens its own."""
        state = dict(self.__dict__)
        for k in ("_lazy", "_closed", "_lock", "_uploaded", "_last"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled logger with no run opened yet in this process."""
        self.__dict__.update(state)
        self._setup_process_state()

    # -- the run ----------------------------------------------------------------------------

    def _lazy_run(self) -> LazyRun:
        with self._lock:
            if self._lazy is None:
                if self._closed:
                    raise coordinator.ClosedError("this CoordinatorLogger was closed")
                self._lazy = LazyRun(self._project, self._name, self._init_kwargs)
                if multiprocessing.parent_process() is not None:
                    # A ddp_spawn / ddp_fork worker: a forked one ends with os._exit (no atexit),
                    # but multiprocessing runs its exit finalizers in every worker it starts.
                    multiprocessing.util.Finalize(None, self._lazy.close, exitpriority=10)
            return self._lazy

    @property
    def experiment(self) -> coordinator.Run:
        """The :class:`coordinator.Run` of this rank, opened now if this is the first use.

        Raises:
            ClosedError: the logger was closed.
            CoordinatorError: ``init_run`` failed.
        """
        return self._lazy_run().get()

    @property
    def run_id(self) -> str | None:
        """The run's id (``None`` before the run could be opened: no process group yet)."""
        if self._lazy is not None and self._lazy.opened:
            return self.experiment.id
        if self._closed or not _process_group_ready():
            return None
        return self.experiment.id

    @property
    def name(self) -> str:
        """The run name given, else the project name."""
        return self._name or self._project or "default"

    @property
    def version(self) -> str | None:
        """The run id (see :attr:`run_id`)."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """``None``: checkpoints stay in the Trainer's ``default_root_dir``, not in the run's store."""
        return None

    # -- Lightning's logger hooks ----------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` from this rank (every rank; never a collective).

        Lightning adds ``epoch`` to every dict it logs, the training dict and the validation dict of
        a step alike: a number a key already has at ``step`` is not logged again (a second write of
        it would be counted as a replacement in the run's report).

        Args:
            metrics: metric name -> number (Lightning has already turned tensors into numbers).
            step: the step; ``None`` numbers each key on (the key's previous step + 1).
        """
        if step is not None:
            last = self._last
            metrics = {
                k: v
                for k, v in metrics.items()
                if type(v) not in (int, float) or not logged_already(last, k, step, float(v))
            }
        if metrics:
            self.experiment.log(dict(metrics), step=step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters as fields under ``hparams/`` (every rank may: stored once when equal).

        Args:
            params: a mapping (nested mappings allowed) or an ``argparse.Namespace``; values a
                field cannot hold are recorded as their ``str()``.
            *args, **kwargs: ignored (other loggers' extras, e.g. TensorBoard's ``metrics``).
        """
        fields = flatten("hparams", params)
        run = self.experiment
        for path, value in fields.items():
            run[path] = value

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Upload the best and last checkpoint files when ``log_model`` (each new file once).

        Lightning calls this on global rank 0 only, after ``ModelCheckpoint`` saved a file.
        """
        if not self._log_model:
            return
        run = self.experiment
        for label, path in (
            ("best", getattr(checkpoint_callback, "best_model_path", "")),
            ("last", getattr(checkpoint_callback, "last_model_path", "")),
        ):
            if not path or not os.path.isfile(path):
                continue
            stamp = (os.path.abspath(path), os.path.getmtime(path))
            if self._uploaded.get(label) == stamp:
                continue
            run[f"checkpoints/{label}"].upload(path)
            self._uploaded[label] = stamp

    def finalize(self, status: str) -> None:
        """End of a ``fit``/``validate``/``test``: wait for this rank's data; on failure mark the run.

        Lightning calls ``finalize("failed")`` from inside its exception handler, so the
        exception is at hand: the run records its type and message (and this rank). A
        ``KeyboardInterrupt`` or ``SystemExit`` (a signal) is left to the run, which records
        it as interrupted. A run that was never opened (a failure before Lightning's setup) is
        not opened here. Never raises, and waits at most the close timeout.
        """
        lazy = self._lazy
        if lazy is None or not lazy.opened:
            return
        try:
            if status == "failed":
                exc = sys.exc_info()[1]
                if not isinstance(exc, KeyboardInterrupt | SystemExit):
                    lazy.fail(exc if exc is not None else "Lightning finalized the run as failed")
            lazy.wait(CLOSE_TIMEOUT_S)
        except coordinator.CoordinatorError as e:
            _log.error("coordinator run at the end of training: %s", e)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop this rank's run (idempotent; also done at process exit). Later logging raises."""
        with self._lock:
            self._closed = True
            lazy = self._lazy
        if lazy is not None:
            lazy.close(timeout)
