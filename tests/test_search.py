"""GET /api/search and `scribeai search` on SQLite FTS5 and PostgreSQL full-text search: ranking, snippets,
phrases, prefixes, pages, dates, hostile queries, an existing database back-filled, the index after retention."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text, update

from scribeai import cli as cli_module
from scribeai import search
from scribeai.db import Database
from scribeai.errors import InvalidInput
from scribeai.models import RecordingSession, SessionSummary, TranscriptSegment
from scribeai.retention import Retention
from scribeai.transcription.queue import StreamQueue
from tests.conftest import RunningServer, ServerFactory, chunk, token_for
from tests.fake_chat import FakeChatAPI

ROADMAP = [(0, 8000, "We decided the launch date is Friday the twelfth."),
           (8000, 16000, "Marketing will follow up on the launch plan: launch, launch and the launch party."),
           (16000, 24000, "Budget numbers for the quarter look fine."),
           (24000, 30000, "Ship it with a <b>bold</b> & brave name.")]
STANDUP = [(0, 5000, "The launch slipped; we meet again on Monday.")]
BOBS = [(0, 5000, "Secret launch date for bob: zebracorn budget.")]


async def api(server: RunningServer, path: str, user: str = "alice", **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for(user)}"}) as http:
        async with http.get(f"{server.url}{path}", params=params) as response:
            return response.status, await response.json()


async def find(server: RunningServer, q: str, user: str = "alice", **params: str) -> list[dict[str, Any]]:
    status, body = await api(server, "/api/search", user, q=q, **params)
    assert status == 200, body
    return list(body["results"])


async def add_session(server: RunningServer, user: str, session_id: str, title: str,
                      segments: list[tuple[int, int, str]]) -> list[str]:
    """A session of `user` whose segments are stored the way transcription stores them (StreamQueue.commit)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for(user)}"}) as http:
        async with http.post(f"{server.url}/api/sessions", json={"id": session_id, "title": title}) as response:
            assert response.status == 201, await response.text()
    rows = [TranscriptSegment(session_id=session_id, seq=i, from_seq=i, chunk_id=f"c{i}", start_ms=start, end_ms=end, text=text)
            for i, (start, end, text) in enumerate(segments)]
    for row in rows:  # one window at a time, as the pipeline commits them
        inserted = await server.services.pipeline.queue.commit(session_id, [row], row.end_ms, row.seq, row.seq, [])
        assert [r.id for r in inserted] == [row.id]
    return [row.id for row in rows]


async def seed(server: RunningServer) -> dict[str, list[str]]:
    return {"roadmap": await add_session(server, "alice", "roadmap", "Roadmap review", ROADMAP),
            "standup": await add_session(server, "alice", "standup", "Standup", STANDUP),
            "bobs": await add_session(server, "bob", "bobs", "Bob's plans", BOBS)}


def marked(snippet: str) -> list[str]:
    return " ".join(re.findall(r"<mark>(.*?)</mark>", snippet)).lower().split()


async def test_ranked_results_with_snippet_and_time(server: RunningServer) -> None:
    ids = await seed(server)
    results = await find(server, "launch")
    assert [r["segmentId"] for r in results] == [ids["roadmap"][1], *sorted([ids["roadmap"][0], ids["standup"][0]],
                                                                          key=[r["segmentId"] for r in results].index)]
    assert results[0] == {"kind": "segment", "summaryParts": [], "sessionId": "roadmap", "title": "Roadmap review", "segmentId": ids["roadmap"][1], "startMs": 8000,
                          "endMs": 16000, "snippet": results[0]["snippet"], "rank": results[0]["rank"]}
    assert results[0]["rank"] > results[1]["rank"] >= results[2]["rank"]
    assert marked(results[0]["snippet"]) == ["launch"] * 4
    assert {r["sessionId"] for r in results} == {"roadmap", "standup"}

    phrase = await find(server, '"launch date"')
    assert [(r["segmentId"], r["startMs"], r["endMs"]) for r in phrase] == [(ids["roadmap"][0], 0, 8000)]
    assert marked(phrase[0]["snippet"]) == ["launch", "date"]
    assert [r["segmentId"] for r in await find(server, '"date launch"')] == []
    assert [r["segmentId"] for r in await find(server, "budg*")] == [ids["roadmap"][2]]
    assert [r["segmentId"] for r in await find(server, "decid*")] == [ids["roadmap"][0]]  # stemmed: decided
    assert sorted(r["segmentId"] for r in await find(server, "friday OR monday")) == sorted([ids["roadmap"][0], ids["standup"][0]])
    assert [r["segmentId"] for r in await find(server, "launch monday")] == [ids["standup"][0]]
    assert [r["segmentId"] for r in await find(server, "LAUNCH Monday")] == [ids["standup"][0]]

    bold = await find(server, "bold")
    assert [r["segmentId"] for r in bold] == [ids["roadmap"][3]]
    assert "<b>" not in bold[0]["snippet"] and "&lt;b&gt;<mark>bold</mark>&lt;/b&gt;" in bold[0]["snippet"]
    assert "&amp;" in bold[0]["snippet"]

    assert [(r["sessionId"], r["segmentId"]) for r in await find(server, "launch", user="bob")] == [("bobs", ids["bobs"][0])]
    assert await find(server, "zebracorn") == []
    assert await find(server, "launch", user="carol") == []


HOSTILE = [
    "zebracorn", '"zebracorn"', "zebra*", "zebracorn OR launch", "launch OR zebracorn", "NEAR(zebracorn launch)",
    "NEAR(launch zebracorn, 5)", "text:zebracorn", "user_id:bob", "session_id:bobs", "{text}: zebracorn", "* OR zebracorn",
    "launch) OR (zebracorn", "(launch OR zebracorn", '"unbalanced launch', 'launch"', '""', '"" OR ""', "launch AND zebracorn",
    "launch NOT zebracorn", "-zebracorn", "launch' OR '1'='1", "'; DROP TABLE segment; --", "launch\x00zebracorn",
    "\\", "launch:*", "launch & zebracorn | date", "!launch", "<->", "launch <-> date", "^launch", "+launch +date",
    "ze\u0301bracorn", "ＬＡＵＮＣＨ", "launch" + " OR launch" * 7, "café' UNION SELECT text FROM segment --",
]
REFUSED = ["", "   ", "*", "(((", '"', '"***"', "OR", "OR OR", "-", "x" * (search.MAX_QUERY_CHARS + 1),
           " ".join(["launch"] * (search.MAX_TERMS + 1)), "the", "when did we", '"to be" OR not']


async def test_hostile_queries_never_fail_and_never_reach_another_user(server: RunningServer) -> None:
    ids = await seed(server)
    alices = set(ids["roadmap"] + ids["standup"])
    rng = random.Random(26)
    alphabet = list("\"*():^-+|&!'\\;{}[] \t") + ["OR", "AND", "NOT", "NEAR", "launch", "zebracorn", "date", "\u00e9", "_"]
    fuzzed = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(120)]
    for q in HOSTILE + fuzzed:
        status, body = await api(server, "/api/search", q=q)
        assert status in (200, 400), (q, status, body)
        if status == 400:
            assert body["error"]["code"] == "invalid", (q, body)
            continue
        assert {r["segmentId"] for r in body["results"]} <= alices, q
        assert "zebracorn" not in str(body), q
    for q in REFUSED:
        status, body = await api(server, "/api/search", q=q)
        assert (status, body["error"]["code"]) == (400, "invalid"), q
    status, body = await api(server, "/api/search")
    assert (status, body["error"]["code"]) == (400, "invalid")
    assert await find(server, "'; DROP TABLE segment; --") == []
    assert len(await find(server, "launch")) == 3  # the table and its index are still there
    assert [r["segmentId"] for r in await find(server, "launch \x00monday")] == [ids["standup"][0]]


async def test_pages_and_dates(server: RunningServer) -> None:
    texts = [(i * 1000, i * 1000 + 900, "alpha " * (1 + i % 3) + f"filler {i}") for i in range(7)]
    first = await add_session(server, "alice", "january", "January", texts)
    second = await add_session(server, "alice", "march", "March", [(0, 900, "alpha in march")])
    async with server.services.db.write() as s:
        for sid, when in (("january", datetime(2026, 1, 10, 12, tzinfo=timezone.utc)),
                          ("march", datetime(2026, 3, 5, 9, tzinfo=timezone.utc))):
            await s.execute(update(RecordingSession).where(RecordingSession.id == sid).values(created_at=when))  # type: ignore[arg-type]
    everything = await find(server, "alpha", limit="100")
    assert sorted(r["segmentId"] for r in everything) == sorted(first + second)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        status, body = await api(server, "/api/search", q="alpha", limit="3", **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        pages.append([r["segmentId"] for r in body["results"]])
        cursor = body["next"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [sid for page in pages for sid in page] == [r["segmentId"] for r in everything]

    def of(results: list[dict[str, Any]]) -> set[str]:
        return {r["sessionId"] for r in results}
    assert of(await find(server, "alpha", **{"from": "2026-02-01"})) == {"march"}
    assert of(await find(server, "alpha", to="2026-01-10")) == {"january"}  # a date: the whole day
    assert of(await find(server, "alpha", to="2026-01-10T12:00:00Z")) == set()  # a moment: before it
    assert of(await find(server, "alpha", **{"from": "2026-01-10T12:00:00+00:00", "to": "2026-03-05"})) == {"january", "march"}
    assert of(await find(server, "alpha", **{"from": "2026-03-06"})) == set()
    for params in ({"from": "yesterday"}, {"to": "2026-13-01"}, {"cursor": "zzz"}, {"cursor": search.encode_cursor(search.RANK_WINDOW)},
                   {"cursor": search.encode_cursor(-1)}, {"limit": "0"}, {"limit": str(search.MAX_LIMIT + 1)}, {"limit": "x"}):
        status, body = await api(server, "/api/search", q="alpha", **params)
        assert (status, body["error"]["code"]) == (400, "invalid"), params


async def test_an_existing_database_is_indexed_at_start(server: RunningServer) -> None:
    """A database from before search (segments, no index) gets its index, filled, when the server starts on it."""
    ids = await seed(server)
    db = server.services.db
    async with db.engine.begin() as conn:
        await conn.run_sync(search.drop_index)
    await db.create_all()  # what every start does
    await db.create_all()  # and the next start finds it there (nothing filled twice)
    assert sorted(r["segmentId"] for r in await find(server, "launch")) == sorted([*ids["roadmap"][:2], ids["standup"][0]])
    later = await add_session(server, "alice", "later", "Later", [(0, 4000, "the launch went well")])
    assert len(await find(server, "launch")) == 4
    assert [r["segmentId"] for r in await find(server, "went")] == later


async def test_the_index_outlives_the_audio(server: RunningServer, connect: Any) -> None:
    """Retention archives the raw chunks (warm) and then deletes the archive (cold): the transcript and a model's
    summary stay searchable."""
    client = await connect(server.url)
    for seq in range(2):
        ack = await client.call("audio-chunk", chunk("meeting", seq, os.urandom(3000)), timeout=5)
        assert ack["duplicate"] is False, ack
    rows = [TranscriptSegment(session_id="meeting", seq=1, from_seq=0, chunk_id="c0", start_ms=0, end_ms=4000,
                              text="The quarterly forecast is due next week.")]
    await server.services.pipeline.queue.commit("meeting", rows, 4000, 1, 0, [])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.post(f"{server.url}/api/sessions/meeting/stop") as response:
            assert response.status == 200
    await summary_ready(server, "meeting")  # stopped with every chunk stored (TRANSCRIBER=none): completed, summarised
    async with server.services.db.write() as s:  # made a model's summary, as stored before summaries were searched
        await s.execute(update(SessionSummary).where(SessionSummary.session_id == "meeting").values(  # type: ignore[arg-type]
            method="llm", text="The forecast comes next week.", key_points="[]",
            action_items=json.dumps([{"text": "Dana will send the forecast.", "startMs": 0, "endMs": 4000}])))
    await server.services.db.create_all()  # the next start gives it its passages
    retention = Retention(server.services.db, server.settings)
    now = datetime.now(timezone.utc)
    for days, tier in ((8, "warm"), (40, "cold")):
        report = await retention.run(now + timedelta(days=days))
        assert report.ok, report
        async with server.services.db.read() as s:
            session = await s.get(RecordingSession, "meeting")
        assert session is not None and session.tier == tier
        results = await find(server, "forecast")
        assert sorted((r["kind"], r["segmentId"], r["startMs"]) for r in results) == [
            ("actionItem", None, 0), ("segment", rows[0].id, 0), ("summary", None, None)]
    assert not (server.settings.storage_dir / "meeting").exists()


def test_query_syntax_is_built_from_words_only() -> None:
    query = search.parse_query('launch "the Launch-date" budg* friday OR monday NEAR(x) \'; DROP')
    assert search.fts5_query(query) == ('("launch") AND ("the launch date") AND ("budg"*) AND ("friday" OR "monday") '
                                        'AND ("near x") AND ("drop")')
    assert search.pg_tsquery(query) == (
        "((to_tsquery('english', :t0)) && (to_tsquery('english', :t1)) && (to_tsquery('english', :t2)) && "
        "(to_tsquery('english', :t3) || to_tsquery('english', :t4)) && (to_tsquery('english', :t5)) && "
        "(to_tsquery('english', :t6)))",
        {"t0": "'launch'", "t1": "'the' <-> 'launch' <-> 'date'", "t2": "'budg':*", "t3": "'friday'", "t4": "'monday'",
         "t5": "'near' <-> 'x'", "t6": "'drop'"})
    # Bare stop words go (both engines alike), a prefix that is one stays (PostgreSQL's simple configuration keeps it).
    assert search.parse_query("when did we decide the launch date") == ((search.Term(("decide",)),), (search.Term(("launch",)),),
                                                                         (search.Term(("date",)),))
    assert search.parse_query("the OR launch") == ((search.Term(("launch",)),),)
    assert search.pg_tsquery(search.parse_query("can* launch"))[0] == "((to_tsquery('simple', :t0)) && (to_tsquery('english', :t1)))"
    # Any text makes a MATCH that FTS5 accepts (or a 400 before it reaches the database).
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{search.FTS_TOKENIZER}')")
    conn.execute("INSERT INTO t VALUES ('launch date')")
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x20, 0x7f)] + ["\u00e9", "\u0301", "\u00bd", "\u4e2d", "OR ", "NEAR", "\x00"]
    accepted = 0
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        try:
            match = search.fts5_query(search.parse_query(raw))
        except InvalidInput:
            continue
        conn.execute("SELECT count(*) FROM t WHERE t MATCH ?", (match,)).fetchone()
        accepted += 1
    assert accepted > 1000


def test_cli_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'scribeai.db'}"

    async def seed_database() -> None:
        db = Database(url)
        try:
            await db.create_all()
            async with db.write() as s:
                s.add(RecordingSession(id="roadmap", user_id="alice", title="Roadmap review"))
                s.add(RecordingSession(id="bobs", user_id="bob", title=None))
            queue = StreamQueue(db, "test")
            for sid, segments in (("roadmap", ROADMAP), ("bobs", BOBS)):
                for i, (start, end, text) in enumerate(segments):
                    await queue.commit(sid, [TranscriptSegment(id=f"{sid}-{i}", session_id=sid, seq=i, chunk_id="c", start_ms=start,
                                                               end_ms=end, text=text)], end, i, i, [])
            async with db.write() as s:  # a summary (its passages come at the next start: the command's own)
                s.add(SessionSummary(session_id="roadmap", status="ready", method="llm", text="A memo was promised.",
                                     action_items=json.dumps([{"text": "Marketing will send the memo.", "startMs": 8000, "endMs": 16000}])))
        finally:
            await db.dispose()

    asyncio.run(seed_database())
    for name, value in (("DATABASE_URL", url), ("DATA_DIR", str(tmp_path / "data")), ("STORAGE_DIR", str(tmp_path / "chunks"))):
        monkeypatch.setenv(name, value)

    def cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(cli_module, "_EXTRA_COMMANDS", [])  # main() registers the subcommands once per process
        code = cli_module.main(["search", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli('"launch date"', "--user", "alice")
    assert (code, out, err) == (0, "roadmap  00:00:00  Roadmap review: We decided the [launch date] is Friday the twelfth.\n", "")
    assert cli("bold", "--user", "alice") == (0, "roadmap  00:00:24  Roadmap review: Ship it with a <b>[bold]</b> & brave name.\n", "")
    assert cli("memo", "--user", "alice") == (0, "roadmap  --:--:--  Roadmap review: (summary) A [memo] was promised.\n"  # shorter: first
                                                 "roadmap  00:00:08  Roadmap review: (action item) Marketing will send the [memo].\n", "")
    assert cli("zebracorn", "--user", "alice") == (0, "", "no matches for 'zebracorn' in alice's transcripts and summaries\n")
    code, out, err = cli("launch", "--user", "bob", "--json")
    assert (code, [(r["sessionId"], r["segmentId"], r["title"]) for r in json.loads(out)["results"]]) == (0, [("bobs", "bobs-0", None)])
    for args, message in ((["***", "--user", "alice"], "scribeai: search: the query has no words to search for (letters or digits)"),
                          (["launch", "--user", "alice", "--from", "soon"],
                           "scribeai: search: --from must be an ISO 8601 date (2026-12-07) or date-time (2026-12-07T09:30:00Z)"),
                          (["launch", "--user", "alice", "--limit", "0"], "scribeai: search --limit 0: expected 1 to 100")):
        assert cli(*args) == (2, "", message + "\n"), args


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_indexes_new_segments_in_the_background(server: RunningServer) -> None:
    """Transcription commits carry no index work on SQLite: the indexer adds their segments a second later."""
    await add_session(server, "alice", "roadmap", "Roadmap review", ROADMAP)

    async def behind() -> tuple[int, int]:
        async with server.services.db.read() as s:
            row = (await s.execute(text("SELECT (SELECT max(rowid) FROM segment), indexed_upto FROM search_progress"))).one()
        return int(row[0]), int(row[1])
    deadline = asyncio.get_running_loop().time() + 30
    while (state := await behind())[1] < state[0]:
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.05)
    assert state == (4, 4)
    assert server.app[search.indexer_key].indexed == 4


VENDOR_MEETING = [
    (0, 6000, "Welcome everyone to the supply review for the new espresso grinders."),
    (6000, 12000, "The grinders sold out twice this month and the warehouse is nearly empty."),
    (12000, 18000, "Sarah will follow up with the vendor about the delayed zanzibar shipment by Friday."),
    (18000, 24000, "Shipping costs rose again because the grinders are heavy."),
    (24000, 30000, "Overall the grinders remain our best seller this quarter."),
]


async def test_an_extractive_summary_labels_the_segments_it_lists(server: RunningServer) -> None:
    """An extractive summary's sentences are the transcript's: each is found once, as its segment, which says that
    the summary lists it as a key point or an action item. No passage of its own is indexed."""
    ids = await add_session(server, "alice", "supply", "Supply review", VENDOR_MEETING)
    await stop(server, "supply")
    summary = await summary_ready(server, "supply")
    assert (summary["method"], [a["text"] for a in summary["actionItems"]]) == ("extractive", [VENDOR_MEETING[2][2]])
    found = await find(server, "zanzibar")
    assert [(r["kind"], r["segmentId"], r["startMs"], r["summaryParts"]) for r in found] == [
        ("segment", ids[2], 12000, ["actionItem"])]
    grinders = await find(server, "grinders", limit="100")
    assert {r["kind"] for r in grinders} == {"segment"} and len(grinders) == len({r["segmentId"] for r in grinders})
    point_times = [p["startMs"] for p in summary["keyPoints"]]
    for r in grinders:
        holds = any(r["startMs"] <= at < r["endMs"] for at in point_times)
        assert r["summaryParts"] == (["keyPoint"] if holds else []), (r, point_times)
    assert any(r["summaryParts"] for r in grinders)
    async with server.services.db.read() as s:
        assert (await s.execute(text("SELECT count(*) FROM summary_passage"))).scalar_one() == 0


async def test_a_models_summary_is_searched_with_its_times(start_server: ServerFactory) -> None:
    """What a model wrote (its summary, key points, action items) is found beside the segments, ranked with them:
    an action item with the time it was said; never another user's; replaced when the summary is made again."""
    fake = FakeChatAPI()
    try:
        server = await start_server(summary_base_url=await fake.start(), summary_model="fake")
        ids = await add_session(server, "alice", "supply", "Supply review", VENDOR_MEETING)
        await add_session(server, "bob", "bobs", "Bob's plans", [(0, 5000, "Bob will call the zanzibar vendor.")])
        await stop(server, "supply")
        summary = await summary_ready(server, "supply")
        assert (summary["method"], summary["text"]) == ("llm", "This part has 5 lines."), summary
        # the model's summary: its own words, no time
        assert [(r["kind"], r["sessionId"], r["segmentId"], r["startMs"], marked(r["snippet"])) for r in await find(server, "lines")] == [
            ("summary", "supply", None, None, ["lines"])]
        # its action item, placed at the sentence it came from, and that sentence's segment
        found = await find(server, "zanzibar")
        assert sorted((r["kind"], r["segmentId"], r["startMs"], r["endMs"], r["summaryParts"]) for r in found) == [
            ("actionItem", None, 12000, 18000, []), ("segment", ids[2], 12000, 18000, ["actionItem"])]
        item = next(r for r in found if r["kind"] == "actionItem")
        assert (item["sessionId"], item["title"], marked(item["snippet"])) == ("supply", "Supply review", ["zanzibar"])
        assert [r["sessionId"] for r in await find(server, "zanzibar", user="bob")] == ["bobs"]  # none of alice's
        assert await find(server, "lines", user="bob") == []
        # made again: the passages are replaced, not added to
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
            async with http.post(f"{server.url}/api/sessions/supply/summary") as response:
                assert response.status == 202
        await summary_ready(server, "supply", after=summary["generatedAt"])
        assert sorted(r["kind"] for r in await find(server, "zanzibar")) == ["actionItem", "segment"]
        async with server.services.db.read() as s:
            count = (await s.execute(text("SELECT count(*) FROM summary_passage WHERE session_id = 'supply'"))).scalar_one()
        assert count == 1 + len(summary["keyPoints"]) + len(summary["actionItems"])
    finally:
        await fake.close()


async def stop(server: RunningServer, session_id: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.post(f"{server.url}/api/sessions/{session_id}/stop") as response:
            assert response.status == 200


async def summary_ready(server: RunningServer, session_id: str, after: str | None = None) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        status, body = await api(server, f"/api/sessions/{session_id}/summary")
        assert status == 200, body
        if body["status"] == "ready" and body["generatedAt"] != after:
            return dict(body)
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_summaries_of_an_older_database_are_indexed_and_pages_merge_both_lists(server: RunningServer) -> None:
    """Models' summaries stored before they were searchable get their passages at the next start; a page takes from both
    ranked lists, and following `next` shows every match once, in the order of one long page."""
    await add_session(server, "alice", "alpha", "Alpha", [(i * 1000, i * 1000 + 900, "alpha " * (1 + i % 3) + f"note {i}")
                                                          for i in range(6)])
    points = [{"text": "alpha " * (1 + i % 2) + f"point {i}", "startMs": i * 1000, "endMs": i * 1000 + 500} for i in range(4)]
    await add_session(server, "alice", "beta", "Beta", [(0, 900, "beta")])
    async with server.services.db.write() as s:
        s.add(SessionSummary(session_id="alpha", status="ready", method="llm", text="All about alpha.",
                             key_points=json.dumps(points[:2]), action_items=json.dumps(points[2:])))
        s.add(SessionSummary(session_id="beta", status="ready", method="extractive", text="Alpha again.",  # no passages
                             key_points=json.dumps(points[:2])))
    db = server.services.db
    async with db.engine.begin() as conn:
        await conn.run_sync(search.drop_index)  # as before search: no index, no passages
    await db.create_all()  # what the next start does
    await db.create_all()  # and the one after: nothing added twice
    everything = await find(server, "alpha", limit="100")
    assert sorted(r["kind"] for r in everything) == ["actionItem"] * 2 + ["keyPoint"] * 2 + ["segment"] * 6 + ["summary"]
    assert [r["rank"] for r in everything] == sorted((r["rank"] for r in everything), reverse=True)
    shown: list[tuple[Any, ...]] = []
    cursor: str | None = None
    pages = 0
    while True:
        status, body = await api(server, "/api/search", q="alpha", limit="3", **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        shown += [(r["kind"], r["segmentId"], r["startMs"], r["snippet"]) for r in body["results"]]
        pages += 1
        if (cursor := body["next"]) is None:
            break
    assert (pages, shown) == (4, [(r["kind"], r["segmentId"], r["startMs"], r["snippet"]) for r in everything])


async def test_common_words_are_left_out_alike_on_both_engines(server: RunningServer) -> None:
    ids = await seed(server)
    await add_session(server, "alice", "tools", "Tools", [(0, 3000, "Cancel the candidate list, we can wait.")])
    # Seven words, four of them stop words: the segment holding the other three is found.
    assert [r["segmentId"] for r in await find(server, "when did we decide the launch date")] == [ids["roadmap"][0]]
    assert [r["segmentId"] for r in await find(server, '"decided the launch" friday')] == [ids["roadmap"][0]]
    assert [r["sessionId"] for r in await find(server, "can*")] == ["tools"]  # cancel, candidate, can
    for q in ("the", "when did we", '"to be" OR not'):
        status, body = await api(server, "/api/search", q=q)
        assert (status, body["error"]["code"]) == (400, "invalid"), q
        assert "too common" in body["error"]["message"], body


def test_stop_words_are_postgresqls() -> None:
    """The words left out of queries are the ones PostgreSQL's English configuration leaves out of its index."""
    found = sorted(Path("/usr/share/postgresql").glob("*/tsearch_data/english.stop"))
    if not found:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's english.stop is not installed under /usr/share/postgresql")
        pytest.skip("PostgreSQL's english.stop is not installed under /usr/share/postgresql")
    assert search.STOP_WORDS == frozenset(found[-1].read_text().split())
