"""A rank's changes to its run's tags (``init_run(tags=)``, ``run["sys/tags"].add()`` / ``.remove()``).

Each change is sent as one tag operation (:mod:`coordinator.core.tags`); the aggregator applies
the operations of every rank, in arrival order, to the set ``sys/tags``. The rank's own view
changes at once (read-your-writes); ``sync()`` brings in the other ranks' changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from coordinator.core.tags import TAGS_ADD, TAGS_PATH, TAGS_REMOVE, check_tags
from coordinator.errors import ClosedError

__all__ = ["TagTarget", "change_tags", "tag_args", "view_tags"]


class TagTarget(Protocol):
    """What changing tags needs of a run (``Run`` provides it)."""

    @property
    def id(self) -> str: ...

    @property
    def mode(self) -> str: ...

    def _write_sys(self, items: list[tuple[str, Any]], view: Callable[[dict[str, Any]], None]) -> None: ...

    def wait(self, timeout: float | None = None) -> None: ...


def tag_args(values: tuple[object, ...], what: str) -> list[str]:
    """``add("a", "b")``, ``add(["a", "b"])`` or a mix, as one checked list of tags.

    Raises:
        TypeError, ValueError: no tag, or a tag that is not a non-empty str of at most 128 characters.
    """
    flat: list[object] = []
    for v in values:
        if isinstance(v, (list, tuple, set, frozenset)):
            flat.extend(v)
        else:
            flat.append(v)
    if not flat:
        raise TypeError(f"{what} takes at least one tag")
    return check_tags(flat, what)


def change_tags(run: TagTarget, op: str, tags: list[str]) -> None:
    """Send ``op`` (``"add"`` or ``"remove"``) of the checked ``tags`` and apply it to the rank's view.

    Raises:
        ClosedError: the run is read-only or stopped.
    """
    if run.mode == "disabled" or not tags:
        return
    if run.mode == "read-only":
        raise ClosedError(f"run {run.id} is open read-only; its tags cannot change")
    adding = op == "add"

    def update(fields: dict[str, Any]) -> None:
        cur = view_tags(fields)
        fields[TAGS_PATH] = sorted(cur.union(tags) if adding else cur.difference(tags))

    run._write_sys([(TAGS_ADD if adding else TAGS_REMOVE, ("list", list(tags)))], update)
    if run.mode == "sync":
        run.wait()


def view_tags(fields: dict[str, Any]) -> set[str]:
    """The tags in a view's fields (an empty set when none were set)."""
    cur = fields.get(TAGS_PATH)
    return set(cur) if isinstance(cur, Iterable) and not isinstance(cur, str) else set()
