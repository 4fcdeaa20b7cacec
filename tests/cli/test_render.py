"""What show prints for a series: sparklines scaled from lowest to highest, short numbers."""

from __future__ import annotations

import math

from coordinator.cli.render import BLOCKS, number, sparkline


def test_sparkline_scales_from_lowest_to_highest_block() -> None:
    assert sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == BLOCKS
    assert sparkline([3.0, 3.0, 3.0]) == BLOCKS[3] * 3  # flat: the middle block
    assert sparkline([1.0, None, math.nan, 2.0]) == BLOCKS[0] + "  " + BLOCKS[-1]  # gaps stay gaps
    assert sparkline([1.0, math.inf, -math.inf, 2.0]) == BLOCKS[0] + BLOCKS[-1] + BLOCKS[0] + BLOCKS[-1]
    assert sparkline([]) == ""
    assert sparkline([None, None]) == "  "


def test_number_is_short() -> None:
    assert number(None) == "-"
    assert number(0.021314159) == "0.02131"
    assert number(1234567.0) == "1.235e+06"
