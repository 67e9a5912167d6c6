"""The durable job queue is the chunk table: a stored chunk is a pending job until its segment exists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sqlmodel import col

from scribeai.db import Database, affected
from scribeai.models import Chunk, ChunkStatus, TranscriptSegment, utcnow

def retry_delays(base_s: float = 1.0) -> tuple[float, ...]:
    """1 s, 4 s, 16 s by default: after the 1st, 2nd and 3rd failure; the 4th is final."""
    return (base_s, base_s * 4, base_s * 16)


@dataclass(frozen=True)
class Failure:
    final: bool
    attempts: int
    retry_in_s: float | None


class JobQueue:
    """Claim, complete, retry and recover transcription jobs; safe with several processes on PostgreSQL."""

    def __init__(self, db: Database, node_id: str, lease_s: float = 120.0, retry_base_s: float = 1.0) -> None:
        self.db = db
        self.retry_delays = retry_delays(retry_base_s)
        self.node_id = node_id
        self.lease_s = lease_s

    def __repr__(self) -> str:
        return f"JobQueue(node={self.node_id!r}, lease={self.lease_s}s)"

    async def claim(self) -> Chunk | None:
        """Take the oldest due pending job, or a job whose worker's lease ran out."""
        now = utcnow()
        due = or_(
            and_(col(Chunk.status) == ChunkStatus.PENDING, or_(col(Chunk.next_attempt_at).is_(None), col(Chunk.next_attempt_at) <= now)),
            and_(col(Chunk.status) == ChunkStatus.TRANSCRIBING, col(Chunk.lease_until) < now),
        )
        pick = select(col(Chunk.id)).where(due).order_by(col(Chunk.next_attempt_at), col(Chunk.created_at)).limit(1)
        if not self.db.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)  # several workers on several nodes never share a job
        statement = (
            update(Chunk)
            .where(col(Chunk.id) == pick.scalar_subquery())
            .values(status=ChunkStatus.TRANSCRIBING, claimed_by=self.node_id, lease_until=now + timedelta(seconds=self.lease_s))
            .returning(Chunk)
        )
        async with self.db.write() as s:
            row = (await s.execute(statement)).scalars().first()
        return row

    async def complete(self, chunk: Chunk, segment: TranscriptSegment, duration_ms: int | None) -> bool:
        """Store the segment and mark the job done, in one transaction; False if it was done already."""
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        values = {c.name: getattr(segment, c.name) for c in TranscriptSegment.__table__.columns}  # type: ignore[attr-defined]
        async with self.db.write() as s:
            inserted = await s.execute(insert(TranscriptSegment).values(**values).on_conflict_do_nothing(index_elements=["session_id", "seq"]))
            await s.execute(
                update(Chunk).where(col(Chunk.id) == chunk.id).values(
                    status=ChunkStatus.DONE, transcribed_at=utcnow(), claimed_by=None, lease_until=None, error=None,
                    duration_ms=duration_ms if duration_ms is not None else chunk.duration_ms,
                )
            )
        return affected(inserted) > 0

    async def fail(self, chunk: Chunk, reason: str, *, retryable: bool = True) -> Failure:
        """Count a failed attempt: retry after the next delay, or mark it failed for good."""
        attempts = chunk.attempts + 1
        final = not retryable or attempts > len(self.retry_delays)
        retry_in = None if final else self.retry_delays[attempts - 1]
        async with self.db.write() as s:
            await s.execute(
                update(Chunk).where(col(Chunk.id) == chunk.id).values(
                    status=ChunkStatus.FAILED if final else ChunkStatus.PENDING,
                    attempts=attempts, error=reason[:2000], claimed_by=None, lease_until=None,
                    next_attempt_at=None if final else utcnow() + timedelta(seconds=retry_in or 0),
                )
            )
        return Failure(final, attempts, retry_in)

    async def defer(self, chunk: Chunk, seconds: float, reason: str) -> None:
        """Put a job back without counting an attempt (it waits for something, e.g. the session's header)."""
        async with self.db.write() as s:
            await s.execute(
                update(Chunk).where(col(Chunk.id) == chunk.id).values(
                    status=ChunkStatus.PENDING, claimed_by=None, lease_until=None, error=reason,
                    next_attempt_at=utcnow() + timedelta(seconds=seconds),
                )
            )

    async def recover(self) -> int:
        """At start: jobs this node held when it died go back to the queue."""
        async with self.db.write() as s:
            result = await s.execute(
                update(Chunk).where(col(Chunk.status) == ChunkStatus.TRANSCRIBING, col(Chunk.claimed_by) == self.node_id)
                .values(status=ChunkStatus.PENDING, claimed_by=None, lease_until=None, next_attempt_at=utcnow())
            )
        return affected(result)

    async def retry_failed(self, session_id: str | None = None) -> int:
        """Failed chunks back to pending; not those whose raw file retention already removed."""
        query = update(Chunk).where(col(Chunk.status) == ChunkStatus.FAILED, col(Chunk.deleted_at).is_(None))
        if session_id is not None:
            query = query.where(col(Chunk.session_id) == session_id)
        async with self.db.write() as s:
            result = await s.execute(query.values(status=ChunkStatus.PENDING, attempts=0, next_attempt_at=utcnow()))
        return affected(result)

    async def backlog(self) -> int:
        async with self.db.read() as s:
            return int((await s.execute(
                select(func.count()).select_from(Chunk).where(col(Chunk.status).in_(ChunkStatus.UNFINISHED))
            )).scalar_one())

    async def next_due(self) -> datetime | None:
        async with self.db.read() as s:
            return (await s.execute(
                select(func.min(col(Chunk.next_attempt_at))).where(col(Chunk.status) == ChunkStatus.PENDING)
            )).scalar_one_or_none()
