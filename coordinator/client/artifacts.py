"""Files uploaded into a run: hashed (sha256) and copied, content-addressed, under the run's directory.

A file over the copy limit is recorded as a reference (path, size, hash) instead: a multi-GB
checkpoint should not be duplicated by default. The record is what the run stores as the field.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from coordinator.core.values import check_key
from coordinator.errors import ClosedError

__all__ = ["check_uploadable", "copy_into_run", "upload_record"]

_log = logging.getLogger("coordinator")

_BLOCK = 1 << 20


def upload_record(
    key: str, src: Path, store_path: str | None, mode: str, what: str, max_copy_bytes: int
) -> list[object]:
    """Check an ``upload()`` and copy (or reference) ``src`` into the run's artifacts; its field record.

    Raises:
        ClosedError: the run (``what``) stores no files in its mode. TypeError, ValueError,
            FileNotFoundError: see :func:`check_uploadable`.
    """
    check_key(key, "path")
    check_uploadable(key, src)
    if store_path is None or mode in ("disabled", "read-only"):
        raise ClosedError(f"{what} stores no files")
    return copy_into_run(key, src, Path(store_path).parent / "artifacts", max_copy_bytes)


def check_uploadable(key: str, src: Path) -> None:
    """Raise unless ``src`` is an existing regular file.

    Raises:
        FileNotFoundError: no such file. ValueError: not a regular file.
    """
    if not src.exists():
        raise FileNotFoundError(f"upload {key!r}: no file {src}")
    if not src.is_file():
        raise ValueError(f"upload {key!r}: {src} is not a regular file")


def copy_into_run(key: str, src: Path, artifacts_dir: Path, max_copy_bytes: int) -> list[object]:
    """Hash ``src`` and copy it to ``artifacts_dir/<sha[:2]>/<sha>`` when at most ``max_copy_bytes``.

    The same bytes are stored once; the copy is atomic (written aside, then renamed).

    Returns:
        The record ``[name, size, sha256, copied, path]``: ``path`` is the copy, or the resolved
        source when the file was too large to copy (a warning says so).
    """
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
    sha = digest.hexdigest()
    copied = size <= max_copy_bytes
    where = str(src.resolve())
    if copied:
        dest = artifacts_dir / sha[:2] / sha
        if not dest.exists():
            artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the run's files are its owner's only
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            tmp = dest.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, dest)
        where = str(dest)
    else:
        _log.warning(
            "upload %r: %s is %d bytes, over max_copy_bytes=%d; logged as a reference (path, size, sha256), not copied",
            key,
            src,
            size,
            max_copy_bytes,
        )
    return [src.name, size, sha, copied, where]
