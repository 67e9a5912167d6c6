"""One error root; the wire code lives on the class, one mapper turns it into each wire shape."""

from __future__ import annotations

import asyncio
import errno
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


class StorageUnavailable(Unavailable):
    """Chunks cannot be stored right now (disk full, read-only, database down); the recorder retries later."""

    def __init__(self, message: str, reason: str, retry_after_ms: int = 5000, **details: Any) -> None:
        super().__init__(message, **details)
        self.reason = reason
        self.retry_after_ms = retry_after_ms


class StartupCheckFailed(ScribeError):
    """The server cannot store chunks and refuses to start (`scribeai serve` exits with code 2)."""

    code = "startup_check_failed"
    exit_code = 2


# errno values of a storage fault: the disk is full, or the filesystem refuses writes.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
STORAGE_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_fault(exc: OSError) -> StorageUnavailable | None:
    """The retryable wire error for a failed file write, or None when it is no known storage fault."""
    if exc.errno in STORAGE_FULL_ERRNOS:
        return StorageUnavailable(f"chunk storage is full ({exc.strerror}); resend later", "storage_full")
    if exc.errno in STORAGE_READ_ONLY_ERRNOS:
        return StorageUnavailable(f"chunk storage is read-only ({exc.strerror}); resend later", "storage_read_only")
    return None


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
    if isinstance(exc, (Overloaded, StorageUnavailable)):
        body["retryAfterMs"] = exc.retry_after_ms
    if isinstance(exc, StorageUnavailable):
        body["reason"] = exc.reason
    return body


def http_error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def mark_retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback: a future's exception counts as seen even when its awaiter was cancelled meanwhile."""
    if not future.cancelled():
        future.exception()
