"""Text series and console capture from a real 2-rank torchrun job: every text once, in the journal and read back."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.journal.store import LocalStore, list_runs
from tests.integration._torchrun import torchrun

N = 40


def test_two_ranks_texts_arrive_exactly_once_and_their_prints_as_monitoring_stdout(
    store_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "read"
    res = torchrun("text_rank.py", str(N), str(out), nproc=2, store=store_dir).check()
    assert "print from rank 0 at 0" in res.stdout and "after close: real stdout only" in res.stdout  # still real
    expected = {r: [[s, f"rank {r} step {s}: ünïcode ✓"] for s in range(N)] for r in (0, 1)}
    read = {rank: json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)}
    (info,) = list_runs(store_dir)
    st = LocalStore(info.path / "run.db", readonly=True)
    try:
        # The store first: a rank reading short then says whether the text was lost or read too early.
        rows = [r for r in st.texts_after(0, 100_000) if r.key == "samples/generation"]
        assert len(rows) == 2 * N, read  # every text stored once: no duplicate, none lost
        assert sorted((r.rank, r.step, r.text) for r in rows) == sorted(
            (r, s, t) for r, v in expected.items() for s, t in v
        )
        for rank, got in read.items():  # what each rank read after its wait(), via the aggregator's QUERY path
            assert got["texts"] == {str(r): v for r, v in expected.items()}, (rank, read)
            assert got["last"] == f"rank {rank} step {N - 1}: ünïcode ✓"
        for rank in (0, 1):
            out_lines = [t for _, t in st.texts("monitoring/stdout", rank)]
            assert out_lines[:N] == [f"print from rank {rank} at {s}" for s in range(N)]
            assert "after close: real stdout only" not in out_lines  # restored at close
            err_lines = [t for _, t in st.texts("monitoring/stderr", rank)]
            assert any(f"logged by rank {rank}" in t for t in err_lines)
        report = st.run_info().report
        assert report is not None and report["state"] == "finished" and report["kind_conflicts"] == 0
        assert report["texts"] >= 2 * N + 2 * N
        for rank in ("0", "1"):
            assert report["per_rank"][rank]["console_dropped_lines"] == 0
            assert report["per_rank"][rank]["console_lines"] >= N
    finally:
        st.close()
