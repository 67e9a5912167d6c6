"""The durable transcription queue: a session's stream is the unit of work, its chunks the input.

A stored chunk is `pending` until a worker reads it into its session's stream, `transcribing` while
its audio waits for a window's text, `done` once every window it touches is stored. Work is claimed
per session with a lease (`transcript_stream`), so two processes never transcribe one stream at once;
a process that dies leaves a lease that runs out, and whoever claims next rebuilds the stream from
the stored chunks and `done_ms`. Each transcribing process also keeps a heartbeat (`transcriber_node`),
which runs its leases on while it lives (a slow window included): once its heartbeat has stopped for
`takeover_s`, its streams are free before their leases run out. A window's commit is fenced by the
claim, so a process that lost its stream (stalled past its heartbeat) stores nothing more of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, false, func, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from scribeai.db import Database, affected
from scribeai.models import (
    CaptionViewer,
    CheckpointKind,
    Chunk,
    ChunkStatus,
    RecordingSession,
    StreamCheckpoint,
    TranscriberNode,
    TranscriptSegment,
    TranscriptStream,
    utcnow,
)

CANDIDATES = 16
STALE_S = 30.0  # a free stream with chunks still `transcribing` and nothing due is looked at again after this
GONE_NODES_KEPT = timedelta(days=1)  # a node's heartbeat row outlives it this long (NODE_IDs that change per start)


def retry_delays(base_s: float = 1.0) -> tuple[float, ...]:
    """1 s, 4 s, 16 s by default: after the 1st, 2nd and 3rd failure; the 4th is final."""
    return (base_s, base_s * 4, base_s * 16)


class LeaseLost(Exception):
    """Another node holds the stream now (this process stalled past its heartbeat): nothing of it was stored."""


@dataclass(frozen=True)
class StreamState:
    """What the database knows of a session's stream when a worker claims it."""

    session_id: str
    done_ms: int
    attempts: int
    gaps: list[dict[str, Any]]
    status: str  # the session's status (recording, paused, stopped)


class StreamQueue:
    """Claim, advance and release session streams; safe with several processes on PostgreSQL."""

    def __init__(self, db: Database, node_id: str, lease_s: float = 120.0, retry_base_s: float = 1.0,
                 takeover_s: float = 20.0) -> None:
        self.db = db
        self.node_id = node_id
        self.lease_s = lease_s
        self.takeover_s = takeover_s
        self.retry_delays = retry_delays(retry_base_s)

    def __repr__(self) -> str:
        return f"StreamQueue(node={self.node_id!r}, lease={self.lease_s}s, takeover={self.takeover_s}s)"

    @property
    def heartbeat_s(self) -> float:
        """How often a transcribing process says it lives: four times within its takeover time and its lease."""
        return min(self.takeover_s, self.lease_s) / 4

    @staticmethod
    def _free(now: datetime) -> Any:
        """A stream nobody may be working on: never claimed, its lease run out, or its holder's heartbeat stopped."""
        gone = select(col(TranscriberNode.node_id)).where(col(TranscriberNode.alive_until) < now)
        return or_(col(TranscriptStream.lease_until).is_(None), col(TranscriptStream.lease_until) < now,
                   col(TranscriptStream.claimed_by).in_(gone))

    def _insert(self) -> Any:
        return sqlite.insert if self.db.is_sqlite else postgresql.insert

    async def claim(self, exclude: Sequence[str] = ()) -> StreamState | None:
        """A session with work whose lease is free: a new chunk, a window waiting, a retry, or a stream whose
        holder is gone (its heartbeat stopped, or its lease ran out, before it gave the stream back)."""
        now = utcnow()
        free = self._free(now)
        others = col(TranscriptStream.session_id).not_in(list(exclude))
        new_chunks = (
            select(col(Chunk.session_id)).where(
                col(Chunk.status) == ChunkStatus.PENDING,
                or_(col(Chunk.next_attempt_at).is_(None), col(Chunk.next_attempt_at) <= now),
                col(Chunk.session_id).not_in(list(exclude)),
            ).order_by(col(Chunk.created_at)).limit(CANDIDATES)
        )
        due = select(col(TranscriptStream.session_id)).where(
            or_(col(TranscriptStream.due_at) <= now, col(TranscriptStream.claimed_by).is_not(None)),
            free, others,
        ).order_by(col(TranscriptStream.lease_until), col(TranscriptStream.due_at)).limit(CANDIDATES)
        # Belt and braces: chunks read into a stream that nobody holds and nothing will look at again.
        stale = select(col(TranscriptStream.session_id)).where(
            col(TranscriptStream.claimed_by).is_(None), col(TranscriptStream.due_at).is_(None),
            col(TranscriptStream.updated_at) < now - timedelta(seconds=STALE_S), others,
            col(TranscriptStream.session_id).in_(
                select(col(Chunk.session_id)).where(col(Chunk.status) == ChunkStatus.TRANSCRIBING)),
        ).limit(CANDIDATES)
        async with self.db.read() as s:
            found = [*(await s.execute(due)).scalars(), *(await s.execute(new_chunks)).scalars(),
                     *(await s.execute(stale)).scalars()]
        candidates = list(dict.fromkeys(found))
        for session_id in candidates:
            state = await self._try_claim(session_id, now)
            if state is not None:
                return state
        return None

    async def _try_claim(self, session_id: str, now: datetime) -> StreamState | None:
        # One statement decides between racing claimers, on SQLite and PostgreSQL alike: the row lock
        # (PostgreSQL) or the single writer (SQLite) serializes them, and only a free lease is taken.
        lease = now + timedelta(seconds=self.lease_s)
        statement = self._insert()(TranscriptStream).values(
            session_id=session_id, claimed_by=self.node_id, lease_until=lease, due_at=None, done_ms=0, attempts=0,
            gaps="[]", updated_at=now,
        )
        statement = statement.on_conflict_do_update(
            index_elements=["session_id"],
            set_={"claimed_by": self.node_id, "lease_until": lease, "due_at": None, "updated_at": now},
            where=and_(
                self._free(now),
                # a stream waiting out a retry's backoff is not taken early by a new chunk or a stop
                or_(col(TranscriptStream.attempts) == 0, col(TranscriptStream.due_at).is_(None), col(TranscriptStream.due_at) <= now),
            ),
        ).returning(col(TranscriptStream.done_ms), col(TranscriptStream.attempts), col(TranscriptStream.gaps))
        async with self.db.write() as s:
            row = (await s.execute(statement)).first()
            if row is None:
                return None
            status = (await s.execute(select(col(RecordingSession.status)).where(col(RecordingSession.id) == session_id))).scalar_one()
        return StreamState(session_id, int(row[0]), int(row[1]), json.loads(row[2] or "[]"), status)

    async def renew(self, session_id: str) -> bool:
        """Extend this node's lease; False if it was lost (another node took the stream)."""
        async with self.db.write() as s:
            result = await s.execute(
                update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id,
                                               col(TranscriptStream.claimed_by) == self.node_id)
                .values(lease_until=utcnow() + timedelta(seconds=self.lease_s))
            )
        return affected(result) > 0

    async def heartbeat(self, held: Sequence[str]) -> None:
        """This process lives for another `takeover_s`, and so do its leases on the streams in `held`."""
        now = utcnow()
        alive = now + timedelta(seconds=self.takeover_s)
        async with self.db.write() as s:
            await s.execute(self._insert()(TranscriberNode).values(node_id=self.node_id, alive_until=alive)
                            .on_conflict_do_update(index_elements=["node_id"], set_={"alive_until": alive}))
            if held:
                await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id).in_(list(held)),
                                                               col(TranscriptStream.claimed_by) == self.node_id)
                                .values(lease_until=now + timedelta(seconds=self.lease_s)))
            await s.execute(delete(TranscriberNode).where(col(TranscriberNode.alive_until) < now - GONE_NODES_KEPT))

    async def leave(self) -> None:
        """This process stops (its streams released): it is gone now, not `takeover_s` later."""
        async with self.db.write() as s:
            await s.execute(update(TranscriberNode).where(col(TranscriberNode.node_id) == self.node_id)
                            .values(alive_until=utcnow()))

    async def release(self, session_id: str, due_in_s: float | None, error: str | None = None) -> None:
        """Give the stream back; look at it again in `due_in_s` seconds even without a new chunk."""
        due = None if due_in_s is None else utcnow() + timedelta(seconds=due_in_s)
        current = col(TranscriptStream.due_at)
        # A wake() while this node held the stream (the session was stopped meanwhile) must not be lost; but after
        # a failure (attempts > 0, set by count_failure) the backoff wins: a stop mid-window is no reason to retry now.
        in_backoff = col(TranscriptStream.attempts) > 0
        keep_earlier = current if due is None else case(
            (and_(current.is_not(None), current < due, ~in_backoff), current), else_=due)
        async with self.db.write() as s:
            await s.execute(
                update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id,
                                               col(TranscriptStream.claimed_by) == self.node_id)
                .values(claimed_by=None, lease_until=None, due_at=keep_earlier, error=error, updated_at=utcnow())
            )

    async def chunks(self, session_id: str, from_seq: int, limit: int) -> list[Chunk]:
        """The session's stored chunks from `from_seq` on, in sequence order (files still on disk)."""
        async with self.db.read() as s:
            return list((await s.execute(
                select(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) >= from_seq,
                                    col(Chunk.deleted_at).is_(None))
                .order_by(col(Chunk.seq)).limit(limit)
            )).scalars())

    async def late_chunks(self, session_id: str, before_seq: int, gaps: Sequence[tuple[int, int]]) -> list[Chunk]:
        """Chunks stored after their stream had gone past them (a gap filled late, a failed chunk retried), and
        those of an unfilled gap that a process began to read in and died."""
        in_gaps = [col(Chunk.seq).between(low, high) for low, high in gaps]
        async with self.db.read() as s:
            return list((await s.execute(
                select(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) < before_seq,
                                    or_(col(Chunk.status) == ChunkStatus.PENDING,
                                        and_(col(Chunk.status) == ChunkStatus.TRANSCRIBING, or_(false(), *in_gaps))))
                .order_by(col(Chunk.seq)).limit(4 * CANDIDATES)
            )).scalars())

    async def first_unfinished(self, session_id: str, gaps: Sequence[tuple[int, int]]) -> int | None:
        """The lowest chunk not yet through its stream, not counting those of gaps (filled apart from the stream)."""
        outside = [not_(col(Chunk.seq).between(low, high)) for low, high in gaps]
        async with self.db.read() as s:
            first = (await s.execute(
                select(func.min(col(Chunk.seq))).where(col(Chunk.session_id) == session_id,
                                                       col(Chunk.status).in_(ChunkStatus.UNFINISHED), *outside)
            )).scalar_one_or_none()
        return None if first is None else int(first)

    async def resume_checkpoint(self, session_id: str) -> tuple[int, bytes] | None:
        """The stream's stored resume point: (the seq it was kept after, the reading state)."""
        query = select(col(StreamCheckpoint.seq), col(StreamCheckpoint.state)).where(
            col(StreamCheckpoint.session_id) == session_id, col(StreamCheckpoint.kind) == CheckpointKind.RESUME)
        async with self.db.read() as s:
            row = (await s.execute(query.order_by(col(StreamCheckpoint.seq).desc()).limit(1))).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def gap_checkpoints(self, session_id: str, seqs: Sequence[int]) -> dict[int, bytes]:
        """The reading states kept just before gaps, by the seq of the chunk before each (one query for all)."""
        if not seqs:
            return {}
        async with self.db.read() as s:
            rows = (await s.execute(select(col(StreamCheckpoint.seq), col(StreamCheckpoint.state)).where(
                col(StreamCheckpoint.session_id) == session_id, col(StreamCheckpoint.kind) == CheckpointKind.GAP,
                col(StreamCheckpoint.seq).in_(list(seqs))))).all()
        return {int(seq): bytes(state) for seq, state in rows}

    async def stream_start_before(self, session_id: str, seq: int) -> int | None:
        async with self.db.read() as s:
            start = (await s.execute(
                select(func.max(col(Chunk.seq))).where(col(Chunk.session_id) == session_id, col(Chunk.seq) <= seq,
                                                       col(Chunk.has_header).is_(True), col(Chunk.deleted_at).is_(None))
            )).scalar_one_or_none()
        return None if start is None else int(start)

    async def resume_point(self, session_id: str, gaps: Sequence[tuple[int, int]],
                           unfilled: Sequence[tuple[int, int]]) -> int:
        """The seq to read from: the last stream start before the first chunk not yet read through.

        That is the first unfinished chunk outside the `unfilled` gaps (as `first_unfinished`: their chunks are
        late fills'), or an earlier sequence that never arrived and was not given up as one of the `gaps` (the
        stream cannot have gone past it: later chunks arrived first); with none, the chunk after the last.
        """
        first = await self.first_unfinished(session_id, unfilled)
        async with self.db.read() as s:
            if first is None:
                last = (await s.execute(select(func.max(col(Chunk.seq))).where(col(Chunk.session_id) == session_id))
                        ).scalar_one_or_none()
                if last is None:
                    return 0
                first = int(last) + 1
            present = set((await s.execute(
                select(col(Chunk.seq)).where(col(Chunk.session_id) == session_id, col(Chunk.seq) < first)
            )).scalars())
        skipped = {seq for low, high in gaps for seq in range(low, min(high, int(first)) + 1)}
        missing = next((seq for seq in range(int(first)) if seq not in present and seq not in skipped), None)
        target = int(first) if missing is None else missing
        start = await self.stream_start_before(session_id, target)
        return start if start is not None else (0 if missing is not None else target)

    async def last_text(self, session_id: str, before_ms: float | None = None) -> str:
        """The text of the session's last segment (ending by `before_ms`): the prompt a window goes on from."""
        query = select(col(TranscriptSegment.text)).where(col(TranscriptSegment.session_id) == session_id)
        if before_ms is not None:
            query = query.where(col(TranscriptSegment.end_ms) <= before_ms)
        async with self.db.read() as s:
            text = (await s.execute(query.order_by(col(TranscriptSegment.start_ms).desc()).limit(1))).scalar_one_or_none()
        return text or ""

    async def mark_read(self, chunk_ids: Sequence[str]) -> None:
        """Chunks read into their stream: out of the pending queue (backpressure counts them done)."""
        if not chunk_ids:
            return
        async with self.db.write() as s:
            await s.execute(update(Chunk).where(col(Chunk.id).in_(list(chunk_ids)), col(Chunk.status) == ChunkStatus.PENDING)
                            .values(status=ChunkStatus.TRANSCRIBING, error=None))

    async def defer(self, chunk_ids: Sequence[str], seconds: float, reason: str) -> None:
        """Chunks that cannot be read yet (a chunk before them is still missing): no claim for them before `seconds`."""
        async with self.db.write() as s:
            await s.execute(update(Chunk).where(col(Chunk.id).in_(list(chunk_ids))).values(
                error=reason, next_attempt_at=utcnow() + timedelta(seconds=seconds)))

    async def fail_chunks(self, session_id: str, seqs: Sequence[int], reason: str) -> None:
        """Chunks that failed for good, while this node holds the stream (else LeaseLost, and nothing changes:
        a holder that stalled in a request that then failed must not fail chunks its successor has done)."""
        async with self.db.write() as s:
            await self._still_held(s, session_id)
            await s.execute(update(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq).in_(list(seqs)))
                            .values(status=ChunkStatus.FAILED, error=reason[:2000], transcribed_at=utcnow()))

    def _lost(self, session_id: str) -> LeaseLost:
        return LeaseLost(f"the stream of session {session_id} is no longer this node's ({self.node_id})")

    async def _still_held(self, s: Any, session_id: str) -> None:
        """In the caller's transaction: this node holds the stream (its row is locked until the transaction ends),
        or LeaseLost."""
        held = await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id,
                                                              col(TranscriptStream.claimed_by) == self.node_id)
                               .values(updated_at=utcnow()))
        if not affected(held):
            raise self._lost(session_id)

    async def commit(self, session_id: str, segments: Sequence[TranscriptSegment], done_ms: int,
                     done_through_seq: int, from_seq: int, gaps: list[dict[str, Any]], *,
                     resume: tuple[int, bytes] | None = None,
                     gap_states: Sequence[tuple[int, bytes]] | None = None, claimed: bool = False,
                     unheard: Sequence[tuple[int, int]] = ()) -> list[TranscriptSegment]:
        """Store a window's segments, advance the stream and finish the chunks it covered, in one transaction.

        `resume` is the reading state after the last chunk now done (the stream's new resume point);
        `gap_states` those of the unfilled gaps (any other gap state is dropped). `claimed`: only while this
        node holds the stream (else LeaseLost, and nothing is stored). `unheard`: (from, to) seq ranges whose
        chunks this window does not finish (unfilled gaps: their late fill does). Returns the segments that
        were new (a window redone after a crash inserts nothing twice).
        """
        inserted: list[TranscriptSegment] = []
        advance = update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id)
        if claimed:
            advance = advance.where(col(TranscriptStream.claimed_by) == self.node_id)
        async with self.db.write() as s:
            advanced = await s.execute(
                advance.values(done_ms=func.max(col(TranscriptStream.done_ms), done_ms) if self.db.is_sqlite
                               else func.greatest(col(TranscriptStream.done_ms), done_ms),
                               attempts=0, gaps=json.dumps(gaps), error=None, updated_at=utcnow())
            )
            if claimed and not affected(advanced):
                raise self._lost(session_id)
            if resume is not None:
                await self._keep_states(s, session_id, CheckpointKind.RESUME, [resume])
            if gap_states is not None:
                await self._keep_states(s, session_id, CheckpointKind.GAP, gap_states)
            for segment in segments:
                values = {c.name: getattr(segment, c.name) for c in TranscriptSegment.__table__.columns}  # type: ignore[attr-defined]
                result = await s.execute(self._insert()(TranscriptSegment).values(**values)
                                         .on_conflict_do_nothing(index_elements=["session_id", "start_ms"]))
                if affected(result):
                    inserted.append(segment)
            await s.execute(
                update(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) >= from_seq,
                                    col(Chunk.seq) <= done_through_seq, col(Chunk.status) == ChunkStatus.TRANSCRIBING,
                                    *[not_(col(Chunk.seq).between(low, high)) for low, high in unheard])
                .values(status=ChunkStatus.DONE, transcribed_at=utcnow(), error=None)
            )
        return inserted

    async def _keep_states(self, s: Any, session_id: str, kind: str, states: Sequence[tuple[int, bytes]]) -> None:
        """The session's `kind` checkpoints become exactly `states` (those already stored are not written again)."""
        seqs = [seq for seq, _ in states]
        await s.execute(delete(StreamCheckpoint).where(col(StreamCheckpoint.session_id) == session_id,
                                                       col(StreamCheckpoint.kind) == kind,
                                                       col(StreamCheckpoint.seq).not_in(seqs)))
        for seq, state in states:
            await s.execute(self._insert()(StreamCheckpoint).values(session_id=session_id, kind=kind, seq=seq, state=state,
                                                                    created_at=utcnow())
                            .on_conflict_do_nothing(index_elements=["session_id", "kind", "seq"]))

    async def reopen_after(self, session_id: str, seq: int, gaps: list[dict[str, Any]]) -> None:
        """Chunks after `seq` that failed for want of its header go back to pending; the stream keeps `gaps`.
        Only while this node holds the stream (else LeaseLost, and nothing changes)."""
        async with self.db.write() as s:
            await self._still_held(s, session_id)
            await s.execute(update(Chunk).where(col(Chunk.session_id) == session_id, col(Chunk.seq) > seq,
                                                col(Chunk.status) == ChunkStatus.FAILED, col(Chunk.deleted_at).is_(None))
                            .values(status=ChunkStatus.PENDING, error=None, next_attempt_at=utcnow()))
            await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id)
                            .values(gaps=json.dumps(gaps), updated_at=utcnow()))

    async def count_failure(self, session_id: str, attempts: int, reason: str) -> float | None:
        """A window failed: the delay before the next try, or None when it failed for good."""
        final = attempts > len(self.retry_delays)
        async with self.db.write() as s:
            await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id,
                                                           col(TranscriptStream.claimed_by) == self.node_id)
                            .values(attempts=0 if final else attempts, error=reason[:2000]))
        return None if final else self.retry_delays[attempts - 1]

    async def recover(self) -> int:
        """At start: streams this node held when it died are free again at once."""
        async with self.db.write() as s:
            result = await s.execute(
                update(TranscriptStream).where(col(TranscriptStream.claimed_by) == self.node_id)
                .values(claimed_by=None, lease_until=None, due_at=utcnow())
            )
        return affected(result)

    async def retry_failed(self, session_id: str | None = None) -> int:
        """Failed chunks back to pending, their stream redone from them (not those retention removed)."""
        query = update(Chunk).where(col(Chunk.status) == ChunkStatus.FAILED, col(Chunk.deleted_at).is_(None))
        if session_id is not None:
            query = query.where(col(Chunk.session_id) == session_id)
        async with self.db.write() as s:
            result = await s.execute(query.values(status=ChunkStatus.PENDING, attempts=0, next_attempt_at=utcnow())
                                     .returning(col(Chunk.session_id), col(Chunk.seq)))
            rows = result.all()
        return len(rows)

    async def backlog(self) -> int:
        """Chunks stored and not yet read into their stream (the signal for backpressure and slowDown)."""
        async with self.db.read() as s:
            return int((await s.execute(
                select(func.count()).select_from(Chunk).where(col(Chunk.status) == ChunkStatus.PENDING)
            )).scalar_one())

    async def unfinished(self) -> int:
        async with self.db.read() as s:
            return int((await s.execute(
                select(func.count()).select_from(Chunk).where(col(Chunk.status).in_(ChunkStatus.UNFINISHED))
            )).scalar_one())

    async def watch(self, session_ids: Sequence[str], for_s: float) -> None:
        """These sessions have a caption viewer for the next `for_s` seconds (renewed by the node they watch on)."""
        if not session_ids:
            return
        until = utcnow() + timedelta(seconds=for_s)
        async with self.db.write() as s:
            for session_id in session_ids:
                await s.execute(self._insert()(CaptionViewer).values(session_id=session_id, until=until)
                                .on_conflict_do_update(index_elements=["session_id"], set_={"until": until}))
            await s.execute(delete(CaptionViewer).where(col(CaptionViewer.until) < utcnow() - timedelta(hours=1)))

    async def watched_sessions(self) -> set[str]:
        """The sessions whose live captions someone watches now."""
        async with self.db.read() as s:
            return set((await s.execute(select(col(CaptionViewer.session_id))
                                        .where(col(CaptionViewer.until) >= utcnow()))).scalars())

    async def waiting(self, exclude: Sequence[str] = ()) -> bool:
        """Whether a chunk waits to be read (finals come before captions), in a session other than `exclude`."""
        now = utcnow()
        async with self.db.read() as s:
            return (await s.execute(select(col(Chunk.id)).where(
                col(Chunk.status) == ChunkStatus.PENDING, col(Chunk.session_id).not_in(list(exclude)),
                or_(col(Chunk.next_attempt_at).is_(None), col(Chunk.next_attempt_at) <= now)).limit(1))).first() is not None

    async def wake(self, session_id: str) -> None:
        """Something changed for the session (paused, stopped): look at its stream now."""
        async with self.db.write() as s:
            await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id) == session_id,
                                                           col(TranscriptStream.attempts) == 0)
                            .values(due_at=utcnow()))


