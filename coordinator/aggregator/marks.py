"""The sender's mark in the aggregator's replies: which replies acknowledge, and with which field.

A sender takes every batch numbered up to a reply's mark as acknowledged, not only the batch an
ACK answers: a batch's own ACK can be lost (the aggregator SIGKILLed between its commit and its
acks, whose successor recovers the sender from the store and never asks it to say HELLO again; a
reconnect). So a mark must be durable when it leaves: the server fills it in after the commit of
its round, from the sender's high-water mark then (:func:`fill`), and while commits fail it sends
no mark (ACKs become sink errors, the WELCOMEs and gap reports wait: :func:`held_back`).
"""

from __future__ import annotations

from typing import Any

from coordinator.transport import wire

__all__ = ["acknowledges", "fill", "held_back"]

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
