"""Tensors logged as metrics: kept as snapshots on the training thread, read on the sender thread (issue 11, item 10).

CPU tensors take the same path as CUDA ones (CI has no GPU); the ``gpu`` test proves that
``log()`` of a CUDA tensor does not wait for the GPU.
"""

from __future__ import annotations

import itertools
import threading
import time
from array import array
from pathlib import Path

import pytest

import coordinator
from coordinator.client.devices import DeviceScalars, is_tensor
from coordinator.client.steps import StepNumbering
from coordinator.transport.buffer import Buffer
from coordinator.transport.copies import Copies
from tests.client.helpers import open_store

torch = pytest.importorskip("torch")


def test_cpu_tensors_are_stored_as_logged_even_if_changed_in_place_afterwards(store_dir: Path) -> None:
    loss = torch.tensor(1.5)
    with coordinator.init_run() as run:
        run.log({"loss": loss, "lr": 0.1}, step=0)
        loss.add_(10.0)  # an in-place update after log() must not change the logged value
        run.log({"loss": loss}, step=1)
        run["acc"].append(torch.tensor([0.25], dtype=torch.float64), step=0)
        run["acc"].append(torch.tensor(True), step=1)
        run.log({"big": torch.tensor(3, dtype=torch.int64)})
        run.wait(30)
        assert run["loss"].fetch_values(rank=0) == [(0, 1.5), (1, 11.5)]
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == [(0, 1.5), (1, 11.5)]
        assert s.values("lr", 0) == [(0, 0.1)]
        assert s.values("acc", 0) == [(0, 0.25), (1, 1.0)]
        assert s.values("big", 0) == [(0, 3.0)]
    finally:
        s.close()


def test_a_rejected_call_with_tensors_keeps_nothing(store_dir: Path) -> None:
    with coordinator.init_run() as run:
        with pytest.raises(TypeError, match="2 elements"):
            run.log({"a": torch.tensor(1.0), "b": torch.tensor([1.0, 2.0])}, step=0)
        with pytest.raises(TypeError, match="numeric"):
            run.log({"a": torch.tensor(1.0), "c": "text"}, step=0)
        with pytest.raises(TypeError, match="real"):
            run["a"].append(torch.tensor(1 + 2j), step=0)
        run.log({"a": torch.tensor(2.0)}, step=1)
        run.wait(30)
        assert run["a"].fetch_values(rank=0) == [(1, 2.0)]
        assert run.stats()["accepted"] == 1


def test_many_tensors_across_cuts_and_threads_are_all_resolved(store_dir: Path) -> None:
    with coordinator.init_run() as run:

        def work(i: int) -> None:
            for s in range(3000):
                run.log({f"t/{i}": torch.tensor(float(s)), "f": float(s)}, step=s)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        run.wait(60)
        for i in range(3):
            assert run[f"t/{i}"].fetch_values(rank=0) == [(s, float(s)) for s in range(3000)]


def test_float_values_never_reach_the_tensor_check() -> None:
    """The hot path tests ``v.__class__ is not float`` first; other plain values are classified once per class."""
    assert not is_tensor(1) and not is_tensor(True) and is_tensor(torch.tensor(1.0))
    assert is_tensor(torch.nn.Parameter(torch.tensor(1.0)))


def test_deferred_values_are_bounded_without_a_cut() -> None:
    """Nothing cut for a long time (aggregator frozen, policy block): the oldest deferred values are read in place."""
    from array import array

    import coordinator.client.devices as dev_mod

    lock = threading.Lock()
    errors: list[Exception] = []
    d = DeviceScalars(lock, errors.append)
    cols = [(array("q"), array("d")) for _ in range(4)]
    with lock:
        for i in range(dev_mod._MAX_PENDING + 10):
            st, vals = cols[i % 4]
            d.defer("k", torch.tensor(float(i)), st, vals)
            st.append(i)
    assert d._count <= dev_mod._MAX_PENDING
    for st, _ in cols:
        d.resolve(st)
    assert d._count == 0 and not errors
    assert all(v == float(s) for st, vals in cols for s, v in zip(st, vals, strict=True))


class _QueuedCopy:
    """A CUDA event for a device-to-host copy still queued behind the GPU's work, until ``land()``.

    This VM has no GPU: the event's three calls are what ``DeviceScalars`` uses of a real one.
    """

    def __init__(self) -> None:
        self.done = False

    def land(self) -> None:
        self.done = True

    def record(self) -> None:
        pass

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        assert self.done, "the test reads only a landed copy"


def _copies_of_tensors(tmp_path: Path) -> tuple[Buffer, DeviceScalars, StepNumbering, Copies]:
    """A buffer, its device scalars, the run's numbering over them, and copies asking that numbering."""
    b = Buffer(1000)
    d = DeviceScalars(b.lock, b.fail)
    numbering = StepNumbering(0, d.resolve, d.deferred)
    b.wake_at(1000, lambda: None)
    copies = Copies(
        tmp_path, b, rank=0, window_s=0.05, deferred=numbering.deferred, clock=itertools.count(1.0).__next__
    )
    return b, d, numbering, copies


def test_a_cpu_tensor_is_read_by_the_copy_that_takes_it_no_cut_asked(tmp_path: Path) -> None:
    """With ``kill_window_s`` the training thread copies the uncut points; a CPU tensor's snapshot is read then
    (~1 µs), so the copy takes its value and the sender is not asked for an early cut."""
    b, d, numbering, copies = _copies_of_tensors(tmp_path)
    steps, values = b.cols["t"] = (array("q"), array("d"))
    with b.lock:
        for s in range(3):
            d.defer("t", torch.tensor(2.5 + s), steps, values)
            steps.append(s)
            b.pending += 1
        copies.check()
        assert not b.flush_requested and copies.copies == 1 and list(values) == [2.5, 3.5, 4.5]
        assert not numbering.deferred()
    numbering("t", steps)  # the cut's numbering has nothing left to read
    assert list(values) == [2.5, 3.5, 4.5]
    copies.close()


def test_a_gpu_copy_still_queued_makes_the_copy_refuse_until_it_lands(tmp_path: Path) -> None:
    """A CUDA snapshot is read only once its event completed (a query, no sync on the training thread): while
    one is queued the copy refuses (the sender is asked to cut); once it landed, the copy reads and takes it."""
    b, d, numbering, copies = _copies_of_tensors(tmp_path)
    steps, values = b.cols["t"] = (array("q"), array("d"))
    queued = _QueuedCopy()
    with b.lock:
        values.append(float("nan"))  # what defer() appends, with the snapshot and its event
        d._pending[id(steps)] = (steps, values, [(0, torch.tensor(7.0), queued)])
        d._count += 1
        steps.append(0)
        b.pending += 1
        copies.check()
        assert b.flush_requested and copies.copies == 0  # refused: the sender is asked to cut
        b.flush_requested = False
        queued.land()
        assert not numbering.deferred() and list(values) == [7.0]
        copies.check()
        assert not b.flush_requested and copies.copies == 1
    copies.close()


def test_with_copies_a_rank_logging_cpu_tensors_is_copied_between_flushes_not_cut_every_window(
    store_dir: Path,
) -> None:
    """``flush_interval_s=1, kill_window_s=0.1`` and a tensor loss each step: the copies read the snapshots and take
    them, so the rank is cut about once a flush (not ten times a second, the rate before copies could read
    tensors), and every value is stored once, as logged."""
    settings = coordinator.Settings(rank=0, world_size=1, flush_interval_s=1.0, kill_window_s=0.1)
    with coordinator.init_run(name="kw-tensors", settings=settings) as run:
        pipe = run._sender._pipe
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.2:
            run.log({"loss": torch.tensor(float(n)), "lr": 0.5}, step=n)
            n += 1
            time.sleep(0.004)
        cuts, copied = pipe.cut_batches, (-1 if pipe.copies is None else pipe.copies.copies)
        run.wait(30)
    assert copied >= 10, copied  # ~1.2 s at a copy every ~50 ms
    assert cuts <= 4, cuts  # the 1 s grid's flushes (1-2 in 1.2 s), not one every 0.1 s window (~12)
    s = open_store(store_dir)
    try:
        assert s.values("loss", 0) == [(i, float(i)) for i in range(n)]
        assert s.values("lr", 0) == [(i, 0.5) for i in range(n)]
    finally:
        s.close()


@pytest.mark.gpu
def test_log_of_a_cuda_tensor_does_not_wait_for_the_gpu(store_dir: Path) -> None:
    """A kernel that keeps the GPU busy ~2 s is queued before log(): log() returns long before it ends,
    and the value logged is the one the GPU computed after that kernel, per key and in a dict's frame row."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    with coordinator.init_run() as run:
        x = torch.ones((), device=dev)
        # CUDA context, pinned allocator and events warm, and the kernels below loaded: CUDA loads a
        # kernel's module at its first launch, and that load waits for the device (not log()'s doing).
        run.log({"warm": (x * 2) + 1}, step=0)
        run.wait(60)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = int(2.0 * torch.cuda.get_device_properties(dev).clock_rate * 1000)  # ~2 s of GPU time
        start.record()
        torch.cuda._sleep(cycles)
        loss = x * 7  # computed after the sleep kernel, on the same stream
        acc = loss + 1
        t0 = time.perf_counter()
        run.log({"loss": loss}, step=1)
        run["acc"].append(acc, step=1)
        run.log({"pair/loss": loss, "pair/lr": 0.5}, step=1)  # a dict: a frame row, its tensor read at the cut
        took = time.perf_counter() - t0
        end.record()
        gpu_busy = not end.query()  # the sleep kernel is still running: nothing above waited for it
        torch.cuda.synchronize()
        gpu_s = start.elapsed_time(end) / 1000
        run.wait(60)
        assert run["loss"].fetch_values(rank=0) == [(1, 7.0)]
        assert run["acc"].fetch_values(rank=0) == [(1, 8.0)]
        assert run["pair/loss"].fetch_values(rank=0) == [(1, 7.0)]
        assert run["pair/lr"].fetch_values(rank=0) == [(1, 0.5)]
    assert gpu_s > 0.5, f"the sleep kernel took only {gpu_s:.3f} s"
    assert gpu_busy and took < gpu_s / 10, f"log() took {took:.3f} s while the GPU was busy {gpu_s:.3f} s"
