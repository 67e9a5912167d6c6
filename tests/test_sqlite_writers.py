"""SQLite has one writer: the event loop's writes and the transactions threads run (chunk ingest's group
commit) take turns in-process instead of meeting SQLITE_BUSY."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from scribeai.db import Database

HOLD_S = 0.4


@contextlib.asynccontextmanager
async def a_thread_holding_a_write(tmp_path: Path) -> AsyncIterator[tuple[Database, asyncio.Task[None], list[str]]]:
    """A database, and a thread whose write transaction on it is open (for HOLD_S) when the block starts."""
    # No busy timeout: two writers that meet fail at once with "database is locked" instead of waiting.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", busy_timeout_ms=0)
    await db.create_all()
    try:
        started, order = threading.Event(), list[str]()
        holder = asyncio.create_task(asyncio.to_thread(hold_a_write, db, started, order))
        await asyncio.to_thread(started.wait)
        yield db, holder, order
    finally:
        await db.dispose()


def hold_a_write(db: Database, started: threading.Event, order: list[str]) -> None:
    """In a thread: a write transaction that stays open for HOLD_S."""

    def write(conn: Any) -> None:
        conn.execute("INSERT INTO recording_session (id, user_id, title, source, created_at, started_at, "
                             "last_activity_at, status, tier) VALUES ('held', 'u', '', '', '2026-01-01', '2026-01-01', "
                             "'2026-01-01', 'recording', 'hot')")
        started.set()
        threading.Event().wait(HOLD_S)
        order.append("thread committed")

    db.transaction_here(write)


async def test_a_loop_write_waits_for_a_thread_transaction_instead_of_failing_busy(tmp_path: Path) -> None:
    async with a_thread_holding_a_write(tmp_path) as (db, holder, order):
        async with db.write() as s:
            await s.execute(text("UPDATE recording_session SET title = 'after' WHERE id = 'held'"))
        order.append("loop committed")
        await holder
        assert order == ["thread committed", "loop committed"]
        async with db.read() as s:
            assert (await s.execute(text("SELECT title FROM recording_session WHERE id = 'held'"))).scalar() == "after"


async def test_a_loop_writer_cancelled_while_it_waits_does_not_keep_the_lock(tmp_path: Path) -> None:
    async with a_thread_holding_a_write(tmp_path) as (db, holder, _):

        async def write() -> None:
            async with db.write() as s:
                await s.execute(text("UPDATE recording_session SET title = 'cancelled' WHERE id = 'held'"))

        waiting = asyncio.create_task(write())
        await asyncio.sleep(HOLD_S / 4)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await holder
        # The lock the cancelled writer was waiting for is given back once it gets it: later writers go on.
        async with asyncio.timeout(5):
            async with db.write() as s:
                await s.execute(text("UPDATE recording_session SET title = 'later' WHERE id = 'held'"))
            await asyncio.to_thread(db.transaction_here, lambda conn: conn.execute(
                "UPDATE recording_session SET source = 'thread' WHERE id = 'held'"))
        async with db.read() as s:
            row = (await s.execute(text("SELECT title, source FROM recording_session WHERE id = 'held'"))).one()
        assert tuple(row) == ("later", "thread")
