"""The web UI in a real browser: Debian's chromium (headless) loads the runs table and the run page of a
real 4-rank torchrun job, and the train/loss chart is drawn: its line and its rank band have pixels; each
rank's text shows on the run page and in the text view, as text (its markup escaped, never parsed); events
read as sentences with short incarnation labels and the report as its summary lines, with no raw
incarnation number anywhere on the run page; a run of thousands of keys creates only the charts in view.

The page, given ``check=1``, counts after uPlot draws the canvas pixels of the line colour and of
the band colour into the chart's ``data-line-pixels``/``data-band-pixels``; chromium's ``--dump-dom``
hands the DOM back. The screenshot of the run page is kept under ``$COORDINATOR_TEST_ARTIFACTS``
(else the test's tmp_path) and its path printed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
from array import array
from pathlib import Path

import pytest

from coordinator.cli.runs import scan_runs
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData, run_dir
from coordinator.ui.api import SUMMARY_PAGE, report_summary
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
    torchrun("ui_job.py", "--points", "400", "--out", str(out_dir), nproc=4, store=store_dir).check()
    _wide_run(store_dir)
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
        texts = _chromium(
            tmp_path / "p4", "--dump-dom", f"{server.url}?page=texts&id={run_id}&key=samples/generation&rank=2"
        )
        wide = _chromium(tmp_path / "p5", "--dump-dom", f"{server.url}?page=run&id=wide-run&check=1")
    print(f"\nscreenshot of the run page: {shot}")
    assert shot.stat().st_size > 10_000
    charts = {m.group(1): m.group(0) for m in re.finditer(r'<div class="chart" data-key="([^"]+)"[^>]*>', dom)}
    assert set(charts) >= {"train/loss", "train/acc"}, dom[-3000:]
    tag = charts["train/loss"]
    counts = dict(re.findall(r'data-(line|band)-pixels="(\d+)"', tag))
    line, band = int(counts.get("line", 0)), int(counts.get("band", 0))
    print(f"train/loss: {line} line pixels, {band} band pixels")
    assert line > MIN_PIXELS, tag
    assert band > MIN_PIXELS * 10, tag  # the ranks' losses lie apart (0.1 per rank, and noise): a visible band
    assert 'data-ready="1"' in dom

    # events as sentences, the report as its summary lines; no incarnation number on the page
    incarnations = _incarnations(store_dir, run_id)
    assert len(incarnations) == 4
    for r in range(4):
        assert f"r{r}#1 joined (pid " in dom, r
        assert re.search(rf"r{r}#1 closed clean: \d+ points", dom), r
    # The report's summary lines, as the page must show them. A loaded machine can make the job note
    # what it recovered from (a straggling rank, a resend); it must never lose or refuse anything.
    info = LocalStore(run_dir(store_dir, run_id) / "run.db", readonly=True)
    try:
        run = info.run_info()
    finally:
        info.close()
    assert run.report is not None and run.state == "finished"
    expected = report_summary(run.report, run.state)
    assert not [x for x in expected if x["level"] == "trouble"], expected
    assert expected[0]["text"].startswith("finished in ") and ": 4 ranks, " in expected[0]["text"], expected
    ul = re.search(r'<ul id="summary">(.*?)</ul>', dom, re.S)
    assert ul is not None, dom[-3000:]
    items = re.findall(r'<li class="sum-([a-z]+)">([^<]*)</li>', ul[1])
    assert items == [(x["level"], html.escape(x["text"], quote=False)) for x in expected], (ul[0], expected)
    assert "full report (JSON)" in dom
    shown = [str(i) for i in incarnations if str(i) in dom]
    assert not shown, f"raw incarnation numbers on the run page: {shown}"

    # each rank's text on the run page, its markup shown as text: escaped in the DOM, no <b> element made
    for r in range(4):
        shown = f"&lt;b&gt;rank {r}&lt;/b&gt; says &lt;i&gt;hello&lt;/i&gt; &amp; bye"
        assert re.search(rf'data-key="samples/generation" data-rank="{r}".*?{re.escape(shown)}', dom, re.S), r
    assert "<b>rank" not in dom and "<i>hello" not in dom
    # the text view: a rank selector on rank 2, and its text
    assert re.search(r'<option value="2" selected="">rank 2</option>', texts), texts[-3000:]
    assert 'data-step="399"' in texts and "&lt;b&gt;rank 2&lt;/b&gt; says" in texts and "<b>rank" not in texts
    assert "1 of 1 texts, newest first" in texts and 'data-ready="1"' in texts

    # thousands of keys: one page of placeholders, only the charts in view created and drawn
    boxes = re.findall(r'<div class="chart" data-key="(k\d+)"([^>]*)>', wide)
    drawn = [k for k, attrs in boxes if 'data-drawn="1"' in attrs]
    print(f"wide run: {len(boxes)} chart boxes, {len(drawn)} drawn")
    # a 2000 px high window holds about 10 rows of 2 charts; the first summaries page holds SUMMARY_PAGE keys
    assert len(boxes) == SUMMARY_PAGE and 0 < len(drawn) <= 24, (len(boxes), len(drawn))
    assert 'data-ready="1"' in wide and ">3000 series<" in wide


def _incarnations(root: Path, run_id: str) -> list[int]:
    """The run's incarnations as the journal holds them (large random numbers)."""
    s = LocalStore(run_dir(root, run_id) / "run.db", readonly=True)
    try:
        return [int(x["incarnation"]) for x in s.senders()]
    finally:
        s.close()


def _wide_run(root: Path) -> None:
    """A run of 3,000 short series (k0000 .. k2999)."""
    s = LocalStore(run_dir(root, "wide-run") / "run.db")
    try:
        s.create_run("wide-run", "test", "wide", 1, time.time())
        keys = [f"k{i:04d}" for i in range(3000)]
        txn = TxnData(key_policies=dict.fromkeys(keys, "mean"))
        for k in keys:
            st = array("q", range(50))
            txn.chunks.append(ChunkRow(k, MAIN_RANK, 0, 0, time.time(), st, array("d", [float(x) for x in st])))
        s.commit(txn)
        s.finish_run("finished", {"points": 150_000})
    finally:
        s.close()
