"""Socket.IO edge: thin handlers registered identically on "/" and "/record"."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import socketio
from socketio import packet as sio_packet

from scribeai import protocol
from scribeai.auth import Authenticator, token_from_handshake
from scribeai.backpressure import LOW_WATERMARK, BackpressureState, Decision, Limits, Reading
from scribeai.errors import InvalidInput, Overloaded, ScribeError, TooLarge, Unauthorized, Unavailable, error_body
from scribeai.idempotency import ChunkIngest, classify_fault
from scribeai.models import ChunkStatus, SessionStatus
from scribeai.metrics import Metrics
from scribeai.monitor import ProcessMonitor
from scribeai.sessions import SessionService
from scribeai.settings import Settings
from scribeai.transcription.captions import VIEWER_RENEW_S, VIEWER_TTL_S
from scribeai.transport import guard_packets

log = logging.getLogger(__name__)
NAMESPACES = ("/", "/record")
ANSWER_WAIT_S = 0.5  # a graceful stop's wait for handlers to send their answers before connections close
PROTOCOL_ERROR = "protocol-error"  # a packet that cannot be answered: sent just before the connection is closed
Handler = Callable[..., Awaitable[Any]]


@dataclass
class Connection:
    sid: str
    namespace: str
    user_id: str
    eio_sid: str
    backpressure: BackpressureState
    pending: set[str] = field(default_factory=set)  # chunk ids stored here, not yet transcribed
    in_flight: int = 0                               # chunks received, not yet answered
    slowed: bool = False

    def __repr__(self) -> str:
        return f"Connection({self.namespace}{self.sid}, user={self.user_id!r}, pending={len(self.pending)}, {self.backpressure.state})"


class TranscriptionSide(Protocol):
    """What the edge needs from the transcription pipeline."""

    backlog: int

    def notify(self) -> None: ...
    def recent_latency_ms(self) -> float: ...
    async def segments_after(self, session_id: str, last_seq: int | None) -> list[dict[str, Any]]: ...
    async def check_completed(self, session_id: str) -> None: ...
    async def session_changed(self, session_id: str) -> None: ...
    async def read_already(self, chunk_ids: list[str]) -> list[str]: ...
    async def watch(self, session_ids: list[str], for_s: float) -> None: ...


class Realtime:
    """Per-connection state and the event handlers; the core work lives in ChunkIngest and SessionService."""

    def __init__(self, sio: socketio.AsyncServer, settings: Settings, auth: Authenticator, ingest: ChunkIngest,
                 sessions: SessionService, monitor: ProcessMonitor, pipeline: TranscriptionSide, metrics: Metrics) -> None:
        self.sio = sio
        self.settings = settings
        self.auth = auth
        self.ingest = ingest
        self.sessions = sessions
        self.monitor = monitor
        self.pipeline = pipeline
        self.metrics = metrics
        self.limits = Limits(settings.max_queue_size, settings.memory_threshold, settings.max_socket_buffer,
                             settings.max_processing_latency_ms)
        self.connections: dict[tuple[str, str], Connection] = {}
        self._pending_owner: dict[str, Connection] = {}
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight_total = 0
        self._refused_stopping = 0  # chunks answered `unavailable` since the stop began
        self._answering = 0  # handlers running: their answers are not sent yet
        self._stopped = False
        self._replays: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = {}
        self._captioned: dict[str, set[tuple[str, str]]] = {}  # session -> (namespace, sid) joined with interim: true
        self._captions_renewed = time.monotonic()

    def __repr__(self) -> str:
        return f"Realtime(connections={len(self.connections)}, in_flight={self._in_flight_total})"

    def register(self) -> None:
        events: dict[str, tuple[Handler, str]] = {
            "audio-chunk": (self.on_audio_chunk, "chunk-error"),
            "audioChunk": (self.on_audio_chunk, "chunk-error"),
            "joinSession": (self.on_join_session, "session-error"),
            "stopSession": (self.on_stop_session, "session-error"),
            "start-session": (self.on_start_session, "session-error"),
            "pause-session": (self.on_pause_session, "session-error"),
            "resume-session": (self.on_resume_session, "session-error"),
            "stop-session": (self.on_stop_session_original, "session-error"),
            "join": (self.on_join_room, "session-error"),
            "leave": (self.on_leave_room, "session-error"),
        }
        guard_packets(self.sio, self._refuse_connection, self._reserved_event, self._message_too_large)
        engineio_log = logging.getLogger("engineio.server")
        if not any(isinstance(f, _ClosedSessionNotice) for f in engineio_log.filters):
            engineio_log.addFilter(_ClosedSessionNotice())
        for namespace in NAMESPACES:
            self.sio.on("connect", self._connect_handler(namespace), namespace=namespace)
            self.sio.on("disconnect", self._disconnect_handler(namespace), namespace=namespace)
            for event, (fn, error_event) in events.items():
                self.sio.on(event, self._wrap(namespace, event, fn, error_event), namespace=namespace)
            self.sio.on("*", self._unknown_event_handler(namespace, sorted(events)), namespace=namespace)

    # -- connection lifecycle -------------------------------------------------

    def _connect_handler(self, namespace: str) -> Handler:
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            if not self.accepting:
                raise socketio.exceptions.ConnectionRefusedError(
                    "server is shutting down", {"code": "unavailable", "message": "server is shutting down"})
            request = environ.get("aiohttp.request")
            headers = dict(request.headers) if request is not None else {}
            token = token_from_handshake(auth, environ.get("QUERY_STRING", ""), headers)
            try:
                user_id = self.auth.user_of(token)
            except Unauthorized as exc:
                log.info("refused connection %s on %s: %s", sid, namespace, exc.message, extra={"sid": sid})
                self.metrics.refused_total.labels(exc.code).inc()
                raise socketio.exceptions.ConnectionRefusedError(
                    exc.message, {"code": exc.code, "message": exc.message}) from None
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, namespace) or ""
            self.connections[(namespace, sid)] = Connection(sid, namespace, user_id, eio_sid, BackpressureState(self.limits))
            self._count("connections_opened")
            self.metrics.connections_total.inc()
            log.info("connected %s on %s as %s", sid, namespace, user_id, extra={"sid": sid, "userId": user_id})
        return connect

    def _disconnect_handler(self, namespace: str) -> Handler:
        async def disconnect(sid: str, reason: Any = None) -> None:
            conn = self.connections.pop((namespace, sid), None)
            self._stop_captions(namespace, sid)
            if conn is not None:
                for chunk_id in conn.pending:
                    self._pending_owner.pop(chunk_id, None)
            log.info("disconnected %s on %s (%s)", sid, namespace, reason, extra={"sid": sid})
        return disconnect

    async def _refuse_connection(self, eio_sid: str, reason: str) -> None:
        """A packet that cannot be decoded or held: say why on every namespace, then close the connection."""
        body = _error_body(InvalidInput(reason), PROTOCOL_ERROR, "Invalid packet")
        # While stopping, a chunk's attachment that arrives after its namespace was disconnected lands here.
        log.log(logging.INFO if self.accepting else logging.DEBUG, "closing connection %s: %s", eio_sid, reason,
                extra={"sid": eio_sid, "code": body["code"]})
        self._count(f"{PROTOCOL_ERROR}:{body['code']}")
        for namespace in NAMESPACES:
            sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.sio.manager.is_connected(sid, namespace):
                await self.sio.emit(PROTOCOL_ERROR, body, to=sid, namespace=namespace)
                await self.sio.disconnect(sid, namespace=namespace)
        await self.sio.eio.disconnect(eio_sid)

    def _message_too_large(self, eio_sid: str, size: int | None) -> tuple[str, list[str]]:
        """A message over the Engine.IO limit (its connection is closed): the close reason, and the Engine.IO frames of
        the protocol-error that tells each of the client's namespaces why."""
        limit, answered = self.settings.engineio_max_message_bytes, self.settings.too_large_answer_bytes
        what = f"a message of {size} bytes" if size is not None else "a message"
        exc = TooLarge(f"{what} is over this server's limit of {limit} bytes per message, so the connection is closed; "
                       f"a chunk of up to {answered} bytes is answered chunk-error too_large, and MAX_CHUNK_BYTES "
                       f"({self.settings.max_chunk_bytes}) is the largest stored", limit=limit,
                       **({} if size is None else {"size": size}))
        body = _error_body(exc, PROTOCOL_ERROR, "Message too large")
        log.info("closing connection %s: %s", eio_sid, exc.message, extra={"sid": eio_sid, "code": exc.code})
        self._count(f"{PROTOCOL_ERROR}:{exc.code}")
        frames = []
        for namespace in NAMESPACES:
            sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.sio.manager.is_connected(sid, namespace):
                encoded = self.sio.packet_class(sio_packet.EVENT, namespace=namespace, data=[PROTOCOL_ERROR, body]).encode()
                frames.append("4" + str(encoded))
        return f"message over the server's limit of {limit} bytes", frames

    async def _reserved_event(self, sid: str, namespace: str, event: str) -> dict[str, Any]:
        """connect/disconnect/connect_error are the server's lifecycle: a client emitting one is refused."""
        body = _error_body(InvalidInput(f'"{event}" is a reserved event; clients may not emit it', event=event),
                           event, "Reserved event")
        self._count(f"{PROTOCOL_ERROR}:{body['code']}")
        log.info("%s from %s refused: reserved event", event, sid, extra={"sid": sid})
        await self.sio.emit(PROTOCOL_ERROR, body, to=sid, namespace=namespace)
        return {"error": body}

    def _unknown_event_handler(self, namespace: str, known: list[str]) -> Handler:
        """An event no handler takes is answered too (ack and protocol-error), and the connection stays open."""
        async def unknown(event: Any, sid: str, *args: Any) -> dict[str, Any]:
            if (namespace, sid) not in self.connections:
                return {"error": {"code": "unauthorized", "message": "not connected"}}
            name = str(event)
            shown = name if len(name) <= 64 else name[:64] + "…"
            exc = InvalidInput(f"unknown event {shown!r}; this server handles {', '.join(known)}", event=shown)
            body = _error_body(exc, shown, "Unknown event")
            self._count(f"{PROTOCOL_ERROR}:unknown_event")
            log.info("unknown event %r from %s answered invalid", shown, sid, extra={"sid": sid})
            await self.sio.emit(PROTOCOL_ERROR, body, to=sid, namespace=namespace)
            return {"error": body}
        return unknown

    def _wrap(self, namespace: str, event: str, fn: Handler, error_event: str) -> Handler:
        """Every path answers: the reply goes to the ack callback and, for errors, out as an event too."""
        # Handlers of one payload ignore any further arguments a client sends (socket.io lets it send several).
        variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())

        async def handle(sid: str, *args: Any) -> Any:
            conn = self.connections.get((namespace, sid))
            if conn is None:
                return {"error": {"code": "unauthorized", "message": "not connected"}}
            self._answering += 1
            try:
                return await answer(conn, sid, args)
            finally:
                self._answering -= 1

        async def answer(conn: Connection, sid: str, args: tuple[Any, ...]) -> Any:
            context = protocol.context_of(args[0] if args else None)
            try:
                return await fn(conn, *(args if variadic else args[:1]))
            except ScribeError as exc:
                body = _error_body(exc, event, _short_error(exc, event, error_event), **context)
            except Exception as exc:
                # The database or the disk refusing (a new session's row on a locked database, say) is retryable.
                fault = classify_fault(exc)
                if fault is not None:
                    body = _error_body(fault, event, _short_error(fault, event, error_event), **context)
                else:
                    log.exception("%s from %s failed", event, sid, extra={"sid": sid, **_log_context(context)})
                    internal = ScribeError("internal error; the chunk was not stored" if error_event == "chunk-error"
                                           else f"internal error; {event} was not applied")
                    body = _error_body(internal, event, _short_error(internal, event, error_event), **context)
            self._count(f"{error_event}:{body['code']}")
            if error_event == "chunk-error":
                self.metrics.chunk_errors_total.labels(body["code"]).inc()
            # While stopping, refusals are counted and summed up in one line at the end (a recorder resending at
            # once was 21,426 lines in one stop).
            level = logging.DEBUG if not self.accepting and body["code"] == "unavailable" else logging.INFO
            log.log(level, "%s from %s answered %s: %s", event, sid, body["code"], body["message"],
                    extra={"sid": sid, "code": body["code"], **_log_context(context)})
            await self._tell(conn, error_event, body)
            return {"error": body}
        return handle

    # -- audio ----------------------------------------------------------------

    async def on_audio_chunk(self, conn: Connection, *args: Any) -> dict[str, Any]:
        if not self.accepting:
            # Answered at once, never stored: not in flight, so a recorder that resends at once cannot hold the stop.
            self._refused_stopping += 1
            raise Unavailable("server is shutting down; resend after reconnecting")
        self._begin()
        conn.in_flight += 1
        started = time.perf_counter()
        try:
            ack = await self._store(conn, args)
            self.metrics.ack_seconds.observe(time.perf_counter() - started)
            return ack
        finally:
            conn.in_flight -= 1
            self._end()

    async def _store(self, conn: Connection, args: tuple[Any, ...]) -> dict[str, Any]:
        chunk = protocol.parse_chunk(args, max_bytes=self.settings.max_chunk_bytes, now_ms=time.time() * 1000)
        protocol.check_user_id(chunk.user_id, conn.user_id)
        decision = await self._assess(conn)
        if not decision.admit:
            raise Overloaded(f"server over its hard limit ({decision.reason}); resend later",
                             retry_after_ms=decision.retry_after_ms or 1000)
        # A session's first chunk (here): its row is created, or its owner read, in the chunk's own commit.
        claim = None if self.sessions.admitted(chunk.session_id, conn.user_id) else conn.user_id
        result = await self.ingest.store_chunk(chunk, claim=claim)
        if not result.duplicate and result.status == ChunkStatus.PENDING:
            conn.pending.add(result.chunk_id)
            self._pending_owner[result.chunk_id] = conn
            self.pipeline.notify()
        self._count("chunks_duplicate" if result.duplicate else "chunks_stored")
        self.metrics.chunk_stored(len(chunk.audio), result.duplicate)
        if log.isEnabledFor(logging.DEBUG):  # the extra dict costs more than the call when DEBUG is off
            log.debug("chunk %s/%s %s", chunk.session_id, chunk.seq, "duplicate" if result.duplicate else "stored",
                      extra={"sid": conn.sid, "sessionId": chunk.session_id, "seq": chunk.seq, "bytes": len(chunk.audio)})
        decision = await self._assess(conn)
        ack: dict[str, Any] = {
            "sessionId": chunk.session_id,
            "sequence": chunk.seq,
            "timestamp": chunk.timestamp_ms,
            "chunkId": result.chunk_id,
            "duplicate": result.duplicate,
            "canAccept": decision.can_accept,
        }
        if not result.duplicate:
            ack["credits"] = decision.credits
        await self._tell(conn, "chunk-ack", ack)
        return ack

    async def _tell(self, conn: Connection, event: str, body: Any) -> None:
        """Send one event to one connection of this process, as emit(to=sid) would, minus what a room costs: the
        manager's task per recipient and asyncio.wait (two loop turns before a chunk's ack could follow its
        chunk-ack), and with Redis (scale-out) a publish that every other node reads only to drop it."""
        if self.connections.get((conn.namespace, conn.sid)) is not conn:
            return  # it left the namespace meanwhile: nobody there listens
        encoded = self.sio.packet_class(sio_packet.EVENT, namespace=conn.namespace, data=[event, body]).encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            await self.sio.eio.send(conn.eio_sid, part)

    def reading(self, conn: Connection) -> Reading:
        return Reading(
            queue_size=len(conn.pending) + max(conn.in_flight - 1, 0),
            memory_fraction=self.monitor.sample().memory_fraction,
            socket_buffer_bytes=self._socket_buffer_bytes(conn),
            # slow transcription only matters to a connection that has chunks waiting for it
            latency_ms=self.pipeline.recent_latency_ms() if conn.pending else 0.0,
        )

    async def _assess(self, conn: Connection) -> Decision:
        """Update the connection's state; tell the client once per transition, and slowDown per episode."""
        decision = conn.backpressure.update(self.reading(conn))
        if decision.changed:
            self._count(f"backpressure:{decision.state}")
            self.metrics.backpressure_total.labels(decision.state).inc()
            log.info("backpressure %s for %s (%s %.2f)", decision.state, conn.sid, decision.reason, decision.fill_ratio,
                     extra={"sid": conn.sid, "state": decision.state})
            await self._tell(conn, "backpressure", decision.wire())
        backlog = self.pipeline.backlog
        if backlog > self.settings.global_queue_limit and not conn.slowed:
            conn.slowed = True
            self.metrics.slowdown_total.inc()
            await self._tell(conn, "slowDown", {"message": f"transcription backlog of {backlog} chunks; slow down"})
        elif backlog <= self.settings.global_queue_limit * LOW_WATERMARK:
            conn.slowed = False
        return decision

    def _socket_buffer_bytes(self, conn: Connection) -> int:
        # engineio keeps outgoing packets in a private asyncio.Queue; sum what they hold.
        try:
            queue = self.sio.eio.sockets[conn.eio_sid].queue
            return sum(len(p.data) for p in list(queue._queue) if isinstance(getattr(p, "data", None), (str, bytes)))
        except (KeyError, AttributeError):
            return 0

    async def reconcile_pending(self) -> None:
        """Chunks this node stored that a worker elsewhere (`scribeai worker`, another node) has read since."""
        waiting = list(self._pending_owner)
        if not waiting:
            return
        for chunk_id in await self.pipeline.read_already(waiting):
            await self.chunk_transcribed(chunk_id)

    async def chunk_transcribed(self, chunk_id: str) -> None:
        """Called by the transcription side: the chunk left this connection's queue; maybe resume it."""
        conn = self._pending_owner.pop(chunk_id, None)
        if conn is None:
            return
        conn.pending.discard(chunk_id)
        if conn.backpressure.state != "ok" and (conn.namespace, conn.sid) in self.connections:
            await self._assess(conn)

    # -- sessions -------------------------------------------------------------

    async def on_join_session(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        body = protocol.parse_object(payload, "joinSession")
        session_id = protocol.parse_session_id(body.get("sessionId"))
        last_seq = protocol.parse_optional_seq(body, "lastSeq", minimum=-1)
        interim = protocol.parse_flag(body, "interim")
        await self.sessions.ensure(session_id, conn.user_id)
        await self.sio.enter_room(conn.sid, protocol.room_of(session_id), namespace=conn.namespace)
        await self._captions_for(conn, session_id, interim)
        reply = (await self.sessions.gap_summary(session_id)).wire()
        await self._tell(conn, "session-joined", reply)
        segments = await self.pipeline.segments_after(session_id, last_seq)
        if segments:
            # The room is joined first, so a segment finished meanwhile may come twice (clients dedupe by seq),
            # but none is missed.
            task = asyncio.get_running_loop().create_task(self._replay(conn, segments))
            self._replays.add(task)
            task.add_done_callback(self._replays.discard)
        return reply

    async def _captions_for(self, conn: Connection, session_id: str, wanted: bool) -> None:
        """Join (or leave) the session's caption room; the transcribing node learns that someone watches."""
        room, key = protocol.caption_room_of(session_id), (conn.namespace, conn.sid)
        if not wanted:
            if key in self._captioned.get(session_id, set()):
                self._captioned[session_id].discard(key)
                await self.sio.leave_room(conn.sid, room, namespace=conn.namespace)
            return
        await self.sio.enter_room(conn.sid, room, namespace=conn.namespace)
        self._captioned.setdefault(session_id, set()).add(key)
        await self.pipeline.watch([session_id], VIEWER_TTL_S)

    def _stop_captions(self, namespace: str, sid: str) -> None:
        for session_id in [s for s, viewers in self._captioned.items() if (namespace, sid) in viewers]:
            self._captioned[session_id].discard((namespace, sid))
            if not self._captioned[session_id]:
                del self._captioned[session_id]

    async def renew_captions(self) -> None:
        """Every VIEWER_RENEW_S: the sessions watched here are still watched (the mark lapses VIEWER_TTL_S after
        the last viewer left or this node died)."""
        if time.monotonic() - self._captions_renewed < VIEWER_RENEW_S:
            return
        self._captions_renewed = time.monotonic()
        watched = [session_id for session_id, viewers in self._captioned.items() if viewers]
        await self.pipeline.watch(watched, VIEWER_TTL_S)

    async def _replay(self, conn: Connection, segments: list[dict[str, Any]]) -> None:
        await asyncio.sleep(0)  # let the join reply go out first
        for segment in segments:
            await self._tell(conn, "transcriptSegment", segment)

    async def on_stop_session(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        body = protocol.parse_object(payload, "stopSession")
        session_id = protocol.parse_session_id(body.get("sessionId"))
        last_seq = protocol.parse_optional_seq(body, "lastSeq")
        await self.sessions.check_access(session_id, conn.user_id)
        reply = await self.sessions.stop(session_id, last_seq)
        await self._tell(conn, "session-stopped", reply)
        await self.pipeline.session_changed(session_id)
        await self.pipeline.check_completed(session_id)
        return reply

    async def on_stop_session_original(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        return await self.on_stop_session(conn, payload)

    async def on_start_session(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        body = protocol.parse_object(payload, "start-session")
        session_id = protocol.parse_session_id(body.get("sessionId"))
        self._check_user_field(conn, body)
        title, source = protocol.parse_optional_text(body, "title", 512), protocol.parse_optional_text(body, "source", 64)
        await self.sessions.ensure(session_id, conn.user_id, title=title, source=source)
        await self.sessions.describe(session_id, title=title, source=source)  # the session may predate this event
        await self.sio.enter_room(conn.sid, protocol.room_of(session_id), namespace=conn.namespace)
        row = await self.sessions.get_owned(session_id, conn.user_id)
        status = row.status
        if status == SessionStatus.PAUSED:
            await self.sessions.set_status(session_id, SessionStatus.RECORDING)
            status = SessionStatus.RECORDING
        started_at = row.started_at or row.created_at
        reply = {"sessionId": session_id, "status": status, "startedAt": started_at.isoformat()}
        await self._tell(conn, "session-started", reply)
        return reply

    async def on_pause_session(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        return await self._transition(conn, payload, "pause-session", SessionStatus.PAUSED, "session-paused", "pausedAt")

    async def on_resume_session(self, conn: Connection, payload: Any = None) -> dict[str, Any]:
        return await self._transition(conn, payload, "resume-session", SessionStatus.RECORDING, "session-resumed", "resumedAt")

    async def _transition(self, conn: Connection, payload: Any, event: str, status: str, answer: str, at_field: str) -> dict[str, Any]:
        body = protocol.parse_object(payload, event)
        session_id = protocol.parse_session_id(body.get("sessionId"))
        self._check_user_field(conn, body)
        await self.sessions.check_access(session_id, conn.user_id)
        at = await self.sessions.set_status(session_id, status)
        if status == SessionStatus.PAUSED:
            await self.pipeline.session_changed(session_id)  # the audio held for a window is transcribed now
        reply = {"sessionId": session_id, "status": status, at_field: at.isoformat()}
        await self._tell(conn, answer, reply)
        return reply

    async def on_join_room(self, conn: Connection, room: Any = None) -> dict[str, Any]:
        session_id = self._session_of_room(room)
        await self.sessions.ensure(session_id, conn.user_id)
        await self.sio.enter_room(conn.sid, protocol.room_of(session_id), namespace=conn.namespace)
        return {"room": protocol.room_of(session_id), "joined": True}

    async def on_leave_room(self, conn: Connection, room: Any = None) -> dict[str, Any]:
        session_id = self._session_of_room(room)
        await self.sio.leave_room(conn.sid, protocol.room_of(session_id), namespace=conn.namespace)
        return {"room": protocol.room_of(session_id), "joined": False}

    @staticmethod
    def _session_of_room(room: Any) -> str:
        if isinstance(room, dict):
            room = room.get("room", room.get("sessionId"))
        if not isinstance(room, str):
            raise InvalidInput('expected a room name "session:<id>"')
        return protocol.parse_session_id(room.removeprefix(protocol.SESSION_ROOM_PREFIX), "room")

    @staticmethod
    def _check_user_field(conn: Connection, body: dict[str, Any]) -> None:
        protocol.check_user_id(body.get("userId"), conn.user_id)

    # -- shutdown -------------------------------------------------------------

    def _begin(self) -> None:
        self._in_flight_total += 1
        self._idle.clear()

    def _end(self) -> None:
        self._in_flight_total -= 1
        if self._in_flight_total == 0:
            self._idle.set()

    async def drain(self, timeout: float, quiet_s: float = 0.25) -> bool:
        """Refuse new chunks and connections, wait until the chunks being stored are acked (at most `timeout`).

        Then `quiet_s` more: chunks still on the wire when the stop begins get `unavailable` at once instead of
        vanishing with the disconnect, so a recorder learns that it must resend them elsewhere or later. Chunks
        that arrive meanwhile are never stored, so they cannot hold the stop. False when some chunk still was
        being stored after `timeout`.
        """
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), max(deadline - loop.time(), 0))
        except TimeoutError:
            return False
        await asyncio.sleep(min(quiet_s, max(deadline - loop.time(), 0)))
        return self._idle.is_set()

    async def disconnect_all(self) -> None:
        """Disconnect every client: its namespaces (the JS client's "io server disconnect"), then its Engine.IO
        connection, so that no websocket or long poll waits for the client to close it."""
        eio_sids = {conn.eio_sid for conn in self.connections.values()}
        for namespace, sid in list(self.connections):
            await self.sio.disconnect(sid, namespace=namespace)
        # Handlers still running send their answers before the connections close (a refusal a moment before the
        # disconnect reaches its recorder); new events find no connection and are answered at once.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WAIT_S
        await asyncio.sleep(0)
        while self._answering and loop.time() < deadline:
            await asyncio.sleep(0.005)
        eio_sids.update(self.sio.eio.sockets)
        for eio_sid in eio_sids:
            socket = self.sio.eio.sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            # Not engineio's disconnect(): it waits until the client has read the close packet, which a polling client
            # that has stopped polling never does. A websocket's writer closes the websocket itself after the close
            # packet (socket.io-client ignores an Engine.IO close on websocket).
            await socket.close(wait=False, reason=self.sio.eio.reason.SERVER_DISCONNECT)
            if socket.upgraded:
                socket.queue.put_nowait(None)
            # As engineio's disconnect() does: a closed session left in its table made a request that came meanwhile
            # fail with a traceback (a 500) instead of engineio's "invalid session" (a 400).
            self.sio.eio.sockets.pop(eio_sid, None)

    async def stop(self, timeout: float) -> None:
        """The graceful stop, once: drain, then disconnect every client."""
        if self._stopped:
            return
        self._stopped = True
        _STOPPING.add(self)
        drained = await self.drain(timeout)
        if not drained:
            log.warning("shutdown: %d chunks still being stored after %.1fs", self._in_flight_total, timeout)
        if self._refused_stopping:
            log.info("shutdown: %d chunks refused (unavailable) while stopping", self._refused_stopping)
        await self.disconnect_all()

    def stopped(self) -> None:
        """The server no longer takes requests (its connections are closed): a process that runs other servers
        (tests) must not take their unknown sessions for ones this stop closed."""
        _STOPPING.discard(self)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


_STOPPING: weakref.WeakSet[Realtime] = weakref.WeakSet()  # servers of this process in their graceful stop


class _ClosedSessionNotice(logging.Filter):
    """A request for an Engine.IO session this server has just closed (a graceful stop closes every one; a polling
    client's next request comes a moment later) is the client's situation, not a fault: INFO, not ERROR (nor, while
    stopping, the WARNING that names a node gone or a balancer that does not route by session)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            message = record.getMessage()
            if "Session is disconnected" in message or (_STOPPING and ("Invalid session" in message
                                                                       or "which this node does not hold" in message)):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _error_body(exc: ScribeError, event: str, short: str, **context: Any) -> dict[str, Any]:
    body = error_body(exc, **context)
    body["error"] = short
    return body


def _short_error(exc: ScribeError, event: str, error_event: str) -> str:
    """The short `error` text: the original app's for chunks; a session event's names that event."""
    if error_event == "chunk-error":
        return str(error_body(exc)["error"])
    if exc.code == "invalid":
        return f"Invalid {event} data"
    return str(error_body(exc)["error"])


def _log_context(context: dict[str, Any]) -> dict[str, Any]:
    return {"sessionId": context.get("sessionId"), "seq": context.get("sequence")}
