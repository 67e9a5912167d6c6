"""Recording sessions: ownership, lifecycle (recording, paused, stopped) and gap summaries."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sqlmodel import col

from scribeai.db import Database
from scribeai.errors import Forbidden, NotFound
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


class SessionService:
    """Sessions belong to the user who created them; owners are cached since they never change."""

    def __init__(self, db: Database, owner_cache_size: int = 10_000) -> None:
        self.db = db
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._cache_size = owner_cache_size

    def __repr__(self) -> str:
        return f"SessionService(cached_owners={len(self._owners)})"

    async def ensure(self, session_id: str, user_id: str, *, title: str | None = None, source: str | None = None) -> None:
        """Create the session for `user_id` if it does not exist; refuse another user's session."""
        owner = self._owners.get(session_id)
        if owner is None:
            owner = await self._create_or_get_owner(session_id, user_id, title, source)
        if owner != user_id:
            raise Forbidden("this session belongs to another user", sessionId=session_id)

    async def describe(self, session_id: str, *, title: str | None, source: str | None) -> None:
        """Set the title and source a start event brings, also on a session a join or a chunk created first."""
        values = {k: v for k, v in (("title", title), ("source", source)) if v is not None}
        if not values:
            return
        async with self.db.write() as s:
            await s.execute(update(RecordingSession).where(col(RecordingSession.id) == session_id).values(**values))

    async def _create_or_get_owner(self, session_id: str, user_id: str, title: str | None, source: str | None) -> str:
        insert = postgresql.insert if not self.db.is_sqlite else sqlite.insert
        now = utcnow()
        statement = (
            insert(RecordingSession)
            .values(id=session_id, user_id=user_id, title=title, source=source, status=SessionStatus.RECORDING,
                    tier="hot", created_at=now, started_at=now, last_activity_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        owner_of = select(col(RecordingSession.user_id)).where(col(RecordingSession.id) == session_id)
        if self.db.sync_engine is not None:
            # SQLite: insert and read back in one transaction and one thread hop (a new session's first chunk).
            def create(conn: Connection) -> str:
                conn.execute(statement)
                return str(conn.execute(owner_of).scalar_one())
            owner = await self.db.write_in_thread(create)
        else:
            async with self.db.write() as s:
                await s.execute(statement)
                owner = str((await s.execute(owner_of)).scalar_one())
        self._remember(session_id, owner)
        return str(owner)

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
