"""Models and model versions (issue 13, item 8): ids, version numbering, stages, read-only reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.client.models import init_model, init_model_version, next_version
from coordinator.errors import ClosedError, ConfigError, MissingExtraError
from coordinator.journal.store import list_runs
from coordinator.settings import Settings
from tests.untyped import bad

QUIET = Settings(system_metrics_interval_s=0, capture_env=False)


def test_a_model_and_its_versions_are_runs_numbered_in_the_store(store_dir: Path, tmp_path: Path) -> None:
    with init_model(key="CLS", project="p", settings=QUIET) as model:
        assert model["sys/id"].fetch() == "p-CLS"
        assert model["sys/kind"].fetch() == "model"
        model["info/task"] = "classification"
    ids = []
    for i in range(3):
        with init_model_version("p-CLS" if i else model, settings=QUIET) as v:
            v["val/acc"] = 0.5 + i / 10
            assert v["sys/stage"].fetch() == "none"
            ids.append(v["sys/id"].fetch())
    assert ids == ["p-CLS-1", "p-CLS-2", "p-CLS-3"]
    assert next_version(store_dir, "p-CLS") == 4
    runs = {r.id: r for r in list_runs(store_dir)}
    assert set(runs) == {"p-CLS", "p-CLS-1", "p-CLS-2", "p-CLS-3"}
    assert runs["p-CLS-2"].project == "p"


def test_change_stage_is_validated_recorded_and_read_back_read_only(store_dir: Path, tmp_path: Path) -> None:
    init_model(key="M1", project="q", settings=QUIET).stop()
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"weights")
    v = init_model_version("q-M1", settings=QUIET)
    try:
        for stage in ("prod", "", None, "Production"):
            with pytest.raises(ValueError, match="stage must be one of"):
                v.change_stage(bad(stage))
        v["model/weights"].upload(ckpt)
        v.change_stage("staging")
        v.change_stage("production")
        assert v["sys/stage"].fetch() == "production"
        v.wait(30)
    finally:
        v.stop()
    ro = init_model_version("q-M1", with_id="q-M1-1", mode="read-only", settings=QUIET)
    try:
        f = ro.fetch()
        assert f["sys/stage"] == "production"
        assert f["sys/kind"] == "model_version"
        assert f["sys/model_id"] == "q-M1"
        assert f["model/weights"]["size"] == len(b"weights")
        with pytest.raises(ClosedError):
            ro.change_stage("archived")
        with pytest.raises(ClosedError):
            ro["x"] = 1
    finally:
        ro.stop()


def test_bad_keys_missing_models_and_reused_ids_are_refused(store_dir: Path) -> None:
    for key in ("cls", "", "A-B", "X" * 33):
        with pytest.raises(ValueError, match="model key"):
            init_model(key=key, project="p", settings=QUIET)
    with pytest.raises(ConfigError, match="no model 'p-NONE'"):
        init_model_version("p-NONE", settings=QUIET)
    init_model(key="A", project="p", settings=QUIET).stop()
    with pytest.raises(ConfigError, match="exists already"):
        init_model(key="A", project="p", settings=QUIET)
    with pytest.raises(ConfigError, match="backend='mlflow' only"):
        init_model(key="B", project="p", backend="wandb", settings=QUIET)
    assert [r.id for r in list_runs(store_dir)] == ["p-A"]


def test_backend_mlflow_without_the_extra_names_the_extra(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(MissingExtraError, match=r"coordinator\[mlflow\]|'mlflow' extra"):
        init_model(key="C", project="p", backend="mlflow", settings=QUIET)
    assert list_runs(store_dir) == []
