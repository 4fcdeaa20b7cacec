"""The system-metrics sampler (issue 13, item 1): per-rank process and node series in the run."""

from __future__ import annotations

import logging
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

import coordinator
from coordinator.client import system
from coordinator.client.system import SystemSampler, is_node_leader
from coordinator.journal.store import MAIN_RANK
from coordinator.transport.slices import SLICE_BUDGET_S
from tests.client.helpers import open_store

PROCESS = ("system/process/cpu_percent", "system/process/rss_mb", "system/process/threads")
NODE = (
    "system/node/cpu_percent",
    "system/node/mem_used_percent",
    "system/node/disk_read_mb_s",
    "system/node/disk_write_mb_s",
    "system/node/net_recv_mb_s",
    "system/node/net_sent_mb_s",
)


def _sampler(run: coordinator.Run) -> SystemSampler:
    s = run._life.sampler
    assert s is not None, "no sampler started"
    return s


def _until(cond: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _system_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("coordinator-system")]


def test_sampler_logs_sane_per_rank_process_and_node_series_without_a_main_series(store_dir: Path) -> None:
    settings = coordinator.Settings(system_metrics_interval_s=0.1)
    with coordinator.init_run(project="p", mode="async", settings=settings) as run:
        run.log({"train/loss": 1.0}, step=0)
        assert _system_threads() == ["coordinator-system-r0"]
        _until(lambda: _sampler(run).samples >= 3)
        run.wait(30)
        got = {k: run[k].fetch_values(rank=0) for k in PROCESS + NODE}
        mains = {k: run[k].fetch_values() for k in PROCESS + NODE}
        s = _sampler(run)
    assert _system_threads() == []
    assert s.errors == {} and s.cpu_s > 0 and s.last_sample_cpu_s > 0
    for k, pts in got.items():
        assert len(pts) >= 3, k
        assert [st for st, _ in pts] == list(range(len(pts))), f"{k}: steps are the sample index"
        assert all(v >= 0 for _, v in pts), (k, pts)
    assert mains == {k: [] for k in PROCESS + NODE}, "per_rank: no main series"
    assert all(5 < v < 1_000_000 for _, v in got["system/process/rss_mb"])
    assert all(v >= 3 for _, v in got["system/process/threads"])  # main, sender, sampler at least
    assert all(0 < v <= 100 for _, v in got["system/node/mem_used_percent"])
    assert all(0 <= v <= 100 for _, v in got["system/node/cpu_percent"])
    st = open_store(store_dir)
    try:
        summary = {x["key"]: x for x in st.series_summary()}
        for k in PROCESS + NODE:
            assert summary[k]["policy"] == "per_rank" and summary[k]["points"] == 0
            assert summary[k]["per_rank"][0] >= 3
            assert st.values(k, MAIN_RANK) == []
        # The sampler's steps are not training progress: rank health still says step 0.
        report = st.run_info().report
        assert report is not None and report["health"]["0"]["last_step"] == 0, report["health"]
        assert st.run_info().state == "finished"
    finally:
        st.close()


@pytest.mark.parametrize("how", ["settings", "env"])
def test_interval_zero_starts_no_thread(store_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("COORDINATOR_SYSTEM_METRICS_INTERVAL_S", "0")
        settings = None
    else:
        settings = coordinator.Settings(system_metrics_interval_s=0)
    with coordinator.init_run(project="p", mode="async", settings=settings) as run:
        assert run._life.sampler is None
        assert _system_threads() == []
        run.log({"a": 1.0}, step=0)


def test_the_default_is_ten_seconds_and_disabled_runs_sample_nothing(store_dir: Path) -> None:
    assert coordinator.Settings().system_metrics_interval_s == 10.0
    with coordinator.init_run(project="p", mode="disabled") as run:
        assert run._life.sampler is None and _system_threads() == []


def test_a_failing_probe_is_counted_warned_once_and_the_rest_continue(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, float]:
        raise RuntimeError("probe broke")

    monkeypatch.setattr(system, "_node_cpu_mem", broken)
    caplog.set_level(logging.WARNING, logger="coordinator")
    settings = coordinator.Settings(system_metrics_interval_s=0.05)
    with coordinator.init_run(project="p", mode="async", settings=settings) as run:
        _until(lambda: _sampler(run).samples >= 4)
        run.wait(30)
        rss = run["system/process/rss_mb"].fetch_values(rank=0)
        disk = run["system/node/disk_read_mb_s"].fetch_values(rank=0)
        cpu = run["system/node/cpu_percent"].fetch_values(rank=0)
        s = _sampler(run)
        run.log({"still/training": 1.0}, step=0)  # the training thread never saw the error
    assert s.errors["node"] >= 4 and set(s.errors) == {"node"}
    assert len(rss) >= 4 and len(disk) >= 4 and cpu == []
    firsts = [r for r in caplog.records if "probe 'node' failed" in r.getMessage()]
    assert len(firsts) == 1 and "RuntimeError: probe broke" in firsts[0].getMessage()
    assert any("system metrics:" in r.getMessage() and "errors (node:" in r.getMessage() for r in caplog.records)


def test_a_sample_offers_the_gil_between_its_probes() -> None:
    """Each probe is a stretch of its own: a probe past the slice budget is followed by a release of
    the GIL (``time.sleep(0)``: a thread waiting for it is signalled and may take it).

    Counted at the slicer, not from a waiting thread's wake-ups: on this 2-core VM a thread that
    sleeps 100 µs wakes 0.3-3 ms late, and counting its ticks during the sample (6-7 with the
    releases, 1-2 without, when written) read 3 in 2 runs of 5 with the releases in place.
    """
    slow_s = 0.002

    def busy() -> dict[str, float]:
        t_end = time.perf_counter() + slow_s  # pure Python: holds the GIL the whole time
        while time.perf_counter() < t_end:
            pass
        return {"x": 1.0}

    sampler = SystemSampler(lambda *a, **k: None, rank=0, interval_s=1.0, node=False)
    assert slow_s > SLICE_BUDGET_S
    values = sampler.sample_values([(f"p{i}", busy) for i in range(8)])
    assert values == {"x": 1.0}
    assert sampler._slicer.yields == 7  # after each probe but the last, each past the budget


def test_node_series_only_on_the_nodes_local_rank_zero() -> None:
    assert is_node_leader(0, {})
    assert not is_node_leader(3, {})
    assert is_node_leader(5, {"LOCAL_RANK": "0"})
    assert not is_node_leader(0, {"LOCAL_RANK": "1"})
    assert is_node_leader(9, {"OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert not is_node_leader(0, {"SLURM_LOCALID": "2"})
    assert is_node_leader(0, {"LOCAL_RANK": "x"})  # malformed: falls back to the global rank


def test_process_gpu_memory_from_an_imported_torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(system.sys.modules, "torch", raising=False)
    assert system._process_gpu() == {}  # torch not imported: never imported by us
    assert "torch" not in system.sys.modules
    mb = 2**20
    keys = ("allocated_bytes.all.current", "reserved_bytes.all.current", "allocated_bytes.all.peak")
    stats = {
        0: dict(zip(keys, (3 * mb, 8 * mb, 5 * mb), strict=True)),
        1: dict(zip(keys, (1 * mb, 2 * mb, 1 * mb), strict=True)),
    }
    initialized = [False]
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: initialized[0],
        device_count=lambda: 2,
        memory_stats=lambda d: stats[d],
    )
    monkeypatch.setitem(system.sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    zero = system._process_gpu()
    series = ("gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_max_allocated_mb")
    assert zero == {f"system/process/{k}": 0.0 for k in series}, "CUDA not initialised: 0, and no context created"
    initialized[0] = True
    assert system._process_gpu() == {
        "system/process/gpu_mem_allocated_mb": 4.0,
        "system/process/gpu_mem_reserved_mb": 10.0,
        "system/process/gpu_max_allocated_mb": 6.0,
    }
    cuda.is_available = lambda: False
    assert system._process_gpu() == {}


class _NotSupported(Exception):
    pass


def _fake_nvml(init_error: Exception | None = None) -> types.SimpleNamespace:
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error is not None:
            raise init_error

    def power(h: int) -> int:
        raise _NotSupported("power")

    return types.SimpleNamespace(
        calls=calls,
        NVMLError_NotSupported=_NotSupported,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40 + h),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=(h + 1) * 2**30),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetTemperature=lambda h, kind: 60 + h,
    )


def test_node_gpu_series_from_nvml_with_an_unsupported_metric_left_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nv = _fake_nvml()
    monkeypatch.setitem(system.sys.modules, "pynvml", nv)
    caplog.set_level(logging.DEBUG, logger="coordinator")
    probes, nvml = system.open_probes(node=True)
    assert nvml is not None and "node_gpu" in [n for n, _ in probes]
    sampler = SystemSampler(lambda *a, **k: None, rank=0, interval_s=1.0, node=True)
    for _ in range(2):
        values = sampler.sample_values(probes)
    assert {k: v for k, v in values.items() if "/gpu" in k} == {
        "system/node/gpu0/util_percent": 40.0,
        "system/node/gpu0/mem_used_mb": 1024.0,
        "system/node/gpu0/temp_c": 60.0,
        "system/node/gpu1/util_percent": 41.0,
        "system/node/gpu1/mem_used_mb": 2048.0,
        "system/node/gpu1/temp_c": 61.0,
    }
    assert sampler.errors == {}
    assert sum("does not report power_w" in r.getMessage() for r in caplog.records) == 2  # once per GPU
    nvml.close()
    assert nv.calls == ["init", "shutdown"]


def test_without_nvml_there_are_no_gpu_series_and_one_debug_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="coordinator")
    monkeypatch.setitem(system.sys.modules, "pynvml", _fake_nvml(init_error=OSError("no driver")))
    probes, nvml = system.open_probes(node=True)
    assert nvml is None and [n for n, _ in probes] == ["process", "process_gpu", "node", "node_disk", "node_net"]
    monkeypatch.setitem(system.sys.modules, "pynvml", None)  # import fails
    assert system.open_probes(node=True)[1] is None
    lines = [r.getMessage() for r in caplog.records if "no GPU series" in r.getMessage()]
    assert len(lines) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records if "no GPU" in r.getMessage())
    assert "no driver" in lines[0] and "pynvml not importable" in lines[1]
    probes, _ = system.open_probes(node=False)
    assert [n for n, _ in probes] == ["process", "process_gpu"]


def test_a_probe_that_cannot_open_is_left_out_and_the_others_sample(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process() -> None:
        raise PermissionError("no /proc for you")

    monkeypatch.setattr(system, "_Process", no_process)
    settings = coordinator.Settings(system_metrics_interval_s=0.05)
    with coordinator.init_run(project="p", mode="async", settings=settings) as run:
        _until(lambda: _sampler(run).samples >= 2)
        run.wait(30)
        mem = run["system/node/mem_used_percent"].fetch_values(rank=0)
        rss = run["system/process/rss_mb"].fetch_values(rank=0)
        s = _sampler(run)
    assert s.errors == {"process": 1} and len(mem) >= 2 and rss == []


def test_an_unexpected_error_ends_the_sampler_not_the_run(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object) -> None:
        raise MemoryError("the sampler cannot start")

    monkeypatch.setattr(system, "open_probes", broken)
    settings = coordinator.Settings(system_metrics_interval_s=0.05)
    with coordinator.init_run(project="p", mode="async", settings=settings) as run:
        _until(lambda: not _sampler(run).is_alive())
        run.log({"a": 1.0}, step=0)
        s = _sampler(run)
    assert s.errors == {"sampler": 1}
    st = open_store(store_dir)
    try:
        assert st.run_info().state == "finished"
    finally:
        st.close()
