"""The instrumented library's supported versions (kept equal to the `instruments` extra)."""

from __future__ import annotations

from typing import Final

_instruments: Final = ("exospherehost >= 0.0.3, < 0.0.4",)
