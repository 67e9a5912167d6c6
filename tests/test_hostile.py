"""Hostile input over raw Engine.IO/Socket.IO frames: every event is answered or its connection closed with a
reason; the server stays healthy, serves others, and stores nothing it did not ack (issue "Hardening")."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningServer, chunk, token_for

AUDIO = os.urandom(2048)
B64 = base64.b64encode(AUDIO).decode()
META = '"sessionId":"evil","sequence":0,"mimeType":"audio/webm"'


class Raw:
    """A Socket.IO client made of raw websocket frames; answers the server's pings."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, user: str = "alice") -> Raw:
        ws = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
        raw = cls(ws)
        opened = await raw.next()
        assert isinstance(opened, str) and opened.startswith("0{")
        await ws.send_str("40" + json.dumps({"token": token_for(user)}))
        connected = await raw.next()
        assert isinstance(connected, str) and connected.startswith("40{")
        return raw

    async def next(self, timeout: float = 5) -> str | bytes | None:
        """The next Socket.IO frame, or None once the server closed the connection."""
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":
                    await self.ws.send_str("3")
                    continue
                return str(msg.data)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return bytes(msg.data)
            return None

    async def frames_until_closed(self, timeout: float = 5) -> list[str | bytes]:
        seen: list[str | bytes] = []
        while (frame := await self.next(timeout)) is not None:
            seen.append(frame)
        return seen

    async def answer(self, ack_id: int, timeout: float = 5) -> tuple[Any, list[Any]]:
        """The ack `ack_id` (the first argument) and the events seen before it."""
        events: list[Any] = []
        while True:
            frame = await self.next(timeout)
            assert isinstance(frame, str), f"connection closed or binary frame before ack {ack_id}: {frame!r}"
            if frame.startswith(f"43{ack_id}["):
                return json.loads(frame[2 + len(str(ack_id)):])[0], events
            if frame.startswith("42["):
                events.append(json.loads(frame[2:]))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def stored(server: RunningServer) -> list[str]:
    folder = Path(server.settings.storage_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def assert_healthy(server: RunningServer, http: aiohttp.ClientSession, connect: Any, acked: list[str]) -> None:
    async with http.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    other = await connect(server.url, user="bob")
    ack = await other.call("audio-chunk", chunk("other-client", 0, AUDIO), timeout=5)
    assert ack["duplicate"] is False
    assert stored(server) == sorted([*acked, "other-client"])
    assert server.services.sio._binary_packet == {}


PLACEHOLDER = '{"_placeholder":true,"num":0}'


def nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


def closes_with_reason(frames: list[str | bytes], words: str) -> None:
    errors = [json.loads(f[2:]) for f in frames if isinstance(f, str) and f.startswith('42["protocol-error"')]
    assert len(errors) == 1, frames
    assert errors[0][1]["code"] == "invalid"
    assert words in errors[0][1]["message"]
    assert "41" in frames  # the Socket.IO disconnect, then the websocket closes


HOSTILE = [
    pytest.param([f'451-1["audio-chunk",{{{META},"audio":{nested(600, PLACEHOLDER)}}}]', b"\x01"],
                 "levels deep", id="binary-600-deep"),
    pytest.param([f'451000-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":0}}}}]'],
                 "1000 binary attachments", id="1000-attachments-none-sent"),
    pytest.param([f'451-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":7}}}}]', b"\x01"],
                 "placeholder num 7", id="placeholder-out-of-range"),
    pytest.param([f'451-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":-1}}}}]', b"\x01"],
                 "placeholder num -1", id="placeholder-negative"),
    pytest.param([f'421["audio-chunk",{nested(10_000, "")}]'], "levels deep", id="json-10k-deep"),
    pytest.param(["42" + "9" * 120 + f'["audio-chunk",{{{META},"audio":"{B64}"}}]'], "malformed packet",
                 id="ack-id-120-digits"),
    pytest.param([b"\x01\x02"], "unexpected binary frame", id="binary-frame-alone"),
    pytest.param(['421{"not":"an array"}'], "array", id="event-not-an-array"),
    pytest.param(["45-1[\"audio-chunk\",{}]"], "malformed packet", id="binary-without-count"),
]


@pytest.mark.parametrize(("frames", "words"), HOSTILE)
async def test_unanswerable_packet_closes_the_connection_with_a_reason(
        server: RunningServer, http: aiohttp.ClientSession, connect: Any, frames: list[str | bytes], words: str) -> None:
    raw = await Raw.open(http, server.url)
    for frame in frames:
        await (raw.ws.send_str(frame) if isinstance(frame, str) else raw.ws.send_bytes(frame))
    await raw.ws.send_str(f'422["audio-chunk",{{{META},"audio":"{B64}"}}]')  # never processed after the reason
    closes_with_reason(await raw.frames_until_closed(), words)
    await assert_healthy(server, http, connect, acked=[])


async def test_big_integers_are_answered(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    raw = await Raw.open(http, server.url)
    big = "9" * 400
    for field in ("sequence", "timestamp", "size", "durationMs"):
        payload = {"sessionId": "evil", "sequence": 0, "audio": B64}
        text = json.dumps(payload).replace('"sequence": 0', f'"sequence": 0, "{field}": {big}' if field != "sequence"
                                           else f'"sequence": {big}')
        await raw.ws.send_str(f'421["audio-chunk",{text}]')
        reply, events = await raw.answer(1)
        assert reply["error"]["code"] == "invalid", field
        assert reply["error"]["details"] == {"field": field}
        assert events[-1][0] == "chunk-error"
    await assert_healthy(server, http, connect, acked=[])


async def test_attachment_bytes_are_bounded(start_server: Any, http: aiohttp.ClientSession, connect: Any) -> None:
    server = await start_server(max_chunk_bytes=1024 * 1024)
    limit = server.settings.engineio_max_message_bytes
    raw = await Raw.open(http, server.url)
    slots = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(4))
    await raw.ws.send_str(f'454-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":0}}}},[{slots}]]')
    mib = b"\0" * (1024 * 1024)
    for _ in range(limit // len(mib) + 1):
        await raw.ws.send_bytes(mib)
    closes_with_reason(await raw.frames_until_closed(), f"exceed {limit} bytes")
    await assert_healthy(server, http, connect, acked=[])


async def test_nine_billion_attachments_are_refused(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    raw = await Raw.open(http, server.url)
    await raw.ws.send_str(f'459999999999-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":0}}}}]')
    for _ in range(3):
        await raw.ws.send_bytes(b"\0" * 65536)
    closes_with_reason(await raw.frames_until_closed(), "9999999999 binary attachments")
    await assert_healthy(server, http, connect, acked=[])


async def test_a_half_received_packet_is_freed_when_its_client_leaves(
        server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    raw = await Raw.open(http, server.url)
    await raw.ws.send_str(f'452-1["audio-chunk",{{{META},"audio":{{"_placeholder":true,"num":0}}}},'
                          '{"_placeholder":true,"num":1}]')
    await raw.ws.send_bytes(b"\0" * 65536)
    await raw.ws.close()
    realtime = server.services.realtime
    for _ in range(200):
        if not realtime.connections:
            break
        await asyncio.sleep(0.02)
    assert realtime.connections == {}
    await assert_healthy(server, http, connect, acked=[])


@pytest.mark.parametrize("user_id", [42, {"id": "alice"}, ["alice"], True])
async def test_user_id_of_the_wrong_type_is_refused_by_every_event(
        server: RunningServer, http: aiohttp.ClientSession, connect: Any, user_id: Any) -> None:
    client = await connect(server.url)
    reply = await client.call("audio-chunk", chunk("typed", 0, AUDIO, userId=user_id), timeout=5)
    assert reply["error"]["code"] == "invalid"
    assert reply["error"]["details"] == {"field": "userId"}
    started = await client.call("start-session", {"sessionId": "typed", "userId": user_id}, timeout=5)
    assert started["error"]["code"] == reply["error"]["code"]
    assert started["error"]["message"] == reply["error"]["message"]
    for event in ("audio-chunk", "start-session"):
        other = await client.call(event, chunk("typed", 0, AUDIO, userId="mallory"), timeout=5)
        assert other["error"]["code"] == "forbidden"
    await assert_healthy(server, http, connect, acked=[])


async def test_chunked_polling_post_is_processed(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as response:
        sid = json.loads((await response.text())[1:])["sid"]
    url = f"{base}&sid={sid}"

    async def post(body: str) -> int:
        async def pieces() -> AsyncIterator[bytes]:
            data = body.encode()
            for i in range(0, len(data), 1000):
                yield data[i:i + 1000]
        async with http.post(url, data=pieces(), headers={"Content-Type": "text/plain"}) as response:
            assert "Content-Length" not in response.request_info.headers
            assert response.request_info.headers["Transfer-Encoding"] == "chunked"
            return response.status

    assert await post("40" + json.dumps({"token": token_for("alice")})) == 200
    async with http.get(url) as response:
        assert (await response.text()).startswith("40{")
    assert await post(f'421["audio-chunk",{{{META},"audio":"{B64}"}}]') == 200
    async with http.get(url) as response:
        packets = (await response.text()).split("\x1e")
    acks = [json.loads(p[3:])[0] for p in packets if p.startswith("431[")]
    assert len(acks) == 1 and acks[0]["duplicate"] is False
    await assert_healthy(server, http, connect, acked=["evil"])


@pytest.mark.parametrize("event", ["disconnect", "connect", "connect_error"])
async def test_reserved_events_from_clients_are_refused(
        server: RunningServer, http: aiohttp.ClientSession, connect: Any, event: str) -> None:
    raw = await Raw.open(http, server.url, user="alice")
    await raw.ws.send_str(f'421["{event}",{json.dumps({"token": token_for("bob")})}]')
    reply, events = await raw.answer(1)
    assert reply["error"]["code"] == "invalid"
    assert "reserved" in reply["error"]["message"]
    assert events == [["protocol-error", reply["error"]]]
    # still alice, still connected
    await raw.ws.send_str(f'422["audio-chunk",{{{META},"userId":"alice","audio":"{B64}"}}]')
    ack, _ = await raw.answer(2)
    assert ack["duplicate"] is False
    assert [conn.user_id for conn in server.services.realtime.connections.values()] == ["alice"]
    await assert_healthy(server, http, connect, acked=["evil"])


async def test_join_with_last_seq_minus_one(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    client = await connect(server.url)
    joined = await client.call("joinSession", {"sessionId": "empty", "lastSeq": -1}, timeout=5)
    assert (joined["maxSeq"], joined["totalChunks"], joined["missing"]) == (-1, 0, [])


async def test_session_errors_name_their_event(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    client = await connect(server.url)
    bad = await client.call("joinSession", {"sessionId": "empty", "lastSeq": -2}, timeout=5)
    assert bad["error"]["error"] == "Invalid joinSession data"
    assert bad["error"]["message"] == "lastSeq must be an integer >= -1"
    assert bad["error"]["details"] == {"field": "lastSeq"}
    bad = await client.call("pause-session", {"sessionId": "no such id!"}, timeout=5)
    assert bad["error"]["error"] == "Invalid pause-session data"
    assert bad["error"]["details"] == {"field": "sessionId"}
    await assert_healthy(server, http, connect, acked=[])


@pytest.mark.parametrize("event", ["no-such-event", "chunk-ack", "x" * 5000])
async def test_events_without_a_handler_are_answered(
        server: RunningServer, http: aiohttp.ClientSession, connect: Any, event: str) -> None:
    raw = await Raw.open(http, server.url, user="alice")
    await raw.ws.send_str(f'421[{json.dumps(event)},{{"sessionId":"evil"}}]')  # with an ack: the ack says why
    reply, events = await raw.answer(1)
    assert (reply["error"]["code"], reply["error"]["error"]) == ("invalid", "Unknown event")
    assert "unknown event" in reply["error"]["message"] and "audio-chunk" in reply["error"]["message"]
    assert len(reply["error"]["message"]) < 400  # a 5000-character name is not echoed whole
    assert events == [["protocol-error", reply["error"]]]
    await raw.ws.send_str(f'42[{json.dumps(event)}]')  # without an ack: the protocol-error event alone
    await raw.ws.send_str(f'422["audio-chunk",{{{META},"audio":"{B64}"}}]')  # and the connection still works
    ack, events = await raw.answer(2)
    assert ack["duplicate"] is False
    assert [name for name, _ in events] == ["protocol-error", "chunk-ack"]
    await assert_healthy(server, http, connect, acked=["evil"])


async def test_extra_arguments_are_ignored(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> None:
    raw = await Raw.open(http, server.url, user="alice")
    await raw.ws.send_str('421["joinSession",{"sessionId":"extra","lastSeq":-1},"more",{"and":"more"}]')
    reply, _ = await raw.answer(1)
    assert (reply["sessionId"], reply["maxSeq"]) == ("extra", -1)  # was internal: a TypeError for the extra arguments
    await raw.ws.send_str('422["pause-session",{"sessionId":"extra"},1,2,3]')
    reply, _ = await raw.answer(2)
    assert "error" not in reply, reply
    await assert_healthy(server, http, connect, acked=[])
