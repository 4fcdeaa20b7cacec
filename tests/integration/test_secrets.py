"""Tracker credentials stay secret: never on a command line, in a child's environment, the run's
files, the logs, the report or ``coordinator show`` (issue 11, item 1).

A real run feeds a real ``mlflow server`` through a URI carrying ``user:password@`` and W&B
(offline) holding an ``api_key``; a thread records the command line and environment of every
process of the run's tree while it lives, and everything the run wrote is searched afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import coordinator
from coordinator import cli
from coordinator.journal.store import list_runs
from coordinator.transport.discovery import private_dir
from tests.integration.test_backends import MlflowServer, mlflow_server

__all__ = ["mlflow_server"]  # the imported fixture: pytest finds it in this module's namespace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "Pw-Secret-7f3a9c"
TOKEN = "wandb-TOKEN-0b1d2e4f6a8c"
SECRETS = (PASSWORD, TOKEN)


class TreeWatcher(threading.Thread):
    """Records the command line and environment of every descendant of this process until stopped."""

    def __init__(self) -> None:
        super().__init__(name="test-tree-watcher", daemon=True)
        self.seen: dict[int, tuple[str, str]] = {}
        self.stop_evt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_evt.wait(0.01):
            for p in me.children(recursive=True):
                try:
                    cmd = "\0".join(p.cmdline())
                    env = "\0".join(f"{k}={v}" for k, v in p.environ().items())
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                old = self.seen.get(p.pid, ("", ""))
                self.seen[p.pid] = (old[0] + "\n" + cmd, old[1] + "\n" + env)

    def __enter__(self) -> TreeWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_evt.set()
        self.join(10)


@pytest.fixture
def watcher() -> Iterator[TreeWatcher]:
    with TreeWatcher() as w:
        yield w


def _owned_by_me(d: Path) -> bool:
    try:
        return (d / "owners").read_text().split()[0] == str(os.getpid())
    except (OSError, IndexError):
        return False


def _leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    return [s for s in SECRETS if s.encode() in data]


def test_credentials_never_reach_argv_env_files_logs_report_or_show(
    store_dir: Path,
    tmp_path: Path,
    mlflow_server: MlflowServer,
    watcher: TreeWatcher,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.DEBUG)
    uri = mlflow_server.uri.replace("http://", f"http://trainer:{PASSWORD}@")
    agg_log = tmp_path / "aggregator.log"
    options = {
        "mlflow": {"tracking_uri": uri, "experiment": "secrets"},
        "wandb": {"mode": "offline", "dir": str(tmp_path / "wb"), "api_key": TOKEN},
    }
    settings = coordinator.Settings(agg_stderr=str(agg_log), debug=True, forward_poll_interval_s=0.1)
    with coordinator.init_run("p", backend=("mlflow", "wandb"), backend_options=options, settings=settings) as run:
        run_id = run.id
        sock_dirs = [d for d in private_dir().glob("run-*") if _owned_by_me(d)]
        for d in sock_dirs:  # the config file is gone once the aggregator read it
            assert not (d / "config.json").exists()
        for s in range(200):
            run.log({"loss": float(s)}, step=s)
        run.wait(120)  # the forwarders have sent everything: both trackers' clients are running
    watcher.stop_evt.set()
    watcher.join(10)

    assert len(watcher.seen) >= 1, "the aggregator's process was never seen"
    assert any("coordinator.aggregator" in cmd for cmd, _ in watcher.seen.values())
    for pid, (cmd, env) in watcher.seen.items():
        assert not _leaks(cmd), f"a secret is on the command line of pid {pid}: {cmd.replace(chr(0), ' ')[:300]}"
        assert not _leaks(env), f"a secret is in the environment of pid {pid}"

    [info] = list_runs(store_dir)
    assert info.id == run_id and info.state == "finished"
    assert info.report is not None and set(info.report["forwarders"]) == {"mlflow", "wandb"}
    files = [f for f in store_dir.rglob("*") if f.is_file()] + [agg_log]
    assert any(f.name == "run.db" for f in files) and any(f.name.startswith("forward-") for f in files)
    for f in files:
        assert not _leaks(f.read_bytes()), f"a secret is in {f}"
    assert agg_log.stat().st_size > 0
    assert "trainer:***@" in agg_log.read_text() or "mlflow" in agg_log.read_text()

    # coordinator show, in text and JSON
    for args in (["show", run_id], ["show", run_id, "--json"]):
        assert cli.main(["--dir", str(store_dir), *args]) == 0
    captured = capfd.readouterr()
    assert not _leaks(captured.out + captured.err), "a secret was printed"
    assert not _leaks(caplog.text), "a secret was logged"
    json.loads(captured.out[captured.out.index("\n{") :])  # the --json output is whole


def test_a_failed_tracker_check_names_no_password(store_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The tracker's own message quotes the URI: the SinkError (and its chain) shows it masked."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    uri = f"http://trainer:{PASSWORD}@127.0.0.1:9"
    with pytest.raises(coordinator.SinkError) as ei:
        coordinator.init_run(backend="mlflow", backend_options={"tracking_uri": uri, "check_timeout_s": 5})
    chain: list[BaseException] = []
    e: BaseException | None = ei.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)  # as a traceback prints it
    assert "trainer:***@127.0.0.1:9" in str(ei.value)
    for e in chain:
        assert not _leaks(str(e)), f"{type(e).__name__}: {e}"
    captured = capfd.readouterr()
    assert not _leaks(captured.out + captured.err)
