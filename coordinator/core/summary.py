"""The final report as a few lines a person reads at a glance: the headline, then anomalies first.

Rank 0's end-of-run message (the aggregator logs it when the run ends) and ``coordinator show``
print these lines; the whole report stays in the journal (``coordinator show --json``). A clean
run is one line. Otherwise the headline is followed by one line per anomaly, worst first: why
the run failed or was interrupted, then the counters that mean lost or refused data, then the
ones that mean the run recovered from something (resends, restarts, stragglers).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORWARD_LOSSES", "TROUBLE", "end_message", "headline", "summary_lines"]

TROUBLE: tuple[tuple[str, str], ...] = (
    ("bad_frames", "{n} bad frames refused (undecodable or invalid messages)"),
    ("gaps", "{n} batches refused for a gap in their sequence (resent after)"),
    ("late_points", "{n} late points (kept in their rank's series, missing from the main series)"),
    ("conflicts", "{n} field writes disagreed with another rank's (see conflicts)"),
    ("unknown_sender", "{n} messages from senders that never said hello"),
    ("refused_clients", "{n} TCP clients refused (no job secret)"),
    ("fenced_batches", "{n} batches of a replaced incarnation fenced off"),
    ("checkpoint_failures", "{n} WAL checkpoints failed (nothing lost: the log grows until one succeeds)"),
)
"""Report counters that mean data was refused or misplaced, or the store is in trouble, when not zero; worst first."""

FORWARD_LOSSES: tuple[tuple[str, str], ...] = (
    ("failed_points", "{n} points failed to reach it"),
    ("dropped_points", "{n} points it cannot store"),
    ("dropped_texts", "{n} texts it cannot store"),
    ("cut_texts", "{n} texts it stored cut short"),
    ("texts_skipped", "{n} texts not sent (it takes no text series)"),
    ("missing_files", "{n} artifact files gone from the run directory"),
)
"""A forwarder's counters that mean the tracker holds less than the journal, when they are not zero."""

_RECOVERED: tuple[tuple[str, str], ...] = (
    ("duplicate_batches", "{n} resent batches recognised and stored once"),
    ("rewinds", "{n} keys re-logged by a restarted rank (later steps replaced)"),
    ("replaced_points", "{n} points replaced by a later value of their step"),
    ("recovered_points", "{n} points recovered from the ranks' spools"),
    ("ranks_returned", "{n} times a rank marked lost came back"),
)


def headline(report: Mapping[str, Any], state: str | None = None) -> str:
    """``finished in 12.3 s: 4 ranks, 40000 points (10000 in the main series)``."""
    st = state or str(report.get("state", "?"))
    ranks = report.get("world_size", len(report.get("per_rank") or {}))
    dur = report.get("duration_s")
    took = f" in {_duration(float(dur))}" if isinstance(dur, int | float) else ""
    return (
        f"{st.upper() if st != 'finished' else st}{took}: {ranks} rank{'s' if ranks != 1 else ''}, "
        f"{report.get('points', 0)} points ({report.get('main_points', 0)} in the main series)"
    )


def summary_lines(report: Mapping[str, Any] | None, state: str | None = None) -> list[str]:
    """The report as a headline and one ``! ...`` line per anomaly, worst first.

    Args:
        report: the run's final report (``None``: the run has none yet).
        state: the run's state, if the report does not say it.

    Returns:
        One line for a clean run (``finished in 3.2 s: ... ; no anomalies``), else the headline
        followed by ``! <problem>`` lines (trouble) and ``~ <note>`` lines (recovered from).
    """
    if report is None:
        return [f"{state or 'running'}: no final report yet (the run is still open, or its aggregator died)"]
    trouble = _trouble(report)
    notes = _notes(report)
    head = headline(report, state)
    if not trouble and not notes:
        return [f"{head}; no anomalies"]
    return [head] + [f"! {t}" for t in trouble] + [f"~ {n}" for n in notes]


def end_message(run_id: str, report: Mapping[str, Any], run_path: Path, default_root: Path) -> str:
    """Rank 0's end-of-run message: the summary lines, where the run is, and the command to see it.

    Args:
        run_id: the run.
        report: its final report.
        run_path: the run's directory (``<root>/runs/<id>``).
        default_root: the store root ``coordinator`` uses without ``--dir`` here (``--dir`` is
            named in the command only when the run is elsewhere).
    """
    lines = summary_lines(report)
    lines[0] = f"run {run_id} {lines[0]}"
    root = run_path.parent.parent
    where = "" if root == default_root else f"--dir {shlex.quote(str(root))} "
    lines += [f"  stored in {run_path}", f"  see it:   coordinator {where}show {run_id}   (--json: the full report)"]
    return "\n".join(lines)


def _trouble(rep: Mapping[str, Any]) -> list[str]:
    """What went wrong, worst first: the run's reasons, lost ranks' points, refused data."""
    out = [str(r) for r in rep.get("reasons") or []]
    said = " ".join(out)
    for r, why in sorted((rep.get("failed_ranks") or {}).items(), key=lambda kv: int(kv[0])):
        if f"rank {r} " not in said:  # the reasons usually name it already
            out.append(f"rank {r} failed: {why}")
    for r, why in sorted((rep.get("interrupted_ranks") or {}).items(), key=lambda kv: int(kv[0])):
        if f"rank {r} " not in said:
            out.append(f"rank {r} interrupted: {why}")
    if rep.get("ranks_never_seen") and "never connected" not in said:
        out.append(f"ranks never seen: {', '.join(map(str, rep['ranks_never_seen']))}")
    for r, pr in sorted((rep.get("per_rank") or {}).items(), key=lambda kv: int(kv[0])):
        if pr.get("undelivered") and "undelivered" not in said:
            out.append(f"rank {r}: {pr['undelivered']} points undelivered")
        if pr.get("dropped_points"):
            out.append(f"rank {r}: {pr['dropped_points']} points dropped under backpressure (drop_oldest)")
    out += [text.format(n=rep[k]) for k, text in TROUBLE if rep.get(k)]
    for name, fw in sorted((rep.get("forwarders") or {}).items()):
        if not isinstance(fw, Mapping):
            continue
        if fw.get("error"):
            out.append(f"forwarder {name}: {fw['error']}")
        losses = [text.format(n=fw[k]) for k, text in FORWARD_LOSSES if isinstance(fw.get(k), int) and fw[k] > 0]
        if losses:
            out.append(f"forwarder {name}: " + "; ".join(losses))
    return out


def _notes(rep: Mapping[str, Any]) -> list[str]:
    """What the run recovered from: resends, restarts, replayed spools, stragglers."""
    out = [text.format(n=rep[k]) for k, text in _RECOVERED if rep.get(k)]
    restarted = {
        r: pr["incarnations"] for r, pr in (rep.get("per_rank") or {}).items() if pr.get("incarnations", 1) > 1
    }
    if restarted:
        out.append(
            "restarted: "
            + ", ".join(f"rank {r} ({n} lives)" for r, n in sorted(restarted.items(), key=lambda kv: int(kv[0])))
        )
    if rep.get("stragglers_seen"):
        out.append(f"stragglers seen: ranks {', '.join(map(str, rep['stragglers_seen']))}")
    return out


def _duration(s: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
