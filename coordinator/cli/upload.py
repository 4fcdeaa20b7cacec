"""Upload of spooled data: offline runs, and what a crashed job's ranks left unacknowledged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from coordinator.aggregator.core import Aggregator, AggregatorConfig
from coordinator.errors import ConfigError
from coordinator.journal.store import LocalStore, run_dir
from coordinator.transport import wire
from coordinator.transport.spool import read_spool

__all__ = ["spool_root", "upload_spools"]


def spool_root(root: Path, run_id: str) -> Path:
    """Where the ranks of a run spool their batches (one directory per rank incarnation)."""
    return root / "spool" / run_id


def _config(root: Path, run_id: str) -> AggregatorConfig:
    db = run_dir(root, run_id) / "run.db"
    meta_file = spool_root(root, run_id) / "run.meta"
    fields: dict[str, Any]
    if db.exists():
        s = LocalStore(db, readonly=True)
        try:
            info = s.run_info()
            saved = s.meta("config")
        finally:
            s.close()
        fields = json.loads(saved) if saved else {}
        fields.update(world_size=info.world_size, project=info.project, name=info.name)
    elif meta_file.exists():
        rec = next(read_spool(meta_file), None)
        if rec is None:
            raise ConfigError(f"{meta_file} is empty or corrupt")
        fields = wire.decode_map(rec.payload)
    else:
        raise ConfigError(f"nothing to upload for run {run_id!r} under {root} (no store and no {meta_file})")
    keep = ("world_size", "project", "name", "policies", "default_policy")
    return AggregatorConfig(
        run_id=run_id,
        store_path=str(db),
        stop_grace_s=0.0,
        **{k: v for k, v in fields.items() if k in keep},
    )


def upload_spools(root: Path, run_id: str) -> dict[str, Any]:
    """Ingest a run's leftover spools into its store and finish the run; returns the final report.

    Use it after the job has ended (nothing may still be writing those spools). Safe to repeat:
    committed batches are recognised by their sequence numbers and skipped, and each spool
    directory is deleted once it is committed.

    Raises:
        ConfigError: no store and no offline metadata for ``run_id``.
    """
    cfg = _config(root, run_id)
    agg = Aggregator(cfg)
    sp = spool_root(root, run_id)
    if sp.is_dir():
        agg.recover_spools(sp, skip_live=False)
    agg.emit(time.time())
    agg.commit()
    return agg.finalize()
