"""py-spy profiling of benchmark processes: start and stop a recorder, summarise its collapsed stacks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["profile_summary", "pyspy_start", "stop_recorder"]


def pyspy_start(pid: int, out: Path, threads: bool) -> subprocess.Popen[bytes] | None:
    """Record ``pid`` with py-spy (raw collapsed stacks) into ``out``; None when py-spy is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return None
    cmd = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"]
    if threads:
        cmd.append("--threads")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_recorder(p: subprocess.Popen[bytes] | None) -> None:
    """Stop a recorder (py-spy, perf) so that it writes its file (SIGINT), killing it if it hangs."""
    if p is None:
        return
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def profile_summary(path: Path, top: int = 14) -> list[str]:
    """Self and inclusive sample shares of the hottest functions in a py-spy raw (collapsed) file."""
    if not path.exists():
        return [f"(no profile at {path})"]
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    thread_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        cnt = int(n)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            thread_c[frames[0]] += cnt
            frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += cnt
        names = [re.sub(r" \((?:[^()]*/)?([^()/]+:\d+)\)$", r" (\1)", f) for f in frames]
        self_c[names[-1]] += cnt
        for f in set(re.sub(r":\d+\)$", ")", f) for f in names):
            incl[f] += cnt
    if not total:
        return ["(empty profile)"]
    out = [f"{total} samples"]
    if thread_c:
        out.append("threads: " + ", ".join(f"{t} {c / total:.0%}" for t, c in thread_c.most_common(4)))
    out.append("self time (leaf frame):")
    out += [f"  {c / total:6.1%}  {f}" for f, c in self_c.most_common(top)]
    out.append("inclusive:")
    out += [f"  {c / total:6.1%}  {f}" for f, c in incl.most_common(top)]
    return out
