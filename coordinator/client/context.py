"""Environment capture: where a run's code came from and what ran it, written once at start.

A short-lived thread (never the training thread; ``init_run`` does not wait for it) writes
``sys/*`` fields through the run's internal writer (the user may not write ``sys/*``):

- rank 0 only, facts of the run: ``sys/git/commit``, ``sys/git/branch``, ``sys/git/dirty``
  (tracked files changed; untracked files do not count), ``sys/git/remote`` (credentials
  stripped), and when dirty ``git diff HEAD`` as the artifact ``sys/git/diff`` (its first
  10 MiB, warned when cut); ``sys/env/python``, ``sys/env/torch`` and ``sys/env/cuda`` (torch is
  never imported for this), ``sys/env/coordinator``, the installed distributions
  (``name==version`` lines, sorted) as the artifact ``sys/env/packages`` and their sha256 as
  ``sys/env/packages_hash``;
- every rank, facts of its process: ``sys/ranks/<r>/host``, ``pid``, ``argv`` (URL passwords
  and the values of secret-named options masked) and ``launcher`` (accelerate, torchrun, mpirun,
  slurm, lightning, spawn or plain).

Git runs as subprocesses with a timeout, in the working directory; no git, or not a repository:
no git fields, one debug line. ``Settings(capture_env=False)`` turns all of it off.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from coordinator.client.artifacts import copy_into_run
from coordinator.client.redaction import Redactor
from coordinator.client.view import field_from_wire
from coordinator.core.redact import MASK, is_secret_key, redact_text, redact_url
from coordinator.core.values import FieldValue
from coordinator.errors import ClosedError
from coordinator.transport.slices import GilSlicer

__all__ = [
    "CAPTURE_BUDGET_S",
    "MAX_DIFF_BYTES",
    "ContextCapture",
    "clean_remote",
    "detect_launcher",
    "env_facts",
    "git_facts",
    "name_version",
    "packages_text",
    "rank_facts",
    "redact_argv",
    "start_capture",
]

_log = logging.getLogger("coordinator")

MAX_DIFF_BYTES = 10 * 1024 * 1024
"""Most bytes of ``git diff HEAD`` stored as ``sys/git/diff``."""
CAPTURE_BUDGET_S = 10.0
"""All git commands of one capture together take at most this long; ``stop()`` waits as long."""
_MAX_ARGV_CHARS = 8192
_GIT_TIMEOUT_S = 5.0
_TOKEN_USER = re.compile(r"(?:gh[opusr]_|github_pat_|glpat-|xox[abp]-)|[A-Za-z0-9_\-]{20,}")
"""A URL's bare user part that is a credential: a known token prefix, or a long opaque string."""
_BARE_USER = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]+)@")

Write = Callable[[list[tuple[str, FieldValue]]], bool]
"""Writes ``sys/*`` fields into the run; False once the run is closed."""
SysWriter = Callable[[list[tuple[str, Any]], Callable[[dict[str, Any]], None]], None]
"""``Run._write_sys(items, view)``: queues ``sys/*`` fields, raises ``ClosedError`` once closed."""


def detect_launcher(environ: Mapping[str, str], *, spawned: bool = False) -> str:
    """What started this process: ``accelerate``, ``torchrun``, ``mpirun``, ``slurm``, ``lightning``,
    ``spawn`` (a multiprocessing child) or ``plain``.

    ``accelerate launch`` runs torchrun underneath, and ``mpirun`` inside a SLURM allocation
    inherits SLURM's variables: the more specific launcher is named.
    """
    if any(k.startswith("ACCELERATE_") for k in environ):
        return "accelerate"
    if environ.get("TORCHELASTIC_RUN_ID"):
        return "torchrun"
    if "OMPI_COMM_WORLD_RANK" in environ or "PMI_RANK" in environ:
        return "mpirun"
    if "SLURM_PROCID" in environ:
        return "slurm"
    # Lightning's own launcher starts its ranks with NODE_RANK/LOCAL_RANK and no RANK.
    if any(k.startswith("PL_") for k in environ) or ("NODE_RANK" in environ and "RANK" not in environ):
        return "lightning"
    return "spawn" if spawned else "plain"


def redact_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` with URL passwords masked and the value of every secret-named option masked:
    ``--api-key=X``, ``--token X``, ``wandb.api_key=X`` (a Hydra override)."""
    out: list[str] = []
    mask_next = False
    for raw in argv:
        arg = redact_text(raw)
        if mask_next and not arg.startswith("-"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        name, eq, value = arg.partition("=")
        if eq and value and is_secret_key(name.lstrip("-+~")):
            arg = f"{name}={MASK}"
        elif arg.startswith("-") and not eq and is_secret_key(arg.lstrip("-")):
            mask_next = True
        out.append(arg)
    return out


def clean_remote(url: str) -> str:
    """A git remote without credentials: ``user:password@`` -> ``user:***@``, and a bare user that is
    a token (``https://ghp_xxx@github.com/...``) -> ``***@``; ``git@host:org/repo`` is kept."""
    url = redact_url(url)

    def _bare(m: re.Match[str]) -> str:
        return f"{m['scheme']}{MASK}@" if _TOKEN_USER.match(m["user"]) else m[0]

    return _BARE_USER.sub(_bare, url)


def rank_facts(
    rank: int, *, argv: Iterable[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, FieldValue]:
    """``sys/ranks/<rank>/{host,pid,argv,launcher}`` of this process."""
    env = os.environ if environ is None else environ
    args = shlex.join(redact_argv(sys.argv if argv is None else argv))
    if len(args) > _MAX_ARGV_CHARS:
        args = args[: _MAX_ARGV_CHARS - 3] + "..."
    base = f"sys/ranks/{rank}"
    return {
        f"{base}/host": ("str", socket.gethostname()),
        f"{base}/pid": ("int", os.getpid()),
        f"{base}/argv": ("str", args),
        f"{base}/launcher": ("str", detect_launcher(env, spawned=multiprocessing.parent_process() is not None)),
    }


def env_facts() -> dict[str, FieldValue]:
    """``sys/env/{python,torch,cuda,coordinator}``; torch's only if installed, cuda's only if torch is
    already imported (never imported here) and built with CUDA."""
    facts: dict[str, FieldValue] = {"sys/env/python": ("str", f"{platform.python_version()} ({sys.executable})")}
    torch = sys.modules.get("torch")
    version = getattr(torch, "__version__", None) if torch is not None else _dist_version("torch")
    if version:
        facts["sys/env/torch"] = ("str", str(version))
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if cuda:
        facts["sys/env/cuda"] = ("str", str(cuda))
    ours = getattr(sys.modules.get("coordinator"), "__version__", None) or _dist_version("ddp-coordinator")
    if ours:
        facts["sys/env/coordinator"] = ("str", str(ours))
    return facts


def packages_text() -> str:
    """The installed distributions, one ``name==version`` line each, sorted.

    Only each distribution's header block is read (``Distribution.metadata`` parses the whole
    file, long description included, with the ``email`` package: 0.25 ms a distribution at the
    median and up to 4 ms in one stretch of Python, ~120 ms for 200 distributions), and the GIL
    is offered to the training thread between distributions: it runs while training starts.
    """
    slicer = GilSlicer()
    found: set[str] = set()
    for d in importlib.metadata.distributions():
        slicer.pause()
        line = _headers_line(d)
        if line is not None:
            found.add(line)
    return "".join(line + "\n" for line in sorted(found, key=str.lower))


def name_version(metadata: str) -> str | None:
    """``name==version`` from a core-metadata file's headers (before its first blank line); None without a name."""
    name = version = None
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.lower()
        if key == "name" and name is None:
            name = value.strip()
        elif key == "version" and version is None:
            version = value.strip()
    return f"{name}=={version}" if name else None


def git_facts(cwd: str | os.PathLike[str], deadline: float) -> tuple[dict[str, FieldValue], bytes | None, bool]:
    """``sys/git/*`` of the repository holding ``cwd``, the diff when dirty (at most
    :data:`MAX_DIFF_BYTES`) and whether it was cut. No git, or not a repository: nothing."""
    top = _git(cwd, deadline, "rev-parse", "--show-toplevel")
    if top is None:
        return {}, None, False
    facts: dict[str, FieldValue] = {}
    commit = _git(cwd, deadline, "rev-parse", "--verify", "-q", "HEAD")
    if commit:
        facts["sys/git/commit"] = ("str", commit)
    branch = _git(cwd, deadline, "symbolic-ref", "--short", "-q", "HEAD")
    if branch:
        facts["sys/git/branch"] = ("str", branch)
    remote = _git(cwd, deadline, "config", "--get", "remote.origin.url")
    if remote:
        facts["sys/git/remote"] = ("str", clean_remote(remote))
    status = _git(cwd, deadline, "status", "--porcelain", "--untracked-files=no")
    if status is None or not commit:
        return facts, None, False
    facts["sys/git/dirty"] = ("bool", bool(status))
    if not status:
        return facts, None, False
    diff, cut = _git_diff(cwd, deadline)
    return facts, diff, cut


def start_capture(
    rank: int, write_sys: SysWriter, store_path: str | None, cwd: str | None = None, *, redact: Redactor | None = None
) -> ContextCapture:
    """Start the capture of a run on a background thread, through the run's internal writer.

    Args:
        rank: this rank.
        write_sys: the run's ``_write_sys``.
        store_path: the run's journal (its ``artifacts`` directory sits beside it), or ``None``.
        cwd: where git looks for the repository (default: the working directory).
        redact: the run's redaction (``redact_keys``/``redact_values``/``redact``), applied to every
            fact (argv, the git remote, ...) before it is written, or ``None``.
    """

    def write(items: list[tuple[str, FieldValue]]) -> bool:
        if redact is not None:
            items = redact.apply(items)
        try:
            write_sys(items, lambda view: view.update({p: field_from_wire(*fv) for p, fv in items}))
        except ClosedError:
            _log.debug("rank %d: the run was closed before its environment capture was written", rank)
            return False
        return True

    artifacts = Path(store_path).parent / "artifacts" if store_path is not None and rank == 0 else None
    return ContextCapture.start(rank, write, artifacts, cwd)


class ContextCapture:
    """The capture thread of one run on one rank; :meth:`join` it (bounded) before the run closes.

    Args:
        rank: this rank (rank 0 also writes the run's facts and uploads the artifacts).
        write: the run's internal ``sys/*`` writer.
        artifacts_dir: where the run keeps its files (rank 0), or ``None``: no artifacts.
        cwd: where git looks for the repository (default: the working directory).
    """

    def __init__(self, rank: int, write: Write, artifacts_dir: Path | None, cwd: str | None = None) -> None:
        self._rank = rank
        self._write = write
        self._artifacts = artifacts_dir
        self._cwd = cwd or os.getcwd()
        self._thread = threading.Thread(target=self._run, name=f"coordinator-context-{rank}", daemon=True)
        self._done = threading.Event()
        """Set when the capture ended. Waited on instead of ``Thread.join``: a join interrupted by a
        signal handler's exception (the launcher's SIGTERM) marks the thread stopped in CPython 3.11,
        so a second join would return at once while the capture still runs."""

    @classmethod
    def start(cls, rank: int, write: Write, artifacts_dir: Path | None, cwd: str | None = None) -> ContextCapture:
        """Start capturing in a background thread; returns at once."""
        c = cls(rank, write, artifacts_dir, cwd)
        c._thread.start()
        return c

    def join(self, timeout: float = CAPTURE_BUDGET_S) -> None:
        """Wait (at most ``timeout``) until the capture is written; warn if it is not."""
        if self._done.wait(timeout):
            self._thread.join(timeout)  # it has ended: only reaps it
        else:
            _log.warning(
                "rank %d: the environment capture did not finish in %.0f s; the run closes without it",
                self._rank,
                timeout,
            )

    def join_for_stop(self, mark: Callable[[BaseException], None]) -> BaseException | None:
        """:meth:`join` for ``stop()``: an interruption while waiting is marked, not raised.

        The launcher's SIGTERM (turned into ``SystemExit``) or Ctrl-C often arrives while rank 0
        waits here; raising it out of ``stop()`` would leave the run to the atexit path, which
        closes it without the capture. Instead the wait goes on (bounded) and the interruption is
        returned for the caller to raise once the run is stopped.
        """
        try:
            self.join()
        except (SystemExit, KeyboardInterrupt) as e:
            mark(e)
            self.join()
            return e
        return None

    def _run(self) -> None:
        try:
            self.capture(time.monotonic() + CAPTURE_BUDGET_S)
        except Exception as e:  # a capture failure must not touch training; it is logged
            _log.warning(
                "rank %d: environment capture failed: %s: %s", self._rank, type(e).__name__, redact_text(str(e))
            )
        finally:
            self._done.set()

    def capture(self, deadline: float) -> None:
        """Write every fact (rank 0: the run's too); stops quietly once the run is closed."""
        if not self._write(list(rank_facts(self._rank).items())) or self._rank != 0:
            return
        if not self._write(list(env_facts().items())):
            return
        facts, diff, cut = git_facts(self._cwd, deadline)
        if not facts:
            _log.debug("environment capture: %s is not in a git repository (or git is missing)", self._cwd)
        if diff is not None:
            if cut:
                _log.warning(
                    "sys/git/diff: the diff is over %d bytes; its first %d are stored", MAX_DIFF_BYTES, MAX_DIFF_BYTES
                )
            self._add_artifact(facts, "sys/git/diff", "git.diff", diff)
        if facts and not self._write(list(facts.items())):
            return
        text = packages_text().encode()
        env: dict[str, FieldValue] = {"sys/env/packages_hash": ("str", hashlib.sha256(text).hexdigest())}
        self._add_artifact(env, "sys/env/packages", "packages.txt", text)
        self._write(list(env.items()))

    def _add_artifact(self, facts: dict[str, FieldValue], key: str, name: str, data: bytes) -> None:
        """Copy ``data`` into the run as the file ``name`` and add its record as ``key``."""
        if self._artifacts is None:
            return
        tmp = Path(tempfile.mkdtemp(prefix="coordinator-context-"))
        try:
            src = tmp / name
            src.write_bytes(data)
            facts[key] = ("artifact", copy_into_run(key, src, self._artifacts, max(len(data), 1)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _dist_version(name: str) -> str | None:
    """An installed distribution's version, read from its metadata's headers (see :func:`packages_text`)."""
    try:
        line = _headers_line(importlib.metadata.distribution(name))
    except importlib.metadata.PackageNotFoundError:
        return None
    if line is None:
        return None
    return line.partition("==")[2] or None


def _headers_line(d: importlib.metadata.Distribution) -> str | None:
    """``name==version`` of an installed distribution, from the headers of its metadata file."""
    return name_version(d.read_text("METADATA") or d.read_text("PKG-INFO") or "")


def _git_env() -> dict[str, str]:
    # No prompt for credentials, no index.lock taken by `status` (a concurrent git command must not fail).
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")


def _git(cwd: str | os.PathLike[str], deadline: float, *args: str) -> str | None:
    """``git args`` in ``cwd``: its stripped output, or None (no git, not a repo, failed, too slow)."""
    git, left = shutil.which("git"), min(_GIT_TIMEOUT_S, deadline - time.monotonic())
    if git is None or left <= 0:
        _log.debug("environment capture: %s", "no git on PATH" if git is None else "out of time")
        return None
    try:
        p = subprocess.run(
            [git, *args],
            cwd=cwd,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=left,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        _log.debug("environment capture: git %s: %s", args[0], e)
        return None
    if p.returncode != 0:
        _log.debug("environment capture: git %s exited %d: %s", args[0], p.returncode, p.stderr.strip()[:200])
        return None
    return p.stdout.strip()


def _git_diff(cwd: str | os.PathLike[str], deadline: float) -> tuple[bytes | None, bool]:
    """``git diff HEAD``: its first :data:`MAX_DIFF_BYTES`, and whether it was longer (None: failed)."""
    git, left = shutil.which("git"), min(_GIT_TIMEOUT_S, deadline - time.monotonic())
    if git is None or left <= 0:
        return None, False
    cmd = [git, "-c", "core.quotepath=off", "diff", "--no-color", "--no-ext-diff", "HEAD"]
    with tempfile.TemporaryFile() as out:
        try:
            p = subprocess.run(
                cmd,
                cwd=cwd,
                env=_git_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.DEVNULL,
                timeout=left,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            _log.debug("environment capture: git diff: %s", e)
            return None, False
        if p.returncode != 0:
            _log.debug("environment capture: git diff exited %d", p.returncode)
            return None, False
        size = out.tell()
        out.seek(0)
        return out.read(MAX_DIFF_BYTES), size > MAX_DIFF_BYTES
