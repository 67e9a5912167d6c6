"""Adjustments to python-engineio's aiohttp driver and python-socketio's packet decoding: whole (and chunked)
polling bodies, flushed buffers, no websocket deflate, bounded and well-formed incoming packets."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from engineio.async_drivers.aiohttp import WebSocket as _EngineWebSocket
from engineio.exceptions import ContentTooLongError
from engineio.payload import Payload
from socketio import packet as sio_packet

# A recorder back from a network loss flushes every chunk it buffered in one POST (two Engine.IO
# packets per binary chunk); engineio refuses more than 16 packets per POST and drops the client.
# The POST's bytes stay capped by max_http_buffer_size.
POLLING_MAX_PACKETS = 1024


class _WholeBody:
    """engineio reads a POST with one `read(CONTENT_LENGTH)`; aiohttp's `read(n)` returns only what has
    arrived so far, so a body of more than a few hundred kB (a base64 audio chunk) was cut short."""

    def __init__(self, stream: Any, chunked_limit: int | None = None) -> None:
        self._stream = stream
        self._chunked_limit = chunked_limit  # a body without Content-Length: read to its end, up to this

    async def read(self, n: int = -1) -> bytes:
        if n == 0 and self._chunked_limit is not None:
            return await self._read_chunked(self._chunked_limit)
        if n < 0:
            return bytes(await self._stream.read())
        try:
            return bytes(await self._stream.readexactly(n))
        except asyncio.IncompleteReadError as exc:  # the client went away mid-body
            return exc.partial

    async def _read_chunked(self, limit: int) -> bytes:
        # engineio reads CONTENT_LENGTH bytes, which is 0 for `Transfer-Encoding: chunked`: the events were lost
        body = bytearray()
        while piece := await self._stream.read(65536):
            body += piece
            if len(body) > limit:
                raise ContentTooLongError()
        return bytes(body)


def fix_polling_posts(sio: socketio.AsyncServer) -> None:
    """Make this server read polling POST bodies whole and accept a flushed send buffer."""
    Payload.max_decode_packets = max(Payload.max_decode_packets, POLLING_MAX_PACKETS)
    translate = sio.eio._async["translate_request"]

    def translate_request(request: web.Request) -> dict[str, Any]:
        environ: dict[str, Any] = translate(request)
        chunked = "CONTENT_LENGTH" not in environ and request.body_exists
        environ["wsgi.input"] = _WholeBody(environ["wsgi.input"], sio.eio.max_http_buffer_size if chunked else None)
        return environ

    # a copy: the driver table is shared by every engineio server in the process
    sio.eio._async = {**sio.eio._async, "translate_request": translate_request}


class _UncompressedWebSocket(_EngineWebSocket):  # type: ignore[misc]
    """engineio's aiohttp websocket without permessage-deflate: opus does not compress, and inflating what
    browsers deflate cost about 1 ms of server CPU per chunk (scripts/bench_ingest.py --deflate); its frames
    of one event-loop turn leave in one send (_CoalescedWrites)."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        writer = getattr(self._sock, "_writer", None)
        if writer is not None and getattr(writer, "transport", None) is not None:
            writer.transport = _CoalescedWrites(writer.transport)
        self.environ = environ
        await self.handler(self)
        return self._sock


class _CoalescedWrites:
    """A transport whose writes of one event-loop turn go out as one: a chunk's `chunk-ack` event and its ack
    are two websocket frames written back to back, and each write was a send of its own waking the client.

    What is written waits only for the end of the current turn. A close frame is not held back past the
    close: aiohttp waits for the client's answer to it (turns of the loop) before closing the socket.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush)
        self._held.append(data)

    def _flush(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def disable_websocket_compression(sio: socketio.AsyncServer) -> None:
    sio.eio._async = {**sio.eio._async, "websocket": _UncompressedWebSocket}


def session_route(node_id: str) -> str:
    """The part of a node's name its Engine.IO session ids start with (the characters a URL keeps as they are)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", node_id)


def name_sessions_after(sio: socketio.AsyncServer, node_id: str) -> None:
    """Engine.IO session ids start with this node's name and a dot (`serve-a.<random>`), so a balancer can
    send every request of a session to the node that holds it, whoever left or came back in the meantime
    (deploy/nginx/scribeai.conf routes on it). A request for a session this node does not hold is a client's
    situation, not a server fault: it is logged once as a WARNING (engineio says ERROR), then at INFO."""
    route, generate = session_route(node_id), sio.eio.generate_id
    if route:
        sio.eio.generate_id = lambda: f"{route}.{generate()}"
    logger = logging.getLogger("engineio.server")
    if not any(isinstance(f, _UnknownSessionNotice) for f in logger.filters):
        logger.addFilter(_UnknownSessionNotice())


class _UnknownSessionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Invalid session"):
            sid = message.split()[2] if len(message.split()) > 2 else "?"
            record.msg = ("a request for Engine.IO session %s, which this node does not hold: the client reconnects "
                          "(its node restarted or is gone, or the balancer does not route by session: docs/deployment.md)")
            record.args = (sid,)
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# A client's packets may carry at most this many binary attachments (the seed's form has two arguments,
# one of them binary) and nest at most this deep: the decoder and the placeholder walk recurse.
MAX_ATTACHMENTS = 4
MAX_DEPTH = 32
RESERVED_EVENTS = ("connect", "disconnect", "connect_error")


class PacketRefused(ValueError):
    """An incoming packet that cannot be answered: its connection is closed with this reason."""


def _int_as_javascript(digits: str) -> int | float:
    # engineio refuses integers of more than 100 digits with a ValueError and the event went unanswered;
    # JavaScript reads them as (inexact or infinite) numbers, and the payload rules then answer `invalid`
    return int(digits) if len(digits) <= 100 else float(digits)


class _Json:
    """The JSON codec of incoming packets (socketio's Packet calls `json.loads` / `json.dumps`)."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text: str) -> Any:
        return json.loads(text, parse_int=_int_as_javascript)


class _GuardedPacket(sio_packet.Packet):  # type: ignore[misc]
    """socketio's packet, refusing too many attachments, deep nesting and placeholders that point nowhere."""

    json = _Json

    def decode(self, encoded_packet: Any) -> int:
        if not isinstance(encoded_packet, str):
            raise PacketRefused("unexpected binary frame: no binary packet is waiting for attachments")
        try:
            count = int(super().decode(encoded_packet) or 0)
        except RecursionError:
            raise PacketRefused(f"packet nested more than {MAX_DEPTH} levels deep") from None
        except (ValueError, TypeError) as exc:
            raise PacketRefused(f"malformed packet: {exc}") from None
        binary = self.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK)
        if binary and count == 0:
            raise PacketRefused("binary packet announces no attachments")
        if count > MAX_ATTACHMENTS:
            raise PacketRefused(f"packet announces {count} binary attachments; at most {MAX_ATTACHMENTS}")
        placeholders = _walk(self.data)
        if binary:
            bad = [num for num in placeholders if not _is_index(num, count)]
            if bad:
                raise PacketRefused(f"placeholder num {bad[0]!r} is not one of the {count} attachments")
        return count

    def add_attachment(self, attachment: Any) -> bool:
        if not isinstance(attachment, bytes):
            raise PacketRefused("expected a binary attachment, got a text frame")
        return bool(super().add_attachment(attachment))


def _walk(data: Any) -> list[Any]:
    """The `num` of every placeholder in `data`, without recursion; PacketRefused when nested too deep."""
    nums: list[Any] = []
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if item.get("_placeholder") and "num" in item:
                nums.append(item["num"])
                continue
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise PacketRefused(f"packet nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)
    return nums


def _is_index(num: Any, count: int) -> bool:
    return isinstance(num, int) and not isinstance(num, bool) and 0 <= num < count


Refuse = Callable[[str, str], Awaitable[None]]
Reserved = Callable[[str, str, str], Awaitable[Any]]


class PacketGuard:
    """Every incoming Socket.IO message is dispatched or its connection closed with a reason, never left
    half-decoded; binary attachments held per connection stay under the Engine.IO message limit."""

    def __init__(self, sio: socketio.AsyncServer, refuse: Refuse, reserved: Reserved) -> None:
        self.sio = sio
        self.refuse = refuse        # (eio_sid, reason): tell the client and close its connection
        self.reserved = reserved    # (sid, namespace, event): the answer to a reserved event name
        self.max_buffered = int(sio.eio.max_http_buffer_size)
        self.buffered: dict[str, int] = {}
        self.closing: set[str] = set()
        self._message = sio._handle_eio_message
        self._disconnect = sio._handle_eio_disconnect
        self._event = sio._handle_event

    def __repr__(self) -> str:
        return f"PacketGuard(buffering={len(self.buffered)}, closing={len(self.closing)})"

    def install(self) -> None:
        self.sio.packet_class = _GuardedPacket
        self.sio._handle_event = self._handle_event  # called by _handle_eio_message for (binary) events
        self.sio.eio.on("message", self._handle_message)
        self.sio.eio.on("disconnect", self._handle_disconnect)

    async def _handle_message(self, eio_sid: str, data: Any) -> None:
        if eio_sid in self.closing:
            return
        try:
            if eio_sid in self.sio._binary_packet:
                self._count_attachment(eio_sid, data)
            try:
                await self._message(eio_sid, data)
            except RecursionError:
                raise PacketRefused(f"packet nested more than {MAX_DEPTH} levels deep") from None
            if eio_sid not in self.sio._binary_packet:
                self.buffered.pop(eio_sid, None)
        except PacketRefused as exc:
            await self._close(eio_sid, str(exc))
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # socketio's own refusals of a packet
            await self._close(eio_sid, f"malformed packet: {exc}")

    def _count_attachment(self, eio_sid: str, data: Any) -> None:
        total = self.buffered.get(eio_sid, 0) + (len(data) if isinstance(data, (bytes, str)) else 0)
        if total > self.max_buffered:
            raise PacketRefused(f"binary attachments of one packet exceed {self.max_buffered} bytes")
        self.buffered[eio_sid] = total

    async def _close(self, eio_sid: str, reason: str) -> None:
        self.closing.add(eio_sid)
        self.sio._binary_packet.pop(eio_sid, None)
        self.buffered.pop(eio_sid, None)
        socket = self.sio.eio.sockets.get(eio_sid)
        await self.refuse(eio_sid, reason)
        if socket is not None and socket.upgraded:
            # engineio's websocket writer otherwise waits for the client to close (or a ping timeout)
            socket.queue.put_nowait(None)

    async def _handle_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self.sio._binary_packet.pop(eio_sid, None)  # socketio kept a half-received packet after the client left
        self.buffered.pop(eio_sid, None)
        self.closing.discard(eio_sid)
        await self._disconnect(eio_sid, reason)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise PacketRefused("an event must be an array that starts with the event's name")
        if data[0] not in RESERVED_EVENTS:
            await self._event(eio_sid, namespace, id, data)
            return
        namespace = namespace or "/"
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.sio.manager.is_connected(sid, namespace):
            return
        answer = await self.reserved(sid, namespace, data[0])
        if id is not None:
            await self.sio._send_packet(eio_sid, self.sio.packet_class(sio_packet.ACK, namespace=namespace, id=id,
                                                                       data=[answer]))


def guard_packets(sio: socketio.AsyncServer, refuse: Refuse, reserved: Reserved) -> PacketGuard:
    """Install a PacketGuard on this server (its engineio handlers and its packet class)."""
    guard = PacketGuard(sio, refuse, reserved)
    guard.install()
    return guard
