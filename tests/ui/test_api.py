"""The UI's JSON API over HTTP: a real server on an ephemeral port, real stores, every page's data."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli.runs import scan_runs
from coordinator.journal.paths import run_dir
from coordinator.journal.store import MAIN_RANK, ChunkRow, LocalStore, TxnData
from coordinator.ui.api import SUMMARY_PAGE
from coordinator.ui.server import UiServer
from tests.sigint import with_default_sigint
from tests.ui._stores import RESTART_TEXT_STEP, TEXT_KEY, brute, rank_value, text, write_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[UiServer]:
    write_run(tmp_path, "alpha-1", project="vision", tags=["base", "gpu"], lr=0.1)
    write_run(tmp_path, "beta-2", project="vision", name="other", tags=["base"], seed=2, lr=0.2, ranks=2, steps=500)
    write_run(tmp_path, "gamma-3", project="text", name="live", state=None)  # running, no writer: stale
    with UiServer(tmp_path, scan_runs, port=0) as server:
        yield server


def get(server: UiServer, path: str, **headers: str) -> tuple[int, Any]:
    req = urllib.request.Request(server.url.rstrip("/") + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers["Content-Type"] == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_runs_table_lists_filters_and_describes_runs(ui: UiServer) -> None:
    status, d = get(ui, "/api/runs")
    assert status == 200 and d["total"] == 3
    by_id = {r["id"]: r for r in d["runs"]}
    assert set(by_id) == {"alpha-1", "beta-2", "gamma-3"}
    a = by_id["alpha-1"]
    assert (a["project"], a["state"], a["world_size"], a["points"], a["tags"]) == (
        "vision",
        "finished",
        3,
        3000,
        ["base", "gpu"],
    )
    assert a["size_bytes"] > 0 and a["duration_s"] == pytest.approx(95.0)
    assert by_id["gamma-3"]["state"] == "stale"  # running, but no aggregator holds its writer lock
    assert "path" not in a
    assert (d["projects"], d["tags"], d["states"]) == (["text", "vision"], ["base", "gpu"], ["finished", "stale"])

    def ids(q: str) -> list[str]:
        return sorted(r["id"] for r in get(ui, "/api/runs?" + q)[1]["runs"])

    assert ids("project=vision") == ["alpha-1", "beta-2"]
    assert ids("tag=base&tag=gpu") == ["alpha-1"]
    assert ids("state=stale") == ["gamma-3"]
    assert ids("name=OTH") == ["beta-2"]
    assert ids("project=vision&name=nothing") == []


def test_run_page_holds_fields_series_health_events_and_report(ui: UiServer) -> None:
    status, d = get(ui, "/api/runs/alpha-1")
    assert status == 200
    assert d["run"]["state"] == "finished" and d["run"]["world_size"] == 3
    assert d["fields"]["parameters/lr"] == 0.1 and d["fields"]["sys/tags"] == ["base", "gpu"]
    [loss] = d["metrics"]
    assert loss["key"] == "loss" and loss["ranks"] == [0, 1, 2] and loss["points"] == 1000
    assert [s["key"] for s in d["system"]] == ["system/cpu/util"]
    assert [(s["rank"], s["state"]) for s in d["senders"]] == [(0, "closed"), (1, "closed"), (2, "closed")]
    assert [e["kind"] for e in d["events"]] == ["rank_joined", "straggler"]
    h = d["health"]
    assert set(h["ranks"]) == {"0", "1", "2"} and h["t0"] < h["t1"]
    assert [m["kind"] for m in h["ranks"]["2"]["marks"]] == ["straggler"]
    assert h["ranks"]["0"]["segments"][0]["state"] == "closed"
    assert d["report"] == {"points": 3000, "anomalies": {}}
    assert d["position"] > 0


def test_series_gives_main_line_and_rank_band_that_match_the_points(ui: UiServer, tmp_path: Path) -> None:
    status, d = get(ui, "/api/runs/alpha-1/series?key=loss&buckets=100&ranks=1")
    assert status == 200
    assert (d["lo"], d["width"], d["ranks"], d["points"]) == (0, 10, [0, 1, 2], 1000)
    assert d["x"] == list(range(0, 1000, 10))
    # the band is the min and max across ranks of each bucket, computed here from the ranks' points
    from coordinator.journal.store import LocalStore

    s = LocalStore(run_dir(tmp_path, "alpha-1") / "run.db", readonly=True)
    try:
        per_rank = {r: brute(*map(list, zip(*s.values("loss", r), strict=True)), 0, 999, 10) for r in range(3)}
        main = brute(*map(list, zip(*s.values("loss"), strict=True)), 0, 999, 10)
    finally:
        s.close()
    for i in range(100):
        assert d["band"]["min"][i] == min(per_rank[r][i][1] for r in range(3))
        assert d["band"]["max"][i] == max(per_rank[r][i][2] for r in range(3))
        assert (d["main"]["min"][i], d["main"]["max"][i], d["main"]["last"][i]) == main[i][1:3] + main[i][4:]
        first = per_rank[1][i][3]
        assert d["per_rank"]["1"]["first"][i] == (None if math.isnan(first) else first)
    assert d["band"]["min"][0] == pytest.approx(rank_value(0, 0), abs=1.0)
    assert d["band"]["max"][0] == pytest.approx(rank_value(2, 0), abs=1.0)
    # a zoom: a finer downsample of a narrow range, one step per bucket
    _, z = get(ui, "/api/runs/alpha-1/series?key=loss&lo=200&hi=299&buckets=500")
    assert (z["width"], z["x"][0], z["x"][-1], z["points"]) == (1, 200, 299, 100)
    assert "per_rank" not in z and len(z["t"]) == 100


def test_series_rejects_bad_parameters(ui: UiServer) -> None:
    assert get(ui, "/api/runs/alpha-1/series")[0] == 400
    assert get(ui, "/api/runs/alpha-1/series?key=nope")[0] == 400
    assert get(ui, "/api/runs/alpha-1/series?key=loss&buckets=many")[0] == 400
    assert get(ui, "/api/runs/alpha-1/series?key=loss&buckets=0")[0] == 400
    assert get(ui, "/api/runs/alpha-1/series?key=loss&lo=10&hi=5")[0] == 400
    assert get(ui, "/api/runs/nope/series?key=loss")[0] == 404
    assert get(ui, "/api/runs/..")[0] == 404
    assert get(ui, "/api/nothing")[0] == 404


def test_changes_report_what_was_committed_since_a_position(ui: UiServer, tmp_path: Path) -> None:
    _, d = get(ui, "/api/runs/alpha-1/changes?since=0")
    assert d["keys"] == ["loss", "system/cpu/util"] and d["state"] == "finished" and d["events"] == 2
    _, same = get(ui, f"/api/runs/alpha-1/changes?since={d['position']}")
    assert same["keys"] == [] and same["position"] == d["position"]


def test_compare_puts_runs_side_by_side(ui: UiServer) -> None:
    status, d = get(ui, "/api/compare?runs=alpha-1,beta-2&key=loss&buckets=100")
    assert status == 200
    assert [r["id"] for r in d["runs"]] == ["alpha-1", "beta-2"]
    assert d["fields"]["parameters/lr"] == [0.1, 0.2]
    assert d["keys"] == ["loss", "system/cpu/util"]
    s = d["series"]
    assert s["width"] == 10 and len(s["runs"]) == 2
    assert sum(s["runs"][0]["n"]) == 1000 and sum(s["runs"][1]["n"]) == 500  # one grid over both step ranges
    assert s["runs"][1]["n"][-1] == 0 and s["runs"][1]["min"][-1] is None
    assert get(ui, "/api/compare?runs=alpha-1")[0] == 400
    assert get(ui, "/api/compare?runs=alpha-1,missing")[0] == 404


def test_static_page_and_vendored_chart_library_are_served(ui: UiServer) -> None:
    for path, marker in (
        ("/", b"app.js"),
        ("/app.js", b"uPlot"),
        ("/uPlot.iife.min.js", b"uPlot"),
        ("/uPlot.LICENSE", b"MIT"),
    ):
        status, body = get(ui, path)
        assert status == 200 and marker in body, path
    assert get(ui, "/../settings.py")[0] == 404
    assert get(ui, "/static/app.js")[0] == 404


def test_only_get_and_only_through_loopback(ui: UiServer) -> None:
    req = urllib.request.Request(ui.url + "api/runs", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    status, d = get(ui, "/api/runs", Host="attacker.example:8765")
    assert status == 403 and "loopback" in d["error"]


def test_binding_a_public_address_warns_that_there_is_no_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="coordinator.ui.server"):
        UiServer(tmp_path, scan_runs, host="0.0.0.0", port=0).stop()
    assert "no login" in caplog.text
    with pytest.raises(ValueError, match="port"):
        UiServer(tmp_path, scan_runs, port=70000)


def test_live_run_is_seen_changing(store_dir: Path) -> None:
    """A real run (its own aggregator process): the page sees it running, then its new points, then its end."""
    import coordinator

    with UiServer(store_dir, scan_runs, port=0) as server:
        run = coordinator.init_run(project="live", name="growing")
        try:
            for s in range(100):
                run.log({"acc": s / 100}, step=s)
            run.wait(60)
            # wait() covers the rank's own points; the reduced main series reaches the journal
            # within about 100 ms after (the aggregator writes it in larger chunks).
            deadline = time.monotonic() + 10
            while True:
                _, page = get(server, f"/api/runs/{run.id}")
                if (page["metrics"] and page["metrics"][0]["points"] == 100) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert page["run"]["state"] == "running" and page["metrics"][0]["points"] == 100
            for s in range(100, 250):
                run.log({"acc": s / 100}, step=s)
            run.wait(60)
            _, ch = get(server, f"/api/runs/{run.id}/changes?since={page['position']}")
            assert ch["keys"] == ["acc"] and ch["position"] > page["position"] and ch["state"] == "running"
        finally:
            run.stop()
        _, end = get(server, f"/api/runs/{run.id}/changes?since={ch['position']}")
        assert end["state"] == "finished"
        _, d = get(server, f"/api/runs/{run.id}/series?key=acc&buckets=1000")
        assert d["points"] == 250 and d["width"] == 1 and d["main"]["last"][249] == 2.49


def test_cli_prints_the_address_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C stops ``coordinator ui`` with a browser's idle connection still open (a preconnect)."""
    write_run(tmp_path, "alpha-1")
    p = subprocess.Popen(
        with_default_sigint(
            [sys.executable, "-X", "faulthandler", "-m", "coordinator.cli", "ui", "--dir", str(tmp_path), "--port", "0"]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    idle: socket.socket | None = None
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split()[-3]
        with urllib.request.urlopen(url + "api/runs", timeout=30) as r:
            assert [x["id"] for x in json.loads(r.read())["runs"]] == ["alpha-1"]
        idle = socket.create_connection(("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1])), timeout=30)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
            _, err = p.communicate(timeout=30)
            pytest.fail(f"coordinator ui did not stop 30 s after SIGINT; its threads:\n{err}")
    finally:
        if idle is not None:
            idle.close()
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_stop_shuts_idle_connections_instead_of_waiting_for_them(tmp_path: Path) -> None:
    write_run(tmp_path, "alpha-1")
    server = UiServer(tmp_path, scan_runs, port=0)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
    status, d = get(server, "/api/runs")  # a request thread of its own: the idle ones hold theirs
    assert status == 200 and [x["id"] for x in d["runs"]] == ["alpha-1"]
    stopper = threading.Thread(target=server.stop, name="test-ui-stop")
    stopper.start()
    stopper.join(30)
    try:
        assert not stopper.is_alive(), "stop() waited on connections that never sent a request"
        for s in idle:  # each was shut by the server, not left open: the peer reads the end
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
        stopper.join(30)


def test_run_page_lists_text_series_with_their_last_text(ui: UiServer) -> None:
    _, d = get(ui, "/api/runs/alpha-1")
    rows = {(t["key"], t["rank"]): t for t in d["texts"]}
    assert set(rows) == {(TEXT_KEY, r) for r in range(3)}
    assert rows[(TEXT_KEY, 0)]["n"] == 30 and rows[(TEXT_KEY, 0)]["last_text"] == text(0, 290)
    assert rows[(TEXT_KEY, 1)]["last_step"] == 250 and rows[(TEXT_KEY, 1)]["last_text"] == text(1, 250, 2)
    assert all(m["key"] != TEXT_KEY for m in d["metrics"])  # a text series is no chart


def test_texts_page_newest_first_with_the_restart_applied(ui: UiServer) -> None:
    status, d = get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}&rank=1&limit=4")
    assert status == 200 and d["ranks"] == [0, 1, 2] and d["rank"] == 1
    assert d["total"] == 26  # steps 0..190 of incarnation 1, then 200..250 of incarnation 2
    assert [t["step"] for t in d["texts"]] == [250, 240, 230, 220] and d["next"] == 220
    assert d["texts"][0]["text"] == text(1, 250, 2)
    seen = [t["step"] for t in d["texts"]]
    before = d["next"]
    while before is not None:  # page to the oldest: every current text once, newest first
        _, page = get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}&rank=1&limit=7&before={before}")
        seen += [t["step"] for t in page["texts"]]
        texts = {t["step"]: t["text"] for t in page["texts"]}
        assert all(texts[s] == text(1, s, 2 if s >= RESTART_TEXT_STEP else 1) for s in texts)
        before = page["next"]
    assert seen == list(range(250, -1, -10))
    _, r0 = get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}")  # default: the lowest rank, newest first
    assert r0["rank"] == 0 and r0["texts"][0]["text"] == text(0, 290) and len(r0["texts"]) == 30
    assert r0["next"] is None


def test_texts_reject_bad_parameters(ui: UiServer) -> None:
    assert get(ui, "/api/runs/alpha-1/texts")[0] == 400
    assert get(ui, "/api/runs/alpha-1/texts?key=loss")[0] == 400  # a numeric series
    assert get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}&rank=7")[0] == 400
    assert get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}&limit=0")[0] == 400
    assert get(ui, f"/api/runs/alpha-1/texts?key={TEXT_KEY}&before=x")[0] == 400
    assert get(ui, f"/api/runs/alpha-1/series?key={TEXT_KEY}")[0] == 400
    assert get(ui, f"/api/runs/nope/texts?key={TEXT_KEY}")[0] == 404


def test_run_page_and_summaries_are_bounded_with_thousands_of_keys(tmp_path: Path) -> None:
    """3,000 keys: the run page summarises the first page and counts the rest; /summaries pages through them."""
    s = LocalStore(run_dir(tmp_path, "wide") / "run.db")
    try:
        s.create_run("wide", "p", "wide", 1, time.time())
        keys = [f"layer{i:04d}/grad_norm" for i in range(2990)] + [f"system/gpu{i}/util" for i in range(10)]
        txn = TxnData(key_policies=dict.fromkeys(keys, "mean"))
        for k in keys:
            txn.chunks.append(ChunkRow(k, MAIN_RANK, 0, 0, 1.0, array("q", [0, 1]), array("d", [1.0, 2.0])))
        s.commit(txn)
    finally:
        s.close()
    with UiServer(tmp_path, scan_runs, port=0) as server:
        _, d = get(server, "/api/runs/wide")
        assert len(d["metrics"]) == SUMMARY_PAGE and d["metrics_total"] == 2990 and d["metrics_next"] == SUMMARY_PAGE
        assert d["system_total"] == 10 and d["system_groups"] == {f"gpu{i}": 1 for i in range(10)}
        got, offset = [m["key"] for m in d["metrics"]], d["metrics_next"]
        while offset is not None:
            _, page = get(server, f"/api/runs/wide/summaries?offset={offset}&limit=500")
            assert page["total"] == 2990 and len(page["summaries"]) <= 500
            got += [m["key"] for m in page["summaries"]]
            offset = page["next"]
        assert got == keys[:2990]
        _, m = get(server, "/api/runs/wide/summaries?match=LAYER012&limit=100")
        assert [x["key"] for x in m["summaries"]] == [f"layer{i:04d}/grad_norm" for i in range(120, 130)]
        assert m["summaries"][0]["points"] == 2 and m["summaries"][0]["last"] == [1, 2.0]
        _, g = get(server, "/api/runs/wide/summaries?group=system&prefix=system/gpu3/")
        assert [x["key"] for x in g["summaries"]] == ["system/gpu3/util"] and g["next"] is None
        assert get(server, "/api/runs/wide/summaries?group=other")[0] == 400
        assert get(server, "/api/runs/wide/summaries?limit=501")[0] == 400


BIG = (3019813553829985617, 7019813553829985601, 5500000000000000003)
"""Incarnations as the wire makes them: large random numbers (rank 1 restarted: BIG[1] then BIG[2])."""


def _restarted_run(root: Path) -> None:
    """A finished 2-rank run whose rank 1 failed once and restarted, with the aggregator's real event texts."""
    s = LocalStore(run_dir(root, "restarted") / "run.db")
    try:
        t0 = time.time() - 100
        s.create_run("restarted", "proj", "restarted", 2, t0)
        txn = TxnData(key_policies={"loss": "mean"})
        lives = ((0, BIG[0], t0 + 1, "closed"), (1, BIG[1], t0 + 2, "fenced"), (1, BIG[2], t0 + 30, "closed"))
        for n, (rank, inc, first, state) in enumerate(lives):
            st = array("q", range(10))
            txn.chunks.append(ChunkRow("loss", rank, inc, 1, first, st, array("d", [1.0] * 10)))
            txn.senders[(rank, inc)] = (1, 10, 1, first, first + 20, state, 100 + n, "host")
        counters = json.dumps({"undelivered": 0, "accepted": 10, "dropped_points": 0})
        failure = json.dumps(
            {"type": "RuntimeError", "message": "CUDA out of memory", "reason": "r", "traceback": "tb"}
        )
        txn.events += [
            (t0 + 1, "rank_joined", 0, f"incarnation {BIG[0]} pid 100"),
            (t0 + 2, "rank_joined", 1, f"incarnation {BIG[1]} pid 101"),
            (t0 + 20, "rank_failed", 1, failure),
            (t0 + 30, "rank_restarted", 1, f"incarnation {BIG[1]} -> {BIG[2]}"),
            (t0 + 50, "rank_closed", 1, f"incarnation {BIG[2]}, 10 points, ending clean; rank counters {counters}"),
        ]
        s.commit(txn)
        report = {
            "state": "finished",
            "world_size": 2,
            "points": 30,
            "main_points": 10,
            "duration_s": 60.0,
            "late_points": 3,
            "per_rank": {"0": {"incarnations": 1}, "1": {"incarnations": 2}},
        }
        s.finish_run("finished", report, ended=t0 + 60)
    finally:
        s.close()


def test_run_page_reads_as_sentences_with_short_incarnation_labels(tmp_path: Path) -> None:
    _restarted_run(tmp_path)
    with UiServer(tmp_path, scan_runs, port=0) as server:
        status, d = get(server, "/api/runs/restarted")
    assert status == 200
    assert [(s["rank"], s["label"]) for s in d["senders"]] == [(0, "r0#1"), (1, "r1#1"), (1, "r1#2")]
    assert [e["text"] for e in d["events"]] == [
        "r0#1 joined (pid 100)",
        "r1#1 joined (pid 101)",
        "failed: RuntimeError: CUDA out of memory",
        "restarted: r1#1 -> r1#2",
        "r1#2 closed clean: 10 points; accepted 10",
    ]
    assert str(BIG[1]) in d["events"][1]["detail"]  # the raw detail is kept beside the sentence
    segs = d["health"]["ranks"]["1"]["segments"]
    assert [(s["label"], s["state"]) for s in segs] == [("r1#1", "fenced"), ("r1#2", "closed")]
    marks = d["health"]["ranks"]["1"]["marks"]
    assert [(m["kind"], m["text"]) for m in marks] == [
        ("rank_failed", "failed: RuntimeError: CUDA out of memory"),
        ("rank_restarted", "restarted: r1#1 -> r1#2"),
    ]
    # the report: the headline, then anomalies first (trouble before what the run recovered from)
    assert d["summary"] == [
        {"level": "head", "text": "finished in 1 min 00 s: 2 ranks, 30 points (10 in the main series)"},
        {"level": "trouble", "text": "3 late points (kept in their rank's series, missing from the main series)"},
        {"level": "note", "text": "restarted: rank 1 (2 lives)"},
    ]
    readable = json.dumps(
        [d["summary"], [e["text"] for e in d["events"]], d["health"]["ranks"]["1"]["marks"][1]["text"]]
    )
    assert not any(str(b) in readable for b in BIG)


def test_report_summary_of_a_clean_run_and_of_a_run_without_report(ui: UiServer) -> None:
    _, done = get(ui, "/api/runs/beta-2")
    assert [x["level"] for x in done["summary"]] == ["ok"] and done["summary"][0]["text"].endswith("no anomalies")
    _, open_ = get(ui, "/api/runs/gamma-3")
    assert open_["summary"] == [
        {"level": "open", "text": "stale: no final report yet (the run is still open, or its aggregator died)"}
    ]
