"""The sender's mark in the aggregator's replies: which replies acknowledge, and with which field.

A sender takes every batch numbered up to a reply's mark as acknowledged, not only the batch an
ACK answers: a batch's own ACK can be lost (the aggregator SIGKILLed between its commit and its
acks, whose successor recovers the sender from the store and never asks it to say HELLO again; a
reconnect). So a mark must be durable when it leaves: the server fills it in after the commit of
its round, from the sender's high-water mark then (:func:`fill`), and while commits fail it sends
no mark (ACKs become sink errors, the WELCOMEs and gap reports wait: :func:`held_back`).

For the same reason one ACK per sender per commit is enough (:func:`coalesce`): a paced rank
sends two batches in a light commit window, and the second ACK's mark covers the first, which
would only cost both processes a message to encode, send, wake for and decode.
"""

from __future__ import annotations

from typing import Any

from coordinator.transport import wire

__all__ = ["Reply", "acknowledges", "coalesce", "fill", "held_back"]

Reply = tuple[bytes, int, wire.Envelope, dict[str, Any]]
"""A queued reply: the rank's routing identity, the kind, the envelope it answers, the payload."""

_FIELDS = {wire.WELCOME: "last_seq", wire.ACK: "m", wire.PONG: "m", wire.ERROR: "expected"}
"""The field of each acknowledging reply that carries the mark (a gap report's is one past it)."""


def _gap(kind: int, payload: dict[str, Any]) -> bool:
    return kind == wire.ERROR and payload.get("code") == "gap"


def acknowledges(kind: int, payload: dict[str, Any]) -> bool:
    """Whether this reply carries the sender's mark: a WELCOME, an ACK, a PONG or a gap report."""
    return kind in (wire.WELCOME, wire.ACK, wire.PONG) or _gap(kind, payload)


def fill(kind: int, payload: dict[str, Any], last_seq: int) -> None:
    """Put the sender's durable high-water mark ``last_seq`` in an acknowledging reply."""
    payload[_FIELDS[kind]] = last_seq + 1 if kind == wire.ERROR else last_seq


def held_back(kind: int, payload: dict[str, Any]) -> bool:
    """Whether a reply waits for a commit that succeeds (a WELCOME or a gap report) when one failed."""
    return kind == wire.WELCOME or _gap(kind, payload)


def coalesce(replies: list[Reply]) -> list[Reply]:
    """Drop the ACKs that a later ACK to the same sender in ``replies`` makes good, after :func:`fill`.

    An ACK goes when a later ACK on the same connection (identity, rank, incarnation) carries a
    mark at or past its batch; its warnings (``w``) move to that ACK, in order. The kept ACKs stay
    where they were among the other replies. An ACK without a mark (its sender unknown after the
    commit) is never dropped, and nothing is dropped in favour of it.
    """
    last: dict[tuple[bytes, int, int], int] = {}
    acks = 0
    for i, (ident, kind, env, _payload) in enumerate(replies):
        if kind == wire.ACK:
            acks += 1
            last[(ident, env.rank, env.incarnation)] = i
    if acks == len(last):  # one ACK per sender already (a busy window, or a light one with one batch)
        return replies
    kept: list[Reply] = []
    for i, reply in enumerate(replies):
        ident, kind, env, payload = reply
        if kind == wire.ACK:
            j = last[(ident, env.rank, env.incarnation)]
            if j != i:
                survivor = replies[j][3]
                mark = survivor.get("m")
                if type(mark) is int and mark >= env.seq:
                    warnings = payload.get("w")
                    if warnings:
                        survivor["w"] = [*warnings, *survivor.get("w", [])]
                    continue
        kept.append(reply)
    return kept
