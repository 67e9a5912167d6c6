"""Store a chunk exactly once by (session_id, seq): durable before acked, conflicts detected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from scribeai.db import Database, SqliteInsertMany
from scribeai.errors import (Conflict, Forbidden, ScribeError, StartupCheckFailed, StorageUnavailable, Unavailable,
                             mark_retrieved, storage_fault)
from scribeai.models import Chunk, ChunkStatus, RecordingSession, new_id, utcnow
from scribeai.protocol import IncomingChunk
from scribeai.sessions import Claim, SessionService
from scribeai.storage import Store, Written
from scribeai.transcription import streams

log = logging.getLogger(__name__)


_CHUNK_COLUMNS = tuple(c.name for c in Chunk.__table__.columns)  # type: ignore[attr-defined]
# The values a new chunk row takes for the columns ingest does not set (attempts, error, ...), as the model defines them.
_ROW_DEFAULTS: dict[str, Any] = {
    name: value for name, value in Chunk(session_id="", seq=0, size=0, sha256="", mime_type="", path="").model_dump().items()
    if name in _CHUNK_COLUMNS
}


# SQLite before 3.32 allows 999 parameters per statement: 19 columns x 50 rows stays below that.
_SQLITE_ROWS_PER_INSERT = 50


class _SqliteBatchSql:
    """The group commit's INSERT and UPDATE as SQLite text (see SqliteInsertMany): building and compiling them
    for every batch cost about half a millisecond a batch, all of it for a lone recorder's chunk."""

    def __init__(self, dialect: Any) -> None:
        self.insert = SqliteInsertMany(Chunk.__table__, _CHUNK_COLUMNS, dialect,  # type: ignore[attr-defined]
                                       "ON CONFLICT (session_id, seq) DO NOTHING RETURNING id")
        self.activity = RecordingSession.__table__.c.last_activity_at.type._cached_bind_processor(dialect)  # type: ignore[attr-defined]

    def touch(self, sessions: set[str], now: Any) -> tuple[str, tuple[Any, ...]]:
        ids = sorted(sessions)
        sql = f"UPDATE recording_session SET last_activity_at = ? WHERE id IN ({', '.join('?' * len(ids))})"
        return sql, (self.activity(now) if self.activity is not None else now, *ids)


@dataclass(frozen=True)
class StoreResult:
    chunk_id: str
    status: str
    duplicate: bool


@dataclass(eq=False)
class _Pending:
    """One chunk waiting for a group commit; from the queue on, the committer owns its temporary file."""

    row: dict[str, Any]  # every column of the chunk's row
    temp: Path
    written: Written | None = None  # already under its final name (write_new): nothing to publish, nothing to discard
    claim: str | None = None  # the sender, whose session the commit creates if missing and must find theirs
    refused: bool = False  # the claim failed: the session is another user's
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
    """The write path of audio-chunk: a durable file (fsync'd, its name fsync'd), its row committed, then the ack.

    The file is created straight under its final name (fsync, folder fsync) in a storage thread; when that
    name is taken it goes to a temporary file that the commit renames into place. Rows are committed in
    groups: whoever finds no commit running commits everything queued so far (the sessions their first
    chunks create, one INSERT, the renames and their folders' fsyncs, one COMMIT), so the fsyncs and thread
    hops of one SQLite writer are shared by all the chunks that arrived meanwhile.
    """

    def __init__(self, db: Database, store: Store, sessions: SessionService, *, transcribe: bool = True,
                 max_batch: int = 64) -> None:
        self.db = db
        self.store = store
        self.sessions = sessions
        self.initial_status = ChunkStatus.PENDING if transcribe else ChunkStatus.STORED
        self.max_batch = max_batch
        self._locks = KeyedLocks()
        self._sqlite_sql: _SqliteBatchSql | None = None
        table = Chunk.__table__  # type: ignore[attr-defined]
        insert = (sqlite.insert if db.is_sqlite else postgresql.insert)(table)
        self._insert = insert.on_conflict_do_nothing(index_elements=["session_id", "seq"]).returning(table.c.id)
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self.batches = 0
        self.batched_rows = 0
        self.last_fault: StorageUnavailable | None = None  # the latest refusal, until a chunk is stored again
        self.last_fault_at = 0.0

    def __repr__(self) -> str:
        return (f"ChunkIngest({self.store!r}, in_flight={len(self._locks)}, queued={len(self._queue)}, "
                f"batches={self.batches}, rows={self.batched_rows})")

    async def store_chunk(self, chunk: IncomingChunk, *, claim: str | None = None) -> StoreResult:
        """Store `chunk` once; a repeat with the same bytes is a duplicate, with other bytes a Conflict.

        `claim`: the sender's user id when its session is not known to be theirs yet. The chunk's group commit
        then creates the session if it does not exist and checks its owner in the same transaction (no commit
        of its own before the chunk's); another user's session is Forbidden and the chunk's file goes again.
        """
        # In-process races of one key queue here; across processes the unique constraint decides.
        async with self._locks.hold((chunk.session_id, chunk.seq)):
            return await self._store(chunk, claim)

    async def _store(self, chunk: IncomingChunk, claim: str | None) -> StoreResult:
        relative = self.store.relative_path(chunk.session_id, chunk.seq, chunk.mime_type)
        # No SELECT first: the INSERT .. ON CONFLICT DO NOTHING is the check, and repeats are rare
        # enough that writing their file for nothing is cheaper than a read per chunk.
        try:
            temp, digest, written = await asyncio.to_thread(self._write, relative, chunk.audio, chunk.sha256)
        except OSError as exc:
            fault = self._fault(exc)
            if fault is exc:
                raise
            raise fault from exc
        row = self._new_row(chunk, relative, digest)
        entry = _Pending(row, temp, written, claim)
        if await self._commit(entry):
            self.last_fault = None
            return StoreResult(row["id"], row["status"], duplicate=False)
        if entry.refused:
            # Another user's session: a file written under the final name is taken back, unless that
            # name meanwhile holds the owner's own chunk.
            await asyncio.to_thread(self._unwrite, entry.temp, entry.written)
            raise Forbidden("this session belongs to another user", sessionId=chunk.session_id)
        existing = await self._find(chunk.session_id, chunk.seq)
        if existing is None:
            raise ScribeError(f"sequence {chunk.seq} conflicted on insert but is not stored; resend it")
        return await self._repeat(existing, chunk, digest, entry.written)

    def _write(self, relative: str, audio: bytes, digest: str | None) -> tuple[Any, str, Written | None]:
        """In a storage thread: the chunk's file, its sha256 (unless the client's was checked) and, when it went
        straight under its final name, the Written; otherwise a temporary file for the group commit to publish.

        The direct write saves the commit a rename and a folder fsync per chunk, and the thread hand-offs
        they cost; a name already taken (a repeat, a crash's leftover) goes the temporary way.
        """
        written = self.store.write_new(relative, audio, digest)
        if written is not None:
            return written.path, written.digest, written
        if digest is None:
            temp, digest = self.store.write_temp_hashed(relative, audio)
            return temp, digest, None
        return self.store.write_temp(relative, audio), digest, None

    def _unwrite(self, temp: Any, written: Written | None) -> None:
        """Discard an attempt's file: its temporary file, or the file it wrote under the final name if still there."""
        self.store.discard(self.store.unwrite(written) if written is not None else temp)

    def _new_row(self, chunk: IncomingChunk, relative: str, digest: str) -> dict[str, Any]:
        # A plain dict of the columns: building and validating a Chunk model cost ~65 µs a chunk on the event loop.
        now = utcnow()
        return {
            **_ROW_DEFAULTS, "id": new_id(), "session_id": chunk.session_id, "seq": chunk.seq,
            "timestamp_ms": float(chunk.timestamp_ms), "size": len(chunk.audio), "sha256": digest,
            "mime_type": chunk.mime_type, "path": relative, "duration_ms": chunk.duration_ms,
            "has_header": not needs_session_header(chunk.audio, chunk.mime_type), "created_at": now,
            "status": self.initial_status, "next_attempt_at": now,
        }

    async def _commit(self, entry: _Pending) -> bool:
        """True when the row was inserted (file published, row committed); False when the key was taken."""
        self._queue.append(entry)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._run_commits())
        # A cancelled caller leaves the entry to the committer, which publishes or discards its file.
        entry.stored.add_done_callback(mark_retrieved)
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
        taken = [e.temp for e in batch if e.row["id"] not in inserted and e.written is None]
        if taken:
            await asyncio.to_thread(self.store.discard_many, taken)
        for e in batch:
            if not e.stored.done():
                e.stored.set_result(e.row["id"] in inserted)

    def _fault(self, exc: BaseException) -> BaseException:
        """A known storage or database fault as a retryable StorageUnavailable (remembered for /readyz)."""
        fault = classify_fault(exc)
        if fault is None:
            return exc
        log.warning("chunk refused: %s (%r)", fault.reason, exc)
        self.last_fault, self.last_fault_at = fault, time.monotonic()
        return fault

    def recent_fault(self) -> StorageUnavailable | None:
        """The latest refusal while it is fresh (its retryAfterMs); after that only a probe can tell."""
        fault = self.last_fault
        if fault is not None and time.monotonic() - self.last_fault_at < fault.retry_after_ms / 1000:
            return fault
        return None

    def _fail(self, entries: list[_Pending], exc: BaseException) -> None:
        exc = self._fault(exc)
        for e in entries:
            # A tiny unlink; a name already published is no longer there. A file written under its final name
            # stays: its commit may still be running, and without a row it is only a file its resend replaces.
            if e.written is None:
                self.store.discard(e.temp)
            if not e.stored.done():
                e.stored.set_exception(exc)

    async def _commit_batch(self, batch: list[_Pending]) -> set[str]:
        """One transaction: create the claimed sessions, insert the rows that are new (of sessions their
        senders own), touch their sessions, publish their files, commit."""
        statement = self._insert
        now = utcnow()
        claims: dict[str, Claim] = {}
        for e in batch:
            if e.claim is not None:
                claims.setdefault(e.row["session_id"], (e.claim, None, None))

        def admitted(owners: dict[str, str]) -> list[_Pending]:
            for e in batch:
                e.refused = e.claim is not None and owners.get(e.row["session_id"]) != e.claim
            return [e for e in batch if not e.refused]

        def touch(fresh: list[_Pending]) -> Any:
            sessions = sorted({e.row["session_id"] for e in fresh})
            return update(RecordingSession).where(col(RecordingSession.id).in_(sessions)).values(last_activity_at=now)

        renamed: list[tuple[Path, str]] = []

        def published(fresh: list[_Pending]) -> list[tuple[Path, str]]:
            # Noted before the renames: a failure midway must undo the names already moved.
            renamed.extend((e.temp, e.row["path"]) for e in fresh)
            return [(e.temp, e.row["path"]) for e in fresh]

        try:
            inserted, owners = await self._write_batch(batch, claims, admitted, statement, touch, published)
        except BaseException:
            if renamed or any(e.written is not None for e in batch):
                await self._undo_publish(batch, renamed)
            raise
        if owners:
            self.sessions.remember(owners)
        self.batches += 1
        self.batched_rows += len(batch)
        return inserted

    async def _write_batch(self, batch: list[_Pending], claims: dict[str, Claim], admitted: Any, statement: Any,
                           touch: Any, published: Any) -> tuple[set[str], dict[str, str]]:

        # The names are published and fsync'd before the commit: a committed row always has its file.
        if self.db.sync_engine is not None:
            sql = self._sqlite_sql or _SqliteBatchSql(self.db.sync_engine.dialect)
            self._sqlite_sql = sql

            def write(conn: Any) -> tuple[set[str], dict[str, str]]:
                owners = self.sessions.create_in(conn, claims) if claims else {}
                entries = admitted(owners)
                inserted: set[str] = set()
                for i in range(0, len(entries), _SQLITE_ROWS_PER_INSERT):
                    rows = [e.row for e in entries[i:i + _SQLITE_ROWS_PER_INSERT]]
                    inserted.update(conn.exec_driver_sql(*sql.insert(rows)).scalars())
                fresh = [e for e in entries if e.row["id"] in inserted]
                if fresh:
                    conn.exec_driver_sql(*sql.touch({e.row["session_id"] for e in fresh}, utcnow()))
                    if unpublished := [e for e in fresh if e.written is None]:
                        self.store.publish_many(published(unpublished))
                return inserted, owners

            return await self.db.write_in_thread(write)
        async with self.db.write() as s:
            owners = await self.sessions.create_in_async(s, claims) if claims else {}
            entries = admitted(owners)
            inserted = set((await s.execute(statement, [e.row for e in entries])).scalars()) if entries else set()
            fresh = [e for e in entries if e.row["id"] in inserted]
            if fresh:
                await s.execute(touch(fresh))
                if unpublished := [e for e in fresh if e.written is None]:
                    await asyncio.to_thread(self.store.publish_many, published(unpublished))
        return inserted, owners

    async def _undo_publish(self, batch: list[_Pending], renamed: list[tuple[Path, str]]) -> None:
        """The commit failed after the renames: move every name no committed row owns back to its temporary file,
        and so every file written under its final name (write_new) whose row did not commit.

        A failed COMMIT on PostgreSQL may still have committed (the connection dropped on the way back), so
        the rows are looked up first; when even that fails, SQLite's answer is final (an error from COMMIT
        is a rollback there) while on PostgreSQL the files stay, since an orphan is harmless and a lost file is not.
        """
        try:
            async with self.db.read() as s:
                ids = [e.row["id"] for e in batch]
                committed = set((await s.execute(select(col(Chunk.id)).where(col(Chunk.id).in_(ids)))).scalars())
        except Exception as exc:
            if not self.db.is_sqlite:
                log.warning("commit failed and its rows cannot be checked (%r); %d chunk files stay", exc, len(renamed))
                return
            committed = set()
        paths = {e.row["path"] for e in batch if e.row["id"] in committed}
        undo = [(temp, relative) for temp, relative in renamed if relative not in paths]
        unwritten = [e for e in batch if e.written is not None and e.row["id"] not in committed]

        def take_back() -> None:
            self.store.unpublish_many(undo)
            for e in unwritten:  # a retry of the row publishes the file again; a final failure discards it
                assert e.written is not None
                e.temp, e.written = self.store.unwrite(e.written), None

        try:
            await asyncio.to_thread(take_back)
        except OSError as exc:
            log.warning("could not undo %d chunk file renames after a failed commit: %r",
                        len(undo) + len(unwritten), exc)

    async def _find(self, session_id: str, seq: int) -> Chunk | None:
        async with self.db.read() as s:
            result = await s.execute(select(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) == seq))
            return result.scalar_one_or_none()

    async def _repeat(self, existing: Chunk, chunk: IncomingChunk, digest: str,
                      written: Written | None = None) -> StoreResult:
        """A repeat of a stored chunk. `written`: this attempt's file under the final name, which was free, so the
        stored chunk's file was missing: it stands as the repair when its bytes are the stored ones, else it goes."""
        if written is not None and (existing.sha256 != digest or existing.deleted_at is not None):
            await asyncio.to_thread(self._unwrite, None, written)
        if existing.sha256 != digest:
            raise Conflict(
                f"sequence {chunk.seq} is already stored with different audio; the stored chunk is kept",
                storedSha256=existing.sha256, receivedSha256=digest,
            )
        if existing.deleted_at is None:
            size = await asyncio.to_thread(self.store.size_of, existing.path)
            if size != existing.size:  # lost or damaged on disk: the resend repairs it
                log.warning("repairing chunk file %s (found %s bytes, expected %s)", existing.path, size, existing.size)
                await asyncio.to_thread(self.store.write_atomic, existing.path, chunk.audio)
        return StoreResult(existing.id, existing.status, duplicate=True)


def classify_fault(exc: BaseException) -> StorageUnavailable | None:
    """Disk full, read-only storage, database down, full or locked: a retryable answer; anything else is a bug."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or (
            isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated):
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return StorageUnavailable(f"the database cannot store chunks now ({detail}); resend later", "database_unavailable")
    if isinstance(exc, ConnectionError | TimeoutError):
        return StorageUnavailable(f"the database cannot be reached ({exc!r}); resend later", "database_unavailable")
    if isinstance(exc, OSError):
        return storage_fault(exc)
    return None


async def check_writable(db: Database, store: Store, *, timeout_s: float = 5.0) -> StorageUnavailable | None:
    """Can a chunk be stored now? Probe STORAGE_DIR (write, fsync, remove) and the database (a committed write)."""
    try:
        await asyncio.to_thread(store.probe)
    except StorageUnavailable as exc:  # the object store (STORAGE_URL) says so itself
        return exc
    except OSError as exc:
        return storage_fault(exc) or StorageUnavailable(f"chunk storage fails: {exc}", "storage_read_only")
    try:
        await asyncio.wait_for(_database_write(db), timeout_s)
    except TimeoutError:
        return StorageUnavailable(f"the database did not take a write within {timeout_s:g} s", "database_unavailable")
    except Exception as exc:
        fault = classify_fault(exc)
        if fault is None:
            raise
        return StorageUnavailable(fault.message, "database_unavailable")
    return None


async def _database_write(db: Database) -> None:
    # An UPDATE that matches no row still takes the write lock and needs a writable file (SQLite) or primary (PostgreSQL).
    async with db.write() as s:
        await s.execute(text("UPDATE recording_session SET title = title WHERE id = ''"))


async def ensure_writable(db: Database, store: Store) -> None:
    """At start: refuse to run when no chunk could be stored."""
    fault = await check_writable(db, store)
    if fault is not None:
        raise StartupCheckFailed(f"cannot store chunks ({fault.reason}): {fault.message}", reason=fault.reason)
