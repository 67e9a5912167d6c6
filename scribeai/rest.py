"""aiohttp routes: thin handlers over SessionService; one JSON error shape everywhere."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from sqlmodel import col
from sqlalchemy import and_, case, func, or_, select

from scribeai import openapi, protocol, search, transcripts
from scribeai.auth import token_from_headers
from scribeai.errors import InvalidInput, ScribeError, Unauthorized, http_error_body
from scribeai.idempotency import check_writable
from scribeai.metrics import CONTENT_TYPE
from scribeai.models import Chunk, ChunkStatus, RecordingSession, TranscriptStream
from scribeai.services import Services, services_key

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
user_key = web.RequestKey("user_id", str)
admin_key = web.RequestKey("admin", bool)  # the whole server's figures, not only the user's own
MAX_PAGE = 200
SESSION_STATUSES = ("recording", "paused", "stopped")
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/api/openapi.json")
MAX_JSON_DEPTH = 32


@web.middleware
async def errors_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every error leaves as {error: {code, message}} with its HTTP status."""
    try:
        return await handler(request)
    except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError too: the client left mid-body
        log.warning("%s %s: client went away (%s)", request.method, request.path, exc or type(exc).__name__)
        return web.json_response(http_error_body("client_gone", "the connection was reset"), status=400)
    except ScribeError as exc:
        return web.json_response(http_error_body(exc.code, exc.message), status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        response = web.json_response(http_error_body(code, exc.reason), status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(http_error_body("internal", "internal server error"), status=500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS and request.method != "OPTIONS":
        services = request.app[services_key]
        token = token_from_headers(request.headers)
        if not token and not services.auth.disabled:  # the shared message names ?token=, which only Socket.IO takes
            raise Unauthorized("a token is required: Authorization: Bearer <token> or the scribeai_token cookie")
        identity = services.auth.identity_of(token)
        request[user_key] = identity.user
        request[admin_key] = identity.admin
    return await handler(request)


def _services(request: web.Request) -> Services:
    return request.app[services_key]


def _session_id(request: web.Request) -> str:
    return protocol.parse_session_id(request.match_info["session_id"], "id")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        text = await request.text()  # at most client_max_size bytes (1 MiB): more is a 413 before it is read
    except (UnicodeDecodeError, LookupError) as exc:  # LookupError: an unknown charset
        raise InvalidInput("request body is not valid JSON") from exc
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InvalidInput(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput("request body is not valid JSON") from exc
    return protocol.parse_object(body, "request body")


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Whether it can store chunks is /readyz."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 with the reason while chunks cannot be stored (storage or database refuses writes)."""
    services = _services(request)
    fault = services.ingest.recent_fault() or await check_writable(services.db, services.store, timeout_s=2.0)
    if fault is not None:
        return web.json_response({"status": "unavailable", "reason": fault.reason, "message": fault.message,
                                  "retryAfterMs": fault.retry_after_ms}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; behind METRICS_TOKEN when one is set."""
    services = _services(request)
    expected = services.settings.metrics_token
    if expected and not hmac.compare_digest(token_from_headers(request.headers) or "", expected):
        raise Unauthorized("/metrics needs Authorization: Bearer <METRICS_TOKEN>")
    return web.Response(body=services.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of these routes (no token needed)."""
    return web.json_response(openapi.document(max_page=MAX_PAGE, session_statuses=SESSION_STATUSES))


@routes.get("/api/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    status = request.query.get("status")
    if status is not None and status not in SESSION_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(SESSION_STATUSES)}")
    cursor = _decode_cursor(request.query.get("cursor"))
    query = select(RecordingSession).where(col(RecordingSession.user_id) == request[user_key])
    if status:
        query = query.where(col(RecordingSession.status) == status)
    if cursor is not None:
        created, sid = cursor
        # The plain `created_at <=` lets both databases seek the index to the page instead of filtering from the top.
        query = query.where(col(RecordingSession.created_at) <= created,
                            or_(col(RecordingSession.created_at) < created, col(RecordingSession.id) < sid))
    query = query.order_by(col(RecordingSession.created_at).desc(), col(RecordingSession.id).desc()).limit(limit + 1)
    async with _services(request).db.read() as s:
        rows = list((await s.execute(query)).scalars())
        page = rows[:limit]
        counts = await _chunk_counts(s, [r.id for r in page], _services(request).settings.chunk_duration_ms)
    items = [_session_wire(r, counts.get(r.id, (0, 0, 0))) for r in page]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return web.json_response({"sessions": items, "nextCursor": next_cursor})


@routes.post("/api/sessions")
async def create_session(request: web.Request) -> web.Response:
    body = await _json_body(request)
    services = _services(request)
    session_id = protocol.parse_session_id(body["id"], "id") if body.get("id") is not None else services.new_session_id()
    title = protocol.parse_optional_text(body, "title", 512)
    await services.sessions.ensure(session_id, request[user_key], title=title)
    return web.json_response(await _session_view(services, session_id, request[user_key]), status=201)


@routes.get("/api/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(await _session_view(_services(request), _session_id(request), request[user_key]))


@routes.get("/api/sessions/{session_id}/missing-chunks")
async def missing_chunks(request: web.Request) -> web.Response:
    services, session_id = _services(request), _session_id(request)
    await services.sessions.get_owned(session_id, request[user_key])
    last_seq = _int_param(request, "lastSeq", None, 0, protocol.MAX_SEQUENCE)
    summary = await services.sessions.gap_summary(session_id, last_seq)
    return web.json_response({"missing": summary.missing, "maxSeq": summary.max_seq, "totalChunks": summary.total_chunks})


@routes.post("/api/sessions/{session_id}/stop")
async def stop_session(request: web.Request) -> web.Response:
    services, session_id = _services(request), _session_id(request)
    await services.sessions.get_owned(session_id, request[user_key])
    body = await _json_body(request)
    reply = await services.sessions.stop(session_id, protocol.parse_optional_seq(body, "lastSeq"))
    await services.pipeline.session_changed(session_id)
    await services.pipeline.check_completed(session_id)
    return web.json_response(reply)


@routes.post("/api/sessions/{session_id}/retry-failed")
async def retry_failed(request: web.Request) -> web.Response:
    """Requeue this session's chunks whose transcription failed for good."""
    services, session_id = _services(request), _session_id(request)
    await services.sessions.get_owned(session_id, request[user_key])
    count = await services.pipeline.queue.retry_failed(session_id)
    if count:
        services.pipeline.notify()
    return web.json_response({"sessionId": session_id, "requeued": count})


@routes.get("/api/sessions/{session_id}/transcript")
async def transcript(request: web.Request) -> web.Response:
    """Segments in seq order, with the chunks still waiting or failed; ?format=txt|srt|vtt|md downloads (md: with
    the session's summary ahead of the transcript)."""
    services, session_id = _services(request), _session_id(request)
    session = await services.sessions.get_owned(session_id, request[user_key])
    fmt = request.query.get("format", "json")
    if fmt != "json" and fmt not in transcripts.FORMATS:
        raise InvalidInput(f"format must be json, {', '.join(transcripts.FORMATS)}")
    segments = await services.pipeline.segments_after(session_id, None)
    if fmt != "json":
        text = transcripts.render(segments, fmt)
        if fmt == "md":  # the session's summary ahead of the transcript
            from scribeai.summaries import render, summaries_key
            text = render(await request.app[summaries_key].get_stored(session_id), segments, "md", session.title)
        return web.Response(
            text=text,
            headers={"Content-Type": transcripts.FORMATS[fmt],
                     "Content-Disposition": f'attachment; filename="{session_id}.{fmt}"'},
        )
    async with services.db.read() as s:
        unfinished = (await s.execute(
            select(col(Chunk.seq), col(Chunk.status), col(Chunk.error)).where(col(Chunk.session_id) == session_id, col(Chunk.status) != ChunkStatus.DONE)
            .order_by(col(Chunk.seq))
        )).all()
    return web.json_response({
        "sessionId": session_id, "status": session.status, "tier": session.tier, "segments": segments,
        "pending": [seq for seq, status, _ in unfinished if status in ChunkStatus.UNFINISHED],
        "failed": [{"seq": seq, "error": error} for seq, status, error in unfinished if status == ChunkStatus.FAILED],
        "gaps": await services.pipeline.gaps(session_id),
    })


@routes.get("/api/search")
async def search_transcripts(request: web.Request) -> web.Response:
    """The caller's transcript segments and summaries that match `q`, most relevant first, with a highlighted snippet."""
    query = search.parse_query(request.query.get("q"))
    page = await search.search(
        _services(request).db, request[user_key], query,
        limit=_int_param(request, "limit", search.DEFAULT_LIMIT, 1, search.MAX_LIMIT),
        cursor=search.decode_cursor(request.query.get("cursor")),
        since=search.parse_day(request.query.get("from"), "from", end=False),
        until=search.parse_day(request.query.get("to"), "to", end=True))
    return web.json_response(page.wire())


@routes.get("/api/server/stats")
async def server_stats(request: web.Request) -> web.Response:
    """The server's own load for an admin (stress script, dashboards); a user's own figures for anyone else."""
    services = _services(request)
    if not request[admin_key]:
        return web.json_response(await _user_stats(services, request[user_key]))
    sample = services.monitor.sample()
    pipeline = services.pipeline
    return web.json_response({
        "scope": "server",
        "rssBytes": sample.rss_bytes,
        "peakRssBytes": services.monitor.peak_rss_bytes,
        "cpuPercent": sample.cpu_percent,
        "connections": len(services.realtime.connections),
        "transcription": {
            "engine": pipeline.engine.name, "workers": pipeline.workers, "backlog": pipeline.backlog,
            "inFlight": pipeline.in_flight, "completed": pipeline.completed, "failed": pipeline.failed,
            "retried": pipeline.retried, "recentLatencyMs": round(pipeline.recent_latency_ms(), 1),
            "realTimeFactor": round(pipeline.real_time_factor(), 3),
        },
        "counters": services.realtime.counters,
    })


async def _user_stats(services: Services, user_id: str) -> dict[str, Any]:
    """One user's connections, sessions and chunks: nothing about the server or other users."""
    async with services.db.read() as s:
        by_status: dict[str, int] = dict((await s.execute(
            select(col(Chunk.status), func.count()).join(RecordingSession, col(RecordingSession.id) == col(Chunk.session_id))
            .where(col(RecordingSession.user_id) == user_id).group_by(col(Chunk.status))
        )).all())
        by_session_status: dict[str, int] = dict((await s.execute(
            select(col(RecordingSession.status), func.count()).where(col(RecordingSession.user_id) == user_id)
            .group_by(col(RecordingSession.status))
        )).all())
    return {
        "scope": "user",
        "userId": user_id,
        "connections": sum(1 for conn in services.realtime.connections.values() if conn.user_id == user_id),
        "sessions": {str(k): int(v) for k, v in by_session_status.items()},
        "chunksByStatus": {str(k): int(v) for k, v in by_status.items()},
        "transcription": {"backlog": sum(int(v) for k, v in by_status.items() if k in ChunkStatus.UNFINISHED)},
    }


async def _session_view(services: Services, session_id: str, user_id: str) -> dict[str, Any]:
    row = await services.sessions.get_owned(session_id, user_id)
    async with services.db.read() as s:
        counts = await _chunk_counts(s, [session_id], services.settings.chunk_duration_ms)
        by_status: dict[str, int] = dict((await s.execute(
            select(col(Chunk.status), func.count()).where(col(Chunk.session_id) == session_id).group_by(col(Chunk.status))
        )).all())
    view = _session_wire(row, counts.get(session_id, (0, 0, 0)))
    view["chunksByStatus"] = {str(k): int(v) for k, v in by_status.items()}
    return view


async def _chunk_counts(s: Any, session_ids: list[str], assumed_ms: int) -> dict[str, tuple[int, int, int]]:
    """(chunks, bytes, duration ms) per session, in two grouped queries (see _duration_ms)."""
    if not session_ids:
        return {}
    undeclared = col(Chunk.duration_ms).is_(None)
    unfinished = col(Chunk.status).in_(ChunkStatus.UNFINISHED)

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
    rows = await s.execute(
        select(col(Chunk.session_id), func.count(), func.coalesce(func.sum(col(Chunk.size)), 0),
               func.coalesce(func.sum(col(Chunk.duration_ms)), 0), count(undeclared),
               count(col(Chunk.status) == ChunkStatus.DONE),
               func.coalesce(func.sum(case((unfinished, col(Chunk.duration_ms)), else_=0)), 0),
               count(and_(unfinished, undeclared)))
        .where(col(Chunk.session_id).in_(session_ids)).group_by(col(Chunk.session_id))
    )
    measured = dict((await s.execute(select(col(TranscriptStream.session_id), col(TranscriptStream.done_ms))
                                     .where(col(TranscriptStream.session_id).in_(session_ids)))).all())
    return {sid: (int(n), int(b), _duration_ms(int(declared), int(without), int(done), int(waiting_declared),
                                              int(waiting_without), int(measured.get(sid) or 0), assumed_ms))
            for sid, n, b, declared, without, done, waiting_declared, waiting_without in rows.all()}


def _duration_ms(declared: int, without: int, done: int, waiting_declared: int, waiting_without: int, measured: int,
                 assumed_ms: int) -> int:
    """A session's length: its chunks' durationMs as sent; when some were sent without one, what transcription measured
    (the recording's timeline up to the last audio transcribed, through the `done` chunks) plus the chunks still
    waiting (their durationMs, else the session's measured length per chunk); with nothing measured (TRANSCRIBER=none,
    nothing transcribed yet), CHUNK_DURATION_MS for each chunk without one."""
    if without == 0:
        return declared
    if measured > 0 and done > 0:
        return measured + waiting_declared + round(waiting_without * measured / done)
    return declared + without * assumed_ms


def _session_wire(row: RecordingSession, counts: tuple[int, int, int]) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None
    return {
        "id": row.id,
        "title": row.title,
        "status": row.status,
        "tier": row.tier,
        "createdAt": iso(row.created_at),
        "startedAt": iso(row.started_at),
        "stoppedAt": iso(row.stopped_at),
        "lastActivityAt": iso(row.last_activity_at),
        "totalChunks": counts[0],
        "bytes": counts[1],
        "durationMs": counts[2],
        "archive": {"path": row.archive_path, "sha256": row.archive_sha256, "bytes": row.archive_bytes,
                    "archivedAt": iso(row.archived_at)} if row.archive_path else None,
    }


def _int_param(request: web.Request, name: str, default: Any, low: int, high: int) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return value


def _encode_cursor(row: RecordingSession) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        created, session_id = raw.split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:  # the column binds only aware datetimes: a naive one would be a 500
            raise ValueError("cursor time has no UTC offset")
        return when.astimezone(timezone.utc), protocol.parse_session_id(session_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError, ScribeError) as exc:
        raise InvalidInput("cursor is not valid") from exc

