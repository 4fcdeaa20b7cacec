"""A rank of the kill-window test: logs ``m`` at a steady pace and records when it logged each step.

``--rate`` sets the pace (2000 points a second; 0: back to back, the sender flushing at full load);
``--kill-window`` sets ``Settings.kill_window_s`` (the sender copies the uncut points between flushes);
``--no-step`` logs without a step (the sender numbers them: 0, 1, ... as the loop's count);
``--pair`` logs ``{"m": v, "pair": -v}`` instead of ``m`` alone (a dict of two keys: a frame);
``--rings`` turns on ``Settings.rings`` (each ``log()`` a record in the rank's ring, read by the aggregator);
``--world N`` without ``--flush`` makes the two ranks claim an N-rank job, whose flush interval and
kill window are then the automatic ones (the others never connect: the run ends failed).

Rank 0 writes the run's id to ``<out>/run.id``. Rank 1 appends ``<step> <CLOCK_MONOTONIC>`` to
``<out>/rank1.progress`` after every 10th ``log()`` (the test SIGKILLs it and compares what the
store kept with what it had logged by then); rank 0 logs until ``<out>/killed`` appears, then a
little more, and closes the run.

With ``--doze KIND`` rank 1 writes once every 0.6 s instead, so that its sender is idle and dozes
between writes (it waits for the next write, not for its flush timer): ``log`` logs ``m`` at the
next step, ``field`` sets ``doze/r1`` to the step, ``text`` appends ``t<step>`` to ``doze/note``;
it records ``<step> <CLOCK_MONOTONIC>`` after each. Rank 0 only waits for ``<out>/killed``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import coordinator

__all__ = ["main"]


def main() -> None:
    """Log paced points until killed (rank 1) or told the kill happened (rank 0)."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--flush", type=float, help="Settings.flush_interval_s (unset: automatic)")
    p.add_argument("--no-step", action="store_true", help="log() without a step: the sender numbers them")
    p.add_argument("--pair", action="store_true", help='log {"m": v, "pair": -v}: a frame of two keys')
    p.add_argument("--world", type=int, help="Settings.world_size (the job the ranks claim to be)")
    p.add_argument("--doze", choices=("log", "field", "text"))
    p.add_argument("--rate", type=float, default=2000.0, help="points a second (0: flat out)")
    p.add_argument("--kill-window", type=float, help="Settings.kill_window_s (copies between flushes)")
    p.add_argument("--rings", action="store_true", help="Settings.rings: rows go into the rank's ring")
    args = p.parse_args()
    out = Path(args.out)
    rank = int(os.environ["RANK"])
    settings = coordinator.Settings(
        flush_interval_s=args.flush,
        kill_window_s=args.kill_window,
        liveness_timeout_s=3.0,
        rings=args.rings,
        world_size=args.world,
        stop_grace_s=30.0 if args.world is None else 3.0,  # ranks that never connect are not waited for long
    )
    with coordinator.init_run(settings=settings) as run:
        if rank == 0:
            (out / "run.id.tmp").write_text(run.id)
            (out / "run.id.tmp").rename(out / "run.id")  # whole: the test reads it once it exists
        if args.doze:
            _doze(run, rank, out, args.doze)
            return
        t0 = time.monotonic()
        with open(out / f"rank{rank}.progress", "w", buffering=1) as progress:
            for s in range(10**9):
                v = float(rank * 10_000_000 + s)
                run.log({"m": v, "pair": -v} if args.pair else {"m": v}, step=None if args.no_step else s)
                if s % 10 == 0:
                    progress.write(f"{s} {time.monotonic()}\n")  # line-buffered: one write() per line
                    ahead = s / args.rate - (time.monotonic() - t0) if args.rate else 0.0
                    if ahead > 0:
                        time.sleep(ahead)
                if rank == 0 and s % 100 == 0 and (out / "killed").exists():
                    break
            run.wait(120)


def _doze(run: coordinator.Run, rank: int, out: Path, kind: str) -> None:
    """Rank 1: one write of ``kind`` every 0.6 s until killed; rank 0: wait for the kill, then close."""
    if rank == 0:
        while not (out / "killed").exists():
            time.sleep(0.05)
        run.wait(120)
        return
    with open(out / "rank1.progress", "w", buffering=1) as progress:
        for s in range(10**9):
            if kind == "log":
                run.log({"m": float(10_000_000 + s)}, step=s)
            elif kind == "field":
                run["doze/r1"] = s
            else:
                run["doze/note"].append(f"t{s}", step=s)
            progress.write(f"{s} {time.monotonic()}\n")
            time.sleep(0.6)


if __name__ == "__main__":
    main()
