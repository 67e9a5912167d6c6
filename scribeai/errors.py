"""One error root; the wire code lives on the class, one mapper turns it into each wire shape."""

from __future__ import annotations

from typing import Any


class ScribeError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ScribeError):
    code = "invalid"
    http_status = 400


class TooLarge(ScribeError):
    code = "too_large"
    http_status = 413


class Unauthorized(ScribeError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ScribeError):
    code = "forbidden"
    http_status = 403


class NotFound(ScribeError):
    code = "not_found"
    http_status = 404


class Conflict(ScribeError):
    code = "conflict"
    http_status = 409


class Overloaded(ScribeError):
    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, retry_after_ms: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_ms = retry_after_ms


class Unavailable(ScribeError):
    """The server is shutting down or a dependency is unreachable; retry later."""

    code = "unavailable"
    http_status = 503


# Short human strings the original web app shows in its `error` field.
_SHORT = {
    "invalid": "Invalid chunk data",
    "too_large": "Chunk too large",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "not_found": "Not found",
    "conflict": "Chunk conflict",
    "overloaded": "Server overloaded",
    "unavailable": "Server unavailable",
    "internal": "Internal server error",
}


def error_body(exc: ScribeError, **context: Any) -> dict[str, Any]:
    """The wire body of chunk-error / session-error: {..context, code, message, error, details}."""
    body: dict[str, Any] = {k: v for k, v in context.items() if v is not None}
    body.update(code=exc.code, message=exc.message, error=_SHORT.get(exc.code, exc.code), details=exc.details)
    if isinstance(exc, Overloaded):
        body["retryAfterMs"] = exc.retry_after_ms
    return body


def http_error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
