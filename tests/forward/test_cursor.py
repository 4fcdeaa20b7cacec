"""The forwarder's cursor file: round trip, atomic replace, one holder at a time, unreadable files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.errors import SinkError
from coordinator.forward.cursor import CURSOR_VERSION, CursorFile, CursorState, cursor_path


def test_a_saved_state_is_read_back_by_the_next_holder(tmp_path: Path) -> None:
    f = CursorFile(tmp_path, "tensorboard")
    assert f.acquire() == CursorState()
    state = CursorState(
        cursor=42,
        backend_state={"size": 10},
        fields_sent={"a": "d1"},
        thin={"loss": [1.5, 7.0]},
        counters={"forwarded_points": 9},
        finished="finished",
    )
    f.save(state, {"batch_points": 5})
    f.release()
    assert f.path == cursor_path(tmp_path, "tensorboard") == tmp_path / "forward-tensorboard.json"
    raw = json.loads(f.path.read_text())
    assert raw["version"] == CURSOR_VERSION and raw["settings"] == {"batch_points": 5}
    assert not list(tmp_path.glob("*.tmp"))
    again = CursorFile(tmp_path, "tensorboard")
    assert again.acquire() == state
    again.release()


def test_a_second_holder_of_the_same_backend_is_refused_until_release(tmp_path: Path) -> None:
    first = CursorFile(tmp_path, "mlflow")
    first.acquire()
    with pytest.raises(SinkError, match="another forwarder"):
        CursorFile(tmp_path, "mlflow").acquire()
    other = CursorFile(tmp_path, "wandb")  # another backend has its own lock
    other.acquire()
    other.release()
    first.release()
    first.release()  # idempotent
    CursorFile(tmp_path, "mlflow").acquire()


@pytest.mark.parametrize("text", ["{not json", '{"version": 99, "cursor": 1}', '{"version": 1}'])
def test_an_unreadable_cursor_file_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    cursor_path(tmp_path, "neptune").write_text(text)
    f = CursorFile(tmp_path, "neptune")
    with pytest.raises(SinkError, match="unreadable"):
        f.acquire()
    f.release()


def test_a_cursor_file_from_before_text_series_loads_with_no_text_position(tmp_path: Path) -> None:
    old = {"version": CURSOR_VERSION, "backend": "tensorboard", "destination": "", "cursor": 7, "fields_sent": {}}
    cursor_path(tmp_path, "tensorboard").write_text(json.dumps(old))
    f = CursorFile(tmp_path, "tensorboard")
    st = f.acquire()
    assert (st.cursor, st.texts, st.texts_pending, st.run_tags) == (7, 0, 0, [])
    st.texts, st.run_tags = 12, ["x"]
    f.save(st, {})
    f.release()
    again = CursorFile(tmp_path, "tensorboard")
    assert again.acquire() == st
    again.release()
