"""Tags, artifact files and text series on their way to a tracker, read back from real TensorBoard event files.

Runs are made by the real library in-process (2 ranks through one real aggregator process) and
forwarded in two phases: after the first forward the tags change and more texts arrive, and a
new forwarder (a restart) sends only what is new. A crash after the tracker accepted a batch but
before the cursor moved is simulated by the real backend raising after its real flush.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import coordinator
from coordinator.forward.backend import Backend, FileBackend, TagBackend, TextBackend, get_backend
from coordinator.forward.forwarder import Forwarder
from coordinator.journal.store import LocalStore

RANKS = 2
KEY = "samples/gen"


def text(rank: int, step: int) -> str:
    """What ``rank`` appends at ``step``: newlines and non-ASCII included."""
    return f"rank {rank} step {step}\nsecond line ✓"


@contextmanager
def context_run(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[coordinator.Run]]:
    """A live 2-rank run (tags a, b; an uploaded file); stopped on exit."""
    runs: list[coordinator.Run] = []

    def settings(rank: int) -> coordinator.Settings:
        return coordinator.Settings(dir=str(root), rank=rank, world_size=RANKS, handle_sigterm=False)

    runs.append(coordinator.init_run(project="ctx", name="context", tags=["a", "b"], settings=settings(0)))
    with monkeypatch.context() as m:
        assert runs[0].endpoint is not None
        m.setenv("COORDINATOR_ENDPOINT", runs[0].endpoint)
        m.setenv("COORDINATOR_RUN_ID", runs[0].id)
        runs.append(coordinator.init_run(project="ctx", name="context", settings=settings(1)))
    try:
        yield runs
    finally:
        for run in reversed(runs):
            run.stop(60)


def append_texts(runs: list[coordinator.Run], steps: range) -> None:
    for s in steps:
        for r, run in enumerate(runs):
            run[KEY].append(text(r, s), step=s)
    for run in runs:
        run.wait(60)


def two_phases(
    root: Path, monkeypatch: pytest.MonkeyPatch, forward: Callable[[Path], dict[str, object]], payload: bytes
) -> Path:
    """Phase 1: tags a, b, file, texts 0-4, forward. Phase 2: -a +c, texts 5-9, stop, forward again."""
    src = root / "model.bin"
    root.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    with context_run(root / "store", monkeypatch) as runs:
        runs[0]["model/ckpt"].upload(src)
        append_texts(runs, range(5))
        assert runs[0].store_path is not None
        db = Path(runs[0].store_path)
        first = forward(db)
        assert first["forwarded_texts"] == 5 * RANKS and first["files_sent"] >= 1, first
        runs[0]["sys/tags"].remove("a")
        runs[1]["sys/tags"].add("c")
        append_texts(runs, range(5, 10))
    second = forward(db)
    assert second["forwarded_texts"] == 5 * RANKS, "a restarted forwarder sends only the new texts"
    store = LocalStore(db, readonly=True)
    try:
        files = [p for p, fv in store.fields().items() if fv[0] == "artifact"]
    finally:
        store.close()
    assert "model/ckpt" in files and "sys/env/packages" in files, files
    # The environment capture may land before or after the first forward: each file is sent once.
    assert first["files_sent"] + second["files_sent"] == len(files), (first, second, files)
    return db


def tb_texts(logdir: Path) -> dict[str, list[tuple[int, str]]]:
    """Every text summary under ``logdir`` as TensorBoard's EventAccumulator reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


def test_the_builtin_trackers_have_the_native_capabilities() -> None:
    for name in ("mlflow", "tensorboard", "wandb", "neptune"):
        cls = get_backend(name)
        for cap in (TagBackend, FileBackend, TextBackend):
            assert issubclass(cls, cap), (name, cap)


def test_tensorboard_gets_every_text_once_the_tag_changes_and_the_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logdir = tmp_path / "tb"
    payload = os.urandom(1000)

    def forward(db: Path) -> dict[str, object]:
        fwd = Forwarder(db, "tensorboard", {"logdir": str(logdir)})
        try:
            return fwd.drain(60)
        finally:
            fwd.release()

    two_phases(tmp_path, monkeypatch, forward, payload)
    got = tb_texts(logdir)
    for r in range(RANKS):
        assert got[f"ranks/{r}/{KEY}"] == [(s, text(r, s)) for s in range(10)], "each text once, in step order"
    tags = [t for _, t in got["fields/sys/tags"]]
    assert tags[0] == "* a\n* b" and tags[-1] == "* b\n* c", tags
    import hashlib

    [desc] = [t for _, t in got["fields/model/ckpt"]]
    assert f"model.bin · 1000 bytes · sha256 {hashlib.sha256(payload).hexdigest()}" in desc
    assert any(k.startswith("fields/sys/env/packages") for k in got), "the environment capture's artifact"


class _CrashingTensorBoard:
    """Builds the real TensorBoard backend whose flush raises once, after its real flush (a crash)."""

    def __init__(self, logdir: Path) -> None:
        from coordinator.forward.tensorboard import TensorBoardBackend  # the class get_backend("tensorboard") names

        class Crashing(TensorBoardBackend):
            crash = True

            def flush(self) -> None:
                super().flush()
                if Crashing.crash:
                    Crashing.crash = False
                    raise KeyboardInterrupt("simulated crash after the tracker accepted the batch")

        self.cls = Crashing
        self.logdir = logdir

    def make(self, run_dir: Path) -> Backend:
        return self.cls({"logdir": str(self.logdir)}, run_dir)


def test_a_crash_after_the_tracker_accepted_texts_doubles_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logdir = tmp_path / "tb"
    with context_run(tmp_path / "store", monkeypatch) as runs:
        append_texts(runs, range(20))
        assert runs[0].store_path is not None
        db = Path(runs[0].store_path)
    crashing = _CrashingTensorBoard(logdir)
    fwd = Forwarder(db, "tensorboard", backend=crashing.make(db.parent))
    with pytest.raises(KeyboardInterrupt):
        fwd.drain(60)
    fwd.abort(5)
    for cursor in db.parent.glob("forward-tensorboard*.json"):
        assert json.loads(cursor.read_text())["texts"] == 0, "the crash came before the cursor moved"
    again = Forwarder(db, "tensorboard", {"logdir": str(logdir)})
    try:
        st = again.drain(60)
    finally:
        again.release()
    assert st["forwarded_texts"] == 20 * RANKS and st["text_cursor"] > 0
    got = tb_texts(logdir)
    for r in range(RANKS):
        assert got[f"ranks/{r}/{KEY}"] == [(s, text(r, s)) for s in range(20)]
