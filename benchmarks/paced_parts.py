"""The paced job's aggregator and one rank's sender, part by part: each part's CPU per call, cold.

A paced rank's and its aggregator's CPU goes in many small steps on a cold CPU, once per wake-up
(docs/performance.md, rounds 14 and 30). py-spy's samples of that job mislead: they count a
thread waiting in ``poll`` as running (half the aggregator's samples), and a few hundred samples a
minute leave most parts unseen. This times named methods with the calling thread's CPU clock
(``time.thread_time_ns``) inside the real job: ``torchrun``, every rank running
``benchmarks.rank_threads``' paced loop (a 100-key dict at 50 steps/s), the aggregator started by
rank 0 as usual. It prints, per part, the CPU time, the calls and the µs per call, for the
aggregator's loop thread and for one rank's sender thread. The parts are the socket path's (the
sender's flushes, cuts and ACKs; the aggregator's batches), so the job runs with
``COORDINATOR_RINGS=0``: every point over the socket (with rings, the library's default, the
sender does not flush).

How: the job runs with a ``sitecustomize`` module first on its ``PYTHONPATH`` (written to a
temporary directory) that calls :func:`install` in every Python process of the job. In the
aggregator (its command line names ``coordinator.aggregator``) and in rank ``--rank`` it wraps the
parts below; at exit each writes its figures as JSON. Parts nest (``handle`` includes ``batch``)
and cover the process's life (start-up and shutdown too: a few commits and an emission); a
wrapper adds about a microsecond a call. ``rank_threads``' per-thread lines for the window are
printed first.

    python -m benchmarks.paced_parts [--seconds 10] [--ranks 4] [--rank 1]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AGGREGATOR_PARTS", "SENDER_PARTS", "install", "job_args", "main", "measure", "resolve"]

_OUT_ENV = "PACED_PARTS_OUT"
_RANK_ENV = "PACED_PARTS_RANK"

AGGREGATOR_PARTS = (
    ("zmq", "Poller.poll"),
    ("coordinator.aggregator.server", "Server._receive_round"),
    ("coordinator.aggregator.server", "Server.handle"),
    ("coordinator.aggregator.core", "Aggregator.batch"),
    ("coordinator.transport.wire", "decode_batch"),
    ("coordinator.aggregator.core", "Aggregator._ingest"),
    ("coordinator.aggregator.core", "Aggregator.commit"),
    ("coordinator.journal.store", "LocalStore.commit"),
    ("coordinator.aggregator.core", "Aggregator.emit"),
    ("coordinator.aggregator.server", "Server._sweep"),
    ("coordinator.aggregator.core", "Aggregator.check_liveness"),
    ("coordinator.aggregator.core", "Aggregator.update_health"),
    ("coordinator.aggregator.server", "Server._flush_replies"),
)
"""(module, attribute) of the aggregator's parts, timed on its loop thread (the main thread)."""

SENDER_PARTS = (
    ("coordinator.transport.loopio", "LoopIO.wait"),
    ("coordinator.transport.sender", "SenderThread._flush"),
    ("coordinator.transport.batches", "Cutter.cut"),
    ("coordinator.transport.pipeline", "Pipeline._send_batch"),
    ("coordinator.transport.sender", "SenderThread._recv_all"),
    ("coordinator.transport.sender", "SenderThread._on_reply"),
    ("coordinator.transport.pipeline", "Pipeline.pump"),
    ("coordinator.transport.sender", "SenderThread._housekeeping"),
)
"""(module, attribute) of a rank's sender parts, timed on its sender thread."""


def resolve(module: str, attr: str) -> tuple[Any, str]:
    """What holds ``module.attr`` (the module, or the class of a ``Class.method``), and the name in it."""
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    return owner, name


def job_args(out_env: str) -> list[bytes] | None:
    """This process's command line, when ``$out_env`` names the folder a recorder writes to; else None."""
    if not os.environ.get(out_env):
        return None
    return Path("/proc/self/cmdline").read_bytes().split(b"\0")


def _wrap(module: str, attr: str, mine: Callable[[], bool], stats: dict[str, list[int]]) -> None:
    """Replace ``module.attr`` (a function, or ``Class.method``) by one that adds its thread CPU to ``stats``."""
    owner, name = resolve(module, attr)
    inner = getattr(owner, name)
    cell = stats.setdefault(attr, [0, 0])
    clock = time.thread_time_ns

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not mine():
            return inner(*args, **kwargs)
        t = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            cell[0] += clock() - t
            cell[1] += 1

    setattr(owner, name, timed)


def install() -> None:
    """Time this process's parts if it is the job's aggregator or the chosen rank (else nothing)."""
    cmdline = job_args(_OUT_ENV)
    if cmdline is None:
        return
    out = os.environ[_OUT_ENV]
    if b"coordinator.aggregator" in cmdline:
        role, parts = "aggregator", AGGREGATOR_PARTS
        main_thread = threading.get_ident()

        def mine() -> bool:
            return threading.get_ident() == main_thread

    elif b"benchmarks.rank_threads" in cmdline and os.environ.get("RANK") == os.environ.get(_RANK_ENV):
        role, parts = f"sender-r{os.environ.get('RANK')}", SENDER_PARTS

        def mine() -> bool:
            return threading.current_thread().name.startswith("coordinator-sender")

    else:
        return
    stats: dict[str, list[int]] = {}
    for module, attr in parts:
        _wrap(module, attr, mine, stats)

    def dump() -> None:
        rows = {k: {"ms": v[0] / 1e6, "calls": v[1]} for k, v in stats.items()}
        (Path(out) / f"{role}-{os.getpid()}.json").write_text(json.dumps({"role": role, "parts": rows}))

    atexit.register(dump)


_SITECUSTOMIZE = "from benchmarks.paced_parts import install\n\ninstall()\n"


def measure(seconds: float, ranks: int, rank: int, timeout_s: float = 300.0) -> tuple[str, list[dict[str, Any]]]:
    """Run the paced job with the parts timed; returns rank_threads' output and each timed process's figures."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="paced-parts-") as d:
        site, out = Path(d) / "site", Path(d) / "out"
        site.mkdir()
        out.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(repo), os.environ.get("PYTHONPATH", "")]))
        env.update({_OUT_ENV: str(out), _RANK_ENV: str(rank)})
        env["COORDINATOR_RINGS"] = "0"  # the parts timed are the socket path's (module's notes)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd += ["-m", "benchmarks.rank_threads", "--seconds", str(seconds)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if p.returncode:
            raise RuntimeError(f"the paced job failed ({p.returncode}): {p.stderr[-2000:]}")
        found = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    return p.stdout, found


def main(argv: list[str] | None = None) -> None:
    """Run the job and print each part's CPU, calls and µs per call."""
    ap = argparse.ArgumentParser(prog="benchmarks.paced_parts", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="rank_threads' measured window")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--rank", type=int, default=1, help="the rank whose sender is timed")
    args = ap.parse_args(argv)
    text, found = measure(args.seconds, args.ranks, args.rank)
    print(text.rstrip())
    for proc in sorted(found, key=lambda f: str(f["role"])):
        print(f"\n{proc['role']}: part, CPU (ms), calls, µs per call")
        for name, v in sorted(proc["parts"].items(), key=lambda kv: -kv[1]["ms"]):
            per = 1000 * v["ms"] / v["calls"] if v["calls"] else 0.0
            print(f"  {name:34s} {v['ms']:9.1f} {v['calls']:8d} {per:9.1f}")


if __name__ == "__main__":
    main()
