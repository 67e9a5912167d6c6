"""Transcription workers: each claims a session's stream, reads its new chunks, transcribes windows, pushes them live."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import case, func, select, update
from sqlmodel import col

from scribeai.db import Database, affected
from scribeai.metrics import Metrics
from scribeai.models import (
    Chunk,
    ChunkStatus,
    RecordingSession,
    SessionStatus,
    TranscriptSegment,
    TranscriptStream,
    utcnow,
)
from scribeai.protocol import caption_room_of, room_of
from scribeai.store import Store
from scribeai.transcription import media
from scribeai.transcription.captions import MIN_AUDIO_MS, STEP_MS, Budget, Caption
from scribeai.transcription.engines import Engine, Transcription, TranscriptionFailed
from scribeai.transcription.queue import LeaseLost, StreamQueue, StreamState
from scribeai.transcription.streams import CheckpointError, ChunkBytes, Gap, NoStream, SessionStream, Timing
from scribeai.transcription.windows import SileroDetector, Window, Windower

log = logging.getLogger(__name__)
NAMESPACES = ("/", "/record")
IDLE_POLL_S = 1.0
LATENCY_HORIZON_S = 60.0  # an old slow window must not hold backpressure on forever
BACKLOG_REFRESH_S = 1.0
CHUNKS_PER_TURN = 32  # then the stream goes back to the queue, so one long session cannot starve the others
CACHED_STREAMS = 256
QUIET_AFTER_S = 2.0  # a recorder whose audio ends in a pause and that sent nothing for this long (or two of its
QUIET_PAUSE_MS = 300.0  # chunks' length) has its held audio transcribed then, not after IDLE_FLUSH_S (a pause as a window cut needs)
LATE_SETTLE_S = 2.0  # a gap's late chunks are read together once none has come for this long (or all are there)
FILL_READ_ON = 64  # chunks past a gap a late fill may read to reach the audio the stream resumed at
WATCHED_CHECK_S = 1.0  # how often a stream asks the database whether someone watches its captions


class Emitter(Protocol):
    """Where live results go: the Socket.IO server in `serve`, a write-only Redis manager in `scribeai worker`."""

    async def emit(self, event: str, data: Any, *, room: str | None = None, namespace: str | None = None) -> Any: ...


@dataclass
class _Live:
    """A stream this process holds in memory between turns."""

    stream: SessionStream
    done_ms: int  # as committed
    prompt: str
    last_read_at: float = field(default_factory=time.monotonic)
    chunk_ids: dict[int, str] = field(default_factory=dict)
    read_at: dict[int, float] = field(default_factory=dict)  # seq -> when it was read (how long its audio is held)
    # seq -> the reading state after that chunk, for the chunks whose audio is not all committed yet
    checkpoints: dict[int, bytes] = field(default_factory=dict)
    committed_through: int = -1  # the highest seq committed done (or known done when the stream was rebuilt)
    caption: Caption | None = None  # the open window's live caption


class Pipeline:
    """`workers` tasks over one StreamQueue; `drain()` waits until every stored chunk is transcribed."""

    def __init__(self, db: Database, store: Store, engine: Engine, sio: Emitter | None, *,
                 node_id: str, workers: int, chunk_duration_ms: int, retry_base_s: float = 1.0,
                 metrics: Metrics | None = None, gap_wait_s: float = 15.0, idle_flush_s: float = 40.0,
                 window_wait_s: float = 1.5, window_s: tuple[float, float] = (3.0, 8.0), lease_s: float = 120.0,
                 caption_share: float = 0.5, takeover_s: float = 20.0) -> None:
        self.db = db
        self.store = store
        self.engine = engine
        self.sio = sio
        self.queue = StreamQueue(db, node_id, lease_s=lease_s, retry_base_s=retry_base_s, takeover_s=takeover_s)
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.chunk_duration_ms = chunk_duration_ms
        self.gap_wait_s = gap_wait_s
        self.idle_flush_s = idle_flush_s
        self.window_wait_s = window_wait_s
        self.window_s = window_s  # (shortest, preferred) window in seconds
        self.on_transcribed: Callable[[str], Awaitable[None]] | None = None
        self.on_completed: Callable[[str], Awaitable[None]] | None = None  # a stopped session is all transcribed (summaries)
        self.captions = Budget(caption_share)  # seconds of caption decoding per second, for all streams here
        self.captioned = 0  # caption updates sent
        self._watched_now: tuple[float, set[str]] = (float("-inf"), set())  # (when asked, sessions with a caption viewer)
        # Run with each backlog refresh: what other processes did shows up in the database only.
        self.refreshers: list[Callable[[], Awaitable[None]]] = []
        self.completed = 0  # windows transcribed
        self.failed = 0
        self.retried = 0
        self.in_flight = 0
        self.backlog = 0
        self.audio_ms = 0
        self.busy_s = 0.0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=8)  # (monotonic time, ms)
        self._streams: OrderedDict[str, _Live] = OrderedDict()
        self._held: set[str] = set()
        self._flush_all = False
        self._detector: SileroDetector | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._alive = False  # this process's heartbeat is in the database (said gone again when it stops)

    def __repr__(self) -> str:
        return (f"Pipeline({self.engine.name}, workers={self.workers}, backlog={self.backlog}, in_flight={self.in_flight}, "
                f"completed={self.completed}, failed={self.failed}, streams={len(self._streams)})")

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        if self.workers and hasattr(self.engine, "load"):
            await self.engine.load()  # the first window should not wait for the model
        if self.workers:
            self._detector = await asyncio.to_thread(SileroDetector)
        recovered = await self.queue.recover()
        if recovered:
            log.info("took back %d transcription streams this node held before it stopped", recovered)
        self.backlog = await self.queue.backlog()
        loop = asyncio.get_running_loop()
        if self.workers:  # alive before the first claim
            await self.queue.heartbeat([])
            self._alive = True
            self._tasks.append(loop.create_task(self._heartbeat(), name="transcription-heartbeat"))
        self._tasks += [loop.create_task(self._work(i), name=f"transcriber-{i}") for i in range(self.workers)]
        self._tasks.append(loop.create_task(self._refresh_backlog(), name="transcription-backlog"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for session_id in list(self._held):
            try:
                await self.queue.release(session_id, 0.0)  # another node may take it at once
            except Exception:
                log.exception("releasing the stream of %s failed", session_id)
        self._held.clear()
        if self._alive:
            self._alive = False
            try:
                await self.queue.leave()
            except Exception:
                log.exception("saying this node stopped transcribing failed")
        await self.engine.close()

    def notify(self) -> None:
        """A chunk was stored: wake an idle worker now rather than at its next poll."""
        self.backlog += 1
        self._wake.set()

    async def session_changed(self, session_id: str) -> None:
        """Paused or stopped: its held audio can be transcribed to the end now."""
        await self.queue.wake(session_id)
        self._wake.set()

    async def drain(self, timeout: float = 60.0) -> None:
        """Transcribe everything stored, held audio included (tests, burst runs); failed chunks count as finished."""
        deadline = time.monotonic() + timeout
        self._flush_all = True
        try:
            while await self.queue.unfinished() > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"transcription queue not drained after {timeout}s: {self!r}")
                await self._wake_unfinished()
                self._wake.set()
                await asyncio.sleep(0.1)
        finally:
            self._flush_all = False

    async def read_already(self, chunk_ids: list[str]) -> list[str]:
        """Which of these chunks some worker (in any process) has read into its stream."""
        read: list[str] = []
        async with self.db.read() as s:
            for start in range(0, len(chunk_ids), 500):
                batch = chunk_ids[start:start + 500]
                read += (await s.execute(select(col(Chunk.id)).where(
                    col(Chunk.id).in_(batch), col(Chunk.status) != ChunkStatus.PENDING))).scalars().all()
        return read

    async def _wake_unfinished(self) -> None:
        unfinished = select(col(Chunk.session_id)).where(col(Chunk.status).in_(ChunkStatus.UNFINISHED))
        async with self.db.write() as s:
            await s.execute(update(TranscriptStream).where(col(TranscriptStream.session_id).in_(unfinished),
                                                           col(TranscriptStream.attempts) == 0)  # backoffs are waited out
                            .values(due_at=utcnow()))

    def recent_latency_ms(self) -> float:
        """The slowest of the last few window transcriptions, if they happened in the last minute."""
        horizon = time.monotonic() - LATENCY_HORIZON_S
        return max((ms for at, ms in self._latencies if at >= horizon), default=0.0)

    def real_time_factor(self) -> float:
        """Seconds of audio transcribed per second of worker time."""
        return (self.audio_ms / 1000) / self.busy_s if self.busy_s else 0.0

    # -- the worker loop ------------------------------------------------------

    async def _work(self, index: int) -> None:
        while True:
            try:
                state = await self.queue.claim(exclude=sorted(self._held))
            except Exception:
                log.exception("claiming a transcription stream failed")
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if state is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            self._held.add(state.session_id)
            self.in_flight += 1
            due: float | None = 0.0
            try:
                due = await self._turn(state)
            except LeaseLost as exc:  # another node took the stream over while this one stalled: it reads on
                self._streams.pop(state.session_id, None)
                due = None
                log.warning("%s; leaving it to its new holder", exc, extra={"sessionId": state.session_id})
            except TranscriptionFailed as exc:  # retryable, and tries are left
                self._streams.pop(state.session_id, None)
                due = await self.queue.count_failure(state.session_id, state.attempts + 1, exc.reason)
                self.retried += 1
                log.info("transcription of session %s failed (attempt %d), retry in %.0fs: %s", state.session_id,
                         state.attempts + 1, due or 0, exc.reason, extra={"sessionId": state.session_id})
            except Exception:
                log.exception("transcription of session %s crashed", state.session_id, extra={"sessionId": state.session_id})
                self._streams.pop(state.session_id, None)  # rebuilt from the stored chunks next time
                due = await self.queue.count_failure(state.session_id, state.attempts + 1, "internal error (see server log)")
                self.retried += 1
            finally:
                self.in_flight -= 1
                try:
                    await self.queue.release(state.session_id, due)
                except Exception:
                    log.exception("releasing the stream of %s failed", state.session_id)
                self._held.discard(state.session_id)

    async def _heartbeat(self) -> None:
        """This process lives, and holds its streams: renewed here, not by the windows, so that a window that takes
        longer than the lease does not lose it; a process that dies stops renewing, and others take over."""
        while True:
            await asyncio.sleep(self.queue.heartbeat_s)
            try:
                await self.queue.heartbeat(sorted(self._held))
            except Exception:
                log.exception("the transcription heartbeat failed")

    async def _refresh_backlog(self) -> None:
        while True:
            await asyncio.sleep(BACKLOG_REFRESH_S)
            try:
                self.backlog = await self.queue.backlog()
                for refresh in self.refreshers:
                    await refresh()
            except Exception:
                log.exception("refreshing the transcription backlog failed")

    async def _turn(self, state: StreamState) -> float | None:
        """Read what is new, transcribe what is ready; the seconds until this stream needs a look again."""
        live = self._streams.get(state.session_id)
        if live is None or live.done_ms != state.done_ms:
            live = await self._rebuild(state)
        self._streams[state.session_id] = live
        self._streams.move_to_end(state.session_id)
        while len(self._streams) > CACHED_STREAMS:
            self._streams.popitem(last=False)
        flush_all = self._flush_all  # as the turn starts: a drain() that begins later must not cut what this turn reads
        late = await self._fill_late(state, live)
        if isinstance(late, str):
            self._streams.pop(state.session_id, None)  # read again from the late first chunk, next turn
            return 0.0
        due = _sooner(late, await self._read(state, live))
        windower = live.stream.windower
        idle = time.monotonic() - live.last_read_at
        # a recorder gone quiet after a pause (it stopped talking, or sent one chunk): no later word can be cut
        quiet_after = self._quiet_after(live) if windower.trailing_silence_ms >= QUIET_PAUSE_MS else self.idle_flush_s
        if windower.pending_ms > 0 and (flush_all or state.status != SessionStatus.RECORDING or idle >= quiet_after):
            await self._transcribe_all(state, live, await asyncio.to_thread(live.stream.flush))
        elif self._held_for(live) >= self.window_wait_s:
            await self._transcribe_all(state, live, await asyncio.to_thread(windower.settle))
        if live.stream.done_through_seq() > live.committed_through:
            await self._commit_read(state, live)  # chunks read whose audio is all out (none, or in windows already)
        await self.check_completed(state.session_id)
        if windower.pending_ms > 0 and not flush_all and state.status == SessionStatus.RECORDING:
            await self._caption(state, live)
        if windower.pending_ms > 0:
            now = time.monotonic()
            wait = quiet_after - (now - live.last_read_at)
            if self._held_for(live) < self.window_wait_s:
                wait = min(wait, self.window_wait_s - self._held_for(live))
            due = _sooner(due, max(0.2, wait))
        first = windower.first_pending_seq
        live.read_at = {seq: at for seq, at in live.read_at.items() if first is not None and seq >= first}
        done = live.stream.done_through_seq()
        live.checkpoints = {seq: saved for seq, saved in live.checkpoints.items() if seq >= done - 1}
        return due

    async def _caption(self, state: StreamState, live: _Live) -> None:
        """A new hypothesis of the open window for the session's caption viewers, when it has grown by STEP_MS and
        someone watches; never while a chunk of another session waits for a busy worker (finals first), nor over the
        CPU budget."""
        caption_of = getattr(self.engine, "caption", None)
        if caption_of is None or state.session_id not in await self._watched():
            return
        if not self.captions.allows():
            self.metrics.captions_total.labels("over_budget").inc()
            return
        window = live.stream.windower.open_audio()
        if window is None or window.end_ms - window.start_ms < MIN_AUDIO_MS:
            return
        if live.caption is None or live.caption.start_ms != window.start_ms:
            live.caption = Caption(window.start_ms)
        caption = live.caption
        if caption.revision and window.end_ms - window.start_ms - caption.audio_ms < STEP_MS:
            return
        # a chunk waiting while every worker here is busy: its window may wait for this caption (this session's own
        # next chunk waits for one caption, not more)
        if self.in_flight >= self.workers and await self.queue.waiting(exclude=sorted(self._held)):
            self.metrics.captions_total.labels("chunk_waiting").inc()
            return
        started = time.monotonic()
        try:
            text = await caption_of(window.pcm, live.prompt, " ".join(caption.stable))
        except Exception as exc:  # a caption is a courtesy: its failure must not fail the transcript
            log.warning("caption of %s failed: %s", state.session_id, exc, extra={"sessionId": state.session_id})
            self.metrics.captions_total.labels("failed").inc()
            return
        finally:
            self.captions.spend(time.monotonic() - started)
        if text is None or not caption.update(text, window.end_ms - window.start_ms):
            self.metrics.captions_total.labels("unchanged").inc()
        elif self.sio is not None:
            self.metrics.captions_total.labels("sent").inc()
            payload = caption.wire(state.session_id, window.end_ms, window.from_seq, window.to_seq)
            self.captioned += 1
            for namespace in NAMESPACES:
                await self.sio.emit("transcriptInterim", payload, room=caption_room_of(state.session_id), namespace=namespace)

    async def _watched(self) -> set[str]:
        """The sessions someone watches the captions of (asked of the database at most every WATCHED_CHECK_S)."""
        asked, watched = self._watched_now
        if time.monotonic() - asked >= WATCHED_CHECK_S:
            self._watched_now = time.monotonic(), (watched := await self.queue.watched_sessions())
        return watched

    async def watch(self, session_ids: list[str], for_s: float) -> None:
        """Someone on this node watches these sessions' captions (for the next `for_s` seconds)."""
        await self.queue.watch(session_ids, for_s)
        if set(session_ids) - self._watched_now[1]:
            self._watched_now = float("-inf"), set()  # ask again at the next turn

    def _quiet_after(self, live: _Live) -> float:
        """Seconds without a chunk after which a recorder counts as quiet: QUIET_AFTER_S, or two of its last
        chunk's length (a 15 s timeslice is not quiet after 2 s), never more than IDLE_FLUSH_S."""
        ends, last = live.stream.chunk_end_ms, live.stream.next_seq - 1
        length = (ends[last] - ends[last - 1]) / 1000 if last in ends and last - 1 in ends else self.chunk_duration_ms / 1000
        return min(self.idle_flush_s, max(QUIET_AFTER_S, 2 * length))

    @staticmethod
    def _held_for(live: _Live) -> float:
        """Seconds the oldest audio waiting for its window has been held."""
        first = live.stream.windower.first_pending_seq
        return 0.0 if first is None else time.monotonic() - live.read_at.get(first, time.monotonic())

    async def _rebuild(self, state: StreamState) -> _Live:
        """The stream as it was after the last chunk a committed window covers (its checkpoint), reading on from
        there; without a usable checkpoint, from the last container header before the first unfinished chunk (the
        gaps it went past on the way stay gaps: see `_read`)."""
        session_id = state.session_id
        gaps = [Gap(g["fromSeq"], g["toSeq"], g["startMs"], g.get("endMs"), bool(g.get("filled")), g.get("reason", "missing"),
                    done_ms=g.get("doneMs")) for g in state.gaps]
        first = await self.queue.first_unfinished(session_id, _unfilled(gaps))
        saved = await self.queue.resume_checkpoint(session_id)
        stream: SessionStream | None = None
        if saved is not None and (first is None or saved[0] < first):
            try:
                stream = SessionStream.resumed(self._windower(), saved[1], resume_ms=float(state.done_ms))
            except CheckpointError as exc:
                log.warning("session %s: %s; reading its stream from the header again", session_id, exc,
                            extra={"sessionId": session_id})
        if stream is None:
            start_seq = await self.queue.resume_point(session_id, [(g.from_seq, g.to_seq) for g in gaps], _unfilled(gaps))
            stream = SessionStream(self._windower(), await self._timing(session_id), resume_ms=float(state.done_ms),
                                   next_seq=start_seq)
            how = "from its header"
        else:
            how = "from its checkpoint"
        log.info("session %s: stream read on from chunk %d (%s), transcribed up to %d ms", session_id, stream.next_seq,
                 how, state.done_ms, extra={"sessionId": session_id})
        # A gap past the read point is found again when the stream reaches it (its chunks may be there by now, and are
        # read in order), unless audio after it is transcribed already (read from a header, well before the stored
        # resume point): its chunks' audio lies behind done_ms, so read in order it would count as done unheard. That
        # gap stays one, skipped again when the stream gets there, and its chunks are a late fill's.
        stream.gaps = [g for g in gaps if g.from_seq < stream.next_seq or g.filled or g.start_ms < state.done_ms]
        open_gaps = [gap for gap in stream.gaps if not gap.filled and gap.from_seq > 0]
        states = await self.queue.gap_checkpoints(session_id, [gap.from_seq - 1 for gap in open_gaps])
        for gap in open_gaps:
            gap.checkpoint = states.get(gap.from_seq - 1)
        live = _Live(stream, state.done_ms, await self.queue.last_text(session_id), committed_through=stream.next_seq - 1)
        if saved is not None and stream.next_seq == saved[0] + 1:
            live.checkpoints[saved[0]] = saved[1]
        return live

    def _windower(self) -> Windower:
        assert self._detector is not None
        shortest, preferred = self.window_s
        return Windower(self._detector, min_ms=shortest * 1000, target_ms=preferred * 1000)

    async def _timing(self, session_id: str) -> Timing:
        async with self.db.read() as s:
            row = (await s.execute(
                select(col(Chunk.seq), col(Chunk.timestamp_ms)).where(col(Chunk.session_id) == session_id)
                .order_by(col(Chunk.seq)).limit(1)
            )).first()
        origin = None if row is None else float(row[1]) - int(row[0]) * self.chunk_duration_ms
        return Timing(origin, self.chunk_duration_ms)

    async def _transcribe_all(self, state: StreamState, live: _Live, windows: list[Window]) -> None:
        for index, window in enumerate(windows):
            last = index == len(windows) - 1
            await self._transcribe(state, live, window, live.stream.done_through_seq() if last else window.to_seq - 1)

    async def _read(self, state: StreamState, live: _Live) -> float | None:
        """Feed the chunks that follow in sequence, transcribing each window as it completes.

        A chunk leaves the queue (backpressure's count) once the windows it completed are transcribed:
        with a slow engine, unread chunks pile up and the recorder is told to wait. A missing chunk is
        waited for, then skipped (a gap).
        """
        stream = live.stream
        rows = await self.queue.chunks(state.session_id, stream.next_seq, CHUNKS_PER_TURN)
        due = 0.0 if len(rows) == CHUNKS_PER_TURN else None  # more may follow: this turn reads one batch
        for row in rows:
            while (kept := _missing_gap_at(stream.gaps, stream.next_seq)) is not None:
                # a gap kept through a rebuild from the header: skipped again as when it was found, whether or not
                # its chunks are there now (they are its late fill's, next turn)
                stream.gap(kept.from_seq, kept.to_seq)
                live.checkpoints[kept.to_seq] = stream.checkpoint()
                due = 0.0
            if row.seq < stream.next_seq:
                continue
            if row.seq > stream.next_seq:
                waited = (utcnow() - row.created_at).total_seconds()
                if waited < self.gap_wait_s and not self._flush_all and state.status == SessionStatus.RECORDING:
                    due = self.gap_wait_s - waited
                    # the chunks after the hole wait with it: not a reason to claim the session again before then
                    await self.queue.defer([r.id for r in rows if r.seq >= row.seq and r.status == ChunkStatus.PENDING],
                                           due, f"waiting for chunk {stream.next_seq}")
                    break
                log.warning("session %s: chunks %d..%d missing after %.0fs, going on without them",
                            state.session_id, stream.next_seq, row.seq - 1, waited, extra={"sessionId": state.session_id})
                stream.gap(stream.next_seq, row.seq - 1)
                live.checkpoints[row.seq - 1] = stream.checkpoint()
            if row.seq == 0:
                stream.timing = Timing(row.timestamp_ms, self.chunk_duration_ms)  # the true origin, once known
            data = await asyncio.to_thread(self.store.read, row.path)
            live.chunk_ids[row.seq] = row.id
            live.last_read_at = live.read_at[row.seq] = time.monotonic()
            # a chunk of a window that failed, read again from a header: its status is its gap's (retry-failed, a fill)
            mine = row.status == ChunkStatus.PENDING and not _in_gap(_unfilled(stream.gaps), row.seq)
            if mine:
                await self.queue.mark_read([row.id])
            windows, failure, live.checkpoints[row.seq] = await asyncio.to_thread(
                _feed, stream, ChunkBytes(row.seq, data, row.mime_type, row.timestamp_ms))
            if failure is not None:
                await self.queue.fail_chunks(state.session_id, [row.seq], failure)
            await self._transcribe_all(state, live, windows)
            if mine:
                self.backlog = max(self.backlog - 1, 0)
                if self.on_transcribed is not None:
                    await self.on_transcribed(row.id)
        return due

    async def _commit_read(self, state: StreamState, live: _Live) -> None:
        """Chunks whose audio is all in windows already (or who had none) are done: nothing else would say so."""
        through = live.stream.done_through_seq()
        # with the gaps' reading states: a gap first stored here must not lose its state if the process dies next
        await self.queue.commit(state.session_id, [], live.done_ms, through, live.committed_through + 1,
                                [g.wire() for g in live.stream.gaps], resume=_state_of(live, through),
                                gap_states=_gap_states(live.stream.gaps), claimed=True, unheard=_unfilled(live.stream.gaps))
        live.committed_through = through

    async def _fill_late(self, state: StreamState, live: _Live) -> float | None | str:
        """Chunks that arrive after their gap was skipped are read as the stream would have read them in time.

        A gap's late chunks are read once all of them are there or none has come for LATE_SETTLE_S, from the
        reading state before the gap, keeping only the gap's stretch of the timeline: each second of audio is
        transcribed once. Returns the seconds to wait for more, or "restart" when the late chunk is the
        recording's first, whose followers failed for want of its header (they are queued again and the stream
        is read anew from it).
        """
        gaps = live.stream.gaps
        holes = _unfilled(gaps)
        rows = await self.queue.late_chunks(state.session_id, live.stream.next_seq, holes)
        due: float | None = None
        for gap in [g for g in gaps if not g.filled]:
            mine = [row for row in rows if gap.from_seq <= row.seq <= gap.to_seq]
            if not mine:
                continue
            if gap.end_ms is None and any(row.has_header for row in mine):
                gaps.remove(gap)
                await self.queue.reopen_after(state.session_id, min(r.seq for r in mine if r.has_header), [g.wire() for g in gaps])
                log.info("session %s: its first chunk arrived late; reading the recording again from it",
                         state.session_id, extra={"sessionId": state.session_id})
                return "restart"
            waited = (utcnow() - max(row.created_at for row in mine)).total_seconds()
            complete = len(mine) == gap.to_seq - gap.from_seq + 1
            patient = not self._flush_all and state.status == SessionStatus.RECORDING
            if not complete and waited < LATE_SETTLE_S and patient:
                due = _sooner(due, LATE_SETTLE_S - waited)
                continue
            # A chunk still missing inside the gap is waited for like one in the stream (GAP_WAIT_S), then skipped.
            hold = patient and waited < self.gap_wait_s
            await self._fill_gap(state, live, gap, mine, hold)
            if hold and not complete:
                due = _sooner(due, self.gap_wait_s - waited)
        for row in rows:
            if row.status == ChunkStatus.PENDING and not any(a <= row.seq <= b for a, b in holes):
                # e.g. a failed chunk retried whose place the stream has already passed
                await self.queue.mark_read([row.id])
                await self.queue.fail_chunks(state.session_id, [row.seq], "the stream had already read past this chunk "
                                             "without a gap to fill: it cannot be decoded out of order")
        if due is not None:  # not claimed again for them before then (a pending chunk makes its session claimable)
            await self.queue.defer([row.id for row in rows if row.status == ChunkStatus.PENDING], due, "waiting to fill a gap")
        return due

    async def _fill_gap(self, state: StreamState, live: _Live, gap: Gap, rows: list[Chunk], hold: bool) -> None:
        """Read a gap's late chunks into a side stream and transcribe the stretch of the timeline it left empty.

        With `hold`, reading stops at the first chunk still missing: what follows it waits for it (the rest stays a
        gap, with the reading state where this fill stopped)."""
        session_id = state.session_id
        side, windows, rest, read = await self._gap_stream(session_id, gap, hold)
        if side is None:
            await self.queue.mark_read([row.id for row in rows])
            await self.queue.fail_chunks(session_id, [row.seq for row in rows], "no chunk with its recording's header "
                                         "precedes it: it cannot be decoded")
            return
        through = gap.to_seq if rest is None else rest.from_seq - 1
        # what the side stream read, not only `rows`: more of the gap's chunks may have come since they were listed
        fresh = [row.id for row in read if row.status == ChunkStatus.PENDING and gap.from_seq <= row.seq <= through]
        await self.queue.mark_read(fresh)
        for chunk_id in fresh:
            if self.on_transcribed is not None:
                await self.on_transcribed(chunk_id)
        # no prompt: the text before a hole is not what leads into its audio once it is filled in pieces (a piece of a
        # second or two is often misheard), and tiny.en copies a prompt's words into the fill ("Hello, my name is …")
        late = _Live(side, live.done_ms, "")
        late.chunk_ids = {row.seq: row.id for row in read}
        for window in windows:
            gap.done_ms = window.through_ms  # stored with the window's segments
            await self._transcribe(state, late, window, gap.from_seq - 1, from_seq=gap.from_seq, main=live)
        pieces = _split_gap(gap, side, rest)
        index = live.stream.gaps.index(gap)
        live.stream.gaps[index:index + 1] = pieces
        await self.queue.commit(session_id, [], 0, through, gap.from_seq, [g.wire() for g in live.stream.gaps],
                                gap_states=_gap_states(live.stream.gaps), claimed=True)
        log.info("session %s: late chunks %d..%d filled gap %d..%d (%.0f..%.0f ms)", session_id, gap.from_seq, through,
                 gap.from_seq, gap.to_seq, gap.start_ms, gap.end_ms or -1, extra={"sessionId": session_id})

    async def _gap_stream(self, session_id: str, gap: Gap,
                          hold: bool) -> tuple[SessionStream | None, list[Window], Gap | None, list[Chunk]]:
        """The gap's chunks read on from the state before it (through the chunks after it, until the audio reaches
        where the stream resumed), keeping only the gap's stretch of the timeline; with `hold`, up to the first
        chunk still missing, returned as the gap that remains."""
        until = gap.end_ms if gap.end_ms is not None else float("inf")
        # a fill that died midway stored its windows up to done_ms: read on from there, whatever the reading path
        resume_ms = gap.start_ms if gap.done_ms is None else max(gap.start_ms, gap.done_ms)
        side: SessionStream | None = None
        if gap.checkpoint is not None:
            try:
                side = SessionStream.resumed(self._windower(), gap.checkpoint, resume_ms=resume_ms, until_ms=until)
            except CheckpointError as exc:
                log.warning("session %s: %s; reading gap %d..%d from its stream's header", session_id, exc, gap.from_seq,
                            gap.to_seq, extra={"sessionId": session_id})
        how = "the state before it"
        if side is None:  # a gap recorded before checkpoints existed
            start = await self.queue.stream_start_before(session_id, gap.from_seq)
            if start is None:
                return None, [], None, []
            side = SessionStream(self._windower(), await self._timing(session_id), resume_ms=resume_ms, until_ms=until,
                                 next_seq=start)
            how = f"its stream's header (chunk {start})"
        log.info("session %s: reading gap %d..%d from %s", session_id, gap.from_seq, gap.to_seq, how,
                 extra={"sessionId": session_id})
        windows: list[Window] = []
        rest: Gap | None = None
        read: list[Chunk] = []
        for row in await self.queue.chunks(session_id, side.next_seq, gap.to_seq + FILL_READ_ON - side.next_seq + 1):
            if row.seq > gap.to_seq and (side.end_ms >= until or row.has_header):
                break
            if row.seq > side.next_seq:
                if hold and side.next_seq <= gap.to_seq:
                    rest = Gap(side.next_seq, gap.to_seq, side.end_ms, gap.end_ms, reason=gap.reason,
                               checkpoint=side.checkpoint())
                    break
                side.gap(side.next_seq, row.seq - 1)
            data = await asyncio.to_thread(self.store.read, row.path)
            read.append(row)
            try:
                windows += await asyncio.to_thread(side.feed, ChunkBytes(row.seq, data, row.mime_type, row.timestamp_ms))
            except (NoStream, media.UndecodableAudio):
                continue
        return side, windows + await asyncio.to_thread(side.flush), rest, read

    async def _transcribe(self, state: StreamState, live: _Live, window: Window, done_through_seq: int,
                          from_seq: int = 0, main: _Live | None = None) -> None:
        """Transcribe one window and commit it. `main` is given for a late fill's side stream: the session's
        gaps are the main stream's, and its place (done_ms, resume point) does not move."""
        session_gaps = (main or live).stream.gaps
        segments: list[TranscriptSegment] = []
        if window.speech_ms > 0 and len(window.pcm):
            started = time.monotonic()
            try:
                result = await self.engine.transcribe_pcm(window.pcm, live.prompt)
            except TranscriptionFailed as exc:
                if exc.retryable and state.attempts < len(self.queue.retry_delays):
                    raise
                self.failed += 1
                log.warning("transcription of %s at %.0f..%.0f ms failed for good: %s", state.session_id,
                            window.start_ms, window.end_ms, exc.reason, extra={"sessionId": state.session_id})
                await self.queue.fail_chunks(state.session_id, list(range(window.from_seq, window.to_seq + 1)), exc.reason)
                session_gaps.append(Gap(window.from_seq, window.to_seq, window.start_ms, window.through_ms, reason="failed"))
                session_gaps.sort(key=lambda g: g.from_seq)
                result = None
            elapsed = time.monotonic() - started
            if result is not None:
                segments = self._segments(state.session_id, live.stream, window, result, live.chunk_ids)
                live.prompt = (live.prompt + " " + result.text).strip()[-600:] if result.text else live.prompt
                self._account(window, elapsed)
        advance = main is None
        new = await self.queue.commit(state.session_id, segments, round(window.through_ms) if advance else 0,
                                      done_through_seq, from_seq, [g.wire() for g in session_gaps],
                                      resume=_state_of(live, done_through_seq) if advance else None,
                                      gap_states=_gap_states(session_gaps), claimed=True,
                                      unheard=_unfilled(session_gaps) if advance else ())
        if advance:
            live.done_ms = max(live.done_ms, round(window.through_ms))
            live.stream.resume_ms = max(live.stream.resume_ms, window.through_ms)
            live.committed_through = max(live.committed_through, done_through_seq)
        for segment in new:
            await self._publish(segment)
        await self.queue.renew(state.session_id)

    def _account(self, window: Window, elapsed: float) -> None:
        self.completed += 1
        self.busy_s += elapsed
        self.audio_ms += round(window.end_ms - window.start_ms)
        self._latencies.append((time.monotonic(), elapsed * 1000))
        self.metrics.transcribe_seconds.observe(elapsed)
        self.metrics.transcriptions_total.labels("done").inc()

    def _segments(self, session_id: str, stream: SessionStream, window: Window, result: Transcription,
                  chunk_ids: dict[int, str]) -> list[TranscriptSegment]:
        """One segment per piece of text, placed on the recording's timeline and named by the chunks it covers."""
        pieces = [(p.start_ms, p.end_ms, p.text, p.confidence) for p in result.pieces] or \
            ([(0.0, window.end_ms - window.start_ms, result.text, result.confidence)] if result.text.strip() else [])
        out = []
        for start, end, text, confidence in pieces:
            at, until = window.start_ms + start, min(window.start_ms + max(end, start), window.end_ms)
            to_seq = _seq_at(stream, window, until)
            out.append(TranscriptSegment(
                session_id=session_id, seq=to_seq, from_seq=_seq_at(stream, window, at), chunk_id=chunk_ids.get(to_seq, ""),
                start_ms=round(at),
                end_ms=round(until), text=text.strip(), speaker=None, confidence=confidence, is_final=True,
            ))
        return [s for s in out if s.text]

    # -- pushing results ---------------------------------------------------------

    async def _publish(self, segment: TranscriptSegment) -> None:
        if self.sio is None:
            return
        updated = {"sessionId": segment.session_id, "sequence": segment.seq, "text": segment.text,
                   "speaker": segment.speaker, "chunkId": segment.chunk_id, "timestamp": segment.start_ms}
        for namespace in NAMESPACES:
            await self.sio.emit("transcriptSegment", segment.wire(), room=room_of(segment.session_id), namespace=namespace)
            await self.sio.emit("transcript-updated", updated, room=room_of(segment.session_id), namespace=namespace)

    async def check_completed(self, session_id: str) -> None:
        """Once a stopped session has every sequence stored and none unfinished, say session-completed: once, and
        again after chunks stored since (recorded after a resume, or resent late) are transcribed too."""
        async with self.db.read() as s:
            session = await s.get(RecordingSession, session_id)
            if session is None or session.status != SessionStatus.STOPPED:
                return
            stored, highest, unfinished, newest = (await s.execute(
                select(func.count(), func.max(col(Chunk.seq)),
                       func.coalesce(func.sum(case((col(Chunk.status).in_(ChunkStatus.UNFINISHED), 1), else_=0)), 0),
                       func.max(col(Chunk.created_at)))
                .where(col(Chunk.session_id) == session_id)
            )).one()
        if session.completed_at is not None and (newest is None or newest <= session.completed_at):
            return  # said already, and nothing came since
        if unfinished or (highest is not None and stored != highest + 1):
            return  # a missing chunk may still be resent: not complete yet
        async with self.db.write() as s:
            claimed = await s.execute(
                update(RecordingSession).where(
                    col(RecordingSession.id) == session_id,
                    col(RecordingSession.completed_at).is_(None) if session.completed_at is None
                    else col(RecordingSession.completed_at) == session.completed_at,  # one claimer of the news
                ).values(completed_at=utcnow())
            )
        if affected(claimed) and self.sio is not None:
            for namespace in NAMESPACES:
                await self.sio.emit("session-completed", {"sessionId": session_id}, room=room_of(session_id), namespace=namespace)
        if affected(claimed) and self.on_completed is not None:
            await self.on_completed(session_id)

    async def segments_after(self, session_id: str, last_seq: int | None) -> list[dict[str, Any]]:
        query = select(TranscriptSegment).where(col(TranscriptSegment.session_id) == session_id)
        if last_seq is not None:
            query = query.where(col(TranscriptSegment.seq) > last_seq)
        async with self.db.read() as s:
            rows = (await s.execute(query.order_by(col(TranscriptSegment.seq), col(TranscriptSegment.start_ms)))).scalars()
            return [row.wire() for row in rows]

    async def gaps(self, session_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as s:
            raw = (await s.execute(select(col(TranscriptStream.gaps)).where(col(TranscriptStream.session_id) == session_id))).scalar_one_or_none()
        return [{key: value for key, value in gap.items() if key != "doneMs"} for gap in json.loads(raw)] if raw else []


def _seq_at(stream: SessionStream, window: Window, at_ms: float) -> int:
    """The chunk whose audio reaches `at_ms`: the first of the window's chunks that ends at or after it."""
    for seq in range(window.from_seq, window.to_seq + 1):
        end = stream.chunk_end_ms.get(seq)
        if end is not None and end >= at_ms - 1:
            return seq
    return window.to_seq


def _feed(stream: SessionStream, chunk: ChunkBytes) -> tuple[list[Window], str | None, bytes]:
    """One chunk into the stream (in a thread): its windows, why it failed if it did, and the reading state after it."""
    try:
        windows, failure = stream.feed(chunk), None
    except NoStream as exc:
        windows, failure = [], str(exc)
    except media.UndecodableAudio as exc:
        windows, failure = [], f"undecodable audio: {exc.reason}"
    return windows, failure, stream.checkpoint()


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _unfilled(gaps: list[Gap]) -> list[tuple[int, int]]:
    return [(g.from_seq, g.to_seq) for g in gaps if not g.filled]


def _in_gap(gaps: list[tuple[int, int]], seq: int) -> bool:
    return any(low <= seq <= high for low, high in gaps)


def _missing_gap_at(gaps: list[Gap], seq: int) -> Gap | None:
    """An unfilled gap of missing chunks that begins at `seq` (a failed window's chunks were read: they are read again)."""
    return next((g for g in gaps if g.from_seq == seq and not g.filled and g.reason == "missing"), None)


def _state_of(live: _Live, seq: int) -> tuple[int, bytes] | None:
    """The resume point for chunks through `seq` done: the state one chunk earlier where there is one, so that the
    decoder has a chunk's audio to settle in before the first audio it must transcribe (but never back before a
    gap: its late chunks are a fill's to read, not the stream's)."""
    skipped = any(g.from_seq <= seq <= g.to_seq for g in live.stream.gaps)
    for at in (seq, ) if skipped else (seq - 1, seq):
        if at in live.checkpoints:
            return at, live.checkpoints[at]
    return None


def _gap_states(gaps: list[Gap]) -> list[tuple[int, bytes]]:
    return [(g.from_seq - 1, g.checkpoint) for g in gaps if not g.filled and g.checkpoint is not None]


def _split_gap(gap: Gap, side: SessionStream, rest: Gap | None) -> list[Gap]:
    """A gap after a late fill: the stretches of it whose audio the side stream placed are filled; chunks still
    missing (the gaps the side stream met, with their places on the timeline and reading states, and `rest`,
    what waits for a chunk still to come) stay gaps."""
    end = gap.to_seq if rest is None else rest.from_seq - 1
    holes = sorted((g for g in side.gaps if gap.from_seq <= g.from_seq <= end), key=lambda g: g.from_seq)
    pieces: list[Gap] = []
    at, start_ms = gap.from_seq, gap.start_ms
    for hole in [*holes, None]:
        run_end = end if hole is None else hole.from_seq - 1
        if at <= run_end:
            if any(at <= seq <= run_end for seq in side.chunk_end_ms):
                pieces.append(Gap(at, run_end, start_ms, gap.end_ms if hole is None else hole.start_ms, filled=True,
                                  reason=gap.reason))
            elif pieces:  # no audio of theirs came out before the hole's end: they belong to it (read when it is)
                pieces[-1].to_seq = run_end
            else:
                pieces.append(Gap(at, run_end, start_ms, gap.end_ms if hole is None else hole.start_ms, reason=gap.reason))
        if hole is None:
            break
        hole.to_seq = min(hole.to_seq, end)
        if hole.end_ms is None or (gap.end_ms is not None and hole.end_ms > gap.end_ms):
            hole.end_ms = gap.end_ms
        pieces.append(hole)
        at, start_ms = hole.to_seq + 1, hole.end_ms if hole.end_ms is not None else start_ms
    if rest is not None:
        if pieces:
            pieces[-1].end_ms = rest.start_ms
        pieces.append(rest)
    return pieces
