"""Where a stored run's ranks spooled, for ``sync`` and ``purge``: the recorded spool root, else the default.

A rank spools into ``<spool root>/rank-<rank>-<incarnation>/``. The spool root is rank 0's
``Settings.spool_dir`` when set, which the aggregator records in the journal (the ``config`` meta
row's ``spool_root``, read by :func:`~coordinator.cli.snapshot.spool_root_of`); otherwise the
default ``<dir>/spool/<run id>``, which holds this run's spools only. A root set by the user may be
shared by several runs, so what belongs to one run there is only its own rank directories: those
of the incarnations its journal knows (the senders table).
"""

from __future__ import annotations

from pathlib import Path

from coordinator.aggregator.rings import RING_PATHS
from coordinator.cli.series import ReadOnlyRun, retry_busy
from coordinator.cli.snapshot import spool_root_of
from coordinator.errors import ProtocolError
from coordinator.journal.paths import spool_dir
from coordinator.journal.store import run_dir
from coordinator.transport.ringplace import ring_named
from coordinator.transport.ringrows import names_path
from coordinator.transport.spool import spool_records
from coordinator.transport.wire import decode_envelope

__all__ = ["foreign_spools", "run_spool_root", "run_spools"]


def run_spool_root(root: Path, run_id: str) -> Path:
    """The run's spool root: the one its journal records, else the default ``<root>/spool/<run id>``.

    A run with no store yet (an offline run never synced) has only the default.
    """
    db = run_dir(root, run_id) / "run.db"
    if not db.exists():
        return spool_dir(root, run_id)
    with ReadOnlyRun(db) as run:
        return spool_root_of(run, root, run_id)


def run_spools(root: Path, run_id: str) -> list[Path]:
    """What on disk holds the run's spools, to delete with the run (existing paths only).

    The default spool directory whole; in a recorded root elsewhere, the directories of the
    run's own incarnations (``rank-<r>-<incarnation>``), never the root itself. And the ranks'
    rings (``Settings.rings``) that a killed job left, each with its names file: those the journal
    names (``ringpath:`` rows) that are named as rings (:func:`ring_named`; no other file).
    """
    default = spool_dir(root, run_id)
    db = run_dir(root, run_id) / "run.db"
    if not db.exists():
        return [default] if default.exists() else []
    with ReadOnlyRun(db) as run:
        where = spool_root_of(run, root, run_id)
        named = [Path(p) for p in retry_busy(lambda: run.reader.metas(RING_PATHS)).values()]
        senders = [] if where == default else retry_busy(run.reader.senders)
    rings = [p for ring in named if ring_named(ring) for p in (ring, names_path(ring)) if p.exists()]
    own = [where / f"rank-{int(s['rank'])}-{int(s['incarnation'])}" for s in senders]
    found = [p for p in own if p.exists()]
    return found + ([default] if default.exists() else []) + rings  # an upload's leftovers in default go too


def foreign_spools(spool_root: Path, run_id: str) -> list[Path]:
    """The rank directories under ``spool_root`` whose first record names another run (or cannot be read).

    ``sync`` replays every rank directory of a spool root, and removes each once replayed: it must
    not be run over a root other runs share. An empty directory is nobody's (replaying it is harmless).
    """
    found: list[Path] = []
    for d in sorted(spool_root.glob("rank-*-*")):
        try:
            first = next(iter(spool_records(d)), None)
            if first is not None and decode_envelope(first.envelope).run_id != run_id:
                found.append(d)
        except (OSError, ProtocolError):
            found.append(d)
    return found
