"""A one-shot timer the sender thread's poll can watch: Linux's ``timerfd``, through ``ctypes``.

The copies of the uncut points (:mod:`~coordinator.transport.copies`) are made by the training
thread, in the ``log()`` call that finds a kill window half gone, so that a paced rank's sender
does not wake up for them. A rank that stops logging for a while (an evaluation, a checkpoint)
makes no such call: after each copy the timer is set one kill window ahead, and if it fires
before the next copy pushes it back, the sender thread wakes up and copies what is left. Setting
it is one system call that wakes nobody (1-2 µs); the sender's poll sees the timer only when it
fires. Python has ``os.timerfd_create`` from 3.13 only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["TimerFd"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """A non-blocking one-shot timer on the monotonic clock, readable once it fires.

    Raises:
        OSError: the system has no ``timerfd`` (not Linux) or refused one.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            self._create = libc.timerfd_create
            self._settime = libc.timerfd_settime
        except (OSError, AttributeError) as e:
            raise OSError(f"no timerfd on this system: {e}") from None
        self.fd = self._create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self.armed = False

    def arm(self, seconds: float) -> None:
        """Fire once, ``seconds`` from now (replacing any earlier setting); 0 disarms it."""
        value = self._spec.it_value
        value.tv_sec = int(seconds)
        value.tv_nsec = int((seconds - int(seconds)) * 1e9)
        if self._settime(self.fd, 0, self._ref, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        self.armed = seconds > 0

    def disarm(self) -> None:
        """Stop it (a firing not read yet stays readable until :meth:`fired`)."""
        self.arm(0.0)

    def fired(self) -> bool:
        """Whether it fired since it was last set or read (reads it: the next call says False)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        self.armed = False
        return True

    def close(self) -> None:
        """Close its descriptor (once)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
