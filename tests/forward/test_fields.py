"""Fields on their way to a tracker: only changed ones are sent, sys/* as tags, values as text."""

from __future__ import annotations

from coordinator.forward.fields import changed_fields, field_text


def test_only_new_or_changed_fields_are_sent_and_remembered() -> None:
    fields = {"cfg/lr": ("float", 0.1), "sys/state": ("str", "running"), "sys/ranks/0/rss": ("int", 5)}
    first = changed_fields(fields, {}, sys_ranks=False)
    assert first.params == {"cfg/lr": ("float", 0.1)}
    assert first.tags == {"sys/state": "running"}
    assert set(first.sent) == {"cfg/lr", "sys/state"}
    again = changed_fields(fields, first.sent, sys_ranks=False)
    assert (again.params, again.tags, again.sent) == ({}, {}, first.sent)
    changed = changed_fields({**fields, "cfg/lr": ("float", 0.2)}, first.sent, sys_ranks=False)
    assert changed.params == {"cfg/lr": ("float", 0.2)} and changed.tags == {}
    assert changed.sent["cfg/lr"] != first.sent["cfg/lr"]


def test_the_sent_record_given_is_not_modified() -> None:
    sent: dict[str, str] = {}
    changed_fields({"a": ("int", 1)}, sent, sys_ranks=False)
    assert sent == {}


def test_per_rank_sys_fields_are_sent_only_when_asked() -> None:
    got = changed_fields({"sys/ranks/3/rss": ("int", 7)}, {}, sys_ranks=True)
    assert got.tags == {"sys/ranks/3/rss": "7"}


def test_field_text_of_every_type() -> None:
    assert field_text(("bool", True)) == "true"
    assert field_text(("list", [1, "a"])) == '[1, "a"]'
    assert field_text(("datetime", 0.0)) == "1970-01-01T00:00:00+00:00"
    assert field_text(("artifact", ["m.pt", 3, "abcdef0123456789", False, "/x"])) == (
        "m.pt (3 bytes, sha256 abcdef012345, reference: /x)"
    )
    assert field_text(("float", 0.5)) == "0.5"


def test_tags_and_artifacts_are_set_apart_for_native_sending() -> None:
    art = ("artifact", ["diff.patch", 10, "ab" * 32, True, "/run/artifacts/ab/abab"])
    fields = {"sys/tags": ("list", ["b", "a"]), "sys/git/diff": art, "model/ckpt": art, "cfg/x": ("int", 1)}
    got = changed_fields(fields, {}, sys_ranks=False)
    assert got.run_tags == ["a", "b"]
    assert got.files == {"sys/git/diff": art, "model/ckpt": art}
    assert got.params == {"cfg/x": ("int", 1)} and got.tags == {}
    again = changed_fields(fields, got.sent, sys_ranks=False)
    assert again.run_tags is None and again.files == {}
    removed = changed_fields({**fields, "sys/tags": ("list", ["b"])}, got.sent, sys_ranks=False)
    assert removed.run_tags == ["b"]


def test_a_digest_from_before_native_tags_sends_them_once_more() -> None:
    import hashlib
    import json

    fv = ("list", ["a"])
    old = {"sys/tags": hashlib.sha256(json.dumps(fv, sort_keys=True).encode()).hexdigest()[:16]}
    assert changed_fields({"sys/tags": fv}, old, sys_ranks=False).run_tags == ["a"]
