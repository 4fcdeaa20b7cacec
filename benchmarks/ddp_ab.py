"""A DDP comparison of chosen variants, each paired per repeat with its baseline: the command behind goal 2's figures.

The suite's section 5 (:mod:`benchmarks.ddp_overhead`) runs a fixed set of variants 5 times; a
claim about a 2% goal needs more repeats and sometimes other variants. This launches the same
job (4 ranks under torchrun, gloo, one launch, the variants interleaved) with the variants,
steps and repeats given, and prints each variant's step time, its slowdown against its
baseline's median, and the paired slowdown with its 95% interval (``common.paired_change``).
``none`` is always run; ``none+wake5ms`` too when a ``+wake5ms`` variant is asked for (the
baseline of those: see :mod:`benchmarks.ddp_overhead`).

    python -m benchmarks.ddp_ab --repeats 10 \\
        --variants coordinator+wake5ms,peer:trackio+wake5ms,peer:wandb+wake5ms
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.ddp_overhead import ddp_section
from benchmarks.report import paired_text
from benchmarks.trackers import PEERS, available

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ddp_ab", description=__doc__.split("\n")[0])
    ap.add_argument("--variants", required=True, help="comma-separated, as benchmarks.ddp_overhead names them")
    ap.add_argument("--repeats", type=int, default=10, help="blocks of each variant, interleaved (default 10)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per block (default 150)")
    args = ap.parse_args(argv)
    chosen = [v for v in args.variants.split(",") if v]
    avail = {p: available(p)[0] for p in PEERS}
    with tempfile.TemporaryDirectory(prefix="ddp-ab-") as d:
        res = ddp_section(False, Path(d), avail, chosen, (args.steps, args.repeats))
    print(f"`{res['command']}` ({res.get('wall_s', 0):.0f} s)")
    if res["missing"]:
        print(f"left out (not installed): {', '.join(res['missing'])}")
    for p in res["problems"]:
        print(p, file=sys.stderr)
    for r in res.get("rows", []):
        print(
            f"{r['variant']:28s} {r['step_ms']:7.3f} ms  vs {r['baseline']:13s} {r['slowdown']:+6.1%}  "
            f"paired {paired_text(r)}"
        )
    return 0 if res.get("rows") and not res["problems"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
