"""What the database upstream runs on accepts: ObjectId ids, and documents nested at most 100 deep."""

from __future__ import annotations

import re

from exo_otel_demo.embedded.models import JsonDict

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")


class NotAnObjectId(ValueError):
    """A state id that is no ObjectId: upstream fails on it with its generic 500."""


def is_object_id(text: str) -> bool:
    return _OBJECT_ID.fullmatch(text) is not None


def object_id(text: str) -> str:
    """The canonical (lower-case) form of a 24-hex id; NotAnObjectId for anything else."""
    if not is_object_id(text):
        raise NotAnObjectId(text)
    return text.lower()


MAX_DOCUMENT_DEPTH = 100
"""MongoDB refuses documents nested deeper than this; upstream then fails with its generic 500."""


def nesting(value: object, limit: int = MAX_DOCUMENT_DEPTH + 1) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0), counted up to ``limit``."""
    depth, level = 0, [value]
    while level and depth < limit:
        children: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
            else:
                continue
        if not any(isinstance(item, dict | list) for item in level):
            break
        depth += 1
        level = children
    return depth


def storable(document: JsonDict) -> bool:
    """Whether the database upstream runs on would store ``document`` (its nesting is within bounds)."""
    return nesting(document) <= MAX_DOCUMENT_DEPTH
