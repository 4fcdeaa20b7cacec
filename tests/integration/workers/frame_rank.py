"""Worker: each rank logs a dict of plain numbers at explicit steps (frames), with per-key calls mixed in."""

from __future__ import annotations

import argparse

import torch.distributed as dist

import coordinator

KEYS = tuple(f"f/k{j:02d}" for j in range(12))


TEXT_KEY = "f/notes"


def text(rank: int, step: int) -> str:
    """The text a rank appends at ``step`` (with ``--texts``)."""
    return f"rank {rank} step {step}"


def texts_at(steps: int) -> list[int]:
    """The steps at which ``--texts`` appends a text, for a run of ``steps`` loop iterations."""
    return [2 * s for s in range(steps) if s % 3 == 1]


def value(rank: int, step: int, k: int) -> float:
    """A value that identifies its rank, step and key."""
    return rank * 1_000_000 + step + k / 100


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--texts", action="store_true", help="also append a text every third step (texts_at)")
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with coordinator.init_run(project="test", name="frames") as run:
        for s in range(a.steps):
            run.log({k: value(rank, 2 * s, j) for j, k in enumerate(KEYS)}, step=2 * s)
            if s % 7 == 3:  # a per-key call on a framed key: the frame spills, order is kept
                run[KEYS[0]].append(value(rank, 2 * s + 1, 0), step=2 * s + 1)
            if a.texts and s % 3 == 1:  # a text series opened anew in most generations
                run[TEXT_KEY].append(text(rank, 2 * s), step=2 * s)
            if s % 50 == 49:
                run.wait(60)  # a cut in the middle of the run
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
