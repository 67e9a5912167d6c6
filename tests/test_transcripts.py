"""Transcript JSON and txt/srt/vtt exports over REST, parsed back and compared with the segments."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from scribeai.transcripts import render
from tests.conftest import ServerFactory, chunk, token_for
from tests.test_transcription import HELLO
from tests.fake_openai import FakeTranscriptionAPI

CUE = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})\n(.+)\n")


def parse_cues(text: str) -> list[tuple[int, int, str]]:
    def ms(h: str, m: str, s: str, f: str) -> int:
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(f)
    return [(ms(*g[0:4]), ms(*g[4:8]), g[8]) for g in CUE.findall(text)]


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


def test_render_formats_exactly() -> None:
    segments = [{"startMs": 0, "endMs": 2500, "text": " hello  there "},
                {"startMs": 3_723_004, "endMs": 3_725_000, "text": "later"},
                {"startMs": 3_724_000, "endMs": 3_724_500, "text": "overlapping"},
                {"startMs": 3_800_000, "endMs": 3_801_000, "text": ""}]
    assert render(segments, "srt") == ("1\n00:00:00,000 --> 00:00:02,500\nhello there\n\n"
                                       "2\n01:02:03,004 --> 01:02:05,000\nlater\n\n"
                                       "3\n01:02:05,000 --> 01:02:05,001\noverlapping\n")
    assert render(segments, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello there\n")
    assert render(segments, "txt") == "[00:00:00] hello there\n[01:02:03] later\n[01:02:05] overlapping\n"


async def test_transcript_json_and_exports(start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), transcribe_retry_base_s=0.01)
    fake_api.fail_first = 0
    client = await connect(server.url)
    for seq in range(3):
        await client.call("audio-chunk", chunk("exp", seq, HELLO, mimeType="audio/wav"), timeout=5)
    await server.services.pipeline.drain()
    texts = fake_api.answers
    headers = {"Authorization": f"Bearer {token_for('alice')}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{server.url}/api/sessions/exp/transcript") as response:
            body = await response.json()
        lead, length = body["segments"][0]["startMs"], body["segments"][0]["endMs"] - body["segments"][0]["startMs"]
        assert 0 <= lead < 400 and 0 < length <= 1260
        assert [(g["seq"], g["startMs"], g["endMs"], g["text"]) for g in body["segments"]] == [
            (i, i * 15000 + lead, i * 15000 + lead + length, texts[i]) for i in range(3)]
        assert (body["pending"], body["failed"]) == ([], [])
        for fmt, content_type in (("srt", "application/x-subrip"), ("vtt", "text/vtt"), ("txt", "text/plain")):
            async with http.get(f"{server.url}/api/sessions/exp/transcript?format={fmt}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith(content_type)
                assert response.headers["Content-Disposition"] == f'attachment; filename="exp.{fmt}"'
                text = await response.text()
            if fmt == "txt":
                assert text.splitlines() == [f"[00:00:{i * 15:02d}] {texts[i]}" for i in range(3)]
                continue
            cues = parse_cues(text)
            assert cues == [(g["startMs"], g["endMs"], g["text"]) for g in body["segments"]]
            assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:], strict=False))
        async with http.get(f"{server.url}/api/sessions/exp/transcript?format=pdf") as response:
            assert response.status == 400


async def test_failed_and_pending_chunks_are_listed(start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    fake_api.fail_first = 100
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), transcribe_retry_base_s=0.01)
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("bad", 0, HELLO, mimeType="audio/wav"), timeout=5)
    await server.services.pipeline.drain()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.get(f"{server.url}/api/sessions/bad/transcript") as response:
            body = await response.json()
        assert body["segments"] == []
        assert [f["seq"] for f in body["failed"]] == [0]
        assert "HTTP 500" in body["failed"][0]["error"]
        assert [(g["fromSeq"], g["toSeq"], g["reason"], g["filled"]) for g in body["gaps"]] == [(0, 0, "failed", False)]
        fake_api.fail_first = 0
        async with http.post(f"{server.url}/api/sessions/bad/retry-failed") as response:
            assert await response.json() == {"sessionId": "bad", "requeued": 1}
    await server.services.pipeline.drain()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.get(f"{server.url}/api/sessions/bad/transcript") as response:
            body = await response.json()
    assert [g["seq"] for g in body["segments"]] == [0]
    assert body["failed"] == []
    assert [(g["reason"], g["filled"]) for g in body["gaps"]] == [("failed", True)]
