"""Sending one built batch to a backend: fields, tags, files, metrics, texts, in that order, then flush.

Each capability is used where the adapter has it (:class:`~coordinator.forward.backend.TagBackend`,
:class:`~coordinator.forward.backend.FileBackend`, :class:`~coordinator.forward.backend.TextBackend`);
otherwise the run's tags and artifact fields go as text (``sys/tags`` as a tag, an artifact as
its description: a param when it is a user field, a tag when it is ``sys/*``), and text series
are counted as ``texts_skipped``. An artifact whose copy is gone from the run directory is
counted as ``missing_files`` and warned about, not retried: the journal cannot bring it back.

The same batch may be sent twice (a crash before the cursor moved): every call here is one the
adapters make idempotent (files replace, tags are set, removals of absent tags are ignored).
"""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.core.tags import TAGS_PATH
from coordinator.core.values import FieldValue
from coordinator.forward.backend import Artifact, Backend, FileBackend, TagBackend, TextBackend
from coordinator.forward.batches import Batch
from coordinator.forward.fields import field_text

__all__ = ["artifact_of", "send_batch"]

_log = logging.getLogger(__name__)

_SYS = "sys/"


def artifact_of(fv: FieldValue, run_dir: Path) -> Artifact:
    """The :class:`Artifact` of an ``artifact`` field; a copy is looked up in ``run_dir`` when moved.

    The record names the copy's absolute path when it was made; a run directory copied to
    another machine (``coordinator sync`` there) still has it at ``artifacts/<sha[:2]>/<sha>``.
    """
    name, size, sha, copied, where = fv[1]
    loc = Path(str(where))
    if copied and not loc.is_file():
        moved = run_dir / "artifacts" / str(sha)[:2] / str(sha)
        if moved.is_file():
            loc = moved
    return Artifact(str(name), int(size), str(sha), bool(copied), loc)


def send_batch(backend: Backend, batch: Batch, run_dir: Path, previous_tags: list[str]) -> None:
    """Hand everything in ``batch`` to ``backend`` and flush; fills ``batch.dropped`` and ``batch.sent``.

    Args:
        backend: the open backend.
        batch: the batch (sent unchanged on every attempt).
        run_dir: the run's directory (artifact copies are found there).
        previous_tags: the tags the backend had before this batch (the cursor's ``run_tags``).

    Raises:
        Exception: whatever the backend raised; the forwarder retries the whole batch.
    """
    sent = dict.fromkeys(
        ("files_sent", "missing_files", "forwarded_texts", "dropped_texts", "cut_texts", "texts_skipped"), 0
    )
    params = dict(batch.params)
    tags = dict(batch.tags)
    if not isinstance(backend, FileBackend):  # the tracker has no files: the artifact's description as text
        for path, fv in batch.files.items():
            if path.startswith(_SYS):
                tags[path] = field_text(fv)
            else:
                params[path] = fv
    if batch.run_tags is not None and not isinstance(backend, TagBackend):
        tags[TAGS_PATH] = field_text(("list", batch.run_tags))
    if params:
        backend.log_params(params)
    if tags:
        backend.set_tags(tags)
    if batch.run_tags is not None and isinstance(backend, TagBackend):
        new, old = set(batch.run_tags), set(previous_tags)
        backend.set_run_tags(batch.run_tags, sorted(new - old), sorted(old - new))
    if isinstance(backend, FileBackend):
        for path, fv in batch.files.items():
            art = artifact_of(fv, run_dir)
            if art.copied and not art.location.is_file():
                sent["missing_files"] += 1
                _log.warning(
                    "%s: the run's copy of %r (%s, sha256 %s) is gone from %s; it is not sent",
                    getattr(backend, "name", type(backend).__name__),
                    path,
                    art.name,
                    art.sha256[:12],
                    art.location,
                )
                continue
            backend.log_file(path, art)
            sent["files_sent"] += 1
    batch.dropped = backend.log_metrics(batch.series) if batch.series else 0
    n_texts = sum(len(t.points) for t in batch.texts)
    if n_texts and isinstance(backend, TextBackend):
        done = backend.log_texts(batch.texts)
        sent["dropped_texts"], sent["cut_texts"] = done.dropped, done.cut
        sent["forwarded_texts"] = n_texts - done.dropped
    else:
        sent["texts_skipped"] = n_texts
    backend.flush()
    batch.sent = {k: v for k, v in sent.items() if v}
