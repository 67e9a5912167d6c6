"""Bytes that are not a recording are refused `invalid` with the reason before they are stored (issue 25: they were
acked, then failed transcription for a misleading reason); real recordings, cut anywhere, are not."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scribeai.models import Chunk
from scribeai.transcription.containers import refusal
from tests.conftest import ServerFactory, chunk
from tests.fake_openai import FakeTranscriptionAPI

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
BLOBS = sorted((FIXTURES / "chromium" / "ts1000").glob("blob_*.webm"))  # Chromium's 1 s timeslice blobs, in order
STREAM = b"".join(p.read_bytes() for p in BLOBS)
OGG = (FIXTURES / "speech_welcome.ogg").read_bytes()
WAV = (FIXTURES / "speech_hello.wav").read_bytes()


def test_recordings_whole_or_cut_anywhere_are_not_refused() -> None:
    for name, mime in [("speech_fox.webm", "audio/webm"), ("speech_welcome.ogg", "audio/ogg"),
                       ("speech_hello.wav", "audio/wav"), ("speech_hello.wav", "audio/webm")]:
        assert refusal((FIXTURES / name).read_bytes(), mime) is None, name
    for blob in BLOBS:  # blob 0 carries the header; the others begin inside a block
        assert refusal(blob.read_bytes(), "audio/webm;codecs=opus") is None, blob.name
    cuts = random.Random(25)
    for _ in range(500):  # the same stream cut anywhere else, into pieces of any length
        start = cuts.randrange(len(STREAM) - 600)
        assert refusal(STREAM[start:start + cuts.randrange(500, 40_000)], "audio/webm") is None, start
    for start in range(100, len(OGG) - 3000, 101):  # Ogg cut inside its pages
        assert refusal(OGG[start:start + 3000], "audio/ogg") is None, start
    assert refusal(b"\xff\xfb\x90\x64" + bytes(400), "audio/mpeg") is None  # an MPEG-1 layer III frame header


def test_bytes_that_are_no_recording_are_refused_with_the_reason() -> None:
    noise = random.Random(7)
    for size in (4096, 16_000, 200_000):
        for _ in range(20):
            reason = refusal(noise.randbytes(size), "audio/webm;codecs=opus")
            assert reason is not None and reason.startswith(f"{size} bytes that neither start a recording"), reason
    text = b"<html><body>not audio at all</body></html>" * 200
    assert refusal(text, "audio/webm") == (f"{len(text)} bytes that neither start a recording (WebM, Ogg, MP4, WAV or MP3) "
                                           "nor continue one (no run of WebM blocks or clusters, no Ogg page); "
                                           "they start 3c 68 74 6d 6c 3e 3c 62 …")
    assert refusal(b"\0not audio" * 50, "audio/mpeg") == (
        "audio/mpeg chunk of 500 bytes without an ID3 tag or an MPEG audio frame at its start (00 6e 6f 74 20 61 75 64 …)")
    assert refusal(OGG, "audio/wav") is None  # an Ogg stream's start is one, whatever the MIME type says
    assert refusal(STREAM[20_000:40_000], "audio/wav") is not None  # a WAV is a whole file: no continuations
    # a WebM header of a codec the server cannot decode (the codec id rewritten)
    vp8 = BLOBS[0].read_bytes().replace(b"A_OPUS", b"V_VP8\x00", 1)
    assert refusal(vp8, "audio/webm") == "a WebM stream this server cannot transcribe: unsupported WebM audio codec 'V_VP8'"


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_chunk_that_is_no_recording_is_refused_and_nothing_is_stored(
        start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k")
    client = await connect(server.url)
    noise = os.urandom(16_000)
    reply = await client.call("audio-chunk", chunk("junk", 0, noise), timeout=5)
    assert reply["error"]["code"] == "invalid"
    assert reply["error"]["details"] == {"field": "audio"}
    assert reply["error"]["message"] == ("audio is not a recording this server can transcribe: 16000 bytes that neither "
                                         "start a recording (WebM, Ogg, MP4, WAV or MP3) nor continue one (no run of "
                                         "WebM blocks or clusters, no Ogg page); they start "
                                         + " ".join(f"{b:02x}" for b in noise[:8]) + " …")
    assert (server.settings.storage_dir / "junk").exists() is False
    # a continuation whose stream's first chunk has not come yet is plausible: stored, and so is the header after it
    second = await client.call("audio-chunk", chunk("junk", 1, BLOBS[1].read_bytes()), timeout=5)
    first = await client.call("audio-chunk", chunk("junk", 0, BLOBS[0].read_bytes()), timeout=5)
    assert (second["duplicate"], first["duplicate"]) == (False, False)
    async with server.services.db.read() as s:
        rows = (await s.execute(select(Chunk.seq, Chunk.size).where(Chunk.session_id == "junk").order_by(Chunk.seq))).all()
    assert [tuple(r) for r in rows] == [(0, len(BLOBS[0].read_bytes())), (1, len(BLOBS[1].read_bytes()))]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_store_only_server_keeps_any_bytes(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server()  # TRANSCRIBER=none: nothing reads the audio, so nothing judges it
    client = await connect(server.url)
    ack = await client.call("audio-chunk", chunk("kept", 0, os.urandom(16_000)), timeout=5)
    assert ack["duplicate"] is False
