"""Store a chunk exactly once by (session_id, seq): durable before acked, conflicts detected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from scribeai.db import Database
from scribeai.errors import Conflict
from scribeai.models import Chunk, ChunkStatus, RecordingSession, utcnow
from scribeai.protocol import IncomingChunk
from scribeai.storage import ChunkStore
from scribeai.transcription import media

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreResult:
    chunk: Chunk
    duplicate: bool


class KeyedLocks:
    """One asyncio.Lock per key while anyone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def needs_session_header(audio: bytes, mime_type: str) -> bool:
    """True for a MediaRecorder timeslice continuation: WebM clusters or Ogg pages without the stream header.

    Anything else is decoded as it is (and fails with a reason if it is not audio), so a job never
    waits for a header that garbage would never get.
    """
    container = media.detect_container(audio)
    return container in ("webm", "ogg") and not media.has_container_header(audio, container)


class ChunkIngest:
    """The write path of audio-chunk: file (tmp, fsync, rename, dir fsync) and row commit, then the ack."""

    def __init__(self, db: Database, store: ChunkStore, *, transcribe: bool = True) -> None:
        self.db = db
        self.store = store
        self.initial_status = ChunkStatus.PENDING if transcribe else ChunkStatus.STORED
        self._locks = KeyedLocks()

    def __repr__(self) -> str:
        return f"ChunkIngest({self.store!r}, in_flight={len(self._locks)})"

    async def store_chunk(self, chunk: IncomingChunk) -> StoreResult:
        """Store `chunk` once; a repeat with the same bytes is a duplicate, with other bytes a Conflict."""
        # In-process races of one key queue here; across processes the unique constraint decides.
        async with self._locks.hold((chunk.session_id, chunk.seq)):
            existing = await self._find(chunk.session_id, chunk.seq)
            if existing is not None:
                return await self._repeat(existing, chunk)
            relative = self.store.relative_path(chunk.session_id, chunk.seq, chunk.mime_type)
            temp = await asyncio.to_thread(self.store.write_temp, relative, chunk.audio)
            try:
                row = await self._commit(chunk, relative, temp)
            except IntegrityError:
                await asyncio.to_thread(self.store.discard, temp)
                existing = await self._find(chunk.session_id, chunk.seq)
                if existing is None:
                    raise
                return await self._repeat(existing, chunk)
            except BaseException:
                await asyncio.to_thread(self.store.discard, temp)
                raise
            return StoreResult(row, duplicate=False)

    async def _commit(self, chunk: IncomingChunk, relative: str, temp: object) -> Chunk:
        now = utcnow()
        row = Chunk(
            session_id=chunk.session_id, seq=chunk.seq, timestamp_ms=chunk.timestamp_ms, size=len(chunk.audio),
            sha256=chunk.sha256, mime_type=chunk.mime_type, path=relative, duration_ms=chunk.duration_ms,
            has_header=not needs_session_header(chunk.audio, chunk.mime_type), created_at=now,
            status=self.initial_status, next_attempt_at=now,
        )
        async with self.db.write() as s:
            s.add(row)
            await s.flush()  # raises IntegrityError before the file is published
            await s.execute(update(RecordingSession).where(RecordingSession.id == chunk.session_id).values(last_activity_at=now))
            # The name is published and fsync'd before the commit: a committed row always has its file.
            await asyncio.to_thread(self.store.publish, temp, relative)  # type: ignore[arg-type]
        return row

    async def _find(self, session_id: str, seq: int) -> Chunk | None:
        async with self.db.read() as s:
            result = await s.execute(select(Chunk).where(Chunk.session_id == session_id, Chunk.seq == seq))
            return result.scalar_one_or_none()

    async def _repeat(self, existing: Chunk, chunk: IncomingChunk) -> StoreResult:
        if existing.sha256 != chunk.sha256:
            raise Conflict(
                f"sequence {chunk.seq} is already stored with different audio; the stored chunk is kept",
                storedSha256=existing.sha256, receivedSha256=chunk.sha256,
            )
        if existing.deleted_at is None:
            size = await asyncio.to_thread(self.store.size_of, existing.path)
            if size != existing.size:  # lost or damaged on disk: the resend repairs it
                log.warning("repairing chunk file %s (found %s bytes, expected %s)", existing.path, size, existing.size)
                await asyncio.to_thread(self.store.write_atomic, existing.path, chunk.audio)
        return StoreResult(existing, duplicate=True)
