"""The database engine: SQLite (WAL, one writer at a time) or PostgreSQL, behind one small object."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from scribeai import models  # noqa: F401  (registers the tables)
from scribeai import search
from scribeai.errors import StartupCheckFailed

T = TypeVar("T")
SCHEMA_LOCK_KEY = 0x5C81BEA1  # pg_advisory_xact_lock key for create_all (retention uses its own, per schema)


class SqliteInsertMany:
    """A multi-row INSERT as SQLite text, each value bound with SQLAlchemy's own processor for its column:
    the statement and stored values SQLAlchemy would produce, without building and compiling a statement
    for every group of rows (which costs more than the INSERT itself for a handful of rows)."""

    def __init__(self, table: Any, columns: tuple[str, ...], dialect: Any, suffix: str = "") -> None:
        self.columns = columns
        self.processors = [table.c[name].type._cached_bind_processor(dialect) for name in columns]
        quoted = ", ".join(f'"{name}"' for name in columns)
        self.head = f"INSERT INTO {table.name} ({quoted}) VALUES "
        self.placeholders = "(" + ", ".join("?" * len(columns)) + ")"
        self.suffix = f" {suffix}" if suffix else ""

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[str, tuple[Any, ...]]:
        params: list[Any] = []
        for row in rows:
            for name, process in zip(self.columns, self.processors):
                value = row[name]
                params.append(process(value) if process is not None and value is not None else value)
        return self.head + ", ".join([self.placeholders] * len(rows)) + self.suffix, tuple(params)


class Database:
    """Async engine plus a session factory; on SQLite, writes are serialized in-process."""

    def __init__(self, url: str, *, schema: str | None = None, busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.schema = schema
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
            if schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        pragmas = _sqlite_pragmas(busy_timeout_ms)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; queueing writers here beats SQLITE_BUSY retries (sleeps of 1 ms and more).
        # The asyncio lock orders the event loop's writers; the thread lock is held by every transaction that
        # writes in-process, whichever thread runs it (the loop's aiosqlite, the writer thread, chunk ingest).
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._thread_lock = threading.Lock() if self.is_sqlite else None
        # A hot write path on SQLite: a plain (sync) connection on one thread of its own runs a whole
        # transaction per call, where aiosqlite costs a loop<->thread round trip per statement.
        self.sync_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._held: Any = None  # transaction_here's own pooled connection, checked out once, under _thread_lock
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self.sync_engine = create_engine(parsed.set(drivername="sqlite+pysqlite"),
                                             connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})
            event.listen(self.sync_engine, "connect", pragmas)

    def __repr__(self) -> str:
        return f"Database({self.shown_url!r})"

    @property
    def sqlite_path(self) -> Path | None:
        database = make_url(self.url).database
        return Path(database) if self.is_sqlite and database and database != ":memory:" else None

    def probe_directory(self) -> None:
        """SQLite: prove the database's directory takes a write (its journal and WAL live there); raises OSError."""
        path = self.sqlite_path
        if path is None:
            return
        probe = path.parent / f".{path.name}.probe.{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()

    async def create_all(self) -> None:
        """Create missing tables and indexes (every command's first use of the database); a database that cannot be
        opened (refused, no such database or role, a bad password, an unusable file) raises StartupCheckFailed, one line."""
        async with self._opened() as conn, conn.begin():
            if not self.is_sqlite:
                # Nodes and workers of one deployment often start together on a fresh database: concurrent CREATE
                # TABLEs collide in PostgreSQL's catalog (duplicate pg_type rows). One at a time; the later ones
                # then find the tables there. Released when this transaction ends.
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
            if self.schema and not self.is_sqlite:
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.run_sync(SQLModel.metadata.create_all)
            await conn.run_sync(_create_missing_indexes)
            await conn.run_sync(_migrate_chunk_segments)
            await conn.run_sync(search.create_index)  # the full-text index over segments, back-filled once

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[AsyncConnection]:
        conn = self.engine.connect()
        try:
            await conn.start()
        except (DBAPIError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()  # not SQLAlchemy's "Background on..." line
            setting = "DATABASE_URL or DATA_DIR" if self.is_sqlite else "DATABASE_URL"
            raise StartupCheckFailed(f"cannot open the database {self.shown_url} ({setting}): "
                                     f"{detail[0] if detail else type(exc).__name__}", reason="database_unavailable") from exc
        try:
            yield conn
        finally:
            await conn.close()

    @property
    def shown_url(self) -> str:
        """The URL without its password."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on exit (rolls back on error)."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._holding_thread_lock():
            async with self.sessions() as session:
                async with session.begin():
                    yield session

    @contextlib.asynccontextmanager
    async def _holding_thread_lock(self) -> AsyncIterator[None]:
        lock = self._thread_lock
        if lock is None:
            yield
            return
        if not lock.acquire(blocking=False):  # a thread's transaction is running: wait for it off the loop
            acquiring = asyncio.get_running_loop().run_in_executor(None, lock.acquire)
            try:
                await asyncio.shield(acquiring)
            except asyncio.CancelledError:
                acquiring.add_done_callback(lambda _: lock.release())  # got it after all: give it back
                raise
        try:
            yield
        finally:
            lock.release()

    async def write_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one transaction off the event loop: one thread hop for the whole write.

        Only where `sync_engine` exists (SQLite files); it shares the in-process writer queue with `write()`.
        """
        if self.sync_engine is None:
            raise RuntimeError("write_in_thread needs a SQLite file database")
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self.transaction_here, fn)

    def transaction_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one write transaction in the calling thread (not the event loop's), after
        every other in-process SQLite writer: a SQLite file database only.

        `fn` gets the sqlite3 connection itself (statements as SQL text, `?` parameters): a SQLAlchemy Connection
        around it cost ~0.3 ms of execution contexts and results per transaction, most of a lone chunk's commit.
        The transaction begins with the first write (sqlite3's implicit BEGIN) and commits when `fn` returns.
        The connection is checked out of the pool once and kept (the thread lock is its owner): a checkout and a
        check-in per transaction cost the pool's bookkeeping and a ROLLBACK on return.
        """
        if self.sync_engine is None or self._thread_lock is None:
            raise RuntimeError("transaction_here needs a SQLite file database")
        with self._thread_lock:
            if self._held is None:
                self._held = self.sync_engine.raw_connection()
            conn = self._held.dbapi_connection
            assert isinstance(conn, sqlite3.Connection)
            try:
                result = fn(conn)
                conn.commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
                raise
            return result

    def read_here(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` on a plain connection in the calling thread (SQLite file database), no lock."""
        if self.sync_engine is None:
            raise RuntimeError("read_here needs a SQLite file database")
        with self.sync_engine.connect() as conn:
            return fn(conn)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._dispose_sync)
            self._writer.shutdown(wait=True)
            self._writer = None
        elif self._held is not None:
            await asyncio.to_thread(self._dispose_sync)

    def _dispose_sync(self) -> None:
        if self._thread_lock is not None:
            with self._thread_lock:  # after a transaction running in another thread
                held, self._held = self._held, None
            if held is not None:
                held.close()
        if self.sync_engine is not None:
            self.sync_engine.dispose()


def affected(result: Any) -> int:
    """Rows an UPDATE/INSERT touched (the async Result type does not declare `rowcount`)."""
    return int(getattr(result, "rowcount", 0) or 0)


def _create_missing_indexes(conn: Any) -> None:
    # create_all skips a table that exists, with its indexes: an index added later reaches old databases here.
    for table in SQLModel.metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


_SEGMENT_COLUMNS = "id, session_id, seq, {from_seq}, chunk_id, start_ms, end_ms, text, speaker, confidence, is_final, created_at"


def _migrate_chunk_segments(conn: Connection) -> None:
    """Databases from before stream transcription kept one segment per chunk in `transcript_segment`."""
    if not inspect(conn).has_table("transcript_segment"):
        return
    ignore = ("INSERT OR IGNORE INTO", "") if conn.dialect.name == "sqlite" else ("INSERT INTO", " ON CONFLICT DO NOTHING")
    conn.exec_driver_sql(
        f"{ignore[0]} segment ({_SEGMENT_COLUMNS.format(from_seq='from_seq')}) "
        f"SELECT {_SEGMENT_COLUMNS.format(from_seq='seq')} FROM transcript_segment{ignore[1]}"
    )
    conn.exec_driver_sql("DROP TABLE transcript_segment")


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the ack leaves, even across a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A lock held by another process (a backup, an operator's sqlite3 shell) is waited for this long.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()
    return on_connect
