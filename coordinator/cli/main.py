"""The ``coordinator`` command: argument parsing and dispatch.

The commands live in their own modules: ``runs``, ``show``, ``sync``, ``purge``, ``doctor``, ``ui``,
``plot``, ``export``, ``top`` and ``rings``.
"""

from __future__ import annotations

import argparse
import os
import sys

from coordinator.cli.common import out, parse_options
from coordinator.cli.export import add_export_parser
from coordinator.cli.plot import add_plot_parser
from coordinator.cli.purge import add_purge_args, cmd_purge
from coordinator.cli.rings import add_rings_parser
from coordinator.cli.runs import add_filters, cmd_runs
from coordinator.cli.show import cmd_show
from coordinator.cli.sync import cmd_sync
from coordinator.cli.top import add_top_parser
from coordinator.cli.ui import add_ui_parser
from coordinator.errors import CoordinatorError

__all__ = ["main"]


def _cmd_doctor(a: argparse.Namespace) -> int:
    from coordinator.cli.doctor import run_doctor

    ok = True
    for line_ok, line in run_doctor(a.backend, parse_options(a.option), keep=a.keep):
        out(f"{'OK  ' if line_ok else 'FAIL'}  {line}")
        ok = ok and line_ok
    out("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordinator", description="Inspect and upload coordinator runs.")
    p.add_argument("--dir", help="store root (default $COORDINATOR_DIR or ./.coordinator)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("runs", help="list stored runs (state, size, tags)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    add_filters(r)
    r.set_defaults(fn=cmd_runs)
    s = sub.add_parser("show", help="show a run's fields, series, events and final report")
    s.add_argument("run", help="run id (or a unique prefix), or 'latest'")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_show)
    y = sub.add_parser(
        "sync", help="upload an offline run, or what a crashed job left in its spools and rings, into the store"
    )
    y.add_argument("run", help="run id (with --to also a unique prefix, or 'latest')")
    y.add_argument(
        "--to",
        metavar="BACKEND",
        help="push the stored run into a backend: mlflow, tensorboard, "
        "wandb, neptune (resumes where a previous push to the same destination stopped, "
        "once the destination is seen to hold it)",
    )
    y.add_argument(
        "--from-start",
        action="store_true",
        help="with --to: ignore the saved cursor and send the whole run again",
    )
    y.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="backend or forwarder option, repeatable (e.g. tracking_uri=http://127.0.0.1:5000)",
    )
    y.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (default: none)")
    y.set_defaults(fn=cmd_sync)
    g = sub.add_parser("purge", help="delete runs (directories, artifacts, spools); never a live one")
    add_filters(g)
    add_purge_args(g)
    g.set_defaults(fn=cmd_purge)
    d = sub.add_parser("doctor", help="check the installation end to end (aggregator, store, optionally a backend)")
    d.add_argument("--backend", help="also check this backend: a test write and read-back")
    d.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option, repeatable")
    d.add_argument("--keep", action="store_true", help="keep the scratch run directory")
    d.set_defaults(fn=_cmd_doctor)
    add_ui_parser(sub)
    add_plot_parser(sub)
    add_export_parser(sub)
    add_top_parser(sub)
    add_rings_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``coordinator`` console script; returns the exit status (2: an error).

    Output piped into a reader that stops early (``coordinator show RUN | head``) ends quietly.
    """
    a = _parser().parse_args(argv)
    try:
        code = int(a.fn(a))
        sys.stdout.flush()  # here, not at exit: a closed pipe is then this handler's, not a traceback
        return code
    except (CoordinatorError, ImportError) as e:  # ImportError: a backend's extra is not installed
        sys.stderr.write(f"coordinator: error: {e}\n")
        return 2
    except BrokenPipeError:
        # The reader is gone: what is still buffered cannot be written. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again (Python's documented recipe for SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
