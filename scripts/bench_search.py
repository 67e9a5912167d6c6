"""Search latency and its cost at ingest, on SQLite (FTS5) and PostgreSQL (tsvector + GIN).

    .venv/bin/python scripts/bench_search.py                          # both backends, 10,000 x 240 (the REST benchmark's set)
    .venv/bin/python scripts/bench_search.py --backend sqlite --sessions 500 --queries 10
    .venv/bin/python scripts/bench_search.py --keep --no-ingest     # then again, queries only, without seeding:
    .venv/bin/python scripts/bench_search.py --reuse-sqlite /tmp/bench-search-… --reuse-schema bench_search_…

Data: the REST benchmark's sessions (scripts/bench_rest.py: one user `alice` with --sessions sessions, plus
--other-users users with --other-sessions each), every session with --segments transcript segments (others:
--other-segments) of ~25 words drawn from a Zipf-distributed vocabulary (common English meeting words first,
then made-up words: the tail), and a model's summary (unless --no-summaries): its text, six key points and four
action items in words of its own (the same vocabulary), each placed at one of the session's segments. Rows are bulk-loaded without the index, then the index is built the way an
existing database gets it at start (Database.create_all: FTS5 'rebuild' / ALTER TABLE ... GENERATED + GIN);
that build time is printed too.

Queries (alice's token, GET /api/search through the real server, in this process, one at a time, client-side
wall clock): --queries each of common words (ranks 8-80 of the vocabulary: in ~3-25 % of segments), rare words
(ranks 5,000-15,000: tens to hundreds of segments) and two-word phrases taken from the generated text.

Ingest: --ingest segments committed through StreamQueue.commit (the transcription path: one transaction per
segment) into a new session with the index, then without it, and the same as bulk inserts of 500 rows per
transaction. SQLite: --rounds alternating blocks, the server's SearchIndexer running or paused (its backlog
indexed, untimed, before the next block with it), medians; PostgreSQL: one block each (the generated column and
its GIN index dropped for the second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from bench_rest import _session_rows  # scripts/bench_rest.py, beside this script: the same sessions
from pg_scratch import admin_sql
from sqlalchemy import insert, text

from scribeai import search
from scribeai.app import create_app
from scribeai.auth import create_token
from scribeai.db import Database
from scribeai.models import RecordingSession, TranscriptSegment
from scribeai.services import services_key
from scribeai.settings import Settings

SECRET = "bench-search-secret-0123456789abcdef0123456789"
USER = "alice"
WORDS_PER_SEGMENT = 25
HEAD = ("the and to we of a that is it for on this in you be have with so will i our need they at can "
        "project team meeting launch budget customer update plan review date design release feedback timeline "
        "product sales marketing quarter goal data report issue decision action item follow week friday monday "
        "deadline client contract hiring roadmap estimate risk scope metric revenue cost server api mobile web "
        "testing bug fix deploy support ticket partner demo pilot survey research legal finance office travel "
        "training budgeting forecast vendor pricing discount invoice payment launch approval sprint backlog").split()


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = list(dict.fromkeys(HEAD))
    made = set(words)
    while len(words) < size:
        word = "".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
        if word not in made:
            made.add(word)
            words.append(word)
    return words


class TextMaker:
    def __init__(self, words: list[str], rng: random.Random) -> None:
        self.words = words
        self.rng = rng
        weights = [1 / (rank + 1) for rank in range(len(words))]
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)

    def texts(self, count: int) -> list[str]:
        drawn = self.rng.choices(self.words, cum_weights=self.cum, k=count * WORDS_PER_SEGMENT)
        return [" ".join(drawn[i:i + WORDS_PER_SEGMENT]).capitalize() + "." for i in range(0, len(drawn), WORDS_PER_SEGMENT)]


def segment_rows(session: dict[str, Any], count: int, maker: TextMaker, prefix: str, counter: list[int]) -> list[tuple[Any, ...]]:
    texts = maker.texts(count)
    rows = []
    for seq, text in enumerate(texts):
        counter[0] += 1
        created = session["created_at"] + timedelta(seconds=15 * seq + 20)
        rows.append((f"{prefix}{counter[0]:024x}", session["id"], seq, seq, f"c{seq}", seq * 15000, seq * 15000 + 14000, text,
                     None, 0.9, True, created))
    return rows


SEGMENT_COLUMNS = ("id", "session_id", "seq", "from_seq", "chunk_id", "start_ms", "end_ms", "text", "speaker", "confidence",
                   "is_final", "created_at")
PASSAGE_COLUMNS = ("session_id", "kind", "text", "start_ms", "end_ms")


def passage_rows(session: dict[str, Any], segments: list[tuple[Any, ...]], maker: TextMaker) -> list[tuple[Any, ...]]:
    """A model's summary (only a model's words are indexed as passages): its text (five sentences of its own),
    six key points and four action items, each placed at one of the session's segments."""
    picked = maker.rng.sample(segments, min(10, len(segments)))
    points = maker.texts(len(picked))
    return [(session["id"], "summary", " ".join(maker.texts(5)), None, None)] + [
        (session["id"], "keyPoint" if i < 6 else "actionItem", point, row[5], row[6]) for i, (row, point) in enumerate(zip(picked, points))]


async def seed(db: Database, args: argparse.Namespace, maker: TextMaker, sqlite_path: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    await db.create_all()
    async with db.engine.begin() as conn:
        await conn.run_sync(search.drop_index)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    span = timedelta(days=365)
    plan = [(USER, args.sessions, args.segments)] + [(f"user{u}", args.other_sessions, args.other_segments)
                                                     for u in range(args.other_users)]
    prefix, counter, total, summary_total = uuid.uuid4().hex[:8], [0], 0, 0
    stored: list[str] = []
    raw = sqlite3.connect(sqlite_path) if sqlite_path else None
    pg = None
    if not db.is_sqlite:
        import asyncpg
        pg = await asyncpg.connect(args.postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for user, count, per_session in plan:
            sessions = _session_rows(user, count, now - span, span)
            async with db.engine.begin() as conn:
                for i in range(0, len(sessions), 5000):
                    await conn.execute(insert(RecordingSession.__table__), sessions[i:i + 5000])  # type: ignore[attr-defined]
            batch: list[tuple[Any, ...]] = []
            passages: list[tuple[Any, ...]] = []
            for n, session in enumerate(sessions):
                rows = segment_rows(session, per_session, maker, prefix, counter)
                batch.extend(rows)
                if args.summaries:
                    passages.extend(passage_rows(session, rows, maker))
                if user == USER and n % 25 == 0:
                    stored.append(batch[-1][7])  # texts that are in alice's segments: phrases come from these
                if len(batch) >= 48_000 or session is sessions[-1]:
                    total += len(batch)
                    if raw is not None:
                        raw.executemany(f"INSERT INTO segment ({', '.join(SEGMENT_COLUMNS)}) VALUES ({', '.join('?' * 12)})",
                                        [r[:11] + (r[11].strftime("%Y-%m-%d %H:%M:%S.%f"),) for r in batch])
                        raw.commit()
                    else:
                        assert pg is not None
                        await pg.copy_records_to_table("segment", records=batch, columns=SEGMENT_COLUMNS, schema_name=args.schema)
                    batch = []
            if raw is not None:
                raw.executemany(f"INSERT INTO summary_passage ({', '.join(PASSAGE_COLUMNS)}) VALUES (?, ?, ?, ?, ?)", passages)
                raw.commit()
            elif passages:
                assert pg is not None
                await pg.copy_records_to_table("summary_passage", records=passages, columns=PASSAGE_COLUMNS, schema_name=args.schema)
            summary_total += len(passages)
            print(f"  seeded {user}: {count} sessions x {per_session} segments, {len(passages)} summary passages "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        if raw is not None:
            raw.close()
        if pg is not None:
            await pg.close()
    loaded = time.perf_counter() - started
    began = time.perf_counter()
    await db.create_all()  # builds the index over what is there, as at the start of an existing database
    built = time.perf_counter() - began
    print(f"  index built in {built:.0f} s", flush=True)
    if not db.is_sqlite:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    return {"segments": total, "summaryPassages": summary_total, "loadSeconds": round(loaded, 1),
            "indexBuildSeconds": round(built, 1), "texts": stored}


def query_sets(words: list[str], texts: list[str], count: int, rng: random.Random) -> dict[str, list[str]]:
    stop = set("the and to we of a that is it for on this in you be have with so will i our need they at can".split())
    common = [w for w in words[8:80] if w not in stop]
    rare = words[5000:15000]
    phrases: list[str] = []
    while len(phrases) < count:
        tokens = rng.choice(texts).rstrip(".").lower().split()
        i = rng.randrange(len(tokens) - 1)
        if tokens[i] not in stop and tokens[i + 1] not in stop and words.index(tokens[i]) < 400 and words.index(tokens[i + 1]) < 400:
            phrases.append(f'"{tokens[i]} {tokens[i + 1]}"')
    return {"common word": rng.sample(common, min(count, len(common))), "rare word": rng.sample(rare, count),
            "phrase": phrases}


async def measure(url: str, queries: list[str], warmup: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {create_token(SECRET, USER)}"}
    latencies, hits, kinds = [], [], {"segment": 0, "summary": 0}
    async with aiohttp.ClientSession(headers=headers) as http:
        for i, q in enumerate(queries[:warmup] + queries):
            begin = time.perf_counter()
            async with http.get(f"{url}/api/search", params={"q": q, "limit": "20"}) as response:
                body = await response.json()
            elapsed = (time.perf_counter() - begin) * 1000
            if response.status != 200:
                raise RuntimeError(f"{q}: {response.status} {body}")
            if i >= warmup:
                latencies.append(elapsed)
                hits.append(len(body["results"]))
                for r in body["results"]:
                    kinds["segment" if r["kind"] == "segment" else "summary"] += 1
    latencies.sort()
    return {"queries": len(latencies), "p50Ms": round(_pct(latencies, 50), 1), "p95Ms": round(_pct(latencies, 95), 1),
            "maxMs": round(latencies[-1], 1), "emptyResults": sum(1 for h in hits if h == 0), "resultsByKind": kinds}


async def measure_statements(db: Database, queries: dict[str, list[str]], warmup: int) -> dict[str, Any]:
    """Each list's own SQL statement (segments; summary passages) timed alone, per query kind: what searching
    summaries adds to a search."""
    results: dict[str, Any] = {}
    for kind, texts in queries.items():
        for source in (search.SEGMENTS, search.PASSAGES):
            latencies = []
            for i, q in enumerate(texts[:warmup] + texts):
                query = search.parse_query(q)
                params: dict[str, Any] = {"user": USER, "window": search.RANK_WINDOW, "limit": 21, "offset": 0}
                if db.is_sqlite:
                    sql, params["q"] = search._sqlite_sql(source, None, None), search.fts5_query(query)
                else:
                    tsquery, terms = search.pg_tsquery(query)
                    phrase = any(len(t.words) > 1 for g in query for t in g)
                    sql = search._pg_sql(source, tsquery, None, None, phrase=phrase)
                    params.update(terms, stand_ins="\ue000\ue001\ue002", options="MaxWords=24, MinWords=8")
                begin = time.perf_counter()
                async with db.read() as s:
                    if not db.is_sqlite:
                        await s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
                    (await s.execute(text(sql), params)).all()
                if i >= warmup:
                    latencies.append((time.perf_counter() - begin) * 1000)
            latencies.sort()
            results[f"{kind}, {source.table}"] = {"p50Ms": round(_pct(latencies, 50), 1), "p95Ms": round(_pct(latencies, 95), 1)}
    return results


def _pct(values: list[float], p: int) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def ingest(db: Database, maker: TextMaker, count: int, label: str) -> dict[str, float]:
    """Segments per second through StreamQueue.commit (one transaction each) and as bulk inserts of 500; on
    SQLite with the index on, the time until the indexer has them too (search.refresh at the end) counts."""
    from scribeai.transcription.queue import StreamQueue

    queue = StreamQueue(db, "bench")
    sid = f"ingest-{label}-{uuid.uuid4().hex[:6]}"
    async with db.write() as s:
        s.add(RecordingSession(id=sid, user_id="ingest"))
    texts = maker.texts(count * 2)
    begin, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        row = TranscriptSegment(session_id=sid, seq=i, from_seq=i, chunk_id=f"c{i}", start_ms=i * 15000, end_ms=i * 15000 + 14000,
                                text=texts[i])
        await queue.commit(sid, [row], row.end_ms, i, i, [])
    if label != "off":
        await search.refresh(db)
    committed = count / (time.perf_counter() - begin)
    committed_cpu = (time.process_time() - cpu) / count * 1000
    begin, cpu = time.perf_counter(), time.process_time()
    for start in range(count, 2 * count, 500):
        async with db.write() as s:
            await s.execute(insert(TranscriptSegment.__table__), [  # type: ignore[attr-defined]
                {"id": uuid.uuid4().hex, "session_id": sid, "seq": i, "from_seq": i, "chunk_id": f"c{i}", "start_ms": i * 15000,
                 "end_ms": i * 15000 + 14000, "text": texts[i], "is_final": True, "created_at": datetime.now(timezone.utc)}
                for i in range(start, min(start + 500, 2 * count))])
    if label != "off":
        await search.refresh(db)
    bulk = count / (time.perf_counter() - begin)
    bulk_cpu = (time.process_time() - cpu) / count * 1000
    # This process's CPU per segment (SQLite runs in it: steadier than wall clock on a shared machine).
    return {"commitPerSecond": round(committed, 1), "bulkPerSecond": round(bulk, 1),
            "commitCpuMsPerSegment": round(committed_cpu, 3), "bulkCpuMsPerSegment": round(bulk_cpu, 3)}


async def set_index(app: web.Application, *, on: bool) -> None:
    """SQLite: the indexer paused (its backlog caught up, untimed, before it runs again); PostgreSQL: dropped."""
    db = app[services_key].db
    if not db.is_sqlite:
        async with db.engine.begin() as conn:
            await conn.run_sync(search.drop_index)
        return
    if on:
        await search.refresh(db)
    app[search.indexer_key].paused = not on


async def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    reuse = args.reuse_sqlite if backend == "sqlite" else args.reuse_schema
    workdir = Path(reuse) if backend == "sqlite" and reuse else Path(tempfile.mkdtemp(prefix="bench-search-"))
    args.schema = (reuse or f"bench_search_{uuid.uuid4().hex[:8]}") if backend == "postgres" else None
    url = args.postgres_url if backend == "postgres" else f"sqlite+aiosqlite:///{workdir / 'scribeai.db'}"
    rng = random.Random(26)
    words = vocabulary(args.vocabulary, rng)
    maker = TextMaker(words, rng)
    keep = args.keep or bool(reuse)
    try:
        if reuse:
            print(f"{backend}: reusing {url}{' schema ' + args.schema if args.schema else ''}", flush=True)
            seeded: dict[str, Any] = {"reused": reuse, "texts": await _stored_texts(url, args.schema)}
        else:
            print(f"{backend}: seeding {url}{' schema ' + args.schema if args.schema else ''}", flush=True)
            seeding_db = Database(url, schema=args.schema)
            try:
                seeded = await seed(seeding_db, args, maker, workdir / "scribeai.db" if backend == "sqlite" else None)
            finally:
                await seeding_db.dispose()
        settings = Settings(host="127.0.0.1", port=0, data_dir=workdir / "data", storage_dir=workdir / "chunks",
                            archive_storage_path=workdir / "archives", secret=SECRET, transcriber="none",
                            retention_schedule="off", database_url=url)
        app = create_app(settings, db_schema=args.schema)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        results: dict[str, Any] = {"loadAverage": [round(x, 2) for x in os.getloadavg()]}
        try:
            sets = query_sets(words, seeded.pop("texts"), args.queries, rng)
            for kind, queries in sets.items():
                results[kind] = await measure(f"http://127.0.0.1:{port}", queries, args.warmup)
                print(f"  {kind}: {results[kind]}", flush=True)
            if args.statements:
                results["statements"] = await measure_statements(app[services_key].db, sets, args.warmup)
                for name, figures in results["statements"].items():
                    print(f"  statement alone, {name}: {figures}", flush=True)
            results["loadAverage"] += [round(x, 2) for x in os.getloadavg()]
            if not args.no_ingest:
                results["ingest"] = await measure_ingest(app, maker, args)
                print(f"  ingest: {results['ingest']}", flush=True)
        finally:
            await runner.cleanup()
        return {"backend": backend, **seeded, "results": results}
    finally:
        if keep:
            print(f"  kept: --reuse-{'sqlite ' + str(workdir) if backend == 'sqlite' else 'schema ' + str(args.schema)}", flush=True)
        elif args.schema:
            await admin_sql(args.postgres_url, f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
        if not (keep and backend == "sqlite"):  # PostgreSQL keeps its schema; this directory holds only the server's files
            shutil.rmtree(workdir, ignore_errors=True)


async def _stored_texts(url: str, schema: str | None) -> list[str]:
    db = Database(url, schema=schema)
    try:
        async with db.read() as s:
            rows = await s.execute(text("SELECT s.text FROM segment AS s JOIN recording_session AS r ON r.id = s.session_id "
                                        "WHERE r.user_id = :user AND s.seq = 0 ORDER BY r.created_at LIMIT 400"), {"user": USER})
            return [str(t) for t in rows.scalars()]
    finally:
        await db.dispose()


async def measure_ingest(app: web.Application, maker: TextMaker, args: argparse.Namespace) -> dict[str, Any]:
    db = app[services_key].db
    if not db.is_sqlite:  # the index build's WAL: its checkpoint would fall on the first block
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("CHECKPOINT")
    await ingest(db, maker, 200, "warmup")
    # SQLite: blocks with and without the indexer alternate, so the machine's drift falls on both;
    # PostgreSQL: one block each (the column cannot come back cheaply).
    on_runs, off_runs = [], []
    for _ in range(args.rounds if db.is_sqlite else 1):
        on_runs.append(await ingest(db, maker, args.ingest, "on"))
        await set_index(app, on=False)
        off_runs.append(await ingest(db, maker, args.ingest, "off"))
        if db.is_sqlite:
            await set_index(app, on=True)
    with_index = {k: statistics.median(r[k] for r in on_runs) for k in on_runs[0]}
    without = {k: statistics.median(r[k] for r in off_runs) for k in off_runs[0]}
    cost = {k: round(100 * (1 - with_index[k] / without[k]) if "PerSecond" in k else 100 * (with_index[k] / without[k] - 1), 1)
            for k in with_index}
    return {"indexOn": with_index, "indexOff": without, "costPercent": cost, "rounds": {"on": on_runs, "off": off_runs}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--segments", type=int, default=240)
    parser.add_argument("--statements", action="store_true",
                        help="also time each list's SQL statement alone (segments; summary passages), per query kind")
    parser.add_argument("--no-summaries", dest="summaries", action="store_false",
                        help="seed no summaries (by default each session has a model's: 11 searchable passages)")
    parser.add_argument("--other-users", type=int, default=3)
    parser.add_argument("--other-sessions", type=int, default=1_000)
    parser.add_argument("--other-segments", type=int, default=24)
    parser.add_argument("--vocabulary", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=40, help="queries of each kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ingest", type=int, default=1000, help="segments per ingest measurement")
    parser.add_argument("--rounds", type=int, default=3, help="SQLite: alternating ingest blocks with and without the index")
    parser.add_argument("--no-ingest", action="store_true", help="queries only (PostgreSQL's ingest drops the index)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database for --reuse-sqlite / --reuse-schema")
    parser.add_argument("--reuse-sqlite", help="a kept SQLite directory: measure again without seeding")
    parser.add_argument("--reuse-schema", help="a kept PostgreSQL schema: measure again without seeding")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    reports = []
    for backend in (["sqlite", "postgres"] if args.backend == "both" else [args.backend]):
        report = asyncio.run(run_backend(backend, args))
        print(json.dumps(report), flush=True)
        reports.append(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
