"""Errors the embedded state manager answers with, shaped like the upstream FastAPI service's."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error with a ``{"detail": ...}`` body."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class NotFound(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(404, detail)


class BadRequest(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


class Unauthorized(ApiError):
    def __init__(self) -> None:
        super().__init__(401, "Invalid API key")


class BodyInvalid(Exception):
    """A request body that does not fit its model: 422 with a list of error objects."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


INTERNAL_ERROR_BODY = {
    "success": False,
    "detail": "internal server error, please reach out to support team at nivedit@exosphere.host",
}
"""Upstream's answer to any unhandled exception (its middleware's fixed body)."""


class InternalError(ApiError):
    """Where upstream fails with an unhandled exception (an id that is no ObjectId, say): its 500."""

    def __init__(self) -> None:
        super().__init__(500, str(INTERNAL_ERROR_BODY["detail"]))


class BodyUnparsable(ApiError):
    """A body FastAPI cannot decode other than by a JSON syntax error: bad UTF-8, too deep, too long."""

    def __init__(self) -> None:
        super().__init__(400, "There was an error parsing the body")


class ConflictError(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(409, detail)
