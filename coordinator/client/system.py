"""System metrics of a rank and of its node, sampled by a thread off the training thread.

Every ``Settings.system_metrics_interval_s`` seconds (10 s by default; 0 starts no thread) the
sampler ``coordinator-system-r<rank>`` logs one sample through the run's ordinary ``log()`` with
policy ``per_rank`` (each rank's own series, no main series; rank r's are read with
``fetch_values(rank=r)`` and reach trackers as ``ranks/<r>/system/...``):

* every rank, its process (psutil): ``system/process/cpu_percent`` (of one core, so up to
  100 x cores), ``rss_mb``, ``threads``; when the program imported torch itself and CUDA is
  available, the caching allocator's ``gpu_mem_allocated_mb``, ``gpu_mem_reserved_mb`` and
  ``gpu_max_allocated_mb`` summed over the visible devices (torch is never imported here, and a
  process that has not initialised CUDA reads 0 without creating a context);
* the node's local rank 0 only (``LOCAL_RANK`` or the MPI/SLURM equivalent, else global rank 0):
  ``system/node/cpu_percent``, ``mem_used_percent``, ``disk_read_mb_s``, ``disk_write_mb_s``,
  ``net_recv_mb_s``, ``net_sent_mb_s`` (rates between two samples; loopback excluded), and with
  ``pynvml`` importable (the ``[gpu]`` extra: nvidia-ml-py) ``system/node/gpu<i>/util_percent``,
  ``mem_used_mb``, ``power_w``, ``temp_c``. MB are 2**20 bytes.

Steps: the automatic numbering of ``log()`` (each key: the rank's previous step + 1), so the
first sample is step 0, the next 1, ... on every rank, and a resumed rank continues after its
last stored step instead of rewinding the earlier incarnation's samples. The first sample is
taken one interval after the start (CPU percentages and rates need a previous reading).

The sampler never raises into training: a failing probe is counted, warned about once (per
probe), and the other probes and later samples go on; a metric the GPU does not support is
dropped with one debug line. Probes are opened on the sampler thread (``init_run`` pays only the
thread start), and the thread holds the run weakly.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from coordinator.errors import ClosedError
from coordinator.transport.slices import GilSlicer

__all__ = ["JOIN_TIMEOUT_S", "SystemSampler", "is_node_leader", "open_probes", "start_sampler"]

_log = logging.getLogger("coordinator")

JOIN_TIMEOUT_S = 5.0
"""``stop()`` waits at most this long for the sampler thread (a sample takes milliseconds)."""

_MB = float(2**20)
_LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")

Values = dict[str, float]
Probe = tuple[str, Callable[[], Values]]
"""A named reading of some series; it may raise (counted by the sampler)."""


def is_node_leader(rank: int, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this rank samples its node: local rank 0 by the launcher's variables, else global rank 0."""
    env = os.environ if environ is None else environ
    for var in _LOCAL_RANK_VARS:
        v = env.get(var, "").strip()
        if v:
            try:
                return int(v) == 0
            except ValueError:
                _log.debug("system metrics: %s=%r is not an integer; ignored", var, v)
    return rank == 0


class _Process:
    """This process: CPU percent, resident memory, threads."""

    def __init__(self) -> None:
        self._p = psutil.Process()
        self._p.cpu_percent(None)  # the baseline of the first reading

    def __call__(self) -> Values:
        p = self._p
        with p.oneshot():
            return {
                "system/process/cpu_percent": float(p.cpu_percent(None)),
                "system/process/rss_mb": p.memory_info().rss / _MB,
                "system/process/threads": float(p.num_threads()),
            }


def _process_gpu() -> Values:
    """The torch caching allocator's memory, summed over visible devices; nothing without torch/CUDA."""
    torch: Any = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_available():
        return {}
    alloc = reserved = peak = 0
    if cuda.is_initialized():  # else the process holds no GPU memory: 0, and no context is created
        for d in range(cuda.device_count()):
            st = cuda.memory_stats(d)
            alloc += st.get("allocated_bytes.all.current", 0)
            reserved += st.get("reserved_bytes.all.current", 0)
            peak += st.get("allocated_bytes.all.peak", 0)
    return {
        "system/process/gpu_mem_allocated_mb": alloc / _MB,
        "system/process/gpu_mem_reserved_mb": reserved / _MB,
        "system/process/gpu_max_allocated_mb": peak / _MB,
    }


def _node_cpu_mem() -> Values:
    return {
        "system/node/cpu_percent": float(psutil.cpu_percent(None)),
        "system/node/mem_used_percent": float(psutil.virtual_memory().percent),
    }


class _Rates:
    """MB/s of two byte counters between two readings (the first reading is the baseline)."""

    def __init__(self, read: Callable[[], tuple[int, int] | None], names: tuple[str, str]) -> None:
        self._read = read
        self._names = names
        self._prev = read()
        self._t = time.monotonic()

    def __call__(self) -> Values:
        now, t = self._read(), time.monotonic()
        prev, dt = self._prev, t - self._t
        self._prev, self._t = now, t
        if now is None or prev is None or dt <= 0:
            return {}
        # A counter that went backwards (a device removed, a wrap) gives 0, not a negative rate.
        return {n: max(0, a - b) / _MB / dt for n, a, b in zip(self._names, now, prev, strict=True)}


def _disk_bytes() -> tuple[int, int] | None:
    c = psutil.disk_io_counters()
    return None if c is None else (c.read_bytes, c.write_bytes)


def _net_bytes() -> tuple[int, int] | None:
    nics = psutil.net_io_counters(pernic=True)
    up = [c for name, c in nics.items() if name != "lo" and not name.startswith("lo:")]
    return sum(c.bytes_recv for c in up), sum(c.bytes_sent for c in up)


class _Nvml:
    """The node's GPUs through NVML; :meth:`open` gives ``None`` (one debug line) without it."""

    _METRICS = ("util_percent", "mem_used_mb", "power_w", "temp_c")

    def __init__(self, nv: Any, handles: list[Any]) -> None:
        self._nv = nv
        self._handles = handles
        self._unsupported: set[tuple[int, str]] = set()

    @classmethod
    def open(cls) -> _Nvml | None:
        try:
            nv: Any = importlib.import_module("pynvml")
        except ImportError as e:
            _log.debug("system metrics: no GPU series (pynvml not importable: %s; extra [gpu])", e)
            return None
        try:
            nv.nvmlInit()
        except Exception as e:  # no driver, no GPU: not an error of the run
            _log.debug("system metrics: no GPU series (NVML init failed: %s)", e)
            return None
        try:
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        except Exception as e:  # NVML's errors are one family of its own
            _log.debug("system metrics: no GPU series (NVML devices: %s)", e)
            nv.nvmlShutdown()
            return None
        return cls(nv, handles)

    def _read(self, h: Any, metric: str) -> float:
        nv = self._nv
        if metric == "util_percent":
            return float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
        if metric == "mem_used_mb":
            return float(nv.nvmlDeviceGetMemoryInfo(h).used) / _MB
        if metric == "power_w":
            return float(nv.nvmlDeviceGetPowerUsage(h)) / 1000.0  # mW
        return float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))

    def __call__(self) -> Values:
        out: Values = {}
        not_supported = getattr(self._nv, "NVMLError_NotSupported", ())
        for i, h in enumerate(self._handles):
            for m in self._METRICS:
                if (i, m) in self._unsupported:
                    continue
                try:
                    out[f"system/node/gpu{i}/{m}"] = self._read(h, m)
                except not_supported:
                    self._unsupported.add((i, m))
                    _log.debug("system metrics: GPU %d does not report %s; series left out", i, m)
        return out

    def close(self) -> None:
        try:
            self._nv.nvmlShutdown()
        except Exception as e:  # at close, only worth a debug line
            _log.debug("system metrics: NVML shutdown: %s", e)


def _node_cpu_baseline() -> Callable[[], Values]:
    psutil.cpu_percent(None)  # the baseline of the first reading
    return _node_cpu_mem


def open_probes(
    node: bool, on_error: Callable[[str, Exception], None] | None = None
) -> tuple[list[Probe], _Nvml | None]:
    """This rank's probes (the node's too when ``node``), each primed; and the NVML handle to close.

    A probe that cannot be opened is left out and given to ``on_error`` (default: raised).
    """
    openers: list[tuple[str, Callable[[], Callable[[], Values]]]] = [
        ("process", _Process),
        ("process_gpu", lambda: _process_gpu),
    ]
    if node:
        openers += [
            ("node", _node_cpu_baseline),
            ("node_disk", lambda: _Rates(_disk_bytes, ("system/node/disk_read_mb_s", "system/node/disk_write_mb_s"))),
            ("node_net", lambda: _Rates(_net_bytes, ("system/node/net_recv_mb_s", "system/node/net_sent_mb_s"))),
        ]
    probes: list[Probe] = []
    for name, opener in openers:
        try:
            probes.append((name, opener()))
        except Exception as e:
            if on_error is None:
                raise
            on_error(name, e)
    nvml = _Nvml.open() if node else None
    if nvml is not None:
        probes.append(("node_gpu", nvml))
    return probes, nvml


class SystemSampler(threading.Thread):
    """The thread that samples and logs every ``interval_s``; see the module doc.

    Args:
        log: the run's ``log`` (a bound method is held weakly: a collected run ends the sampler).
        rank: the rank (thread name, messages).
        interval_s: seconds between samples (> 0).
        node: also sample the node (this rank is its node's local rank 0).
    """

    def __init__(self, log: Callable[..., None], *, rank: int, interval_s: float, node: bool) -> None:
        super().__init__(name=f"coordinator-system-r{rank}", daemon=True)
        self._log_ref: Callable[[], Callable[..., None] | None] = (
            weakref.WeakMethod(log) if hasattr(log, "__self__") else lambda: log
        )
        self.rank = rank
        self.interval_s = interval_s
        self.node = node
        self._stop_event = threading.Event()
        self.samples = 0
        """Samples logged."""
        self.errors: dict[str, int] = {}
        """Errors per probe (``log`` for the log call itself); each probe's first is warned about."""
        self.cpu_s = 0.0
        """CPU seconds this thread used (opening the probes included)."""
        self.open_cpu_s = 0.0
        """CPU seconds of opening the probes (once, on the thread)."""
        self.last_sample_cpu_s = 0.0
        """CPU seconds of the last sample (reading and logging)."""
        self._slicer = GilSlicer()

    def run(self) -> None:
        t_cpu = time.thread_time()
        try:
            self._loop(t_cpu)
        except Exception as e:  # never into training (a thread's uncaught error fails the run)
            self._error("sampler", e)
        finally:
            self.cpu_s = time.thread_time() - t_cpu

    def _loop(self, t_cpu: float) -> None:
        nvml: _Nvml | None = None
        try:
            probes, nvml = open_probes(self.node, self._error)
            self.cpu_s = self.open_cpu_s = time.thread_time() - t_cpu
            nxt = time.monotonic() + self.interval_s
            while not self._stop_event.wait(max(0.0, nxt - time.monotonic())):
                t0 = time.thread_time()
                if not self._sample(probes):
                    return
                self.last_sample_cpu_s = time.thread_time() - t0
                self.cpu_s = time.thread_time() - t_cpu
                nxt += self.interval_s
                if nxt < time.monotonic():  # fell behind (a suspended process): no burst of samples
                    nxt = time.monotonic() + self.interval_s
        finally:
            if nvml is not None:
                nvml.close()

    def sample_values(self, probes: list[Probe]) -> Values:
        """One reading of every probe; a failing probe is counted and left out.

        The GIL is offered to the training thread between probes, and before the sample's
        ``log()`` (each is up to a few hundred µs of Python and ``/proc`` parsing on a cold CPU):
        a sample is not one long stretch.
        """
        values: Values = {}
        slicer = self._slicer
        slicer.start()
        for name, probe in probes:
            slicer.pause()
            try:
                values.update(probe())
            except Exception as e:  # never into training: counted, warned, the rest go on
                self._error(name, e)
        return values

    def _sample(self, probes: list[Probe]) -> bool:
        """Read and log one sample; False when the run is gone or closed (the thread ends)."""
        values = self.sample_values(probes)
        log = self._log_ref()
        if log is None:
            return False
        if not values:
            return True
        self._slicer.pause()  # the probes, then the log() (its first one declares the keys' policy)
        try:
            log(values, policy="per_rank")
        except ClosedError:
            return False
        except Exception as e:  # never into training: counted, warned
            self._error("log", e)
            return True
        self.samples += 1
        return True

    def _error(self, probe: str, e: Exception) -> None:
        n = self.errors[probe] = self.errors.get(probe, 0) + 1
        if n == 1:
            _log.warning(
                "rank %d: system metrics: probe %r failed (%s: %s); counted, the sampler continues",
                self.rank,
                probe,
                type(e).__name__,
                e,
            )

    def close(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop and join (bounded); reports the errors counted, if any."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(max(0.0, timeout))
            if self.is_alive():
                _log.warning("rank %d: system metrics thread did not exit within %.1f s", self.rank, timeout)
        if self.errors:
            total = sum(self.errors.values())
            per = ", ".join(f"{k}: {n}" for k, n in sorted(self.errors.items()))
            _log.warning("rank %d: system metrics: %d errors (%s)", self.rank, total, per)


def start_sampler(log: Callable[..., None], *, rank: int, interval_s: float) -> SystemSampler | None:
    """Start this rank's sampler; ``None`` when ``interval_s`` is 0 (off)."""
    if interval_s <= 0:
        return None
    s = SystemSampler(log, rank=rank, interval_s=interval_s, node=is_node_leader(rank))
    s.start()
    return s
