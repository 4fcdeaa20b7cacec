"""Worker without torch: one rank (RANK/WORLD_SIZE from the environment) of a file-rendezvous job."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time
from typing import Any

import coordinator


def _dump_state(run: coordinator.Run) -> None:
    """On SIGUSR1 (a test that finds this rank hung): its sender's delivery state, then every thread's stack."""

    def dump(signum: int, frame: Any) -> None:
        snd = run._sender
        state: dict[str, Any] = {"stats": run.stats()}
        if snd is not None:
            pipe = snd._pipe
            state.update(
                alive=snd.is_alive(),
                welcomed=pipe.welcomed,
                hello_seq=snd._hello_seq,
                in_flight=list(pipe._window.batches),
                held=len(pipe._outbox),
                resend_next=pipe._resend_next,
                unsent=len(snd._unsent),
                deferred_sends=snd.deferred_sends,
                counters=pipe.counters(),
            )
        sys.stderr.write(f"SENDER-STATE {json.dumps(state, default=str)}\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)

    signal.signal(signal.SIGUSR1, dump)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--out", required=True)
    p.add_argument("--conflict", action="store_true", help="rank r writes cfg/x = r")
    p.add_argument("--hang-after", type=int, default=-1, help="sleep forever after this many points")
    p.add_argument("--liveness", type=float, default=30.0, help="liveness_timeout_s of the run")
    p.add_argument("--rate", type=float, default=0.0, help="points per second (0: as fast as possible)")
    p.add_argument("--stall-after", type=int, default=-1, help="after this many points: no wait, sleep forever")
    p.add_argument("--spool-dir", default=None)
    p.add_argument("--wait-timeout", type=float, default=120.0)
    p.add_argument("--group-timeout", type=float, default=None, help="group_timeout_s of the run")
    p.add_argument("--late-rank", type=int, default=-1, help="this rank logs nothing until --go exists")
    p.add_argument("--go", default=None, help="the file --late-rank waits for (60 s at most)")
    a = p.parse_args()
    rank = int(os.environ["RANK"])
    extra = {} if a.group_timeout is None else {"group_timeout_s": a.group_timeout}
    with coordinator.init_run(
        project="plain",
        name="plain",
        settings=coordinator.Settings(
            close_timeout_s=60, stop_grace_s=5, liveness_timeout_s=a.liveness, spool_dir=a.spool_dir, **extra
        ),
    ) as run:
        _dump_state(run)
        id_file = os.path.join(a.out, f"rank{rank}.id")
        with open(id_file + ".tmp", "w") as f:
            f.write(run.id)
        os.replace(id_file + ".tmp", id_file)  # whole: a test reads it as soon as it exists
        run["cfg/same"] = "equal-everywhere"
        if a.conflict:
            run["cfg/x"] = rank
            run.log({"tp": float(rank + 1)}, step=0, policy="sum")
            run["mx"].append(float(rank), step=0, policy="max")
        if rank == a.late_rank:
            deadline = time.monotonic() + 60
            while not os.path.exists(a.go):
                if time.monotonic() > deadline:
                    raise SystemExit(f"rank {rank}: {a.go} never appeared")
                time.sleep(0.01)
        t0 = time.monotonic()
        for s in range(a.points):
            run.log({"m": float(rank * 10_000 + s)}, step=s)
            if a.rate and s % 100 == 0:
                ahead = s / a.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if s + 1 == a.stall_after:
                time.sleep(0.5)  # let the sender cut and spool the last batches
                sys.stdout.write("STALLED\n")
                sys.stdout.flush()
                time.sleep(3600)
            if s == a.hang_after:
                run.wait(30)
                sys.stdout.write("HUNG\n")
                sys.stdout.flush()
                time.sleep(3600)
        try:
            run.wait(a.wait_timeout)
        except coordinator.CoordinatorError as e:
            sys.stdout.write(f"WAIT-FAILED {type(e).__name__}: {e}\n")
            sys.stdout.flush()
            run.wait(120)
        result = {"rank": rank, "stats": run.stats()}
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
