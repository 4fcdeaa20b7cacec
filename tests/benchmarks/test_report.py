"""The suite's targets table: a goal whose repeats' interval spans it is inconclusive, not met or missed by chance."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.common import INCONCLUSIVE
from benchmarks.cpu_per_point import summarise
from benchmarks.report import _hot_rings_text, notes, targets
from benchmarks.report_cpu import cpu_targets, gil_markdown


def _ddp(paired: float, lo: float, hi: float, slowdown: float = 0.007) -> dict[str, Any]:
    return {
        "ddp": {"rows": [{"variant": "coordinator", "slowdown": slowdown, "paired": paired, "paired_ci": [lo, hi]}]}
    }


def _status(rows: list[tuple[str, str, object]], prefix: str) -> object:
    [status] = [s for name, _, s in rows if name.startswith(prefix)]
    return status


@pytest.mark.parametrize(
    ("paired", "lo", "hi", "status"),
    [
        (0.014, -0.045, 0.048, INCONCLUSIVE),  # the full suite of 2026-12-02: +0.7% plain, the interval both sides
        (0.004, -0.010, 0.008, True),
        (0.054, 0.040, 0.093, False),
    ],
)
def test_the_ddp_slowdown_is_judged_on_its_paired_interval(paired: float, lo: float, hi: float, status: object) -> None:
    assert _status(targets(_ddp(paired, lo, hi)), "DDP step slowdown, coordinator") == status


def test_without_an_interval_the_plain_slowdown_decides() -> None:
    nan = float("nan")
    assert _status(targets(_ddp(0.03, nan, nan, slowdown=0.005)), "DDP step slowdown, coordinator") is True
    row = {"variant": "coordinator", "slowdown": 0.02}  # a result file from before the paired figure
    assert _status(targets({"ddp": {"rows": [row]}}), "DDP step slowdown, coordinator") is False


def test_the_hot_paths_socket_rows_are_judged_as_targets_of_their_own() -> None:
    """The unmarked loads are the library's default (rings); the ``, socket`` loads (``rings=False``) get rows
    of their own, labelled as the socket's, and neither set stands in for the other."""
    call = 'log({"loss": x}, step=s)'
    rows = [
        {"load": "realistic", "call": call, "p50": 0.8, "p99": 4.0},
        {"load": "realistic, socket", "call": call, "p50": 2.0, "p99": 9.0},
        {"load": "full, socket", "call": call, "p50": 1.1, "p99": 60.0},
    ]
    t = targets({"hot": {"rows": rows}})
    socket = "`log()` one scalar over the socket (`rings=False`)"
    assert _status(t, "`log()` one scalar, realistic load: p50") is True
    assert _status(t, "`log()` one scalar, realistic load: p99") is True
    assert _status(t, f"{socket}, realistic load: p50") is False
    assert _status(t, f"{socket}, realistic load: p99") is False
    assert _status(t, f"{socket}, full load: p99") is False
    assert not [name for name, _, _ in t if name.startswith("`log()` one scalar, full load")]  # not measured
    assert not [name for name, _, _ in t if "rings`" in name and "rings=False" not in name]  # no rings wording


def test_the_socket_variant_gets_its_own_slowdown_rows_and_its_own_comparisons_with_the_peers() -> None:
    def row(variant: str, slowdown: float) -> dict[str, Any]:
        return {"variant": variant, "slowdown": slowdown, "paired": slowdown, "paired_ci": [slowdown, slowdown]}

    rows = [row("coordinator", 0.005), row("coordinator-socket", 0.08), row("peer:trackio", 0.04)]
    rows.append(row("coordinator-socket+wake5ms", 0.03))
    rows.append(row("coordinator-rings", 0.001))  # a name no longer measured: no row of its own
    t = targets({"ddp": {"rows": rows}})
    socket = "coordinator over the socket (`rings=False`)"
    assert _status(t, "DDP step slowdown, coordinator 100") is True
    assert _status(t, f"DDP step slowdown, {socket} 100") is False
    assert _status(t, f"DDP step slowdown, {socket}, with a 5 ms waker") is False
    assert _status(t, "DDP slowdown of coordinator lower than peer:trackio") is True
    assert _status(t, f"DDP slowdown of {socket} lower than peer:trackio") is False
    assert not [name for name, _, _ in t if "with rings" in name]


def _block(cpu_per_s: float, points_per_s: float, wall: float = 10.0) -> dict[str, Any]:
    cpu = {"total": cpu_per_s * wall, "rank": 0.0, "aggregator": 0.0, "agent": 0.0, "other": 0.0}
    return {"cpu": cpu, "wall_s": wall, "points": points_per_s * wall, "late": 0.0}


def test_cpu_per_point_is_paired_per_repeat_and_judged_on_its_interval() -> None:
    # The unlogged loop drifts from 0.50 to 0.58 core-s/s between repeats; logging adds 0.018 to each
    # repeat's (0.9 µs a point at 20,000 points/s). Against the median of the unlogged blocks the
    # repeats read -1.1 to +2.9 µs; paired with the block beside them, 0.9 each.
    none = [_block(0.50 + 0.02 * i, 20_000) for i in range(5)]
    coord = [_block(0.518 + 0.02 * i, 20_000) for i in range(5)]
    s = summarise({"results": {"none": none, "coordinator": coord}})
    assert s["us_per_point_all"] == pytest.approx([-1.1, -0.1, 0.9, 1.9, 2.9])
    assert s["us_paired"] == pytest.approx(0.9)
    assert s["us_paired_ci"] == pytest.approx([0.9, 0.9])
    assert s["us_paired_all"] == pytest.approx([0.9] * 5)
    assert _status(cpu_targets({"cpu": s}), "CPU per logged point") is True


def test_cpu_per_point_from_noisy_repeats_is_inconclusive() -> None:
    cpu = {"us_per_point": -0.14, "us_paired": 0.26, "us_paired_ci": [-0.44, 1.65]}
    [(_, measured, status)] = [r for r in cpu_targets({"cpu": cpu}) if r[0].startswith("CPU per logged point")]
    assert status == INCONCLUSIVE
    assert measured == "-0.14 µs (paired: 0.26 µs [-0.44 µs, 1.65 µs])"
    assert _status(cpu_targets({"cpu": {"us_per_point": 2.5}}), "CPU per logged point") is False  # older files


def test_the_full_load_note_does_not_call_a_flush_one_gil_hold() -> None:
    """A flush at full load takes milliseconds of CPU in slices; the note must not say a call waits that long."""
    full = {"share": 0.034, "cpu_slice_max_us": 24391.4, "slice_max_us": 784869.2}
    [note] = notes({"hot": {"sender": {"full, socket": full}, "switchinterval_ms": 5.0}})
    assert "24,391 µs of CPU" in note
    assert "over the socket (`rings=False`)" in note  # the sender flushes on the socket's runs only
    assert "not for the flush" in note
    assert "wait up to that long" not in note


def test_the_sender_note_reads_a_result_file_from_before_rings_were_the_default() -> None:
    """Its sender figures sit under ``full``, the load that then ran over the socket."""
    full = {"share": 0.05, "cpu_slice_max_us": 1234.0, "slice_max_us": 5678.0}
    [note] = notes({"hot": {"sender": {"realistic": {}, "full": full}}})
    assert "1,234 µs of CPU" in note
    assert not notes({"hot": {"sender": {"realistic, socket": full}}})  # no full load measured: no note


def test_the_gil_target_is_given_for_the_default_and_for_the_socket_run_each_labelled() -> None:
    gil = {"coordinator": {"in_flush_max_us": 40.0}, "socket": {"in_flush_max_us": 250.0}, "disabled": {}}
    rows = cpu_targets({"hot": {"gil": gil}})
    assert _status(rows, "longest GIL wait behind a sender flush:") is True
    assert _status(rows, "longest GIL wait behind a sender flush, over the socket (`rings=False`):") is False
    # With rings the default's sender may not flush while the probe runs: that row is then left out.
    rows = cpu_targets({"hot": {"gil": {"coordinator": {"max_us": 900.0}, "socket": {"in_flush_max_us": 50.0}}}})
    assert [(name, status) for name, _, status in rows] == [
        ("longest GIL wait behind a sender flush, over the socket (`rings=False`): <= 100 µs", True)
    ]


def test_the_gil_probe_names_its_socket_run_only_where_there_is_one() -> None:
    g = {"wakeups": 10.0, "p50_us": 60.0, "p999_us": 900.0, "max_us": 1000.0}
    text = gil_markdown({"gil": {"coordinator": g, "socket": g, "disabled": g}})
    assert "the `socket` row sends every point over the socket (`rings=False`" in text
    assert "| socket | 10 |" in text
    old = gil_markdown({"gil": {"coordinator": g, "disabled": g}})  # before rings were the default
    assert "`socket` row" not in old and "rings" not in old


def test_section_one_says_what_its_unmarked_loads_ran_on() -> None:
    assert "at the library's default, rings (" in _hot_rings_text({"default_rings": True})
    off = _hot_rings_text({"default_rings": False})  # COORDINATOR_RINGS=0 in the suite's environment
    assert "`COORDINATOR_RINGS=0` turned to the socket in this run" in off and "default, rings" not in off
    assert "marked `, socket` send every point over the socket (`rings=False`" in off
    assert _hot_rings_text({}) == ""  # a result file from before rings were the default
