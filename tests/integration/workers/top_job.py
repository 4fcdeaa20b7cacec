"""Worker: every rank logs a few keys at about 20 steps/s for ``--seconds``, then closes (a job for ``top``)."""

from __future__ import annotations

import argparse
import time

import torch.distributed as dist

import coordinator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(project="top", name="top-job") as run:
        end = time.monotonic() + a.seconds
        step = 0
        while time.monotonic() < end:
            run.log({"train/loss": 1.0 / (1 + step) + rank, "train/acc": step / 1000}, step=step)
            step += 1
            time.sleep(0.05)
        run.wait(60)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
