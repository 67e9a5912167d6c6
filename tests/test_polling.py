"""Long-polling clients get bursts whole: python-engineio's client decodes at most 16 packets from one polling
response and stopped polling on more, so a burst (joinSession replaying a transcript's segments) lost it."""

from __future__ import annotations

import asyncio

import pytest
import socketio
from engineio.payload import Payload

from tests.conftest import RunningServer, ServerFactory, token_for

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@SQLITE
async def test_a_burst_of_more_than_16_packets_reaches_a_python_polling_client(start_server: ServerFactory,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server: RunningServer = await start_server(ping_interval=1.0, ping_timeout=1.0)
    # The client's own limit, as in a process that never started a server (which raises it for POSTs: transport.py)
    monkeypatch.setattr(Payload, "max_decode_packets", 16)
    got: list[int] = []
    client = socketio.AsyncClient(reconnection=False)
    client.on("burst", lambda i: got.append(i))
    await client.connect(server.url, auth={"token": token_for("alice")}, transports=["polling"], wait_timeout=5)
    try:
        await asyncio.sleep(0.2)  # the client's long poll is waiting at the server
        sio = server.services.sio
        await asyncio.gather(*(sio.emit("burst", i, to=client.get_sid()) for i in range(40)))
        deadline = asyncio.get_running_loop().time() + 5
        while len(got) < 40 and client.connected:
            assert asyncio.get_running_loop().time() < deadline, f"{len(got)} of 40 arrived"
            await asyncio.sleep(0.05)
        assert (sorted(got), client.connected) == (list(range(40)), True)
    finally:
        await client.disconnect()
