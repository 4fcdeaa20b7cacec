"""``ddp_run``: one context manager that sets up torch.distributed (if needed) and the run.

Under ``torchrun`` (also with ``--max-restarts``), ``mpirun`` or ``srun``::

    from coordinator.integrations.torch_ddp import ddp_run

    with ddp_run("demo", "resnet", backend="mlflow") as run:   # backend= is the tracker's
        model = DDP(model)                                      # the process group exists here
        ...
        run.log({"train/loss": loss}, step=step)

``dist_backend=`` names the process-group backend (``gloo`` on CPU, ``nccl`` on GPU); every
other keyword goes to :func:`coordinator.init_run` unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import coordinator
from coordinator.errors import missing_extra

__all__ = ["PROCESS_GROUP_BACKENDS", "ddp_run"]

PROCESS_GROUP_BACKENDS = frozenset({"gloo", "nccl", "mpi", "ucc", "xccl", "hccl", "fake"})
"""Names that ``backend=`` of ``ddp_run`` meant before ``dist_backend=`` (deprecated there)."""

_STORE_TIMEOUT = timedelta(minutes=30)
"""The TCP store client's timeout; torch's own default for ``init_process_group``."""


def _is_process_group_backend(value: object) -> bool:
    """``"gloo"``, ``"nccl"``, ``"cpu:gloo,cuda:nccl"``: a process-group backend, not a tracker."""
    if not isinstance(value, str) or not value.strip():
        return False
    parts = [p.strip().rsplit(":", 1)[-1].lower() for p in value.split(",")]
    return all(p in PROCESS_GROUP_BACKENDS for p in parts)


def _init_process_group(dist: Any, dist_backend: str) -> None:
    """Create the default process group from the launcher's environment.

    Under torchrun's elastic agent (``TORCHELASTIC_USE_AGENT_STORE=True``) every attempt gets
    its own key prefix in the agent's store: after a restart the store still holds the previous
    attempt's gloo addresses, and a plain ``init_process_group`` fails in ``connectFullMesh``
    (``Connection refused``).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=dist_backend)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=_STORE_TIMEOUT
    )
    store = dist.PrefixStore(f"coordinator-ddp/attempt-{attempt}/", base)
    dist.init_process_group(backend=dist_backend, store=store, rank=rank, world_size=world)


@contextmanager
def ddp_run(
    project: str | None = None, name: str | None = None, *, dist_backend: str = "gloo", **init_run_kwargs: Any
) -> Iterator[coordinator.Run]:
    """Initialise the default process group from the launcher's environment and open the run.

    The process group is created only if none exists and torchrun's variables say there is
    more than one rank (``WORLD_SIZE`` > 1, ``MASTER_ADDR``/``MASTER_PORT``), and it is
    destroyed on exit only then. Under torchrun's elastic agent each restart attempt uses its
    own prefix of the agent's store, so ``torchrun --max-restarts=N`` works without any code of
    yours. Under ``mpirun``/``srun`` without torchrun's variables no process group is created
    (create one first if you need it); the run finds its rank in the launcher's variables.

    On exit the run is stopped first (rank 0 waits for every rank's data), then the process
    group is destroyed. An exception in the block marks the run failed with its message.

    Args:
        project: as for :func:`coordinator.init_run` (``None``: ``"default"``).
        name: as for :func:`coordinator.init_run`.
        dist_backend: process-group backend when one is created (``gloo`` on CPU, ``nccl`` on
            GPU, or torch's ``"cpu:gloo,cuda:nccl"`` form).
        **init_run_kwargs: passed to :func:`coordinator.init_run` unchanged: ``backend=``
            (the tracker: ``mlflow``, ``tensorboard``, ...), ``backend_options=``, ``mode=``,
            ``policies=``, ``with_id=``, ``settings=coordinator.Settings(...)``. A ``backend=``
            naming a process-group backend (``"gloo"``, ``"nccl"``, ``"mpi"``) is still taken as
            ``dist_backend=``, with a :class:`DeprecationWarning`, for one release.

    Yields:
        The open :class:`coordinator.Run` of this rank.

    Raises:
        ImportError: torch is missing; install the ``torch`` extra.
        TypeError: ``backend=`` names a process-group backend and ``dist_backend=`` another.
    """
    legacy = init_run_kwargs.get("backend")
    if _is_process_group_backend(legacy):
        if dist_backend not in ("gloo", legacy):
            raise TypeError(
                f"ddp_run(backend={legacy!r}, dist_backend={dist_backend!r}): backend= is the tracker "
                "(mlflow, tensorboard, ...); name the process-group backend with dist_backend= only"
            )
        warnings.warn(
            f"ddp_run(backend={legacy!r}) is deprecated: use dist_backend={legacy!r} for the process "
            "group; backend= now names the tracker and is passed to coordinator.init_run",
            DeprecationWarning,
            stacklevel=3,  # this generator, contextlib's __enter__, the caller's with statement
        )
        dist_backend = init_run_kwargs.pop("backend")
    try:
        import torch.distributed as dist
    except ImportError as e:
        raise missing_extra("ddp_run", "torch", e) from e
    created = False
    if (
        dist.is_available()
        and not dist.is_initialized()
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
        and "MASTER_ADDR" in os.environ
    ):
        _init_process_group(dist, dist_backend)
        created = True
    try:
        with coordinator.init_run("default" if project is None else project, name, **init_run_kwargs) as run:
            yield run
    finally:
        if created:
            dist.destroy_process_group()
