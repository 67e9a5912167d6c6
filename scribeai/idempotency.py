"""Store a chunk exactly once by (session_id, seq): durable before acked, conflicts detected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from scribeai.db import Database, SqliteInsertMany
from scribeai.errors import (Conflict, Forbidden, InvalidInput, ScribeError, StartupCheckFailed, StorageUnavailable,
                             Unavailable, mark_retrieved, storage_fault)
from scribeai.models import Chunk, ChunkStatus, RecordingSession, new_id, utcnow
from scribeai.protocol import IncomingChunk
from scribeai.sessions import Claim, SessionService
from scribeai.storage import Written
from scribeai.store import Store
from scribeai.transcription import containers, streams

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
    inserted: bool = False  # its row committed; when settled without it, its key was taken (or refused)
    # done on the event loop once settled (with the entry itself), or failed
    stored: asyncio.Future[_Pending] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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
    hops of one database writer are shared by all the chunks that arrived meanwhile.

    On a SQLite file, that "whoever" is the storage thread that has just written its chunk (`_lead`): a lone
    chunk goes from its file to its row in one thread, without a hop through the event loop between them,
    and the loop hears once per group. Elsewhere (PostgreSQL, SQLite in memory) a task on the event loop
    commits (`_run_commits`).
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
        # the event loop's committer (PostgreSQL, SQLite in memory)
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        # the storage threads' committer (SQLite file): chunks written and waiting for a leader's commit
        self._threaded = db.sync_engine is not None
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: list[_Pending] = []
        self._group = threading.Lock()
        self._leading = False
        self.batches = 0
        self.batched_rows = 0
        self.last_fault: StorageUnavailable | None = None  # the latest refusal, until a chunk is stored again
        self.last_fault_at = 0.0

    def __repr__(self) -> str:
        return (f"ChunkIngest({self.store!r}, in_flight={len(self._locks)}, "
                f"queued={len(self._queue) + len(self._waiting)}, batches={self.batches}, rows={self.batched_rows})")

    def close(self) -> None:
        """Blocking: let the storage threads finish their chunks (committed or refused); before the database closes."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.store.close()

    async def store_chunk(self, chunk: IncomingChunk, *, claim: str | None = None) -> StoreResult:
        """Store `chunk` once; a repeat with the same bytes is a duplicate, with other bytes a Conflict.

        `claim`: the sender's user id when its session is not known to be theirs yet. The chunk's group commit
        then creates the session if it does not exist and checks its owner in the same transaction (no commit
        of its own before the chunk's); another user's session is Forbidden and the chunk's file goes again.
        """
        if self.initial_status == ChunkStatus.PENDING:
            # Bytes transcription could never read are refused now, with the reason, rather than acked and failed
            # later for a reason that misleads. A store-only server (TRANSCRIBER=none) keeps whatever it is given.
            reason = containers.refusal(chunk.audio, chunk.mime_type)
            if reason is not None:
                raise InvalidInput(f"audio is not a recording this server can transcribe: {reason}", field="audio")
        # In-process races of one key queue here; across processes the unique constraint decides.
        async with self._locks.hold((chunk.session_id, chunk.seq)):
            return await self._store(chunk, claim)

    async def _store(self, chunk: IncomingChunk, claim: str | None) -> StoreResult:
        relative = self.store.relative_path(chunk.session_id, chunk.seq, chunk.mime_type)
        # No SELECT first: the INSERT .. ON CONFLICT DO NOTHING is the check, and repeats are rare
        # enough that writing their file for nothing is cheaper than a read per chunk.
        if self._threaded:
            entry = await self._write_and_commit(chunk, relative, claim)
        else:
            entry = await self._write_then_commit(chunk, relative, claim)
        if entry.inserted:
            self.last_fault = None
            return StoreResult(entry.row["id"], entry.row["status"], duplicate=False)
        if entry.refused:
            # Another user's session: a file written under the final name is taken back, unless that
            # name meanwhile holds the owner's own chunk.
            await asyncio.to_thread(self._unwrite, entry.temp, entry.written)
            raise Forbidden("this session belongs to another user", sessionId=chunk.session_id)
        existing = await self._find(chunk.session_id, chunk.seq)
        if existing is None:
            raise ScribeError(f"sequence {chunk.seq} conflicted on insert but is not stored; resend it")
        return await self._repeat(existing, chunk, entry)

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
        """Discard an attempt's file: its temporary file, or the file it wrote under its final name if still there."""
        self.store.discard(self.store.unwrite(written) if written is not None else temp)

    def _new_row(self, chunk: IncomingChunk, relative: str, digest: str) -> dict[str, Any]:
        # A plain dict of the columns: building and validating a Chunk model cost ~65 µs a chunk.
        now = utcnow()
        return {
            **_ROW_DEFAULTS, "id": new_id(), "session_id": chunk.session_id, "seq": chunk.seq,
            "timestamp_ms": float(chunk.timestamp_ms), "size": len(chunk.audio), "sha256": digest,
            "mime_type": chunk.mime_type, "path": relative, "duration_ms": chunk.duration_ms,
            "has_header": not needs_session_header(chunk.audio, chunk.mime_type), "created_at": now,
            "status": self.initial_status, "next_attempt_at": now,
        }

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

    def _failed(self, entries: list[_Pending], exc: BaseException) -> BaseException:
        """Entries whose commit failed for good: their temporary files go; the error to answer them with."""
        for e in entries:
            # A tiny unlink; a name already published is no longer there. A file written under its final name
            # stays: its commit may still be running, and without a row it is only a file its resend replaces.
            if e.written is None:
                self.store.discard(e.temp)
        return self._fault(exc)

    @staticmethod
    def _claims(batch: list[_Pending]) -> dict[str, Claim]:
        claims: dict[str, Claim] = {}
        for e in batch:
            if e.claim is not None:
                claims.setdefault(e.row["session_id"], (e.claim, None, None))
        return claims

    @staticmethod
    def _admitted(batch: list[_Pending], owners: dict[str, str]) -> list[_Pending]:
        """The entries whose sender owns their session (by `owners`, for the claimed ones); the others are refused."""
        for e in batch:
            e.refused = e.claim is not None and owners.get(e.row["session_id"]) != e.claim
        return [e for e in batch if not e.refused]

    def _take_back(self, batch: list[_Pending], renamed: list[tuple[Path, str]], committed: set[str]) -> None:
        """Blocking, after a failed commit: move every name no committed row owns back to its temporary file, and
        so every file written under its final name (write_new) whose row did not commit; a retry of the row
        publishes it again, a final failure discards it."""
        paths = {e.row["path"] for e in batch if e.row["id"] in committed}
        undo = [(temp, relative) for temp, relative in renamed if relative not in paths]
        unwritten = [e for e in batch if e.written is not None and e.row["id"] not in committed]
        try:
            self.store.unpublish_many(undo)
            for e in unwritten:
                assert e.written is not None
                e.temp, e.written = self.store.unwrite(e.written), None
        except OSError as exc:
            log.warning("could not undo %d chunk file renames after a failed commit: %r",
                        len(undo) + len(unwritten), exc)

    # The storage threads' group commit (SQLite file) ------------------------------------------------------------

    async def _write_and_commit(self, chunk: IncomingChunk, relative: str, claim: str | None) -> _Pending:
        settled: asyncio.Future[_Pending] = asyncio.get_running_loop().create_future()
        # A cancelled caller leaves its chunk to the storage thread, which commits it or takes its file back.
        settled.add_done_callback(mark_retrieved)
        if self._pool is None:
            # asyncio's own default for blocking work, plus one for the thread that leads the commits
            self._pool = ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 5), thread_name_prefix="chunk-store")
        self._pool.submit(self._write_and_queue, chunk, relative, claim, settled)
        return await settled

    def _write_and_queue(self, chunk: IncomingChunk, relative: str, claim: str | None,
                         settled: asyncio.Future[_Pending]) -> None:
        """In a storage thread: the chunk's file, then its row in the next group commit, which this thread
        runs itself when no other thread is running one."""
        try:
            temp, digest, written = self._write(relative, chunk.audio, chunk.sha256)
            entry = _Pending(self._new_row(chunk, relative, digest), temp, written, claim, stored=settled)
        except BaseException as exc:
            self._send(settled, self._answer_failed, [settled], self._fault(exc) if isinstance(exc, OSError) else exc)
            return
        with self._group:
            self._waiting.append(entry)
            if self._leading:
                return
            self._leading = True
        self._lead()

    def _lead(self) -> None:
        """Commit the waiting chunks group by group until none wait; the chunks that arrive meanwhile join the
        next group. Each group's callers hear at once: a leader's own chunk does not wait for the others."""
        while True:
            with self._group:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: len(batch)]
                if not batch:
                    self._leading = False
                    return
            try:
                self._settle_here(batch)
            except Exception as exc:  # a bug: this group's callers hear of it, the next group is committed as usual
                log.exception("group commit of %d chunks failed", len(batch))
                self._send(batch[0].stored, self._answer_failed, [e.stored for e in batch], exc)

    def _settle_here(self, batch: list[_Pending]) -> None:
        try:
            owners = self._commit_here(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._send(batch[0].stored, self._answer_failed, [batch[0].stored], self._failed(batch, exc))
                return
            # One bad row must not fail its neighbours: commit them one by one.
            log.warning("group commit of %d chunks failed (%r); committing them one by one", len(batch), exc)
            for entry in batch:
                self._settle_here([entry])
            return
        if taken := self._taken(batch):
            try:
                self.store.discard_many(taken)
            except OSError as exc:  # only temporary files of repeats: the answer stands, the sweep takes them later
                log.warning("could not remove %d temporary chunk files: %r", len(taken), exc)
        self._send(batch[0].stored, self._answer, batch, owners)

    def _commit_here(self, batch: list[_Pending]) -> dict[str, str]:
        """One transaction in this thread (see _commit_batch); marks each entry inserted or not, returns the owners
        of the sessions it claimed."""
        assert self.db.sync_engine is not None
        sql = self._sqlite_sql or _SqliteBatchSql(self.db.sync_engine.dialect)
        self._sqlite_sql = sql
        claims = self._claims(batch)
        renamed: list[tuple[Path, str]] = []

        def write(conn: sqlite3.Connection) -> tuple[set[str], dict[str, str]]:
            owners = self.sessions.create_in(conn, claims) if claims else {}
            entries = self._admitted(batch, owners)
            inserted: set[str] = set()
            for i in range(0, len(entries), _SQLITE_ROWS_PER_INSERT):
                rows = [e.row for e in entries[i:i + _SQLITE_ROWS_PER_INSERT]]
                inserted.update(row_id for row_id, in conn.execute(*sql.insert(rows)).fetchall())
            fresh = [e for e in entries if e.row["id"] in inserted]
            if fresh:
                conn.execute(*sql.touch({e.row["session_id"] for e in fresh}, utcnow()))
                # The names are published and fsync'd before the commit: a committed row always has its file.
                # Noted before the renames: a failure midway must undo the names already moved.
                if unpublished := [(e.temp, e.row["path"]) for e in fresh if e.written is None]:
                    renamed.extend(unpublished)
                    self.store.publish_many(unpublished)
            return inserted, owners

        try:
            inserted, owners = self.db.transaction_here(write)
        except BaseException:
            if renamed or any(e.written is not None for e in batch):
                self._take_back(batch, renamed, self._committed_here(batch))
            raise
        self._mark_committed(batch, inserted)
        return owners

    def _committed_here(self, batch: list[_Pending]) -> set[str]:
        """Which of the batch's rows are committed after all; none when even that cannot be read (SQLite: an error
        from COMMIT is a rollback)."""
        ids = [e.row["id"] for e in batch]
        try:
            return self.db.read_here(
                lambda conn: set(conn.execute(select(col(Chunk.id)).where(col(Chunk.id).in_(ids))).scalars()))
        except Exception:
            return set()

    @staticmethod
    def _send(waiting: asyncio.Future[Any], answer: Callable[..., None], *args: Any) -> None:
        """From a storage thread: `answer(*args)` on the event loop of a future it answers, unless that loop has
        closed (then nobody waits)."""
        with contextlib.suppress(RuntimeError):
            waiting.get_loop().call_soon_threadsafe(answer, *args)

    def _mark_committed(self, batch: list[_Pending], inserted: set[str]) -> None:
        """After a group's commit: which entries it inserted (the others' keys were taken, or refused)."""
        for e in batch:
            e.inserted = e.row["id"] in inserted
        self.batches += 1
        self.batched_rows += len(batch)

    @staticmethod
    def _taken(batch: list[_Pending]) -> list[Any]:
        """The temporary files of a committed group's entries that were not inserted: nobody's, to discard."""
        return [e.temp for e in batch if not e.inserted and e.written is None]

    def _answer(self, batch: list[_Pending], owners: dict[str, str]) -> None:
        if owners:
            self.sessions.remember(owners)
        for e in batch:
            if not e.stored.done():
                e.stored.set_result(e)

    @staticmethod
    def _answer_failed(futures: list[asyncio.Future[_Pending]], exc: BaseException) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    # The event loop's group commit (PostgreSQL, SQLite in memory) -----------------------------------------------

    async def _write_then_commit(self, chunk: IncomingChunk, relative: str, claim: str | None) -> _Pending:
        try:
            temp, digest, written = await asyncio.to_thread(self._write, relative, chunk.audio, chunk.sha256)
        except OSError as exc:
            fault = self._fault(exc)
            if fault is exc:
                raise
            raise fault from exc
        return await self._commit(_Pending(self._new_row(chunk, relative, digest), temp, written, claim))

    async def _commit(self, entry: _Pending) -> _Pending:
        """The entry once settled: its row inserted (file published, row committed), or its key taken."""
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
            owners = await self._commit_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # One bad row must not fail its neighbours: commit them one by one.
            log.warning("group commit of %d chunks failed (%r); committing them one by one", len(batch), exc)
            for entry in batch:
                await self._settle([entry])
            return
        if taken := self._taken(batch):
            await asyncio.to_thread(self.store.discard_many, taken)
        self._answer(batch, owners)

    def _fail(self, entries: list[_Pending], exc: BaseException) -> None:
        self._answer_failed([e.stored for e in entries], self._failed(entries, exc))

    async def _commit_batch(self, batch: list[_Pending]) -> dict[str, str]:
        """One transaction: create the claimed sessions, insert the rows that are new (of sessions their
        senders own), touch their sessions, publish their files, commit. Marks each entry inserted or not,
        returns the owners of the sessions it claimed."""
        claims = self._claims(batch)
        renamed: list[tuple[Path, str]] = []
        try:
            async with self.db.write() as s:
                owners = await self.sessions.create_in_async(s, claims) if claims else {}
                entries = self._admitted(batch, owners)
                inserted = set((await s.execute(self._insert, [e.row for e in entries])).scalars()) if entries else set()
                fresh = [e for e in entries if e.row["id"] in inserted]
                if fresh:
                    sessions = sorted({e.row["session_id"] for e in fresh})
                    await s.execute(update(RecordingSession).where(col(RecordingSession.id).in_(sessions))
                                    .values(last_activity_at=utcnow()))
                    # The names are published and fsync'd before the commit: a committed row always has its file.
                    if unpublished := [(e.temp, e.row["path"]) for e in fresh if e.written is None]:
                        renamed.extend(unpublished)  # noted first: a failure midway must undo the names moved
                        await asyncio.to_thread(self.store.publish_many, unpublished)
        except BaseException:
            if renamed or any(e.written is not None for e in batch):
                await self._undo_publish(batch, renamed)
            raise
        self._mark_committed(batch, inserted)
        return owners

    async def _undo_publish(self, batch: list[_Pending], renamed: list[tuple[Path, str]]) -> None:
        """The commit failed: take back the names and files no committed row owns (_take_back).

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
        await asyncio.to_thread(self._take_back, batch, renamed, committed)

    async def _find(self, session_id: str, seq: int) -> Chunk | None:
        async with self.db.read() as s:
            result = await s.execute(select(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) == seq))
            return result.scalar_one_or_none()

    async def _repeat(self, existing: Chunk, chunk: IncomingChunk, attempt: _Pending) -> StoreResult:
        """A repeat of a stored chunk. `attempt.written`: this attempt's file under its final name, which was free.
        When that is the stored chunk's name, its file was missing: the attempt stands as the repair when its
        bytes are the stored ones. Otherwise it goes: other bytes, an archived chunk, or another name (the same
        sequence sent again with another mimeType, so another extension) that no row would ever own."""
        digest, written = attempt.row["sha256"], attempt.written
        if written is not None and (existing.sha256 != digest or existing.deleted_at is not None
                                    or existing.path != attempt.row["path"]):
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
    # sqlite3's own errors come from the storage threads' group commit (Database.transaction_here).
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sqlite3.OperationalError) or (
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
