"""The worker API every rank logs through: ``init_run``, ``Run``, ``Handle``."""
