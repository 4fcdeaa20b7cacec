"""The aggregator's open-file limit: one descriptor per rank where the hard limit allows."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

_PROBE = """
import json, logging, resource, sys
world, soft, hard = map(int, sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the limits a launcher gave the process
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from coordinator.aggregator.fdlimit import ensure_fd_limit
got = ensure_fd_limit(world)
print(json.dumps([got, *resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def _probe(world: int, soft: int, hard: int) -> tuple[list[int], str]:
    """ensure_fd_limit(world) in a child under (soft, hard): (returned, soft, hard) and its stderr.

    The child sets its own limits first: a ``preexec_fn`` would run between fork and exec of this
    multithreaded test process, which is not safe (a CI run once failed there with EBADF).
    """
    p = subprocess.run(
        [sys.executable, "-c", _PROBE, str(world), str(soft), str(hard)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: list[int] = json.loads(p.stdout)
    return out, p.stderr


def _hard_now() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_soft_limit_is_raised_to_one_descriptor_per_rank_plus_slack() -> None:
    """4096 ranks under a soft limit of 1024 (the usual default): raised to 4096 + 256, hard limit untouched."""
    hard = _hard_now()
    if hard != resource.RLIM_INFINITY and hard < 4096 + 256:
        pytest.skip(f"this machine's hard open-file limit ({hard}) is below 4352")
    (got, soft, new_hard), err = _probe(4096, 1024, hard)
    assert got == soft == 4096 + 256
    assert new_hard == hard
    assert "open-file limit" not in err


def test_a_soft_limit_already_high_enough_is_left_alone() -> None:
    """8 ranks under 1024: nothing to raise (the limit is not lowered to the need either)."""
    (got, soft, _), err = _probe(8, 1024, _hard_now())
    assert got == soft == 1024
    assert err == ""


def test_a_hard_limit_below_the_need_raises_to_it_and_warns() -> None:
    """2000 ranks with a hard limit of 1500: the soft limit goes to 1500 and the shortfall is logged."""
    (got, soft, hard), err = _probe(2000, 256, 1500)
    assert got == soft == hard == 1500
    assert "open-file limit 1500 is below the 2256 that 2000 ranks need" in err
