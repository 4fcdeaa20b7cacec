"""Lightning's ``sync_dist=True`` versus ``CoordinatorLogger``: step time of a CPU DDP job logging 20 metrics.

Run from the repository root (``pip install -e '.[torch,lightning]'``; TensorBoard, from the
``bench`` extra, makes Lightning's default logger TensorBoard instead of CSV)::

    python -m benchmarks.lightning_overhead --quick     # about 1 minute on 2 cores
    python -m benchmarks.lightning_overhead             # 5 repeats x 150 steps

One job: ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` (Lightning starts the second
process by re-running this module with ``--worker``), a small MLP (256-512-512-10, batch 64,
gloo). The job fits one fresh ``Trainer`` per block of ``--steps`` steps; the variants' blocks
are interleaved (the order rotates every repeat, after one warm-up block), so drift of a shared
machine hits every variant alike. Variants:

* ``none`` — no ``self.log`` and ``logger=False``: the baseline;
* ``self_log`` — the 20 ``self.log(k, v)`` calls without ``sync_dist`` and ``logger=False``:
  Lightning's own bookkeeping of ``self.log``, which every variant that logs pays (diagnostic);
* ``sync_dist`` — ``self.log(k, v, sync_dist=True)`` for 20 metrics per step with Lightning's
  default logger (TensorBoard when installed, else CSV; rank 0 writes): one blocking
  ``all_reduce`` per metric per step, the usual way to get a cross-rank mean;
* ``coordinator`` — the same 20 ``self.log(k, v)`` without ``sync_dist``, with
  ``CoordinatorLogger``: every rank logs its own values, the aggregator stores the mean.

Also measured: the time spent inside ``CoordinatorLogger.log_metrics`` per step (rank 0).
Step time = the time between consecutive ``on_train_batch_start`` calls on rank 0 (one whole loop
iteration: data, forward, backward, optimizer, ``self.log``, the loggers), the first two of a
block dropped; DDP keeps the ranks in step, so rank 0's pace is the job's. A variant's figure is
the median over its blocks of the block's mean; overhead = figure / figure(none) - 1. Every
``coordinator`` block's run is read back: each of the 20 keys holds every step once per rank and
in the main series, and the run is ``finished``.

``lightning_section(quick, tmp)`` returns the measurements as a dict (for ``benchmarks.run``);
``markdown(result)`` renders them; ``main()`` does both and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, exit_without_teardown, kill_tree, log, mark, med, run_job

__all__ = ["N_METRICS", "VARIANTS", "lightning_section", "main", "markdown"]

N_METRICS = 20
VARIANTS = ("none", "self_log", "sync_dist", "coordinator")
_SKIP = 2  # first step deltas of a block dropped (the fit's first iterations)


# ============================================================================ parent side


def lightning_section(quick: bool, tmp: Path, steps: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Launch the Lightning job (2 processes), wait for it (bounded), summarise and verify its blocks."""
    steps = steps or (30 if quick else 150)
    repeats = repeats or (2 if quick else 5)
    d = tmp / "lightning"
    d.mkdir(parents=True, exist_ok=True)
    out_json = d / "result.json"
    env = child_env(d)
    # child_env gives each trial a TORCHELASTIC_RUN_ID; Lightning would then believe torchrun
    # started it and not start its second process.
    env.pop("TORCHELASTIC_RUN_ID", None)
    cmd = [sys.executable, "-m", "benchmarks.lightning_overhead", "--worker", "--out", str(out_json)]
    cmd += ["--steps", str(steps), "--repeats", str(repeats), "--root", str(d)]
    res: dict[str, Any] = {
        "variants": list(VARIANTS),
        "steps": steps,
        "repeats": repeats,
        "metrics": N_METRICS,
        "command": f"python -m benchmarks.lightning_overhead --steps {steps} --repeats {repeats}",
        "problems": [],
    }
    log(f"lightning: 2 ranks x {len(VARIANTS)} variants x {repeats} repeats x {steps} steps")
    logf = d / "job.log"
    t0 = time.monotonic()
    code = run_job(cmd, d, env, logf, 300 if quick else 1800)
    _wait_gone(str(out_json), 60)
    res["wall_s"] = time.monotonic() - t0
    if code != 0 or not out_json.exists():
        text = logf.read_text(errors="replace")
        res["problems"].append(f"the Lightning job exited with {code}:\n{text[-2000:]}")
        if not out_json.exists():
            return res
    raw = json.loads(out_json.read_text())
    res["raw"] = raw
    res["default_logger"] = raw.get("default_logger")
    base = med([b["mean_s"] for b in raw["results"]["none"]])
    self_log = med([b["mean_s"] for b in raw["results"]["self_log"]])
    rows = []
    for v in VARIANTS:
        bs = raw["results"][v]
        m = med([b["mean_s"] for b in bs])
        rows.append(
            {
                "variant": v,
                "step_ms": m * 1000,
                "step_ms_all": [round(b["mean_s"] * 1000, 3) for b in bs],
                "median_step_ms": med([b["median_s"] for b in bs]) * 1000,
                "overhead_ms": (m - base) * 1000,
                "overhead": m / base - 1,
                "beyond_self_log_ms": (m - self_log) * 1000,
                "close_s": med([b["close_s"] for b in bs]),
                "log_metrics_us": med([b["log_metrics_s"] for b in bs]) * 1e6,
            }
        )
    res["rows"] = rows
    by = {r["variant"]: r for r in rows}
    res["met"] = by["coordinator"]["overhead"] < by["sync_dist"]["overhead"]
    res["verified"] = _verify(Path(raw["store"]), raw["runs"], steps, res["problems"])
    return res


def _wait_gone(marker: str, timeout: float) -> None:
    """Wait until no process whose command line names ``marker`` runs (the ranks); kill what is left."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in psutil.process_iter(["cmdline", "status"]):
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                left.append(p)
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                kill_tree(p.pid)
            return
        time.sleep(0.2)


def _verify(store: Path, runs: list[str], steps: int, problems: list[str]) -> bool:
    """Every coordinator block's run: finished, each key's every step once per rank and in the main series."""
    from coordinator.journal.store import MAIN_RANK, LocalStore, list_runs

    infos = {i.id: i for i in list_runs(store)}
    ok = True
    want = list(range(steps))
    for run_id in runs:
        info = infos.get(run_id)
        if info is None or info.state != "finished":
            problems.append(f"run {run_id}: {'missing' if info is None else info.state}")
            ok = False
            continue
        s = LocalStore(info.path / "run.db", readonly=True)
        try:
            for j in range(N_METRICS):
                key = f"train/m{j:02d}"
                for rank in (0, 1, MAIN_RANK):
                    got = [st for st, _ in s.values(key, rank)]
                    if got != want:
                        problems.append(f"run {run_id} {key} rank {rank}: {len(got)} points, want steps 0..{steps - 1}")
                        ok = False
        finally:
            s.close()
    return ok


def markdown(res: dict[str, Any]) -> str:
    """The section as markdown: one row per variant, the goal's status, problems."""
    lines = [
        f"### Lightning DDP on CPU (2 processes, gloo): {res['metrics']} metrics per step",
        "",
        f"`{res['command']}`; default logger of the `sync_dist` variant: {res.get('default_logger') or '-'}; "
        f"wall {res.get('wall_s', float('nan')):.0f} s",
        "",
    ]
    if "rows" in res:
        lines += [
            "| variant | step ms (median of blocks) | overhead vs none | beyond Lightning's self.log | per block ms "
            "| close s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["rows"]:
            over = "-" if r["variant"] == "none" else f"{r['overhead_ms']:+.3f} ms ({r['overhead'] * 100:+.1f}%)"
            beyond = f"{r['beyond_self_log_ms']:+.3f} ms" if r["variant"] in ("sync_dist", "coordinator") else "-"
            blocks = ", ".join(f"{x:.2f}" for x in r["step_ms_all"])
            lines.append(f"| {r['variant']} | {r['step_ms']:.3f} | {over} | {beyond} | {blocks} | {r['close_s']:.2f} |")
        by = {r["variant"]: r for r in res["rows"]}
        lines += [
            "",
            f"Goal: `CoordinatorLogger` overhead ({by['coordinator']['overhead'] * 100:+.1f}%) below "
            f"`sync_dist=True`'s ({by['sync_dist']['overhead'] * 100:+.1f}%): {mark(res['met'])}. "
            f"Coordinator runs read back (every step of every key once per rank and in the mean): "
            f"{'yes' if res['verified'] else '**no**'}. "
            f"Time inside `CoordinatorLogger.log_metrics` (rank 0, median of blocks): "
            f"{by['coordinator']['log_metrics_us']:.0f} µs per step; the rest of its overhead beyond "
            "`self.log` is CPU taken by the sender threads and the aggregator on a machine whose cores "
            "the training processes already use.",
        ]
    for p in res["problems"]:
        lines += ["", f"Problem: {p}"]
    return "\n".join(lines) + "\n"


# ============================================================================ the job (each rank)


def _timed(fn: Any, into: list[float]) -> Any:
    """``fn`` that appends the duration of every call to ``into``."""

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            into.append(time.perf_counter() - t0)

    return timed


def _worker(args: argparse.Namespace) -> int:
    """One rank: rank 0 is started by ``main``'s parent, rank 1 by Lightning (the same command line)."""
    import warnings

    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import coordinator
    from coordinator.integrations.lightning import CoordinatorLogger

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    root = Path(args.root)
    keys = [f"train/m{j:02d}" for j in range(N_METRICS)]

    class Bench(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
            self.variant = "none"

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            if self.variant != "none":
                sync = self.variant == "sync_dist"
                d = loss.detach()
                for j, k in enumerate(keys):
                    self.log(k, d + j, sync_dist=sync)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.t: list[float] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.t.append(time.perf_counter())

    g = torch.Generator().manual_seed(0)
    n = 64 * 2 * (args.steps + 4)
    data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
    model = Bench()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    runs: list[str] = []
    default_logger = ""
    block = 0

    def run_block(variant: str) -> dict[str, float]:
        nonlocal block, default_logger
        block += 1
        in_logger: list[float] = []
        logger: Any = {"none": False, "self_log": False, "sync_dist": True}.get(variant)
        if variant == "coordinator":
            settings = coordinator.Settings(dir=str(root / "coordinator"), handle_sigterm=False)
            logger = CoordinatorLogger("bench", f"lightning-block{block}", settings=settings)
            logger.log_metrics = _timed(logger.log_metrics, in_logger)
        timer = Timer()
        trainer = pl.Trainer(
            strategy="ddp",
            accelerator="cpu",
            devices=2,
            max_steps=args.steps,
            log_every_n_steps=1,
            logger=logger,
            callbacks=[timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(root / "pl"),
        )
        model.variant = variant
        trainer.fit(model, DataLoader(data, batch_size=64))
        if variant == "sync_dist" and trainer.logger is not None:
            default_logger = type(trainer.logger).__name__
        t0 = time.monotonic()
        if isinstance(logger, CoordinatorLogger):
            if trainer.global_rank == 0:
                runs.append(str(logger.version))
            logger.close()
        close_s = time.monotonic() - t0
        deltas = [b - a for a, b in zip(timer.t[_SKIP:], timer.t[_SKIP + 1 :], strict=False)]
        deltas.sort()
        return {
            "mean_s": sum(deltas) / len(deltas),
            "median_s": deltas[len(deltas) // 2],
            "close_s": close_s,
            "log_metrics_s": sum(in_logger) / len(in_logger) if in_logger else 0.0,
        }

    run_block("none")  # warm-up (not recorded); it also starts the second process
    for rep in range(args.repeats):
        k = rep % len(VARIANTS)
        for v in VARIANTS[k:] + VARIANTS[:k]:
            results[v].append(run_block(v))
    dist.barrier()
    if dist.get_rank() == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "results": results,
                    "runs": runs,
                    "store": str(root / "coordinator"),
                    "default_logger": default_logger,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "lightning": pl.__version__,
                    "torch": torch.__version__,
                }
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``--quick``/default: run the job and print the markdown table; ``--worker``: be one rank of it."""
    p = argparse.ArgumentParser(prog="benchmarks.lightning_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="30 steps x 2 repeats (CI size)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the result dict here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    with tempfile.TemporaryDirectory(prefix="lightning-bench-") as tmp:
        res = lightning_section(args.quick, Path(tmp), args.steps, args.repeats)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    code = main()
    if "--worker" in sys.argv:
        exit_without_teardown(code)
    sys.exit(code)
