"""audio-chunk over python-socketio against a real server: durable, exactly once, every bad input answered."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import text, update
from sqlmodel import col

from scribeai.models import Chunk, utcnow
from scribeai.sessions import SessionService
from tests.conftest import RunningServer, chunk, token_for

AUDIO = os.urandom(4096)


def stored_files(server: RunningServer, session_id: str) -> dict[str, bytes]:
    folder = Path(server.settings.storage_dir) / session_id
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


async def test_chunk_is_stored_then_acked(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    ack = await client.call("audio-chunk", chunk("s-1", 0, AUDIO, size=len(AUDIO)), timeout=5)
    assert ack["sessionId"] == "s-1"
    assert ack["sequence"] == 0
    assert ack["duplicate"] is False
    assert ack["canAccept"] is True
    assert ack["credits"] == 8
    assert ack["timestamp"] == 1_732_350_000_000
    event = await client.receive(timeout=5)
    assert event == ["chunk-ack", ack]
    assert stored_files(server, "s-1") == {"s-1_0000.webm": AUDIO}


async def test_same_chunk_three_times_is_saved_once(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    acks = [await client.call("audio-chunk", chunk("dup", 7, AUDIO), timeout=5) for _ in range(3)]
    assert [a["duplicate"] for a in acks] == [False, True, True]
    assert len({a["chunkId"] for a in acks}) == 1
    assert stored_files(server, "dup") == {"dup_0007.webm": AUDIO}
    summary = await server.services.sessions.gap_summary("dup")
    assert (summary.total_chunks, summary.max_seq, summary.missing) == (1, 7, [0, 1, 2, 3, 4, 5, 6])


async def test_different_bytes_under_a_stored_sequence_is_a_conflict(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("c", 0, AUDIO), timeout=5)
    reply = await client.call("audio-chunk", chunk("c", 0, b"other audio"), timeout=5)
    assert reply["error"]["code"] == "conflict"
    assert reply["error"]["sequence"] == 0
    assert stored_files(server, "c") == {"c_0000.webm": AUDIO}


async def test_seed_004_form_alias_and_record_namespace(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url, namespace="/record")
    ack = await client.call("audioChunk", ({"sessionId": "two-args", "seq": 3, "timestamp": 5}, AUDIO), timeout=5)
    assert (ack["sequence"], ack["duplicate"]) == (3, False)
    b64 = base64.b64encode(b"base64 audio").decode()
    ack = await client.call("audio-chunk", {"sessionId": "two-args", "sequence": 4, "timestamp": 6, "audio": b64}, timeout=5)
    assert ack["duplicate"] is False
    assert stored_files(server, "two-args") == {"two-args_0003.webm": AUDIO, "two-args_0004.webm": b"base64 audio"}


async def test_checksum_is_verified(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    good = hashlib.sha256(AUDIO).hexdigest()
    assert (await client.call("audio-chunk", chunk("sum", 0, AUDIO, checksum=good), timeout=5))["duplicate"] is False
    reply = await client.call("audio-chunk", chunk("sum", 1, AUDIO, checksum="0" * 64), timeout=5)
    assert reply["error"]["code"] == "invalid"
    assert "checksum" in reply["error"]["message"]
    assert list(stored_files(server, "sum")) == ["sum_0000.webm"]


BAD_PAYLOADS: list[tuple[Any, str, str]] = [
    ("a string", "invalid", "object payload"),
    (42, "invalid", "object payload"),
    (None, "invalid", "object payload"),
    ([1, 2], "invalid", "object payload"),
    ({}, "invalid", "sessionId"),
    ({"sessionId": "../etc", "sequence": 0, "audio": b"x"}, "invalid", "sessionId"),
    ({"sessionId": "x" * 129, "sequence": 0, "audio": b"x"}, "invalid", "sessionId"),
    ({"sessionId": "ok", "sequence": -1, "audio": b"x"}, "invalid", "sequence"),
    ({"sessionId": "ok", "sequence": 1.5, "audio": b"x"}, "invalid", "sequence"),
    ({"sessionId": "ok", "sequence": "3", "audio": b"x"}, "invalid", "sequence"),
    ({"sessionId": "ok", "sequence": True, "audio": b"x"}, "invalid", "sequence"),
    ({"sessionId": "ok", "sequence": 0}, "invalid", "audio is required"),
    ({"sessionId": "ok", "sequence": 0, "audio": b""}, "invalid", "audio is empty"),
    ({"sessionId": "ok", "sequence": 0, "audio": 12}, "invalid", "audio must be binary"),
    ({"sessionId": "ok", "sequence": 0, "audio": "not base64!"}, "invalid", "base64"),
    ({"sessionId": "ok", "sequence": 0, "audio": b"abc", "size": 4}, "invalid", "size"),
    ({"sessionId": "ok", "sequence": 0, "audio": b"abc", "mimeType": "video/mp4"}, "invalid", "mimeType"),
    ({"sessionId": "ok", "sequence": 0, "audio": b"abc", "timestamp": -5}, "invalid", "timestamp"),
    ({"sessionId": "ok", "sequence": 0, "audio": b"abc", "timestamp": "now"}, "invalid", "timestamp"),
    ({"sessionId": "ok", "sequence": 0, "audio": b"abc", "durationMs": 0}, "invalid", "durationMs"),
]


@pytest.mark.parametrize(("payload", "code", "words"), BAD_PAYLOADS)
async def test_bad_payload_is_answered_and_nothing_is_written(server: RunningServer, connect: Any, payload: Any, code: str, words: str) -> None:
    client = await connect(server.url)
    reply = await client.call("audio-chunk", payload, timeout=5)
    assert reply["error"]["code"] == code
    assert words in reply["error"]["message"]
    assert reply["error"]["error"] == "Invalid chunk data"
    event = await client.receive(timeout=5)
    assert event[0] == "chunk-error"
    assert event[1] == reply["error"]
    # still connected and still serving
    ack = await client.call("audio-chunk", chunk("after-bad", 0, AUDIO), timeout=5)
    assert ack["duplicate"] is False
    assert sorted(p.name for p in Path(server.settings.storage_dir).iterdir()) == ["after-bad"]


async def test_oversize_chunk_is_rejected_without_disconnect(start_server: Any, connect: Any) -> None:
    server = await start_server(max_chunk_bytes=1024 * 1024)
    client = await connect(server.url)
    reply = await client.call("audio-chunk", chunk("big", 0, b"\0" * (1024 * 1024 + 1)), timeout=10)
    assert reply["error"]["code"] == "too_large"
    assert client.connected
    ack = await client.call("audio-chunk", chunk("big", 0, b"\0" * (1024 * 1024)), timeout=10)
    assert ack["duplicate"] is False


async def test_unauthorized_connections_are_refused(server: RunningServer) -> None:
    for auth in (None, {"token": "not-a-jwt"}, {"token": token_for("x")[:-4] + "abcd"}):
        client = socketio.AsyncClient()
        errors: list[Any] = []
        client.on("connect_error", lambda data: errors.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=5)
        # python-socketio hands the whole error packet to connect_error; JS gets it as err.data
        assert errors[0]["data"]["code"] == "unauthorized"
        assert errors[0]["data"]["message"] == errors[0]["message"]
        await client.disconnect()


async def test_token_in_query_header_and_cookie(server: RunningServer, connect: Any) -> None:
    token = token_for("bob")
    for kwargs in ({"headers": {"Authorization": f"Bearer {token}"}}, {"headers": {"Cookie": f"scribeai_token={token}"}}):
        client = await connect(server.url, user=None, **kwargs)
        ack = await client.call("audio-chunk", chunk("bob-s", 0, AUDIO), timeout=5)
        assert "error" not in ack
    client = await connect(f"{server.url}?token={token}", user=None)
    ack = await client.call("audio-chunk", chunk("bob-s", 0, AUDIO), timeout=5)
    assert ack["duplicate"] is True


async def test_a_file_a_crash_left_under_a_chunks_name_is_replaced_by_the_chunk(server: RunningServer, connect: Any) -> None:
    # In a known session a chunk is written straight under its final name; a crash before its row committed
    # leaves a file there that no row names. The resend must store its own bytes, not keep the leftover.
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("leftover", 0, AUDIO), timeout=5)
    (Path(server.settings.storage_dir) / "leftover" / "leftover_0001.webm").write_bytes(b"half a chun")
    ack = await client.call("audio-chunk", chunk("leftover", 1, AUDIO), timeout=5)
    assert ack["duplicate"] is False
    assert stored_files(server, "leftover") == {"leftover_0000.webm": AUDIO, "leftover_0001.webm": AUDIO}


async def test_other_bytes_for_a_chunk_whose_file_was_lost_are_a_conflict_and_do_not_take_its_place(
        server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    for seq in (0, 1):
        await client.call("audio-chunk", chunk("lost", seq, AUDIO), timeout=5)
    (Path(server.settings.storage_dir) / "lost" / "lost_0001.webm").unlink()  # the disk lost it
    reply = await client.call("audio-chunk", chunk("lost", 1, b"other audio"), timeout=5)
    assert reply["error"]["code"] == "conflict"
    assert stored_files(server, "lost") == {"lost_0000.webm": AUDIO}  # the free name was written, then taken back
    ack = await client.call("audio-chunk", chunk("lost", 1, AUDIO), timeout=5)
    assert ack["duplicate"] is True
    assert stored_files(server, "lost") == {"lost_0000.webm": AUDIO, "lost_0001.webm": AUDIO}  # the resend repaired it


async def test_a_repeat_under_another_mime_type_leaves_no_file_under_its_own_name(server: RunningServer, connect: Any) -> None:
    # Same session, sequence and bytes, another mimeType: a duplicate, whose file name (another extension) was
    # free and written; no row will ever own that name, so it must go again (hypothesis found the orphan).
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("other-type", 0, AUDIO), timeout=5)
    ack = await client.call("audio-chunk", chunk("other-type", 0, AUDIO, mimeType="audio/ogg;codecs=opus"), timeout=5)
    assert ack["duplicate"] is True
    assert stored_files(server, "other-type") == {"other-type_0000.webm": AUDIO}


async def test_a_resent_chunk_that_retention_archived_does_not_bring_its_raw_file_back(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    for seq in (0, 1):
        await client.call("audio-chunk", chunk("archived", seq, AUDIO), timeout=5)
    async with server.services.db.write() as s:  # as retention leaves a chunk whose raw file went into an archive
        await s.execute(update(Chunk).where(col(Chunk.session_id) == "archived", col(Chunk.seq) == 1)
                        .values(deleted_at=utcnow()))
    (Path(server.settings.storage_dir) / "archived" / "archived_0001.webm").unlink()
    ack = await client.call("audio-chunk", chunk("archived", 1, AUDIO), timeout=5)
    assert ack["duplicate"] is True
    assert stored_files(server, "archived") == {"archived_0000.webm": AUDIO}


async def test_a_row_the_database_refuses_fails_alone_and_leaves_no_file(server: RunningServer, connect: Any) -> None:
    # A trigger refuses one row, as a constraint would: the group commit holding it fails, its neighbours
    # (sent at once from six sockets, so most likely in the same group) are committed one by one, and the
    # refused chunk's file, written under its final name before the commit, goes again.
    async with server.services.db.write() as s:
        if server.services.db.is_sqlite:
            await s.execute(text("CREATE TRIGGER refuse_one BEFORE INSERT ON chunk WHEN NEW.session_id = 'picky' "
                                 "AND NEW.seq = 3 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        else:
            await s.execute(text("CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                                 "IF NEW.session_id = 'picky' AND NEW.seq = 3 THEN RAISE EXCEPTION 'refused by the test'; "
                                 "END IF; RETURN NEW; END $$"))
            await s.execute(text("CREATE TRIGGER refuse_one BEFORE INSERT ON chunk FOR EACH ROW EXECUTE FUNCTION refuse_one()"))
    clients = [await connect(server.url) for _ in range(6)]
    acks = await asyncio.gather(*(c.call("audio-chunk", chunk("picky", seq, AUDIO + bytes([seq])), timeout=10)
                                  for seq, c in enumerate(clients)))
    assert [ack.get("error", {}).get("code") for ack in acks] == [None, None, None, "internal", None, None], acks
    assert stored_files(server, "picky") == {f"picky_{s:04d}.webm": AUDIO + bytes([s]) for s in (0, 1, 2, 4, 5)}
    assert (await server.services.sessions.gap_summary("picky")).total_chunks == 5


async def test_another_users_session_is_forbidden(server: RunningServer, connect: Any) -> None:
    alice = await connect(server.url, user="alice")
    mallory = await connect(server.url, user="mallory")
    await alice.call("audio-chunk", chunk("private", 0, AUDIO), timeout=5)
    for event, payload in (("audio-chunk", chunk("private", 1, AUDIO)), ("joinSession", {"sessionId": "private"}),
                           ("stopSession", {"sessionId": "private"}), ("join", "session:private"),
                           ("pause-session", {"sessionId": "private"})):
        reply = await mallory.call(event, payload, timeout=5)
        assert reply["error"]["code"] == "forbidden", event
    assert list(stored_files(server, "private")) == ["private_0000.webm"]
    summary = await server.services.sessions.gap_summary("private")
    assert summary.status == "recording"


async def test_a_session_created_elsewhere_is_refused_to_another_user_and_leaves_no_file(server: RunningServer, connect: Any) -> None:
    # Created by another node (or before a restart): this server has not seen its owner yet, so the chunk's
    # file is written while the owner is read, and must be gone again when the answer is "forbidden".
    await SessionService(server.services.db).ensure("elsewhere", "alice")
    mallory = await connect(server.url, user="mallory")
    reply = await mallory.call("audio-chunk", chunk("elsewhere", 0, AUDIO), timeout=5)
    assert reply["error"]["code"] == "forbidden"
    folder = Path(server.settings.storage_dir) / "elsewhere"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert (await server.services.sessions.gap_summary("elsewhere")).total_chunks == 0
    alice = await connect(server.url, user="alice")
    ack = await alice.call("audio-chunk", chunk("elsewhere", 0, AUDIO), timeout=5)
    assert ack["duplicate"] is False
    assert stored_files(server, "elsewhere") == {"elsewhere_0000.webm": AUDIO}


async def test_concurrent_duplicates_from_two_sockets_store_once(server: RunningServer, connect: Any) -> None:
    a = await connect(server.url)
    b = await connect(server.url, namespace="/record")
    audio = os.urandom(200_000)
    calls = [c.call("audio-chunk", chunk("race", seq, audio), timeout=10) for seq in range(5) for c in (a, b, a)]
    acks = await asyncio.gather(*calls)
    assert all("error" not in ack for ack in acks)
    by_seq: dict[int, list[dict[str, Any]]] = {}
    for ack in acks:
        by_seq.setdefault(ack["sequence"], []).append(ack)
    for seq, group in by_seq.items():
        assert sorted(a["duplicate"] for a in group) == [False, True, True], seq
        assert len({a["chunkId"] for a in group}) == 1
    assert stored_files(server, "race") == {f"race_{s:04d}.webm": audio for s in range(5)}


async def test_join_and_stop_report_gaps(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    for seq in (0, 1, 3, 4):
        await client.call("audio-chunk", chunk("gappy", seq, AUDIO), timeout=5)
    joined = await client.call("joinSession", {"sessionId": "gappy", "lastSeq": 4}, timeout=5)
    assert joined == {"sessionId": "gappy", "status": "recording", "maxSeq": 4, "totalChunks": 4, "missing": [2]}
    stopped = await client.call("stopSession", {"sessionId": "gappy", "lastSeq": 6}, timeout=5)
    assert stopped["status"] == "stopped"
    assert stopped["missing"] == [2, 5, 6]
    assert stopped["maxSeq"] == 4
    # a late resend after the stop is still accepted
    assert (await client.call("audio-chunk", chunk("gappy", 2, AUDIO), timeout=5))["duplicate"] is False


async def test_join_creates_an_unknown_session_for_the_viewer(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    joined = await client.call("joinSession", {"sessionId": "early-viewer"}, timeout=5)
    assert joined == {"sessionId": "early-viewer", "status": "recording", "maxSeq": -1, "totalChunks": 0, "missing": []}
    other = await connect(server.url, user="eve")
    assert (await other.call("joinSession", {"sessionId": "early-viewer"}, timeout=5))["error"]["code"] == "forbidden"


async def test_start_session_titles_a_session_that_a_join_created(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    await client.call("joinSession", {"sessionId": "titled-late", "lastSeq": -1}, timeout=5)  # creates it, untitled
    started = await client.call("start-session", {"sessionId": "titled-late", "title": "Design review", "source": "demo"},
                                timeout=5)
    assert started["status"] == "recording"
    row = await server.services.sessions.get_owned("titled-late", "alice")
    assert (row.title, row.source) == ("Design review", "demo")
    await client.call("start-session", {"sessionId": "titled-late"}, timeout=5)  # no title: the title stays
    assert (await server.services.sessions.get_owned("titled-late", "alice")).title == "Design review"


async def test_original_app_flow(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url, user=None, headers={"Cookie": f"scribeai_token={token_for('carol')}"})
    started = await client.call("start-session", {"sessionId": "orig", "userId": "carol", "title": "Standup"}, timeout=5)
    assert (started["sessionId"], started["status"]) == ("orig", "recording")
    # relative timestamps (ms since the recording started)
    for seq, ts in ((0, 0), (1, 15000)):
        assert (await client.call("audio-chunk", chunk("orig", seq, AUDIO, timestamp=ts), timeout=5))["duplicate"] is False
    paused = await client.call("pause-session", {"sessionId": "orig", "pausedAt": 1}, timeout=5)
    assert paused["status"] == "paused"
    resumed = await client.call("resume-session", {"sessionId": "orig", "resumedAt": 2}, timeout=5)
    assert resumed["status"] == "recording"
    assert await client.call("join", "session:orig", timeout=5) == {"room": "session:orig", "joined": True}
    assert await client.call("leave", "session:orig", timeout=5) == {"room": "session:orig", "joined": False}
    stopped = await client.call("stop-session", {"sessionId": "orig"}, timeout=5)
    assert (stopped["status"], stopped["totalChunks"]) == ("stopped", 2)
    wrong_user = await client.call("start-session", {"sessionId": "orig2", "userId": "dave"}, timeout=5)
    assert wrong_user["error"]["code"] == "forbidden"
    names = []
    while True:
        try:
            names.append((await client.receive(timeout=0.5))[0])
        except socketio.exceptions.TimeoutError:
            break
    assert names == ["session-started", "chunk-ack", "chunk-ack", "session-paused", "session-resumed",
                     "session-stopped", "session-error"]


async def test_pause_of_unknown_session_is_not_found(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    reply = await client.call("pause-session", {"sessionId": "nope"}, timeout=5)
    assert reply["error"]["code"] == "not_found"


async def test_twenty_recorders_thirty_chunks_each(server: RunningServer, connect: Any) -> None:
    async def record(i: int) -> list[bool]:
        client = await connect(server.url, user=f"user{i % 4}", namespace="/record" if i % 2 else "/")
        return [(await client.call("audio-chunk", chunk(f"rec-{i}", s, AUDIO + bytes([s])), timeout=10))["duplicate"]
                for s in range(30)]
    results = await asyncio.gather(*(record(i) for i in range(20)))
    assert all(d is False for r in results for d in r)
    for i in range(20):
        files = stored_files(server, f"rec-{i}")
        assert len(files) == 30
        assert files["rec-%d_0029.webm" % i] == AUDIO + bytes([29])


async def test_sessions_created_at_the_same_moment_are_all_created_and_owned_once(server: RunningServer, connect: Any) -> None:
    clients = [await connect(server.url, user=f"user{i}") for i in range(20)]
    rival = await connect(server.url, user="rival")
    batches_before = server.services.sessions.create_batches
    first_chunks = [c.call("audio-chunk", chunk(f"start-{i}", 0, AUDIO), timeout=10) for i, c in enumerate(clients)]
    contested = [c.call("audio-chunk", chunk("contested", 0, AUDIO), timeout=10) for c in (clients[0], rival)]
    acks = await asyncio.gather(*first_chunks, *contested)
    assert all("error" not in ack for ack in acks[:20]), acks[:20]
    outcomes = sorted("error" in ack and ack["error"]["code"] or "acked" for ack in acks[20:])
    assert outcomes == ["acked", "forbidden"]
    # Twenty-one new sessions at once took fewer transactions than sessions.
    assert server.services.sessions.create_batches - batches_before < 21
    for i in range(20):
        assert (await server.services.sessions.get_owned(f"start-{i}", f"user{i}")).user_id == f"user{i}"
    owner = "user0" if acks[20].get("duplicate") is False else "rival"
    row = await server.services.sessions.get_owned("contested", owner)
    assert row.user_id == owner
    assert list(stored_files(server, "contested")) == ["contested_0000.webm"]


async def test_websocket_declines_permessage_deflate(server: RunningServer) -> None:
    """Browsers offer deflate; opus does not compress, so the server declines it (and the socket works)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/socket.io/?EIO=4&transport=websocket", compress=15) as ws:
            assert ws.compress == 0
            opening = await ws.receive_str(timeout=5)
            assert opening.startswith('0{"sid":')


async def test_auth_none_lets_everyone_in_as_anonymous(start_server: Any, connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await start_server(auth="none")
    assert "SCRIBEAI_AUTH=none" in caplog.text
    client = await connect(server.url, user=None)
    ack = await client.call("audio-chunk", chunk("laptop", 0, AUDIO), timeout=5)
    assert ack["duplicate"] is False
    async with server.services.db.read() as s:
        from scribeai.models import RecordingSession

        row = await s.get(RecordingSession, "laptop")
    assert row is not None and row.user_id == "anonymous"
