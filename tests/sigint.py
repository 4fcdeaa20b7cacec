"""Children that take Ctrl-C: a test that sends SIGINT starts its child with SIGINT's default action."""

from __future__ import annotations

import sys

__all__ = ["with_default_sigint"]

_RESET = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def with_default_sigint(argv: list[str]) -> list[str]:
    """``argv`` (its first item an absolute path) run through a Python that sets SIGINT's action to the default,
    then execs it.

    A shell starts a background job (``cmd &``) with SIGINT ignored, and an ignored signal stays ignored across
    exec: a child Python then installs no ``KeyboardInterrupt`` handler and a test's SIGINT does nothing (the
    suite launched that way failed its Ctrl-C tests). A user's Ctrl-C reaches a process with the default action:
    this gives the child that, wherever the suite was started from.
    """
    return [sys.executable, "-c", _RESET, *argv]
