"""The aggregator process's entry point: arguments, logging, niceness, exit status.

Rank 0 starts it as ``python -m coordinator.aggregator --run ID --config-file PATH`` (see
:class:`coordinator.transport.launcher.AggregatorProcess`): PATH is a 0600 file in the run's
private socket directory, read and deleted at once, so the trackers' credentials never appear on
a command line. It prints ``READY <endpoint>`` once bound and exits 0 when the run finished, 3
when it failed. Everything it prints has the trackers' secrets masked.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO, cast

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.server import serve
from coordinator.core.redact import redact_text, secret_values
from coordinator.transport.discovery import private_dir, remove_orphan_record

__all__ = ["EXIT_FAILED", "RedactingStream", "main", "parse_args"]

EXIT_FAILED = 3
"""Exit status of an aggregator whose run ended ``failed``."""


def parse_args(argv: list[str] | None) -> AggregatorConfig:
    """The config from ``--run ID --config-file PATH`` (or ``--config JSON`` without secrets, by hand).

    The file holds every other :class:`AggregatorConfig` field as JSON; it must be private to
    this user, and is deleted once read.
    """
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[AggregatorConfig, str | None]:
    p = argparse.ArgumentParser(
        prog="python -m coordinator.aggregator",
        description="The rank-0 aggregator: ingest every rank's batches, dedupe, reduce, commit, ack, serve state.",
    )
    p.add_argument("--run", required=True, help="run id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-file", help="a 0600 JSON file of the remaining AggregatorConfig fields (deleted)")
    src.add_argument("--config", help="JSON of the remaining AggregatorConfig fields (no credentials)")
    a = p.parse_args(argv)
    if a.config_file is None:
        cfg = AggregatorConfig.from_json(a.run, a.config)
        if secret_values(cfg.backends):
            p.error("--config must not carry tracker credentials (visible in ps); use --config-file")
        return cfg, None
    return AggregatorConfig.from_json(a.run, _read_private(Path(a.config_file))), a.config_file


def _read_private(path: Path) -> str:
    """Read and delete the config file; refuse one that others could have read or written."""
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ValueError(f"{path} must be owned by uid {os.getuid()} with mode 0600")
        return path.read_text()
    finally:
        path.unlink(missing_ok=True)


class RedactingStream:
    """A text stream that masks the given secrets (and URL passwords) in everything written to it.

    The aggregator's stdout and stderr are wrapped, so no log line, warning or traceback it
    prints (its own, or a tracker client's such as MLflow's "View run at <uri>") shows a credential.
    """

    def __init__(self, stream: TextIO, secrets: list[str]) -> None:
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text, self._secrets))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _remove_socket_dir(config_file: str | None) -> None:
    """At the run's end, the socket directory rank 0 made for us is of no use to anyone."""
    if config_file is None:
        return
    d = Path(config_file).parent
    if d.name.startswith("run-") and d.parent == private_dir():
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the aggregator process; returns its exit status."""
    cfg, config_file = _parse(argv)
    secrets = secret_values(cfg.backends)
    sys.stdout = cast(TextIO, RedactingStream(sys.stdout, secrets))
    sys.stderr = cast(TextIO, RedactingStream(sys.stderr, secrets))
    logging.basicConfig(
        level=logging.DEBUG if cfg.debug else logging.INFO,
        format="%(asctime)s coordinator.aggregator[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if cfg.nice:
        # Logging yields to training on a busy machine; falling behind only fills the ranks' spools.
        os.nice(cfg.nice)
    Path(cfg.store_path).parent.mkdir(parents=True, exist_ok=True)
    rep = serve(cfg)
    _remove_socket_dir(config_file)
    if cfg.rendezvous_file:
        remove_orphan_record(Path(cfg.rendezvous_file), owner=cfg.parent_pid)
    return 0 if rep["state"] == "finished" else EXIT_FAILED
