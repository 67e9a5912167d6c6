"""Adjustments to python-engineio's aiohttp driver and python-socketio's packet decoding: whole (and chunked)
polling bodies, flushed buffers, no websocket deflate, bounded and well-formed incoming packets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import WSCloseCode, web
from engineio.async_drivers.aiohttp import WebSocket as _EngineWebSocket
from engineio.async_socket import AsyncSocket
from engineio.exceptions import ContentTooLongError, QueueEmpty
from engineio.payload import Payload
from socketio import packet as sio_packet

# A recorder back from a network loss flushes every chunk it buffered in one POST (two Engine.IO
# packets per binary chunk); engineio refuses more than 16 packets per POST and drops the client.
# The POST's bytes stay capped by max_http_buffer_size.
POLLING_MAX_PACKETS = 1024
# The most of a POST over the Engine.IO message limit that is read (and dropped) so that its client hears why it is
# closed, in multiples of the limit; past this its connection is cut.
OVERSIZE_DISCARD_FACTOR = 4
_TELLING: set[asyncio.Future[None]] = set()
# How long a closing websocket waits for the client's close frame (aiohttp: 10 s). A client still sending (a graceful
# stop closes every connection) may not answer in time: its stop then waited those 10 s.
WEBSOCKET_CLOSE_WAIT_S = 1.0
FAREWELL_WAIT_S = 2.0
FAREWELL_LINGER_S = 0.5  # how long a websocket closed for a message over the limit stays open for the client to read why  # how long a polling client closed for a message over the limit has to fetch the reason


class _WholeBody:
    """engineio reads a POST with one `read(CONTENT_LENGTH)`; aiohttp's `read(n)` returns only what has
    arrived so far, so a body of more than a few hundred kB (a base64 audio chunk) was cut short."""

    def __init__(self, stream: Any, chunked_limit: int | None = None,
                 oversize: Callable[[], Awaitable[None]] | None = None, discard: int = 0) -> None:
        self._stream = stream
        self._chunked_limit = chunked_limit  # a body without Content-Length: read to its end, up to this
        self._oversize = oversize  # a body over the message limit: read `discard` bytes of it, drop them, then this
        self._discard = discard

    async def read(self, n: int = -1) -> bytes:
        if self._oversize is not None:
            await self._drop_oversize()
            return b""
        if n == 0 and self._chunked_limit is not None:
            return await self._read_chunked(self._chunked_limit)
        if n < 0:
            return bytes(await self._stream.read())
        try:
            return bytes(await self._stream.readexactly(n))
        except asyncio.IncompleteReadError as exc:  # the client went away mid-body
            return exc.partial

    async def _drop_oversize(self) -> None:
        # Read to the end (the client sees its POST answered, not cut mid-upload), then tell it on its long poll.
        oversize, self._oversize = self._oversize, None
        left = self._discard
        while left > 0 and (piece := await self._stream.read(min(left, 1 << 20))):
            left -= len(piece)
        assert oversize is not None
        task = asyncio.ensure_future(oversize())
        _TELLING.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(_TELLING.discard)

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
        limit = int(sio.eio.max_http_buffer_size)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if request.method == "POST" and length > limit:
            eio_sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [""])[0]
            guard = _GUARDS.get(sio.eio)
            if guard is not None and eio_sid in sio.eio.sockets:
                # engineio would answer 400 and drop the session, and the client would learn nothing (socket.io-client
                # says "transport error"): the POST is answered, then the connection closed with the reason.
                environ["CONTENT_LENGTH"] = "0"
                environ["wsgi.input"] = _WholeBody(
                    environ["wsgi.input"], oversize=lambda: guard.oversize(eio_sid, length),
                    discard=length if length <= limit * OVERSIZE_DISCARD_FACTOR else 0)
                return environ
        chunked = "CONTENT_LENGTH" not in environ and request.body_exists
        environ["wsgi.input"] = _WholeBody(environ["wsgi.input"], limit if chunked else None)
        return environ

    # a copy: the driver table is shared by every engineio server in the process
    sio.eio._async = {**sio.eio._async, "translate_request": translate_request}


class _UncompressedWebSocket(_EngineWebSocket):  # type: ignore[misc]
    """engineio's aiohttp websocket without permessage-deflate: opus does not compress, and inflating what
    browsers deflate cost about 1 ms of server CPU per chunk (scripts/bench_ingest.py --deflate); its frames
    of one event-loop turn leave in one send (_CoalescedWrites)."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        self._sock = _LimitedWebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False,
                                               timeout=WEBSOCKET_CLOSE_WAIT_S)
        guard, engine_socket = _GUARDS.get(self.server), getattr(self.handler, "__self__", None)
        if guard is not None and engine_socket is not None:
            self._sock.farewell = lambda: guard.farewell(engine_socket.sid)
        await self._sock.prepare(environ["aiohttp.request"])
        writer = getattr(self._sock, "_writer", None)
        if writer is not None and getattr(writer, "transport", None) is not None:
            writer.transport = _CoalescedWrites(writer.transport)
        self.environ = environ
        await self.handler(self)
        return self._sock


class _LimitedWebSocketResponse(web.WebSocketResponse):
    """A websocket that says why it closes a client whose message is over the limit: aiohttp closes it with code 1009
    and no reason as soon as it reads the frame's header; here the client's namespaces first get `protocol-error`."""

    farewell: Callable[[], tuple[list[str], str]] | None = None  # (Engine.IO text frames, close reason)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        farewell, self.farewell = self.farewell, None
        if code == WSCloseCode.MESSAGE_TOO_BIG and farewell is not None and not self.closed:
            frames, reason = farewell()
            try:
                for frame in frames:
                    await self.send_str(frame)
            except (ConnectionError, RuntimeError):
                pass  # the client is gone already
            message = message or reason.encode()[:123]  # a close frame's reason holds at most 123 bytes
            # aiohttp's close below repeats the close frame: a client that has read the first one ignores it
            await self._farewell_close(code, message)
        coalesced = getattr(self._writer, "transport", None)
        if isinstance(coalesced, _CoalescedWrites):
            coalesced.write_through()
        return bool(await super().close(code=code, message=message, drain=drain))

    async def _farewell_close(self, code: int, message: bytes) -> None:
        """The reason and the close frame out now, then a moment for the client to read them: it is still sending the
        rest of its message, and aiohttp then closes a socket with those bytes unread, which resets the connection
        and drops what the client had not read yet."""
        coalesced = getattr(self._writer, "transport", None)
        if isinstance(coalesced, _CoalescedWrites):
            coalesced.write_through()
        try:
            assert self._writer is not None
            await self._writer.close(code, message)
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(FAREWELL_LINGER_S)


class _CoalescedWrites:
    """A transport whose writes of one event-loop turn go out as one: a chunk's `chunk-ack` event and its ack
    are two websocket frames written back to back, and each write was a send of its own waking the client.

    What is written waits only for the end of the current turn. A close frame is not held back past the
    close: aiohttp waits for the client's answer to it (turns of the loop) before closing the socket.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._through = False

    def write(self, data: bytes) -> None:
        if self._through:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush)
        self._held.append(data)

    def write_through(self) -> None:
        """From now on every write goes out at once, what is held first: a close that does not wait for the client's
        answer (a message over the limit) closes the socket in the same turn."""
        self._flush()
        self._through = True

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
# (eio_sid, the message's bytes or None when unknown) -> (the reason, the Engine.IO text frames that tell the client)
Oversize = Callable[[str, int | None], tuple[str, list[str]]]
_GUARDS: weakref.WeakKeyDictionary[Any, PacketGuard] = weakref.WeakKeyDictionary()  # by engineio server


class PacketGuard:
    """Every incoming Socket.IO message is dispatched or its connection closed with a reason, never left
    half-decoded; binary attachments held per connection stay under the Engine.IO message limit."""

    def __init__(self, sio: socketio.AsyncServer, refuse: Refuse, reserved: Reserved, too_big: Oversize) -> None:
        self.sio = sio
        self.refuse = refuse        # (eio_sid, reason): tell the client and close its connection
        self.reserved = reserved    # (sid, namespace, event): the answer to a reserved event name
        self.too_big = too_big      # a message over the Engine.IO limit: the reason, and the frames that say it
        self.max_buffered = int(sio.eio.max_http_buffer_size)
        self.buffered: dict[str, int] = {}
        self.closing: set[str] = set()
        self._message = sio._handle_eio_message
        self._disconnect = sio._handle_eio_disconnect
        self._event = sio._handle_event

    def __repr__(self) -> str:
        return f"PacketGuard(buffering={len(self.buffered)}, closing={len(self.closing)})"

    def install(self) -> None:
        _GUARDS[self.sio.eio] = self
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

    def farewell(self, eio_sid: str) -> tuple[list[str], str]:
        """A websocket message over the limit (its size unknown): the frames that tell the client, and the reason."""
        self.closing.add(eio_sid)
        reason, frames = self.too_big(eio_sid, None)
        return frames, reason

    async def oversize(self, eio_sid: str, size: int) -> None:
        """A polling POST over the limit: tell the client on its long poll, then close its connection."""
        if eio_sid in self.closing or eio_sid not in self.sio.eio.sockets:
            return
        self.closing.add(eio_sid)
        _reason, frames = self.too_big(eio_sid, size)
        for frame in frames:
            await self.sio.eio.send(eio_sid, frame[1:])  # without the Engine.IO message type: send() adds it
        # The disconnect goes in a later poll: socket.io-client hands an event to its socket a tick after it arrives,
        # and drops it when a disconnect came in the same response. The Engine.IO session is closed once the client
        # has read its disconnect (it closes it itself then), so that its last poll is not refused.
        await self._polled(eio_sid)
        for namespace in list(self.sio.manager.get_namespaces()):
            sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.sio.manager.is_connected(sid, namespace):
                await self.sio.disconnect(sid, namespace=namespace)
        await self._polled(eio_sid)
        if eio_sid in self.sio.eio.sockets:
            await self.sio.eio.disconnect(eio_sid)

    async def _polled(self, eio_sid: str) -> None:
        """Until the client has read what is queued for it (at most FAREWELL_WAIT_S)."""
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(socket.queue.join(), FAREWELL_WAIT_S)

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


def guard_packets(sio: socketio.AsyncServer, refuse: Refuse, reserved: Reserved, too_big: Oversize) -> PacketGuard:
    """Install a PacketGuard on this server (its engineio handlers and its packet class)."""
    guard = PacketGuard(sio, refuse, reserved, too_big)
    guard.install()
    return guard


# python-engineio's client decodes at most this many packets from one polling response and, given more, stops
# polling ("Too many packets in payload") until the server drops it for a ping timeout: a burst such as
# joinSession's replay of a transcript's segments lost every Python client on long-polling.
POLL_RESPONSE_MAX_PACKETS = 16  # engineio.payload.Payload.max_decode_packets, before fix_polling_posts raises it


def cap_polling_responses(sio: socketio.AsyncServer) -> None:
    """Each polling response carries at most POLL_RESPONSE_MAX_PACKETS packets; the rest leave with the next poll."""
    sio.eio.sockets = _CappedSockets(sio.eio.sockets)


class _CappedSockets(dict[str, Any]):
    """engineio's table of its sessions: each socket put in it polls at most POLL_RESPONSE_MAX_PACKETS at a time."""

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            socket.__class__ = _CappedPollSocket
        super().__setitem__(sid, socket)


class _CappedPollSocket(AsyncSocket):  # type: ignore[misc]
    async def poll(self) -> list[Any]:
        """engineio's own poll (wait for a packet, then take what else is queued), stopping at the cap."""
        try:
            packets = [await asyncio.wait_for(self.queue.get(), self.server.ping_interval + self.server.ping_timeout)]
            self.queue.task_done()
        except (asyncio.TimeoutError, asyncio.CancelledError):
            raise QueueEmpty() from None
        if packets == [None]:
            return []
        while len(packets) < POLL_RESPONSE_MAX_PACKETS:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            if pkt is None:  # the close marker: leave it for the writer
                self.queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets
