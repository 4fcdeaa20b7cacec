"""The ``coordinator`` command line."""

from coordinator.cli.main import main

__all__ = ["main"]
