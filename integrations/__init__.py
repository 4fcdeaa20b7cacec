"""Integrations of coordinator with training frameworks, installed as ``coordinator.integrations``.

Each lives in its own module, imported on demand (importing this package imports no framework;
a missing framework raises ``ImportError`` naming the extra to install):

* ``torch_ddp`` — :func:`~coordinator.integrations.torch_ddp.ddp_run` for raw DDP (torchrun,
  elastic restarts, mpirun/srun);
* ``lightning``, ``transformers``, ``accelerate`` — a logger, a callback and a tracker that log
  from every rank through one run.

A plain ``mpirun``/``srun`` job needs no integration: :func:`coordinator.init_run` reads the rank
and world size from the launcher's environment (``examples/mpi_train.py``).
"""

from __future__ import annotations

__all__: list[str] = []
