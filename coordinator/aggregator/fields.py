"""The run's fields: who wrote each, equal writes stored once, disagreements recorded as conflicts.

A field has one value. A rank may change its own field; when two ranks disagree the lowest rank's
value is kept (the aggregator's own ``sys/*`` fields, written as :data:`SYSTEM_RANK`, outrank
every rank) and every rejected write is recorded, counted and sent back to its rank as a warning.
Per-key policy overrides arrive as ``sys/policy/<key>`` fields and are applied here too, and so
do the tag operations (``sys/tags/add`` / ``sys/tags/remove``, :mod:`coordinator.core.tags`): they
change the set ``sys/tags`` (a union of every rank's adds, never a conflict) and are not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.aggregator.counters import Counters
from coordinator.aggregator.outbox import Outbox
from coordinator.core.policies import POLICY_PREFIX, PolicyTable
from coordinator.core.tags import MAX_TAGS, TAG_OPS, TAGS_ADD, TAGS_PATH, check_tags
from coordinator.core.values import FieldValue

__all__ = ["SYSTEM_RANK", "Field", "FieldTable"]

_log = logging.getLogger("coordinator.aggregator")

SYSTEM_RANK = -1
"""Writer rank of the ``sys/*`` fields; it outranks every training rank."""


@dataclass(slots=True)
class Field:
    """A field's value and the rank whose write it is."""

    value: FieldValue
    rank: int


class FieldTable:
    """Every field of the run and its writer; not thread-safe."""

    def __init__(self, outbox: Outbox, counters: Counters, current: Mapping[int, int]) -> None:
        """Args:
        outbox: where writes, conflicts and warnings go.
        counters: the aggregator's counters (``conflicts`` is counted here).
        current: rank -> its live incarnation (a conflict's warning goes to it).
        """
        self._outbox = outbox
        self._counters = counters
        self._current = current
        self.fields: dict[str, Field] = {}

    def restore(self, values: Mapping[str, FieldValue], writers: Mapping[str, int]) -> None:
        """Reload the stored fields and their writers after a restart."""
        for path, fv in values.items():
            self.fields[path] = Field(fv, writers.get(path, 0))

    def __contains__(self, path: str) -> bool:
        return path in self.fields

    def as_state(self) -> dict[str, list[Any]]:
        """path -> [tag, value], as ``sync()`` shows them to a rank."""
        return {p: [f.value[0], f.value[1]] for p, f in self.fields.items()}

    def write(self, path: str, fv: FieldValue, rank: int, ts: float) -> None:
        """``rank`` sets ``path``: stored unless equal to the value there, or outranked (a conflict).

        A tag operation (``sys/tags/add`` or ``sys/tags/remove``) changes ``sys/tags`` instead.
        """
        if path in TAG_OPS:
            self._tag_op(path, fv, rank, ts)
            return
        cur = self.fields.get(path)
        if cur is not None and cur.value == fv:
            return  # equal writes, from any rank, are stored once
        if cur is None or cur.rank == rank or rank < cur.rank:
            if cur is not None and cur.rank != rank:
                self.conflict(path, cur.rank, cur.value, rank, ts)
            self.fields[path] = Field(fv, rank)
            self._outbox.txn.fields.append((path, fv, rank, ts))
        else:
            self.conflict(path, rank, fv, cur.rank, ts)

    def _tag_op(self, path: str, fv: FieldValue, rank: int, ts: float) -> None:
        """Apply ``rank``'s add or remove to the set ``sys/tags``; store the sorted set if it changed."""
        try:
            if fv[0] != "list":
                raise TypeError(f"a tag operation is a list of tags, got a {fv[0]}")
            tags = check_tags(fv[1], path)
        except (TypeError, ValueError) as e:
            self._refuse(rank, f"{path}: {e}; the tags are unchanged")
            return
        cur = self.fields.get(TAGS_PATH)
        before = set(cur.value[1]) if cur is not None and cur.value[0] == "list" else set()
        after = set(before)
        if path == TAGS_ADD:
            room = MAX_TAGS - len(after)
            new = [t for t in tags if t not in after]
            after.update(new[: max(room, 0)])
            if len(new) > room:
                cut = len(new) - max(room, 0)
                self._refuse(rank, f"a run holds at most {MAX_TAGS} tags; {cut} tags were not added")
        else:
            after.difference_update(tags)
        if after != before or cur is None:
            self.write(TAGS_PATH, ("list", sorted(after)), SYSTEM_RANK, ts)

    def write_identity(self, run_id: str, name: str, project: str, world_size: int, created: float) -> None:
        """Write the run's own ``sys/*`` fields (id, name, project, world size, creation time, running)."""
        for path, fv in (
            ("sys/id", ("str", run_id)),
            ("sys/name", ("str", name)),
            ("sys/project", ("str", project)),
            ("sys/world_size", ("int", world_size)),
            ("sys/creation_time", ("datetime", created)),
            ("sys/state", ("str", "running")),
        ):
            self.write(path, fv, SYSTEM_RANK, created)

    def _refuse(self, rank: int, msg: str) -> None:
        """Log ``msg`` and send it to ``rank`` as a warning."""
        _log.warning("rank %d: %s", rank, msg)
        inc = self._current.get(rank)
        if inc is not None:
            self._outbox.warn(rank, inc, msg)

    def conflict(self, path: str, rank: int, rejected: FieldValue, kept_rank: int, ts: float) -> None:
        """Record that ``rank``'s write of ``path`` lost to ``kept_rank``'s value; warn the rank."""
        self._counters["conflicts"] += 1
        self.write("sys/conflicts", ("int", self._counters["conflicts"]), SYSTEM_RANK, ts)
        self._outbox.txn.conflicts.append((path, rank, rejected, kept_rank, ts))
        msg = (
            f"field {path!r}: rank {rank} wrote {rejected[1]!r:.80}, which conflicts with rank "
            f"{kept_rank}'s value; rank {kept_rank}'s value is kept (lowest rank wins)"
        )
        _log.warning("%s", msg)
        inc = self._current.get(rank)
        if inc is not None:
            self._outbox.warn(rank, inc, msg)

    def take_policies(
        self, fields: list[tuple[str, FieldValue]], rank: int, now: float, policy: PolicyTable, known_keys: set[str]
    ) -> list[tuple[str, FieldValue]]:
        """Apply per-key policy overrides (before the batch's points); return the other fields.

        A key that already has points keeps its policy: a different override is a conflict.
        """
        rest = []
        for path, fv in fields:
            if not path.startswith(POLICY_PREFIX):
                rest.append((path, fv))
                continue
            key, wanted = path[len(POLICY_PREFIX) :], str(fv[1])
            if key in known_keys and policy(key) != wanted:
                self.conflict(path, rank, fv, SYSTEM_RANK, now)
                continue
            try:
                policy.override(key, wanted)
            except ValueError as e:
                _log.warning("rank %d: %s", rank, e)
                continue
            self.write(path, fv, SYSTEM_RANK, now)
        return rest
