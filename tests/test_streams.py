"""A session as one stream: split recordings, real Chromium blobs, gaps, new headers, silence (pure and end to end)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from scribeai.models import Chunk
from scribeai.transcription.media import wav_bytes
from scribeai.transcription.streams import CheckpointError, ChunkBytes, NoStream, SessionStream, Timing
from scribeai.transcription.windows import SileroDetector, Window, Windower
from tests.conftest import ServerFactory, chunk
from tests.test_containers import RECORDINGS, random_pieces
from tests.test_transcription import words

AUDIO = Path(__file__).parent / "fixtures" / "audio"
CHROMIUM = AUDIO / "chromium"
BROWSER: dict[str, Any] = json.loads((CHROMIUM / "manifest.json").read_text())
DETECTOR = SileroDetector()
STREAMED = ["webm-chrome", "webm-known-sizes", "ogg", "mp4-aac", "mp4-opus"]


def blobs(timeslice: str) -> list[bytes]:
    return [(CHROMIUM / timeslice / b["file"]).read_bytes() for b in BROWSER["sets"][timeslice]["blobs"]]


def run(pieces: list[bytes], *, skip: set[int] = frozenset(), mime: str = "audio/webm;codecs=opus") -> tuple[SessionStream, list[Window]]:  # type: ignore[assignment]
    stream = SessionStream(Windower(DETECTOR), Timing(1.7e12, 15000))
    windows: list[Window] = []
    for seq, data in enumerate(pieces):
        if seq in skip:
            continue
        if seq > stream.next_seq:
            stream.gap(stream.next_seq, seq - 1)
        windows += stream.feed(ChunkBytes(seq, data, mime, 1.7e12 + seq * 1000))
    return stream, windows + stream.flush()


def audio_of(windows: list[Window]) -> np.ndarray:
    return np.concatenate([w.pcm for w in windows if len(w.pcm)])


@pytest.mark.parametrize("name", STREAMED)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_splits_give_the_same_windows_as_the_whole_recording(name: str, seed: int) -> None:
    data = RECORDINGS[name].data
    _, whole = run([data])
    _, split = run(random_pieces(data, seed, 12))
    assert [(w.start_ms, w.end_ms, w.speech_ms) for w in split] == [(w.start_ms, w.end_ms, w.speech_ms) for w in whole]
    assert np.array_equal(audio_of(split), audio_of(whole))
    assert sum(w.speech_ms for w in whole) > 8000  # the recording's speech is all there (16.6 s with pauses)


@pytest.mark.parametrize("timeslice", ["ts1000", "ts5000"])
def test_real_chromium_timeslice_blobs_are_one_recording(timeslice: str) -> None:
    pieces = blobs(timeslice)
    assert pieces[0][:4] == b"\x1a\x45\xdf\xa3" and all(p[:4] != b"\x1a\x45\xdf\xa3" for p in pieces[1:])
    stream, windows = run(pieces)
    _, whole = run([b"".join(pieces)])
    assert np.array_equal(audio_of(windows), audio_of(whole))
    assert windows[-1].to_seq == len(pieces) - 1 and stream.end_ms > 7000
    assert stream.problems == 0 and stream.gaps == []


def test_a_missing_blob_is_a_gap_and_the_stream_goes_on_after_it() -> None:
    pieces = blobs("ts1000")
    stream, windows = run(pieces, skip={3})
    _, whole = run(pieces)
    assert [(g.from_seq, g.to_seq) for g in stream.gaps] == [(3, 3)]
    gap = stream.gaps[0]
    assert gap.end_ms is not None and 900 <= gap.end_ms - gap.start_ms <= 2200  # about one timeslice of audio
    assert stream.end_ms == pytest.approx(max(w.through_ms for w in whole), abs=30)
    assert len(audio_of(windows)) < len(audio_of(whole))


def test_a_new_header_mid_session_starts_a_new_stream_after_the_first() -> None:
    """A reload 20 s into the session: the new recording's header restarts the demuxer; its audio is placed at 20 s."""
    stream = SessionStream(Windower(DETECTOR), Timing(1.7e12, 15000))
    windows: list[Window] = []
    pieces = blobs("ts1000")
    for seq, data in enumerate(pieces):
        windows += stream.feed(ChunkBytes(seq, data, "audio/webm", 1.7e12 + seq * 1000))
    first_end = stream.end_ms
    reload_seq = len(pieces)
    windows += stream.feed(ChunkBytes(reload_seq, (AUDIO / "speech_fox.webm").read_bytes(), "audio/webm", 1.7e12 + 20_000))
    windows += stream.flush()
    assert stream.stream_start_seq == reload_seq
    assert max(w.end_ms for w in windows if w.to_seq < reload_seq) <= first_end
    fox = [w for w in windows if w.from_seq == reload_seq and w.speech_ms > 0]
    assert len(fox) == 1 and 20_000 <= fox[0].start_ms and fox[0].end_ms <= 20_000 + 3438 + 20


def test_a_stream_whose_first_chunk_never_arrives_says_so() -> None:
    stream = SessionStream(Windower(DETECTOR), Timing(None, 15000))
    with pytest.raises(NoStream, match="first chunk"):
        stream.feed(ChunkBytes(1, blobs("ts1000")[1], "audio/webm", 1000.0))
    assert stream.next_seq == 2


def test_relative_timestamps_mark_a_chunks_end_and_epoch_ones_its_start() -> None:
    timing = Timing(None, 15000)
    assert timing.start_of(ChunkBytes(3, b"", "audio/webm", 60_000.0), previous_timestamp_ms=45_000.0) == 45_000.0
    assert timing.start_of(ChunkBytes(3, b"", "audio/webm", 60_000.0), previous_timestamp_ms=None) == 45_000.0
    assert Timing(1.7e12, 15000).start_of(ChunkBytes(3, b"", "audio/webm", 1.7e12 + 45_000), None) == 45_000.0


# --- end to end: the server, whisper, the database --------------------------------------------


async def test_chromium_blobs_are_transcribed_as_one_recording(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1)
    client = await connect(server.url)
    for seq, data in enumerate(blobs("ts1000")):
        ack = await client.call("audio-chunk", chunk("browser", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
        assert ack["duplicate"] is False
    await server.services.pipeline.drain(timeout=90)
    segments = await server.services.pipeline.segments_after("browser", None)
    heard = words(" ".join(s["text"] for s in segments))
    assert {"quick", "brown", "fox", "lazy", "dog", "train", "london", "seven"} <= heard, heard
    async with server.services.db.read() as s:
        statuses = {c.seq: c.status for c in (await s.execute(select(Chunk).where(Chunk.session_id == "browser"))).scalars()}
    assert set(statuses.values()) == {"done"} and len(statuses) == len(blobs("ts1000"))


async def test_a_gap_is_waited_for_skipped_and_filled_late(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1, gap_wait_s=0.5)
    client = await connect(server.url)
    pieces = blobs("ts1000")
    for seq, data in enumerate(pieces):
        if seq != 2:
            await client.call("audio-chunk", chunk("holey", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
    await server.services.pipeline.drain(timeout=90)
    before = await server.services.pipeline.gaps("holey")
    assert [(g["fromSeq"], g["toSeq"], g["filled"], g["reason"]) for g in before] == [(2, 2, False, "missing")]
    await client.call("audio-chunk", chunk("holey", 2, pieces[2], timestamp=1_732_000_002_000), timeout=5)
    await server.services.pipeline.drain(timeout=90)
    after = await server.services.pipeline.gaps("holey")
    assert [(g["fromSeq"], g["filled"]) for g in after] == [(2, True)]
    segments = await server.services.pipeline.segments_after("holey", None)
    hole = (before[0]["startMs"], before[0]["endMs"])
    # The hole's 1 s of audio (mid-sentence) is transcribed on its own, once: what whisper hears in it (often
    # nothing in so short a piece; tests/test_late_chunks.py checks the words of a longer hole) lies inside it.
    filled = [s for s in segments if hole[0] - 1 <= s["startMs"] and s["endMs"] <= hole[1] + 1]
    assert all(s["fromSeq"] <= 2 <= s["seq"] for s in filled), (hole, segments)
    assert all(s["endMs"] <= hole[0] + 1 or s["startMs"] >= hole[0] - 1 for s in segments), (hole, segments)
    async with server.services.db.read() as s:
        statuses = {c.seq: c.status for c in (await s.execute(select(Chunk).where(Chunk.session_id == "holey"))).scalars()}
    assert statuses == {seq: "done" for seq in range(len(pieces))}


@pytest.mark.parametrize("kind", ["silence", "noise"])
async def test_sixty_seconds_of_silence_or_noise_give_no_segment(start_server: ServerFactory, connect: Any, kind: str) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1)
    client = await connect(server.url)
    rng = np.random.default_rng(7)
    for seq in range(4):
        pcm = np.zeros(15 * 16000, dtype=np.float32) if kind == "silence" else rng.normal(0, 0.1, 15 * 16000).astype(np.float32)
        await client.call("audio-chunk", chunk(kind, seq, wav_bytes(pcm, 16000), mimeType="audio/wav"), timeout=5)
    await server.services.pipeline.drain(timeout=120)
    assert await server.services.pipeline.segments_after(kind, None) == []
    async with server.services.db.read() as s:
        statuses = [c.status for c in (await s.execute(select(Chunk).where(Chunk.session_id == kind))).scalars()]
    assert statuses == ["done"] * 4


async def test_a_restart_mid_window_resumes_from_the_stored_chunks(start_server: ServerFactory, connect: Any) -> None:
    shared = {"transcriber": "whisper", "max_concurrency": 1, "node_id": "node-a"}
    first = await start_server(**shared)
    client = await connect(first.url)
    pieces = blobs("ts1000")
    for seq, data in enumerate(pieces[:5]):
        await client.call("audio-chunk", chunk("resume", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
    while await first.services.pipeline.queue.backlog() > 0:  # read into the stream, held for its window
        await asyncio.sleep(0.05)
    await client.disconnect()
    await first.app.shutdown()
    await first.app.cleanup()
    second = await start_server(same_database_as=first, **shared)
    client = await connect(second.url)
    for seq, data in enumerate(pieces[5:], start=5):
        await client.call("audio-chunk", chunk("resume", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
    await second.services.pipeline.drain(timeout=90)
    segments = await second.services.pipeline.segments_after("resume", None)
    heard = words(" ".join(s["text"] for s in segments))
    assert {"quick", "fox", "lazy", "train", "london"} <= heard, heard
    starts = [s["startMs"] for s in segments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # nothing transcribed twice


def _whole_file(format_name: str, codec: str, rate: int) -> bytes:
    """A complete file (not a stream of fragments) of the Chrome fixture's speech."""
    import io

    import av

    with av.open(str(AUDIO / "speech_long.webm")) as source:
        resampler = av.AudioResampler(format="s16p" if codec == "libmp3lame" else "fltp", layout="mono", rate=rate)
        frames = [f for frame in source.decode(audio=0) for f in resampler.resample(frame)]
    out = io.BytesIO()
    with av.open(out, "w", format=format_name) as target:
        stream = target.add_stream(codec, rate=rate, layout="mono")
        for frame in [*frames, None]:
            for packet in stream.encode(frame):
                target.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(("format_name", "codec", "mime"), [("mp4", "aac", "audio/mp4"), ("mp3", "libmp3lame", "audio/mpeg")])
def test_complete_mp4_and_mp3_files_decode_on_their_own(format_name: str, codec: str, mime: str) -> None:
    data = _whole_file(format_name, codec, 44100)
    stream, windows = run([data], mime=mime)
    assert stream.stream_start_seq is None  # no stream: a file of its own
    assert 16000 <= stream.end_ms <= 17200 and sum(w.speech_ms for w in windows) > 8000


@pytest.mark.parametrize("name", ["ogg", "mp4-aac", "webm-known-sizes"])
async def test_a_split_recording_gives_the_same_transcript_as_the_whole_file(start_server: ServerFactory, connect: Any,
                                                                           name: str) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1)
    client = await connect(server.url)
    data = RECORDINGS[name].data
    mime = {"ogg": "audio/ogg;codecs=opus", "mp4-aac": "audio/mp4", "webm-known-sizes": "audio/webm;codecs=opus"}[name]
    await client.call("audio-chunk", chunk("whole", 0, data, mimeType=mime), timeout=5)
    for seq, piece in enumerate(random_pieces(data, 11, 7)):
        await client.call("audio-chunk", chunk("split", seq, piece, mimeType=mime, timestamp=1_732_000_000_000 + seq * 2000),
                          timeout=5)
    await server.services.pipeline.drain(timeout=90)
    whole = [(s["startMs"], s["text"]) for s in await server.services.pipeline.segments_after("whole", None)]
    split = [(s["startMs"], s["text"]) for s in await server.services.pipeline.segments_after("split", None)]
    assert split == whole and len(whole) > 0
    assert {"morning", "garden", "report"} <= words(" ".join(text for _, text in whole)), whole


async def test_a_first_chunk_that_arrives_last_restarts_the_stream_from_it(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="whisper", max_concurrency=1, gap_wait_s=0.3)
    client = await connect(server.url)
    pieces = blobs("ts1000")
    for seq, data in list(enumerate(pieces))[1:]:
        await client.call("audio-chunk", chunk("headless", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
    await server.services.pipeline.drain(timeout=90)
    async with server.services.db.read() as s:
        waiting = {c.seq: (c.status, c.error) for c in (await s.execute(select(Chunk).where(Chunk.session_id == "headless"))).scalars()}
    assert {seq: status for seq, (status, _) in waiting.items()} == {seq: "failed" for seq in range(1, len(pieces))}
    assert all("first chunk" in (error or "") for _, error in waiting.values()), waiting
    assert await server.services.pipeline.segments_after("headless", None) == []
    await client.call("audio-chunk", chunk("headless", 0, pieces[0], timestamp=1_732_000_000_000), timeout=5)
    await server.services.pipeline.drain(timeout=90)
    heard = words(" ".join(s["text"] for s in await server.services.pipeline.segments_after("headless", None)))
    assert {"quick", "fox", "lazy", "train", "london"} <= heard, heard
    async with server.services.db.read() as s:
        statuses = {c.seq: c.status for c in (await s.execute(select(Chunk).where(Chunk.session_id == "headless"))).scalars()}
    assert statuses == {seq: "done" for seq in range(len(pieces))}
    assert await server.services.pipeline.gaps("headless") == []


class _Tape:
    """A windower stand-in that keeps every piece of audio the stream places."""

    first_pending_seq = None

    def __init__(self) -> None:
        self.pieces: list[tuple[float, np.ndarray]] = []

    def add(self, pcm: np.ndarray, start_ms: float, seq: int) -> list[Window]:
        self.pieces.append((start_ms, pcm.copy()))
        return []

    def flush(self) -> list[Window]:
        return []


@pytest.mark.parametrize("name", ["webm-chrome", "ogg", "mp4-aac"])
def test_a_checkpoint_reads_on_exactly_as_the_stream_would_have(name: str) -> None:
    """A stream resumed from its checkpoint after chunk k places the same audio at the same times as one that read
    every chunk, but for the first 1 ms a fresh resampler holds back."""
    pieces = random_pieces(RECORDINGS[name].data, 4, 10)
    whole = SessionStream(_Tape(), Timing(1.7e12, 15000))  # type: ignore[arg-type]
    for k in (2, 6):
        stream = SessionStream(_Tape(), Timing(1.7e12, 15000))  # type: ignore[arg-type]
        for seq in range(k + 1):
            stream.feed(ChunkBytes(seq, pieces[seq], "", 1.7e12 + seq * 1000))
        resumed = SessionStream.resumed(_Tape(), stream.checkpoint(), resume_ms=0)  # type: ignore[arg-type]
        assert resumed.next_seq == k + 1
        for seq in range(k + 1, len(pieces)):
            stream.feed(ChunkBytes(seq, pieces[seq], "", 1.7e12 + seq * 1000))
            resumed.feed(ChunkBytes(seq, pieces[seq], "", 1.7e12 + seq * 1000))
        read_on, kept = resumed.windower.pieces, stream.windower.pieces  # type: ignore[attr-defined]
        tail = kept[len(kept) - len(read_on):]
        # placed where they were (WebM's block times have 1 ms steps)
        assert len(read_on) > 20 and all(abs(a[0] - b[0]) <= 1.5 for a, b in zip(read_on[1:], tail[1:]))
        assert abs(resumed.end_ms - stream.end_ms) <= 1.5
        # the same sound once a fresh decoder's state has converged (a few packets: the pipeline resumes a chunk
        # before the audio it must transcribe); a 44.1 kHz source resampled afresh may land between the old samples
        after, before = (np.concatenate([p for _, p in pieces[15:]]) for pieces in (read_on, tail))
        middle = slice(100, min(len(after), len(before)) - 100)
        a = after[middle]
        similarity = max(float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                         for b in (np.roll(before, shift)[middle] for shift in range(-24, 25)))
        assert similarity > 0.97, similarity  # 1.0 for the 48 kHz Opus streams, 0.98 for 44.1 kHz AAC


def test_a_checkpoint_holds_only_the_stream_s_own_state() -> None:
    import pickle

    stream, _ = run(blobs("ts1000")[:3])
    assert SessionStream.resumed(Windower(DETECTOR), stream.checkpoint(), resume_ms=0).next_seq == 3
    for foreign in (pickle.dumps(Path("/etc/passwd")), pickle.dumps({"version": 1}), b"not a pickle"):
        with pytest.raises(CheckpointError):
            SessionStream.resumed(Windower(DETECTOR), foreign, resume_ms=0)


async def test_a_recorder_that_goes_quiet_gets_its_words_without_the_idle_flush(start_server: ServerFactory,
                                                                                connect: Any) -> None:
    """1 s blobs ending in a pause, then nothing: the held audio is transcribed once the recorder has been quiet
    for two of its chunks' length, long before IDLE_FLUSH_S (300 s here); no stop is ever said."""
    server = await start_server(transcriber="whisper", max_concurrency=1, idle_flush_s=300.0)
    client = await connect(server.url)
    await client.call("joinSession", {"sessionId": "quiet"}, timeout=5)
    for seq, data in enumerate(blobs("ts1000")):
        await client.call("audio-chunk", chunk("quiet", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)
    heard: set[str] = set()
    deadline = asyncio.get_running_loop().time() + 60
    while not {"quick", "fox", "train", "london"} <= heard:
        assert asyncio.get_running_loop().time() < deadline, heard
        name, *data = await client.receive(timeout=60)
        if name == "transcriptSegment":
            heard |= words(data[0]["text"])


def _read_with_holes(stream: SessionStream, pieces: list[bytes], missing: set[int], until_seq: int | None = None) -> None:
    """Feed chunks from `stream.next_seq` on as the pipeline does: a gap where chunks are missing."""
    for seq in range(stream.next_seq, len(pieces) if until_seq is None else until_seq + 1):
        if seq in missing:
            continue
        if seq > stream.next_seq:
            stream.gap(stream.next_seq, seq - 1)
        stream.feed(ChunkBytes(seq, pieces[seq], "audio/webm;codecs=opus", 1.7e12 + seq * 1000))


def test_packets_skipped_before_the_resume_point_still_place_gaps_and_chunk_ends() -> None:
    """A stream read again from its header (resume_ms past a missing chunk) skips the packets long done without
    decoding them, but they are on the timeline all the same: the gap it finds there has the missing chunk's own span
    (not from where the read began to where decoding began), and each chunk's end is where it was."""
    pieces = blobs("ts1000")
    whole = SessionStream(_Tape(), Timing(1.7e12, 15000))  # type: ignore[arg-type]
    _read_with_holes(whole, pieces, {3})
    resume_ms = whole.chunk_end_ms[5]  # chunk 4 and most of 5 are long done: not even decoded
    again = SessionStream(_Tape(), Timing(1.7e12, 15000), resume_ms=resume_ms)  # type: ignore[arg-type]
    _read_with_holes(again, pieces, {3})
    assert [(g.from_seq, g.to_seq) for g in again.gaps] == [(3, 3)]
    (expected,), (found,) = whole.gaps, again.gaps
    assert (found.start_ms, found.end_ms) == pytest.approx((expected.start_ms, expected.end_ms), abs=1.5)
    assert expected.end_ms is not None and 900 <= expected.end_ms - expected.start_ms <= 1200  # chunk 3's own second
    assert sorted(again.chunk_end_ms) == sorted(whole.chunk_end_ms) == [0, 1, 2, 4, 5, 6, 7]
    assert again.chunk_end_ms == pytest.approx(whole.chunk_end_ms, abs=1.5)
    assert again.end_ms == pytest.approx(whole.end_ms, abs=1.5)
    assert min(start for start, _ in again.windower.pieces) >= resume_ms - 400 - 20  # type: ignore[attr-defined]


def test_a_late_fill_resumed_past_a_hole_counts_the_chunks_it_skipped_as_filled() -> None:
    """A late fill killed midway goes on from its stored windows (gap.done_ms, past a chunk still missing): the
    chunks before that hole, all long done, are filled; the hole keeps its own span; nothing is read twice."""
    from scribeai.transcription.pipeline import _split_gap

    pieces = blobs("ts1000")
    whole = SessionStream(_Tape(), Timing(1.7e12, 15000))  # type: ignore[arg-type]
    _read_with_holes(whole, pieces, {4})
    main = SessionStream(_Tape(), Timing(1.7e12, 15000))  # type: ignore[arg-type]
    _read_with_holes(main, pieces, {2, 3, 4, 5})  # chunks 2..5 skipped by the stream, 2, 3 and 5 come late
    (gap,) = main.gaps
    assert gap.checkpoint is not None and gap.end_ms is not None
    gap.done_ms = whole.chunk_end_ms[5] - 300  # the killed fill's windows went past the hole at 4, into chunk 5
    side = SessionStream.resumed(_Tape(), gap.checkpoint, resume_ms=gap.done_ms, until_ms=gap.end_ms)  # type: ignore[arg-type]
    _read_with_holes(side, pieces, {4}, until_seq=6)
    pieces_after = _split_gap(gap, side, None)
    assert [(g.from_seq, g.to_seq, g.filled) for g in pieces_after] == [(2, 3, True), (4, 4, False), (5, 5, True)]
    hole = pieces_after[1]
    (expected,) = whole.gaps
    assert (hole.start_ms, hole.end_ms) == pytest.approx((expected.start_ms, expected.end_ms), abs=1.5)
    assert (pieces_after[0].start_ms, pieces_after[0].end_ms) == (gap.start_ms, hole.start_ms)
