"""Known secret values, and texts with them taken out before they reach telemetry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[REDACTED]"
PYDANTIC_SHOWN: Final = 47


class Redactor:
    """Replaces every known secret value in a text with ``[REDACTED]``.

    Every non-empty value is redacted, however short: a text mangled by a one-letter secret is
    better than a secret in a trace.
    """

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: tuple[str, ...] = ()
        """The known values, longest first (empty: nothing to redact; one Redactor per execution)."""

    def add(self, values: Iterable[object]) -> None:
        """Remember these values (strings only; the SDK gives secrets as strings)."""
        known = set(self.values)
        for value in values:
            if isinstance(value, str) and value:
                known.add(value)
                if len(value) > PYDANTIC_SHOWN:
                    # pydantic shows a long input value cut: its first 24 and last 23 characters.
                    known.update((value[:24], value[-23:]))
        # Longest first: a secret containing another is redacted whole.
        self.values = tuple(sorted(known, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self.values)

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text
