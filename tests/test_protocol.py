"""Wire payloads: what the server fills in when the client leaves a field out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import socketio

from scribeai import protocol
from tests.conftest import RunningServer
from tests.test_transcription import HELLO

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def test_a_chunk_without_a_timestamp_gets_the_servers_clock_in_whole_ms() -> None:
    chunk = protocol.parse_chunk(({"sessionId": "s1", "sequence": 0, "audio": b"\x1a\x45\xdf\xa3"},),
                                 max_bytes=1000, now_ms=1_733_590_000_123.456)
    assert chunk.timestamp_ms == 1_733_590_000_123
    sent = protocol.parse_chunk(({"sessionId": "s1", "sequence": 0, "timestamp": 12.5, "audio": b"x"},),
                                max_bytes=1000, now_ms=1_733_590_000_123.456)
    assert sent.timestamp_ms == 12.5  # what a client sends is kept as it is


@SQLITE
async def test_the_ack_of_a_chunk_sent_without_a_timestamp_has_whole_ms(
        server: RunningServer, connect: Callable[..., Awaitable[socketio.AsyncSimpleClient]]) -> None:
    client = await connect(server.url)
    before = time.time() * 1000
    ack = await client.call("audio-chunk", {"sessionId": "no-clock", "sequence": 0, "mimeType": "audio/wav", "audio": HELLO},
                            timeout=5)
    after = time.time() * 1000
    assert ack["timestamp"] == int(ack["timestamp"])
    assert round(before) <= ack["timestamp"] <= round(after)
