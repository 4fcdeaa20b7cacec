"""Run fields on their way to a tracker: their text form, and which of them changed since last sent.

A forwarder sends a field again only when its value changed; what it sent is remembered as a
short digest per path, kept with the cursor, so a resumed forwarder does not send them all again.
User fields become the tracker's parameters/config; the coordinator's ``sys/*`` fields, which
change during a run, become tags. Two kinds are set apart for the trackers that have a native
place for them: the run's tag set ``sys/tags`` (:attr:`FieldChanges.run_tags`) and artifact
fields (:attr:`FieldChanges.files`); the forwarder sends them as text to a tracker without one.
Their digests carry a version mark, so a cursor written before they were sent natively sends
them once more, natively.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.core.tags import TAGS_PATH
from coordinator.core.values import FieldValue

__all__ = ["FieldChanges", "changed_fields", "field_text"]

_SYS = "sys/"
_SYS_RANKS = "sys/ranks/"
_NATIVE = 2
"""Version mark of the digests of ``sys/tags`` and artifact fields (sent natively since version 2)."""


@dataclass(slots=True)
class FieldChanges:
    """The fields to send in one batch, and what will have been sent once it is accepted."""

    params: dict[str, FieldValue]
    """New or changed user fields."""
    tags: dict[str, str]
    """New or changed ``sys/*`` fields, as text."""
    sent: dict[str, str]
    """Path -> digest of every field sent, this batch included (stored with the cursor)."""
    run_tags: list[str] | None = None
    """The run's tags (``sys/tags``, sorted) when they changed, else None."""
    files: dict[str, FieldValue] | None = None
    """New or changed ``artifact`` fields (user and ``sys/*`` alike), by path."""


def changed_fields(fields: Mapping[str, FieldValue], sent: Mapping[str, str], *, sys_ranks: bool) -> FieldChanges:
    """The fields of ``fields`` whose value differs from what ``sent`` records.

    Args:
        fields: every field of the run (path -> value).
        sent: path -> digest of what was sent before.
        sys_ranks: include the per-rank health fields ``sys/ranks/*`` (many ranks: many tags).
    """
    out = FieldChanges({}, {}, dict(sent), None, {})
    files: dict[str, FieldValue] = {}
    for path, fv in fields.items():
        if path.startswith(_SYS_RANKS) and not sys_ranks:
            continue
        native = path == TAGS_PATH or fv[0] == "artifact"
        text = json.dumps([_NATIVE, fv] if native else fv, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if out.sent.get(path) == digest:
            continue
        out.sent[path] = digest
        if path == TAGS_PATH:
            out.run_tags = sorted(str(t) for t in fv[1]) if fv[0] == "list" else []
        elif fv[0] == "artifact":
            files[path] = fv
        elif path.startswith(_SYS):
            out.tags[path] = field_text(fv)
        else:
            out.params[path] = fv
    out.files = files
    return out


def field_text(fv: FieldValue) -> str:
    """A field value as text (params/tags are strings in most trackers)."""
    tag, v = fv
    if tag == "datetime":
        return dt.datetime.fromtimestamp(float(v), dt.UTC).isoformat()
    if tag == "bool":
        return "true" if v else "false"
    if tag == "list":
        return json.dumps(v)
    if tag == "artifact":
        name, size, sha, copied, where = v
        return f"{name} ({size} bytes, sha256 {sha[:12]}{'' if copied else ', reference'}: {where})"
    return str(v)
