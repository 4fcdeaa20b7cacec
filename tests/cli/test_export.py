"""``coordinator export``: CSV, JSON Lines and Parquet read back equal to ``fetch_values``, with each point's time."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.cli.main import main
from tests.cli._stores import BATCH, RELOG, RUN, WORLD, N, write_run

Rows = dict[tuple[str, int | None], list[tuple[int, float, float]]]


@pytest.fixture
def store(store_dir: Path) -> Path:
    """The 4-rank run of tests/cli/_stores.py under the test's store root."""
    write_run(store_dir)
    return store_dir


def _expected(store: Path, keys: tuple[str, ...], ranks: tuple[int | None, ...]) -> dict[tuple[str, int | None], Any]:
    """What a read-only run's fetch_values returns for each (key, rank)."""
    ro = coordinator.init_run(with_id=RUN, mode="read-only")
    try:
        return {(k, r): ro[k].fetch_values(rank=r) for k in keys for r in ranks}
    finally:
        ro.stop()


def _group(rows: Iterator[tuple[str, str, int | None, int, float, float]], run_id: str) -> Rows:
    out: Rows = {}
    for run, key, rank, step, value, t in rows:
        assert run == run_id
        out.setdefault((key, rank), []).append((step, value, t))
    return out


def _read(path: Path, fmt: str, run_id: str = RUN) -> Rows:
    if fmt == "csv":
        with open(path, newline="") as f:
            r = csv.reader(f)
            assert next(r) == ["run", "key", "rank", "step", "value", "time"]
            rows = ((a, b, None if c == "" else int(c), int(d), float(e), float(t)) for a, b, c, d, e, t in r)
            return _group(rows, run_id)
    if fmt == "jsonl":
        with open(path) as f:
            return _group(
                ((d["run"], d["key"], d["rank"], d["step"], float(d["value"]), d["time"]) for d in map(json.loads, f)),
                run_id,
            )
    pq = pytest.importorskip("pyarrow.parquet")
    t = pq.read_table(path)
    assert t.column_names == ["run", "key", "rank", "step", "value", "time"]
    cols = [t.column(c).to_pylist() for c in t.column_names]
    return _group(zip(*cols, strict=True), run_id)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_reads_back_equal_to_fetch_values(store: Path, tmp_path: Path, fmt: str) -> None:
    """Main series and every rank's own series (a restart and re-logged steps resolved), all keys."""
    out = tmp_path / f"all.{fmt}"
    assert main(["--dir", str(store), "export", RUN, "--ranks", "all", "--format", fmt, "-o", str(out)]) == 0
    got = _read(out, fmt)
    keys = ("eval/acc", "train/loss")
    ranks: tuple[int | None, ...] = (None, *range(WORLD))
    want = _expected(store, keys, ranks)
    assert set(got) == set(want)
    for series, pts in want.items():
        assert len(pts) > 0
        assert [(s, v) for s, v, _ in got[series]] == pts, series
    assert sum(len(p) for p in got.values()) == sum(len(p) for p in want.values())
    assert not (tmp_path / f"all.{fmt}.partial").exists()


def test_time_is_the_time_of_the_chunk_holding_the_point(store: Path, tmp_path: Path) -> None:
    """Rank batches were stamped 1001, 1002, ... per 50 steps; rank 3's re-logged steps carry the later batch's time."""
    out = tmp_path / "r.csv"
    assert main(["--dir", str(store), "export", RUN, "--key", "train/*", "--ranks", "0,3", "-o", str(out)]) == 0
    got = _read(out, "csv")
    assert set(got) == {("train/loss", 0), ("train/loss", 3)}
    for step, _, t in got[("train/loss", 0)]:
        assert t == 1001.0 + step // BATCH
    relog_time = 1001.0 + N // BATCH
    for step, _, t in got[("train/loss", 3)]:
        assert t == (relog_time if step in RELOG else 1001.0 + step // BATCH), step


def test_selection_by_glob_and_ranks(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--key globs, --ranks main (the default) and main,1; stdout as a destination."""
    assert main(["--dir", str(store), "export", RUN, "--key", "eval/*", "--format", "jsonl", "-o", "-"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(d["key"], d["rank"]) for d in lines} == {("eval/acc", None)} and len(lines) == N // 10
    out = tmp_path / "x.jsonl"
    assert main(["--dir", str(store), "export", RUN, "--ranks", "main,1", "-o", str(out)]) == 0
    assert set(_read(out, "jsonl")) == {(k, r) for k in ("eval/acc", "train/loss") for r in (None, 1)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "nope/*", "-o", "x.csv"], "no series matching nope/*"),
        (["--ranks", "first", "-o", "x.csv"], "--ranks takes main, all"),
        (["-o", "x.txt"], "cannot tell the format"),
        (["--format", "parquet", "-o", "-"], "parquet cannot be written to stdout"),
    ],
)
def test_bad_arguments_are_clear_errors(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    assert main(["--dir", str(store), "export", RUN, *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))


def test_parquet_without_pyarrow_names_the_extra(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["--dir", str(store), "export", RUN, "-o", str(tmp_path / "x.parquet")]) == 2
    assert "pip install 'ddp-coordinator[export]'" in capsys.readouterr().err


def test_non_finite_values_survive_every_format(store_dir: Path, tmp_path: Path) -> None:
    """NaN and infinities: nan/inf in CSV, "NaN"/"Infinity"/"-Infinity" in JSON Lines, floats in Parquet."""
    with coordinator.init_run(project="p", name="nonfinite") as run:
        for s, v in enumerate([1.0, float("nan"), float("inf"), float("-inf"), 2.0]):
            run.log({"x": v}, step=s)
        run.wait(30)
        rid = run.id
    for fmt in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"n.{fmt}"
        assert main(["--dir", str(store_dir), "export", rid, "--ranks", "0", "-o", str(out)]) == 0
        [pts] = _read(out, fmt, rid).values()
        vals = [v for _, v, _ in pts]
        assert [repr(v) for v in vals] == ["1.0", "nan", "inf", "-inf", "2.0"], fmt


TEXT_RUN = "texts-1"


def _text_rows(path: Path, fmt: str) -> dict[tuple[str, int | None], list[tuple[int, Any, float]]]:
    """Every row of an export as (key, rank) -> [(step, value, time)], the value as written (text or number)."""
    out: dict[tuple[str, int | None], list[tuple[int, Any, float]]] = {}
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            r = csv.reader(f)
            assert next(r) == ["run", "key", "rank", "step", "value", "time"]
            for run, key, rank, step, value, t in r:
                assert run == TEXT_RUN
                out.setdefault((key, None if rank == "" else int(rank)), []).append((int(step), value, float(t)))
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for d in map(json.loads, f):
                assert d["run"] == TEXT_RUN and list(d) == ["run", "key", "rank", "step", "value", "time"]
                out.setdefault((d["key"], d["rank"]), []).append((d["step"], d["value"], d["time"]))
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        t = pq.read_table(path)
        assert t.column_names == ["run", "key", "rank", "step", "value", "time", "text"]
        assert str(t.schema.field("text").type) == "string" and str(t.schema.field("value").type) == "double"
        for run, key, rank, step, value, tm, text in zip(
            *(t.column(c).to_pylist() for c in t.column_names), strict=True
        ):
            assert run == TEXT_RUN
            assert (value is None) != (text is None), (key, step)  # a row is a number or a text, never both
            out.setdefault((key, rank), []).append((step, text if text is not None else value, tm))
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_text_series_read_back_equal_to_fetch_values(store_dir: Path, tmp_path: Path, fmt: str) -> None:
    """Each rank's texts (markup, commas and a restart that replaced rank 1's later texts) beside the numbers."""
    from tests.ui._stores import RESTART_TEXT_STEP, TEXT_KEY, write_run

    write_run(store_dir, TEXT_RUN, ranks=3, steps=100)
    out = tmp_path / f"t.{fmt}"
    assert main(["--dir", str(store_dir), "export", TEXT_RUN, "--ranks", "all", "-o", str(out)]) == 0
    got = _text_rows(out, fmt)
    ro = coordinator.init_run(with_id=TEXT_RUN, mode="read-only")
    try:
        want_texts = {r: ro[TEXT_KEY].fetch_values(rank=r) for r in range(3)}
        want_loss = ro["loss"].fetch_values(rank=2)
    finally:
        ro.stop()
    for r, pairs in want_texts.items():
        assert len(pairs) > 0
        assert [(s, x) for s, x, _ in got[(TEXT_KEY, r)]] == pairs, r
    assert (TEXT_KEY, None) not in got  # texts are never reduced: no main series
    # numbers still read back as numbers (NaN points included)
    loss = [(s, float(v)) for s, v, _ in got[("loss", 2)]]
    assert len(loss) == len(want_loss) and all(
        a[0] == b[0] and (a[1] == b[1] or (a[1] != a[1] and b[1] != b[1])) for a, b in zip(loss, want_loss, strict=True)
    )
    # a text's time is its row's: rank 1's texts from the restart on were stored later (t0 + 60, not t0 + 1)
    times = {s: t for s, _, t in got[(TEXT_KEY, 1)]}
    early, late = times[0], times[RESTART_TEXT_STEP]
    assert late - early == pytest.approx(59.0)
    assert all(t == (late if s >= RESTART_TEXT_STEP else early) for s, t in times.items())


def test_text_keys_are_selected_by_glob_and_main_means_every_rank(store_dir: Path, tmp_path: Path) -> None:
    from tests.ui._stores import TEXT_KEY, write_run

    write_run(store_dir, TEXT_RUN, ranks=3, steps=100)
    out = tmp_path / "s.jsonl"
    assert main(["--dir", str(store_dir), "export", TEXT_RUN, "--key", "samples/*", "-o", str(out)]) == 0
    assert set(_text_rows(out, "jsonl")) == {(TEXT_KEY, r) for r in range(3)}  # --ranks main: every rank's texts
    assert (
        main(["--dir", str(store_dir), "export", TEXT_RUN, "--key", "samples/*", "--ranks", "2", "-o", str(out)]) == 0
    )
    assert set(_text_rows(out, "jsonl")) == {(TEXT_KEY, 2)}
    assert (
        main(["--dir", str(store_dir), "export", TEXT_RUN, "--key", "loss", "--format", "parquet", "-o", str(out)]) == 0
    )
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(out).column_names == ["run", "key", "rank", "step", "value", "time"]  # no texts: six columns
