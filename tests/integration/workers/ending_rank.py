"""Worker of the ending tests: a one-rank run that ends in the way ``--how`` names.

It logs ``--points`` points of ``x`` (steps 0..n-1), waits until they are durable, prints
``ready`` and then: ``raise`` (an uncaught ValueError outside any ``with``), ``thread`` (an
uncaught error in a thread, then a normal end), ``sleep`` (sleeps in Python until signalled),
``blocked`` (blocks in a C call that never returns to the interpreter, as a collective does:
re-locking a held pthread mutex through ctypes; the Python signal handler cannot run there),
``keyboard`` (raises KeyboardInterrupt outside any ``with``), ``hot`` (logs ``x``, ``y`` and ``z`` at
every step as fast as it can until interrupted, 30 s at most), ``forked-sigterm`` (a forked child
is terminated with SIGTERM, then the rank goes on), ``clean``.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import threading
import time

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--how", required=True)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--close-timeout", type=float, default=20.0)
    a = p.parse_args()
    run = coordinator.init_run(
        project="endings", settings=coordinator.Settings(close_timeout_s=a.close_timeout, stop_grace_s=5)
    )
    for i in range(a.points):
        run.log({"x": float(i)}, step=i)
    run.wait(60)
    print("ready", flush=True)
    if a.how == "raise":
        raise ValueError("boom at step 99")
    if a.how == "keyboard":
        raise KeyboardInterrupt
    if a.how == "thread":
        t = threading.Thread(target=lambda: 1 / 0, name="loader")
        t.start()
        t.join()
    elif a.how == "forked-sigterm":  # a DataLoader-style worker is terminated: the rank goes on
        import multiprocessing as mp

        child = mp.get_context("fork").Process(target=time.sleep, args=(600,))
        child.start()
        time.sleep(0.5)
        child.terminate()  # SIGTERM
        child.join(30)
        time.sleep(3 * min(2.0, a.close_timeout / 4))  # past the watchdog's grace
        run.log({"x": float(a.points)}, step=a.points)
    elif a.how == "sleep":
        time.sleep(600)
    elif a.how == "hot":  # logs as fast as it can until Ctrl-C, which then lands inside a log() at times
        i = a.points
        # Bounded: a KeyboardInterrupt that lands in a ``__del__`` is dropped by Python, and the loop
        # would then fill the disk until the test's timeout.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run.log({"x": float(i), "y": float(i)}, step=i)
            run["z"].append(float(i), step=i)
            i += 1
        sys.exit("no Ctrl-C came in 30 s of logging")
    elif a.how == "burst-exit":  # a large batch sent, another logged, then exit without stop(): atexit sends it
        for i in range(a.points, a.points + 50_000):
            run.log({"x": float(i)}, step=i)
        run.wait(60)
        for i in range(a.points + 50_000, a.points + 100_000):
            run.log({"x": float(i)}, step=i)
        sys.exit(0)
    elif a.how == "blocked":
        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on Linux
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # a normal mutex locked again by its owner: never returns
        print("unreachable", flush=True)
    run.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
