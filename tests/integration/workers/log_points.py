"""Worker: every rank logs N points per key, writes parameters, checks bad input and cross-rank reads."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch.distributed as dist

import coordinator


def value(rank: int, step: int, k: int) -> float:
    """A value that identifies its rank, step and key."""
    return rank * 1_000_000 + step + k / 10


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--out", required=True)
    p.add_argument("--bad-input", action="store_true")
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict[str, object] = {"rank": rank}
    bad_rejected = 0
    with coordinator.init_run(project="test", name="points") as run:
        result["run_id"] = run.id
        run["parameters"] = {"lr": 0.01, "batch_size": 64, "layers": [64, 64]}
        if rank == 0:
            run["shared/token"] = "set-by-rank-0"
        log, h = run.log, run["train/acc"]
        for s in range(a.points):
            log({"train/loss": value(rank, s, 0)}, step=s)
            h.append(value(rank, s, 1), step=s)
            if a.bad_input and s % 1000 == 500:
                errors = 0
                wrong: list[dict[Any, Any]] = [  # bad values and keys on purpose: each must be refused
                    {"train/loss": "nan-as-text"},
                    {"train/loss": None},
                    {5: 1.0},
                    {"a//b": 1.0},
                    {"../x": 1.0},
                ]
                for bad in wrong:
                    try:
                        run.log(bad, step=s)
                    except (TypeError, ValueError):
                        errors += 1
                try:
                    run.log({"train/loss": 1.0}, step=-1)
                except ValueError:
                    errors += 1
                try:
                    run["parameters/bad"] = object()
                except TypeError:
                    errors += 1
                assert errors == 7, errors
                bad_rejected += errors
                result["bad_rejected"] = bad_rejected
        run.wait(timeout=120)
        dist.barrier()
        run.sync(wait=True, timeout=60)
        result["token"] = run["shared/token"].fetch()
        result["lr"] = run["parameters/lr"].fetch()
        result["stats"] = run.stats()
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
