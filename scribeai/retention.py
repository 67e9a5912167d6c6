"""Storage tiers: hot chunk files -> warm verified ZIP -> cold transcript only; the retention CLI in README.md.

Four parts, kept apart: the policy (pure: which sessions move, from their facts and `now`), the
archive actions (scribeai/archive.py: blocking ZIP write/verify/extract), the runner that applies
the policy under one lock per database, and the daily scheduler plus storage metrics for the server.

Crash safety rests on one ordering: a raw chunk file is deleted only after the database says it is
inside an archive that was verified member by member. Every other interruption leaves either a
temporary ZIP (removed by the next run), a verified ZIP the database does not know yet (re-verified
and adopted), or raw files the database already counts as archived (deleted by the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time as _time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import zipfile_deflate64  # noqa: F401  (patches zipfile so Deflate64 members can be read)
from aiohttp import web
from sqlalchemy import and_, case, exists, func, or_, select, text, true, update
from sqlalchemy.engine import Row, make_url
from sqlmodel import col

from scribeai.archive import (
    ARCHIVE_FORMAT,
    ArchiveCheck,
    ArchiveFailed,
    ArchiveFile,
    ArchivePlace,
    Member,
    archive_name,
    extract_members,
    file_sha256,
    in_archive,
    member_name,
    open_archives,
    sweep_archive_temporaries,
    verify_archive,
    write_archive,
)
from scribeai.db import Database, affected
from scribeai.errors import NotFound, ScribeError
from scribeai.metrics import Metrics
from scribeai.models import (
    Chunk,
    ChunkStatus,
    RecordingSession,
    SessionStatus,
    Tier,
    TranscriptSegment,
)
from scribeai.settings import Settings, parse_schedule
from scribeai.store import Store, open_store

log = logging.getLogger(__name__)

ID_BATCH = 500
UNNAMED_MIN_AGE_S = 3600.0  # a chunk file no row names is a crash's leftover only once it is this old
FINISHED = (ChunkStatus.DONE, ChunkStatus.FAILED, ChunkStatus.STORED)
SCHEDULER_MAX_SLEEP_S = 300.0
# Chunks are read as plain rows, not ORM objects: a long session costs a few hundred bytes per chunk.
CHUNK_COLUMNS: tuple[Any, ...] = tuple(col(c) for c in (
    Chunk.id, Chunk.seq, Chunk.size, Chunk.sha256, Chunk.mime_type, Chunk.path, Chunk.status,
    Chunk.timestamp_ms, Chunk.duration_ms, Chunk.created_at, Chunk.deleted_at))
ChunkRow = Row[Any]


class RetentionBusy(ScribeError):
    """Another retention run (or restore) holds the lock for this database."""

    code = "busy"
    http_status = 409


class SessionChanged(ScribeError):
    """A chunk changed under the run (a late chunk, a retried transcription): try again next run."""

    code = "changed"
    http_status = 409


# -- policy (pure) ---------------------------------------------------------------------------------


class Move:
    ARCHIVE = "archive"  # hot chunks -> one verified ZIP (warm)
    COLD = "cold"        # warm ZIP deleted -> transcript only
    WAIT = "wait"        # due, but chunks are still in the transcription queue
    KEEP = "keep"


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: float = 7
    archive_retention_days: float = 30

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(settings.retention_days, settings.archive_retention_days)


@dataclass(frozen=True)
class SessionFacts:
    """What the policy needs to know about one session; built from rows, or by hand in tests."""

    session_id: str
    status: str
    tier: str
    last_activity_at: datetime
    archived_at: datetime | None = None
    live_chunks: int = 0         # raw files still in hot storage (deleted_at is null)
    unfinished_chunks: int = 0   # live chunks still pending or being transcribed
    latest_chunk_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    session_id: str
    move: str
    reason: str


def decide(facts: SessionFacts, now: datetime, policy: RetentionPolicy) -> Decision:
    """The tier move for one session at `now`: hot after RETENTION_DAYS idle -> warm, warm after ARCHIVE_RETENTION_DAYS -> cold."""
    sid = facts.session_id
    if facts.tier == Tier.HOT or facts.live_chunks:
        idle_since = max(facts.last_activity_at, facts.latest_chunk_at or facts.last_activity_at)
        idle = now - idle_since
        if idle < timedelta(days=policy.retention_days):
            return Decision(sid, Move.KEEP, f"active {_days(idle)} ago")
        if facts.unfinished_chunks:
            return Decision(sid, Move.WAIT, f"{facts.unfinished_chunks} chunk(s) not transcribed yet")
        if facts.tier != Tier.HOT:
            return Decision(sid, Move.ARCHIVE, f"{facts.live_chunks} late chunk(s) idle for {_days(idle)}")
        kind = "stopped" if facts.status == SessionStatus.STOPPED else f"abandoned ({facts.status})"
        return Decision(sid, Move.ARCHIVE, f"{kind}, idle for {_days(idle)}")
    if facts.tier == Tier.WARM:
        warm_since = facts.archived_at or facts.last_activity_at
        if now - warm_since >= timedelta(days=policy.archive_retention_days):
            return Decision(sid, Move.COLD, f"archived {_days(now - warm_since)} ago")
        return Decision(sid, Move.KEEP, f"archived {_days(now - warm_since)} ago")
    return Decision(sid, Move.KEEP, "cold: transcript only")


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days"


def next_run(after: datetime, at: time) -> datetime:
    """The first local wall-clock `at` strictly after `after` (aware), as an aware datetime."""
    local = after.astimezone()
    candidate = datetime.combine(local.date(), at).astimezone()  # naive -> this machine's zone, DST-aware
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at).astimezone()
    return candidate


# -- the lock: one run at a time per database --------------------------------------------------------


class RetentionLock:
    """pg_try_advisory_lock on PostgreSQL (all nodes, the CLI), flock on a file beside the SQLite database."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.key = int.from_bytes(hashlib.sha256(f"scribeai.retention:{db.schema or ''}".encode()).digest()[:8], "big", signed=True)
        database = make_url(db.url).database if db.is_sqlite else None
        if database and database != ":memory:":
            self.path = Path(f"{database}.retention.lock")
        else:
            self.path = settings.data_dir / "retention.lock"

    def __repr__(self) -> str:
        return f"RetentionLock({'flock ' + str(self.path) if self.db.is_sqlite else f'pg advisory {self.key}'})"

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Take the lock or raise RetentionBusy at once (never wait behind a long run)."""
        if self.db.is_sqlite:
            with self._flock():
                yield
            return
        async with self.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar():
                raise RetentionBusy("another retention run holds the lock")
            try:
                yield
            finally:
                try:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except Exception:  # a broken connection released the lock with it; never pool it
                    await conn.invalidate()

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RetentionBusy("another retention run holds the lock", lock=str(self.path)) from exc
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock


# -- the runner --------------------------------------------------------------------------------------


@dataclass
class RunReport:
    now: datetime
    dry_run: bool
    archived: list[dict[str, Any]] = field(default_factory=list)
    cold: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    removed_temporary_archives: int = 0
    removed_orphan_chunk_files: int = 0
    removed_unnamed_chunk_files: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def wire(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(), "dryRun": self.dry_run, "ok": self.ok,
            "archived": self.archived, "cold": self.cold, "waiting": self.waiting, "failed": self.failed,
            "removed": {"temporaryArchives": self.removed_temporary_archives, "orphanChunkFiles": self.removed_orphan_chunk_files,
                        "unnamedChunkFiles": self.removed_unnamed_chunk_files},
            "durationS": round(self.duration_s, 3),
        }


class Retention:
    """The tier moves over one database, the chunk store (STORAGE_DIR or STORAGE_URL) and the archive place
    (ARCHIVE_STORAGE_PATH or an object store), for the server and the CLI alike."""

    def __init__(self, db: Database, settings: Settings, store: Store | None = None) -> None:
        self.db = db
        self.settings = settings
        self.store = store if store is not None else open_store(Path(settings.storage_dir), settings.storage_url)
        self.archives: ArchivePlace = open_archives(settings)
        self.policy = RetentionPolicy.from_settings(settings)
        self.lock = RetentionLock(db, settings)

    def __repr__(self) -> str:
        return f"Retention({self.policy}, {self.store!r}, {self.archives!r}, {self.lock!r})"

    # -- retention run ---------------------------------------------------------------------------

    async def run(self, now: datetime, *, dry_run: bool = False) -> RunReport:
        """Apply the policy at `now` to every session; one failing session never stops the others."""
        started = _time.monotonic()
        report = RunReport(now, dry_run)
        if dry_run:
            await self._apply(await self.decisions(now), now, report)
        else:
            async with self.lock.hold():
                report.removed_temporary_archives = await asyncio.to_thread(sweep_archive_temporaries, self.archives.scratch)
                await self._apply(await self.decisions(now), now, report)
                report.removed_orphan_chunk_files, report.removed_unnamed_chunk_files = await self._remove_orphans()
        report.duration_s = _time.monotonic() - started
        return report

    async def decisions(self, now: datetime) -> list[Decision]:
        """The policy's verdict for every session that might move at `now` (sessions kept are left out)."""
        return [d for d in (decide(f, now, self.policy) for f in await self._facts(now)) if d.move != Move.KEEP]

    async def _apply(self, decisions: list[Decision], now: datetime, report: RunReport) -> None:
        for decision in decisions:
            sid = decision.session_id
            if decision.move == Move.WAIT:
                report.waiting.append({"sessionId": sid, "reason": decision.reason})
                continue
            try:
                if decision.move == Move.ARCHIVE:
                    done = {"sessionId": sid, "reason": decision.reason}
                    if not report.dry_run:
                        done.update(await self.archive(sid, now))
                    report.archived.append(done)
                elif decision.move == Move.COLD:
                    if not report.dry_run:
                        await self.make_cold(sid, now)
                    report.cold.append({"sessionId": sid, "reason": decision.reason})
            except SessionChanged as exc:
                report.waiting.append({"sessionId": sid, "reason": exc.message})
            except ScribeError as exc:
                log.warning("retention of session %s failed: %s", sid, exc.message, extra={"sessionId": sid})
                report.failed.append({"sessionId": sid, "move": decision.move, "code": exc.code, "error": exc.message})
            except Exception as exc:  # one session's surprise must not stop the others
                log.exception("retention of session %s crashed", sid, extra={"sessionId": sid})
                report.failed.append({"sessionId": sid, "move": decision.move, "code": "internal", "error": f"{type(exc).__name__}: {exc}"})

    async def _facts(self, now: datetime) -> list[SessionFacts]:
        hot_cutoff = now - timedelta(days=self.policy.retention_days)
        warm_cutoff = now - timedelta(days=self.policy.archive_retention_days)
        live = exists().where(col(Chunk.session_id) == col(RecordingSession.id), col(Chunk.deleted_at).is_(None))
        # last_activity_at moves with every chunk, so it prefilters exactly; the policy sees the full facts.
        query = select(RecordingSession).where(or_(
            and_(col(RecordingSession.last_activity_at) <= hot_cutoff, or_(col(RecordingSession.tier) == Tier.HOT, live)),
            and_(col(RecordingSession.tier) == Tier.WARM, col(RecordingSession.archived_at) <= warm_cutoff),
        )).order_by(col(RecordingSession.last_activity_at), col(RecordingSession.id))
        async with self.db.read() as s:
            sessions = list((await s.execute(query)).scalars())
            counts: dict[str, tuple[int, int, datetime | None]] = {}
            for batch in _batches([r.id for r in sessions]):
                counts.update(await _chunk_facts(s, batch))
        return [
            SessionFacts(r.id, r.status, r.tier, r.last_activity_at, r.archived_at, *counts.get(r.id, (0, 0, None)))
            for r in sessions
        ]

    async def archive(self, session_id: str, now: datetime) -> dict[str, Any]:
        """hot -> warm: write (or adopt) the verified ZIP, record it, then delete the raw chunks it holds."""
        session, chunks, segments = await self._load(session_id, transcript=True)
        live = [c for c in chunks if c.deleted_at is None]
        if any(c.status not in FINISHED for c in live):
            raise SessionChanged("chunks went back to the transcription queue; next run")
        members = self._members(session, chunks)
        metadata = _metadata(session, chunks, members, segments, now)
        result = await asyncio.to_thread(write_archive, self.archives, session_id, members, metadata, now, self.store.read)
        await self._record_archive(session_id, [c.id for c in live], result, now)
        removed = await asyncio.to_thread(self.store.delete_many, [c.path for c in live])
        log.info("archived session %s: %d chunks in %s (%d bytes)%s", session_id, len(members),
                 self.archives.describe(result.name), result.bytes, " (adopted)" if result.adopted else "", extra={"sessionId": session_id})
        return {"chunks": len(members), "chunkBytes": sum(m.size for m in members), "archiveBytes": result.bytes,
                "archiveSha256": result.sha256, "adopted": result.adopted, "deletedChunkFiles": removed}

    def _members(self, session: RecordingSession, chunks: list[ChunkRow]) -> list[Member]:
        """Live chunks come from hot storage; chunks already archived (late chunks merge in) from the old ZIP."""
        members = []
        for c in chunks:
            if c.deleted_at is None:
                members.append(Member(member_name(c.path), c.size, c.sha256, c.seq, source=c.path))
            elif in_archive(c, session):
                members.append(Member(member_name(c.path), c.size, c.sha256, c.seq, from_archive=True))
        return members

    async def _record_archive(self, session_id: str, live_ids: list[str], result: ArchiveFile, now: datetime) -> None:
        async with self.db.write() as s:
            marked = 0
            for batch in _batches(live_ids):
                outcome = await s.execute(
                    update(Chunk).where(col(Chunk.id).in_(batch), col(Chunk.deleted_at).is_(None), col(Chunk.status).in_(FINISHED))
                    .values(deleted_at=now)
                )
                marked += affected(outcome)
            if marked != len(live_ids):  # raising rolls the whole transaction back
                raise SessionChanged("a chunk changed while the archive was written; next run")
            await s.execute(update(RecordingSession).where(col(RecordingSession.id) == session_id).values(
                tier=Tier.WARM, archive_path=result.name, archive_sha256=result.sha256,
                archive_bytes=result.bytes, archived_at=now,
            ))

    async def make_cold(self, session_id: str, now: datetime) -> None:
        """warm -> cold: delete the ZIP first (a crash here leaves a warm session without a ZIP: next run finishes)."""
        async with self.db.read() as s:
            session = await s.get(RecordingSession, session_id)
        if session is None or session.tier != Tier.WARM:
            raise SessionChanged("session is no longer warm")
        await asyncio.to_thread(self.archives.delete, session.archive_path or archive_name(session_id))
        async with self.db.write() as s:
            await s.execute(
                update(RecordingSession).where(col(RecordingSession.id) == session_id, col(RecordingSession.tier) == Tier.WARM)
                .values(tier=Tier.COLD, cold_at=now, archive_path=None, archive_sha256=None, archive_bytes=None)
            )
        log.info("session %s is cold: archive deleted, transcript kept", session_id, extra={"sessionId": session_id})

    async def _remove_orphans(self) -> tuple[int, int]:
        """Raw chunk files no hot row needs: those of chunks the database already counts as archived (a run
        killed after its commit), and files no row names at all, an hour old or more (a crash between a chunk's
        file and its row, a chunk never resent: see ChunkStore.write_new; a younger one may be a chunk another
        node is committing right now). How many of each went."""
        folders = await asyncio.to_thread(self.store.folders)
        archived: list[str] = []
        unnamed: list[str] = []
        cutoff = _time.time() - UNNAMED_MIN_AGE_S
        for batch in _batches(folders):
            async with self.db.read() as s:
                rows = dict((await s.execute(select(col(Chunk.path), col(Chunk.deleted_at))
                                             .where(col(Chunk.session_id).in_(batch)))).all())
            files = await asyncio.to_thread(lambda: [f for folder in batch for f in self.store.files_in(folder)])
            for relative, modified in files:
                if relative in rows:
                    if rows[relative] is not None:
                        archived.append(relative)
                elif modified < cutoff:
                    unnamed.append(relative)
        if unnamed:
            log.warning("removing %d chunk files no row names (left by a crash before their commit): %s",
                        len(unnamed), ", ".join(unnamed[:10]) + (" ..." if len(unnamed) > 10 else ""))
        # One pass over the listed files (one folder fsync, one LIST on an object store): both kinds at once.
        if archived or unnamed:
            await asyncio.to_thread(self.store.delete_many, archived + unnamed)
        return len(archived), len(unnamed)

    async def _load(self, session_id: str, *, transcript: bool = False) -> tuple[RecordingSession, list[ChunkRow], list[dict[str, Any]]]:
        """The session, its chunks as plain rows in seq order, and (for metadata.json) its transcript in wire shape."""
        async with self.db.read() as s:
            session = await s.get(RecordingSession, session_id)
            if session is None:
                raise NotFound("session not found", sessionId=session_id)
            query = select(*CHUNK_COLUMNS).where(col(Chunk.session_id) == session_id).order_by(col(Chunk.seq))
            chunks = list((await s.execute(query)).all())
            segments = []
            if transcript:  # streamed, so only one batch of ORM objects is alive at a time
                segments_query = (select(TranscriptSegment).where(col(TranscriptSegment.session_id) == session_id)
                                  .order_by(col(TranscriptSegment.seq)).execution_options(yield_per=256))
                async for segment in await s.stream_scalars(segments_query):
                    segments.append(segment.wire())
        return session, chunks, segments

    # -- verify and restore ------------------------------------------------------------------------

    async def verify(self, session_id: str) -> dict[str, Any]:
        """Check what the session keeps: its archive member by member (warm) and its raw files (hot)."""
        session, chunks, _ = await self._load(session_id)
        live = [c for c in chunks if c.deleted_at is None]
        report: dict[str, Any] = {"sessionId": session_id, "tier": session.tier, "problems": [], "notes": []}
        problems = await asyncio.to_thread(_check_chunks, self.store, live)
        report["problems"] += problems
        report["hotChunksChecked"] = len(live) - len(problems)
        if session.tier == Tier.WARM:
            name = session.archive_path or archive_name(session_id)
            members = [m for m in self._members(session, chunks) if m.from_archive]
            check, sha = await asyncio.to_thread(_verify_place, self.archives, name, members, session_id)
            report["problems"] += check.problems
            report["notes"] += check.notes
            report["archive"] = {"name": name, "members": check.members_checked, "compression": check.compression}
            if sha is not None:
                report["archive"]["sha256"] = sha
                if sha != session.archive_sha256:
                    report["notes"].append("archive file differs from the one written (repacked?); every member still verifies")
        elif session.tier == Tier.COLD:
            report["notes"].append("cold: no audio is kept, only the transcript")
        report["ok"] = not report["problems"]
        return report

    async def restore(self, session_id: str, now: datetime) -> dict[str, Any]:
        """warm -> hot: unpack the verified archive into the chunk store, then the database, then drop the ZIP."""
        async with self.lock.hold():
            session, chunks, _ = await self._load(session_id)
            if session.tier == Tier.COLD:
                raise ArchiveFailed("session is cold: its archive was deleted, only the transcript remains", sessionId=session_id)
            if session.tier == Tier.HOT:
                return {"sessionId": session_id, "tier": Tier.HOT, "restoredChunks": 0}
            archived = [c for c in chunks if in_archive(c, session)]
            name = session.archive_path or archive_name(session_id)
            members = [m for m in self._members(session, chunks) if m.from_archive]
            keys = {member_name(c.path): c.path for c in archived}
            await asyncio.to_thread(_unpack, self.archives, name, members, session_id, keys, self.store)
            async with self.db.write() as s:
                for batch in _batches([c.id for c in archived]):
                    await s.execute(update(Chunk).where(col(Chunk.id).in_(batch)).values(deleted_at=None))
                await s.execute(update(RecordingSession).where(col(RecordingSession.id) == session_id).values(
                    tier=Tier.HOT, archive_path=None, archive_sha256=None, archive_bytes=None, archived_at=None,
                    last_activity_at=now,  # a restore is activity: it gets RETENTION_DAYS hot again
                ))
            await asyncio.to_thread(self.archives.delete, name)
        log.info("restored session %s: %d chunks back in hot storage", session_id, len(archived), extra={"sessionId": session_id})
        return {"sessionId": session_id, "tier": Tier.HOT, "restoredChunks": len(archived),
                "restoredBytes": sum(c.size for c in archived)}

    # -- metrics -----------------------------------------------------------------------------------

    async def metrics(self, now: datetime, user_id: str | None = None) -> dict[str, Any]:
        """Per tier sessions/chunks/bytes, archives, oldest hot session, saving; disk space too for the whole server.

        With `user_id`, the same figures over that user's sessions only, and no disk (the server's, not theirs)."""
        live = col(Chunk.deleted_at).is_(None)
        tier = col(RecordingSession.tier)
        owned = col(RecordingSession.user_id) == user_id if user_id is not None else true()
        async with self.db.read() as s:
            sessions: dict[str, int] = {t: int(n) for t, n in (await s.execute(
                select(tier, func.count()).where(owned).group_by(tier))).all()}
            total = select(func.coalesce(func.sum(col(RecordingSession.archive_bytes)), 0)).where(owned)
            archive_bytes = int((await s.execute(total)).scalar_one() or 0)
            rows = (await s.execute(
                select(tier, live, func.count(), func.coalesce(func.sum(col(Chunk.size)), 0))
                .join(RecordingSession, col(RecordingSession.id) == col(Chunk.session_id)).where(owned).group_by(tier, live)
            )).all()
            oldest = (await s.execute(
                select(col(RecordingSession.id), col(RecordingSession.last_activity_at)).where(tier == Tier.HOT, owned)
                .order_by(col(RecordingSession.last_activity_at), col(RecordingSession.id)).limit(1)
            )).first()
            segments = int((await s.execute(
                select(func.count()).select_from(TranscriptSegment)
                .join(RecordingSession, col(RecordingSession.id) == col(TranscriptSegment.session_id)).where(owned)
            )).scalar_one())
        tiers = {t: {"sessions": int(sessions.get(t, 0)), "chunks": 0, "bytes": 0, "chunkBytes": 0} for t in (Tier.HOT, Tier.WARM, Tier.COLD)}
        for session_tier, is_live, count, size in rows:
            # A raw file is hot wherever its session is; an archived chunk is warm only while its session is.
            bucket = tiers[Tier.HOT if is_live else Tier.WARM if session_tier == Tier.WARM else Tier.COLD]
            bucket["chunks"] += int(count)
            bucket["chunkBytes"] += int(size)
        tiers[Tier.HOT]["bytes"] = tiers[Tier.HOT]["chunkBytes"]
        tiers[Tier.WARM]["bytes"] = archive_bytes
        all_hot = sum(t["chunkBytes"] for t in tiers.values())
        kept = tiers[Tier.HOT]["bytes"] + archive_bytes
        result: dict[str, Any] = {
            "scope": "server" if user_id is None else "user",
            "generatedAt": now.isoformat(),
            "tiers": tiers,
            "archiveBytes": archive_bytes,
            "transcriptSegments": segments,
            "oldestHotSession": None if oldest is None else {
                "sessionId": oldest[0], "lastActivityAt": oldest[1].isoformat(),
                "ageDays": round((now - oldest[1]).total_seconds() / 86400, 3)},
            "saving": {"allHotBytes": all_hot, "keptBytes": kept, "savedBytes": all_hot - kept,
                       "savedRatio": round((all_hot - kept) / all_hot, 4) if all_hot else 0.0},
        }
        local = {"storage": None if self.settings.storage_url else Path(self.settings.storage_dir),
                 "archives": self.archives.local_dir()}
        disk = {place: _disk(path) for place, path in local.items() if path is not None and user_id is None}
        if disk:  # the server's disks, for an admin; an object store has none to report
            result["disk"] = disk
            result["freeDiskBytes"] = min(d["freeBytes"] for d in disk.values())
        return result


async def _chunk_facts(s: Any, session_ids: list[str]) -> dict[str, tuple[int, int, datetime | None]]:
    """(live chunks, unfinished live chunks, latest chunk time) per session, in one grouped query."""
    is_live = col(Chunk.deleted_at).is_(None)
    rows = await s.execute(
        select(
            col(Chunk.session_id),
            func.coalesce(func.sum(case((is_live, 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(is_live, col(Chunk.status).in_(ChunkStatus.UNFINISHED)), 1), else_=0)), 0),
            func.max(col(Chunk.created_at)),
        ).where(col(Chunk.session_id).in_(session_ids)).group_by(col(Chunk.session_id))
    )
    return {sid: (int(n), int(u), _aware(latest)) for sid, n, u, latest in rows.all()}


def _aware(value: datetime | None) -> datetime | None:
    # max() over a column comes back without the column type's UTC conversion on SQLite.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _batches(items: list[str], size: int = ID_BATCH) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _metadata(session: RecordingSession, chunks: list[ChunkRow], members: list[Member], segments: list[dict[str, Any]],
              now: datetime) -> bytes:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None
    inside = {m.name for m in members}
    return json.dumps({
        "format": ARCHIVE_FORMAT,
        "archivedAt": now.isoformat(),
        "session": {"id": session.id, "userId": session.user_id, "title": session.title, "source": session.source,
                    "status": session.status, "createdAt": iso(session.created_at), "startedAt": iso(session.started_at),
                    "stoppedAt": iso(session.stopped_at), "lastActivityAt": iso(session.last_activity_at)},
        "chunks": [{"seq": c.seq, "name": member_name(c.path), "size": c.size, "sha256": c.sha256, "mimeType": c.mime_type,
                    "timestampMs": c.timestamp_ms, "durationMs": c.duration_ms, "status": c.status, "createdAt": iso(c.created_at)}
                   for c in chunks if member_name(c.path) in inside],
        "transcript": segments,
    }, indent=1).encode()


def _check_chunks(store: Store, chunks: list[ChunkRow]) -> list[str]:
    """Read every hot chunk back from the store: present, and with the size and sha256 recorded at ingest."""
    problems = []
    for chunk in chunks:
        label = f"chunk {chunk.seq} ({member_name(chunk.path)})"
        try:
            data = store.read(chunk.path)
        except FileNotFoundError:
            problems.append(f"{label} is missing")
            continue
        except OSError as exc:
            problems.append(f"{label} is unreadable: {exc.strerror or exc}")
            continue
        if (hashlib.sha256(data).hexdigest(), len(data)) != (chunk.sha256, chunk.size):
            problems.append(f"{label} does not match its checksum")
    return problems


def _verify_place(place: ArchivePlace, name: str, members: list[Member], session_id: str) -> tuple[ArchiveCheck, str | None]:
    """Verify a session's archive member by member where it lives; its sha256 when it verifies."""
    with place.fetch(name) as path:
        check = verify_archive(path, members, session_id)
        return check, (file_sha256(path) if check.ok else None)


def _unpack(place: ArchivePlace, name: str, members: list[Member], session_id: str, keys: dict[str, str], store: Store) -> None:
    """Verify the archive, then put its members back into the chunk store (each checked again as it is unpacked)."""
    with place.fetch(name) as path:
        check = verify_archive(path, members, session_id)
        if not check.ok:
            raise ArchiveFailed(f"archive does not verify: {'; '.join(check.problems)}", sessionId=session_id)
        extract_members(path, members, keys, store.write_atomic)


def _disk(path: Path) -> dict[str, int]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"freeBytes": usage.free, "totalBytes": usage.total}


# -- the server side: daily schedule and the metrics route --------------------------------------------


class RetentionScheduler:
    """Runs retention daily at RETENTION_SCHEDULE (local time); a run another node holds is skipped."""

    def __init__(self, retention: Retention, at: time, clock: Callable[[], datetime] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.retention = retention
        self.metrics = metrics
        self.at = at
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.runs = 0
        self.skipped = 0
        self.next_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RetentionScheduler(at={self.at.isoformat()}, next={self.next_at}, runs={self.runs}, skipped={self.skipped})"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            self.next_at = next_run(self.clock(), self.at)
            while (remaining := (self.next_at - self.clock()).total_seconds()) > 0:
                await asyncio.sleep(min(remaining, SCHEDULER_MAX_SLEEP_S))  # short naps follow wall-clock jumps
            await self.run_once()

    async def run_once(self) -> RunReport | None:
        try:
            report = await self.retention.run(self.clock())
        except RetentionBusy:
            self.skipped += 1
            self._count("skipped")
            log.info("retention: another run holds the lock; skipped")
            return None
        except Exception:
            self._count("error")
            log.exception("scheduled retention run failed")
            return None
        self.runs += 1
        self._count("ok" if report.ok else "failed", report)
        log.info("retention run: %d archived, %d cold, %d waiting, %d failed", len(report.archived), len(report.cold),
                 len(report.waiting), len(report.failed))
        return report


    def _count(self, result: str, report: RunReport | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.retention_runs_total.labels(result).inc()
        if report is not None:
            for action, items in (("archived", report.archived), ("cold", report.cold), ("failed", report.failed)):
                self.metrics.retention_sessions_total.labels(action).inc(len(items))


async def scheduler(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the daily retention task, unless RETENTION_SCHEDULE is 'off'."""
    from scribeai.services import (
        services_key,  # not at import time: the CLI need not load the server
    )

    services = app[services_key]
    at = parse_schedule(services.settings.retention_schedule)
    if at is None:
        yield
        return
    task = RetentionScheduler(Retention(services.db, services.settings, services.store), at, metrics=services.metrics)
    task.start()
    yield
    await task.stop()


routes = web.RouteTableDef()


@routes.get("/api/storage/metrics")
async def storage_metrics(request: web.Request) -> web.Response:
    """Storage per tier: the whole server's for an admin, the user's own sessions' for anyone else."""
    from scribeai.rest import admin_key, user_key
    from scribeai.services import services_key

    services = request.app[services_key]
    user_id = None if request[admin_key] else request[user_key]
    retention = Retention(services.db, services.settings, services.store)  # the server's store: no new client per request
    return web.json_response(await retention.metrics(datetime.now(timezone.utc), user_id))
