"""How a run ends: the ``stop()`` sequence, and the process events that must end it cleanly.

A run is stopped by ``stop()``/``with``, at interpreter exit (atexit), or by a launcher's
SIGTERM (turned into ``SystemExit`` so the first two apply; a watchdog thread covers a main
thread blocked in C, :mod:`~coordinator.client.watchdog`). The BYE says how the rank ended
(:mod:`~coordinator.client.endings`). A forked child (a DataLoader worker) inherits the run
without its sender thread, so its calls are refused instead of silently buffered forever.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from coordinator.client.delivery import Delivery
from coordinator.client.endings import Ending, install_hooks, note_signal, uncaught_at_exit
from coordinator.client.supervision import OwnedAggregator
from coordinator.client.system import JOIN_TIMEOUT_S, SystemSampler
from coordinator.client.watchdog import SigtermWatchdog
from coordinator.core.counters import ByeCounters
from coordinator.errors import CoordinatorError, CoordinatorTimeoutError, DeliveryError
from coordinator.transport import wire
from coordinator.transport.buffer import Buffer
from coordinator.transport.discovery import Rendezvous
from coordinator.transport.sender import SenderThread

__all__ = ["Lifecycle"]

_SENDER_EXIT_S = 2.0
"""``stop()`` waits at least this long for the sender thread to exit once told to, whatever is left of its deadline."""

FAILED_RANK0_WAIT_S = 10.0
"""How long a failed or interrupted rank 0 waits for the other ranks to close before it stops the run."""

_log = logging.getLogger("coordinator")

_LIVE: weakref.WeakSet[Lifecycle] = weakref.WeakSet()
"""Every lifecycle of this process, for the after-fork hook."""

_ATEXIT_TIMEOUT_S = 30.0
"""At interpreter exit a stop waits at most this long, whatever the run's close timeout."""


class Lifecycle:
    """The end of one run on one rank: drain, goodbye, aggregator end (rank 0), cleanup.

    Args:
        run_id, rank, endpoint: the run (for messages).
        close_timeout_s: default deadline of :meth:`stop`.
        buf, sender, delivery: the rank's buffer, sender thread (``None``: nothing to drain)
            and its requests.
        aggregator: rank 0's aggregator, or ``None``.
        rendezvous: where rank 0 published the endpoint (retracted at the end), or ``None``.
        handle_sigterm: turn a default SIGTERM into ``SystemExit`` (main thread, with a sender).
        stop: the run's ``stop(timeout)``, called at exit (held weakly: the run may be collected).
        refuse_calls: the run's hook that makes later calls raise ``ClosedError(why)``, called in
            a forked child (held weakly).
        secrets: strings masked in the ending's reason (the backend credentials).
    """

    def __init__(
        self,
        *,
        run_id: str,
        rank: int,
        endpoint: str | None,
        close_timeout_s: float,
        buf: Buffer,
        sender: SenderThread | None,
        delivery: Delivery,
        aggregator: OwnedAggregator | None,
        rendezvous: Rendezvous | None,
        handle_sigterm: bool,
        stop: Callable[[float], None],
        refuse_calls: Callable[[str], None],
        secrets: Iterable[str] = (),
    ) -> None:
        self._run_id = run_id
        self._rank = rank
        self._endpoint = endpoint
        self._close_timeout_s = close_timeout_s
        self._buf = buf
        self._sender = sender
        self._delivery = delivery
        self._agg = aggregator
        self._ring = delivery.ring
        """The rank's ring (``Settings.rings``): closed before the BYE (the aggregator reads it to its end
        before it closes the rank), removed once the BYE is answered."""
        self._rdzv = rendezvous
        self._pid = os.getpid()
        self._refuse_calls = weakref.WeakMethod(refuse_calls)
        self._sigterm_installed = False
        self.ending = Ending(secrets)
        """How this rank ends, sent with its BYE."""
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.sampler: SystemSampler | None = None
        self.redacted: Callable[[], int] = lambda: 0
        self.counters: Callable[[], dict[str, int]] = dict
        """More of the rank's own counters for its BYE (the console capture's cut lines)."""
        """This rank's count of redactions so far (set by the run), sent with its BYE."""
        """The system-metrics thread (set by the run), stopped before the drain."""
        self._watchdog: SigtermWatchdog | None = None
        install_hooks()
        if (
            handle_sigterm
            and sender is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            self._sigterm_installed = True
            self._watchdog = SigtermWatchdog(
                close_timeout_s=close_timeout_s,
                stopping=self._stopping,
                stopped=self._stopped,
                stop=functools.partial(_call_weak, weakref.WeakMethod(stop)),
                mark=lambda why: self.ending.mark("interrupted", why),
            )
        # A partial per run, so stop() unregisters this run's hook and no other.
        self._atexit_cb = functools.partial(
            _atexit_hook,
            weakref.WeakMethod(stop),
            weakref.ref(self.ending),
            min(close_timeout_s, _ATEXIT_TIMEOUT_S),
            run_id,
        )
        # pyzmq stops the garbage collector that every zero-copy send (a large batch) needs in an
        # atexit hook of its own, registered when that collector is first imported: by the first
        # such send, after this run's hook, so it ran first and the hook's last sends raised.
        # Imported now, its hook runs after this one (atexit runs the last registered first).
        importlib.import_module("zmq.utils.garbage")
        atexit.register(self._atexit_cb)
        _LIVE.add(self)

    def stop(self, timeout: float | None) -> None:
        """Drain, say goodbye, and release everything; the run already refuses new calls.

        Raises:
            CoordinatorTimeoutError: points were still undelivered at the deadline.
            CoordinatorError: delivery failed earlier (the first error is raised).
        """
        self._stopping.set()
        main = threading.current_thread() is threading.main_thread()
        if main and self._sigterm_installed and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the drain ends it
        atexit.unregister(self._atexit_cb)
        self.ending.mark_exception(None)  # after our SIGTERM handler: interrupted
        deadline = time.monotonic() + (self._close_timeout_s if timeout is None else timeout)
        if os.getpid() != self._pid:
            _log.warning("run %s: stop() in a forked child does nothing; the parent owns the run", self._run_id)
            self._stopped.set()
            return
        error: CoordinatorError | None = None
        try:
            if self.sampler is not None:  # its last sample is then part of the drain
                self.sampler.close(min(JOIN_TIMEOUT_S, max(0.0, deadline - time.monotonic())))
            if self._sender is not None:
                error = self._drain(self._sender, deadline)
            if self._agg is not None:
                wait_s = deadline - time.monotonic()
                if self.ending.ending != "clean":
                    # Rank 0 failed or was stopped: the other ranks may be blocked in a collective
                    # with it and end only once it exits (mpirun, torchrun kill them then), so it
                    # does not wait out the close timeout for them; the aggregator, stopped, records
                    # who was still running as interrupted and replays what their spools hold.
                    wait_s = min(wait_s, FAILED_RANK0_WAIT_S)
                ended = self._agg.finish(wait_s)
                if isinstance(ended, CoordinatorTimeoutError) and self.ending.ending != "clean":
                    _log.warning("%s (rank 0 %s; the run is closed without them)", ended, self.ending.ending)
                    ended = None
                if isinstance(ended, DeliveryError) and (self.ending.declared or self.ending.ending == "interrupted"):
                    # This rank ended the run itself (Run.fail, a signal): its caller already has the
                    # cause, so the run's state is logged, not raised again. A crash it did not
                    # declare (a thread's uncaught exception) still raises: the exit must be loud.
                    _log.warning("%s", ended)
                    ended = None
                error = error or ended
        finally:
            if self._agg is not None:
                self._agg.release()
            if self._rdzv is not None and self._rank == 0:
                self._rdzv.retract()
            self._stopped.set()
            if self._watchdog is not None:
                self._watchdog.close()
        if error is not None:
            raise error

    def _drain(self, sender: SenderThread, deadline: float) -> CoordinatorError | None:
        """Wait for the acks, say goodbye, stop the sender; returns the first error met."""
        error: CoordinatorError | None = None
        try:
            # Journal durability only: the aggregator drains the trackers at the run's end.
            left = max(0.0, deadline - time.monotonic())
            self._delivery.wait_acked(left, time.monotonic() + left)
        except CoordinatorError as e:
            error = e
        st = self._buf.stats()  # what the socket did not deliver; the ring's rows are read with the BYE
        if self._ring is not None:
            self._ring.close()  # nothing more comes: the aggregator reads it to its end before it closes the rank
        answered = False
        try:
            bye = ByeCounters(
                undelivered=st["pending"],
                accepted=st["accepted"] + (0 if self._ring is None else self._ring.points),
                dropped_points=st["dropped"],
                redacted=self.redacted(),
            )
            payload = {**self.counters(), **bye, **self.ending.payload()}
            if self._ring is not None:
                payload.update(self._ring.counters())
            self._delivery.request(wire.BYE, payload, max(0.1, deadline - time.monotonic()))
            answered = True
        except CoordinatorError as e:
            error = error or e
        if self._ring is not None:
            self._ring.remove(answered)
        sender.stop()
        # The deadline bounds the delivery; the thread's exit gets a floor of its own: with the deadline
        # spent (an aggregator gone), 0.1 s was too short for a loaded machine to schedule it (a stress run).
        sender.join(max(_SENDER_EXIT_S, deadline - time.monotonic()))
        if sender.is_alive():
            _log.error("rank %d: sender thread did not exit in time", self._rank)
        return error

    def join(self, timeout: float | None) -> None:
        """Wait until a stop begun by another thread (the SIGTERM watchdog) has finished."""
        if self._stopping.is_set() and not self._stopped.wait(timeout):
            _log.warning("run %s: the stop begun in another thread is still running", self._run_id)

    def _after_fork_in_child(self) -> None:
        why = (
            f"belongs to process {self._pid}; this is a forked child (e.g. a DataLoader worker): "
            "log from the parent, or open a run in the child with init_run()"
        )
        if self._watchdog is not None:
            self._watchdog.after_fork_in_child()
        if self._ring is not None:
            self._ring.after_fork_in_child()
        self._buf.lock = threading.Lock()  # the parent's lock may have been held at fork time
        self._buf.cond = threading.Condition(self._buf.lock)
        refuse = self._refuse_calls()
        if refuse is not None:
            refuse(why)


def _after_fork_in_child() -> None:
    """A forked child has the parent's runs but not their sender threads: anything it logged
    would silently stay in its copy of the buffer. Make it raise instead."""
    for life in list(_LIVE):
        life._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn the launcher's SIGTERM into SystemExit, so ``with`` blocks and atexit drain the run."""
    note_signal(signum)
    _log.warning("SIGTERM: stopping the run (draining within its close timeout)")
    raise SystemExit(128 + signum)


def _call_weak(ref: weakref.WeakMethod[Callable[[float], None]], timeout: float) -> None:
    stop = ref()
    if stop is not None:
        stop(timeout)


def _atexit_hook(
    ref: weakref.WeakMethod[Callable[[float], None]],
    ending_ref: weakref.ref[Ending],
    timeout: float,
    run_id: str,
) -> None:
    stop = ref()
    if stop is None:
        return
    ending = ending_ref()
    if ending is not None:
        ending.mark_exception(uncaught_at_exit())
    try:
        stop(timeout)
    except CoordinatorError as e:
        _log.error("run %s: closing at exit failed: %s", run_id, e)
