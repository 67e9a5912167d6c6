"""Recording sessions: ownership, lifecycle (recording, paused, stopped) and gap summaries."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from sqlmodel import col

from scribeai.db import Database, SqliteInsertMany
from scribeai.errors import Forbidden, NotFound, ScribeError, Unavailable, mark_retrieved
from scribeai.models import Chunk, ChunkStatus, RecordingSession, SessionStatus, utcnow
from scribeai.protocol import gaps


@dataclass(frozen=True)
class GapSummary:
    session_id: str
    status: str
    max_seq: int
    total_chunks: int
    missing: list[int]

    def wire(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "status": self.status,
            "maxSeq": self.max_seq,
            "totalChunks": self.total_chunks,
            "missing": self.missing,
        }


Claim = tuple[str, str | None, str | None]  # (user_id, title, source) of a session to create if it does not exist


@dataclass(eq=False)
class _NewSession:
    """A session some first event asked to create; the creator's batch answers with its owner."""

    user_id: str
    title: str | None
    source: str | None
    owner: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SessionService:
    """Sessions belong to the user who created them; owners are cached since they never change.

    Sessions are created in groups, like chunks: when twenty recorders start at once, their sessions
    are inserted in one transaction (one commit, one fsync) instead of twenty in a row, the last of
    which would hold its recorder's first ack behind all the others.
    """

    def __init__(self, db: Database, owner_cache_size: int = 10_000, max_batch: int = 100) -> None:
        self.db = db
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._cache_size = owner_cache_size
        self.max_batch = max_batch
        self._sqlite_insert: SqliteInsertMany | None = None
        self._creating: dict[str, _NewSession] = {}
        self._creator: asyncio.Task[None] | None = None
        self.create_batches = 0

    def __repr__(self) -> str:
        return f"SessionService(cached_owners={len(self._owners)}, creating={len(self._creating)})"

    async def ensure(self, session_id: str, user_id: str, *, title: str | None = None, source: str | None = None) -> None:
        """Create the session for `user_id` if it does not exist; refuse another user's session."""
        if self.admitted(session_id, user_id):
            return
        owner = await self._create_or_get_owner(session_id, user_id, title, source)
        if owner != user_id:
            raise Forbidden("this session belongs to another user", sessionId=session_id)

    def admitted(self, session_id: str, user_id: str) -> bool:
        """Without waiting: True for the user's own known session, Forbidden for another's, False when unknown."""
        owner = self._owners.get(session_id)
        if owner is None:
            return False
        if owner != user_id:
            raise Forbidden("this session belongs to another user", sessionId=session_id)
        return True

    async def describe(self, session_id: str, *, title: str | None, source: str | None) -> None:
        """Set the title and source a start event brings, also on a session a join or a chunk created first."""
        values = {k: v for k, v in (("title", title), ("source", source)) if v is not None}
        if not values:
            return
        async with self.db.write() as s:
            await s.execute(update(RecordingSession).where(col(RecordingSession.id) == session_id).values(**values))

    async def _create_or_get_owner(self, session_id: str, user_id: str, title: str | None, source: str | None) -> str:
        entry = self._creating.get(session_id)
        if entry is None:  # a second first event for the same session waits for the same answer
            entry = self._creating[session_id] = _NewSession(user_id, title, source)
            entry.owner.add_done_callback(mark_retrieved)
        if self._creator is None or self._creator.done():
            self._creator = asyncio.get_running_loop().create_task(self._run_creations())
        return await asyncio.shield(entry.owner)

    async def _run_creations(self) -> None:
        while self._creating:
            ids = list(self._creating)[: self.max_batch]
            batch = {session_id: self._creating.pop(session_id) for session_id in ids}
            try:
                owners = await self._create_many(batch)
            except asyncio.CancelledError:
                stopping = Unavailable("server is stopping; resend after reconnecting")
                for entry in [*batch.values(), *self._creating.values()]:
                    if not entry.owner.done():
                        entry.owner.set_exception(stopping)
                self._creating.clear()
                raise
            except Exception as exc:
                for entry in batch.values():
                    entry.owner.set_exception(exc)
                continue
            for session_id, entry in batch.items():
                owner = owners.get(session_id)
                if owner is None:  # deleted between the insert and the read (retention purging it)
                    entry.owner.set_exception(ScribeError("the session could not be created; resend", sessionId=session_id))
                    continue
                self._remember(session_id, owner)
                entry.owner.set_result(owner)

    async def _create_many(self, batch: dict[str, _NewSession]) -> dict[str, str]:
        """Insert the sessions that do not exist yet and read every one's owner back, in one transaction."""
        claims = {session_id: (e.user_id, e.title, e.source) for session_id, e in batch.items()}
        if self.db.sync_engine is not None:  # SQLite: the whole group in one transaction and one thread hop
            return await self.db.write_in_thread(lambda conn: self.create_in(conn, claims))
        async with self.db.write() as s:
            return await self.create_in_async(s, claims)

    def create_in(self, conn: sqlite3.Connection, claims: dict[str, Claim]) -> dict[str, str]:
        """In a SQLite write transaction (the caller's, e.g. a chunk group commit, see Database.transaction_here):
        insert the claimed sessions that do not exist yet, as plain SQL text, and return the owner of each."""
        rows = self._rows(claims)
        if self._sqlite_insert is None:
            assert self.db.sync_engine is not None
            self._sqlite_insert = SqliteInsertMany(
                RecordingSession.__table__, tuple(rows[0]), self.db.sync_engine.dialect,  # type: ignore[attr-defined]
                "ON CONFLICT (id) DO NOTHING")
        conn.execute(*self._sqlite_insert(rows))
        owners_sql = f"SELECT id, user_id FROM recording_session WHERE id IN ({', '.join('?' * len(claims))})"
        self.create_batches += 1
        return {str(i): str(u) for i, u in conn.execute(owners_sql, tuple(claims)).fetchall()}

    async def create_in_async(self, s: AsyncSession, claims: dict[str, Claim]) -> dict[str, str]:
        """create_in inside an async write transaction (PostgreSQL; SQLite without a file)."""
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        statement = insert(RecordingSession).values(self._rows(claims)).on_conflict_do_nothing(index_elements=["id"])
        await s.execute(statement)
        owners_of = (select(col(RecordingSession.id), col(RecordingSession.user_id))
                     .where(col(RecordingSession.id).in_(list(claims))))
        self.create_batches += 1
        return {str(i): str(u) for i, u in await s.execute(owners_of)}

    @staticmethod
    def _rows(claims: dict[str, Claim]) -> list[dict[str, Any]]:
        now = utcnow()
        return [dict(id=session_id, user_id=user_id, title=title, source=source, status=SessionStatus.RECORDING,
                     tier="hot", created_at=now, started_at=now, last_activity_at=now)
                for session_id, (user_id, title, source) in claims.items()]

    def remember(self, owners: dict[str, str]) -> None:
        """Owners read in a committed transaction (a chunk group commit that created the sessions)."""
        for session_id, owner in owners.items():
            self._remember(session_id, owner)

    def _remember(self, session_id: str, owner: str) -> None:
        self._owners[session_id] = owner
        self._owners.move_to_end(session_id)
        while len(self._owners) > self._cache_size:
            self._owners.popitem(last=False)

    async def check_access(self, session_id: str, user_id: str) -> None:
        """NotFound for an unknown session, Forbidden for another user's (socket events may say so)."""
        owner = self._owners.get(session_id)
        if owner is None:
            async with self.db.read() as s:
                owner = (await s.execute(select(col(RecordingSession.user_id)).where(col(RecordingSession.id) == session_id))).scalar_one_or_none()
            if owner is None:
                raise NotFound("session not found", sessionId=session_id)
            self._remember(session_id, owner)
        if owner != user_id:
            raise Forbidden("this session belongs to another user", sessionId=session_id)

    async def get_owned(self, session_id: str, user_id: str) -> RecordingSession:
        """The session if it exists and is the user's; NotFound otherwise (REST must not reveal others')."""
        async with self.db.read() as s:
            row = await s.get(RecordingSession, session_id)
        if row is None or row.user_id != user_id:
            raise NotFound("session not found", sessionId=session_id)
        return row

    async def gap_summary(self, session_id: str, last_seq: int | None = None) -> GapSummary:
        async with self.db.read() as s:
            status = (await s.execute(select(col(RecordingSession.status)).where(col(RecordingSession.id) == session_id))).scalar_one()
            seqs = list((await s.execute(select(col(Chunk.seq)).where(col(Chunk.session_id) == session_id).order_by(col(Chunk.seq)))).scalars())
        return GapSummary(session_id, status, seqs[-1] if seqs else -1, len(seqs), gaps(seqs, last_seq))

    async def set_status(self, session_id: str, status: str) -> datetime:
        now = utcnow()
        values: dict[str, Any] = {"status": status, "last_activity_at": now}
        if status == SessionStatus.STOPPED:
            values["stopped_at"] = now
        elif status == SessionStatus.PAUSED:
            values["paused_at"] = now
        async with self.db.write() as s:
            await s.execute(update(RecordingSession).where(col(RecordingSession.id) == session_id).values(**values))
        return now

    async def stop(self, session_id: str, last_seq: int | None = None) -> dict[str, Any]:
        stopped_at = await self.set_status(session_id, SessionStatus.STOPPED)
        summary = await self.gap_summary(session_id, last_seq)
        return {**summary.wire(), "stoppedAt": stopped_at.isoformat()}

    async def unfinished_chunks(self, session_id: str) -> int:
        async with self.db.read() as s:
            return int((await s.execute(
                select(func.count()).select_from(Chunk)
                .where(col(Chunk.session_id) == session_id, col(Chunk.status).in_(ChunkStatus.UNFINISHED))
            )).scalar_one())
