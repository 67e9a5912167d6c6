"""Session summaries: made once a stopped session is fully transcribed (or on request), stored, pushed as
`session-summary` to the session's room, served over REST and with the transcript's downloads.

The extractive summary (scribeai.summarize) needs no model and no key; with SUMMARY_BASE_URL set, a model
writes the summary, and whenever it cannot (timeout, error, refusal) the extractive one is served with the reason.
CPU work runs in a thread, one summary at a time per process, so ingest never waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from scribeai import protocol, search, transcripts
from scribeai.db import Database, affected
from scribeai.errors import InvalidInput
from scribeai.models import (RecordingSession, SessionStatus, SessionSummary, SummaryPassage, SummaryStatus,
                             TranscriptSegment, utcnow)
from scribeai.protocol import room_of
from scribeai.settings import Settings
from scribeai.summarize import EXTRACTIVE, LLM, Digest, extractive, placed, sentences_of
from scribeai.summary_llm import ChatSummarizer, SummaryFailed
from scribeai.transcription.pipeline import NAMESPACES, Emitter

log = logging.getLogger(__name__)
T = TypeVar("T")
EVENT = "session-summary"
CLAIM_S = 600.0  # a summary claimed by a process that died is made again after this (on the next GET or request)
RENEWALS_PER_CLAIM = 4  # a process making one renews its claim this often per CLAIM_S, however long the model takes
routes = web.RouteTableDef()
FORMATS = {"txt": "text/plain; charset=utf-8", "md": "text/markdown; charset=utf-8"}


class Summaries:
    """Makes, stores and publishes summaries; `drain()` waits for the ones in progress (tests)."""

    def __init__(self, db: Database, emitter: Emitter | None, chat: ChatSummarizer | None = None,
                 registry: CollectorRegistry | None = None, *, own_process: bool = True) -> None:
        self.db = db
        # The CPU work (tokenizing, stemming, LexRank: ~0.3 CPU-s for an hour's meeting, most of it Python holding
        # the GIL) runs in a process of its own, started at the first summary: in a thread it slowed chunk acks
        # meanwhile 2-5 x (docs/performance.md). `own_process=False` (a one-off command): a thread.
        self.own_process = own_process
        self._pool: ProcessPoolExecutor | None = None
        self.emitter = emitter
        self.chat = chat
        self.made = 0
        self.failed = 0
        self.outcomes = PromCounter("scribeai_summaries", "Session summaries made, by outcome: extractive, llm, fallback "
                                    "(the model failed: extractive served), failed", ["outcome"], registry=registry)
        self.seconds = Histogram("scribeai_summary_seconds", "Time to make one session summary", registry=registry,
                                 buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0))
        self._one_at_a_time = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._claimed: set[str] = set()  # sessions whose summary this process is making
        self._stopped = False
        self.claim_s = CLAIM_S

    @classmethod
    def from_settings(cls, db: Database, emitter: Emitter | None, settings: Settings,
                      registry: CollectorRegistry | None = None, *, own_process: bool = True) -> Summaries:
        chat = None
        if settings.summary_base_url:
            chat = ChatSummarizer(settings.summary_base_url, settings.summary_model, settings.summary_api_key,
                                  timeout_s=settings.summary_timeout_s, context_tokens=settings.summary_context_tokens)
        return cls(db, emitter, chat, registry, own_process=own_process)

    def __repr__(self) -> str:
        return f"Summaries(chat={self.chat!r}, made={self.made}, failed={self.failed}, in_progress={len(self._tasks)})"

    # -- when ------------------------------------------------------------------------

    async def session_completed(self, session_id: str) -> None:
        """The pipeline's hook: every chunk of a stopped session is transcribed. Returns at once."""
        self.request(session_id)

    def request(self, session_id: str) -> None:
        """Make (or make again) this session's summary in the background."""
        self._spawn(self._make_logged(session_id, claimed=False), session_id)

    async def start(self, session_id: str) -> dict[str, Any]:
        """Claim now (the stored summary says pending from here on), make it in the background; the body as it is."""
        if await self._claim(session_id):
            self._spawn(self._make_logged(session_id, claimed=True), session_id)
        return await self.get_stored(session_id)

    def _spawn(self, work: Coroutine[Any, Any, None], session_id: str) -> None:
        if self._stopped:  # a session completed while the server stops: the next GET after a start makes it
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work, name=f"summary-{session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 60.0) -> None:
        while self._tasks:
            await asyncio.wait_for(asyncio.gather(*list(self._tasks), return_exceptions=True), timeout)

    async def stop(self) -> None:
        """Drop the summaries in progress and give their claims back: the next GET (here or on another node)
        makes them again at once rather than after CLAIM_S."""
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._claimed:
            async with self.db.write() as s:
                await s.execute(update(SessionSummary).where(
                    col(SessionSummary.session_id).in_(self._claimed), col(SessionSummary.status) == SummaryStatus.PENDING)
                    .values(claimed_until=None))
            self._claimed.clear()

    # -- reading -----------------------------------------------------------------------

    async def get(self, session_id: str) -> dict[str, Any]:
        """The stored summary's body. A completed session with none (or one whose maker died) starts one; so does
        a stopped one with segments newer than its summary (chunks resent late, or recorded after a resume)."""
        async with self.db.read() as s:
            row = await s.get(SessionSummary, session_id)
            session = await s.get(RecordingSession, session_id)
            newest = None
            if row is not None and row.generated_at is not None and row.status != SummaryStatus.PENDING:
                newest = (await s.execute(select(func.max(col(TranscriptSegment.created_at)))
                                          .where(col(TranscriptSegment.session_id) == session_id))).scalar_one_or_none()
        abandoned = row is not None and row.status == SummaryStatus.PENDING and (
            row.claimed_until is None or row.claimed_until < utcnow())
        outdated = (row is not None and row.generated_at is not None and newest is not None
                    and newest > row.generated_at and session is not None and session.status == SessionStatus.STOPPED)
        if session is not None and session.completed_at is not None and (row is None or abandoned) or outdated:
            self.request(session_id)
        return wire(row, session_id)

    # -- making ------------------------------------------------------------------------

    async def _make_logged(self, session_id: str, *, claimed: bool) -> None:
        try:
            await self.make(session_id, claimed=claimed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("summary of session %s failed", session_id)

    async def make(self, session_id: str, *, claimed: bool = False) -> dict[str, Any] | None:
        """Claim (unless `claimed`), summarise, store, publish; None when another process holds the claim."""
        if not claimed and not await self._claim(session_id):
            return None
        await self._publish(await self.get_stored(session_id))
        renewing = asyncio.get_running_loop().create_task(self._keep_claim(session_id), name=f"summary-claim-{session_id}")
        try:
            async with self._one_at_a_time:
                started = time.monotonic()
                digest = await self._digest(session_id)
                self.seconds.observe(time.monotonic() - started)
        except asyncio.CancelledError:
            raise  # the claim stays listed: stop() gives it back
        except Exception as exc:
            self.failed += 1
            self.outcomes.labels("failed").inc()
            await self._store(session_id, SummaryStatus.FAILED, Digest(EXTRACTIVE, "", reason=f"internal error: {exc}"))
            self._claimed.discard(session_id)
            await self._publish(await self.get_stored(session_id))
            raise
        finally:
            renewing.cancel()
        self._claimed.discard(session_id)
        body = await self.get_stored(session_id)
        await self._publish(body)
        self.made += 1
        self.outcomes.labels("fallback" if self.chat and digest.method == EXTRACTIVE and digest.words else digest.method).inc()
        return body

    async def _digest(self, session_id: str) -> Digest:
        segments = await self._segments(session_id)
        sentences = sentences_of(segments)
        extracted = await self._cpu(extractive, segments)
        if self.chat is None or not sentences:
            digest = extracted if sentences else Digest(EXTRACTIVE, "", reason="the transcript has no words")
        else:
            try:
                notes = await self.chat.summarize(sentences)
            except SummaryFailed as failure:
                log.warning("summary of %s by %s failed, serving the extractive one: %s", session_id, self.chat.model,
                            failure.reason)
                digest = dataclasses.replace(extracted, reason=f"the model's summary failed: {failure.reason}")
            else:
                points = await self._cpu(placed, notes.key_points + notes.action_items, sentences)
                digest = Digest(LLM, notes.summary, points[:len(notes.key_points)], points[len(notes.key_points):],
                                extracted.keywords, extracted.words, model=self.chat.model)
        await self._store(session_id, SummaryStatus.READY, digest)
        return digest

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.own_process:
            return await asyncio.to_thread(fn, *args)
        if self._pool is None:  # spawn, not fork: this process has threads (database, whisper) a fork would copy mid-work
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenProcessPool:  # the process died (killed, out of memory): a new one next time
            self._pool = None
            raise

    async def _segments(self, session_id: str) -> list[dict[str, Any]]:
        query = (select(TranscriptSegment).where(col(TranscriptSegment.session_id) == session_id)
                 .order_by(col(TranscriptSegment.start_ms), col(TranscriptSegment.seq)))
        async with self.db.read() as s:
            return [row.wire() for row in (await s.execute(query)).scalars()]

    async def _keep_claim(self, session_id: str) -> None:
        """While this process makes the summary (a model may take longer than a claim lasts: pieces of a long
        transcript, SUMMARY_TIMEOUT_S each), its claim is renewed, so no other process starts it meanwhile."""
        while True:
            await asyncio.sleep(self.claim_s / RENEWALS_PER_CLAIM)
            try:
                async with self.db.write() as s:
                    await s.execute(update(SessionSummary).where(
                        col(SessionSummary.session_id) == session_id, col(SessionSummary.status) == SummaryStatus.PENDING)
                        .values(claimed_until=utcnow() + timedelta(seconds=self.claim_s)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next renewal tries again; the claim still has most of its time
                log.warning("summary of %s: renewing its claim failed (%s)", session_id, exc)

    async def _claim(self, session_id: str) -> bool:
        if await self._claim_row(session_id):
            self._claimed.add(session_id)
            return True
        return False

    async def _claim_row(self, session_id: str) -> bool:
        now = utcnow()
        until = now + timedelta(seconds=self.claim_s)
        async with self.db.write() as s:
            claimed = await s.execute(
                update(SessionSummary).where(col(SessionSummary.session_id) == session_id, or_(
                    col(SessionSummary.status) != SummaryStatus.PENDING, col(SessionSummary.claimed_until).is_(None),
                    col(SessionSummary.claimed_until) < now))
                .values(status=SummaryStatus.PENDING, claimed_until=until))
            if affected(claimed):
                return True
            if await s.get(SessionSummary, session_id) is not None:
                return False  # someone else is making it now
        try:
            async with self.db.write() as s:
                s.add(SessionSummary(session_id=session_id, claimed_until=until))
        except IntegrityError:
            return False  # another process inserted it first (or the session does not exist)
        return True

    async def _store(self, session_id: str, status: str, digest: Digest) -> None:
        key_points, action_items = [p.wire() for p in digest.key_points], [p.wire() for p in digest.action_items]
        async with self.db.write() as s:
            await s.execute(update(SessionSummary).where(col(SessionSummary.session_id) == session_id).values(
                status=status, method=digest.method, model=digest.model, text=digest.text,
                key_points=json.dumps(key_points), action_items=json.dumps(action_items),
                keywords=json.dumps(digest.keywords), words=digest.words, reason=digest.reason,
                generated_at=utcnow(), claimed_until=None))
            # What search finds of a model's words, replaced in the same transaction (an extractive summary's
            # words are the transcript's: search finds them as segments).
            await s.execute(delete(SummaryPassage).where(col(SummaryPassage.session_id) == session_id))
            if status == SummaryStatus.READY and digest.method == LLM:
                s.add_all(search.summary_passages(session_id, digest.text, key_points, action_items))

    async def get_stored(self, session_id: str) -> dict[str, Any]:
        async with self.db.read() as s:
            return wire(await s.get(SessionSummary, session_id), session_id)

    async def _publish(self, body: dict[str, Any]) -> None:
        if self.emitter is None:
            return
        for namespace in NAMESPACES:
            await self.emitter.emit(EVENT, body, room=room_of(body["sessionId"]), namespace=namespace)




def wire(row: SessionSummary | None, session_id: str) -> dict[str, Any]:
    """The REST GET body and the `session-summary` event's."""
    if row is None:
        row = SessionSummary(session_id=session_id)
    body: dict[str, Any] = {
        "sessionId": session_id, "status": row.status, "method": row.method, "text": row.text,
        "keyPoints": json.loads(row.key_points), "actionItems": json.loads(row.action_items),
        "keywords": json.loads(row.keywords), "words": row.words,
        "generatedAt": row.generated_at.isoformat() if row.generated_at else None, "reason": row.reason,
    }
    if row.model:
        body["model"] = row.model
    return body


# -- downloads ------------------------------------------------------------------------

def render(body: dict[str, Any], segments: list[dict[str, Any]] | None, fmt: str, title: str | None = None) -> str:
    """The summary (when ready) followed by the transcript (unless None), as plain text (`txt`) or Markdown (`md`).
    A model's words are text: in Markdown they are escaped so that none of them is read as markup."""
    md = fmt == "md"
    esc = transcripts.markdown_text if md else (lambda text: text)
    lines: list[str] = []
    if md:
        lines += [f"# {esc(title or body['sessionId'])}", ""]
    if body["status"] == SummaryStatus.READY and (body["text"] or body["keyPoints"] or body["actionItems"]):
        how = f"{body['method']}" + (f", {body['model']}" if body.get("model") else "")
        lines += [("## Summary" if md else "SUMMARY") + f" ({esc(how)})", "", esc(body["text"]), ""]
        for heading, items in (("Key points", body["keyPoints"]), ("Action items", body["actionItems"])):
            if items:
                lines += ["## " + heading if md else heading.upper(), ""]
                lines += [f"- {_at(item)}{esc(item['text'])}" for item in items] + [""]
        if body["keywords"]:
            lines += [("**Keywords:** " if md else "Keywords: ") + esc(", ".join(body["keywords"])), ""]
    elif body["status"] != SummaryStatus.READY or segments is None:
        lines += [f"(summary {body['status']}" + (f": {body['reason']}" if body.get("reason") else "") + ")", ""]
    if segments is None:
        return "\n".join(lines).rstrip() + "\n"
    lines += ["## Transcript" if md else "TRANSCRIPT", ""]
    return "\n".join(lines) + "\n" + transcripts.render(segments, fmt)


def _at(item: dict[str, Any]) -> str:
    start = item.get("startMs")
    if start is None:
        return ""
    return f"[{transcripts.clock(int(start))}] "




# -- REST ------------------------------------------------------------------------------

summaries_key = web.AppKey("summaries", Summaries)


@routes.get("/api/sessions/{session_id}/summary")
async def get_summary(request: web.Request) -> web.Response:
    """The session's summary (pending until made); ?format=txt|md downloads it followed by the transcript."""
    from scribeai.rest import user_key
    from scribeai.services import services_key

    services = request.app[services_key]
    session_id = protocol.parse_session_id(request.match_info["session_id"], "id")
    session = await services.sessions.get_owned(session_id, request[user_key])
    fmt = request.query.get("format", "json")
    if fmt != "json" and fmt not in FORMATS:
        raise InvalidInput(f"format must be json, {', '.join(FORMATS)}")
    body = await request.app[summaries_key].get(session_id)
    if fmt == "json":
        return web.json_response(body)
    segments = await services.pipeline.segments_after(session_id, None)
    return web.Response(text=render(body, segments, fmt, session.title), headers={
        "Content-Type": FORMATS[fmt], "Content-Disposition": f'attachment; filename="{session_id}-summary.{fmt}"'})


@routes.post("/api/sessions/{session_id}/summary")
async def make_summary(request: web.Request) -> web.Response:
    """Make the summary again (from the transcript as it is now): 202 with the pending body; the result comes
    as `session-summary` and from GET."""
    from scribeai.rest import user_key
    from scribeai.services import services_key

    services = request.app[services_key]
    session_id = protocol.parse_session_id(request.match_info["session_id"], "id")
    await services.sessions.get_owned(session_id, request[user_key])
    return web.json_response(await request.app[summaries_key].start(session_id), status=202)


async def stop_summaries(app: web.Application) -> None:
    """on_shutdown: summaries in progress are dropped (a GET after the restart makes them again)."""
    await app[summaries_key].stop()
