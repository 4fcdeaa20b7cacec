"""``Handle.fetch_values(..., as_frame=True)``: a pandas DataFrame equal to ``fetch_values``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import coordinator
from tests.untyped import bad

pd = pytest.importorskip("pandas")


def test_as_frame_equals_fetch_values_for_main_and_rank_series(store_dir: Path) -> None:
    with coordinator.init_run() as run:
        for s in range(0, 3000, 3):
            run.log({"loss": 1.0 / (1 + s), "acc": s / 3000}, step=s)
        run.wait(60)
        for key in ("loss", "acc"):
            for rank in (None, 0):
                want = run[key].fetch_values(rank=rank)
                df = run[key].fetch_values(rank=rank, as_frame=True)
                assert isinstance(df, pd.DataFrame)
                assert list(df.columns) == ["step", "value"]
                assert str(df["step"].dtype) == "int64" and str(df["value"].dtype) == "float64"
                assert list(zip(df["step"].tolist(), df["value"].tolist(), strict=True)) == want
                assert len(want) == 1000
        empty = run["nothing"].fetch_values(as_frame=True)
        assert list(empty.columns) == ["step", "value"] and len(empty) == 0


def test_as_frame_arguments_are_checked(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with coordinator.init_run() as run:
        run.log({"a": 1.0}, step=0)
        run.wait(30)
        with pytest.raises(TypeError, match="as_frame must be a bool"):
            run["a"].fetch_values(as_frame=bad("yes"))
        with pytest.raises(ValueError, match="exclude each other"):
            run["a"].fetch_values(as_numpy=True, as_frame=bad(True))
        monkeypatch.setitem(sys.modules, "pandas", None)
        with pytest.raises(ImportError, match=r"pip install 'ddp-coordinator\[export\]'"):
            run["a"].fetch_values(as_frame=True)
