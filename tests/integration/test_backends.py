"""Backends against their real trackers: an ``mlflow server`` on loopback, TensorBoard, W&B and Neptune offline.

Each store is built by the real library in-process (4 ranks, one aggregator process), then pushed
with the Forwarder or ``coordinator sync --to``, and read back with the tracker's own reader.
A backend whose client is not installed skips with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from coordinator import cli
from coordinator.errors import SinkError
from coordinator.forward.backend import get_backend
from coordinator.forward.forwarder import Forwarder
from tests.forward.test_forwarder import KEYS, assert_series, expected, make_run, tb_scalars

if TYPE_CHECKING:
    from mlflow.entities import Run

pytestmark = pytest.mark.integration

RANKS = 4
STEPS = 150
SERVER_START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """A real ``mlflow server`` (SQLite backend store in tmp_path) on 127.0.0.1; stoppable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start on the same port and database; wait until /health answers."""
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.starts += 1
        # The child keeps its own copy of the log's descriptor: ours is closed once it has started.
        with open(self.root / f"server-{self.starts}.log", "wb") as log:
            # Own session: the server and its uvicorn worker are killed together by process group.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / f'server-{self.starts}.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGKILL the server's whole process group (and any descendant that left it); reap."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(30)
        psutil.wait_procs(family, timeout=30)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started MLflow server; always killed at the end, even when the test fails."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'coordinator[mlflow]')")
    srv = MlflowServer(tmp_path / "mlflow")
    srv.root.mkdir()
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _mlflow_series(uri: str, run_id: str) -> tuple[dict[str, list[tuple[int, float]]], Run]:
    """Every metric history of the MLflow run tagged with ``run_id``, and the run itself."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fwd")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id], filter_string=f"tags.`coordinator.run_id` = '{run_id}'")
    out = {}
    for key in run.data.metrics:
        hist = client.get_metric_history(run.info.run_id, key)
        out[key] = sorted((int(m.step), float(m.value)) for m in hist)
    return out, run


def _check_mlflow_run(uri: str, run_id: str) -> None:
    got, run = _mlflow_series(uri, run_id)
    assert_series(got, expected(RANKS, STEPS))
    info = run.info
    data = run.data
    assert info.status == "FINISHED"
    assert info.run_name == "forward-me"
    assert data.params == {"parameters/lr": "0.1", "parameters/batch_size": "64", "parameters/optimizer": "adam"}
    assert data.tags["sys/state"] == "finished"
    assert data.tags["sys/world_size"] == str(RANKS)


def test_mlflow_sync_to_a_real_server_stores_every_point_once_with_params_and_status(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """coordinator sync --to mlflow: 6,000 points (main + 4 ranks x 2 keys), params, FINISHED; a rerun adds nothing."""
    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    root, run_id = db.parent.parent.parent, db.parent.name
    argv = [
        "--dir",
        str(root),
        "sync",
        run_id,
        "--to",
        "mlflow",
        "--option",
        f"tracking_uri={mlflow_server.uri}",
        "--option",
        "batch_points=1500",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{RANKS * STEPS * 2 + STEPS * 2:,} points sent" in out, out
    _check_mlflow_run(mlflow_server.uri, run_id)
    # The cursor file is gone (say, another machine): the run is found by its tag, and MLflow drops the
    # identical resent points, so nothing is doubled.
    [cursor] = db.parent.glob("forward-mlflow-*.json")  # keyed by the destination
    cursor.unlink()
    assert cli.main(argv) == 0
    _check_mlflow_run(mlflow_server.uri, run_id)


@pytest.mark.slow
def test_mlflow_server_down_mid_forwarding_then_back_loses_and_doubles_nothing(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is SIGKILLed after the first batches, stays down ~8 s, restarts: every point exactly once."""
    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    fwd = Forwarder(
        db,
        "mlflow",
        {
            "tracking_uri": mlflow_server.uri,
            "batch_points": 300,
            "base_backoff_s": 0.2,
            "max_backoff_s": 2,
            "http_max_retries": 0,
            "http_timeout_s": 5,
        },
    )
    fwd.start()
    try:
        deadline = time.monotonic() + 60
        while fwd.stats()["forwarded_batches"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fwd.stats()["forwarded_batches"] >= 2
        mlflow_server.stop()
        down_at = time.monotonic()
        sent_when_down = fwd.stats()["forwarded_points"]
        time.sleep(8)
        st = fwd.stats()
        assert st["retries"] > 0, "the forwarder retried while the server was down"
        assert st["forwarded_points"] < RANKS * STEPS * 2 + STEPS * 2, "the outage happened mid-forwarding"
        assert sent_when_down <= st["forwarded_points"]
        mlflow_server.start()
        assert time.monotonic() - down_at >= 8
    finally:
        st = fwd.close(120)
    assert st["finished"] == "finished"
    assert st["forwarded_points"] == RANKS * STEPS * 2 + STEPS * 2
    assert st["failed_points"] == 0
    _check_mlflow_run(mlflow_server.uri, db.parent.name)


def test_a_bad_mlflow_uri_fails_check_with_a_message_naming_the_backend(tmp_path: Path) -> None:
    """Nothing listening, or an unknown scheme: check() raises SinkError('mlflow: ...') at once."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'coordinator[mlflow]')")
    cls = get_backend("mlflow")
    t0 = time.monotonic()
    with pytest.raises(SinkError, match=r"^mlflow: cannot use tracking URI http://127\.0\.0\.1:\d+: .*refused"):
        cls({"tracking_uri": f"http://127.0.0.1:{_free_port()}"}, tmp_path).check()
    assert time.monotonic() - t0 < 10, "a check must fail fast, without MLflow's long retries"
    with pytest.raises(SinkError, match=r"^mlflow: cannot use tracking URI nosuchscheme://x"):
        cls({"tracking_uri": "nosuchscheme://x"}, tmp_path).check()


# ------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_event_files_read_back_by_event_accumulator_match_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EventAccumulator finds every main and per-rank point once, equal (float32) to the logged values."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    logdir = tmp_path / "tb"
    fwd = Forwarder(db, "tensorboard", {"logdir": str(logdir), "batch_points": 700})
    try:
        st = fwd.drain(60)
    finally:
        fwd.release()
    assert st["forwarded_points"] == RANKS * STEPS * 2 + STEPS * 2
    assert_series(tb_scalars(logdir), expected(RANKS, STEPS))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    assert "fields/parameters/lr" in acc.Tags()["tensors"]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------------------ W&B and Neptune offline


def test_wandb_offline_run_file_holds_every_point_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline: the run's .wandb transaction log has one history row per (series, step) value.

    Checked with the adapter's reader of W&B's transaction log (the wandb package has no public one):
    every main and per-rank series, each step once, values equal; config holds the parameters.
    """
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'coordinator[wandb]')")
    from coordinator.forward.wandb import read_offline_history

    monkeypatch.setenv("WANDB_SILENT", "true")
    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    fwd = Forwarder(db, "wandb", {"mode": "offline", "dir": str(tmp_path / "wb")})
    try:
        st = fwd.drain(120)
    finally:
        fwd.release()
    assert st["forwarded_points"] == RANKS * STEPS * 2 + STEPS * 2
    files = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    rows = read_offline_history(files[0])
    got: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_") and k != "coordinator/step":
                got.setdefault(k, []).append((int(row["coordinator/step"]), float(v)))
    assert_series({k: sorted(v) for k, v in got.items()}, expected(RANKS, STEPS))
    assert len(rows) == STEPS, "one history row per step: all series of a step share it"


def test_neptune_offline_run_holds_every_point_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neptune offline: the operations queued for ``neptune sync`` hold each point once; params assigned.

    Checked by reading Neptune's offline operation log (data-*.log, the file ``neptune sync`` uploads):
    the LogFloats operations per path, and the Assign operations of the parameters.
    """
    pytest.importorskip("neptune", reason="the neptune extra is not installed (pip install 'coordinator[neptune]')")
    import json

    from coordinator.forward.neptune import read_offline_series

    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    data_dir = tmp_path / "np"
    fwd = Forwarder(db, "neptune", {"mode": "offline", "project": "ws/fwd", "data_dir": str(data_dir)})
    try:
        st = fwd.drain(120)
    finally:
        fwd.release()
    assert st["forwarded_points"] == RANKS * STEPS * 2 + STEPS * 2
    assert st["dropped_points"] == 0
    [container] = list((data_dir / "offline").glob("run__*"))
    assert_series(read_offline_series(container), expected(RANKS, STEPS))
    ops = [json.loads(line)["obj"] for f in container.glob("data-*.log") for line in f.read_text().splitlines()]
    assigned = {"/".join(o["path"]): o.get("value") for o in ops if o["type"].startswith("Assign")}
    assert assigned["parameters/lr"] == 0.1 and assigned["parameters/optimizer"] == "adam"
    assert assigned["coordinator/state"] == "finished"
    assert set(KEYS) <= set(read_offline_series(container))


def test_four_torchrun_ranks_log_live_into_a_real_mlflow_server(mlflow_server: MlflowServer, store_dir: Path) -> None:
    """init_run(backend='mlflow') under torchrun: main + per-rank series once each, params, FINISHED."""
    from mlflow.tracking import MlflowClient

    from coordinator.journal.store import list_runs
    from tests.integration._torchrun import torchrun

    torchrun("tracked.py", store=store_dir, extra_env={"TEST_MLFLOW_URI": mlflow_server.uri}).check()
    [info] = list_runs(store_dir)
    assert info.state == "finished"
    assert info.report is not None and "error" not in info.report["forwarders"]["mlflow"], info.report
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("live")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id], filter_string=f"tags.`coordinator.run_id` = '{info.id}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["parameters/lr"] == "0.01"
    main = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [s for s, _ in main] == list(range(100))
    assert all(abs(v - (1.5 + s / 1000)) < 1e-9 for s, v in main)
    for r in range(4):
        pts = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"ranks/{r}/train/loss"))
        assert [s for s, _ in pts] == list(range(100)), r


def test_a_bad_mlflow_uri_fails_init_run_on_every_rank_naming_the_backend(store_dir: Path, tmp_path: Path) -> None:
    """Rank 0 raises SinkError('mlflow: ...') at init_run; the other rank learns it at once, not by timeout."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'coordinator[mlflow]')")
    code = (
        "import coordinator, sys\n"
        "try:\n"
        "    coordinator.init_run(backend='mlflow', backend_options={'tracking_uri': 'http://127.0.0.1:9'},"
        " settings=coordinator.Settings(rendezvous_timeout_s=60))\n"
        "except coordinator.SinkError as e:\n"
        "    print('SINKERROR', e)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    port = str(_free_port())
    root = str(Path(__file__).resolve().parents[2])
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", MASTER_PORT=port, PYTHONPATH=root)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        )
    t0 = time.monotonic()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        assert "SINKERROR" in out and "mlflow" in out, out
    assert time.monotonic() - t0 < 45


def test_uploaded_file_reaches_mlflow_as_an_artifact(
    mlflow_server: MlflowServer, store_dir: Path, tmp_path: Path
) -> None:
    """run[key].upload(path) with backend='mlflow': the file is an MLflow artifact under the key, bytes equal."""
    from mlflow.tracking import MlflowClient

    import coordinator

    f = tmp_path / "model.pt"
    f.write_bytes(os.urandom(4096))
    with coordinator.init_run(
        project="art", backend="mlflow", backend_options={"tracking_uri": mlflow_server.uri}
    ) as run:
        run["model/ckpt"].upload(f)
        run.log({"loss": 1.0}, step=0)
        rid = run.id
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("art")
    assert exp is not None
    [mrun] = client.search_runs([exp.experiment_id], filter_string=f"tags.`coordinator.run_id` = '{rid}'")
    names = [a.path for a in client.list_artifacts(mrun.info.run_id, "model/ckpt")]
    assert names == ["model/ckpt/model.pt"], names
    local = client.download_artifacts(mrun.info.run_id, "model/ckpt/model.pt", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("rings", ["0", "1"], ids=["socket", "rings"])
def test_wait_returns_once_the_points_reached_the_backend(
    rings: str, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With backend='tensorboard', after wait() the event files already hold this rank's points: sent over the
    socket, whose ACKs name the journal's position, or written into the rank's ring, which no ACK names (the
    reply to wait()'s first STATE does, after the commit that read the ring)."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import coordinator
    from tests.forward.test_forwarder import tb_scalars

    monkeypatch.setenv("COORDINATOR_RINGS", rings)
    logdir = tmp_path / "tb"
    with coordinator.init_run(backend="tensorboard", backend_options={"logdir": str(logdir)}) as run:
        run.wait(60)  # what the start sent is forwarded: the next position the rank hears of comes after it
        time.sleep(0.5)
        for s in range(500):
            run.log({"loss": s / 10}, step=s)
        run.wait(60)
        got = tb_scalars(logdir)
        assert [st for st, _ in got["ranks/0/loss"]] == list(range(500))
        assert run.stats().get("ring_points", 0) == (500 if rings == "1" else 0)


@pytest.mark.slow
def test_wait_times_out_naming_the_backend_while_mlflow_is_down_then_succeeds(
    mlflow_server: MlflowServer, store_dir: Path
) -> None:
    """MLflow stopped: wait(timeout) raises CoordinatorTimeoutError naming mlflow; restarted: wait() returns."""
    import coordinator

    with coordinator.init_run(
        project="down", backend="mlflow", backend_options={"tracking_uri": mlflow_server.uri}
    ) as run:
        run.log({"a": 0.0}, step=0)
        run.wait(60)
        mlflow_server.stop()
        for s in range(1, 200):
            run.log({"a": float(s)}, step=s)
        with pytest.raises(coordinator.CoordinatorTimeoutError, match="mlflow"):
            run.wait(timeout=3)
        mlflow_server.start()
        run.wait(120)


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of a real server: its first requests get a proxy's HTML
    error page (``bad_gateway`` with status 502, then ``html_ok`` with status 200, which the MLflow
    client cannot decode as JSON: a ValueError), then every request is passed through."""

    PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"

    def __init__(self, upstream: str, *, bad_gateway: int, html_ok: int) -> None:
        import http.server
        import threading

        self.upstream = upstream
        self.left = [502] * bad_gateway + [200] * html_ok
        self.faults = 0
        self.passed = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.left:
                    status = proxy.left.pop(0)
                    proxy.faults += 1
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(proxy.PAGE)))
                    self.end_headers()
                    self.wfile.write(proxy.PAGE)
                    return
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body if self.command != "GET" else None, method=self.command
                )
                for h in ("Content-Type", "Authorization"):
                    if self.headers.get(h):
                        req.add_header(h, self.headers[h])
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
                proxy.passed += 1
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="flaky-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(30)


def test_a_proxys_html_error_pages_are_retried_and_counted_then_every_point_arrives_once(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy answers the MLflow client with HTML 502 pages, then HTML with status 200 (a JSON
    decode error, a ValueError), then passes through: the forwarder retries every one with backoff,
    counts them, and finishes with every point exactly once. Before the fix, ValueError was
    permanent and forwarding stopped after three tries."""
    db = make_run(tmp_path / "store", monkeypatch, ranks=RANKS, steps=STEPS)
    proxy = FlakyProxy(mlflow_server.uri, bad_gateway=3, html_ok=5)
    try:
        fwd = Forwarder(
            db,
            "mlflow",
            {
                "tracking_uri": proxy.uri,
                "batch_points": 1500,
                "base_backoff_s": 0.05,
                "max_backoff_s": 0.2,
                "http_max_retries": 0,
                "http_timeout_s": 10,
            },
        )
        try:
            st = fwd.drain(120)
        finally:
            fwd.release()
    finally:
        proxy.close()
    assert proxy.faults == 8 and proxy.passed > 0
    assert st["retries"] >= 8, st
    assert st["failed"] is None and st["failed_points"] == 0
    assert st["finished"] == "finished"
    assert st["forwarded_points"] == RANKS * STEPS * 2 + STEPS * 2
    _check_mlflow_run(mlflow_server.uri, db.parent.name)


def _ended_store(path: Path, run_id: str, state: str) -> Path:
    """A one-rank run of ten points that ended in ``state``."""
    from array import array

    from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData

    s = LocalStore(path)
    s.create_run(run_id, "fwd", f"ended-{state}", 1, 1000.0)
    steps, values = array("q", range(10)), array("d", [float(i) for i in range(10)])
    s.commit(
        TxnData(
            key_policies={"loss": "mean"},
            senders={(0, 1): (1, 10, 1, 1000.0, 1001.0, "closed", 1, "h")},
            chunks=[
                ChunkRow("loss", 0, 1, 1, 1001.0, steps, values),
                ChunkRow("loss", MAIN_RANK, 0, 0, 1001.5, steps, values, array("i", [1] * 10)),
            ],
        )
    )
    s.finish_run(state, {})
    s.close()
    return path


def test_failed_and_interrupted_runs_reach_mlflow_as_failed_and_killed(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """The journal's end state goes to the tracker: failed -> FAILED, interrupted -> KILLED (not FINISHED)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    for state, status in (("failed", "FAILED"), ("interrupted", "KILLED"), ("finished", "FINISHED")):
        db = _ended_store(tmp_path / state / "runs" / f"r-{state}" / "run.db", f"r-{state}", state)
        fwd = Forwarder(db, "mlflow", {"tracking_uri": mlflow_server.uri, "experiment": "fwd"})
        try:
            st = fwd.drain(60)
        finally:
            fwd.release()
        assert st["finished"] == state
        exp = client.get_experiment_by_name("fwd")
        assert exp is not None
        [run] = client.search_runs([exp.experiment_id], filter_string=f"tags.`coordinator.run_id` = 'r-{state}'")
        assert run.info.status == status, state


def test_neptune_offline_marks_failed_and_interrupted_runs(tmp_path: Path) -> None:
    """Neptune has no killed state: failed sets sys/failed, interrupted adds the tag 'interrupted'."""
    pytest.importorskip("neptune", reason="the neptune extra is not installed (pip install 'coordinator[neptune]')")
    import json

    for state in ("failed", "interrupted"):
        db = _ended_store(tmp_path / state / "runs" / f"r-{state}" / "run.db", f"r-{state}", state)
        data_dir = tmp_path / state / "np"
        fwd = Forwarder(db, "neptune", {"mode": "offline", "project": "ws/fwd", "data_dir": str(data_dir)})
        try:
            fwd.drain(120)
        finally:
            fwd.release()
        [container] = list((data_dir / "offline").glob("run__*"))
        ops = [json.loads(line)["obj"] for f in container.glob("data-*.log") for line in f.read_text().splitlines()]
        assigned = {"/".join(o["path"]): o.get("value") for o in ops if o["type"].startswith("Assign")}
        tags = [o for o in ops if "/".join(o["path"]) == "sys/tags"]
        assert assigned["coordinator/state"] == state
        assert (assigned.get("sys/failed") is True) is (state == "failed")
        assert any("interrupted" in json.dumps(o) for o in tags) is (state == "interrupted")


# ------------------------------------------------------------------------------ tags, files and text series


def _forward_with(name: str, options: Mapping[str, object]) -> Callable[[Path], dict[str, object]]:
    def forward(db: Path) -> dict[str, object]:
        fwd = Forwarder(db, name, options)
        try:
            return fwd.drain(120)
        finally:
            fwd.release()

    return forward


def test_mlflow_gets_tags_as_tags_files_as_artifacts_and_texts_as_files_once(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags a, b then -a +c: coordinator.tag.* and sys/tags follow; the upload's bytes; each text once."""
    from mlflow.tracking import MlflowClient

    from coordinator.forward.textfiles import parse_texts
    from tests.forward.test_sending import KEY, RANKS, text, two_phases

    payload = os.urandom(3000)
    opts = {"tracking_uri": mlflow_server.uri, "experiment": "ctx"}
    db = two_phases(tmp_path, monkeypatch, _forward_with("mlflow", opts), payload)
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("ctx")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id], filter_string=f"tags.`coordinator.run_id` = '{db.parent.name}'")
    rid = run.info.run_id
    mine = {k: v for k, v in run.data.tags.items() if k.startswith("coordinator.tag.")}
    assert mine == {"coordinator.tag.b": "b", "coordinator.tag.c": "c"}
    assert run.data.tags["sys/tags"] == '["b", "c"]'
    local = client.download_artifacts(rid, "model/ckpt/model.bin", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == payload
    assert client.list_artifacts(rid, "sys/env/packages"), "the environment capture's packages file"
    for r in range(RANKS):
        got: list[tuple[int, str]] = []
        for f in client.list_artifacts(rid, f"text/{KEY}/rank{r}"):
            got.extend(parse_texts(Path(client.download_artifacts(rid, f.path, str(tmp_path / "t"))).read_text()))
        assert sorted(got) == [(s, text(r, s)) for s in range(10)], "each text exactly once"


def _wandb_records(path: Path) -> list[tuple[str, Any]]:
    """(record type, record) of each record of a ``.wandb`` file; protobuf records are untyped."""
    from coordinator.forward.wandb import _pb, _records

    out = []
    for raw in _records(str(path)):
        rec = _pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        out.append((kind, getattr(rec, kind)))
    return out


def test_wandb_offline_gets_run_tags_the_file_and_texts_as_strings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B offline: run.tags ends as (b, c); the upload is a run file; each text once at its step."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'coordinator[wandb]')")
    from coordinator.forward.wandb import read_offline_history
    from tests.forward.test_sending import KEY, RANKS, text, two_phases

    monkeypatch.setenv("WANDB_SILENT", "true")
    payload = os.urandom(2000)
    wb = tmp_path / "wb"
    two_phases(tmp_path, monkeypatch, _forward_with("wandb", {"mode": "offline", "dir": str(wb)}), payload)
    files = sorted((wb / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, files  # one per forwarder (resumed run id)
    got: dict[str, list[tuple[int, str]]] = {}
    tags: list[list[str]] = []
    saved: list[str] = []
    for f in files:
        for row in read_offline_history(f):
            for k, v in row.items():
                if k.startswith("ranks/") and isinstance(v, str):
                    got.setdefault(k, []).append((int(row["coordinator/step"]), v))
        for kind, rec in _wandb_records(f):
            if kind == "run" and rec.tags:
                tags.append(list(rec.tags))
            if kind == "files":
                saved.extend(x.path for x in rec.files)
    for r in range(RANKS):
        assert sorted(got[f"ranks/{r}/{KEY}"]) == [(s, text(r, s)) for s in range(10)]
    assert sorted(tags[0]) == ["a", "b"] and sorted(tags[-1]) == ["b", "c"], tags
    assert "model/ckpt/model.bin" in saved, saved
    [copy] = list((wb / "wandb").glob("offline-run-*/files/model/ckpt/model.bin"))
    assert copy.read_bytes() == payload


def test_neptune_offline_gets_tag_adds_and_removes_the_file_and_string_series_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neptune offline: sys/tags add a, b, then remove a / add c; the upload; LogStrings per text once."""
    pytest.importorskip("neptune", reason="the neptune extra is not installed (pip install 'coordinator[neptune]')")
    import json

    from tests.forward.test_sending import KEY, RANKS, text, two_phases

    data_dir = tmp_path / "np"
    opts = {"mode": "offline", "project": "ws/ctx", "data_dir": str(data_dir)}
    two_phases(tmp_path, monkeypatch, _forward_with("neptune", opts), os.urandom(500))
    ops = [
        json.loads(line)["obj"]
        for c in (data_dir / "offline").glob("run__*")
        for f in sorted(c.glob("data-*.log"))
        for line in f.read_text().splitlines()
    ]
    tag_ops = [(o["type"], sorted(o["values"])) for o in ops if o["path"] == ["sys", "tags"]]
    assert ("AddStrings", ["a", "b"]) in tag_ops and ("RemoveStrings", ["a"]) in tag_ops
    assert ("AddStrings", ["c"]) in tag_ops
    uploads = {"/".join(o["path"]): o for o in ops if o["type"] == "UploadFile"}
    assert Path(uploads["model/ckpt"]["file_path"]).stat().st_size == 500
    assert "coordinator/env/packages" in uploads
    for r in range(RANKS):
        got = [
            (int(v["step"]), v["value"])
            for o in ops
            if o["type"] == "LogStrings" and o["path"] == ["ranks", str(r), *KEY.split("/")]
            for v in o["values"]
        ]
        assert sorted(got) == [(s, text(r, s)) for s in range(10)]


def test_wait_returns_once_the_texts_reached_the_backend(store_dir: Path, tmp_path: Path) -> None:
    """With backend='tensorboard', after wait() the event files already hold this rank's texts."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import coordinator
    from tests.forward.test_sending import tb_texts

    logdir = tmp_path / "tb"
    with coordinator.init_run(backend="tensorboard", backend_options={"logdir": str(logdir)}) as run:
        for s in range(200):
            run["samples/gen"].append(f"text {s}", step=s)
        run.wait(60)
        got = tb_texts(logdir)
        assert got["ranks/0/samples/gen"] == [(s, f"text {s}") for s in range(200)]
