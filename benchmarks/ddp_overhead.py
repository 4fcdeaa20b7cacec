"""Training overhead: a CPU DDP job (gloo, small MLP) timed per step, with and without logging.

Launched by ``benchmarks.run`` (section 5) as::

    python -m torch.distributed.run --standalone --nproc_per_node=4 -m benchmarks.ddp_overhead \\
        --out RESULT.json --steps 200 --repeats 5 --variants none,coordinator,...

All variants run inside one launch, in blocks of ``--steps`` steps, interleaved (the order
rotates every repeat so drift of the shared machine hits every variant alike), after one
warm-up block. Every block: set up (open the run / writer), ``barrier``, time each training
step including its logging, ``barrier``, tear down (drain/close: timed separately, not in the
step time). Variants:

* ``none`` — no logging;
* ``coordinator`` — every rank ``run.log(<100 metrics>, step=s)`` every step;
* ``coordinator-flush50ms`` — the same with ``init_run(flush_interval_s=0.05)`` instead of the
  default 5 ms (diagnostic: how much of the cost is the sender thread waking up);
* ``peer:<name>`` — rank 0 only logs the same 100 metrics through a peer (TensorBoard,
  W&B offline, MLflow async, trackio, Neptune offline);
* ``allreduce`` — Lightning's ``sync_dist=True`` pattern: one ``all_reduce`` per metric (100
  per step), then rank 0 keeps the means (written to TensorBoard when it is installed);
* ``allreduce-packed`` — the same 100 metrics packed into one tensor, one ``all_reduce``.

The metrics are 100 floats derived from the step's loss (``loss.item()`` once, shared by every
logging variant). Step time of a block = the slowest rank's mean (DDP runs at that pace);
each variant's figure is the median over the repeats; slowdown = median / median(none) - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_METRICS = 100


class _Logger:
    """One variant's logging, set up and torn down around a block."""

    def __init__(self, variant: str, rank: int, world: int, root: Path, block: int) -> None:
        self.variant, self.rank, self.world, self.root, self.block = variant, rank, world, root, block
        self.keys = [f"train/m{j:03d}" for j in range(N_METRICS)]
        self.obj: Any = None
        self.tb: Any = None
        if variant.startswith("coordinator"):
            import coordinator

            extra = {"flush_interval_s": 0.05} if variant == "coordinator-flush50ms" else {}
            self.obj = coordinator.init_run(
                project="bench", name=f"ddp-block{block}", dir=root / "coordinator", handle_sigterm=False, **extra
            )
        elif variant.startswith("peer:") and rank == 0:
            self.obj = _open_peer(variant[5:], root, block)
        elif variant.startswith("allreduce") and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(root / "tb-allreduce" / f"block{block}"))
            except ImportError:
                self.tb = None

    def log(self, loss: Any, step: int) -> None:
        v = self.variant
        if v == "none":
            return
        x = loss.item()
        if v.startswith("coordinator"):
            self.obj.log(dict(zip(self.keys, [x + j for j in range(N_METRICS)], strict=True)), step=step)
        elif v.startswith("peer:"):
            if self.obj is not None:
                self.obj(dict(zip(self.keys, [x + j for j in range(N_METRICS)], strict=True)), step)
        elif v == "allreduce":
            import torch
            import torch.distributed as dist

            means = []
            for j in range(N_METRICS):  # Lightning: self.log(k, v, sync_dist=True) -> one all_reduce per value
                t = torch.tensor(x + j)
                dist.all_reduce(t)
                means.append(float(t) / self.world)
            if self.rank == 0:
                self._rank0(means, step)
        elif v == "allreduce-packed":
            import torch
            import torch.distributed as dist

            t = torch.tensor([x + j for j in range(N_METRICS)])
            dist.all_reduce(t)
            if self.rank == 0:
                self._rank0((t / self.world).tolist(), step)
        else:
            raise ValueError(v)

    def _rank0(self, values: list[float], step: int) -> None:
        if self.tb is not None:
            for k, val in zip(self.keys, values, strict=True):
                self.tb.add_scalar(k, val, step)

    def close(self) -> None:
        if self.variant.startswith("coordinator"):
            self.obj.stop()
        elif self.variant.startswith("peer:") and self.obj is not None:
            self.obj.close()  # type: ignore[attr-defined]
        if self.tb is not None:
            self.tb.close()


class _PeerLog:
    def __init__(self, log: Any, close: Any) -> None:
        self._log = log
        self.close = close

    def __call__(self, d: dict[str, float], step: int) -> None:
        self._log(d, step)


def _open_peer(name: str, root: Path, block: int) -> _PeerLog:
    if name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(log_dir=str(root / "tb" / f"block{block}"))

        def tb_log(d: dict[str, float], step: int) -> None:
            for k, v in d.items():
                w.add_scalar(k, v, step)

        return _PeerLog(tb_log, w.close)
    if name == "wandb":
        import wandb

        d = root / "wandb"
        d.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project="bench",
            name=f"ddp-block{block}",
            dir=str(d),
            mode="offline",
            reinit="create_new",
            settings=wandb.Settings(
                console="off", x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True, disable_git=True
            ),
        )
        return _PeerLog(lambda dd, s: run.log(dd, step=s), run.finish)
    if name == "mlflow-async":
        import mlflow

        mlflow.set_experiment("bench-ddp")
        mlflow.start_run(run_name=f"ddp-block{block}")

        def ml_close() -> None:
            mlflow.flush_async_logging()
            mlflow.end_run()

        return _PeerLog(lambda dd, s: mlflow.log_metrics(dd, step=s, synchronous=False), ml_close)
    if name == "trackio":
        import trackio

        trackio.init(project="bench-ddp", name=f"ddp-block{block}", auto_log_cpu=False, auto_log_gpu=False)
        return _PeerLog(lambda dd, s: trackio.log(dd, step=s), trackio.finish)
    if name == "neptune":
        import neptune

        run = neptune.init_run(
            mode="offline",
            capture_stdout=False,
            capture_stderr=False,
            capture_hardware_metrics=False,
            capture_traceback=False,
            git_ref=False,
            source_files=[],
        )

        def nep_log(d: dict[str, float], step: int) -> None:
            for k, v in d.items():
                run[k].append(v, step=step)

        def nep_close() -> None:
            run.wait()
            run.stop()

        return _PeerLog(nep_log, nep_close)
    raise ValueError(f"unknown peer {name!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.ddp_overhead")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="none,coordinator,allreduce,allreduce-packed")
    p.add_argument("--root", default=None)
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    root = Path(args.root or tempfile.mkdtemp(prefix="ddp-bench-"))
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    xb = torch.randn(64, 256, generator=gen)
    yb = torch.randint(0, 10, (64,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    step = 0
    block = 0

    def run_block(variant: str) -> dict[str, float]:
        nonlocal step, block
        block += 1
        t0 = time.monotonic()
        lg = _Logger(variant, rank, world, root, block)
        setup_s = time.monotonic() - t0
        dist.barrier()
        times = []
        pc = time.perf_counter
        for _ in range(args.steps):
            t_a = pc()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            lg.log(loss, step)
            times.append(pc() - t_a)
            step += 1
        dist.barrier()
        t0 = time.monotonic()
        lg.close()
        close_s = time.monotonic() - t0
        mine = torch.tensor([statistics.fmean(times), statistics.median(times), setup_s, close_s], dtype=torch.float64)
        allr = [torch.zeros(4, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(allr, mine)
        dist.barrier()
        return {
            "mean_s": max(float(t[0]) for t in allr),  # the slowest rank sets the pace
            "median_s": max(float(t[1]) for t in allr),
            "setup_s": max(float(t[2]) for t in allr),
            "close_s": max(float(t[3]) for t in allr),
        }

    run_block("none")  # warm-up (not recorded)
    t_all = time.monotonic()
    for rep in range(args.repeats):
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for v in order:
            results[v].append(run_block(v))
    wall = time.monotonic() - t_all
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "world": world,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "wall_s": wall,
                    "results": results,
                    "torch": torch.__version__,
                }
            )
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Every result is written and every logger closed by now. Skip interpreter teardown: twice in
    # about 20 launches a rank aborted there with a C++ "terminate called without an active
    # exception" (a native thread torn down at exit; not reproducible on demand), which would turn
    # a finished measurement into a failed job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
