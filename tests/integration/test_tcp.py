"""Multi-node transport: TCP bound to the interface toward MASTER_ADDR, CURVE from a job secret."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

import coordinator
from coordinator.journal.store import LocalStore, list_runs
from coordinator.transport import wire
from coordinator.transport.security import CurveKeys
from tests.integration.test_processes import ROOT

pytestmark = pytest.mark.integration
WORKER = Path(__file__).parent / "workers" / "tcp_rank.py"
SECRET = "a-job-secret-of-enough-length"


def test_two_nodes_over_curve_tcp_and_intruders_without_the_secret_are_refused(store_dir: Path, tmp_path: Path) -> None:
    """LOCAL_WORLD_SIZE=1 per rank: TCP on 127.0.0.1 (not *), CURVE. Clients without the job's keys deliver
    nothing: a plain one, one with a wrong server key (the handshake fails), and one that knows the
    server's public key but not the secret (refused by the ZAP allow-list, counted); the run is unaffected.
    Rank 1, placed on another node than rank 0's (global rank 1, local rank 0), makes no ring: its points
    all cross TCP, while rank 0's go through its ring (the default)."""
    pytest.importorskip("torch")
    out = tmp_path / "out"
    out.mkdir()
    port = str(random.randrange(20_000, 60_000))
    procs = []
    for r in range(2):
        env = dict(
            os.environ,
            RANK=str(r),
            WORLD_SIZE="2",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            COORDINATOR_DIR=str(store_dir),
            COORDINATOR_SECRET=SECRET,
            PYTHONPATH=str(ROOT),
        )
        cmd = [sys.executable, str(WORKER), "--out", str(out)]
        pipe = subprocess.PIPE
        procs.append(subprocess.Popen(cmd, env=env, text=True, stdin=pipe, stdout=pipe, stderr=pipe))
    try:
        assert procs[0].stdout is not None and procs[0].stdin is not None
        line = procs[0].stdout.readline().strip()
        assert line == "READY-FOR-INTRUDER", procs[0].stderr.read() if procs[0].stderr else ""
        run_id, endpoint = (out / "endpoint").read_text().split()
        assert endpoint.startswith("tcp://127.0.0.1:"), endpoint
        ctx = zmq.Context()
        try:
            for intruder in ("plain", "wrong-server-key", "no-secret"):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                if intruder == "wrong-server-key":  # a CURVE client with its own keys, not the job's
                    pub, sec = zmq.curve_keypair()
                    s.curve_publickey, s.curve_secretkey = pub, sec
                    s.curve_serverkey = zmq.curve_public(b"0" * 40)
                if intruder == "no-secret":
                    # Knows the server's public key (the handshake succeeds) but not the job secret:
                    # its client key is derived from another secret, so the ZAP allow-list refuses it.
                    s.curve_serverkey = CurveKeys.from_secret(SECRET).server_public
                    other = CurveKeys.from_secret("not-the-job-secret-at-all")
                    s.curve_publickey, s.curve_secretkey = other.client_public, other.client_secret
                s.connect(endpoint)
                s.send_multipart([wire.encode_envelope(wire.HELLO, run_id, 1, 99, 0), wire.encode_map({})])
                assert not s.poll(1500), "an unauthenticated client got an answer"
                s.close()
        finally:
            ctx.destroy(linger=0)  # closes a socket an exception left open: term() would wait for it for ever
        procs[0].stdin.write("\n")
        procs[0].stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
    [info] = list_runs(store_dir)
    assert info.state == "finished"
    assert info.report is not None and info.report["unknown_sender"] == 0 and info.report["bad_frames"] == 0
    assert info.report["refused_clients"] == 1, "the allow-list refused the client without the secret, counted"
    rings = [int((out / f"rank{r}.ring_points").read_text()) for r in range(2)]
    assert rings == [0 if os.environ.get("COORDINATOR_RINGS") == "0" else 5000, 0], rings
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        for r in range(2):
            assert [x for x, _ in st.values("m", r)] == list(range(5000))
    finally:
        st.close()


def test_multi_node_without_a_secret_refuses_to_start(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP without COORDINATOR_SECRET (and without insecure_tcp=True) is a ConfigError at init_run."""
    monkeypatch.delenv("COORDINATOR_SECRET", raising=False)
    monkeypatch.delenv("COORDINATOR_SECRET_FILE", raising=False)
    with pytest.raises(coordinator.ConfigError, match="secret"):
        coordinator.init_run(settings=coordinator.Settings(transport="tcp"))


def test_single_process_tcp_with_secret_round_trips(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transport='tcp' with a secret works end to end in one process (bound to the MASTER_ADDR interface)."""
    monkeypatch.setenv("COORDINATOR_SECRET", "another-secret-long-enough")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with coordinator.init_run(settings=coordinator.Settings(transport="tcp")) as run:
        assert run.endpoint is not None and run.endpoint.startswith("tcp://127.0.0.1:")
        for s in range(100):
            run.log({"a": float(s)}, step=s)
        run.wait(30)
        assert len(run["a"].fetch_values(rank=0)) == 100
