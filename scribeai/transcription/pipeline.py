"""Transcription workers: claim a job, decode behind the session header, transcribe, store, push live."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from sqlalchemy import func, select, update

from sqlmodel import col

from scribeai.db import Database, affected
from scribeai.metrics import Metrics
from scribeai.models import Chunk, ChunkStatus, RecordingSession, SessionStatus, TranscriptSegment, utcnow
from scribeai.protocol import room_of
from scribeai.storage import ChunkStore
from scribeai.transcription import media
from scribeai.transcription.engines import Engine, Transcription, TranscriptionFailed
from scribeai.transcription.queue import JobQueue

log = logging.getLogger(__name__)
NAMESPACES = ("/", "/record")
HEADER_WAIT_S = 2.0
HEADER_GIVE_UP_S = 600.0
EPOCH_MS_MIN = 1e11  # below: ms since the recording started (about 3 years of it)
ORIGIN_WAIT_S = 5.0
ORIGIN_RETRY_S = 0.5
IDLE_POLL_S = 1.0
LATENCY_HORIZON_S = 60.0  # an old slow job must not hold backpressure on forever
BACKLOG_REFRESH_S = 1.0


class Pipeline:
    """`workers` tasks over one JobQueue; `drain()` waits until nothing is left (tests, burst runs)."""

    def __init__(self, db: Database, store: ChunkStore, engine: Engine, sio: socketio.AsyncServer | None, *,
                 node_id: str, workers: int, chunk_duration_ms: int, retry_base_s: float = 1.0,
                 metrics: Metrics | None = None) -> None:
        self.db = db
        self.store = store
        self.engine = engine
        self.sio = sio
        self.queue = JobQueue(db, node_id, retry_base_s=retry_base_s)
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.chunk_duration_ms = chunk_duration_ms
        self.on_transcribed: Callable[[str], Awaitable[None]] | None = None
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.in_flight = 0
        self.backlog = 0
        self.audio_ms = 0
        self.busy_s = 0.0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=8)  # (monotonic time, ms)
        self._headers: OrderedDict[str, bytes] = OrderedDict()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return (f"Pipeline({self.engine.name}, workers={self.workers}, backlog={self.backlog}, in_flight={self.in_flight}, "
                f"completed={self.completed}, failed={self.failed})")

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        if self.workers and hasattr(self.engine, "load"):
            await self.engine.load()  # the first chunk should not wait for the model
        recovered = await self.queue.recover()
        if recovered:
            log.info("requeued %d transcription jobs this node held before it stopped", recovered)
        self.backlog = await self.queue.backlog()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(i), name=f"transcriber-{i}") for i in range(self.workers)]
        self._tasks.append(loop.create_task(self._refresh_backlog(), name="transcription-backlog"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.engine.close()

    def notify(self) -> None:
        """A job was queued: wake an idle worker now rather than at its next poll."""
        self.backlog += 1
        self._wake.set()

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until no job is pending or running (failed ones count as finished)."""
        deadline = time.monotonic() + timeout
        while await self.queue.backlog() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"transcription queue not drained after {timeout}s: {self!r}")
            await asyncio.sleep(0.05)

    def recent_latency_ms(self) -> float:
        """The slowest of the last few transcriptions, if they happened in the last minute."""
        horizon = time.monotonic() - LATENCY_HORIZON_S
        return max((ms for at, ms in self._latencies if at >= horizon), default=0.0)

    def real_time_factor(self) -> float:
        """Seconds of audio transcribed per second of worker time."""
        return (self.audio_ms / 1000) / self.busy_s if self.busy_s else 0.0

    # -- the worker loop ------------------------------------------------------

    async def _work(self, index: int) -> None:
        while True:
            try:
                job = await self.queue.claim()
            except Exception:
                log.exception("claiming a transcription job failed")
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if job is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            self.in_flight += 1
            try:
                await self._process(job)
            except Exception:
                log.exception("transcription of %s/%s crashed", job.session_id, job.seq)
                await self._record_failure(job, "internal error (see server log)")
            finally:
                self.in_flight -= 1

    async def _refresh_backlog(self) -> None:
        while True:
            await asyncio.sleep(BACKLOG_REFRESH_S)
            try:
                self.backlog = await self.queue.backlog()
            except Exception:
                log.exception("counting the transcription backlog failed")

    async def _process(self, job: Chunk) -> None:
        started = time.monotonic()
        data = await asyncio.to_thread(self.store.read, job.path)
        header = None if job.has_header else await self._session_header(job)
        if header is None and not job.has_header:
            if (utcnow() - job.created_at).total_seconds() > HEADER_GIVE_UP_S:
                await self._record_failure(job, "headerless chunk and the session's first chunk never arrived")
            else:
                await self.queue.defer(job, HEADER_WAIT_S, "waiting for the session's first chunk (container header)")
            return
        if await self._waits_for_origin(job):
            await self.queue.defer(job, ORIGIN_RETRY_S, "waiting for the session's chunk 0 (timing origin)")
            return
        try:
            prepared = await asyncio.to_thread(media.prepare, data, job.mime_type, header)
            result = await self.engine.transcribe(prepared, job.mime_type)
        except (TranscriptionFailed, media.UndecodableAudio) as exc:
            # Audio that does not decode will not decode on a retry; a busy upstream API may answer later.
            await self._record_failure(job, exc.reason, retryable=getattr(exc, "retryable", False))
            return
        elapsed = time.monotonic() - started
        segment = await self._segment(job, result)
        if await self.queue.complete(job, segment, result.duration_ms):
            await self._publish(segment, job)
        self.completed += 1
        self.busy_s += elapsed
        self.audio_ms += result.duration_ms or 0
        self._latencies.append((time.monotonic(), elapsed * 1000))
        self.metrics.transcribe_seconds.observe(elapsed)
        self.metrics.transcriptions_total.labels("done").inc()
        log.debug("transcribed %s/%s in %.2fs", job.session_id, job.seq, elapsed, extra={"sessionId": job.session_id, "seq": job.seq})
        self.backlog = max(self.backlog - 1, 0)
        if self.on_transcribed is not None:
            await self.on_transcribed(job.id)
        await self.check_completed(job.session_id)

    async def _record_failure(self, job: Chunk, reason: str, retryable: bool = True) -> None:
        failure = await self.queue.fail(job, reason, retryable=retryable)
        self.metrics.transcriptions_total.labels("failed" if failure.final else "retry").inc()
        if failure.final:
            self.failed += 1
            self.backlog = max(self.backlog - 1, 0)
            log.warning("transcription of %s/%s failed for good after %d attempts: %s",
                        job.session_id, job.seq, failure.attempts, reason, extra={"sessionId": job.session_id, "seq": job.seq})
            if self.on_transcribed is not None:
                await self.on_transcribed(job.id)
            await self.check_completed(job.session_id)
        else:
            self.retried += 1
            log.info("transcription of %s/%s failed (attempt %d), retry in %.0fs: %s",
                     job.session_id, job.seq, failure.attempts, failure.retry_in_s or 0, reason,
                     extra={"sessionId": job.session_id, "seq": job.seq})

    # -- session header and timing ---------------------------------------------

    async def _session_header(self, job: Chunk) -> bytes | None:
        """The container header from the session's first chunk; None until that chunk is stored.

        It is kept on the session row once found, so it outlives chunk 0's file (retention).
        """
        if job.session_id in self._headers:
            return self._headers[job.session_id]
        async with self.db.read() as s:
            header = (await s.execute(
                select(col(RecordingSession.container_header)).where(col(RecordingSession.id) == job.session_id)
            )).scalar_one_or_none()
            first = None if header else (await s.execute(
                select(Chunk).where(col(Chunk.session_id) == job.session_id, col(Chunk.has_header).is_(True))
                .order_by(col(Chunk.seq)).limit(1)
            )).scalars().first()
        if header is None:
            if first is None or first.seq > job.seq or first.deleted_at is not None:
                return None
            data = await asyncio.to_thread(self.store.read, first.path)
            try:
                header = await asyncio.to_thread(media.extract_header, data, media.detect_container(data))
            except ValueError:
                return None
            async with self.db.write() as s:
                await s.execute(update(RecordingSession).where(col(RecordingSession.id) == job.session_id)
                                .values(container_header=header))
        self._headers[job.session_id] = header
        while len(self._headers) > 256:
            self._headers.popitem(last=False)
        return header

    async def _timing_origin(self, job: Chunk) -> tuple[int, float] | None:
        """(seq, timestamp) of the session's chunk 0, else of its lowest stored chunk."""
        async with self.db.read() as s:
            row = (await s.execute(
                select(col(Chunk.seq), col(Chunk.timestamp_ms)).where(col(Chunk.session_id) == job.session_id)
                .order_by(col(Chunk.seq)).limit(1)
            )).first()
        return (int(row[0]), float(row[1])) if row is not None else None

    async def _waits_for_origin(self, job: Chunk) -> bool:
        """An epoch-stamped chunk that arrived before chunk 0 waits a little for it, so offsets are exact."""
        if job.seq == 0 or job.timestamp_ms < EPOCH_MS_MIN:
            return False
        origin = await self._timing_origin(job)
        return (origin is None or origin[0] != 0) and (utcnow() - job.created_at).total_seconds() < ORIGIN_WAIT_S

    async def _segment(self, job: Chunk, result: Transcription) -> TranscriptSegment:
        """Offsets from the session start.

        Relative timestamps (the original app: ms since the recording started) are the offset; epoch
        timestamps count from chunk 0's; without chunk 0, from the lowest stored chunk, assuming the
        chunks before it were of nominal length.
        """
        duration = result.duration_ms or job.duration_ms or self.chunk_duration_ms
        origin = await self._timing_origin(job)
        if job.timestamp_ms < EPOCH_MS_MIN:
            start = int(job.timestamp_ms)
        elif origin is not None and job.timestamp_ms >= origin[1]:
            start = int(job.timestamp_ms - origin[1]) + origin[0] * self.chunk_duration_ms
        else:
            start = job.seq * self.chunk_duration_ms
        return TranscriptSegment(
            session_id=job.session_id, seq=job.seq, chunk_id=job.id, start_ms=start, end_ms=start + duration,
            text=result.text.strip(), speaker=None, confidence=result.confidence, is_final=True,
        )

    # -- pushing results ---------------------------------------------------------

    async def _publish(self, segment: TranscriptSegment, job: Chunk) -> None:
        if self.sio is None:
            return
        updated = {"sessionId": segment.session_id, "sequence": segment.seq, "text": segment.text,
                   "speaker": segment.speaker, "chunkId": job.id, "timestamp": job.timestamp_ms}
        for namespace in NAMESPACES:
            await self.sio.emit("transcriptSegment", segment.wire(), room=room_of(segment.session_id), namespace=namespace)
            await self.sio.emit("transcript-updated", updated, room=room_of(segment.session_id), namespace=namespace)

    async def check_completed(self, session_id: str) -> None:
        """Once a stopped session has no unfinished chunk, say session-completed (once)."""
        async with self.db.read() as s:
            session = await s.get(RecordingSession, session_id)
            if session is None or session.status != SessionStatus.STOPPED or session.completed_at is not None:
                return
            unfinished = (await s.execute(
                select(func.count()).select_from(Chunk)
                .where(col(Chunk.session_id) == session_id, col(Chunk.status).in_(ChunkStatus.UNFINISHED))
            )).scalar_one()
        if unfinished:
            return
        async with self.db.write() as s:
            claimed = await s.execute(
                update(RecordingSession).where(col(RecordingSession.id) == session_id, col(RecordingSession.completed_at).is_(None))
                .values(completed_at=utcnow())
            )
        if affected(claimed) and self.sio is not None:
            for namespace in NAMESPACES:
                await self.sio.emit("session-completed", {"sessionId": session_id}, room=room_of(session_id), namespace=namespace)

    async def segments_after(self, session_id: str, last_seq: int | None) -> list[dict[str, Any]]:
        query = select(TranscriptSegment).where(col(TranscriptSegment.session_id) == session_id)
        if last_seq is not None:
            query = query.where(col(TranscriptSegment.seq) > last_seq)
        async with self.db.read() as s:
            rows = (await s.execute(query.order_by(col(TranscriptSegment.seq)))).scalars()
            return [row.wire() for row in rows]
