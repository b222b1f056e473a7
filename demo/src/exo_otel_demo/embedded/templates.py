"""Input templates: ``${{ <identifier>.outputs.<field> }}`` and ``${{ store.<key> }}`` placeholders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OPEN = "${{"
CLOSE = "}}"
STORE = "store"


class TemplateError(ValueError):
    """A template whose placeholders cannot be parsed or resolved."""


@dataclass(frozen=True)
class Placeholder:
    """One placeholder: ``source`` is a node identifier or ``store``; ``field`` an output or key."""

    source: str
    field: str

    @property
    def is_store(self) -> bool:
        return self.source == STORE


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text around placeholders, alternating, starting with text."""

    literals: tuple[str, ...]
    placeholders: tuple[Placeholder, ...]

    def render(self, lookup: Callable[[Placeholder], str]) -> str:
        parts = [self.literals[0]]
        for placeholder, literal in zip(self.placeholders, self.literals[1:], strict=True):
            value = lookup(placeholder)
            if not isinstance(value, str):
                raise TemplateError(
                    f"placeholder {placeholder.source}.{placeholder.field} resolved to a "
                    f"{type(value).__name__}, not a string"
                )
            parts.append(value)
            parts.append(literal)
        return "".join(parts)


def parse(text: str) -> Template:
    """Split a template into literals and placeholders, exactly as upstream reads them.

    Raises:
        TemplateError: an unclosed placeholder, or one that is neither form (upstream's wording).
    """
    pieces = text.split(OPEN)
    literals = [pieces[0]]
    placeholders: list[Placeholder] = []
    for piece in pieces[1:]:
        if CLOSE not in piece:
            raise TemplateError(f"Invalid syntax string placeholder {piece} for: {text} '${{' not closed")
        inside, literal = piece.split(CLOSE, 1)
        parts = [part.strip() for part in inside.split(".")]
        if len(parts) == 3 and parts[1] == "outputs":
            placeholders.append(Placeholder(parts[0], parts[2]))
        elif len(parts) == 2 and parts[0] == STORE:
            placeholders.append(Placeholder(STORE, parts[1]))
        else:
            raise TemplateError(f"Invalid syntax string placeholder {inside} for: {text}")
        literals.append(literal)
    return Template(tuple(literals), tuple(placeholders))
