"""Runs inside `unshare -rn`: a TCP run whose only link (lo) goes down for 3 s mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import coordinator


def flap() -> None:
    time.sleep(1.0)
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    sys.stderr.write("lo down\n")
    time.sleep(3.0)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sys.stderr.write("lo up\n")


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", COORDINATOR_SECRET="partition-test-secret-0123")
    n = 60_000
    with coordinator.init_run(settings=coordinator.Settings(transport="tcp", flush_interval_s=0.005)) as run:
        t = threading.Thread(target=flap)
        t.start()
        t0 = time.monotonic()
        for s in range(n):
            run.log({"m": float(s)}, step=s)
            if s % 100 == 0:
                ahead = s / 10_000 - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        t.join()
        run.wait(120)
        pts = run["m"].fetch_values(rank=0)
        print(json.dumps({"n": n, "stored": len(pts), "unique": len({s for s, _ in pts}), "stats": run.stats()}))


if __name__ == "__main__":
    main()
