"""The web UI in a real browser: Debian's chromium (headless) loads the runs table and the run page of a
real 4-rank torchrun job, and the train/loss chart is drawn: its line and its rank band have pixels.

The page, given ``check=1``, counts after uPlot draws the canvas pixels of the line colour and of
the band colour into the chart's ``data-line-pixels``/``data-band-pixels``; chromium's ``--dump-dom``
hands the DOM back. The screenshot of the run page is kept under ``$COORDINATOR_TEST_ARTIFACTS``
(else the test's tmp_path) and its path printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from coordinator.cli.runs import scan_runs
from coordinator.ui.server import UiServer
from tests.integration._torchrun import torchrun

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MIN_PIXELS = 200


def _chromium(profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless chromium once (its own session, killed whole on a hang); its stdout."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        "--virtual-time-budget=15000",
        *args,
    ]
    # its own runtime and config directories: chromium writes dconf/ and caches there
    env = dict(
        os.environ, XDG_RUNTIME_DIR=str(profile / "run"), XDG_CONFIG_HOME=str(profile / "config"), HOME=str(profile)
    )
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
        pytest.fail(f"chromium hung for {timeout} s: {cmd}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # helpers chromium left in its session
        except ProcessLookupError:
            pass
    assert p.returncode == 0, f"chromium exited {p.returncode}: {err[-3000:]}"
    return out


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (CI installs Debian's chromium)")
def test_browser_draws_runs_table_and_train_loss_with_rank_band(store_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "job"
    out_dir.mkdir()
    torchrun("log_points.py", "--points", "400", "--out", str(out_dir), nproc=4, store=store_dir).check()
    run_id = json.loads((out_dir / "rank0.json").read_text())["run_id"]
    artifacts = Path(os.environ.get("COORDINATOR_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "ui-run-page.png"
    with UiServer(store_dir, scan_runs, port=0) as server:
        runs = _chromium(tmp_path / "p1", "--dump-dom", server.url)
        assert f'href="?page=run&amp;id={run_id}"' in runs, runs[-3000:]
        assert ">finished<" in runs and ">4<" in runs  # its state and its ranks, in the table

        page = f"{server.url}?page=run&id={run_id}&check=1"
        dom = _chromium(tmp_path / "p2", "--dump-dom", page)
        _chromium(tmp_path / "p3", f"--screenshot={shot}", page)
    print(f"\nscreenshot of the run page: {shot}")
    assert shot.stat().st_size > 10_000
    charts = {m.group(1): m.group(0) for m in re.finditer(r'<div class="chart" data-key="([^"]+)"[^>]*>', dom)}
    assert set(charts) >= {"train/loss", "train/acc"}, dom[-3000:]
    tag = charts["train/loss"]
    counts = dict(re.findall(r'data-(line|band)-pixels="(\d+)"', tag))
    line, band = int(counts.get("line", 0)), int(counts.get("band", 0))
    print(f"train/loss: {line} line pixels, {band} band pixels")
    assert line > MIN_PIXELS, tag
    assert band > MIN_PIXELS * 10, tag  # the band spans ranks 0..3 (values rank * 1e6 + step): most of the plot
    assert 'data-ready="1"' in dom
