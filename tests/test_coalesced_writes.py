"""The websocket's frames of one event-loop turn leave in one write of a real TCP transport, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from scribeai.transport import _CoalescedWrites


class CountingTransport:
    """Forwards to a real transport and records each write it is given."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_writes_of_one_turn_go_out_as_one_and_arrive_in_order() -> None:
    received = bytearray()
    got_all = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
            if received.endswith(b"|end"):
                got_all.set()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    counting = CountingTransport(writer.transport)  # type: ignore[arg-type]
    coalesced = _CoalescedWrites(counting)  # type: ignore[arg-type]
    try:
        coalesced.write(b"chunk-ack")  # the event, then the ack, in one turn
        coalesced.write(b"|ack")
        assert counting.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        assert counting.writes == [b"chunk-ack|ack"]
        coalesced.write(b"|end")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert counting.writes == [b"chunk-ack|ack", b"|end"]
        async with asyncio.timeout(5):
            await got_all.wait()
        assert bytes(received) == b"chunk-ack|ack|end"
        assert coalesced.get_extra_info("peername")[1] == port  # everything else is the transport's own
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_nothing_is_written_to_a_transport_that_closed_meanwhile() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    counting = CountingTransport(writer.transport)  # type: ignore[arg-type]
    coalesced = _CoalescedWrites(counting)  # type: ignore[arg-type]
    try:
        coalesced.write(b"late")
        writer.transport.close()  # an abnormal close in the same turn: asyncio would warn of a write after close
        assert coalesced.is_closing()
        await asyncio.sleep(0)
        assert counting.writes == []
    finally:
        server.close()
        await server.wait_closed()
