"""The SQLite hot paths write rows as plain SQL text: the stored values must be exactly SQLAlchemy's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scribeai.db import Database, SqliteInsertMany
from scribeai.idempotency import _CHUNK_COLUMNS, _ROW_DEFAULTS
from scribeai.models import Chunk, RecordingSession, utcnow
from scribeai.sessions import SessionService


def raw_rows(path: Path, table: str) -> dict[str, tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return {row[0]: row[1:] for row in db.execute(f"SELECT * FROM {table} ORDER BY id")}


async def test_sessions_and_chunks_as_sql_text_store_what_sqlalchemy_stores(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.create_all()
    try:
        sessions = SessionService(db)
        await sessions.ensure("text", "alice", title="Standup", source="microphone")
        async with db.read() as s:
            created = await s.get(RecordingSession, "text")
        assert created is not None
        async with db.write() as s:  # the same values, through the ORM
            s.add(RecordingSession(id="orm", user_id="alice", title="Standup", source="microphone",
                                   created_at=created.created_at, started_at=created.started_at,
                                   last_activity_at=created.last_activity_at))
        stored = raw_rows(path, "recording_session")
        assert stored["text"] == stored["orm"] and stored["text"][0] == "alice"

        now = utcnow()
        values = {**_ROW_DEFAULTS, "session_id": "text", "size": 3, "sha256": "ab" * 32, "mime_type": "audio/webm",
                  "timestamp_ms": 1.5, "duration_ms": 15000.0, "has_header": True, "created_at": now,
                  "next_attempt_at": now, "status": "pending"}
        assert db.sync_engine is not None
        insert = SqliteInsertMany(Chunk.__table__, _CHUNK_COLUMNS, db.sync_engine.dialect,  # type: ignore[attr-defined]
                                  "ON CONFLICT (session_id, seq) DO NOTHING RETURNING id")
        await db.write_in_thread(lambda conn: conn.execute(
            *insert([{**values, "id": "text-0", "seq": 0, "path": "text/text_0000.webm"}])).fetchall())
        async with db.write() as s:
            s.add(Chunk(**{**values, "id": "orm-0", "seq": 1, "path": "text/text_0001.webm"}))
        chunks = raw_rows(path, "chunk")
        differing = [name for name, a, b in zip(_CHUNK_COLUMNS[1:], chunks["text-0"], chunks["orm-0"]) if a != b]
        assert differing == ["seq", "path"]
    finally:
        await db.dispose()
