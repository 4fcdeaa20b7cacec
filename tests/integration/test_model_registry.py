"""Model versions in a real ``mlflow server`` on 127.0.0.1 (issue 13, item 8): registered, aliased, read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.client.models import init_model, init_model_version
from coordinator.errors import SinkError
from coordinator.settings import Settings
from tests.integration.test_backends import MlflowServer, mlflow_server

__all__ = ["mlflow_server"]

pytestmark = pytest.mark.integration

QUIET = Settings(system_metrics_interval_s=0, capture_env=False)


def test_a_model_version_is_registered_and_its_stage_is_an_alias_read_back(
    mlflow_server: MlflowServer, store_dir: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    opts = {"tracking_uri": mlflow_server.uri}
    with init_model(key="CLS", project="p", backend="mlflow", backend_options=opts, settings=QUIET) as model:
        model["info/task"] = "classification"
    client = MlflowClient(mlflow_server.uri)
    assert client.get_registered_model("p-CLS").name == "p-CLS"

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00\x01weights")
    with init_model_version(model, backend="mlflow", backend_options=opts, settings=QUIET) as v1:
        v1["model/weights"].upload(weights)
        v1.change_stage("production")
    with init_model_version("p-CLS", backend="mlflow", backend_options=opts, settings=QUIET) as v2:
        v2.change_stage("staging")

    prod = client.get_model_version_by_alias("p-CLS", "production")
    assert prod.version == "1" and prod.tags["coordinator_id"] == "p-CLS-1"
    staging = client.get_model_version_by_alias("p-CLS", "staging")
    assert staging.tags["coordinator_id"] == "p-CLS-2"
    files = client.list_artifacts(prod.run_id, "model/model/weights")
    assert [Path(f.path).name for f in files] == ["weights.bin"]
    local = client.download_artifacts(prod.run_id, "model/model/weights/weights.bin", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == weights.read_bytes()

    # the alias moves; "none" drops it
    with init_model_version("p-CLS", backend="mlflow", backend_options=opts, settings=QUIET) as v3:
        v3.change_stage("production")
        assert client.get_model_version_by_alias("p-CLS", "production").tags["coordinator_id"] == "p-CLS-3"
        v3.change_stage("none")
        assert client.get_model_version("p-CLS", "3").aliases == []
    ro = init_model_version("p-CLS", with_id="p-CLS-1", mode="read-only", settings=QUIET)
    try:
        assert ro.fetch()["sys/stage"] == "production"
    finally:
        ro.stop()


def test_an_unreachable_registry_raises_sink_error_with_the_password_masked(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'coordinator[mlflow]')")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    opts = {"tracking_uri": "http://user:hunter2secret@127.0.0.1:9/"}
    with pytest.raises(SinkError, match="mlflow registry") as ei:
        init_model(key="X", project="p", backend="mlflow", backend_options=opts, settings=QUIET)
    assert "hunter2secret" not in str(ei.value)
    assert not (store_dir / "runs").exists()  # refused before any run was created
