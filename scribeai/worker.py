"""`scribeai worker`: transcription (and the daily retention run) without the Socket.IO/REST server.

A worker claims session streams from the shared database exactly as the server's own workers do (a lease
per session, renewed by the process's heartbeat while it lives; a killed worker's streams are taken over once its
heartbeat has stopped for TRANSCRIBE_TAKEOVER_S, or its lease ran out),
reads the chunk files from the shared STORAGE_DIR, and sends live segments to the sessions' rooms through
the Socket.IO nodes' Redis channel, so whichever node holds a recorder or viewer delivers them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import socketio

from scribeai.db import Database
from scribeai.errors import StartupCheckFailed
from scribeai.metrics import Metrics
from scribeai.pubsub import check_redis
from scribeai.retention import Retention, RetentionScheduler
from scribeai.settings import Settings, parse_schedule
from scribeai.store import open_store
from scribeai.summaries import Summaries
from scribeai.transcription.engines import create_engine
from scribeai.transcription.pipeline import Pipeline

log = logging.getLogger("scribeai.worker")


def check_worker_settings(settings: Settings) -> None:
    """What a separate worker process needs, said in one line each (exit code 2)."""
    if not settings.redis_url:
        raise StartupCheckFailed("a separate worker needs REDIS_URL (the Socket.IO nodes' Redis): "
                                 "its live segments reach recorders and viewers through it")
    if settings.transcriber == "none":
        raise StartupCheckFailed("TRANSCRIBER=none: a worker has nothing to transcribe (whisper or openai)")
    if settings.max_concurrency < 1:
        raise StartupCheckFailed(f"MAX_CONCURRENCY={settings.max_concurrency}: a worker needs at least 1 transcription worker")


async def run_worker(settings: Settings) -> None:
    """Transcribe until SIGTERM/SIGINT, then release every claimed stream (another worker takes it at once)."""
    check_worker_settings(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    node_id = settings.node_id or f"{socket.gethostname()}-worker"
    db = Database(settings.effective_database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
    emitter = socketio.AsyncRedisManager(settings.redis_url, channel=settings.redis_channel, write_only=True)
    engine = create_engine(settings.transcriber, whisper_model=settings.whisper_model, whisper_threads=settings.whisper_threads,
                           whisper_beam_size=settings.whisper_beam_size,
                           workers=settings.max_concurrency, openai_base_url=settings.openai_base_url,
                           openai_api_key=settings.openai_api_key, transcribe_model=settings.transcribe_model)
    metrics = Metrics()
    store = open_store(settings.storage_dir, settings.storage_url)
    pipeline = Pipeline(db, store, engine, emitter, node_id=node_id, metrics=metrics,
                        workers=settings.max_concurrency, chunk_duration_ms=settings.chunk_duration_ms,
                        retry_base_s=settings.transcribe_retry_base_s, gap_wait_s=settings.gap_wait_s,
                        idle_flush_s=settings.idle_flush_s, window_wait_s=settings.window_wait_s,
                        window_s=(settings.window_min_s, settings.window_target_s),
                        lease_s=settings.transcribe_lease_s, caption_share=settings.caption_cpu_budget,
                        takeover_s=settings.transcribe_takeover_s)
    summaries = Summaries.from_settings(db, emitter, settings, metrics.registry)  # sessions this worker finds all transcribed
    pipeline.on_completed = summaries.session_completed
    scheduler: RetentionScheduler | None = None
    try:
        await db.create_all()
        await check_redis(settings.redis_url)
        await pipeline.start()
        at = parse_schedule(settings.retention_schedule)
        if at is not None:  # under retention's own lock: one run a day across every node and worker
            scheduler = RetentionScheduler(Retention(db, settings, store), at, metrics=metrics)
            scheduler.start()
        log.info("ScribeAI worker %s transcribing with %d workers (%s)", node_id, settings.max_concurrency, engine.name)
        await stop.wait()
        log.info("stopping: releasing claimed streams")
    finally:
        if scheduler is not None:
            await scheduler.stop()
        await pipeline.stop()
        await summaries.stop()
        await db.dispose()
    log.info("ScribeAI worker stopped")

