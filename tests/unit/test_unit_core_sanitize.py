"""`exo_otel.core.sanitize`: strings made encodable, attribute values cleaned, log-safe text, timestamps."""

from __future__ import annotations

import pytest

from exo_otel.core.sanitize import (
    MAX_TIMESTAMP_NS,
    REPLACEMENT,
    clean_attributes,
    clean_str,
    clean_text,
    clean_value,
    log_safe,
    timestamp_or,
)


class _Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text for you")


@pytest.mark.parametrize("text", ["plain ascii", "", "naïve café ✓", "emoji \U0001f600", "\x00control\n"])
def test_encodable_text_is_left_as_it_is(text: str) -> None:
    assert clean_text(text) == text
    assert clean_str(text) == text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\ud800", REPLACEMENT),
        ("a\udfffb", f"a{REPLACEMENT}b"),
        ("\ud83d\ude00 split pair", f"{REPLACEMENT}{REPLACEMENT} split pair"),
        ("é\udc80é", f"é{REPLACEMENT}é"),
    ],
)
def test_each_lone_surrogate_becomes_one_replacement_character(raw: str, clean: str) -> None:
    # README, "Hostile values": a lone surrogate becomes U+FFFD.
    assert clean_text(raw) == clean
    assert clean_str(raw) == clean
    clean.encode("utf-8")


def test_any_value_becomes_text_and_an_unprintable_one_says_so() -> None:
    assert clean_text(42) == "42"
    assert clean_text(None) == "None"
    assert clean_text(_Unprintable()) == "<unprintable _Unprintable>"


def test_attribute_values_keep_their_types_and_have_their_strings_cleaned() -> None:
    assert clean_value(True) is True
    assert clean_value(3) == 3 and clean_value(2.5) == 2.5
    assert clean_value("x\ud800") == f"x{REPLACEMENT}"
    assert clean_value(("a", "\udc00", 1)) == ["a", REPLACEMENT, 1]
    assert clean_value({"not": "an attribute type"}) == "{'not': 'an attribute type'}"


def test_attributes_get_clean_keys_and_values_and_the_input_is_untouched() -> None:
    raw = {"k\ud800": "v", "ok": "w\udfff", "n": 1, "flag": False, "seq": ["\ud800"], "obj": _Unprintable()}
    cleaned = clean_attributes(raw)
    assert cleaned == {
        f"k{REPLACEMENT}": "v",
        "ok": f"w{REPLACEMENT}",
        "n": 1,
        "flag": False,
        "seq": [REPLACEMENT],
        "obj": "<unprintable _Unprintable>",
    }
    assert "k\ud800" in raw  # a new mapping
    for key, value in cleaned.items():
        key.encode("utf-8")
        str(value).encode("utf-8")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("ordinary text", "ordinary text"),
        ("forged\nINFO line", "forged\\nINFO line"),
        ("tab\there\r", "tab\\there\\r"),
        ("bell\x07 and \x1b[31mred", "bell\\x07 and \\x1b[31mred"),
        ("surrogate \ud800", f"surrogate {REPLACEMENT}"),
    ],
)
def test_log_safe_text_cannot_start_a_new_log_line(raw: str, safe: str) -> None:
    assert log_safe(raw) == safe
    assert "\n" not in log_safe(raw) and "\r" not in log_safe(raw)


NOW = 1_800_000_000_000_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NOW - 5, NOW - 5),  # a past creation time is kept
        (NOW, NOW),
        (None, NOW),
        (0, NOW),  # the epoch itself is no creation time
        (-1, NOW),  # before 1970
        (NOW + 1, NOW),  # in the future
    ],
)
def test_a_timestamp_is_kept_only_between_the_epoch_and_now(value: int | None, expected: int) -> None:
    assert timestamp_or(value, NOW) == expected


def test_a_timestamp_beyond_what_otlp_carries_falls_back() -> None:
    beyond = MAX_TIMESTAMP_NS + 1
    assert timestamp_or(beyond, beyond + 10) == beyond + 10
    assert timestamp_or(MAX_TIMESTAMP_NS, beyond) == MAX_TIMESTAMP_NS
