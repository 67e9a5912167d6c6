"""A node that dies holding a session's stream is replaced within TRANSCRIBE_TAKEOVER_S, not its 120 s lease.

Each transcribing process keeps a heartbeat row (`transcriber_node`) and runs its leases on with it: another node
takes a stream once its holder's heartbeat has stopped for TRANSCRIBE_TAKEOVER_S (20 s), whatever its lease says; a
live holder keeps its stream however long one window takes; and a holder that stalled past its heartbeat and lost
the stream stores nothing more of it (the commit is fenced by the claim).

The kill tests run two real `scribeai serve` processes with different NODE_IDs on one database (a SQLite file, or
PostgreSQL), both transcribing through tests/whisper_api.py (the bundled whisper behind an OpenAI-compatible API) so
that the holder is SIGKILLed while it is inside a window (its request held there), with TRANSCRIBE_LEASE_S left at
120 s: the survivor must finish the transcript while the dead node's recorded lease still runs. The fence is
tested the same way: the holder SIGSTOPped inside a window past its heartbeat, woken once the other node has taken
the stream (and is itself inside a window, its request held), must store nothing of its window.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from scribeai.db import Database
from scribeai.models import TranscriptSegment, utcnow
from scribeai.transcription.queue import LeaseLost, StreamQueue
from tests.conftest import RunningServer, ServerFactory, chunk, token_for
from tests.speech import MEETING, normalize, spoken_blobs, word_recall
from tests.test_crash import ServerProcess
from tests.test_recovery_kills import EPOCH, TIMEOUT_S, USER, rows, send, statuses
from tests.test_recovery_kills import api, database_url  # noqa: F401 (fixtures: the whisper API, each database)
from tests.whisper_api import WhisperAPI

SENTENCES = [MEETING[i] for i in (0, 1, 2, 6)]
REFERENCE = " ".join(SENTENCES)
SESSION = "meeting"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return spoken_blobs(SENTENCES, tmp_path_factory.mktemp("takeover"))


@pytest.fixture
async def nodes(tmp_path: Path, api: WhisperAPI, database_url: str) -> AsyncIterator[dict[str, ServerProcess]]:
    """Two serve processes on one database and one STORAGE_DIR, each with its own port, NODE_ID and log."""
    assert api.server is not None
    found: dict[str, ServerProcess] = {}
    for name in ("node-a", "node-b"):
        process = ServerProcess(tmp_path)
        process.log_path = tmp_path / f"{name}.log"
        process.settings = {
            "TRANSCRIBER": "openai", "OPENAI_BASE_URL": str(api.server.make_url("")).rstrip("/"), "OPENAI_API_KEY": "k",
            "MAX_CONCURRENCY": "1", "IDLE_FLUSH_S": "3", "MAX_QUEUE_SIZE": "500", "LOG_LEVEL": "INFO", "NODE_ID": name}
        if not database_url.startswith("sqlite"):
            process.settings["DATABASE_URL"] = database_url
        found[name] = process
    try:
        yield found
    finally:
        for process in found.values():
            process.kill_all()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def claim(db: Database) -> tuple[str | None, Any]:
    found = await rows(db, "SELECT claimed_by, lease_until FROM transcript_stream WHERE session_id = :s", s=SESSION)
    return (found[0][0], found[0][1]) if found else (None, None)


async def wait(what: str, check: Any, *logs: ServerProcess) -> Any:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"not {what} after {TIMEOUT_S} s\n" + \
            "\n".join(f"=== {p.log_path.name}\n{p.log()}" for p in logs)
        await asyncio.sleep(0.05)
    return found


def aware(when: Any) -> Any:
    """A stored time as an aware UTC datetime (aiosqlite gives it aware through the column type, text() does not)."""
    from datetime import datetime, timezone

    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


async def check_transcript(db: Database, count: int) -> None:
    assert await statuses(db) == {seq: "done" for seq in range(count)}
    found = [(int(a), int(b), str(t)) for a, b, t in await rows(
        db, "SELECT start_ms, end_ms, text FROM segment WHERE session_id = :s ORDER BY start_ms", s=SESSION)]
    for (_, end, before), (start, _, after) in zip(found, found[1:]):
        assert start >= end, f"overlapping segments: {before!r} / {after!r}"
    transcript = " ".join(t for _, _, t in found)
    assert word_recall(REFERENCE, transcript) >= 0.9, transcript


@pytest.mark.timeout(300)
async def test_a_node_killed_holding_a_stream_is_replaced_before_its_lease_runs_out(
        nodes: dict[str, ServerProcess], db: Database, api: WhisperAPI, blobs: list[bytes]) -> None:
    for node in nodes.values():
        await node.start()
    api.hold(1)  # whichever node claims the session: its second window is where it dies
    await send(nodes["node-a"], blobs, range(len(blobs)))
    await api.arrived(2)
    holder, lease_until = await claim(db)
    assert holder in nodes, holder
    await nodes[holder].kill()
    api.release()
    survivor = next(name for name in nodes if name != holder)

    async def finished() -> bool:
        return await statuses(db) == {seq: "done" for seq in range(len(blobs))}

    await wait("transcribed by the survivor", finished, *nodes.values())
    await check_transcript(db, len(blobs))
    # the survivor took the stream and finished it while the dead node's lease (TRANSCRIBE_LEASE_S=120) still ran
    last = (await rows(db, "SELECT max(transcribed_at) FROM chunk WHERE session_id = :s", s=SESSION))[0][0]
    assert aware(last) < aware(lease_until), (last, lease_until)
    assert "stream read on from chunk" in nodes[survivor].log_path.read_text(), nodes[survivor].log()


@pytest.mark.timeout(300)
async def test_a_window_slower_than_the_lease_keeps_its_stream(
        nodes: dict[str, ServerProcess], db: Database, api: WhisperAPI, blobs: list[bytes], database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the heartbeat's renewal is the same statement on PostgreSQL (its takeover is tested above)")
    for node in nodes.values():
        node.settings["TRANSCRIBE_LEASE_S"] = "2"
        await node.start()
    api.hold(0)  # the first window takes as long as the test wants
    await send(nodes["node-a"], blobs, range(len(blobs)))
    await api.arrived(1)
    holder, first_lease = await claim(db)
    assert holder in nodes, holder

    async def lease_outlived() -> bool:  # the claim's first lease has run out three times over
        return utcnow() > aware(first_lease) + timedelta(seconds=6)

    await wait("past the first lease", lease_outlived)
    now_held_by, lease_until = await claim(db)
    assert now_held_by == holder  # the other node, polling all along, found the stream's lease running
    assert aware(lease_until) > aware(first_lease) + timedelta(seconds=4)  # renewed by the heartbeat, not the window
    assert len(api.requests) == 1  # nobody else began the same window (it would be held here too)
    api.release()

    async def finished() -> bool:
        return await statuses(db) == {seq: "done" for seq in range(len(blobs))}

    await wait("transcribed", finished, *nodes.values())
    await check_transcript(db, len(blobs))


async def test_the_claim_follows_heartbeats_and_a_lost_claim_stores_nothing(
        start_server: ServerFactory, connect: Any, blobs: list[bytes]) -> None:
    """The rule itself, on SQLite and PostgreSQL: node a holds a stream with a long lease; while its heartbeat runs, b
    cannot take it; once a's heartbeat is past, b can; a's commit then raises LeaseLost and stores nothing."""
    # a server that stores chunks for transcription but transcribes none itself: the two queues below are the nodes
    server: RunningServer = await start_server(transcriber="whisper", max_concurrency=0)
    client = await connect(server.url)
    ack = await client.call("audio-chunk", chunk(SESSION, 0, blobs[0], timestamp=EPOCH), timeout=5)
    assert "error" not in ack, ack
    db = server.services.db
    a = StreamQueue(db, "a", lease_s=120, takeover_s=20)
    b = StreamQueue(db, "b", lease_s=120, takeover_s=20)
    await a.heartbeat([])
    await b.heartbeat([])
    state = await a.claim()
    assert state is not None and state.session_id == SESSION
    assert await b.claim() is None  # a lives: its stream is not free, though nothing else stops b
    await a.heartbeat([SESSION])
    assert await b.claim() is None
    async with db.write() as s:  # a's last heartbeat said it lived until a moment ago: it died 20 s before that
        await s.execute(text("UPDATE transcriber_node SET alive_until = :t WHERE node_id = 'a'"),
                        {"t": utcnow() - timedelta(seconds=1)})
    taken = await b.claim()
    assert taken is not None and taken.session_id == SESSION
    segment = TranscriptSegment(session_id=SESSION, seq=0, from_seq=0, chunk_id="", start_ms=0, end_ms=900, text="late",
                                is_final=True)
    with pytest.raises(LeaseLost):
        await a.commit(SESSION, [segment], 900, 0, 0, [], claimed=True)
    assert await server.services.pipeline.segments_after(SESSION, None) == []
    # nor does a's request that failed for good meanwhile fail the chunks, nor reopen them with its gaps
    with pytest.raises(LeaseLost):
        await a.fail_chunks(SESSION, [0], "the model refused it")
    with pytest.raises(LeaseLost):
        await a.reopen_after(SESSION, -1, [{"fromSeq": 0, "toSeq": 0}])
    assert await rows(db, "SELECT status, error FROM chunk WHERE session_id = :s", s=SESSION) == [("pending", None)]
    assert await rows(db, "SELECT gaps FROM transcript_stream WHERE session_id = :s", s=SESSION) == [("[]",)]
    await a.heartbeat([SESSION])  # a comes back to life: its heartbeat does not take the stream back
    held = await rows(db, "SELECT claimed_by FROM transcript_stream WHERE session_id = :s", s=SESSION)
    assert held == [("b",)]
    assert await b.commit(SESSION, [segment], 900, 0, 0, [], claimed=True) == [segment]


@contextmanager
def sigstopped(process: ServerProcess) -> Iterator[None]:
    """The server's process frozen (SIGSTOP) for the block, and always let go again (SIGCONT) when the block ends."""
    proc = process.proc
    assert proc is not None and proc.poll() is None
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


async def alive_until(db: Database, node: str) -> Any:
    found = await rows(db, "SELECT alive_until FROM transcriber_node WHERE node_id = :n", n=node)
    return found[0][0] if found else None


async def heartbeats(db: Database, node: ServerProcess, name: str, count: int) -> None:
    """Until the node has written `count` more heartbeats: returns just after the last (the next is a quarter of
    TRANSCRIBE_TAKEOVER_S away), so the node is between database writes."""
    for _ in range(count):
        seen = await alive_until(db, name)

        async def moved(seen: Any = seen) -> bool:
            return bool(await alive_until(db, name) != seen)

        await wait(f"a heartbeat of {name}", moved, node)


async def stored(db: Database) -> dict[str, Any]:
    """What the session's transcription has stored: segments, the stream's progress, reading states, chunk statuses."""
    return {
        "segments": [tuple(r) for r in await rows(
            db, "SELECT start_ms, end_ms, text, seq, from_seq FROM segment WHERE session_id = :s ORDER BY start_ms",
            s=SESSION)],
        "stream": [tuple(r) for r in await rows(
            db, "SELECT done_ms, gaps, attempts, error, updated_at FROM transcript_stream WHERE session_id = :s",
            s=SESSION)],
        "checkpoints": [(kind, seq, hashlib.sha256(bytes(state)).hexdigest()[:16]) for kind, seq, state in await rows(
            db, "SELECT kind, seq, state FROM stream_checkpoint WHERE session_id = :s ORDER BY kind, seq", s=SESSION)],
        "chunks": await statuses(db),
    }


async def stop_session(node: ServerProcess) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for(USER)}"}) as http:
        async with http.post(f"{node.url}/api/sessions/{SESSION}/stop", json={}) as response:
            assert response.status == 200, await response.text()


@pytest.mark.timeout(300)
async def test_a_holder_frozen_past_its_heartbeat_stores_nothing_of_its_window_once_taken_over(
        nodes: dict[str, ServerProcess], db: Database, api: WhisperAPI, blobs: list[bytes]) -> None:
    """The fence with real processes: the holder is SIGSTOPped inside a window (its request held), the other node
    takes the stream once its heartbeat has stopped and is inside the same stretch (its request held too); the
    holder then wakes to its window's words and must store nothing of them, say it leaves the stream, and not take
    the stream back from the node holding it."""
    for node in nodes.values():
        node.settings["TRANSCRIBE_TAKEOVER_S"] = "3"
        await node.start()
    api.hold(1)  # whichever node claims the session: its second window is where it freezes
    await send(nodes["node-a"], blobs, range(len(blobs)))
    await stop_session(nodes["node-a"])  # the next holder reads the rest (24 chunks) in one turn
    await api.arrived(2)
    holder, _ = await claim(db)
    assert holder in nodes, holder
    taker = next(name for name in nodes if name != holder)
    frozen, other = nodes[holder], nodes[taker]
    # frozen just after a heartbeat, and more than a second after its last window's commit (the SQLite search
    # indexer's write for it is done): between its database writes, so it holds no lock the other node waits on
    await heartbeats(db, frozen, holder, 3)
    with sigstopped(frozen):
        # The held window is answered now, into the frozen process's socket: it reads the words when it wakes. The
        # next request (the taker's first window, from the same stored resume point) is held in its place.
        api.release()
        api.hold(2)

        async def taken() -> bool:
            return (await claim(db))[0] == taker

        await wait(f"the stream taken by {taker}", taken, other)
        await api.arrived(3)  # the taker is inside its first window, holding the stream
        before = await stored(db)
    # SIGCONT: the woken holder commits its window's words to a stream it no longer holds

    def left() -> int:
        return frozen.log_path.read_text(errors="replace").count(
            f"the stream of session {SESSION} is no longer this node's ({holder}); leaving it to its new holder")

    async def done_with_its_window() -> bool:
        return left() > 0 or await stored(db) != before

    await wait(f"{holder} done with its window", done_with_its_window, frozen)
    assert await stored(db) == before  # nothing of the window stored (the taker is held: nothing else wrote)
    assert left() == 1, frozen.log()
    await heartbeats(db, frozen, holder, 2)  # awake a while: its worker looked for work again (at once, then each 1 s)
    assert (await claim(db))[0] == taker, frozen.log()  # it did not take the stream back from the node inside a window
    assert len(api.requests) == 3, frozen.log()  # nor began any window again
    api.release()

    async def completed() -> bool:
        found = await rows(db, "SELECT completed_at FROM recording_session WHERE id = :s", s=SESSION)
        return found[0][0] is not None

    await wait("the session completed", completed, *nodes.values())
    await check_transcript(db, len(blobs))
    # the held window's words (those said once in the meeting, heard in both its requests) are there once: the
    # taker's, not the holder's too
    once = {word for word in normalize(REFERENCE) if normalize(REFERENCE).count(word) == 1}
    window = once & set(normalize(api.requests[1].text or "")) & set(normalize(api.requests[2].text or ""))
    heard = normalize(" ".join(said for (said,) in await rows(
        db, "SELECT text FROM segment WHERE session_id = :s ORDER BY start_ms", s=SESSION)))
    assert window and {word: heard.count(word) for word in window} == {word: 1 for word in window}, (window, heard)
    # the holder never held the stream again (a claim rebuilds it: its stream was dropped when it left)
    after_leaving = frozen.log_path.read_text().split("leaving it to its new holder", 1)[1]
    assert "stream read on from chunk" not in after_leaving, frozen.log()
    assert "(from its checkpoint)" in other.log_path.read_text(), other.log()
