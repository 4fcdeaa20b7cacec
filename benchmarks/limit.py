"""The transport limit: raw pyzmq PUSH/PULL over ipc with pre-built 1000-point msgpack batches.

N pusher processes (the same number as the coordinator's ranks) each send the same points a
rank logs in the throughput trial, pre-encoded before the clock starts as columnar msgpack
batches of 1000 points (the coordinator's own batch format: per key, packed int64 steps and
float64 values), one ZeroMQ frame each, to one PULL receiver process that counts and discards
them. Clock: from the common start time to the receiver's last message. No acks, no store, no
dedupe: the ceiling that any logger built on ZeroMQ + msgpack can reach on this machine. A
second variant (``inline``) builds and encodes each batch from Python numbers inside the timed
loop, as a client has to: the ceiling for a Python sender that does no other work.

Used by ``benchmarks.run`` (section 3); ``python -m benchmarks.limit _recv|_push '<json>'`` are
the internal worker sub-commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from benchmarks.common import child_env
from benchmarks.workers import Worker, emit, wait_go

__all__ = ["BATCH_POINTS", "limit_trial", "main", "push_main", "recv_main"]

BATCH_POINTS = 1000
MAX_DISTINCT = 256


def recv_main(cfg: dict[str, Any]) -> int:
    """``_recv '<json>'``: the PULL receiver; counts and discards messages, reports the last one's time."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(cfg["endpoint"])
    expected = cfg["messages"]
    emit("READY", {"pid": os.getpid()})
    n = 0
    nbytes = 0
    t_first = 0.0
    deadline = time.monotonic() + cfg["timeout"]
    sock.setsockopt(zmq.RCVTIMEO, 1000)
    while n < expected and time.monotonic() < deadline:
        try:
            f = sock.recv(copy=False)
        except zmq.Again:
            continue
        if n == 0:
            t_first = time.monotonic()
        n += 1
        nbytes += len(f.buffer)
    t_last = time.monotonic()
    emit("DONE", {"t_end": t_last, "t_first": t_first, "messages": n, "bytes": nbytes})
    sock.close(0)
    ctx.term()
    return 0 if n == expected else 1


def push_main(cfg: dict[str, Any]) -> int:
    """``_push '<json>'``: one pusher, one rank's points in 1000-point batches as fast as it can."""
    import zmq

    from coordinator.transport import wire

    k, points, rank = cfg["keys"], cfg["points"], cfg["rank"]
    keys = [f"m{j:03d}" for j in range(k)]
    steps_per_batch = max(1, BATCH_POINTS // k)
    steps = points // k
    n_batches = -(-steps // steps_per_batch)
    inline = bool(cfg.get("inline"))

    def build(s0: int) -> bytes:
        s1 = min(steps, s0 + steps_per_batch)
        st = array("q", range(s0, s1))
        vals = array("d", [s * 8.0 + rank for s in range(s0, s1)])
        return wire.encode_batch([(key, st, vals) for key in keys], [], time.time())

    payloads: list[bytes] = []
    # At most MAX_DISTINCT distinct payloads are built (then sent in a cycle): the receiver never
    # looks inside, and building 10 M points up front would take longer than sending them.
    for s0 in range(0, min(n_batches, 1 if inline else MAX_DISTINCT) * steps_per_batch, steps_per_batch):
        payloads.append(build(s0))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, -1)
    sock.connect(cfg["endpoint"])
    emit("READY", {"pid": os.getpid(), "batches": n_batches, "bytes": sum(map(len, payloads)) / len(payloads)})
    if wait_go() is None:
        return 2
    send = sock.send
    m = len(payloads)
    if inline:  # each batch built and encoded from Python numbers inside the timed loop
        for i in range(n_batches):
            send(build(i * steps_per_batch), copy=False)
    else:
        for i in range(n_batches):
            send(payloads[i % m], copy=False)
    t_sent = time.monotonic()
    sock.close()  # linger: blocks until every message is handed to the receiver
    ctx.term()
    emit("DONE", {"t_sent": t_sent})
    return 0


def limit_trial(world: int, k: int, points: int, tmp: Path, label: str, inline: bool = False) -> dict[str, Any]:
    """One raw PUSH/PULL trial: ``world`` pushers of ``points`` points each in 1000-point batches.

    ``inline``: build and encode every batch inside the timed loop (from Python numbers, as a
    client must) instead of sending pre-built ones.
    """
    d = tmp / label
    d.mkdir(parents=True)
    env = child_env(d)
    steps = points // k
    spb = max(1, BATCH_POINTS // k)
    batches = -(-steps // spb)
    res: dict[str, Any] = {
        "world": world,
        "k": k,
        "points_per_rank": steps * k,
        "total": world * steps * k,
        "label": label,
        "inline": inline,
        "problems": [],
    }
    endpoint = f"ipc://{d}/pull.sock"
    workers: list[Worker] = []
    try:
        recv = Worker(
            {"rank": -1, "endpoint": endpoint, "messages": world * batches, "timeout": 120},
            env,
            d / "recv.stderr",
            module="benchmarks.limit",
            sub="_recv",
        )
        workers.append(recv)
        recv.expect("READY", time.monotonic() + 60)
        pushers = [
            Worker(
                {"rank": r, "endpoint": endpoint, "keys": k, "points": points, "inline": inline},
                env,
                d / f"push{r}.stderr",
                module="benchmarks.limit",
                sub="_push",
            )
            for r in range(world)
        ]
        workers += pushers
        ready = [w.expect("READY", time.monotonic() + 120) for w in pushers]
        res["batch_bytes"] = ready[0]["bytes"]
        t_start = time.monotonic() + 0.3
        for w in pushers:
            w.send(f"GO {t_start!r}")
        deadline = time.monotonic() + 150
        done = recv.expect("DONE", deadline)
        for w in pushers:
            w.expect("DONE", deadline)
        if done["messages"] != world * batches:
            res["problems"].append(f"receiver got {done['messages']} of {world * batches} messages")
        elapsed = done["t_end"] - t_start
        res.update(elapsed=elapsed, pps=res["total"] / elapsed)
    except Exception as e:
        res["problems"].append(f"limit trial failed: {type(e).__name__}: {e}")
    finally:
        for w in workers:
            code = w.close(30)
            if code not in (0, None) and not res["problems"]:
                res["problems"].append(f"{w.stderr_path.name}: exit code {code}: {w.stderr_tail(400)}")
            elif code is None:
                res["problems"].append(f"{w.stderr_path.name}: killed after the timeout")
    res["ok"] = not res["problems"]
    return res


def main(argv: list[str] | None = None) -> int:
    """Dispatch the internal worker sub-commands."""
    import json

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] in ("_recv", "_push"):
        cfg = json.loads(argv[1])
        with contextlib.suppress(KeyboardInterrupt):
            return recv_main(cfg) if argv[0] == "_recv" else push_main(cfg)
        return 130
    print("internal worker of benchmarks.run (section 3); run `python -m benchmarks.run --quick`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
