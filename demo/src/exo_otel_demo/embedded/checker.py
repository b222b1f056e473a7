"""FastAPI-shaped validation errors for hand-checked request bodies (pydantic's lax mode, by hand)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, TypeVar

from exo_otel_demo.embedded.errors import BodyInvalid, InternalError
from exo_otel_demo.embedded.models import JsonDict

Loc = tuple[str | int, ...]
E = TypeVar("E", bound=StrEnum)
MISSING: Any = object()


class Checker:
    """Collects validation errors while converting one body."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def fail(self, kind: str, loc: Loc, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> None:
        error: dict[str, Any] = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
        if ctx is not None:
            error["ctx"] = ctx
        self.errors.append(error)

    def value_error(self, loc: Loc, message: str, value: Any) -> None:
        # FastAPI encodes the ValueError in ``ctx`` as an empty object.
        self.fail("value_error", loc, f"Value error, {message}", value, {"error": {}})

    def model(self, value: Any, loc: Loc) -> JsonDict | None:
        if value is MISSING:  # already reported as missing
            return None
        if isinstance(value, dict):
            return value
        msg = "Input should be a valid dictionary or object to extract fields from"
        self.fail("model_attributes_type", loc, msg, value)
        return None

    def field(self, obj: JsonDict, name: str, loc: Loc, default: Any = MISSING) -> Any:
        if name in obj:
            return obj[name]
        if default is MISSING:
            self.fail("missing", (*loc, name), "Field required", obj)
        return MISSING

    def string(self, value: Any, loc: Loc) -> str | None:
        if value is MISSING:  # already reported as missing
            return None
        if isinstance(value, str):
            return value
        self.fail("string_type", loc, "Input should be a valid string", value)
        return None

    def integer(self, value: Any, loc: Loc, gt: int | None = None, ge: int | None = None) -> int | None:
        if value is MISSING:  # already reported as missing
            return None
        number: int | None = None
        if isinstance(value, bool | int):
            number = int(value)
        elif isinstance(value, float):
            if value.is_integer():
                number = int(value)
            else:
                msg = "Input should be a valid integer, got a number with a fractional part"
                self.fail("int_from_float", loc, msg, value)
                return None
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                msg = "Input should be a valid integer, unable to parse string as an integer"
                self.fail("int_parsing", loc, msg, value)
                return None
        else:
            self.fail("int_type", loc, "Input should be a valid integer", value)
            return None
        if gt is not None and number <= gt:
            self.fail("greater_than", loc, f"Input should be greater than {gt}", value, {"gt": gt})
            return None
        if ge is not None and number < ge:
            msg = f"Input should be greater than or equal to {ge}"
            self.fail("greater_than_equal", loc, msg, value, {"ge": ge})
            return None
        return number

    def mapping(self, value: Any, loc: Loc) -> JsonDict | None:
        if value is MISSING:  # already reported as missing
            return None
        if isinstance(value, dict):
            return value
        self.fail("dict_type", loc, "Input should be a valid dictionary", value)
        return None

    def listing(self, value: Any, loc: Loc) -> list[Any] | None:
        if value is MISSING:  # already reported as missing
            return None
        if isinstance(value, list):
            return value
        self.fail("list_type", loc, "Input should be a valid list", value)
        return None

    def str_map(self, value: Any, loc: Loc) -> dict[str, str] | None:
        mapping = self.mapping(value, loc)
        if mapping is None:
            return None
        before = len(self.errors)
        result = {key: self.string(item, (*loc, key)) for key, item in mapping.items()}
        return None if len(self.errors) > before else {k: v for k, v in result.items() if v is not None}

    def str_list(self, value: Any, loc: Loc) -> list[str] | None:
        items = self.listing(value, loc)
        if items is None:
            return None
        before = len(self.errors)
        result = [self.string(item, (*loc, index)) for index, item in enumerate(items)]
        return None if len(self.errors) > before else [item for item in result if item is not None]

    def choice(self, value: Any, loc: Loc, enum: type[E]) -> E | None:
        if value is MISSING:  # already reported as missing
            return None
        for member in enum:
            if value == member.value:
                return member
        names = [f"'{member.value}'" for member in enum]
        expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        self.fail("enum", loc, f"Input should be {expected}", value, {"expected": expected})
        return None

    def done(self) -> None:
        if self.errors:
            raise BodyInvalid(self.errors)


class BodyUnreadable(Exception):
    """A body the JSON decoder gave up on other than by a syntax error (FastAPI answers 400)."""


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = main.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def decode_json(raw: bytes, content_type: str | None = None) -> Any:
    """The request's body as FastAPI reads it: ``MISSING`` when empty, the decoded JSON document for a
    JSON content type (or none), else the text itself (which then fails as not an object).

    Raises:
        BodyInvalid: JSON with a syntax error (422 ``json_invalid``).
        BodyUnreadable: JSON that cannot be decoded otherwise: bad UTF-8, nesting too deep, a number
            too long (FastAPI answers 400).
    """
    if not raw:
        return MISSING
    if not _is_json(content_type):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            # FastAPI validates the bytes and fails to write them into its 422 answer: upstream's 500.
            raise InternalError() from None
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ["body", exc.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise BodyInvalid([error]) from None
    except (ValueError, RecursionError):
        raise BodyUnreadable() from None
    return MISSING if document is None else document


def start(document: Any) -> tuple[Checker, JsonDict]:
    """A checker for one body, and the body's top-level object (422 at once when there is none)."""
    checker = Checker()
    if document is MISSING:
        checker.fail("missing", (), "Field required", None)
    body = None if document is MISSING else checker.model(document, ())
    checker.done()
    assert body is not None  # done() raised otherwise
    return checker, body
