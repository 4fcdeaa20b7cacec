"""Section 4, peers on the same workload in the same run: trial workers, read-back of their output, the table.

Each peer runs in its own worker process (``python -m benchmarks.peers _peer '<json>'``), set
up by ``benchmarks.trackers``, the way its documentation recommends for DDP:

* TensorBoard (``torch.utils.tensorboard.SummaryWriter``): rank 0 only (what Lightning's
  ``TensorBoardLogger`` does: ``rank_zero_only``);
* W&B offline: every rank its own run, one ``group`` (W&B's "one run per process" method);
* MLflow (SQLite store; ``synchronous=True`` and ``synchronous=False``): rank 0 only (MLflow's
  DDP guidance: log from the main process);
* Neptune offline (``neptune`` 1.x): every rank, one shared ``custom_run_id`` (Neptune's
  "track distributed training" guide);
* trackio (local SQLite): rank 0 only.

Measured per peer: the hot path (one scalar per call, back to back, each call timed), points/s
until durable (a 100-key dict per step as fast as possible, then the peer's flush/finish; the
clock stops when that returns), and — reading the peer's own output back (event files, the
``.wandb`` log, SQLite, the offline op log) — how many of the points each rank logged are
there, missing, or duplicated. Nothing is sent over the network (offline/local modes; hub
telemetry off).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sqlite3
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, log, med
from benchmarks.hotpath import latency_summary, timer_overhead
from benchmarks.trackers import PEERS, available, open_tracker, peer_env
from benchmarks.workers import Worker, emit, wait_go

__all__ = ["HOT_KEY", "main", "peer_main", "peer_trial", "peers_section", "read_back"]

HOT_KEY = "hot/loss"


# ============================================================================ worker (one rank)


def peer_main(cfg: dict[str, Any]) -> int:
    """``_peer '<json>'``: one rank of a peer trial (hot-path calls, then the durable phase), over stdin/stdout."""
    import psutil

    name, rank = cfg["peer"], cfg["rank"]
    root = Path(cfg["root"])
    os.chdir(root)  # peers that write relative to the working directory (neptune's .neptune) stay in root
    if name == "neptune":
        os.environ["NEPTUNE_DATA_DIRECTORY"] = str(root / "neptune" / f"rank{rank}")
    active = PEERS[name][1] == "every" or rank == 0
    t0 = time.monotonic()
    group = cfg["group"]
    ad = open_tracker(name, root, f"rank{rank}", run_name=f"{group}-rank{rank}", group=group) if active else None
    init_s = time.monotonic() - t0
    keys = [f"train/m{j:03d}" for j in range(cfg["keys"])]
    steps = cfg["points"] // cfg["keys"]
    overhead, _ = timer_overhead(20_000)
    emit("READY", {"pid": os.getpid(), "init_s": init_s, "rss": psutil.Process().memory_info().rss})
    t_start = wait_go()
    if t_start is None:
        return 2
    out: dict[str, Any] = {"active": active}
    if ad is not None:
        n = cfg["hot_calls"]
        if n:
            pc = time.perf_counter_ns
            scalar = ad.scalar
            samples = array("q", bytes(8 * n))
            for i in range(n):
                x = i * 0.5
                t_a = pc()
                scalar(HOT_KEY, x, i)
                t_b = pc()
                samples[i] = t_b - t_a
            out["hot"] = latency_summary(samples, overhead)
        ad.drain()
    # Every rank starts the throughput phase together, after rank 0's hot-path calls are drained.
    out["t_ready"] = time.monotonic()
    emit("HOTDONE", {})
    sys.stdin.readline()
    if ad is not None:
        t_a = time.monotonic()
        many = ad.many
        off = float(rank)
        step0 = cfg["step0"]  # after the hot path's steps: some peers drop steps that go back
        for s in range(step0, step0 + steps):
            many(dict.fromkeys(keys, s * 8.0 + off), s)
        out["t_logged"] = time.monotonic()
        out.update(ad.finish())
        out["t_end"] = time.monotonic()
        out["t_begin"] = t_a
        out["log_s"] = out["t_logged"] - t_a
        out["finish_s"] = out["t_end"] - out["t_logged"]
    out["rss"] = psutil.Process().memory_info().rss
    emit("DONE", out)
    sys.stdin.readline()
    return 0


# ============================================================================ read back (parent side)


def _read_tb(root: Path) -> dict[int, Counter[tuple[str, int]]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[int, Counter[tuple[str, int]]] = {}
    for d in sorted((root / "tb").glob("rank*")):
        c: Counter[tuple[str, int]] = Counter()
        for f in sorted(d.glob("events.out.tfevents.*")):
            for ev in EventFileLoader(str(f)).Load():
                for v in ev.summary.value:
                    c[(v.tag, int(ev.step))] += 1
        out[int(d.name[4:])] = c
    return out


def _read_wandb(root: Path) -> dict[int, Counter[tuple[str, int]]]:
    # The library's reader of W&B's offline transaction log (the wandb package has none).
    from coordinator.forward.wandb import read_offline_history

    out: dict[int, Counter[tuple[str, int]]] = {}
    for d in sorted((root / "wandb").glob("rank*")):
        c: Counter[tuple[str, int]] = Counter()
        for f in glob.glob(str(d / "wandb" / "offline-run-*" / "run-*.wandb")):
            for row in read_offline_history(f):
                step = int(row["_step"])  # W&B's step column: the step= of the log() call
                for k in row:
                    if not k.startswith("_"):  # W&B's own columns (_step, _timestamp, _runtime)
                        c[(k, step)] += 1
        out[int(d.name[4:])] = c
    return out


def _read_mlflow(root: Path, group: str) -> dict[int, Counter[tuple[str, int]]]:
    out: dict[int, Counter[tuple[str, int]]] = {}
    db = root / "mlflow.db"
    if not db.exists():
        return out
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.name, m.key, m.step, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.name LIKE ? GROUP BY r.name, m.key, m.step",
            (f"{group}-rank%",),
        ).fetchall()
    finally:
        con.close()
    for name, key, step, n in rows:
        out.setdefault(int(name.rsplit("rank", 1)[1]), Counter())[(key, int(step))] += n
    return out


def _read_neptune(root: Path) -> dict[int, Counter[tuple[str, int]]]:
    out: dict[int, Counter[tuple[str, int]]] = {}
    for d in sorted((root / "neptune").glob("rank*")):
        c: Counter[tuple[str, int]] = Counter()
        for f in sorted(d.glob("**/data-*.log")):
            with open(f) as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    op = json.loads(line).get("obj", {})
                    if op.get("type") == "LogFloats":
                        k = "/".join(op["path"])
                        for v in op["values"]:
                            c[(k, int(v["step"]))] += 1
        out[int(d.name[4:])] = c
    return out


def _read_trackio(root: Path, group: str) -> dict[int, Counter[tuple[str, int]]]:
    out: dict[int, Counter[tuple[str, int]]] = {}
    db = root / "trackio" / "bench.db"
    if not db.exists():
        return out
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT run_name, step, metrics FROM metrics WHERE run_name LIKE ?", (f"{group}-rank%",)
        ).fetchall()
    finally:
        con.close()
    for name, step, metrics in rows:
        c = out.setdefault(int(name.rsplit("rank", 1)[1]), Counter())
        for k in json.loads(metrics):
            if k not in ("timestamp", "step", "_timestamp", "_step"):
                c[(k, int(step))] += 1
    return out


def read_back(name: str, root: Path, group: str) -> dict[int, Counter[tuple[str, int]]]:
    """Per rank, how many times each (key, step) is in peer ``name``'s output under ``root``."""
    if name == "tensorboard":
        return _read_tb(root)
    if name == "wandb":
        return _read_wandb(root)
    if name.startswith("mlflow"):
        return _read_mlflow(root, group)
    if name == "neptune":
        return _read_neptune(root)
    if name == "trackio":
        return _read_trackio(root, group)
    raise ValueError(name)


# ============================================================================ trial (parent side)


def peer_trial(
    name: str, world: int, points: int, hot_calls: int, tmp: Path, label: str, keys: int = 100, timeout: float = 600
) -> dict[str, Any]:
    """``world`` processes of peer ``name``; returns timings and the read-back accounting."""
    d = tmp / label
    d.mkdir(parents=True)
    env = child_env(d)
    env.update(peer_env(d))
    mode = PEERS[name][1]
    group = f"g{os.getpid()}-{label}"
    steps = points // keys
    res: dict[str, Any] = {
        "peer": name,
        "world": world,
        "mode": mode,
        "label": label,
        "keys": keys,
        "points_per_rank": steps * keys,
        "problems": [],
    }
    workers: list[Worker] = []
    try:
        for r in range(world):
            cfg = {
                "peer": name,
                "rank": r,
                "world": world,
                "root": str(d),
                "group": group,
                "keys": keys,
                "points": steps * keys,
                "hot_calls": hot_calls if r == 0 else 0,
                "step0": hot_calls,
            }
            workers.append(Worker(cfg, env, d / f"rank{r}.stderr", module="benchmarks.peers", sub="_peer"))
        ready = [w.expect("READY", time.monotonic() + 180) for w in workers]
        res["init_s"] = max(x["init_s"] for x in ready)
        t_start = time.monotonic() + 0.3
        for w in workers:
            w.send(f"GO {t_start!r}")
        for w in workers:
            w.expect("HOTDONE", time.monotonic() + timeout)
        for w in workers:
            w.send("GO2")
        done = [w.expect("DONE", time.monotonic() + timeout) for w in workers]
        act = [x for x in done if x["active"]]
        res["hot"] = done[0].get("hot")
        t_begin = max(x["t_begin"] for x in act)  # after the hot-path calls
        t_end = max(x["t_end"] for x in act)
        res["active_ranks"] = len(act)
        res["logged_points"] = len(act) * steps * keys
        res["elapsed"] = t_end - t_begin
        res["log_s"] = max(x["log_s"] for x in act)
        res["finish_s"] = max(x["finish_s"] for x in act)
        res["pps"] = res["logged_points"] / res["elapsed"]
        res["rss"] = max(x["rss"] for x in done)
        for w in workers:
            w.send("STOP")
    except Exception as e:
        res["problems"].append(f"{name}: {type(e).__name__}: {e}")
    finally:
        for w in workers:
            code = w.close(120)
            if code != 0:
                res["problems"].append(f"{name} rank {w.rank} exit code {code}: {w.stderr_tail(800)}")
    if "elapsed" in res:
        try:
            got = read_back(name, d, group)
            lost = dup = found = 0
            expected_keys = [f"train/m{j:03d}" for j in range(keys)]
            for r in range(world):
                if mode == "rank0" and r != 0:
                    continue
                c = got.get(r, Counter())
                for k in expected_keys:
                    for s in range(hot_calls, hot_calls + steps):
                        n = c.get((k, s), 0)
                        found += min(n, 1)
                        lost += n == 0
                        dup += max(0, n - 1)
            res.update(found=found, lost=lost, duplicated=dup)
            if lost or dup:
                res["problems"].append(f"{name}: read back {found} points, {lost} missing, {dup} duplicated")
        except Exception as e:
            res["problems"].append(f"{name}: could not read the output back: {type(e).__name__}: {e}")
    res["ok"] = not res["problems"]
    return res


# ============================================================================ suite section 4


def peers_section(quick: bool, tmp: Path, repeats: int) -> dict[str, Any]:
    """Section 4 of the suite: each installed peer's trials (``--quick``: two of them, one process) and medians."""
    if quick:
        plan = {"tensorboard": (20_000, 2_000), "trackio": (50_000, 5_000)}
        worlds = (1,)
    else:
        plan = {
            "tensorboard": (200_000, 20_000),
            "wandb": (100_000, 5_000),
            "mlflow-sync": (10_000, 300),
            "mlflow-async": (50_000, 3_000),
            "neptune": (50_000, 10_000),
            "trackio": (200_000, 20_000),
        }
        worlds = (1, 4)
    out: dict[str, Any] = {"peers": {}, "skipped_quick": [] if not quick else [p for p in PEERS if p not in plan]}
    for name in PEERS:
        ok, ver = available(name)
        entry: dict[str, Any] = {
            "available": ok,
            "version": ver,
            "mode": PEERS[name][1],
            "how": PEERS[name][2],
            "trials": [],
        }
        out["peers"][name] = entry
        if not ok or name not in plan:
            continue
        points, hot = plan[name]
        for rep in range(repeats):
            for world in worlds:
                label = f"peer-{name}-n{world}-r{rep}"
                log(f"4: {label}: {points:,} points per logging rank, {hot:,} hot-path calls")
                t = peer_trial(name, world, points, hot if world == 1 else 0, tmp, label)
                entry["trials"].append(t)
                log(
                    f"   -> {t.get('pps', 0):,.0f} points/s; hot p50 {((t.get('hot') or {}).get('p50') or 0):.1f} µs;"
                    f" lost {t.get('lost')} dup {t.get('duplicated')} "
                    f"{'' if t['ok'] else t['problems'][:2]}"
                )
        for world in worlds:
            ts = [t for t in entry["trials"] if t["world"] == world and t.get("pps")]
            if not ts:
                continue
            agg = {
                "pps": med([t["pps"] for t in ts]),
                "pps_all": [round(t["pps"]) for t in ts],
                "log_s": med([t["log_s"] for t in ts]),
                "finish_s": med([t["finish_s"] for t in ts]),
                "lost": sum(t.get("lost", 0) for t in ts),
                "duplicated": sum(t.get("duplicated", 0) for t in ts),
                "found": sum(t.get("found", 0) for t in ts),
                "active": ts[0]["active_ranks"],
                "init_s": med([t["init_s"] for t in ts]),
                "rss": max(t.get("rss", 0) for t in ts),
                "points": ts[0]["logged_points"],
                "ok": all(t["ok"] for t in ts),
            }
            hots = [t["hot"] for t in ts if t.get("hot")]
            if hots:
                agg["hot"] = {
                    "p50": med([h["p50"] for h in hots]),
                    "p99": med([h["p99"] for h in hots]),
                    "max": max(h["max"] for h in hots),
                    "n": sum(h["n"] for h in hots),
                }
            entry[f"w{world}"] = agg
    return out


def main(argv: list[str] | None = None) -> int:
    """Dispatch the internal ``_peer`` worker sub-command."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_peer":
        with contextlib.suppress(KeyboardInterrupt):
            return peer_main(json.loads(argv[1]))
        return 130
    print("internal worker of benchmarks.run (section 4); run `python -m benchmarks.run --full`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
