"""The transcription pipeline end to end: real speech through whisper, the durable queue, live segments."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import func, select

from scribeai.models import Chunk, TranscriptSegment, TranscriptStream
from tests.conftest import RunningServer, ServerFactory, chunk
from tests.fake_openai import FakeTranscriptionAPI
from tests.speech import normalize

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
TIMESLICES = sorted(name for name in MANIFEST if name.startswith("timeslice_"))


def audio(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# Real speech for the tests that fake only the paid API: the server decodes and windows audio itself.
HELLO = (FIXTURES / "speech_hello.wav").read_bytes()


def words(text: str) -> set[str]:
    """The words heard, numbers spelled out: whisper writes "seven" or "7" depending on the window it hears."""
    return set(normalize(text))


async def collect(client: socketio.AsyncSimpleClient, event: str, count: int, timeout: float = 60) -> list[Any]:
    found: list[Any] = []
    while len(found) < count:
        name, *args = await client.receive(timeout=timeout)
        if name == event:
            found.append(args[0])
    return found


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


async def test_whisper_pushes_each_chunk_as_a_segment_with_its_words(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=2)
    recorder = await connect(server.url)
    viewer = await connect(server.url, namespace="/record")
    await viewer.call("joinSession", {"sessionId": "live"}, timeout=5)
    names = ["speech_fox.webm", "speech_stella.webm", "speech_train.webm"]
    for seq, name in enumerate(names):
        ack = await recorder.call("audio-chunk", chunk("live", seq, audio(name), mimeType=MANIFEST[name]["mime_type"],
                                                      timestamp=1_732_000_000_000 + seq * 5000), timeout=5)
        assert ack["duplicate"] is False
    segments = sorted(await collect(viewer, "transcriptSegment", 3), key=lambda s: s["seq"])
    assert [s["seq"] for s in segments] == [0, 1, 2]
    for segment, name in zip(segments, names, strict=True):
        assert set(MANIFEST[name]["keywords"]) <= words(segment["text"]), (name, segment["text"])
        assert segment["sessionId"] == "live" and segment["isFinal"] is True
        assert 0 < segment["confidence"] <= 1
    assert [s["startMs"] for s in segments] == [0, 5000, 10000]
    # Whisper places its text at 20 ms steps inside the clip: each segment ends within the clip's own audio.
    for segment, name in zip(segments, names, strict=True):
        assert MANIFEST[name]["duration_ms"] - 1000 <= segment["endMs"] - segment["startMs"] <= MANIFEST[name]["duration_ms"] + 20


async def test_other_containers_and_undecodable_audio(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1, transcribe_retry_base_s=0.01)
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("mixed", 0, audio("speech_welcome.ogg"), mimeType="audio/ogg"), timeout=5)
    await client.call("audio-chunk", chunk("mixed", 1, audio("speech_hello.wav"), mimeType="audio/wav"), timeout=5)
    refused = await client.call("audio-chunk", chunk("mixed", 2, b"\x00not audio at all" * 50, mimeType="audio/mpeg"), timeout=5)
    assert refused["error"]["code"] == "invalid"  # not even the start of an MP3: refused before it is stored
    assert "without an ID3 tag or an MPEG audio frame at its start" in refused["error"]["message"]
    # an MP3 frame header and then no MP3: stored, and its failure says what was wrong with it
    await client.call("audio-chunk", chunk("mixed", 2, b"\xff\xfb\x90\x64" + b"\x00not audio at all" * 50,
                                           mimeType="audio/mpeg"), timeout=5)
    await server.services.pipeline.drain(timeout=90)
    async with server.services.db.read() as s:
        rows = {c.seq: c for c in (await s.execute(select(Chunk).where(Chunk.session_id == "mixed"))).scalars()}
        texts = {g.seq: g.text for g in (await s.execute(select(TranscriptSegment))).scalars()}
    assert set(MANIFEST["speech_welcome.ogg"]["keywords"]) <= words(texts[0])
    assert set(MANIFEST["speech_hello.wav"]["keywords"]) <= words(texts[1])
    assert (rows[2].status, rows[2].attempts) == ("failed", 0)  # undecodable: no pointless retries
    assert "Invalid data found when processing input" in rows[2].error
    assert 2 not in texts


async def test_timeslice_chunks_decode_behind_the_session_header(start_server: ServerFactory, connect: Any) -> None:
    """Headerless continuations that arrive before chunk 0 wait for it, then decode behind its header."""
    server = await start_server(transcriber="whisper", max_concurrency=2)
    client = await connect(server.url)
    await client.call("joinSession", {"sessionId": "slices"}, timeout=5)
    for name in reversed(TIMESLICES):
        info = MANIFEST[name]
        ack = await client.call("audio-chunk", chunk("slices", info["order"], audio(name), timestamp=info["start_ms"]), timeout=5)
        assert ack["duplicate"] is False
    await server.services.pipeline.drain(timeout=90)
    segments = await server.services.pipeline.segments_after("slices", None)
    text = " ".join(s["text"] for s in segments)
    for name in TIMESLICES:
        assert set(MANIFEST[name]["keywords"]) <= words(text), (name, text)
    # windows are cut at pauses, not at chunks: each segment sits inside the recording, in order
    assert [s["startMs"] for s in segments] == sorted(s["startMs"] for s in segments)
    assert 0 <= segments[0]["startMs"] and segments[-1]["endMs"] <= sum(MANIFEST[n]["duration_ms"] for n in TIMESLICES) + 20
    assert segments[-1]["seq"] == 3 and all(s["fromSeq"] <= s["seq"] for s in segments)


async def test_replay_after_last_seq_in_order(start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k")
    client = await connect(server.url)
    for seq in range(5):
        await client.call("audio-chunk", chunk("replay", seq, HELLO, mimeType="audio/wav"), timeout=5)
    await server.services.pipeline.drain()
    assert len(fake_api.answers) == 5  # chunks 15 s apart: each one a window of its own
    late = await connect(server.url, namespace="/record")
    joined = await late.call("joinSession", {"sessionId": "replay", "lastSeq": 2}, timeout=5)
    assert (joined["maxSeq"], joined["totalChunks"], joined["missing"]) == (4, 5, [])
    replayed = await collect(late, "transcriptSegment", 2, timeout=5)
    assert [(s["seq"], s["fromSeq"], s["text"]) for s in replayed] == [(3, 3, fake_api.answers[3]), (4, 4, fake_api.answers[4])]
    everyone = await connect(server.url)
    await everyone.call("joinSession", {"sessionId": "replay"}, timeout=5)
    assert [s["seq"] for s in await collect(everyone, "transcriptSegment", 5, timeout=5)] == [0, 1, 2, 3, 4]


async def test_failures_retry_with_backoff_then_succeed(start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    fake_api.fail_first = 2
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), transcribe_retry_base_s=0.05)
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("flaky", 0, HELLO, mimeType="audio/wav"), timeout=5)
    await server.services.pipeline.drain()
    async with server.services.db.read() as s:
        row = (await s.execute(select(Chunk).where(Chunk.session_id == "flaky"))).scalar_one()
        segments = list((await s.execute(select(TranscriptSegment))).scalars())
    assert (row.status, len(fake_api.requests)) == ("done", 3)
    assert [g.text for g in segments] == fake_api.answers[-1:]
    assert server.services.pipeline.retried == 2


async def test_a_stop_during_a_failing_window_does_not_cut_its_backoff_short(
        start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    fake_api.fail_first, fake_api.fail_delay_s = 1, 1.5
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), transcribe_retry_base_s=3600)
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("stop-mid-failure", 0, HELLO, mimeType="audio/wav"), timeout=5)
    deadline = asyncio.get_running_loop().time() + 30
    while not fake_api.requests:  # the window (flushed when the session went idle) is being sent, and will fail
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    stopped = await client.call("stopSession", {"sessionId": "stop-mid-failure"}, timeout=5)  # a wake, mid-window
    assert stopped["status"] == "stopped"
    await asyncio.sleep(3)  # the failure came back 1.5 s after the request; the retry is due in an hour, not now
    assert len(fake_api.requests) == 1
    async with server.services.db.read() as s:
        stream = (await s.execute(select(TranscriptStream).where(TranscriptStream.session_id == "stop-mid-failure"))).scalar_one()
    assert stream.attempts == 1 and stream.claimed_by is None
    assert stream.due_at is not None
    due = stream.due_at if stream.due_at.tzinfo else stream.due_at.replace(tzinfo=timezone.utc)
    assert (due - datetime.now(timezone.utc)).total_seconds() > 3000


async def test_restart_mid_queue_finishes_every_job_exactly_once(start_server: ServerFactory, connect: Any,
                                                                   fake_api: FakeTranscriptionAPI) -> None:
    fake_api.delay_s = 0.2
    url = await fake_api.start()
    shared = {"transcriber": "openai", "openai_base_url": url, "max_concurrency": 1, "node_id": "node-a"}
    first = await start_server(**shared)
    client = await connect(first.url)
    for seq in range(8):
        await client.call("audio-chunk", chunk("restart", seq, HELLO, mimeType="audio/wav"), timeout=5)
    while first.services.pipeline.completed < 2:
        await asyncio.sleep(0.05)
    await client.disconnect()
    await first.app.shutdown()
    await first.app.cleanup()  # workers cancelled mid-job: that job stays claimed by node-a
    second = await start_server(same_database_as=first, **shared)
    await second.services.pipeline.drain()
    async with second.services.db.read() as s:
        segments = list((await s.execute(select(TranscriptSegment).where(TranscriptSegment.session_id == "restart")
                                         .order_by(TranscriptSegment.seq))).scalars())
        done = (await s.execute(select(func.count()).select_from(Chunk).where(Chunk.status == "done"))).scalar_one()
    assert [g.seq for g in segments] == list(range(8))
    assert [g.text for g in segments] == [fake_api.answers[0]] * 8  # the same speech in every chunk
    assert done == 8
    assert len(fake_api.requests) <= 9  # at most the one job cut off by the stop is sent twice


async def test_slow_engine_makes_a_fast_recorder_buffer_then_resume(start_server: ServerFactory, connect: Any,
                                                                     fake_api: FakeTranscriptionAPI) -> None:
    fake_api.delay_s = 0.25
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), max_concurrency=1, max_queue_size=4)
    client = await connect(server.url)
    await client.call("joinSession", {"sessionId": "fast"}, timeout=5)
    events: list[tuple[str, Any]] = []
    can_accept = True
    acks = 0
    for seq in range(12):
        while not can_accept:  # obey: wait for backpressure {canAccept: true}
            name, *args = await client.receive(timeout=30)
            events.append((name, args[0] if args else None))
            if name == "backpressure":
                can_accept = args[0]["canAccept"]
        ack = await client.call("audio-chunk", chunk("fast", seq, HELLO, mimeType="audio/wav"), timeout=10)
        assert "error" not in ack, ack
        acks += 1
        can_accept = ack["canAccept"]
        assert (ack["credits"] == 0) is (not ack["canAccept"])
    await server.services.pipeline.drain()
    while True:
        try:
            name, *args = await client.receive(timeout=1)
        except socketio.exceptions.TimeoutError:
            break
        events.append((name, args[0] if args else None))
    signals = [(e[1]["state"], e[1]["canAccept"]) for e in events if e[0] == "backpressure"]
    assert signals[0] == ("buffering", False)
    assert signals[-1] == ("ok", True)
    assert all(a != b for a, b in zip(signals, signals[1:], strict=False))  # one signal per transition, no spam
    assert acks == 12
    assert len([e for e in events if e[0] == "transcriptSegment"]) == 12
    assert server.services.realtime.connections and all(c.pending == set() for c in server.services.realtime.connections.values())


async def test_session_completed_after_stop_once_everything_is_transcribed(start_server: ServerFactory, connect: Any,
                                                                           fake_api: FakeTranscriptionAPI) -> None:
    fake_api.delay_s = 0.1
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start())
    client = await connect(server.url)
    await client.call("start-session", {"sessionId": "done-soon"}, timeout=5)
    for seq in range(3):
        await client.call("audio-chunk", chunk("done-soon", seq, HELLO, mimeType="audio/wav"), timeout=5)
    await client.call("stop-session", {"sessionId": "done-soon"}, timeout=5)
    names: list[str] = []
    while "session-completed" not in names:
        names.append((await client.receive(timeout=10))[0])
    assert names.count("transcriptSegment") == 3
    assert names.count("transcript-updated") == 3


async def test_offsets_do_not_depend_on_arrival_order(start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start())
    client = await connect(server.url)
    # epoch timestamps, chunk 1 first: it waits for chunk 0 instead of guessing its offset
    await client.call("audio-chunk", chunk("epoch", 1, HELLO, mimeType="audio/wav", timestamp=1_700_000_005_000), timeout=5)
    await asyncio.sleep(0.3)
    await client.call("audio-chunk", chunk("epoch", 0, HELLO, mimeType="audio/wav", timestamp=1_700_000_000_000), timeout=5)
    # relative timestamps (the original app: ms since the recording started) mark the chunk's end
    for seq, ts in ((2, 31_000), (1, 16_000)):
        await client.call("audio-chunk", chunk("relative", seq, HELLO, mimeType="audio/wav", timestamp=ts), timeout=5)
    await server.services.pipeline.drain()
    epoch = await server.services.pipeline.segments_after("epoch", None)
    relative = await server.services.pipeline.segments_after("relative", None)
    speech = (await server.services.pipeline.segments_after("epoch", None))[0]
    lead, length = speech["startMs"], speech["endMs"] - speech["startMs"]  # the window is trimmed to the speech
    assert 0 <= lead < 400 and 0 < length <= 1260
    assert [(g["seq"], g["startMs"], g["endMs"]) for g in epoch] == [(0, lead, lead + length), (1, 5000 + lead, 5000 + lead + length)]
    assert [(g["seq"], g["startMs"]) for g in relative] == [(1, 16_000 - 1260 + lead), (2, 31_000 - 1260 + lead)]


async def test_a_latency_episode_ends_when_the_connection_queue_drains(start_server: ServerFactory, connect: Any,
                                                                      fake_api: FakeTranscriptionAPI) -> None:
    fake_api.delay_s = 0.3
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), max_processing_latency_ms=200)
    client = await connect(server.url)
    first = await client.call("audio-chunk", chunk("slowish", 0, HELLO, mimeType="audio/wav"), timeout=5)
    assert first["canAccept"] is True  # no transcription has been slow yet
    await server.services.pipeline.drain()
    second = await client.call("audio-chunk", chunk("slowish", 1, HELLO, mimeType="audio/wav"), timeout=5)
    assert second["canAccept"] is False  # a chunk waits behind an engine slower than the limit
    await server.services.pipeline.drain()
    bodies: list[dict[str, Any]] = []
    while len(bodies) < 2:
        name, *args = await client.receive(timeout=5)
        if name == "backpressure":
            bodies.append(args[0])
    assert [(b["state"], b["canAccept"], b["queueSize"]) for b in bodies] == [("buffering", False, 1), ("ok", True, 0)]
    assert bodies[0]["reason"] == "latency"
    third = await client.call("audio-chunk", chunk("slowish", 2, HELLO, mimeType="audio/wav"), timeout=5)
    assert third["canAccept"] is False  # the engine is still slow: a new chunk starts a new episode


async def test_no_session_completed_while_a_chunk_is_missing(start_server: ServerFactory, connect: Any,
                                                             fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), gap_wait_s=0.2)
    client = await connect(server.url)
    await client.call("start-session", {"sessionId": "holey"}, timeout=5)
    for seq in (0, 2):
        await client.call("audio-chunk", chunk("holey", seq, HELLO, mimeType="audio/wav"), timeout=5)
    stopped = await client.call("stopSession", {"sessionId": "holey"}, timeout=5)
    assert stopped["missing"] == [1]
    await server.services.pipeline.drain()
    names: list[str] = []
    with pytest.raises(socketio.exceptions.TimeoutError):
        while True:
            names.append((await client.receive(timeout=1))[0])
    assert "session-completed" not in names and names.count("transcriptSegment") == 2
    await client.call("audio-chunk", chunk("holey", 1, HELLO, mimeType="audio/wav"), timeout=5)  # the resend
    while "session-completed" not in names:
        names.append((await client.receive(timeout=10))[0])
    assert names.count("transcriptSegment") == 3


async def test_a_session_completes_again_after_chunks_that_came_since(start_server: ServerFactory, connect: Any,
                                                                      fake_api: FakeTranscriptionAPI) -> None:
    """Recorded more after its stop (resume, or a chunk resent late): once that is transcribed too, the session says
    session-completed again (and its summary is made again), not only the first time."""
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start())
    completed: list[str] = []

    async def on_completed(session_id: str) -> None:
        completed.append(session_id)

    server.services.pipeline.on_completed = on_completed
    client = await connect(server.url)
    await client.call("start-session", {"sessionId": "more"}, timeout=5)
    await client.call("audio-chunk", chunk("more", 0, HELLO, mimeType="audio/wav"), timeout=5)
    await client.call("stop-session", {"sessionId": "more"}, timeout=5)
    names: list[str] = []
    while "session-completed" not in names:
        names.append((await client.receive(timeout=10))[0])
    await client.call("resume-session", {"sessionId": "more"}, timeout=5)
    await client.call("audio-chunk", chunk("more", 1, HELLO, mimeType="audio/wav"), timeout=5)
    await client.call("stop-session", {"sessionId": "more"}, timeout=5)
    names = []
    while "session-completed" not in names:
        names.append((await client.receive(timeout=10))[0])
    assert names.count("transcriptSegment") == 1 and completed == ["more", "more"]
    await client.call("stop-session", {"sessionId": "more"}, timeout=5)  # stopped again, nothing new: no third time
    await server.services.pipeline.check_completed("more")
    assert completed == ["more", "more"]
