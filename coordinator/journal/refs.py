"""A run reference, as a person types it: an id, a unique prefix of one, or ``latest``.

Run ids are short (``ddp-spirals-3f9a2c``) and any unique prefix names a run: ``coordinator
show ddp-sp``, ``init_run(with_id="ddp-sp", mode="read-only")``. An exact id always wins over
a longer id it is a prefix of; an ambiguous prefix is an error that lists the candidates.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import ConfigError
from coordinator.journal.paths import list_runs, run_dir

__all__ = ["MAX_CANDIDATES", "resolve_ref"]

MAX_CANDIDATES = 10
"""How many matching ids an ambiguous-prefix error names."""


def resolve_ref(root: Path, ref: str) -> str:
    """The id of the stored run ``ref`` names under ``root``.

    Args:
        root: the store root.
        ref: ``latest`` (the newest run), a run id, or a prefix of exactly one run id.

    Raises:
        ConfigError: no run under ``root``, none matches, or several do (they are listed).
    """
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"a run reference is a non-empty str (an id, a unique prefix, or 'latest'), got {ref!r:.80}")
    if ref == "latest":
        runs = list_runs(root)
        if not runs:
            raise ConfigError(f"no runs under {root}")
        return runs[-1].id
    if "/" not in ref and (run_dir(root, ref) / "run.db").exists():
        return ref
    base = root / "runs"
    ids = sorted(d.name for d in base.iterdir() if (d / "run.db").exists()) if base.is_dir() else []
    if not ids:
        raise ConfigError(f"no runs under {root}")
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        raise ConfigError(f"no runs match {ref!r} under {root}")
    if len(matches) > 1:
        shown = ", ".join(matches[:MAX_CANDIDATES]) + (
            f" (and {len(matches) - MAX_CANDIDATES} more)" if len(matches) > MAX_CANDIDATES else ""
        )
        raise ConfigError(f"several runs match {ref!r} under {root}: {shown}; type more of the id")
    return matches[0]
