"""Where a rank sits in the job (``transport/discovery.py``): the launcher's environment read as a placement."""

from __future__ import annotations

import pytest

from coordinator.core import env as _env
from coordinator.transport.discovery import detect_placement

LAUNCHERS = [getattr(_env, n) for n in _env.__all__ if not n.startswith("COORDINATOR")]


@pytest.mark.parametrize(
    ("env", "beside"),
    [
        ({}, True),  # no launcher: one process
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, True),  # one node
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, True),  # node 0 of two
        ({"RANK": "4", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}, False),  # node 1's first
        ({"RANK": "7", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, False),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, True),  # nodes unknown: the ring is offered, and
    ],  # let go if the aggregator's WELCOME refuses it (tests/client/test_ringlog.py)
)
def test_a_rank_is_beside_rank_0_where_the_launcher_numbers_node_0s_ranks_first(
    env: dict[str, str], beside: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in (*LAUNCHERS, "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = detect_placement()
    assert p.beside_rank0 is beside, p
