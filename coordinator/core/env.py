"""Every environment variable the library reads, in one place."""

from __future__ import annotations

__all__ = [
    "COORDINATOR_AGG_STDERR",
    "COORDINATOR_BACKEND",
    "COORDINATOR_BACKEND_OPTIONS",
    "COORDINATOR_DEBUG",
    "COORDINATOR_DIR",
    "COORDINATOR_ENDPOINT",
    "COORDINATOR_MODE",
    "COORDINATOR_RUN_ID",
    "COORDINATOR_SECRET",
    "COORDINATOR_SECRET_FILE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_RANK",
    "OMPI_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "RANK",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "WORLD_SIZE",
]

# Ours.
COORDINATOR_DIR = "COORDINATOR_DIR"
"""Root directory of the embedded store (default ``./.coordinator``)."""
COORDINATOR_MODE = "COORDINATOR_MODE"
"""Default mode when ``init_run(mode=...)`` is not given."""
COORDINATOR_DEBUG = "COORDINATOR_DEBUG"
"""``1`` logs every connection, batch, ack and retry at DEBUG level."""
COORDINATOR_ENDPOINT = "COORDINATOR_ENDPOINT"
"""Explicit aggregator endpoint; skips discovery (set together with COORDINATOR_RUN_ID)."""
COORDINATOR_RUN_ID = "COORDINATOR_RUN_ID"
"""Run id shared by every rank when the launcher chooses it."""
COORDINATOR_SECRET = "COORDINATOR_SECRET"  # noqa: S105 - the variable name, not a secret
"""Job-wide secret (>= 16 characters) from which multi-node CURVE keys are derived."""
COORDINATOR_SECRET_FILE = "COORDINATOR_SECRET_FILE"  # noqa: S105 - the variable name
"""A 0600 file holding the job secret (instead of COORDINATOR_SECRET)."""
COORDINATOR_BACKEND = "COORDINATOR_BACKEND"
"""External tracker(s) fed from the store when init_run(backend=...) is not given."""
COORDINATOR_BACKEND_OPTIONS = "COORDINATOR_BACKEND_OPTIONS"
"""JSON options of the backend(s)."""
COORDINATOR_AGG_STDERR = "COORDINATOR_AGG_STDERR"
"""File the aggregator's log goes to instead of the parent's stderr."""

# Launchers'.
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
TORCHELASTIC_RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
OMPI_RANK = "OMPI_COMM_WORLD_RANK"
OMPI_SIZE = "OMPI_COMM_WORLD_SIZE"
PMI_RANK = "PMI_RANK"
PMI_SIZE = "PMI_SIZE"
SLURM_PROCID = "SLURM_PROCID"
SLURM_NTASKS = "SLURM_NTASKS"
