"""The benchmark suite's entry point: coordinator vs the transport limit and vs peer trackers, in one run.

Run from the repository root (``pip install -e '.[torch,bench]'`` for the peers and plots)::

    python -m benchmarks.run --quick    # CI: under 2 minutes on 2 cores; peers mostly skipped
    python -m benchmarks.run --full     # everything (about 20-25 minutes on 2 cores)

Writes ``benchmarks/results/suite-<host>-<date>[-quick].md`` (tables, targets met/missed,
notes), one PNG per section next to it (each stamped with the command, versions and machine),
and the raw numbers as ``.json``. Every figure is a median over repeats made in this run; every
ratio (coordinator / limit, slowdown / no logging) is computed from numbers of this run.

Sections (details in each module's docstring):

1. hot path — ``run.log({"loss": x}, step=s)`` and ``run["loss"].append(x, step=s)`` on the
   training thread at the realistic load (100 metrics per step, 50 steps/s) and at full load, at
   the library's default (rings) and over the socket (``rings=False``, loads marked ``, socket``);
   mode ``disabled``; the sender thread's CPU share (≈ its GIL share) and its flush slices over the
   socket (``benchmarks.hotpath``); single scalars at new steps, calls during a flush and the GIL probe
   (``benchmarks.hotpatterns``); not in ``--quick``, the GIL's stretches themselves
   (``benchmarks.gil_holds``: uprobes, where root and ``perf`` are there);
2. throughput vs ranks (1, 2, 4, 8) and keys per call (1, 10, 100), durable, exactly-once
   verified (``benchmarks.throughput``);
3. the limit: raw PUSH/PULL with pre-built 1000-point batches (``benchmarks.limit``);
4. peers (``benchmarks.peers``, set up by ``benchmarks.trackers``);
5. training overhead in a CPU DDP job (``benchmarks.ddp_overhead``, under torchrun);
6. scale (64/256/1024 simulated senders, 4096 once in --full) and a soak (``benchmarks.scale_section``);
7. CPU per logged point, every process of a paced 4-rank job (``benchmarks.cpu_per_point``).

This module runs them and writes the results; the report is ``benchmarks.report``, the plots
``benchmarks.plots``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ENV_TO_CLEAR,
    RESULTS,
    ROOT,
    cpu_model,
    git_rev,
    kill_tree,
    leftovers,
    log,
    result_base,
    versions,
    write_atomic,
)
from benchmarks.cpu_per_point import cpu_section
from benchmarks.ddp_overhead import ddp_section
from benchmarks.gil_holds import measure as gil_measure
from benchmarks.gil_holds import report as gil_report
from benchmarks.hotpath import hot_section
from benchmarks.hotpatterns import patterns_section
from benchmarks.lightning_overhead import lightning_section
from benchmarks.peers import peers_section
from benchmarks.plots import plots
from benchmarks.report import notes, report
from benchmarks.sampler_cost import measure as sampler_measure
from benchmarks.scale_section import scale_section
from benchmarks.throughput import throughput_section
from benchmarks.trackers import PEERS, available

__all__ = ["main"]


def _machine() -> dict[str, Any]:
    """Host, CPU, cores, memory and kernel of this machine."""
    import platform

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    with contextlib.suppress(Exception):
        import psutil

        mem = psutil.virtual_memory().total
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable": usable,
        "mem_gib": None if mem is None else round(mem / 2**30, 1),
        "kernel": platform.release(),
    }


def _all_versions() -> dict[str, str]:
    """Versions of the data path (``versions``) plus torch, matplotlib and every peer (``missing`` if absent)."""
    v = dict(versions())
    for dist in ("torch", "matplotlib", "tensorboard", "wandb", "mlflow", "neptune", "trackio"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "missing"
    return v


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, write the report, plots and JSON; non-zero if a verification failed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="CI size: under 2 minutes on 2 cores; most peers skipped")
    g.add_argument("--full", action="store_true", help="every section at full size (~20-25 min on 2 cores)")
    p.add_argument(
        "--only", default="", help="comma list of sections to run: hot,throughput,peers,ddp,lightning,sampler,cpu,scale"
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per cell (default: 2 quick, 3 full)")
    p.add_argument("--no-write", action="store_true", help=f"do not write under {RESULTS}")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    args = p.parse_args(argv)
    quick = args.quick
    only = {s for s in args.only.split(",") if s}
    repeats = args.repeats or (2 if quick else 3)
    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    for k in ENV_TO_CLEAR:
        os.environ.pop(k, None)
    t_wall = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="coordinator-suite-"))
    log(f"working in {tmp}")
    res: dict[str, Any] = {}
    skipped: list[str] = []
    avail = {n: available(n)[0] for n in PEERS}

    def want(s: str) -> bool:
        return not only or s in only

    try:
        if want("hot"):
            log("1: hot path")
            res["hot"] = hot_section(quick, tmp, repeats if not quick else 2)
            log("1: hot path patterns and the GIL probe")
            pat = patterns_section(quick, tmp, repeats if not quick else 2, res["hot"]["overhead_ns"])
            res["hot"]["rows"] += pat["rows"]
            res["hot"]["checks"] += pat["checks"]
            res["hot"].update(gil=pat["gil"], probe_us=pat["probe_us"], no_step_in_ring=pat["no_step_in_ring"])
            if not quick:  # uprobes need root and perf; the quick suite (CI) has neither for sure
                log("1: the GIL's stretches (uprobes)")
                holds, why = gil_measure(6.0, 2)
                res["hot"]["gil_holds"] = {"lines": gil_report(holds)} if holds is not None else {"skipped": why}
        if want("throughput"):
            res["throughput"] = throughput_section(quick, tmp, 1 if quick else repeats)
            if quick:
                skipped.append("section 2/3 with 2 and 8 ranks and 10 keys/call, 1 repeat per cell")
        if want("peers"):
            res["peers"] = peers_section(quick, tmp, 1 if quick else 2)
            if quick:
                skipped.append(
                    f"peers {', '.join(res['peers']['skipped_quick'])} and the 4-process peer runs "
                    "(minutes of imports, service start-up and slow flushes)"
                )
        if want("ddp"):
            if importlib.util.find_spec("torch") is None:
                res["ddp"] = {"problems": ["torch is not installed (pip install -e '.[torch]')"], "missing": []}
            else:
                res["ddp"] = ddp_section(quick, tmp, avail)
                if quick:
                    skipped.append("DDP peers other than TensorBoard; DDP blocks of 30 steps x 2 repeats")
        if want("lightning"):
            if importlib.util.find_spec("lightning") is None:
                skipped.append("Lightning DDP (lightning is not installed: pip install -e '.[lightning]')")
            else:
                log("5b: Lightning DDP, CoordinatorLogger vs sync_dist")
                res["lightning"] = lightning_section(quick, tmp)
        if want("cpu"):
            if importlib.util.find_spec("torch") is None:
                res["cpu"] = {"problems": ["torch is not installed (pip install -e '.[torch]')"]}
            else:
                res["cpu"] = cpu_section(quick, tmp)
                if quick:
                    skipped.append("CPU per point: 2 repeats of 3 s windows (full: 5 of 10 s)")
        if want("sampler"):
            log("5c: system-metrics sampler cost")
            res["sampler"] = sampler_measure(quick)
        if want("scale"):
            res["scale"] = scale_section(quick, tmp, 1 if quick else 2)
            if quick:
                skipped.append("1024 and 4096 senders; the soak is 25 s instead of 10 minutes")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        left = leftovers()
        for line in left:
            with contextlib.suppress(Exception):
                kill_tree(int(line.split()[0]))
        if left:
            log(f"WARNING: child processes were still running (killed): {left}")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    cmd = " ".join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    meta = {
        "mode": "quick" if quick else "full",
        "command": cmd,
        "date": started.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": time.monotonic() - t_wall,
        "machine": _machine(),
        "versions": _all_versions(),
        "git": git_rev(),
        "load0": load0,
        "load1": os.getloadavg(),
        "repeats": repeats,
        "skipped": skipped,
    }
    res["meta_versions"] = meta["versions"]
    res["notes"] = notes(res)
    base = result_base("suite", started, quick)
    pngs: dict[str, str] = {}
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        pngs = plots(res, meta, base)
    md = report(res, meta, pngs)
    print(md)
    if not args.no_write:
        # with_name, not with_suffix: a host name with a dot must not lose the rest of the name.
        md_path = base.with_name(base.name + ".md")
        write_atomic(md_path, md + "\n")
        base.with_name(base.name + ".json").write_text(
            json.dumps({"meta": meta, "results": res}, default=str, indent=1)
        )
        log(f"written {md_path.relative_to(ROOT)} (+ .json, {len(pngs)} PNG)")
    failed = []
    if res.get("hot", {}).get("checks"):
        failed.append("hot-path delivery checks")
    for c in (res.get("throughput") or {}).get("cells", []):
        if not c["ok"]:
            failed.append(f"throughput n{c['world']} k{c['k']}")
    for r in (res.get("scale") or {}).get("rows", []):
        if not r["ok"]:
            failed.append(f"scale {r['senders']}")
    for t in (res.get("scale") or {}).get("paced", []):
        if not t["ok"]:
            failed.append(f"scale paced {t['senders']}")
    if res.get("scale") and not res["scale"]["soak"]["ok"]:
        failed.append("soak")
    if (res.get("ddp") or {}).get("problems"):
        failed.append("ddp")
    if (res.get("lightning") or {}).get("problems"):
        failed.append("lightning")
    if (res.get("cpu") or {}).get("problems"):
        failed.append("cpu")
    if (res.get("sampler") or {}).get("problems"):
        failed.append("sampler")
    if left:
        failed.append("stray processes")
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
