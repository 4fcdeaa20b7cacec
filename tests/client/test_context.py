"""Environment capture (issue 13, item 2): git facts from a real repository made here, the versions,
the packages, each rank's process facts, and what a real run stores of them."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import coordinator
from coordinator.client import context
from coordinator.client.context import (
    clean_remote,
    detect_launcher,
    env_facts,
    git_facts,
    name_version,
    packages_text,
    rank_facts,
    redact_argv,
)
from tests.client.helpers import git, open_store


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with one commit on ``main`` (no global or system git config read)."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "train.py").write_text("print('train')\n")
    (r / ".gitignore").write_text("store/\n")
    git(r, "add", "train.py", ".gitignore")
    git(r, "commit", "-q", "-m", "first")
    return r


def _later() -> float:
    return time.monotonic() + 30


def test_git_facts_of_a_clean_repository(repo: Path) -> None:
    facts, diff, cut = git_facts(repo, _later())
    assert facts["sys/git/commit"] == ("str", git(repo, "rev-parse", "HEAD"))
    assert facts["sys/git/branch"] == ("str", "main")
    assert facts["sys/git/dirty"] == ("bool", False)
    assert "sys/git/remote" not in facts
    assert diff is None and not cut


def test_a_changed_tracked_file_is_dirty_with_its_diff_and_an_untracked_file_is_not(repo: Path) -> None:
    (repo / "notes.txt").write_text("untracked\n")
    facts, diff, _ = git_facts(repo, _later())
    assert facts["sys/git/dirty"] == ("bool", False) and diff is None
    (repo / "train.py").write_text("print('train, changed')\n")
    facts, diff, cut = git_facts(repo / ".", _later())
    assert facts["sys/git/dirty"] == ("bool", True)
    assert diff is not None and not cut
    assert diff.decode() == git(repo, "diff", "HEAD") + "\n"
    assert "+print('train, changed')" in diff.decode()


def test_a_diff_over_the_cap_is_cut_to_it(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "MAX_DIFF_BYTES", 100)
    (repo / "train.py").write_text("x = 1\n" * 1000)
    _, diff, cut = git_facts(repo, _later())
    assert cut and diff is not None and len(diff) == 100


def test_a_detached_head_has_no_branch(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    facts, _, _ = git_facts(repo, _later())
    assert "sys/git/branch" not in facts and facts["sys/git/commit"][1] == git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://bob:hunter2-pw@git.example.com/org/repo.git", "https://bob:***@git.example.com/org/repo.git"),
        ("https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://alice@github.com/o/r.git", "https://alice@github.com/o/r.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"),
    ],
)
def test_the_remote_is_stored_without_credentials(repo: Path, url: str, stored: str) -> None:
    git(repo, "remote", "add", "origin", url)
    facts, _, _ = git_facts(repo, _later())
    assert facts["sys/git/remote"] == ("str", stored)
    assert clean_remote(url) == stored


def test_outside_a_repository_or_without_git_there_are_no_git_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_facts(plain, _later()) == ({}, None, False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert git_facts(plain, _later()) == ({}, None, False)


def test_git_gets_no_time_past_the_deadline(repo: Path) -> None:
    assert git_facts(repo, time.monotonic() - 1) == ({}, None, False)


@pytest.mark.parametrize(
    ("env", "spawned", "launcher"),
    [
        ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0"}, False, "torchrun"),
        ({"OMPI_COMM_WORLD_RANK": "0", "SLURM_PROCID": "0"}, False, "mpirun"),
        ({"PMI_RANK": "3"}, False, "mpirun"),
        ({"SLURM_PROCID": "1"}, False, "slurm"),
        ({"ACCELERATE_USE_CPU": "True", "TORCHELASTIC_RUN_ID": "x"}, False, "accelerate"),
        ({"NODE_RANK": "0", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, False, "lightning"),
        ({"PL_TRAINER_DEVICES": "2"}, False, "lightning"),
        ({}, True, "spawn"),
        ({"RANK": "0"}, False, "plain"),
    ],
)
def test_the_launcher_is_named_from_its_environment(env: dict[str, str], spawned: bool, launcher: str) -> None:
    assert detect_launcher(env, spawned=spawned) == launcher


def test_argv_has_secret_options_and_url_passwords_masked() -> None:
    argv = [
        "train.py",
        "--lr=0.1",
        "--api-key=abc123",
        "--token",
        "tok-9",
        "--tokenizer",
        "gpt2",
        "wandb.api_key=zzz",
        "--db=postgres://u:pw-1234@h/db",
        "--password",
        "--epochs",
        "3",
    ]
    assert redact_argv(argv) == [
        "train.py",
        "--lr=0.1",
        "--api-key=***",
        "--token",
        "***",
        "--tokenizer",
        "gpt2",
        "wandb.api_key=***",
        "--db=postgres://u:***@h/db",
        "--password",
        "--epochs",
        "3",
    ]


def test_rank_facts_name_the_host_pid_argv_and_launcher() -> None:
    facts = rank_facts(3, argv=["train.py", "--secret", "s3cr3t"], environ={"SLURM_PROCID": "3"})
    assert facts["sys/ranks/3/pid"] == ("int", os.getpid())
    assert facts["sys/ranks/3/argv"] == ("str", "train.py --secret '***'")
    assert facts["sys/ranks/3/launcher"] == ("str", "slurm")
    assert facts["sys/ranks/3/host"][1]


def test_env_facts_never_import_torch() -> None:
    code = (
        "import sys; from coordinator.client.context import env_facts; f = env_facts(); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(sorted(f))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "sys/env/python" in out.stdout and "sys/env/coordinator" in out.stdout
    assert "sys/env/cuda" not in out.stdout  # torch not imported: its CUDA is not looked at


def test_env_facts_with_torch_imported() -> None:
    torch = pytest.importorskip("torch")
    facts = env_facts()
    assert facts["sys/env/torch"] == ("str", torch.__version__)
    assert ("sys/env/cuda" in facts) == bool(torch.version.cuda)
    assert facts["sys/env/python"][1].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")


def test_packages_are_sortedname_version_lines() -> None:
    text = packages_text()
    lines = text.splitlines()
    assert lines == sorted(lines, key=str.lower) and all("==" in x for x in lines)
    assert any(x.lower().startswith("pyzmq==") for x in lines)


def test_packages_match_what_the_full_metadata_parser_reads() -> None:
    """Only the header block is read: the lines are those of ``Distribution.metadata`` for every installed one."""
    full = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert packages_text().splitlines() == sorted(full, key=str.lower)


def test_a_distributions_version_is_read_from_its_headers() -> None:
    for name in ("pyzmq", "msgpack", "torch"):
        assert context._dist_version(name) == importlib.metadata.version(name)
    assert context._dist_version("surely-not-installed-here") is None


def test_name_and_version_come_from_the_headers_only() -> None:
    body = "Metadata-Version: 2.1\nname: Foo-Bar\nVERSION: 1.2.3\nSummary: x: y\n\nName: not-this\nVersion: 9\n"
    assert name_version(body) == "Foo-Bar==1.2.3"
    assert name_version("Version: 1.0\n\nName: in-the-description\n") is None
    assert name_version("") is None


def test_a_run_stores_the_capture(repo: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run (aggregator and all) started in a dirty repository stores every fact; the artifacts
    are the diff and the package list themselves."""
    monkeypatch.chdir(repo)
    git(repo, "remote", "add", "origin", "https://bob:hunter2-pw@git.example.com/org/repo.git")
    (repo / "train.py").write_text("print('dirty')\n")
    with coordinator.init_run(project="ctx") as run:
        run.log({"a": 1.0}, step=0)
    s = open_store(store_dir)
    try:
        f = s.fields()
    finally:
        s.close()
    assert f["sys/git/commit"] == ("str", git(repo, "rev-parse", "HEAD"))
    assert f["sys/git/branch"] == ("str", "main") and f["sys/git/dirty"] == ("bool", True)
    assert f["sys/git/remote"] == ("str", "https://bob:***@git.example.com/org/repo.git")
    tag, (name, size, sha, copied, where) = f["sys/git/diff"]
    assert tag == "artifact" and name == "git.diff" and copied
    assert Path(where).read_bytes().decode() == git(repo, "diff", "HEAD") + "\n"
    assert size == Path(where).stat().st_size
    tag, (name, size, sha, copied, where) = f["sys/env/packages"]
    assert tag == "artifact" and name == "packages.txt" and copied and size == Path(where).stat().st_size
    assert f["sys/env/packages_hash"] == ("str", sha) == ("str", hashlib.sha256(Path(where).read_bytes()).hexdigest())
    assert f["sys/env/coordinator"] == ("str", coordinator.__version__)
    assert f["sys/ranks/0/pid"] == ("int", os.getpid()) and f["sys/ranks/0/launcher"] == ("str", "plain")
    assert {"sys/ranks/0/host", "sys/ranks/0/argv", "sys/env/python"} <= set(f)
    assert "hunter2" not in str(f)


def test_capture_env_false_captures_nothing(repo: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    with coordinator.init_run(project="ctx", settings=coordinator.Settings(capture_env=False)) as run:
        run.log({"a": 1.0}, step=0)
    s = open_store(store_dir)
    try:
        f = s.fields()
    finally:
        s.close()
    assert not [p for p in f if p.startswith(("sys/git/", "sys/env/"))]
    assert not [p for p in f if p.startswith("sys/ranks/0/") and p.rsplit("/", 1)[1] in ("host", "pid", "argv")]


def test_the_capture_does_not_hold_up_init_run(repo: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git that hangs: init_run returns at once; stop() waits for the capture at most its budget."""
    monkeypatch.chdir(repo)
    slow = repo.parent / "bin"
    slow.mkdir()
    (slow / "git").write_text("#!/bin/sh\nexec sleep 30\n")
    (slow / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(context, "CAPTURE_BUDGET_S", 1.5)
    t0 = time.monotonic()
    run = coordinator.init_run(project="ctx")
    assert time.monotonic() - t0 < 5
    run.log({"a": 1.0}, step=0)
    run.stop()
    assert time.monotonic() - t0 < 15
    s = open_store(store_dir)
    try:
        f = s.fields()
    finally:
        s.close()
    assert "sys/git/commit" not in f and "sys/env/packages_hash" in f


def test_a_sigterm_while_stop_waits_for_the_capture_still_waits_for_it() -> None:
    """The launcher's SIGTERM (a handler raising SystemExit) interrupting the wait is returned, and
    the capture still finishes before join_for_stop returns (CPython 3.11 marks an interrupted
    Thread.join's thread stopped, so a second join alone would not wait)."""
    import signal
    import threading

    written: list[float] = []
    release = threading.Event()

    def slow_write(items: list[tuple[str, tuple[str, object]]]) -> bool:
        release.wait(5)
        time.sleep(0.3)  # still writing when the signal arrives
        written.append(time.monotonic())
        return True

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGALRM, on_term)
    cap = context.ContextCapture.start(1, slow_write, None)  # rank 1: one write, then done
    marked: list[BaseException] = []
    try:
        release.set()
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        got = cap.join_for_stop(marked.append)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(got, SystemExit) and marked == [got]
    assert written, "join_for_stop returned before the capture was written"
