"""Peers, same workload, same run: W&B offline, MLflow (sync/async), TensorBoard, Neptune offline, trackio.

Each peer runs in its own worker process (``python -m benchmarks.peers _peer '<json>'``), the
way its documentation recommends for DDP:

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
import importlib.metadata
import json
import os
import sqlite3
import struct
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.throughput import _child_env, _emit, _summary, _timer_overhead, _Worker

HOT_KEY = "hot/loss"

# name -> (distribution, DDP mode, description)
PEERS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("tensorboard", "rank0", "torch.utils.tensorboard SummaryWriter.add_scalar"),
    "wandb": ("wandb", "every", "wandb.init(mode=offline, group=...) per rank; run.log(dict, step=)"),
    "mlflow-sync": ("mlflow", "rank0", "mlflow.log_metric(s)(..., step=) (synchronous), SQLite store"),
    "mlflow-async": ("mlflow", "rank0", "mlflow.log_metric(s)(..., synchronous=False), SQLite store"),
    "neptune": ("neptune", "every", 'neptune.init_run(mode="offline", custom_run_id=...); run[k].append()'),
    "trackio": ("trackio", "rank0", "trackio.init(); trackio.log(dict, step=)"),
}


def peer_env(root: Path) -> dict[str, str]:
    """Environment of a peer worker: local/offline everything, no telemetry."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_DISABLE_GIT": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "TRACKIO_DIR": str(root / "trackio"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NEPTUNE_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def available(name: str) -> tuple[bool, str]:
    """(installed, version or the reason it is missing) without importing the package."""
    dist = PEERS[name][0]
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False, f"`{dist}` is not installed (pip install -e '.[bench]')"
    if name == "tensorboard":
        try:
            tv = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return False, "torch is not installed (torch.utils.tensorboard)"
        return True, f"tensorboard {v}, torch {tv}"
    return True, f"{dist} {v}"


# ============================================================================ adapters (worker side)


class _Adapter:
    def __init__(self, name: str, root: Path, rank: int, world: int, group: str) -> None:
        self.name, self.root, self.rank, self.world, self.group = name, root, rank, world, group

    def scalar(self, key: str, x: float, step: int) -> None:
        raise NotImplementedError

    def many(self, d: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Flush what the hot-path calls queued, so the throughput phase starts empty."""

    def finish(self) -> dict[str, Any]:
        return {}


class _TensorBoard(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(self.root / "tb" / f"rank{self.rank}"))
        self.scalar = self.w.add_scalar  # type: ignore[method-assign]

    def many(self, d: dict[str, float], step: int) -> None:
        add = self.w.add_scalar
        for k, v in d.items():
            add(k, v, step)

    def drain(self) -> None:
        self.w.flush()

    def finish(self) -> dict[str, Any]:
        self.w.flush()
        self.w.close()
        return {}


class _WandB(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        import wandb

        d = self.root / "wandb" / f"rank{self.rank}"
        d.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
        )
        self.run = wandb.init(
            project="bench",
            group=self.group,
            name=f"rank{self.rank}",
            dir=str(d),
            mode="offline",
            settings=settings,
            reinit="create_new",
        )

    def scalar(self, key: str, x: float, step: int) -> None:
        self.run.log({key: x}, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        self.run.log(d, step=step)

    def finish(self) -> dict[str, Any]:
        self.run.finish()
        return {}


class _MLflow(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        import mlflow

        self.mlflow = mlflow
        self.sync = self.name == "mlflow-sync"
        mlflow.set_experiment("bench")
        self.run = mlflow.start_run(run_name=f"{self.group}-rank{self.rank}")

    def scalar(self, key: str, x: float, step: int) -> None:
        self.mlflow.log_metric(key, x, step=step, synchronous=self.sync)

    def many(self, d: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(d, step=step, synchronous=self.sync)

    def drain(self) -> None:
        if not self.sync:
            self.mlflow.flush_async_logging()

    def finish(self) -> dict[str, Any]:
        if not self.sync:
            self.mlflow.flush_async_logging()
        self.mlflow.end_run()
        return {"run_id": self.run.info.run_id}


class _Neptune(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        import neptune

        self.run = neptune.init_run(
            mode="offline",
            custom_run_id=self.group[:36],
            name=self.group,
            capture_stdout=False,
            capture_stderr=False,
            capture_hardware_metrics=False,
            capture_traceback=False,
            git_ref=False,
            source_files=[],
        )
        self._h: dict[str, Any] = {}

    def scalar(self, key: str, x: float, step: int) -> None:
        h = self._h.get(key)
        if h is None:
            h = self._h[key] = self.run[key]
        h.append(x, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        for k, v in d.items():
            h = self._h.get(k)
            if h is None:
                h = self._h[k] = self.run[k]
            h.append(v, step=step)

    def drain(self) -> None:
        self.run.wait()

    def finish(self) -> dict[str, Any]:
        self.run.wait()
        self.run.stop()
        return {}


class _Trackio(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        import trackio

        self.trackio = trackio
        trackio.init(project="bench", name=f"{self.group}-rank{self.rank}", auto_log_cpu=False, auto_log_gpu=False)

    def scalar(self, key: str, x: float, step: int) -> None:
        self.trackio.log({key: x}, step=step)

    def many(self, d: dict[str, float], step: int) -> None:
        self.trackio.log(d, step=step)

    def finish(self) -> dict[str, Any]:
        self.trackio.finish()
        return {}


_ADAPTERS: dict[str, type[_Adapter]] = {
    "tensorboard": _TensorBoard,
    "wandb": _WandB,
    "mlflow-sync": _MLflow,
    "mlflow-async": _MLflow,
    "neptune": _Neptune,
    "trackio": _Trackio,
}


def peer_main(cfg: dict[str, Any]) -> int:
    import psutil

    name, rank, world = cfg["peer"], cfg["rank"], cfg["world"]
    root = Path(cfg["root"])
    os.chdir(root)  # peers that write relative to the working directory (neptune's .neptune) stay in root
    if name == "neptune":
        os.environ["NEPTUNE_DATA_DIRECTORY"] = str(root / "neptune" / f"rank{rank}")
    active = PEERS[name][1] == "every" or rank == 0
    t0 = time.monotonic()
    ad = _ADAPTERS[name](name, root, rank, world, cfg["group"]) if active else None
    init_s = time.monotonic() - t0
    keys = [f"train/m{j:03d}" for j in range(cfg["keys"])]
    steps = cfg["points"] // cfg["keys"]
    overhead, _ = _timer_overhead(20_000)
    _emit("READY", {"pid": os.getpid(), "init_s": init_s, "rss": psutil.Process().memory_info().rss})
    line = sys.stdin.readline()
    if not line.startswith("GO "):
        return 2
    t_start = float(line.split()[1])
    while time.monotonic() < t_start:
        time.sleep(max(0.0, min(0.005, t_start - time.monotonic())))
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
            out["hot"] = _summary(samples, overhead)
        ad.drain()
    # Every rank starts the throughput phase together, after rank 0's hot-path calls are drained.
    out["t_ready"] = time.monotonic()
    _emit("HOTDONE", {})
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
    _emit("DONE", out)
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


def _wandb_records(path: str) -> list[bytes]:
    """Records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    data = Path(path).read_bytes()
    ident, _magic, _ver = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B":
        raise ValueError(f"{path}: not a .wandb file")
    block = 32768
    pos, recs, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, ln, typ = struct.unpack("<IHB", data[pos : pos + 7])
        if typ == 0 and ln == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + ln]
        pos += 7 + ln
        if typ == 1:
            recs.append(chunk)
        elif typ == 2:
            buf = chunk
        elif typ == 3:
            buf += chunk
        elif typ == 4:
            recs.append(buf + chunk)
            buf = b""
    return recs


def _read_wandb(root: Path) -> dict[int, Counter[tuple[str, int]]]:
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[int, Counter[tuple[str, int]]] = {}
    for d in sorted((root / "wandb").glob("rank*")):
        c: Counter[tuple[str, int]] = Counter()
        for f in glob.glob(str(d / "wandb" / "offline-run-*" / "run-*.wandb")):
            for raw in _wandb_records(f):
                rec = pb.Record()
                rec.ParseFromString(raw)
                if rec.WhichOneof("record_type") != "history":
                    continue
                step = rec.history.step.num
                for it in rec.history.item:
                    k = it.key or "/".join(it.nested_key)
                    if not k.startswith("_"):
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
    env = _child_env(d)
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
    workers: list[_Worker] = []
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
            workers.append(_Worker(cfg, env, d / f"rank{r}.stderr", module="benchmarks.peers", sub="_peer"))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_peer":
        with contextlib.suppress(KeyboardInterrupt):
            return peer_main(json.loads(argv[1]))
        return 130
    print("internal worker of benchmarks.run (section 4); run `python -m benchmarks.run --full`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
