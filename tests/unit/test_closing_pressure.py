"""The closing pressure's rule (issue #18, `serve_app/engines/closing_pressure.py`): no bonus before `start` of
the budget, then a growing one; the scan knows an open string from the rest; closers are what ends it."""

from __future__ import annotations

import pytest

from serve_app.engines.closing_pressure import JsonScan, closing_bonus, closing_tokens


def test_the_bonus_starts_at_start_and_grows_to_strength_at_the_cap() -> None:
    assert closing_bonus(100, 200, 0.5, 10.0) == 0.0
    assert closing_bonus(150, 200, 0.5, 10.0) == pytest.approx(5.0)
    assert closing_bonus(200, 200, 0.5, 10.0) == pytest.approx(10.0)
    assert closing_bonus(250, 200, 0.5, 10.0) == pytest.approx(10.0)  # never past `strength`
    assert closing_bonus(150, None, 0.5, 10.0) == 0.0  # no budget, no pressure


def _scan(*texts: str) -> JsonScan:
    scan = JsonScan()
    for text in texts:
        scan.feed(text)
    return scan


@pytest.mark.parametrize(
    ("texts", "in_string", "escaped"),
    [
        (['{"', "name", '":"', "Ada"], True, False),
        (['{"name":"Ada",', '"tags":['], False, False),
        (['{"path":"C:', "\\"], True, True),  # a backslash ending a token escapes the next one's first char
        (['{"q":"say ', '\\"', "hi", '\\"'], True, False),  # escaped quotes stay inside the string
        (['{"q":"a\\\\', '"}'], False, False),  # an escaped backslash, then the closing quote
        (['{"a":1', "}"], False, False),
    ],
)
def test_the_scan_knows_whether_a_string_is_open(texts: list[str], in_string: bool, escaped: bool) -> None:
    scan = _scan(*texts)
    assert (scan.in_string, scan.escaped) == (in_string, escaped)


def test_closers_end_a_string_or_begin_by_closing_an_object_or_array() -> None:
    texts = ['"', '",', '"}', ' "', "\\", '\\"', "a", "}", "]}", " ]", "},", ",", "a}", "[", "{"]
    ends_string, closes_container = closing_tokens(texts)
    assert [t for t, yes in zip(texts, ends_string, strict=True) if yes] == ['"', '",', '"}', ' "']
    assert [t for t, yes in zip(texts, closes_container, strict=True) if yes] == ["}", "]}", " ]", "},"]
