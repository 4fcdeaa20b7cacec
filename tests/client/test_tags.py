"""Tags (issue 13, item 3): ``init_run(tags=)``, ``run["sys/tags"].add()/.remove()/.fetch()``, the aggregator's set."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from coordinator.aggregator import Aggregator
from coordinator.core.tags import MAX_TAGS, TAGS_ADD, TAGS_PATH, TAGS_REMOVE
from tests.aggregator.helpers import batch, hello, make_cfg, reopen
from tests.untyped import bad


@pytest.mark.parametrize(
    ("tags", "exc", "match"),
    [
        ("abc", TypeError, "list of str"),
        ([1], TypeError, "must be a str"),
        ([""], ValueError, "1 to 128"),
        (["x" * 129], ValueError, "1 to 128"),
        (["a\nb"], ValueError, "control"),
        ({"a": 1}, TypeError, "list of str"),
    ],
)
def test_bad_tags_fail_at_the_call_site_before_anything_starts(
    store_dir: Path, tags: object, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        coordinator.init_run(tags=bad(tags))
    assert not (store_dir / "runs").exists()


def test_tags_from_init_run_add_and_remove_are_read_back_as_a_set(store_dir: Path) -> None:
    with coordinator.init_run(project="p", tags=["a", "b", "a"]) as run:
        tags = run["sys/tags"]
        assert tags.fetch() == {"a", "b"}
        tags.add("c", "d")
        tags.add(["e"])
        tags.remove("a", "nope")
        assert tags.fetch() == {"b", "c", "d", "e"}  # read-your-writes, before any sync
        run.sync(wait=True, timeout=60)
        assert run["sys"]["tags"].fetch() == {"b", "c", "d", "e"}
        with pytest.raises(ValueError, match="sys/"):
            run["sys/tags"] = ["x"]
        with pytest.raises(TypeError, match="not a set"):
            run["params/lr"].add("x")
        with pytest.raises(TypeError, match="at least one tag"):
            tags.add()
        with pytest.raises(ValueError, match="1 to 128"):
            tags.add("ok", "")
        assert tags.fetch() == {"b", "c", "d", "e"}  # the rejected call changed nothing
        rid = run.id
    ro = coordinator.init_run(with_id=rid, mode="read-only")
    try:
        assert ro["sys/tags"].fetch() == {"b", "c", "d", "e"}
        with pytest.raises(coordinator.errors.ClosedError, match="read-only"):
            ro["sys/tags"].add("x")
    finally:
        ro.stop()
    with pytest.raises(coordinator.errors.ConfigError, match="read-only"):
        coordinator.init_run(with_id=rid, mode="read-only", tags=["x"])


def test_a_run_without_tags_fetches_an_empty_set_and_disabled_runs_ignore_tags(store_dir: Path) -> None:
    with coordinator.init_run() as run:
        assert run["sys/tags"].fetch() == set()
        run.sync(wait=True, timeout=60)
        assert run["sys/tags"].fetch() == set()
    d = coordinator.init_run(mode="disabled", tags=["a"])
    d["sys/tags"].add("b")
    d.stop()


def test_stopped_run_refuses_tag_changes(store_dir: Path) -> None:
    run = coordinator.init_run(tags=["a"])
    run.stop()
    with pytest.raises(coordinator.errors.ClosedError):
        run["sys/tags"].add("b")


def test_aggregator_applies_tag_operations_of_every_rank_as_a_set_and_survives_a_restart(tmp_path: Path) -> None:
    """Adds from two ranks are a union (no conflict); a remove from any rank removes; bad operations are refused."""
    a = Aggregator(make_cfg(tmp_path))
    hello(a, 0)
    hello(a, 1)
    batch(a, 0, 1, fields={TAGS_ADD: ("list", ["x", "shared"])})
    batch(a, 1, 1, fields={TAGS_ADD: ("list", ["y", "shared"])})
    batch(a, 1, 2, fields={TAGS_REMOVE: ("list", ["x"])})
    batch(a, 0, 2, fields={TAGS_ADD: ("list", ["", "z"])})  # invalid: the whole operation is refused
    batch(a, 0, 3, fields={TAGS_ADD: ("int", 3)})  # not a list: refused
    a.commit()
    assert a.fields.fields[TAGS_PATH].value == ("list", ["shared", "y"])
    assert a.counters["conflicts"] == 0
    a.close()
    s = reopen(tmp_path)
    try:
        assert s.fields()[TAGS_PATH] == ("list", ["shared", "y"])
        assert TAGS_ADD not in s.fields() and TAGS_REMOVE not in s.fields()
        assert s.conflicts() == []
    finally:
        s.close()
    b = Aggregator(make_cfg(tmp_path))  # a restarted aggregator continues from the stored set
    hello(b, 0, inc=2)
    batch(b, 0, 1, inc=2, fields={TAGS_ADD: ("list", ["w"])})
    assert b.fields.fields[TAGS_PATH].value == ("list", ["shared", "w", "y"])
    b.close()


def test_aggregator_caps_the_number_of_tags(tmp_path: Path) -> None:
    a = Aggregator(make_cfg(tmp_path, world=1))
    hello(a, 0)
    batch(a, 0, 1, fields={TAGS_ADD: ("list", [f"t{i}" for i in range(MAX_TAGS - 1)])})
    batch(a, 0, 2, fields={TAGS_ADD: ("list", ["last", "over1", "over2"])})
    assert len(a.fields.fields[TAGS_PATH].value[1]) == MAX_TAGS
    assert "last" in a.fields.fields[TAGS_PATH].value[1]
    a.close()
