"""A network partition (the link goes down and comes back) under a TCP run: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_processes import ROOT

pytestmark = pytest.mark.integration


def test_link_down_then_up_mid_run_loses_and_doubles_nothing(store_dir: Path) -> None:
    """In a private network namespace, `ip link set lo down` for 3 s while a rank logs over TCP + CURVE."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (iproute2)")
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {probe.stderr.decode().strip()}")
    worker = Path(__file__).parent / "workers_partition.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COORDINATOR_DIR=str(store_dir))
    r = subprocess.run(
        ["unshare", "-rn", sys.executable, str(worker)], capture_output=True, text=True, timeout=240, env=env
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "lo down" in r.stderr and "lo up" in r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["stored"] == res["unique"] == res["n"], res
    assert res["stats"]["lost"] == 0 and res["stats"]["pending"] == 0
