"""The UI's JSON API over HTTP: a real server on an ephemeral port, real stores, every page's data."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli.runs import scan_runs
from coordinator.journal.paths import run_dir
from coordinator.ui.server import UiServer
from tests.ui._stores import brute, rank_value, write_run

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
            _, page = get(server, f"/api/runs/{run.id}")
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
    write_run(tmp_path, "alpha-1")
    p = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "ui", "--dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split()[-3]
        with urllib.request.urlopen(url + "api/runs", timeout=30) as r:
            assert [x["id"] for x in json.loads(r.read())["runs"]] == ["alpha-1"]
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
