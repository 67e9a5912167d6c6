"""Store a chunk exactly once by (session_id, seq): durable before acked, conflicts detected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from scribeai.db import Database
from scribeai.errors import Conflict, ScribeError, Unavailable
from scribeai.models import Chunk, ChunkStatus, RecordingSession, utcnow
from scribeai.protocol import IncomingChunk
from scribeai.storage import ChunkStore
from scribeai.transcription import streams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreResult:
    chunk: Chunk
    duplicate: bool


@dataclass(eq=False)
class _Pending:
    """One chunk waiting for a group commit; from the queue on, the committer owns its temporary file."""

    row: Chunk
    temp: Path
    stored: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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
    """True for a MediaRecorder timeslice continuation: bytes that only decode after the chunks before them."""
    return not streams.begins_decoding(audio, mime_type)


class ChunkIngest:
    """The write path of audio-chunk: file (tmp, fsync, rename, dir fsync) and row commit, then the ack.

    Rows are committed in groups: whoever finds no commit running commits everything queued so far
    (one INSERT, one rename+fsync pass, one COMMIT), so the fsyncs and thread hops of one SQLite writer
    are shared by all the chunks that arrived meanwhile instead of being paid one chunk at a time.
    """

    def __init__(self, db: Database, store: ChunkStore, *, transcribe: bool = True, max_batch: int = 64) -> None:
        self.db = db
        self.store = store
        self.initial_status = ChunkStatus.PENDING if transcribe else ChunkStatus.STORED
        self.max_batch = max_batch
        self._locks = KeyedLocks()
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_rows = 0

    def __repr__(self) -> str:
        return (f"ChunkIngest({self.store!r}, in_flight={len(self._locks)}, queued={len(self._queue)}, "
                f"batches={self.batches}, rows={self.batched_rows})")

    async def store_chunk(self, chunk: IncomingChunk) -> StoreResult:
        """Store `chunk` once; a repeat with the same bytes is a duplicate, with other bytes a Conflict."""
        # In-process races of one key queue here; across processes the unique constraint decides.
        async with self._locks.hold((chunk.session_id, chunk.seq)):
            relative = self.store.relative_path(chunk.session_id, chunk.seq, chunk.mime_type)
            # No SELECT first: the INSERT .. ON CONFLICT DO NOTHING is the check, and repeats are rare
            # enough that writing their temporary file for nothing is cheaper than a read per chunk.
            temp = await asyncio.to_thread(self.store.write_temp, relative, chunk.audio)
            row = self._new_row(chunk, relative)
            if await self._commit(_Pending(row, temp)):
                return StoreResult(row, duplicate=False)
            existing = await self._find(chunk.session_id, chunk.seq)
            if existing is None:
                raise ScribeError(f"sequence {chunk.seq} conflicted on insert but is not stored; resend it")
            return await self._repeat(existing, chunk)

    def _new_row(self, chunk: IncomingChunk, relative: str) -> Chunk:
        now = utcnow()
        return Chunk(
            session_id=chunk.session_id, seq=chunk.seq, timestamp_ms=chunk.timestamp_ms, size=len(chunk.audio),
            sha256=chunk.sha256, mime_type=chunk.mime_type, path=relative, duration_ms=chunk.duration_ms,
            has_header=not needs_session_header(chunk.audio, chunk.mime_type), created_at=now,
            status=self.initial_status, next_attempt_at=now,
        )

    async def _commit(self, entry: _Pending) -> bool:
        """True when the row was inserted (file published, row committed); False when the key was taken."""
        self._queue.append(entry)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._run_commits())
        # A cancelled caller leaves the entry to the committer, which publishes or discards its file.
        entry.stored.add_done_callback(_retrieve)
        return await asyncio.shield(entry.stored)

    async def _run_commits(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: len(batch)]
            try:
                await self._settle(batch)
            except asyncio.CancelledError:
                self._fail(batch + self._queue, Unavailable("server is stopping; resend the chunk after reconnecting"))
                self._queue.clear()
                raise

    async def _settle(self, batch: list[_Pending]) -> None:
        try:
            inserted = await self._commit_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # One bad row must not fail its neighbours: commit them one by one.
            log.warning("group commit of %d chunks failed (%r); committing them one by one", len(batch), exc)
            for entry in batch:
                await self._settle([entry])
            return
        taken = [e.temp for e in batch if e.row.id not in inserted]
        if taken:
            await asyncio.to_thread(self.store.discard_many, taken)
        for e in batch:
            if not e.stored.done():
                e.stored.set_result(e.row.id in inserted)

    def _fail(self, entries: list[_Pending], exc: BaseException) -> None:
        for e in entries:
            self.store.discard(e.temp)  # a tiny unlink; a name already published is no longer there
            if not e.stored.done():
                e.stored.set_exception(exc)

    async def _commit_batch(self, batch: list[_Pending]) -> set[str]:
        """One transaction: insert the rows that are new, touch their sessions, publish their files, commit."""
        table = Chunk.__table__  # type: ignore[attr-defined]
        insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(table)
        statement = insert.on_conflict_do_nothing(index_elements=["session_id", "seq"]).returning(table.c.id)
        rows = [{c.name: getattr(e.row, c.name) for c in table.columns} for e in batch]
        now = utcnow()

        def touch(fresh: list[_Pending]) -> Any:
            sessions = sorted({e.row.session_id for e in fresh})
            return update(RecordingSession).where(col(RecordingSession.id).in_(sessions)).values(last_activity_at=now)

        def published(fresh: list[_Pending]) -> list[tuple[Path, str]]:
            return [(e.temp, e.row.path) for e in fresh]

        # The names are published and fsync'd before the commit: a committed row always has its file.
        if self.db.sync_engine is not None:
            def write(conn: Any) -> set[str]:
                inserted = set(conn.execute(statement, rows).scalars())
                fresh = [e for e in batch if e.row.id in inserted]
                if fresh:
                    conn.execute(touch(fresh))
                    self.store.publish_many(published(fresh))
                return inserted

            inserted = await self.db.write_in_thread(write)
        else:
            async with self.db.write() as s:
                inserted = set((await s.execute(statement, rows)).scalars())
                fresh = [e for e in batch if e.row.id in inserted]
                if fresh:
                    await s.execute(touch(fresh))
                    await asyncio.to_thread(self.store.publish_many, published(fresh))
        self.batches += 1
        self.batched_rows += len(batch)
        return inserted

    async def _find(self, session_id: str, seq: int) -> Chunk | None:
        async with self.db.read() as s:
            result = await s.execute(select(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) == seq))
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


def _retrieve(future: asyncio.Future[bool]) -> None:
    # Mark an exception as seen even when the caller was cancelled and no longer awaits it.
    if not future.cancelled():
        future.exception()
