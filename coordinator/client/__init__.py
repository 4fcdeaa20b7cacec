"""The worker API every rank logs through: ``init_run`` (start.py), ``Run`` (run.py), ``Handle`` (handle.py)."""
