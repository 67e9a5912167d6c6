"""The OpenAPI 3.1 description of every REST route, served at GET /api/openapi.json.

Written by hand and kept honest two ways (tests/test_openapi.py): its (method, path) set must equal
the router's, and schemathesis checks the live server's answers against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scribeai import protocol, search, transcripts
from scribeai.models import ChunkStatus, Tier

OPENAPI_VERSION = "3.1.0"
_INT = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number"}
_TEXT = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_SEQ = {"type": "integer", "minimum": 0, "maximum": protocol.MAX_SEQUENCE}
_ERRORS = {  # status -> (component name, error code on the wire, description)
    400: ("BadRequest", "invalid", "A parameter or the request body is not valid."),
    401: ("Unauthorized", "unauthorized", "No token, or a token that is malformed, wrongly signed or expired."),
    403: ("Forbidden", "forbidden", "The session id is taken by another user."),
    404: ("NotFound", "not_found", "No such session for this user (another user's session is not revealed), or no such route."),
    405: ("MethodNotAllowed", "method_not_allowed", "The path exists but not with this method; `Allow` lists the methods."),
    413: ("PayloadTooLarge", "too_large", "The request body is over the server's 1 MiB limit."),
    500: ("InternalError", None, "A bug; logged with its traceback on the server."),
}


def document(*, max_page: int, session_statuses: Sequence[str]) -> dict[str, Any]:
    """The whole OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "ScribeAI recording server REST API",
            "version": "1",
            "description": "JSON over HTTP beside the Socket.IO recording protocol (docs/protocol.md). Every error "
                           "is `{error: {code, message}}`; an existing path asked with another method answers 405 "
                           "with `Allow`. Field names are camelCase.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "paths": _paths(max_page, session_statuses),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "HS256 JWT signed with SCRIBEAI_SECRET; `sub` is the user id."},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "scribeai_token",
                               "description": "The same JWT in a cookie (the original web app's way)."},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "METRICS_TOKEN, needed by /metrics only when one is configured."},
            },
            "schemas": _schemas(session_statuses),
            "responses": {name: _error_response(code, text, status) for status, (name, code, text) in _ERRORS.items()},
        },
    }


def _paths(max_page: int, statuses: Sequence[str]) -> dict[str, Any]:
    session_id = {"name": "session_id", "in": "path", "required": True, "description": "The session id.",
                  "schema": {"type": "string", "pattern": protocol.SESSION_ID.pattern}}
    public: list[dict[str, Any]] = []
    return {
        "/healthz": {"get": _operation("healthz", "Liveness.", {"200": _json("Health")}, errors=(), security=public)},
        "/readyz": {"get": _operation(
            "readyz", "Readiness: can chunks be stored now (STORAGE_DIR takes an fsync'd write, the database a write)?",
            {"200": _json("Health"), "503": {"description": "Chunks cannot be stored now; `reason` says why.",
                                             "content": {"application/json": {"schema": _ref("NotReady")}}}},
            errors=(), security=[{}])},  # no token, like /healthz
        "/metrics": {"get": _operation(
            "metrics", "Prometheus text exposition.",
            {"200": {"description": "Prometheus text.", "content": {"text/plain": {"schema": _TEXT}}}},
            errors=(401,), security=[{}, {"metricsToken": []}])},
        "/api/openapi.json": {"get": _operation(
            "getOpenAPI", "This document.", {"200": _json("OpenAPIDocument")}, errors=(), security=public)},
        "/api/sessions": {
            "get": _operation("listSessions", "The caller's sessions, newest first, one page at a time.",
                              {"200": _json("SessionPage")}, errors=(400, 401), parameters=[
                                  _query("limit", {"type": "integer", "minimum": 1, "maximum": max_page, "default": 50},
                                         "Page size."),
                                  _query("cursor", {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                                         "`nextCursor` of the previous page (opaque; anything else is a 400)."),
                                  _query("status", {"type": "string", "enum": list(statuses)}, "Only sessions in this status."),
                              ]),
            "post": _operation("createSession", "Create a session (idempotent for its owner).",
                               {"201": _json("SessionDetail", links=_session_links())}, errors=(400, 401, 403, 413),
                               body=_body("CreateSession")),
        },
        "/api/sessions/{session_id}": {"get": _operation(
            "getSession", "One session with its counts, bytes, duration, status and archive.",
            {"200": _json("SessionDetail")}, errors=(400, 401, 404), parameters=[session_id])},
        "/api/sessions/{session_id}/missing-chunks": {"get": _operation(
            "getMissingChunks", "Gaps in the stored sequence numbers.", {"200": _json("MissingChunks")},
            errors=(400, 401, 404), parameters=[
                session_id, _query("lastSeq", _SEQ, "The recorder's last sequence: also list tail gaps up to it.")])},
        "/api/sessions/{session_id}/stop": {"post": _operation(
            "stopSession", "The recording is over (as the `stopSession` event).", {"200": _json("StopReply")},
            errors=(400, 401, 404, 413), parameters=[session_id], body=_body("StopSession"))},
        "/api/sessions/{session_id}/retry-failed": {"post": _operation(
            "retryFailedChunks", "Queue this session's failed chunks for transcription again.",
            {"200": _json("RetryReply")}, errors=(400, 401, 404), parameters=[session_id])},
        "/api/sessions/{session_id}/summary": {
            "get": _operation(
                "getSummary", "The session's summary (pending until made); `format` downloads it with the transcript.",
                {"200": {"description": "The summary.", "content": {
                    "application/json": {"schema": _ref("Summary")},
                    "text/plain": {"schema": _TEXT}, "text/markdown": {"schema": _TEXT}}}},
                errors=(400, 401, 404), parameters=[session_id, _query(
                    "format", {"type": "string", "enum": ["json", "txt", "md"], "default": "json"}, "Answer format.")]),
            "post": _operation(
                "makeSummary", "Make the summary again from the transcript as it is; the result comes as "
                "`session-summary` and from GET.", {"202": _json("Summary")}, errors=(400, 401, 404),
                parameters=[session_id])},
        "/api/sessions/{session_id}/transcript": {"get": _operation(
            "getTranscript", "Segments in seq order with the chunks still waiting or failed; `format` downloads text.",
            {"200": {"description": "The transcript.", "content": {
                "application/json": {"schema": _ref("Transcript")},
                **{media.split(";")[0]: {"schema": _TEXT} for media in transcripts.FORMATS.values()}}}},
            errors=(400, 401, 404), parameters=[session_id, _query(
                "format", {"type": "string", "enum": ["json", *transcripts.FORMATS], "default": "json"}, "Answer format.")])},
        "/api/search": {"get": _operation(
            "searchTranscripts", "The caller's transcript segments and summaries that match `q`, most relevant first.",
            {"200": _json("SearchPage")}, errors=(400, 401), parameters=[
                {**_query("q", {"type": "string", "minLength": 1, "maxLength": search.MAX_QUERY_CHARS},
                          "Words (all must match; common ones such as the, and, we are left out unless inside a phrase), "
                          "\"a phrase\", prefix* and `OR` between two terms."), "required": True},
                _query("limit", {"type": "integer", "minimum": 1, "maximum": search.MAX_LIMIT, "default": search.DEFAULT_LIMIT},
                       "Page size."),
                _query("cursor", {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                       "`next` of the previous page (opaque; anything else is a 400)."),
                _query("from", {"type": "string"}, "Only sessions created at or after this ISO 8601 date or date-time."),
                _query("to", {"type": "string"}, "Only sessions created before this date-time, or on or before this date."),
            ])},
        "/api/server/stats": {"get": _operation(
            "getServerStats", "The server's own load for an admin (ADMIN_USERS or a role admin token); "
            "the caller's own connections, sessions and chunks for anyone else.",
            {"200": {"description": "Server or user figures (see `scope`).", "content": {"application/json": {
                "schema": {"oneOf": [_ref("ServerStats"), _ref("UserStats")]}}}}}, errors=(401,))},
        "/api/storage/metrics": {"get": _operation(
            "getStorageMetrics", "Storage per tier: the whole server's (with disk space) for an admin, "
            "the caller's own sessions' for anyone else.",
            {"200": _json("StorageMetrics")}, errors=(401,))},
    }


def _operation(operation_id: str, summary: str, responses: dict[str, Any], *, errors: Sequence[int],
               parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
               security: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    operation["responses"] = {**responses, **{str(s): {"$ref": f"#/components/responses/{_ERRORS[s][0]}"} for s in (*errors, 500)}}
    if security is not None:
        operation["security"] = security
    return operation


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _body(schema: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": _ref(schema)}}}


def _json(schema: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "OK.", "content": {"application/json": {"schema": _ref(schema)}}}
    if links:
        response["links"] = links
    return response


def _session_links() -> dict[str, Any]:
    by_id = {"session_id": "$response.body#/id"}
    return {name: {"operationId": op, "parameters": by_id} for name, op in (
        ("GetSession", "getSession"), ("GetMissingChunks", "getMissingChunks"), ("GetTranscript", "getTranscript"),
        ("StopSession", "stopSession"), ("RetryFailedChunks", "retryFailedChunks"))}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    """A closed object: every listed property is required unless named optional, no others allowed."""
    return {"type": "object", "properties": properties, "required": [p for p in properties if p not in optional],
            "additionalProperties": False}


def _error_response(code: str | None, description: str, status: int) -> dict[str, Any]:
    schema = _object({"error": _object({"code": {"const": code} if code else _TEXT, "message": _TEXT})})
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if status == 405:
        response["headers"] = {"Allow": {"description": "The methods this path answers.", "schema": _TEXT}}
    return response


def _schemas(statuses: Sequence[str]) -> dict[str, Any]:
    counts = {"type": "object", "additionalProperties": _INT}
    tier = _object({k: _INT for k in ("sessions", "chunks", "bytes", "chunkBytes")})
    disk = _object({"freeBytes": _INT, "totalBytes": _INT})
    text_or_null = {"type": ["string", "null"]}
    session = {
        "id": {"type": "string", "pattern": protocol.SESSION_ID.pattern},
        "title": text_or_null,
        "status": {"type": "string", "enum": list(statuses)},
        "tier": {"type": "string", "enum": [Tier.HOT, Tier.WARM, Tier.COLD]},
        "createdAt": _TIME, "startedAt": _TIME_OR_NULL, "stoppedAt": _TIME_OR_NULL, "lastActivityAt": _TIME,
        "totalChunks": _INT, "bytes": _INT, "durationMs": _INT,
        "archive": {"oneOf": [{"type": "null"}, _object(
            {"path": _TEXT, "sha256": text_or_null, "bytes": {"type": ["integer", "null"]}, "archivedAt": _TIME_OR_NULL})]},
    }
    chunk_statuses = [ChunkStatus.PENDING, ChunkStatus.TRANSCRIBING, ChunkStatus.DONE, ChunkStatus.FAILED, ChunkStatus.STORED]
    gap = {"sessionId": _TEXT, "status": {"type": "string", "enum": list(statuses)},
           "maxSeq": {"type": "integer", "minimum": -1}, "totalChunks": _INT, "missing": {"type": "array", "items": _SEQ}}
    return {
        "Health": _object({"status": {"const": "ok"}}),
        "NotReady": _object({"status": {"const": "unavailable"}, "reason": {
            "type": "string", "enum": ["storage_full", "storage_read_only", "database_unavailable"]},
            "message": _TEXT, "retryAfterMs": _INT}),
        "OpenAPIDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
        "Session": _object(session),
        "SessionDetail": _object({**session, "chunksByStatus": {
            **counts, "propertyNames": {"enum": chunk_statuses}}}),
        "SessionPage": _object({"sessions": {"type": "array", "items": _ref("Session")}, "nextCursor": text_or_null}),
        "CreateSession": {"type": "object", "properties": {
            "id": {"type": ["string", "null"], "pattern": protocol.SESSION_ID.pattern,
                   "description": "Chosen by the client; a new 32-hex id when absent."},
            "title": {"type": ["string", "null"], "maxLength": 512, "pattern": "^[^\\u0000]*$"}}},
        "StopSession": {"type": "object", "properties": {"lastSeq": {"type": ["integer", "null"], "minimum": 0,
                                                                     "maximum": protocol.MAX_SEQUENCE}}},
        "MissingChunks": _object({k: gap[k] for k in ("missing", "maxSeq", "totalChunks")}),
        "StopReply": _object({**gap, "stoppedAt": _TIME}),
        "RetryReply": _object({"sessionId": _TEXT, "requeued": _INT}),
        "Summary": _object({
            "sessionId": _TEXT, "status": {"type": "string", "enum": ["pending", "ready", "failed"]},
            "method": {"enum": ["extractive", "llm", None]}, "model": _TEXT, "text": _TEXT,
            "keyPoints": {"type": "array", "items": _ref("SummaryPoint")},
            "actionItems": {"type": "array", "items": _ref("SummaryPoint")},
            "keywords": {"type": "array", "items": _TEXT}, "words": _INT, "generatedAt": _TIME_OR_NULL,
            "reason": text_or_null}, optional=("model",)),
        "SummaryPoint": _object({"text": _TEXT, "startMs": {"type": ["integer", "null"]}, "endMs": {"type": ["integer", "null"]}}),
        "Segment": _object({"id": _TEXT, "sessionId": _TEXT, "seq": _SEQ, "fromSeq": _SEQ, "toSeq": _SEQ, "startMs": {"type": "integer"},
                            "endMs": {"type": "integer"}, "text": _TEXT, "speaker": text_or_null,
                            "confidence": {"type": ["number", "null"]}, "isFinal": {"type": "boolean"}}),
        "Transcript": _object({
            "sessionId": _TEXT, "status": {"type": "string", "enum": list(statuses)},
            "tier": {"type": "string", "enum": [Tier.HOT, Tier.WARM, Tier.COLD]},
            "segments": {"type": "array", "items": _ref("Segment")}, "pending": {"type": "array", "items": _SEQ},
            "failed": {"type": "array", "items": _object({"seq": _SEQ, "error": text_or_null})},
            "gaps": {"type": "array", "items": _object({
                "fromSeq": _SEQ, "toSeq": _SEQ, "startMs": {"type": "integer"}, "endMs": {"type": ["integer", "null"]},
                "filled": {"type": "boolean"}, "reason": {"type": "string", "enum": ["missing", "failed"]}})}}),
        "SearchPage": _object({"results": {"type": "array", "items": _object({
            "kind": {"enum": ["segment", *search.SUMMARY_KINDS], "description": "A transcript segment, or a part of "
                     "the session's summary in a model's words: its text, a key point or an action item."},
            "sessionId": _TEXT, "title": text_or_null,
            "segmentId": {"type": ["string", "null"], "description": "The segment's id; null for a summary's part."},
            "startMs": {"type": ["integer", "null"], "description": "Where it was said; null for a summary's text "
                        "and for a model's point that no transcript sentence matches."},
            "endMs": {"type": ["integer", "null"]},
            "summaryParts": {"type": "array", "items": {"enum": ["keyPoint", "actionItem"]}, "description":
                             "A segment: the parts of its session's summary said in it; empty otherwise."},
            "snippet": {"type": "string", "description": "HTML-safe; matches in <mark>."},
            "rank": _NUMBER})}, "next": text_or_null}),
        "ServerStats": _object({
            "scope": {"const": "server"},
            "rssBytes": _INT, "peakRssBytes": _INT, "cpuPercent": _NUMBER, "connections": _INT,
            "transcription": _object({
                "engine": _TEXT, "workers": _INT, "backlog": _INT, "inFlight": _INT, "completed": _INT, "failed": _INT,
                "retried": _INT, "recentLatencyMs": _NUMBER, "realTimeFactor": _NUMBER}),
            "counters": counts}),
        "UserStats": _object({
            "scope": {"const": "user"}, "userId": _TEXT, "connections": _INT,
            "sessions": {"type": "object", "additionalProperties": _INT},
            "chunksByStatus": {"type": "object", "additionalProperties": _INT},
            "transcription": _object({"backlog": _INT})}),
        "StorageMetrics": _object({
            "scope": {"enum": ["server", "user"]},
            "generatedAt": _TIME,
            "tiers": _object({Tier.HOT: tier, Tier.WARM: tier, Tier.COLD: tier}),
            "archiveBytes": _INT, "transcriptSegments": _INT,
            "oldestHotSession": {"oneOf": [{"type": "null"}, _object(
                {"sessionId": _TEXT, "lastActivityAt": _TIME, "ageDays": _NUMBER})]},
            "disk": _object({"storage": disk, "archives": disk}),
            "freeDiskBytes": _INT,
            "saving": _object({"allHotBytes": _INT, "keptBytes": _INT, "savedBytes": {"type": "integer"},
                               "savedRatio": _NUMBER})}, optional=("disk", "freeDiskBytes")),
    }
