"""create_app(settings): the only place the parts are wired together."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp_cors
import socketio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from scribeai import rest, retention, search, summaries
from scribeai.auth import Authenticator, load_secret
from scribeai.db import Database
from scribeai.demo import add_demo, demo_url
from scribeai.errors import StartupCheckFailed, storage_fault
from scribeai.idempotency import ChunkIngest, classify_fault, ensure_writable
from scribeai.metrics import LiveGauges, Metrics
from scribeai.monitor import ProcessMonitor
from scribeai.pubsub import check_redis
from scribeai.transport import cap_polling_responses, disable_websocket_compression, fix_polling_posts, name_sessions_after
from scribeai.realtime import Realtime
from scribeai.services import Services, services_key
from scribeai.sessions import SessionService
from scribeai.settings import Settings
from scribeai.store import open_store
from scribeai.transcription.engines import create_engine
from scribeai.transcription.pipeline import Pipeline

log = logging.getLogger(__name__)
REST_BODY_LIMIT = 1024 * 1024
# After the drain (SHUTDOWN_TIMEOUT for chunks being stored) and the disconnects: how long the requests of the
# disconnected clients (their websockets and long polls) and any REST request get to end, then again before aiohttp
# cancels what is left. A websocket writer blocked on a client that reads nothing held a stop for SHUTDOWN_TIMEOUT.
CLOSE_WAIT_S = 0.5


class _QuietClientErrors(logging.Filter):
    """aiohttp logs a malformed request or a client gone mid-body as an ERROR with a traceback: make it one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionError | HttpProcessingError):
            record.msg = " ".join(f"{record.getMessage()}: {type(exc).__name__}: {exc}".split())
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_client_errors() -> None:
    for name in ("aiohttp.server", "aiohttp.web_protocol"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietClientErrors) for f in logger.filters):
            logger.addFilter(_QuietClientErrors())


def create_app(settings: Settings, *, db_schema: str | None = None) -> web.Application:
    """A fresh server: its own Socket.IO server, database engine and workers (nothing module-level)."""
    _quiet_client_errors()
    app = web.Application(client_max_size=REST_BODY_LIMIT, middlewares=[rest.errors_middleware, rest.auth_middleware])
    origins = settings.cors_origin_list
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if origins == ["*"] else origins,
        cors_credentials=True,
        max_http_buffer_size=settings.engineio_max_message_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        client_manager=socketio.AsyncRedisManager(settings.redis_url, channel=settings.redis_channel) if settings.redis_url else None,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)
    fix_polling_posts(sio)
    disable_websocket_compression(sio)
    name_sessions_after(sio, settings.node_id or socket.gethostname())
    cap_polling_responses(sio)
    db = Database(settings.effective_database_url, schema=db_schema, busy_timeout_ms=settings.db_busy_timeout_ms)
    store = open_store(settings.storage_dir, settings.storage_url)
    auth = Authenticator(load_secret(settings.secret, settings.data_dir), settings.auth, settings.admin_user_ids)
    sessions = SessionService(db)
    ingest = ChunkIngest(db, store, sessions, transcribe=settings.transcriber != "none")
    monitor = ProcessMonitor(settings.memory_budget_bytes)
    engine = create_engine(settings.transcriber, whisper_model=settings.whisper_model, whisper_threads=settings.whisper_threads,
                           whisper_beam_size=settings.whisper_beam_size,
                           workers=settings.max_concurrency, openai_base_url=settings.openai_base_url,
                           openai_api_key=settings.openai_api_key, transcribe_model=settings.transcribe_model)
    metrics = Metrics()
    pipeline = Pipeline(db, store, engine, sio, node_id=settings.node_id or socket.gethostname(), metrics=metrics,
                        workers=settings.max_concurrency if settings.transcriber != "none" else 0,
                        chunk_duration_ms=settings.chunk_duration_ms, retry_base_s=settings.transcribe_retry_base_s,
                        gap_wait_s=settings.gap_wait_s, idle_flush_s=settings.idle_flush_s,
                        window_wait_s=settings.window_wait_s, window_s=(settings.window_min_s, settings.window_target_s),
                        lease_s=settings.transcribe_lease_s, caption_share=settings.caption_cpu_budget,
                        takeover_s=settings.transcribe_takeover_s)
    realtime = Realtime(sio, settings, auth, ingest, sessions, monitor, pipeline, metrics)
    realtime.register()
    pipeline.on_transcribed = realtime.chunk_transcribed
    app[summaries.summaries_key] = summaries.Summaries.from_settings(db, sio, settings, metrics.registry)
    pipeline.on_completed = app[summaries.summaries_key].session_completed  # a session's summary once all is transcribed
    pipeline.refreshers.append(realtime.reconcile_pending)  # chunks read by `scribeai worker` or another node
    pipeline.refreshers.append(realtime.renew_captions)
    metrics.live = LiveGauges(
        connections=lambda: len(realtime.connections), queue_depth=lambda: pipeline.backlog,
        in_flight=lambda: pipeline.in_flight, real_time_factor=pipeline.real_time_factor,
        rss_bytes=lambda: monitor.sample().rss_bytes,
    )
    app[services_key] = Services(settings, db, store, auth, sessions, ingest, monitor, sio, pipeline, realtime, metrics)
    app.add_routes(rest.routes)
    app.add_routes(retention.routes)
    app.add_routes(summaries.routes)
    _setup_cors(app, origins)
    add_demo(app, settings)  # after CORS: the page is same-origin, and not part of the REST API
    node = pipeline.queue.node_id

    async def name_the_node(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-ScribeAI-Node"] = node  # which node behind a load balancer answered (logs, stickiness checks)
    app.on_response_prepare.append(name_the_node)
    app.cleanup_ctx.extend([_redis, _database, _transcription, retention.scheduler])
    app[search.indexer_key] = search.SearchIndexer(db)
    app.cleanup_ctx.append(search.indexer)  # after _database: SQLite's search index a second behind the segments
    app.on_shutdown.append(_graceful_stop)
    app.on_cleanup.append(_stopped)
    app.on_shutdown.append(summaries.stop_summaries)
    return app


def _setup_cors(app: web.Application, origins: list[str]) -> None:
    # python-socketio answers CORS on /socket.io/ itself; aiohttp-cors covers only the REST routes.
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=True, expose_headers="*", allow_headers="*", allow_methods="*")
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if not route.resource or route.resource.canonical.startswith("/socket.io"):
            continue
        cors.add(route)


async def _redis(app: web.Application) -> AsyncIterator[None]:
    # Without this a node whose Redis is down starts, says it is ready, and loses every message to other nodes' rooms.
    url = app[services_key].settings.redis_url
    if url:
        await check_redis(url)
    yield


async def _database(app: web.Application) -> AsyncIterator[None]:
    services = app[services_key]
    if services.settings.auth == "none":
        log.warning("SCRIBEAI_AUTH=none: every connection is user 'anonymous' with no token")
    try:
        services.settings.storage_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = fault.reason if (fault := storage_fault(exc)) else "storage_unusable"
        raise StartupCheckFailed(f"cannot create STORAGE_DIR {services.settings.storage_dir} ({reason}): {exc.strerror or exc}",
                                 reason=reason) from exc
    database_dir = services.db.sqlite_path.parent if services.db.sqlite_path else None
    try:
        await asyncio.to_thread(services.db.probe_directory)
    except OSError as exc:
        raise StartupCheckFailed(f"the database directory {database_dir} does not take a write: {exc.strerror or exc} "
                                 "(DATA_DIR or DATABASE_URL)", reason="database_unavailable") from exc
    try:
        await services.db.create_all()
    except Exception as exc:
        fault = classify_fault(exc)
        if fault is None:
            raise
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]  # not SQLAlchemy's "Background on this error" line
        raise StartupCheckFailed(f"cannot prepare the database ({fault.reason}): {detail}", reason=fault.reason) from exc
    # A server that cannot store a chunk must not start (and look healthy) only to refuse the first one.
    await ensure_writable(services.db, services.store)
    removed = await asyncio.to_thread(services.store.sweep_temporaries)
    if removed:
        log.info("removed %d temporary chunk files left by a crash", removed)
    yield
    await asyncio.to_thread(services.ingest.close)  # chunks still in a storage thread are committed first
    await services.db.dispose()


async def _transcription(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[services_key].pipeline
    await pipeline.start()
    yield
    await pipeline.stop()


async def _graceful_stop(app: web.Application) -> None:
    """Refuse new chunks, let in-flight ones finish and ack, then disconnect every client (once)."""
    services = app[services_key]
    await services.realtime.stop(services.settings.shutdown_timeout)


async def _stopped(app: web.Application) -> None:
    app[services_key].realtime.stopped()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """"uvloop" or "asyncio": which event loop serves (the EVENT_LOOP setting)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def serve(app: web.Application, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully.

    aiohttp's own run_app closes connections for reading before on_shutdown runs, which would
    drop chunks already on the wire; here the drain happens while connections still read.
    """
    services = app[services_key]
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLOSE_WAIT_S)
    try:
        await runner.setup()
    except StartupCheckFailed as exc:
        await runner.cleanup()
        print(f"scribeai: not starting: {exc.message}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    # Handlers before the socket opens: a SIGTERM right after "listening" (a supervisor's quick restart) is a graceful stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("ScribeAI listening on http://%s:%d (event loop: %s)", host, port, loop_name(asyncio.get_running_loop()))
    if services.settings.demo == "on":
        log.info("demo page: %s (DEMO=off turns it off)", demo_url(host, port))
    try:
        await stop.wait()
        log.info("stopping: draining in-flight chunks")
        await site.stop()
        await _graceful_stop(app)
        await _requests_finished(runner, CLOSE_WAIT_S)
    finally:
        await runner.cleanup()


async def _requests_finished(runner: web.AppRunner, timeout: float) -> None:
    """Wait (at most `timeout`) until no request is in progress: the websockets and long polls of the clients just
    disconnected end within milliseconds. aiohttp's cleanup would close their connections at once instead, and then
    wait for each websocket's close handshake until its timeout (5 s measured)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while runner.server is not None and loop.time() < deadline:
        if not any(getattr(conn, "_request_in_progress", False) for conn in runner.server.connections):
            return
        await asyncio.sleep(0.01)
