"""Full-text search over one user's transcripts and summaries: SQLite FTS5, or PostgreSQL tsvector + GIN.

Two indexes live in the database. One follows the `segment` table, so the transcription code never touches it:
on SQLite an external-content FTS5 table that SearchIndexer fills in batches a second behind (and every search
brings up to date first), on PostgreSQL a stored generated `tsvector` column with a GIN index. The other covers
`summary_passage`: what a model wrote of a session (its summary, key points and action items, one row each,
written with the summary), a few rows per session indexed as they are written (SQLite triggers, PostgreSQL a
generated column). An extractive summary writes none: its sentences are the transcript's, found as segments,
and a segment that is one of its key points or action items says so in the result (`summaryParts`).
Retention never deletes segments or summaries, so both outlive the audio (the cold tier keeps them).

A query is parsed here into a small tree (words, "phrases", prefix*, OR) and written out in each
engine's own syntax from words that are letters and digits only: nothing the user typed reaches the
database as query syntax, and every search is filtered to the caller's sessions in SQL. Bare stop words
("the", "did", "we") are left out of a query that has other words, on both engines alike: PostgreSQL's
English configuration drops them anyway, and on SQLite they would make "when did we decide the launch date"
find only a segment holding all seven words.

A page merges the two ranked lists (segments, summary passages) by score; its cursor holds how far each list
has been read, so the next page goes on from there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import json
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import bindparam, insert, inspect, select, text
from sqlmodel import col

from scribeai.errors import InvalidInput
from scribeai.models import SessionSummary, SummaryPassage, SummaryStatus, UTCDateTime

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from scribeai.db import Database

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 500
MAX_TERMS = 16
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# A common word can match millions of segments: only the newest RANK_WINDOW matches are ranked (a full ranking
# would cost seconds, docs/performance.md); rarer queries have fewer matches than this and are ranked whole.
# Newest: by the FTS5 rowid (the order segments were stored) on SQLite, by the session's creation on PostgreSQL.
RANK_WINDOW = 1000
SNIPPET_TOKENS = 16
_MARK_ON, _MARK_OFF = "\x02", "\x03"  # sentinels around matches, turned into <mark> after escaping the text
# PostgreSQL's headline drops what its parser takes for XML tags and entities: those characters go in as
# private-use stand-ins and come back out in highlight().
_PG_STAND_INS = "\ue000\ue001\ue002"
_WORD = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r'"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+)')
PG_CONFIG = "english"
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
# PostgreSQL's English stop words (its tsearch_data/english.stop; tests/test_search.py compares them): a bare one is
# left out of a query with other words, on both engines, and a query of nothing else is refused.
STOP_WORDS = frozenset("""
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
    it its itself they them their theirs themselves what which who whom this that these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until while of at by for with
    about against between into through during before after above below to from up down in out on off over under
    again further then once here there when where why how all any both each few more most other some such no nor not
    only own same so than too very s t can will just don should now""".split())


@dataclass(frozen=True)
class Term:
    """One word, or a phrase of several in order; `prefix`: the last word may continue (word*)."""

    words: tuple[str, ...]
    prefix: bool = False


# A query: every group must match; a group matches when any of its terms does (`a b OR c d` = a AND (b OR c) AND d).
Query = tuple[tuple[Term, ...], ...]


def parse_query(raw: str | None, name: str = "q") -> Query:
    """The user's text as a query; InvalidInput (400) for an empty, too long or wordless one."""
    if raw is None or not raw.strip():
        raise InvalidInput(f"{name} is required: the words to search for")
    if len(raw) > MAX_QUERY_CHARS:
        raise InvalidInput(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    groups: list[list[Term]] = []
    join_next = False
    for match in _TOKEN.finditer(raw):
        phrase, word = match.group("phrase"), match.group("word")
        if word in ("OR", "|"):
            join_next = bool(groups)
            continue
        if phrase is not None:
            term = _term(phrase, prefix=False)
        else:
            term = _term(word, prefix=word.endswith("*"))
        if term is None:
            continue
        if join_next:
            groups[-1].append(term)
        else:
            groups.append([term])
        join_next = False
    terms = sum(len(t.words) for group in groups for t in group)
    if not terms:
        raise InvalidInput(f"{name} has no words to search for (letters or digits)")
    if terms > MAX_TERMS:
        raise InvalidInput(f"{name} has more than {MAX_TERMS} words")
    telling = [kept for kept in ([t for t in group if not _only_stop_words(t)] for group in groups) if kept]
    if not telling:
        raise InvalidInput(f"{name} has only words too common to search for (such as the, and, we): add a word "
                           "that says more, or put common words inside a \"phrase\" with one that does")
    return tuple(tuple(group) for group in telling)


def _only_stop_words(term: Term) -> bool:
    return not term.prefix and all(word in STOP_WORDS for word in term.words)


def _term(source: str, *, prefix: bool) -> Term | None:
    words = tuple(w.lower() for w in _WORD.findall(source))
    return Term(words, prefix) if words else None


def fts5_query(query: Query) -> str:
    """SQLite FTS5 MATCH text: every word a quoted string (so NEAR, AND, column names are only words)."""
    def term(t: Term) -> str:
        return '"' + " ".join(t.words) + '"' + ("*" if t.prefix else "")
    return " AND ".join("(" + " OR ".join(term(t) for t in group) + ")" for group in query)


def pg_tsquery(query: Query) -> tuple[str, dict[str, str]]:
    """A PostgreSQL tsquery expression and its parameters: every term a to_tsquery of quoted lexemes (phrases with
    <->, prefixes with :*), joined with && and ||. A prefix that is a stop word (can*) goes through the `simple`
    configuration, which keeps it: the English one would drop it and find nothing where SQLite finds cancel."""
    params: dict[str, str] = {}

    def term(t: Term) -> str:
        lexemes = [f"'{w}'" for w in t.words]
        if t.prefix:
            lexemes[-1] += ":*"
        name = f"t{len(params)}"
        params[name] = " <-> ".join(lexemes)
        config = "simple" if t.prefix and _only_stop_words(Term(t.words)) else PG_CONFIG
        return f"to_tsquery('{config}', :{name})"
    return "(" + " && ".join("(" + " || ".join(term(t) for t in group) + ")" for group in query) + ")", params


def parse_day(raw: str | None, name: str, *, end: bool) -> datetime | None:
    """An ISO 8601 date or date-time (UTC when it names no offset); a bare date as `to` includes that day."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            moment = datetime.combine(day + timedelta(days=1) if end else day, time(), timezone.utc)
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"{name} must be an ISO 8601 date (2026-12-07) or date-time (2026-12-07T09:30:00Z)") from exc


Cursor = tuple[int, int]  # how many ranked segments, and summary passages, the pages before this one showed


def encode_cursor(segments: int, passages: int = 0) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": segments, "p": passages}).encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> Cursor:
    if not value:
        return 0, 0
    try:
        fields = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        read = (fields["o"], fields.get("p", 0))
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid") from exc
    if any(type(n) is not int or not 0 <= n < RANK_WINDOW for n in read):
        raise InvalidInput("cursor is not valid")
    return read


@dataclass(frozen=True)
class SearchPage:
    results: list[dict[str, Any]]
    next: str | None

    def wire(self) -> dict[str, Any]:
        return {"results": self.results, "next": self.next}


@dataclass(frozen=True)
class _Source:
    """What one ranked list is read from: a table of text rows and its index (segments, or summary passages)."""

    table: str
    fts: str  # SQLite's FTS5 table over it
    kind: str  # SQL for the result's kind
    newest: str  # SQL ordering newest first within a session (after the session's creation)


SEGMENTS = _Source("segment", "segment_fts", "'segment'", "x.start_ms DESC")
PASSAGES = _Source("summary_passage", "summary_fts", "x.kind", "x.id DESC")
SUMMARY_KINDS = ("summary", "keyPoint", "actionItem")
MODEL_WRITTEN = "llm"  # scribeai.summarize.LLM (not imported: it brings numpy into every command)


async def search(db: Database, user_id: str, query: Query, *, limit: int = DEFAULT_LIMIT, cursor: Cursor = (0, 0),
                 since: datetime | None = None, until: datetime | None = None) -> SearchPage:
    """One page of the user's segments and summary passages that match, most relevant first (ties: newest first)."""
    await refresh(db)  # SQLite: the segments stored since the indexer's last round
    params: dict[str, Any] = {"user": user_id, "window": RANK_WINDOW, "limit": limit + 1,
                              "since": since, "until": until, "on": _MARK_ON, "off": _MARK_OFF}
    if db.is_sqlite:
        params["q"] = fts5_query(query)
    else:
        tsquery, terms = pg_tsquery(query)
        params.update(terms, stand_ins=_PG_STAND_INS, options=(
            f'StartSel="{_MARK_ON}", StopSel="{_MARK_OFF}", MaxWords={SNIPPET_TOKENS + 8}, '
            f'MinWords={SNIPPET_TOKENS // 2}, ShortWord=2, MaxFragments=1, FragmentDelimiter=" … "'))
    lists: list[list[dict[str, Any]]] = []
    async with db.read() as s:
        if not db.is_sqlite:
            # asyncpg prepares statements: after five runs PostgreSQL may plan for any tsquery at all, and that
            # generic plan read every match of a common word (seconds). Each search is planned for its own words.
            await s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        for source, offset in zip((SEGMENTS, PASSAGES), cursor):
            sql = (_sqlite_sql(source, since, until) if db.is_sqlite
                   else _pg_sql(source, tsquery, since, until, phrase=any(len(t.words) > 1 for g in query for t in g)))
            used = {k: v for k, v in {**params, "offset": offset}.items() if re.search(f":{k}\\b", sql)}
            statement = text(sql).bindparams(*(bindparam(k, type_=UTCDateTime()) for k in ("since", "until") if k in used))
            lists.append([dict(row) for row in (await s.execute(statement, used)).mappings().all()])
        # The two lists merged by score (each keeps its own order; a tie goes to the segment): `limit` of them.
        page: list[dict[str, Any]] = []
        taken = [0, 0]
        while len(page) < limit:
            heads = [i for i in (0, 1) if taken[i] < min(len(lists[i]), limit)]
            if not heads:
                break
            best = max(heads, key=lambda i: (float(lists[i][taken[i]]["score"]), -i))
            page.append(lists[best][taken[best]])
            taken[best] += 1
        if db.is_sqlite:  # snippets of the rows shown only (PostgreSQL's query made its own)
            for source in (SEGMENTS, PASSAGES):
                shown = [row for row in page if (row["kind"] == "segment") == (source is SEGMENTS)]
                if not shown:
                    continue
                snippets = {int(rid): str(snippet) for rid, snippet in (await s.execute(
                    text(f"SELECT rowid, snippet({source.fts}, 0, :on, :off, '…', :tokens) FROM {source.fts} "
                         f"WHERE {source.fts} MATCH :q AND rowid IN :rids").bindparams(bindparam("rids", expanding=True)),
                    {"on": _MARK_ON, "off": _MARK_OFF, "tokens": SNIPPET_TOKENS, "q": params["q"],
                     "rids": [row["rid"] for row in shown]})).all()}
                for row in shown:
                    row["snippet"] = snippets.get(row["rid"], "")
        parts = await _summary_parts(s, {row["session_id"] for row in page if row["kind"] == "segment"})
    read = (cursor[0] + taken[0], cursor[1] + taken[1])
    more = any(len(rows) > n and start < RANK_WINDOW for rows, n, start in zip(lists, taken, read))
    return SearchPage([_result(row, parts) for row in page], encode_cursor(*read) if more else None)


async def _summary_parts(s: Any, session_ids: set[str]) -> dict[str, list[tuple[str, int]]]:
    """The key points and action items of these sessions' summaries that have a time: (kind, startMs) each."""
    if not session_ids:
        return {}
    rows = (await s.execute(select(col(SessionSummary.session_id), col(SessionSummary.key_points),
                                   col(SessionSummary.action_items)).where(
        col(SessionSummary.session_id).in_(session_ids), col(SessionSummary.status) == SummaryStatus.READY))).all()
    return {sid: [(kind, int(item["startMs"])) for kind, items in (("keyPoint", points), ("actionItem", actions))
                  for item in json.loads(items) if isinstance(item.get("startMs"), int)]
            for sid, points, actions in rows}


def _result(row: dict[str, Any], parts: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    segment = row["kind"] == "segment"
    start = None if row["start_ms"] is None else int(row["start_ms"])
    end = None if row["end_ms"] is None else int(row["end_ms"])
    held = sorted({kind for kind, at in parts.get(row["session_id"], ()) if segment and start is not None and end is not None
                   and start <= at < end}, key=SUMMARY_KINDS.index)
    return {
        "kind": row["kind"], "sessionId": row["session_id"], "title": row["title"],
        "segmentId": row["id"] if segment else None, "startMs": start, "endMs": end,
        "summaryParts": held, "snippet": highlight(str(row["snippet"])), "rank": round(float(row["score"]), 6),
    }


def _dates(since: datetime | None, until: datetime | None) -> str:
    return ("" if since is None else " AND r.created_at >= :since") + ("" if until is None else " AND r.created_at < :until")


def _sqlite_sql(source: _Source, since: datetime | None, until: datetime | None) -> str:
    # CROSS JOIN keeps the FTS table outermost, read newest first, so LIMIT :window stops the walk early.
    return f"""
        SELECT id, session_id, title, kind, start_ms, end_ms, score, rid FROM (
            SELECT x.id, x.session_id, r.title, {source.kind} AS kind, x.start_ms, x.end_ms,
                   -bm25({source.fts}) AS score, f.rowid AS rid
            FROM {source.fts} AS f CROSS JOIN {source.table} AS x ON x.rowid = f.rowid
            CROSS JOIN recording_session AS r ON r.id = x.session_id
            WHERE {source.fts} MATCH :q AND r.user_id = :user{_dates(since, until)}
            ORDER BY f.rowid DESC LIMIT :window)
        ORDER BY score DESC, rid DESC LIMIT :limit OFFSET :offset"""


def _pg_sql(source: _Source, tsquery: str, since: datetime | None, until: datetime | None, *, phrase: bool) -> str:
    # The tsquery is written inline (constants the planner can weigh): for a common word it walks the user's
    # sessions newest first and stops at :window matches; for a rare one it reads the GIN index. A phrase of
    # two common words can be rare while the planner weighs it as their AND: walking sessions for it read every
    # segment (4 s at 10,000 x 240). Phrases take their matches from the GIN index first.
    walk = "" if phrase else f" ORDER BY r.created_at DESC, r.id DESC, {source.newest} LIMIT :window"
    newest = source.newest.replace("x.", "")
    return f"""
        WITH matches AS {"MATERIALIZED " if phrase else ""}(
            SELECT x.id, x.session_id, r.title, {source.kind} AS kind, x.start_ms, x.end_ms, r.created_at, x.search
            FROM recording_session AS r JOIN {source.table} AS x ON x.session_id = r.id
            WHERE r.user_id = :user AND x.search @@ {tsquery}{_dates(since, until)}{walk}),
        hits AS (SELECT * FROM matches ORDER BY created_at DESC, session_id DESC, {newest} LIMIT :window),
        page AS (
            SELECT id, session_id, title, kind, start_ms, end_ms, created_at, ts_rank(search, {tsquery}) AS score
            FROM hits ORDER BY score DESC, created_at DESC, {newest}, id DESC LIMIT :limit OFFSET :offset)
        SELECT page.id, page.session_id, page.title, page.kind, page.start_ms, page.end_ms, page.score,
               ts_headline('{PG_CONFIG}', translate(x.text, '<>&', :stand_ins), {tsquery}, :options) AS snippet
        FROM page JOIN {source.table} AS x ON x.id = page.id
        ORDER BY page.score DESC, page.created_at DESC, page.{newest.replace(", ", ", page.")}, page.id DESC"""


def highlight(snippet: str) -> str:
    """The snippet as HTML-safe text: everything escaped, matches in <mark>…</mark>."""
    for stand_in, original in zip(_PG_STAND_INS, "<>&"):
        snippet = snippet.replace(stand_in, original)
    return html.escape(snippet, quote=False).replace(_MARK_ON, "<mark>").replace(_MARK_OFF, "</mark>")


# -- the index ------------------------------------------------------------------------------------------

# SQLite: segments are added to the FTS5 index after their commit, in batches, by SearchIndexer (each second)
# and by every search before it reads: a trigger on INSERT cost ~1.5 ms of FTS5 segment writing and merging
# in each transcription commit (docs/performance.md). Rowids grow with every insert (segments are never
# deleted), so "indexed up to rowid N" is the whole state. A row deleted or changed after it was indexed
# leaves the index by these triggers.
_SQLITE_TRIGGERS = {
    "segment_fts_delete": "AFTER DELETE ON segment WHEN old.rowid <= (SELECT indexed_upto FROM search_progress) BEGIN "
                          "INSERT INTO segment_fts(segment_fts, rowid, text) VALUES ('delete', old.rowid, old.text); END",
    "segment_fts_update": "AFTER UPDATE OF text ON segment WHEN old.rowid <= (SELECT indexed_upto FROM search_progress) BEGIN "
                          "INSERT INTO segment_fts(segment_fts, rowid, text) VALUES ('delete', old.rowid, old.text); "
                          "INSERT INTO segment_fts(rowid, text) VALUES (new.rowid, new.text); END",
}
_SQLITE_SUMMARY_TRIGGERS = {
    "summary_fts_insert": "AFTER INSERT ON summary_passage BEGIN "
                          "INSERT INTO summary_fts(rowid, text) VALUES (new.id, new.text); END",
    "summary_fts_delete": "AFTER DELETE ON summary_passage BEGIN "
                          "INSERT INTO summary_fts(summary_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
}
CATCH_UP_BATCH = 500  # rows per write transaction: bounds how long the index holds SQLite's one writer
INDEX_INTERVAL_S = 1.0


def create_index(conn: Connection) -> None:
    """Create the search indexes when they are missing, filled from the segments and summaries already stored (once)."""
    if conn.dialect.name == "sqlite":
        exists = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'segment_fts'").first()
        progress = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'search_progress'").first()
        if exists is not None and progress is None:  # indexed by an INSERT trigger until now: complete, trigger goes
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS segment_fts_insert")
            conn.exec_driver_sql("CREATE TABLE search_progress (id INTEGER PRIMARY KEY CHECK (id = 1), indexed_upto INTEGER NOT NULL)")
            conn.exec_driver_sql("INSERT INTO search_progress VALUES (1, (SELECT coalesce(max(rowid), 0) FROM segment))")
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS search_progress "
                             "(id INTEGER PRIMARY KEY CHECK (id = 1), indexed_upto INTEGER NOT NULL)")
        if exists is None:
            conn.exec_driver_sql("CREATE VIRTUAL TABLE segment_fts USING fts5(text, content='segment', "
                                 f"content_rowid='rowid', tokenize='{FTS_TOKENIZER}')")
            conn.exec_driver_sql("INSERT INTO segment_fts(segment_fts) VALUES ('rebuild')")  # back-fill
            conn.exec_driver_sql("INSERT OR REPLACE INTO search_progress VALUES (1, (SELECT coalesce(max(rowid), 0) FROM segment))")
        conn.exec_driver_sql("INSERT OR IGNORE INTO search_progress VALUES (1, 0)")
        for name, body in _SQLITE_TRIGGERS.items():
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
        while _catch_up(conn, CATCH_UP_BATCH * 20):
            pass
        # Summary passages: a few rows per session, written a few times in its life, so indexed by triggers.
        if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'summary_fts'").first() is None:
            conn.exec_driver_sql("CREATE VIRTUAL TABLE summary_fts USING fts5(text, content='summary_passage', "
                                 f"content_rowid='id', tokenize='{FTS_TOKENIZER}')")
            conn.exec_driver_sql("INSERT INTO summary_fts(summary_fts) VALUES ('rebuild')")
        for name, body in _SQLITE_SUMMARY_TRIGGERS.items():
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
    else:
        for table in ("segment", "summary_passage"):
            if "search" not in {c["name"] for c in inspect(conn).get_columns(table)}:
                # Computed for the rows already there by this ALTER (a one-time rewrite of the table), then for every insert.
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN search tsvector "
                                     f"GENERATED ALWAYS AS (to_tsvector('{PG_CONFIG}'::regconfig, text)) STORED")
            conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_{table}_search ON {table} USING GIN (search)")
    _fill_passages(conn)


def summary_passages(session_id: str, text: str, key_points: list[dict[str, Any]],
                     action_items: list[dict[str, Any]]) -> list[SummaryPassage]:
    """The rows that make a model's summary searchable: its text, each key point, each action item (with their
    times). Only for a summary written in words of its own: an extractive one's are the transcript's segments."""
    rows = [SummaryPassage(session_id=session_id, kind="summary", text=text)] if text.strip() else []
    for kind, items in (("keyPoint", key_points), ("actionItem", action_items)):
        rows += [SummaryPassage(session_id=session_id, kind=kind, text=item["text"], start_ms=item.get("startMs"),
                                end_ms=item.get("endMs")) for item in items if str(item.get("text", "")).strip()]
    return rows


def _fill_passages(conn: Connection) -> None:
    """Models' summaries made before they were searchable get their passages (once: while there are none at all)."""
    if conn.exec_driver_sql("SELECT 1 FROM summary_passage LIMIT 1").first() is not None:
        return
    rows = conn.execute(select(col(SessionSummary.session_id), col(SessionSummary.text), col(SessionSummary.key_points),
                               col(SessionSummary.action_items)).where(
        col(SessionSummary.status) == SummaryStatus.READY, col(SessionSummary.method) == MODEL_WRITTEN)).all()
    passages = [p for sid, body, points, actions in rows for p in summary_passages(sid, body, json.loads(points), json.loads(actions))]
    if passages:
        conn.execute(insert(SummaryPassage), [p.model_dump(exclude={"id"}) for p in passages])
        log.info("search: %d summary passages of %d summaries indexed", len(passages), len(rows))


def _catch_up(conn: Connection, limit: int) -> int:
    """SQLite: index the next `limit` segments stored since the last time; how many there were."""
    upto = int(conn.exec_driver_sql("SELECT indexed_upto FROM search_progress").scalar_one())
    last = conn.exec_driver_sql("SELECT max(rowid), count(*) FROM (SELECT rowid FROM segment WHERE rowid > ? "
                                "ORDER BY rowid LIMIT ?)", (upto, limit)).one()
    if not last[1]:
        return 0
    conn.exec_driver_sql("INSERT INTO segment_fts(rowid, text) SELECT rowid, text FROM segment WHERE rowid > ? AND rowid <= ?",
                         (upto, last[0]))
    conn.exec_driver_sql("UPDATE search_progress SET indexed_upto = ?", (last[0],))
    return int(last[1])


async def refresh(db: Database) -> int:
    """SQLite: bring the index up to every committed segment (PostgreSQL's is always current); how many it added."""
    if not db.is_sqlite:
        return 0
    async with db.read() as s:  # without the writer's lock when nothing is new (the indexer asks each second)
        upto, last = (await s.execute(text("SELECT (SELECT indexed_upto FROM search_progress), "
                                           "(SELECT coalesce(max(rowid), 0) FROM segment)"))).one()
    if upto is not None and int(upto) >= int(last):
        return 0
    total = 0
    while True:
        async with db.write() as s:
            conn = await s.connection()
            added = await conn.run_sync(_catch_up, CATCH_UP_BATCH)
        total += added
        if added < CATCH_UP_BATCH:
            return total


class SearchIndexer:
    """SQLite: keeps the index a second behind the segments (a search catches up the rest itself)."""

    def __init__(self, db: Database, interval_s: float = INDEX_INTERVAL_S) -> None:
        self.db = db
        self.interval_s = interval_s
        self.indexed = 0
        self.paused = False  # benchmarks compare ingest with and without it
        self.failing = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SearchIndexer(indexed={self.indexed}, running={self._task is not None and not self._task.done()})"

    def start(self) -> None:
        if self.db.is_sqlite and self._task is None:
            self._task = asyncio.create_task(self._run(), name="search-indexer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.paused:
                continue
            try:
                self.indexed += await refresh(self.db)
                self.failing = False
            except Exception as exc:  # the next round tries again; searches catch up by themselves
                if not self.failing:
                    log.warning("search index: catching up failed (%s); trying again each second", exc)
                self.failing = True


indexer_key = web.AppKey("search_indexer", SearchIndexer)


async def indexer(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the app's SearchIndexer runs while the server does (SQLite only)."""
    app[indexer_key].start()
    yield
    await app[indexer_key].stop()


def drop_index(conn: Connection) -> None:
    """Remove the search index (tests start from a database without one; `create_index` brings it back, filled)."""
    if conn.dialect.name == "sqlite":
        for name in (*_SQLITE_TRIGGERS, *_SQLITE_SUMMARY_TRIGGERS, "segment_fts_insert"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        conn.exec_driver_sql("DROP TABLE IF EXISTS segment_fts")
        conn.exec_driver_sql("DROP TABLE IF EXISTS summary_fts")
        conn.exec_driver_sql("DROP TABLE IF EXISTS search_progress")
    else:
        conn.exec_driver_sql("ALTER TABLE segment DROP COLUMN IF EXISTS search")
        conn.exec_driver_sql("ALTER TABLE summary_passage DROP COLUMN IF EXISTS search")
    conn.exec_driver_sql("DELETE FROM summary_passage")  # made again from the summaries
