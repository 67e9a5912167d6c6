"""REST read latency over a large database: session list (first and deep pages, with and without
?status=) and one session's view, on SQLite and PostgreSQL.

    .venv/bin/python scripts/bench_rest.py                                # both backends, 10,000 x 240
    .venv/bin/python scripts/bench_rest.py --backend sqlite --sessions 1000 --requests 50
    .venv/bin/python scripts/bench_rest.py --postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Seeds, with bulk SQLAlchemy core inserts (rows only, no chunk files), one user `alice` with
--sessions sessions of --chunks chunks each (1% recording, 1% paused, the rest stopped), plus
--other-users users with --other-sessions x --other-chunks each, created in the same time span.
PostgreSQL gets its own schema, dropped at the end (ANALYZEd after seeding, as autovacuum would);
SQLite a file in a temporary directory, removed at the end (not ANALYZEd: deployments rarely do).

Then starts the real server (create_app, in this process, on a free port) and sends --requests
sequential requests per endpoint (after --warmup) with aiohttp. Latency is client-side wall clock.
An SQLAlchemy `before_cursor_execute` listener on the server's engine counts the statements each
request executes (a bench-only middleware tags statements with their request, so the server's own
background polling is not counted): a constant count per endpoint means no N+1. Each statement of
the last request per endpoint is EXPLAINed (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN
ANALYZE) and the plan's scan lines are printed.

Prints a table and one JSON line per backend (also to --json-out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import itertools
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pg_scratch import admin_sql  # scripts/pg_scratch.py, beside this script
from sqlalchemy import event, insert, text

from scribeai.app import create_app
from scribeai.auth import create_token
from scribeai.db import Database
from scribeai.models import Chunk, RecordingSession
from scribeai.rest import _encode_cursor
from scribeai.services import services_key
from scribeai.settings import Settings

SECRET = "bench-rest-secret-0123456789abcdef0123456789"
USER = "alice"
BATCH_ROWS = 24_000
_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_request", default=None)


@dataclass
class Seeded:
    sessions: int = 0
    chunks: int = 0
    seconds: float = 0.0
    alice: list[tuple[str, datetime, str]] = field(default_factory=list)  # (id, created_at, status), newest first


@dataclass
class Result:
    endpoint: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    statements: list[int]
    plans: list[str]


# -- seeding ---------------------------------------------------------------------------------------


def _status(i: int) -> str:
    return "recording" if i % 100 == 0 else "paused" if i % 100 == 1 else "stopped"


def _session_rows(user: str, count: int, start: datetime, span: timedelta) -> list[dict[str, Any]]:
    step = span / max(count, 1)
    rows = []
    for i in range(count):
        created = start + step * i
        status = _status(i)
        rows.append({"id": f"{user}-{i:06d}-{uuid.uuid4().hex[:8]}", "user_id": user, "title": f"Meeting {i}", "source": "bench",
                     "status": status, "tier": "hot", "created_at": created, "started_at": created,
                     "stopped_at": created + timedelta(hours=1) if status == "stopped" else None,
                     "last_activity_at": created + timedelta(hours=1)})
    return rows


def _chunk_batches(sessions: list[dict[str, Any]], chunks: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    prefix = uuid.uuid4().hex[:8]
    ids = itertools.count()
    for session in sessions:
        sid, created = session["id"], session["created_at"]
        for seq in range(chunks):
            batch.append({"id": f"{prefix}{next(ids):024x}", "session_id": sid, "seq": seq, "timestamp_ms": seq * 15000.0,
                          "size": 240_000, "sha256": "0" * 64, "mime_type": "audio/webm;codecs=opus",
                          "path": f"{sid}/{sid}_{seq:04d}.webm", "has_header": seq == 0, "duration_ms": 15000,
                          "created_at": created + timedelta(seconds=15 * seq), "status": "done" if seq % 97 else "failed",
                          "attempts": 1, "error": None if seq % 97 else "cannot decode"})
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


async def seed(db: Database, args: argparse.Namespace) -> Seeded:
    started = time.perf_counter()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    span = timedelta(days=365)
    plan = [(USER, args.sessions, args.chunks)] + [(f"user{u}", args.other_sessions, args.other_chunks) for u in range(args.other_users)]
    await db.create_all()
    seeded = Seeded()
    for user, count, chunks in plan:
        sessions = _session_rows(user, count, now - span, span)
        async with db.engine.begin() as conn:
            for i in range(0, len(sessions), 5000):
                await conn.execute(insert(RecordingSession.__table__), sessions[i:i + 5000])  # type: ignore[attr-defined]
            for batch in _chunk_batches(sessions, chunks):
                await conn.execute(insert(Chunk.__table__), batch)  # type: ignore[attr-defined]
                seeded.chunks += len(batch)
        seeded.sessions += len(sessions)
        if user == USER:
            seeded.alice = [(s["id"], s["created_at"], s["status"]) for s in reversed(sessions)]
        print(f"  seeded {user}: {count} sessions x {chunks} chunks ({time.perf_counter() - started:.0f} s)", flush=True)
    if not db.is_sqlite:  # autovacuum would have; SQLite deployments rarely run ANALYZE, so neither do we
        async with db.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    seeded.seconds = time.perf_counter() - started
    return seeded


# -- measuring -------------------------------------------------------------------------------------


@web.middleware
async def _tag_request(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    token = _request.set(request.path_qs)
    try:
        return await handler(request)
    finally:
        _request.reset(token)


class StatementLog:
    """SQL statements (with parameters) executed on behalf of a tagged request."""

    def __init__(self, db: Database) -> None:
        self.entries: list[tuple[str, Any]] = []
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if _request.get() is not None:
            self.entries.append((statement, parameters))

    def take(self) -> list[tuple[str, Any]]:
        entries, self.entries = self.entries, []
        return entries


def _cursor_after(row: tuple[str, datetime, str]) -> str:
    return _encode_cursor(RecordingSession(id=row[0], user_id=USER, created_at=row[1]))


def _at_90_percent(rows: list[tuple[str, datetime, str]]) -> tuple[str, datetime, str]:
    """The row 90% down the list, leaving at least one row after it (the deep page must not be empty)."""
    return rows[max(0, min(int(len(rows) * 0.9), len(rows) - 2))]


def _endpoints(seeded: Seeded, requests: int) -> list[tuple[str, list[str]]]:
    rows = seeded.alice
    recording = [r for r in rows if r[2] == "recording"]
    stopped = [r for r in rows if r[2] == "stopped"]
    deep, deep_recording, deep_stopped = (_at_90_percent(rows), _at_90_percent(recording), _at_90_percent(stopped))
    ids = [r[0] for r in random.Random(6).sample(rows, min(requests, len(rows)))]
    return [
        ("GET /api/sessions (first page)", ["/api/sessions?limit=50"]),
        ("GET /api/sessions (deep cursor, 90%)", [f"/api/sessions?limit=50&cursor={_cursor_after(deep)}"]),
        ("GET /api/sessions?status=stopped (first page)", ["/api/sessions?limit=50&status=stopped"]),
        ("GET /api/sessions?status=stopped (deep cursor)", [f"/api/sessions?limit=50&status=stopped&cursor={_cursor_after(deep_stopped)}"]),
        ("GET /api/sessions?status=recording (1%, first page)", ["/api/sessions?limit=50&status=recording"]),
        ("GET /api/sessions?status=recording (1%, deep cursor)",
         [f"/api/sessions?limit=50&status=recording&cursor={_cursor_after(deep_recording)}"]),
        ("GET /api/sessions/{id} (random ids)", [f"/api/sessions/{sid}" for sid in ids]),
    ]


async def _explain(db: Database, statement: str, parameters: Any) -> list[str]:
    async with db.engine.connect() as conn:
        if db.is_sqlite:
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
            return [str(r[-1]) for r in rows]
        rows = (await conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement, parameters)).all()
        return [str(r[0]).strip().lstrip("-> ").strip() for r in rows if any(k in r[0] for k in ("Scan", "Sort", "Aggregate", "Execution Time"))]


async def measure(url: str, db: Database, log: StatementLog, name: str, paths: list[str], args: argparse.Namespace) -> Result:
    headers = {"Authorization": f"Bearer {create_token(SECRET, USER)}"}
    latencies: list[float] = []
    statements: list[int] = []
    last: list[tuple[str, Any]] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(args.warmup + args.requests):
            path = paths[i % len(paths)]
            log.take()
            begin = time.perf_counter()
            async with http.get(url + path) as response:
                body = await response.read()
            elapsed = (time.perf_counter() - begin) * 1000
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
            if "/api/sessions?" in path and len(json.loads(body)["sessions"]) == 0:
                raise RuntimeError(f"{path}: empty page")
            last = log.take()
            if i >= args.warmup:
                latencies.append(elapsed)
                statements.append(len(last))
    plans = []
    for statement, parameters in last:
        table = match.group(1) if (match := re.search(r"\bFROM\s+(\w+)", statement)) else "?"
        plans.append(f"[{table}] " + " | ".join(await _explain(db, statement, parameters)))
    latencies.sort()
    return Result(name, _pct(latencies, 50), _pct(latencies, 99), statistics.fmean(latencies), statements, plans)


def _pct(values: list[float], p: int) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# -- one backend -----------------------------------------------------------------------------------


async def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-rest-"))
    schema = f"bench_rest_{uuid.uuid4().hex[:8]}" if backend == "postgres" else None
    url = args.postgres_url if backend == "postgres" else f"sqlite+aiosqlite:///{workdir / 'scribeai.db'}"
    print(f"{backend}: seeding {url}{' schema ' + schema if schema else ''}", flush=True)
    try:
        seeding_db = Database(url, schema=schema)
        try:
            seeded = await seed(seeding_db, args)
        finally:
            await seeding_db.dispose()
        settings = Settings(host="127.0.0.1", port=0, data_dir=workdir / "data", storage_dir=workdir / "chunks",
                            archive_storage_path=workdir / "archives", secret=SECRET, transcriber="none",
                            retention_schedule="off", database_url=url)
        app = create_app(settings, db_schema=schema)
        app.middlewares.append(_tag_request)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        db = app[services_key].db
        log = StatementLog(db)
        results = []
        try:
            for name, paths in _endpoints(seeded, args.requests):
                results.append(await measure(f"http://127.0.0.1:{port}", db, log, name, paths, args))
                print(f"  {name}: p50 {results[-1].p50_ms:.2f} ms, p99 {results[-1].p99_ms:.2f} ms", flush=True)
        finally:
            await runner.cleanup()
        return {"backend": backend, "sessions": seeded.sessions, "chunks": seeded.chunks, "seedSeconds": round(seeded.seconds, 1),
                "results": results}
    finally:
        if schema:
            await _drop_schema(args.postgres_url, schema)
        shutil.rmtree(workdir, ignore_errors=True)


async def _drop_schema(url: str, schema: str) -> None:
    await admin_sql(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['backend']}: {report['sessions']} sessions, {report['chunks']} chunks (seeded in {report['seedSeconds']} s)")
    print("| endpoint | p50 ms | p99 ms | mean ms | statements/request |")
    print("| --- | --- | --- | --- | --- |")
    for r in report["results"]:
        counts = sorted(set(r.statements))
        print(f"| {r.endpoint} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.mean_ms:.2f} | {'/'.join(map(str, counts))} |")
    print("\nplans (last request of each endpoint, one line per statement):")
    for r in report["results"]:
        print(f"  {r.endpoint}")
        for plan in r.plans:
            print(f"    {plan}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=240)
    parser.add_argument("--other-users", type=int, default=3)
    parser.add_argument("--other-sessions", type=int, default=1_000)
    parser.add_argument("--other-chunks", type=int, default=24)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    reports = []
    for backend in backends:
        report = asyncio.run(run_backend(backend, args))
        print_table(report)
        line = {**report, "results": [vars(r) | {"statements": sorted(set(r.statements))} for r in report["results"]]}
        print(json.dumps(line))
        reports.append(line)
    if args.json_out:
        args.json_out.write_text(json.dumps(reports, indent=1))
    bad = [r for rep in reports for r in rep["results"] if len(r["statements"]) != 1]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
