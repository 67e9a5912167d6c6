"""Adjustments to python-engineio's aiohttp driver: whole polling bodies, flushed buffers, no websocket deflate."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio
from aiohttp import web
from engineio.async_drivers.aiohttp import WebSocket as _EngineWebSocket
from engineio.payload import Payload

# A recorder back from a network loss flushes every chunk it buffered in one POST (two Engine.IO
# packets per binary chunk); engineio refuses more than 16 packets per POST and drops the client.
# The POST's bytes stay capped by max_http_buffer_size.
POLLING_MAX_PACKETS = 1024


class _WholeBody:
    """engineio reads a POST with one `read(CONTENT_LENGTH)`; aiohttp's `read(n)` returns only what has
    arrived so far, so a body of more than a few hundred kB (a base64 audio chunk) was cut short."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            return bytes(await self._stream.read())
        try:
            return bytes(await self._stream.readexactly(n))
        except asyncio.IncompleteReadError as exc:  # the client went away mid-body
            return exc.partial


def fix_polling_posts(sio: socketio.AsyncServer) -> None:
    """Make this server read polling POST bodies whole and accept a flushed send buffer."""
    Payload.max_decode_packets = max(Payload.max_decode_packets, POLLING_MAX_PACKETS)
    translate = sio.eio._async["translate_request"]

    def translate_request(request: web.Request) -> dict[str, Any]:
        environ: dict[str, Any] = translate(request)
        environ["wsgi.input"] = _WholeBody(environ["wsgi.input"])
        return environ

    # a copy: the driver table is shared by every engineio server in the process
    sio.eio._async = {**sio.eio._async, "translate_request": translate_request}


class _UncompressedWebSocket(_EngineWebSocket):  # type: ignore[misc]
    """engineio's aiohttp websocket without permessage-deflate: opus does not compress, and inflating what
    browsers deflate cost about 1 ms of server CPU per chunk (scripts/bench_ingest.py --deflate)."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


def disable_websocket_compression(sio: socketio.AsyncServer) -> None:
    sio.eio._async = {**sio.eio._async, "websocket": _UncompressedWebSocket}
