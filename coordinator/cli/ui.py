"""``coordinator ui``: serve the local, read-only web UI over the store (docs/ui.md) until Ctrl-C."""

from __future__ import annotations

import argparse

from coordinator.cli.common import err, out
from coordinator.cli.runs import scan_runs
from coordinator.errors import ConfigError
from coordinator.journal.paths import resolve_root
from coordinator.ui.server import UiServer

__all__ = ["add_ui_parser", "cmd_ui"]


def add_ui_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``coordinator ui [--dir D] [--port 8765] [--host 127.0.0.1]``."""
    u = sub.add_parser("ui", help="serve a local, read-only web page of the runs (charts, rank health, compare)")
    # also after the command (``coordinator ui --dir D``); absent, the global ``--dir`` stands
    u.add_argument("--dir", default=argparse.SUPPRESS, help="store root (default $COORDINATOR_DIR or ./.coordinator)")
    u.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: any free port)")
    u.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the page has no login: any other address is warned about)",
    )
    u.set_defaults(fn=cmd_ui)


def cmd_ui(a: argparse.Namespace) -> int:
    """Serve until interrupted; prints the page's address.

    Raises:
        ConfigError: the address cannot be bound (the port is taken, the host is not local).
    """
    root = resolve_root(a.dir)
    try:
        server = UiServer(root, scan_runs, host=a.host, port=a.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {a.host}:{a.port}: {e}") from e
    out(f"coordinator ui: serving {root} at {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err("coordinator ui: stopped")
    return 0
