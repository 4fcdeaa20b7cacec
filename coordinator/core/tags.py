"""A run's tags: the set ``sys/tags``, changed by adds and removes from any rank (a union, never a conflict).

On the wire a change is an ordinary ``list`` field of a reserved path: ``sys/tags/add`` or
``sys/tags/remove`` with the tags as its strings. The aggregator applies each as an operation on
the set, in arrival order, and stores the result as the field ``sys/tags`` (a sorted list); the
operation paths themselves are never stored.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_TAGS", "MAX_TAG_CHARS", "TAGS_ADD", "TAGS_PATH", "TAGS_REMOVE", "TAG_OPS", "check_tags"]

TAGS_PATH = "sys/tags"
"""The stored field: the run's tags as a sorted list of strings."""
TAGS_ADD = "sys/tags/add"
"""Wire path of an add: a ``list`` of tags."""
TAGS_REMOVE = "sys/tags/remove"
"""Wire path of a remove: a ``list`` of tags."""
TAG_OPS = frozenset((TAGS_ADD, TAGS_REMOVE))
MAX_TAG_CHARS = 128
"""Longest tag."""
MAX_TAGS = 1000
"""Most tags a run holds; adds past it are refused (and warned about)."""


def check_tags(tags: object, what: str = "tags") -> list[str]:
    """``tags`` (a list, tuple, set or frozenset of tags) as a list, in order, without duplicates.

    Each tag is a non-empty printable ``str`` of at most :data:`MAX_TAG_CHARS` characters.

    Raises:
        TypeError: not such a collection (a bare ``str`` included), or an element is not a ``str``.
        ValueError: an empty, too long or non-printable tag.
    """
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise TypeError(f"{what} must be a list of str, got {type(tags).__name__}: {tags!r:.80}")
    return _checked(tags, what)


def _checked(tags: Iterable[object], what: str) -> list[str]:
    out: list[str] = []
    for t in tags:
        if type(t) is not str:
            raise TypeError(f"{what}: a tag must be a str, got {type(t).__name__}: {t!r:.80}")
        if not t or len(t) > MAX_TAG_CHARS:
            raise ValueError(f"{what}: a tag must have 1 to {MAX_TAG_CHARS} characters, got {t!r:.80}")
        if not t.isprintable():
            raise ValueError(f"{what}: tag {t!r:.80} contains control characters")
        if t not in out:
            out.append(t)
    return out
