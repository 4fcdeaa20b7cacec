"""Text series as MLflow files: the name by step range, and a format that reads back exactly."""

from __future__ import annotations

import pytest

from coordinator.forward.textfiles import format_texts, parse_texts, text_file_name


def test_entries_read_back_exactly_whatever_the_texts_hold() -> None:
    tricky = [
        (3, "plain", 1000.0),
        (4, "two\nlines\n", 1001.5),
        (5, "=== step 9 | x | 3 chars ===\nfake header inside", 1002.0),
        (6, "", 1003.0),
        (7, "ünïcödé ✓ \U0001f600", 1004.0),
    ]
    content = format_texts(tricky)
    assert parse_texts(content) == [(s, t) for s, t, _ in tricky]
    assert content.startswith("=== step 3 | 1970-01-01T00:16:40+00:00 | 5 chars ===\nplain\n\n")


def test_the_file_is_named_by_key_rank_and_step_range() -> None:
    pts = [(12, "a", 0.0), (10, "b", 0.0), (15, "c", 0.0)]
    assert text_file_name("samples/gen", 3, pts) == "text/samples/gen/rank3/steps_10-15.txt"


@pytest.mark.parametrize("bad", ["no header", "=== step 1 | t | 10 chars ===\nshort\n\n"])
def test_a_file_in_another_format_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a text-series file"):
        parse_texts(bad)
