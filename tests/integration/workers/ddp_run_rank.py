"""Worker of the ddp_run tests: a tiny DDP model trained through ``ddp_run`` under torchrun.

Each rank logs ``train/metric`` = rank * 1000 + step + 0.5 * attempt (rank-dependent, and
telling the attempts apart) and the model's ``train/loss`` every step, and writes a checkpoint
(the next step) every ``--ckpt-every`` steps after a barrier. With ``--die-rank R --die-at S``
rank R exits without a goodbye (``os._exit``) at step S of attempt 0; torchrun
(``--max-restarts=1``) restarts every rank, which resume from the checkpoint. With
``--raise-rank R --raise-at S`` rank R raises ``ValueError`` at step S inside the block. With
``--tracker NAME --logdir D`` the run is opened with ``backend=NAME,
backend_options={"logdir": D}``; with ``--legacy-backend`` the process group backend is given
the old way, ``backend="gloo"``.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import coordinator
from coordinator.integrations.torch_ddp import ddp_run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--die-rank", type=int, default=-1)
    p.add_argument("--die-at", type=int, default=-1)
    p.add_argument("--raise-rank", type=int, default=-1)
    p.add_argument("--raise-at", type=int, default=-1)
    p.add_argument("--tracker", default=None)
    p.add_argument("--logdir", default=None)
    p.add_argument("--legacy-backend", action="store_true")
    a = p.parse_args()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    kwargs: dict[str, Any] = {"settings": coordinator.Settings(liveness_timeout_s=10, close_timeout_s=60)}
    if a.tracker:
        kwargs.update(backend=a.tracker, backend_options={"logdir": a.logdir})
    if a.legacy_backend:
        kwargs["backend"] = "gloo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        with ddp_run("ddp", "ddp-run", **kwargs) as run:
            deprecated = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
            train(run, a, attempt, deprecated)


def train(run: coordinator.Run, a: argparse.Namespace, attempt: int, deprecated: list[str]) -> None:
    """The training loop of one attempt, from the last checkpoint."""
    rank, world = run.rank, run.world_size
    assert dist.is_initialized() and dist.get_world_size() == world == 2, "ddp_run set up no process group"
    assert dist.get_backend() == "gloo"
    if a.legacy_backend:
        assert any("dist_backend='gloo'" in m for m in deprecated), deprecated
    model = DDP(nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = os.path.join(a.ckpt, f"rank{rank}.json")
    start = 0
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            start = json.load(f)["step"]
    run["hparams"] = {"lr": 0.1, "steps": a.steps}
    g = torch.Generator().manual_seed(rank)
    for s in range(start, a.steps):
        if rank == a.raise_rank and s == a.raise_at:
            run.wait(60)  # what was logged before the error is stored
            raise ValueError(f"loss diverged at step {s}")
        x = torch.randn(8, 4, generator=g)
        loss = (model(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()  # an all_reduce of the gradients over the process group
        opt.step()
        run.log({"train/metric": rank * 1000 + s + 0.5 * attempt, "train/loss": loss.item()}, step=s)
        if attempt == 0 and rank == a.die_rank and s == a.die_at:
            run.wait(60)
            os._exit(17)  # a crash: no goodbye, no exception
        if s % a.ckpt_every == a.ckpt_every - 1:
            run.wait(60)
            dist.barrier()
            with open(ckpt + ".tmp", "w") as f:
                json.dump({"step": s + 1}, f)
            os.replace(ckpt + ".tmp", ckpt)
    run.wait(60)
    with open(os.path.join(a.ckpt, f"done{rank}.json"), "w") as f:
        json.dump({"run_id": run.id, "attempt": attempt, "deprecated": deprecated}, f)


if __name__ == "__main__":
    main()
