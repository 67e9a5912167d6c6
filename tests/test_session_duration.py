"""A session's durationMs over REST: the recorder's durationMs when it sent them, else what transcription measured,
else CHUNK_DURATION_MS per chunk (issue 25: 0 for every browser session, whose recorders send none)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory, chunk
from tests.fake_openai import FakeTranscriptionAPI
from tests.test_rest import request

BLOBS = sorted((Path(__file__).parent / "fixtures" / "audio" / "chromium" / "ts1000").glob("blob_*.webm"))
RECORDED_MS = 7980  # the eight blobs decoded: 383,040 samples at 48 kHz


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


async def durations(url: str, session_id: str) -> tuple[int, int]:
    """durationMs of the session alone and in the caller's session list."""
    status, one = await request("GET", f"{url}/api/sessions/{session_id}")
    assert status == 200
    status, listed = await request("GET", f"{url}/api/sessions")
    assert status == 200
    return one["durationMs"], next(s["durationMs"] for s in listed["sessions"] if s["id"] == session_id)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_browser_session_without_duration_ms_is_as_long_as_its_audio(
        start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k",
                                chunk_duration_ms=15000)
    client = await connect(server.url)
    for seq, blob in enumerate(BLOBS):  # Chromium's 1 s timeslice blobs, sent as the recorder library sends them
        ack = await client.call("audio-chunk", {"sessionId": "browser", "sequence": seq, "timestamp": 1_732_350_000_000 + seq * 1000,
                                                "mimeType": "audio/webm;codecs=opus", "audio": blob.read_bytes()}, timeout=5)
        assert ack["duplicate"] is False
    await client.call("stopSession", {"sessionId": "browser"}, timeout=5)
    await server.services.pipeline.drain(timeout=60)
    one, listed = await durations(server.url, "browser")
    assert one == listed
    print(f"durationMs {one} for {RECORDED_MS} ms of audio")
    assert RECORDED_MS - 100 <= one <= RECORDED_MS + 100, one  # measured from the audio (8 x 15 s assumed would be 120 s)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_duration_ms_as_sent_else_assumed_when_nothing_transcribes(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(chunk_duration_ms=4000)  # TRANSCRIBER=none: nothing is measured
    client = await connect(server.url)
    for seq in range(3):
        await client.call("audio-chunk", chunk("sent", seq, os.urandom(500), durationMs=1500), timeout=5)
        await client.call("audio-chunk", chunk("assumed", seq, os.urandom(500)), timeout=5)
    await client.call("audio-chunk", chunk("mixed", 0, os.urandom(500), durationMs=1500), timeout=5)
    await client.call("audio-chunk", chunk("mixed", 1, os.urandom(500)), timeout=5)
    assert await durations(server.url, "sent") == (4500, 4500)
    assert await durations(server.url, "assumed") == (12000, 12000)
    assert await durations(server.url, "mixed") == (5500, 5500)
