"""The names of the environment variables set by launchers (torchrun, MPI, SLURM) and of the job secret."""

from __future__ import annotations

__all__ = [
    "COORDINATOR_PUREPYTHON",
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

# Ours that are not settings: the job secret is read where it is used and never stored in a
# Settings object (which is printed and passed around). Every other COORDINATOR_* variable is a
# Settings field's: ``coordinator.settings.env_name(field)``.
COORDINATOR_SECRET = "COORDINATOR_SECRET"  # the variable name, not a secret
"""Job-wide secret (>= 16 characters) from which multi-node CURVE keys are derived."""
COORDINATOR_SECRET_FILE = "COORDINATOR_SECRET_FILE"  # the variable name
"""A 0600 file holding the job secret (instead of COORDINATOR_SECRET)."""
COORDINATOR_PUREPYTHON = "COORDINATOR_PUREPYTHON"
"""Set to 1: the Python paths run where the C extensions were built (ring rows, run calls, a ring's walk)."""

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
