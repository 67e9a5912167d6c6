"""SQLModel tables: recording sessions, their chunks (which double as transcription jobs), segments."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite, which stores no offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store UTC-aware datetimes")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def _when(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class SessionStatus:
    RECORDING = "recording"
    PAUSED = "paused"
    STOPPED = "stopped"


class Tier:
    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


class ChunkStatus:
    PENDING = "pending"          # stored, not yet read into its session's audio stream
    TRANSCRIBING = "transcribing"  # read into the stream; some of its audio waits for its window's text
    DONE = "done"
    FAILED = "failed"            # retries exhausted; `error` says why
    STORED = "stored"            # TRANSCRIBER=none: kept, never transcribed

    UNFINISHED = (PENDING, TRANSCRIBING)


class RecordingSession(SQLModel, table=True):
    __tablename__ = "recording_session"
    __table_args__ = (
        Index("ix_session_user_created", "user_id", "created_at", "id"),
        # GET /api/sessions?status=: a rare status would otherwise walk the user's whole history to fill a page.
        Index("ix_session_user_status_created", "user_id", "status", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(max_length=256)
    title: str | None = Field(default=None, max_length=512)
    source: str | None = Field(default=None, max_length=64)
    status: str = Field(default=SessionStatus.RECORDING, max_length=16, index=True)
    tier: str = Field(default=Tier.HOT, max_length=8, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    started_at: datetime | None = _when()
    stopped_at: datetime | None = _when()
    paused_at: datetime | None = _when()
    completed_at: datetime | None = _when()
    last_activity_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))
    archive_path: str | None = Field(default=None, max_length=1024)
    archive_sha256: str | None = Field(default=None, max_length=64)
    archive_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    archived_at: datetime | None = _when()
    cold_at: datetime | None = _when()


class Chunk(SQLModel, table=True):
    __tablename__ = "chunk"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_chunk_session_seq"),
        Index("ix_chunk_queue", "status", "next_attempt_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    session_id: str = Field(foreign_key="recording_session.id", max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    timestamp_ms: float = 0.0
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    mime_type: str = Field(max_length=128)
    path: str = Field(max_length=1024)  # relative to STORAGE_DIR
    has_header: bool = True
    duration_ms: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    status: str = Field(default=ChunkStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = _when()
    claimed_by: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _when()
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    transcribed_at: datetime | None = _when()
    deleted_at: datetime | None = _when()  # raw file removed by retention (inside a verified archive)


class TranscriptStream(SQLModel, table=True):
    """A session's transcription as one stream: who holds it (lease), how far it is done, its gaps."""

    __tablename__ = "transcript_stream"
    __table_args__ = (Index("ix_stream_due", "due_at"),)

    session_id: str = Field(foreign_key="recording_session.id", primary_key=True, max_length=128)
    claimed_by: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _when()
    due_at: datetime | None = _when()  # look again then even without a new chunk (a window waiting, a retry)
    done_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))  # timeline transcribed so far
    attempts: int = 0
    gaps: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON list of gap records
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class CheckpointKind:
    RESUME = "resume"  # after the last chunk a committed window covers: where a rebuilt stream reads on from
    GAP = "gap"  # just before a gap's first chunk: where its chunks are read from if they come late


class StreamCheckpoint(SQLModel, table=True):
    """A stream's reading state (demuxer, codec setup, timeline place) after chunk `seq`, so that resuming
    reads only the chunks after it, however long the session."""

    __tablename__ = "stream_checkpoint"

    session_id: str = Field(foreign_key="recording_session.id", primary_key=True, max_length=128)
    kind: str = Field(primary_key=True, max_length=8)
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    state: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class CaptionViewer(SQLModel, table=True):
    """Someone watches the session's live captions (on some serve node) until `until`, renewed while they do:
    whichever node transcribes the session makes captions only for sessions with a viewer."""

    __tablename__ = "caption_viewer"

    session_id: str = Field(primary_key=True, max_length=128)
    until: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class TranscriberNode(SQLModel, table=True):
    """A process that transcribes, alive until `alive_until` (its heartbeat moves it on every few seconds): once
    that has passed, the streams it claimed may be taken by another node before their leases run out."""

    __tablename__ = "transcriber_node"

    node_id: str = Field(primary_key=True, max_length=128)
    alive_until: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class TranscriptSegment(SQLModel, table=True):
    # "segment" replaced "transcript_segment" (one row per chunk) when segments became windows of the stream.
    __tablename__ = "segment"
    __table_args__ = (
        UniqueConstraint("session_id", "start_ms", name="uq_segment_session_start"),
        Index("ix_segment_session_seq", "session_id", "seq"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    session_id: str = Field(foreign_key="recording_session.id", max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))  # the last chunk the audio touches (= to_seq)
    from_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    chunk_id: str = Field(max_length=32)
    start_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    text: str = Field(sa_column=Column(Text, nullable=False))
    speaker: str | None = Field(default=None, max_length=64)
    confidence: float | None = None
    is_final: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sessionId": self.session_id,
            "seq": self.seq,
            "fromSeq": self.from_seq,
            "toSeq": self.seq,
            "startMs": self.start_ms,
            "endMs": self.end_ms,
            "text": self.text,
            "speaker": self.speaker,
            "confidence": self.confidence,
            "isFinal": self.is_final,
        }


class SummaryStatus:
    PENDING = "pending"  # being made (or waiting for the session's transcript to be complete)
    READY = "ready"
    FAILED = "failed"


class SessionSummary(SQLModel, table=True):
    """A session's summary (extractive, or a model's): made once it is fully transcribed, or on request.
    Lists are JSON text; `claimed_until` lets one process make it while another sees it pending."""

    __tablename__ = "session_summary"

    session_id: str = Field(foreign_key="recording_session.id", primary_key=True, max_length=128)
    status: str = Field(default=SummaryStatus.PENDING, max_length=16)
    method: str | None = Field(default=None, max_length=16)
    model: str | None = Field(default=None, max_length=256)
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    key_points: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    action_items: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    keywords: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    words: int = 0
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    generated_at: datetime | None = _when()
    claimed_until: datetime | None = _when()


class SummaryPassage(SQLModel, table=True):
    """One searchable piece of a session's summary: its text, a key point or an action item (with where in the
    recording it was said). Written with the summary and replaced with it; the search index reads these rows."""

    __tablename__ = "summary_passage"

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="recording_session.id", max_length=128, index=True)
    kind: str = Field(max_length=16)  # summary, keyPoint, actionItem (search results say which)
    text: str = Field(sa_column=Column(Text, nullable=False))
    start_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    end_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
