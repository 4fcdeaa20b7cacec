"""The aggregator process's entry point: arguments, logging, niceness, exit status.

Rank 0 starts it as ``python -m coordinator.aggregator --run ID --config JSON`` (see
:class:`coordinator.transport.launcher.AggregatorProcess`); it prints ``READY <endpoint>`` once
bound and exits 0 when the run finished, 3 when it failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from coordinator.aggregator.config import AggregatorConfig
from coordinator.aggregator.server import serve

__all__ = ["EXIT_FAILED", "main", "parse_args"]

EXIT_FAILED = 3
"""Exit status of an aggregator whose run ended ``failed``."""


def parse_args(argv: list[str] | None) -> AggregatorConfig:
    """The config from ``--run ID --config JSON`` (JSON: every other :class:`AggregatorConfig` field)."""
    p = argparse.ArgumentParser(
        prog="python -m coordinator.aggregator",
        description="The rank-0 aggregator: ingest every rank's batches, dedupe, reduce, commit, ack, serve state.",
    )
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--config", required=True, help="JSON of the remaining AggregatorConfig fields")
    a = p.parse_args(argv)
    return AggregatorConfig.from_json(a.run, a.config)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the aggregator process; returns its exit status."""
    cfg = parse_args(argv)
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
    return 0 if rep["state"] == "finished" else EXIT_FAILED
