"""``ddp_run``: one context manager that sets up torch.distributed (if needed) and the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import coordinator

__all__ = ["ddp_run"]


@contextmanager
def ddp_run(
    project: str = "default", name: str | None = None, *, backend: str = "gloo", **init_kwargs: Any
) -> Iterator[coordinator.Run]:
    """Initialise the default process group from torchrun's environment and open the run.

    The process group is created only if none exists (and destroyed on exit only then); the
    run uses its store to find the aggregator. On exit the run is stopped first (rank 0 waits
    for every rank's data), then the process group.

    Args:
        project, name: as for :func:`coordinator.init_run`.
        backend: process-group backend when one is created (``gloo`` on CPU, ``nccl`` on GPU).
        **init_kwargs: passed to :func:`coordinator.init_run` (``mode=``, ``policies=``,
            ``settings=coordinator.Settings(...)``, ...).

    Raises:
        ImportError: torch is missing; install the ``torch`` extra.
    """
    try:
        import torch.distributed as dist
    except ImportError as e:
        raise coordinator.errors.missing_extra("ddp_run", "torch", e) from e
    created = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend=backend)
        created = True
    try:
        with coordinator.init_run(project, name, **init_kwargs) as run:
            yield run
    finally:
        if created:
            dist.destroy_process_group()
