"""The ``coordinator`` command: argument parsing and dispatch, and ``coordinator runs``.

The other commands live in their own modules: ``show``, ``sync`` and ``doctor``.
"""

from __future__ import annotations

import argparse
import json
import sys

from coordinator.cli.common import out, parse_options, when
from coordinator.cli.show import cmd_show
from coordinator.cli.sync import cmd_sync
from coordinator.errors import CoordinatorError
from coordinator.journal.store import list_runs, resolve_root

__all__ = ["main"]


def _cmd_runs(a: argparse.Namespace) -> int:
    root = resolve_root(a.dir)
    runs = list_runs(root)
    if a.json:
        out(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "project": r.project,
                        "name": r.name,
                        "state": r.state,
                        "world_size": r.world_size,
                        "created": r.created,
                        "ended": r.ended,
                        "points": (r.report or {}).get("points"),
                    }
                    for r in runs
                ],
                indent=2,
            )
        )
        return 0
    if not runs:
        out(f"no runs under {root}")
        return 0
    out(f"{'ID':<24} {'PROJECT':<12} {'NAME':<20} {'STATE':<9} {'RANKS':>5} {'POINTS':>10} {'CREATED':<19} DURATION")
    for r in runs:
        pts = (r.report or {}).get("points", "-")
        dur = f"{r.ended - r.created:.1f}s" if r.ended else "-"
        out(
            f"{r.id:<24} {r.project[:12]:<12} {r.name[:20]:<20} {r.state:<9} {r.world_size:>5} "
            f"{pts!s:>10} {when(r.created):<19} {dur}"
        )
    return 0


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
    r = sub.add_parser("runs", help="list stored runs")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(fn=_cmd_runs)
    s = sub.add_parser("show", help="show a run's fields, series, events and final report")
    s.add_argument("run", help="run id (or a unique prefix), or 'latest'")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_show)
    y = sub.add_parser("sync", help="upload an offline run, or what a crashed job left in its spools, into the store")
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
    d = sub.add_parser("doctor", help="check the installation end to end (aggregator, store, optionally a backend)")
    d.add_argument("--backend", help="also check this backend: a test write and read-back")
    d.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option, repeatable")
    d.add_argument("--keep", action="store_true", help="keep the scratch run directory")
    d.set_defaults(fn=_cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``coordinator`` console script; returns the exit status (2: an error)."""
    a = _parser().parse_args(argv)
    try:
        return int(a.fn(a))
    except (CoordinatorError, ImportError) as e:  # ImportError: a backend's extra is not installed
        sys.stderr.write(f"coordinator: error: {e}\n")
        return 2
