"""``coordinator doctor``: check an installation end to end and say plainly what is wrong.

Steps: versions (coordinator, Python, pyzmq/libzmq, msgpack, protocol, the backend's client);
the rings jobs that died left in ``/dev/shm`` (said, not failed: ``coordinator rings``); a
scratch run in a temporary directory through the real path (rank 0 starts the aggregator
process, logs, waits, stops); the points read back from the store; and with a backend: its
``check()``, a test write of the scratch run through a :class:`~coordinator.forward.forwarder.Forwarder`,
and a read-back from the tracker. With a real tracker this leaves a small run named
``doctor`` in the project ``coordinator-doctor`` (or the configured experiment/project); what it
wrote into a TensorBoard ``logdir`` is removed again (kept with ``--keep``).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from coordinator.core.env import COORDINATOR_PUREPYTHON
from coordinator.settings import env_name
from coordinator.transport.ringplace import SHM, left_rings

__all__ = ["DOCTOR_POINTS", "left_rings_line", "ring_walk_line", "row_path_line", "run_doctor"]

DOCTOR_POINTS = 20
"""Points the scratch run logs (key ``doctor/value``, value = step / 2)."""
_KEY = "doctor/value"
_TIMEOUT_S = 60.0
_CLEARED = tuple(env_name(f) for f in ("endpoint", "run_id", "mode"))
_AGG_STDERR = env_name("agg_stderr")
_ENV_OVERRIDES = (*_CLEARED, _AGG_STDERR)


def run_doctor(backend: str | None, options: Mapping[str, object], *, keep: bool = False) -> Iterator[tuple[bool, str]]:
    """Run the checks; yields ``(ok, message)`` per check as it completes. Blocks (seconds)."""
    import msgpack
    import zmq

    import coordinator
    from coordinator.transport import wire

    versions = (
        f"coordinator {coordinator.__version__} (wire protocol {wire.PROTOCOL}), "
        f"Python {platform.python_version()}, pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), "
        f"msgpack {'.'.join(map(str, msgpack.version))}"
    )
    yield True, versions
    yield True, left_rings_line()
    yield True, row_path_line()
    yield True, ring_walk_line()
    cls = None
    if backend is not None:
        from coordinator.forward.backend import get_backend

        try:
            cls = get_backend(backend)
        except (ImportError, coordinator.ConfigError) as e:
            yield False, f"backend {backend}: {e}"
            return
    tmp = Path(tempfile.mkdtemp(prefix="coordinator-doctor-"))
    # A doctor run is always a fresh single-rank run, whatever the shell says, and the aggregator's
    # own log (its final report at INFO) goes to a file, not over the check list. Restored after.
    saved = {k: os.environ.get(k) for k in _ENV_OVERRIDES}
    for var in _CLEARED:
        os.environ.pop(var, None)
    if saved[_AGG_STDERR] is None:
        os.environ[_AGG_STDERR] = str(tmp / "aggregator.log")
    failed = False
    try:
        result: list[Path] = []
        for ok, msg in _scratch_run(tmp, result):
            failed = failed or not ok
            yield ok, msg
        store_path = result[0] if result else None
        if store_path is not None and backend is not None and cls is not None:
            for ok, msg in _backend(backend, options, store_path, keep=keep):
                failed = failed or not ok
                yield ok, msg
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not (keep or failed):
            shutil.rmtree(tmp, ignore_errors=True)
    if keep or failed:
        yield not failed, f"scratch run and aggregator log kept in {tmp}"


def row_path_line() -> str:
    """Which path a ring row takes here: the C extension's common case, or Python only (slower, not a failure)."""
    from coordinator.client.rowpath import built

    return _c_line("ring rows", built(), "~1.1 µs a scalar", "a scalar row ~0.3 µs")


def ring_walk_line() -> str:
    """Which path the aggregator's walk over a ring's records takes here: one C call a pass, or Python (slower)."""
    from coordinator.transport.ringscan import built

    return _c_line("ring walk", built(), "~1.2 µs a record", "one call a pass")


def _c_line(what: str, built: bool, python: str, c: str) -> str:
    """The doctor's line for a path with an optional C extension: built and used, or Python only and why."""
    if not built:
        return f"{what}: Python only (the C extension was not built: no compiler at install), {python}"
    if os.environ.get(COORDINATOR_PUREPYTHON) == "1":
        return f"{what}: Python only ({COORDINATOR_PUREPYTHON}=1), {python}"
    return f"{what}: C extension built ({c})"


def left_rings_line(where: Path = SHM) -> str:
    """Rings in ``where`` that jobs which died left (``Settings.rings``): memory taken, not a failure here."""
    left = left_rings([where])
    if not left:
        return f"rings: none left in {where} by jobs that died"
    mib = sum(r.bytes for r in left) / 2**20
    return f"rings: {len(left)} left in {where} by jobs that died ({mib:.1f} MiB): see `coordinator rings`"


def _scratch_run(tmp: Path, result: list[Path]) -> Iterator[tuple[bool, str]]:
    """The scratch run's checks; appends the store path to ``result`` when they all passed."""
    import coordinator
    from coordinator.journal.store import LocalStore

    t0 = time.monotonic()
    try:
        run = coordinator.init_run(
            project="coordinator-doctor",
            name="doctor",
            with_id=f"doctor-{os.getpid()}-{int(time.time())}",
            settings=coordinator.Settings(dir=str(tmp), rank=0, world_size=1, handle_sigterm=False, stop_grace_s=0.0),
        )
    except Exception as e:  # the doctor reports every failure instead of raising it
        yield False, f"aggregator did not start: {type(e).__name__}: {e}"
        return
    try:
        yield True, f"aggregator started (endpoint {run.endpoint}) in {time.monotonic() - t0:.2f} s"
        run["doctor/check"] = True
        for step in range(DOCTOR_POINTS):
            run.log({_KEY: step / 2}, step=step)
        run.wait(_TIMEOUT_S)
        yield True, f"{DOCTOR_POINTS} points logged and acknowledged as durable"
    except Exception as e:  # reported, then the run is stopped below
        yield False, f"logging to the aggregator failed: {type(e).__name__}: {e}"
        run.stop(_TIMEOUT_S)
        return
    try:
        run.stop(_TIMEOUT_S)
    except Exception as e:  # reported
        yield False, f"stopping the run failed: {type(e).__name__}: {e}"
        return
    yield True, f"run stopped, aggregator exited ({time.monotonic() - t0:.2f} s in all)"
    assert run.store_path is not None
    try:
        store = LocalStore(run.store_path, readonly=True)
        try:
            got = store.values(_KEY)
            state = store.run_info().state
        finally:
            store.close()
    except Exception as e:  # reported
        yield False, f"reading the store back failed: {type(e).__name__}: {e}"
        return
    want = [(s, s / 2) for s in range(DOCTOR_POINTS)]
    if got != want or state != "finished":
        yield False, f"store read-back: {len(got)}/{DOCTOR_POINTS} points as logged, run state {state!r}"
        return
    yield True, f"store read-back: {DOCTOR_POINTS}/{DOCTOR_POINTS} points, run {state} ({run.store_path})"
    result.append(Path(run.store_path))


def _backend(name: str, options: Mapping[str, object], store_path: Path, *, keep: bool) -> Iterator[tuple[bool, str]]:
    from coordinator.forward.forwarder import Forwarder

    # A TensorBoard logdir is the user's: the test write's event file is removed afterwards.
    logdir = options.get("logdir") if name == "tensorboard" else None
    clean = logdir is not None and not keep
    before = _listing(Path(str(logdir)).expanduser()) if clean else None
    try:
        fwd = Forwarder(store_path, name, options)
    except Exception as e:  # reported (bad option, missing extra)
        yield False, f"{name}: {type(e).__name__}: {e}"
        return
    try:
        yield True, f"{name} client {fwd.backend.client_version()}"
        try:
            fwd.backend.check()
        except Exception as e:  # reported with the backend's message
            yield False, f"{name} check: {e}"
            return
        yield True, f"{name} check: configuration accepted"
        t0 = time.monotonic()
        try:
            st = fwd.drain(_TIMEOUT_S)
        except Exception as e:  # reported
            yield False, f"{name} test write: {e}"
            return
        yield (
            True,
            (
                f"{name} test write: {st['forwarded_points']} points (main and per-rank series), "
                f"{st['params_sent']} params, {st['tags_sent']} tags in {time.monotonic() - t0:.2f} s"
            ),
        )
        try:
            back = fwd.backend.read_back(_KEY)
        except Exception as e:  # reported
            yield False, f"{name} read-back: {type(e).__name__}: {e}"
            return
        want = [(s, s / 2) for s in range(DOCTOR_POINTS)]
        same = len(back) == len(want) and all(
            bs == ws and abs(bv - wv) <= 1e-6 * max(1.0, abs(wv)) for (bs, bv), (ws, wv) in zip(back, want, strict=True)
        )
        if not same:
            yield False, f"{name} read-back: {len(back)} points of {_KEY!r}, expected {len(want)} equal to those logged"
            return
        yield True, f"{name} read-back: {len(back)}/{len(want)} points of {_KEY!r} match"
    finally:
        fwd.release()
        if clean:
            _remove_new(Path(str(logdir)).expanduser(), before)


def _listing(d: Path) -> set[Path] | None:
    """Every path under ``d``; None when ``d`` does not exist."""
    return set(d.rglob("*")) if d.is_dir() else None


def _remove_new(d: Path, before: set[Path] | None) -> None:
    """Remove what appeared under ``d`` since ``before`` (``d`` itself if it was made)."""
    if before is None:
        shutil.rmtree(d, ignore_errors=True)
        return
    for p in sorted(set(d.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
