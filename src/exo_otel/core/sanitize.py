"""Make values from outside input safe to put on the wire: encodable strings, in-range timestamps.

One span with an unencodable string (a lone surrogate) or a negative timestamp makes the OTLP
encoder reject its whole batch, other runs' spans included; everything exo_otel takes from a
payload, an answer or an exception goes through here first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

REPLACEMENT: Final = "\ufffd"
# OTLP timestamps are fixed64 nanoseconds since the epoch.
MAX_TIMESTAMP_NS: Final = (1 << 64) - 1


def clean_text(value: object) -> str:
    """``value`` as a string that encodes to UTF-8: lone surrogates become U+FFFD; never raises."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # Lone surrogates are the only code points UTF-8 cannot encode: one U+FFFD each (decoding
        # their surrogatepass bytes with "replace" would give three).
        return "".join(REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def clean_str(value: str) -> str:
    """`clean_text` for a value known to be a str: no conversion, and an ASCII one (nearly all) as is."""
    return value if value.isascii() else clean_text(value)


def clean_value(value: Any) -> Any:
    """An attribute value with its strings cleaned (bools and numbers pass; sequences item by item)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    return clean_text(value)


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with keys and values cleaned."""
    cleaned: dict[str, Any] = {}
    for key, value in attributes.items():
        # ASCII strings and numbers, nearly every attribute, need no work.
        if type(key) is not str or not key.isascii():
            key = clean_text(key)
        if not ((type(value) is str and value.isascii()) or isinstance(value, bool | int | float)):
            value = clean_value(value)
        cleaned[key] = value
    return cleaned


def log_safe(value: object) -> str:
    """Cleaned text with control characters escaped, so a value can never forge a log line."""
    text = clean_text(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def timestamp_or(value: int | None, fallback: int) -> int:
    """``value`` when it is a timestamp OTLP can carry and not after ``fallback`` (now), else ``fallback``.

    A creation time before 1970 (negative) or after now is no timestamp a span can start at.
    """
    if value is None or value <= 0 or value > fallback or value > MAX_TIMESTAMP_NS:
        return fallback
    return value
