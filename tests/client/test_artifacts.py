"""upload(): files hashed and copied into the run, large ones recorded as references."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator


def test_upload_stores_files_content_addressed_and_large_ones_as_references(
    store_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """upload(): a copy under artifacts/<sha256>, the record as a field; over the limit a reference with a warning."""
    import hashlib

    small = tmp_path / "ckpt.pt"
    small.write_bytes(b"weights" * 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5000)
    with coordinator.init_run() as run:
        rec = run["model/ckpt"].upload(small)
        again = run["model/again"].upload(small)
        ref = run["model/big"].upload(big, max_copy_bytes=1000)
        with pytest.raises(FileNotFoundError):
            run["model/none"].upload(tmp_path / "missing")
        with pytest.raises(ValueError):
            run["model/dir"].upload(tmp_path)
        assert run["model/ckpt"].fetch() == rec
    sha = hashlib.sha256(small.read_bytes()).hexdigest()
    assert rec["sha256"] == sha and rec["size"] == 7000 and rec["copied"] is True and rec["name"] == "ckpt.pt"
    stored = Path(rec["path"])
    assert stored.read_bytes() == small.read_bytes() and stored.name == sha and "artifacts" in stored.parts
    assert again["path"] == rec["path"]
    assert ref["copied"] is False and ref["path"] == str(big.resolve())
    assert "reference" in caplog.text
    ro = coordinator.init_run(with_id="latest", mode="read-only")
    try:
        assert ro["model/ckpt"].fetch()["sha256"] == sha
    finally:
        ro.stop()


def test_copy_into_run_is_content_addressed_and_atomic(tmp_path: Path) -> None:
    """Equal bytes share one copy; no temporary file is left; over the limit the source is referenced."""
    import hashlib

    from coordinator.client.artifacts import check_uploadable, copy_into_run

    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(b"same" * 100)
    b.write_bytes(b"same" * 100)
    dest = tmp_path / "artifacts"
    ra = copy_into_run("k", a, dest, 1000)
    rb = copy_into_run("k", b, dest, 1000)
    sha = hashlib.sha256(b"same" * 100).hexdigest()
    assert ra == ["a.bin", 400, sha, True, str(dest / sha[:2] / sha)]
    assert rb[4] == ra[4] and rb[0] == "b.bin"
    assert [p.name for p in dest.rglob("*") if p.is_file()] == [sha]
    assert copy_into_run("k", a, tmp_path / "none", 399) == ["a.bin", 400, sha, False, str(a.resolve())]
    assert not (tmp_path / "none").exists()
    with pytest.raises(FileNotFoundError):
        check_uploadable("k", tmp_path / "missing")
    with pytest.raises(ValueError, match="regular file"):
        check_uploadable("k", tmp_path)


def test_upload_copies_up_to_the_settings_limit_by_default(store_dir: Path, tmp_path: Path) -> None:
    """Without max_copy_bytes, Settings.artifact_max_copy_bytes decides between a copy and a reference."""
    small = tmp_path / "small.bin"
    small.write_bytes(b"s" * 10)
    big = tmp_path / "big.bin"
    big.write_bytes(b"b" * 100)
    with coordinator.init_run(settings=coordinator.Settings(artifact_max_copy_bytes=50)) as run:
        assert run["f/small"].upload(small)["copied"] is True
        assert run["f/big"].upload(big)["copied"] is False
        assert run["f/big2"].upload(big, max_copy_bytes=100)["copied"] is True
