"""``coordinator plot``: the PNG's pixels show the curve, the rank band or rank lines, and the restart marker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coordinator.cli.main import main
from coordinator.cli.plot import EVENT_MARKS
from tests.cli._stores import RUN, write_run

np = pytest.importorskip("numpy")
mimage = pytest.importorskip("matplotlib.image")

C0 = (0x1F, 0x77, 0xB4)
"""matplotlib's first cycle colour: the first run's main line."""
BAND0 = tuple(round(255 * 0.8 + c * 0.2) for c in C0)
"""C0 at alpha 0.2 over white: the first run's rank band."""
C1 = (0xFF, 0x7F, 0x0E)


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _mask(png: Path, rgb: tuple[int, ...], tol: int = 6) -> object:
    """Pixels of colour ``rgb`` (within ``tol`` per channel)."""
    img = mimage.imread(png)[..., :3]
    px = np.rint(img * 255).astype(int)
    return np.all(np.abs(px - np.array(rgb)) <= tol, axis=-1)


def _columns(mask: object) -> int:
    """How many pixel columns hold at least one pixel of the mask."""
    return int(np.count_nonzero(np.any(mask, axis=0)))


@pytest.fixture
def store(store_dir: Path) -> Path:
    write_run(store_dir)
    return store_dir


def test_short_form_draws_the_curve_the_band_and_the_restart(store: Path, tmp_path: Path) -> None:
    """``plot RUN KEY -o``: the main line across the axes, the band under it, one restart marker."""
    png = tmp_path / "loss.png"
    assert main(["--dir", str(store), "plot", RUN, "train/loss", "-o", str(png)]) == 0
    width = mimage.imread(png).shape[1]
    line, band = _mask(png, C0), _mask(png, BAND0, tol=3)
    assert _columns(line) > 0.6 * width, "the main series does not run across the axes"
    assert np.count_nonzero(line) > 2000
    assert _columns(band) > 0.6 * width and np.count_nonzero(band) > 50_000, "no rank band"
    marker = _mask(png, _hex(EVENT_MARKS["rank_restarted"][1]), tol=10)
    assert np.count_nonzero(marker) > 100
    tallest = int(np.max(np.count_nonzero(marker, axis=0)))
    assert tallest > 0.3 * marker.shape[0], "the restart marker is not a vertical line"


def test_without_band_or_events_only_the_line_remains(store: Path, tmp_path: Path) -> None:
    png = tmp_path / "bare.png"
    assert (
        main(["--dir", str(store), "plot", RUN, "--key", "train/loss", "--no-band", "--no-events", "-o", str(png)]) == 0
    )
    assert np.count_nonzero(_mask(png, BAND0, tol=3)) < 2000  # at most the legend's sample, none here
    assert np.count_nonzero(_mask(png, _hex(EVENT_MARKS["rank_restarted"][1]), tol=10)) == 0
    assert _columns(_mask(png, C0)) > 0.6 * mimage.imread(png).shape[1]


def test_ranks_draws_a_line_per_rank_and_panels_per_key(store: Path, tmp_path: Path) -> None:
    """--ranks: each rank's own line in its own colour; two keys: two panels; smoothing keeps the raw line faint."""
    png = tmp_path / "ranks.png"
    args = ["plot", RUN, "--key", "train/loss", "--key", "eval/acc", "--ranks", "--smooth", "0.6", "-o", str(png)]
    assert main(["--dir", str(store), *args]) == 0
    img = mimage.imread(png)
    width = img.shape[1]
    for c in ("#ff7f0e", "#2ca02c", "#9467bd"):  # ranks 0, 1, 3 (C1, C2, C4), drawn at alpha 0.6 over white
        blended = tuple(round(0.6 * v + 0.4 * 255) for v in _hex(c))
        assert _columns(_mask(png, blended, tol=4)) > 0.4 * width, c
    rows = np.flatnonzero(np.any(_mask(png, C0), axis=1))
    assert rows.min() < img.shape[0] / 2 < rows.max(), "the main line is not on both panels"


def test_several_runs_share_one_axes(store: Path, tmp_path: Path) -> None:
    write_run(store, "other-run-9f9f9f", n=200, restart=False, shift=5.0)
    png = tmp_path / "two.png"
    assert main(["--dir", str(store), "plot", RUN, "other-run-9f9f9f", "--key", "train/loss", "-o", str(png)]) == 0
    width = mimage.imread(png).shape[1]
    assert _columns(_mask(png, C0)) > 0.6 * width
    assert 0.2 * width < _columns(_mask(png, C1)) < 0.6 * width  # the second run has half the steps


def test_a_long_series_is_drawn_from_bounded_columns(store_dir: Path, tmp_path: Path) -> None:
    """200,000 steps: read page by page and reduced to min/max per pixel column; the line still spans the axes."""
    write_run(store_dir, "long-run-000001", n=200_000, restart=False, batch=10_000)
    png = tmp_path / "long.png"
    assert main(["--dir", str(store_dir), "plot", "long-run", "train/loss", "--width", "6", "-o", str(png)]) == 0
    assert _columns(_mask(png, C0)) > 0.6 * mimage.imread(png).shape[1]


def test_errors_are_clear(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "x.png"
    assert main(["--dir", str(store), "plot", RUN, "no/such", "-o", str(png)]) == 2
    assert "none of the runs has a point of 'no/such'" in capsys.readouterr().err
    assert main(["--dir", str(store), "plot", RUN, "train/loss", "--smooth", "1.5", "-o", str(png)]) == 2
    assert "--smooth takes a weight in [0, 1)" in capsys.readouterr().err
    assert main(["--dir", str(store), "plot", "train/loss", "-o", str(png)]) == 2
    assert "plot needs a run and a key" in capsys.readouterr().err
    assert not png.exists()


def test_without_matplotlib_names_the_extra(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["--dir", str(store), "plot", RUN, "train/loss", "-o", str(tmp_path / "x.png")]) == 2
    assert "pip install 'ddp-coordinator[plot]'" in capsys.readouterr().err


def test_smoothing_is_a_debiased_ema() -> None:
    from coordinator.cli.plot import ema

    with pytest.raises(ValueError):
        ema(np.zeros(3), 1.0)
    assert ema(np.array([2.0, 2.0, 2.0]), 0.9).tolist() == pytest.approx([2.0, 2.0, 2.0])  # debiased
    assert ema(np.array([1.0, 3.0]), 0.5).tolist() == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
