"""Engines on real speech: whisper (bundled tiny.en), an OpenAI-compatible server on port 0, none."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from scribeai.monitor import available_cores
from scribeai.transcription.engines import (
    NoneEngine,
    OpenAIEngine,
    Transcription,
    TranscriptionFailed,
    WhisperEngine,
    create_engine,
)

AUDIO = Path(__file__).parent / "fixtures" / "audio"
MANIFEST: dict[str, dict[str, Any]] = json.loads((AUDIO / "manifest.json").read_text())
PIECES = sorted((n for n, e in MANIFEST.items() if "order" in e), key=lambda n: MANIFEST[n]["order"])
CLIPS = [n for n, e in MANIFEST.items() if "order" not in e]
ServerFactory = Callable[..., Awaitable[TestServer]]


def read(name: str) -> bytes:
    return (AUDIO / name).read_bytes()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    engine = create_engine("whisper")
    assert isinstance(engine, WhisperEngine)
    return engine  # the model itself is cached per process, loaded by the first test


@pytest.mark.slow
@pytest.mark.parametrize("name", CLIPS)
async def test_whisper_finds_the_key_words(whisper: WhisperEngine, name: str) -> None:
    entry = MANIFEST[name]
    result = await whisper.transcribe(read(name), entry["mime_type"])
    assert set(entry["keywords"]) <= words(result.text), result.text
    assert abs(result.duration_ms - entry["duration_ms"]) <= 10  # type: ignore[operator]
    assert result.confidence is not None and 0.2 < result.confidence <= 1.0
    assert result.language == "en"


@pytest.mark.slow
@pytest.mark.parametrize("name", PIECES)
async def test_whisper_transcribes_each_timeslice_piece_behind_the_header(whisper: WhisperEngine, name: str) -> None:
    audio = read(name) if name == PIECES[0] else read(PIECES[0])[: MANIFEST[PIECES[0]]["header_bytes"]] + read(name)
    result = await whisper.transcribe(audio, MANIFEST[name]["mime_type"])
    assert set(MANIFEST[name]["keywords"]) <= words(result.text), result.text
    others = {k for n in PIECES if n != name for k in MANIFEST[n]["keywords"]} - set(MANIFEST[name]["keywords"])
    assert words(result.text) & others == set()  # this piece's speech, not its neighbours'


@pytest.mark.slow
async def test_whisper_runs_off_the_event_loop(whisper: WhisperEngine) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    first, second = await asyncio.gather(
        whisper.transcribe(read("speech_long.webm"), "audio/webm"),
        whisper.transcribe(read("speech_train.webm"), "audio/webm"),
    )
    task.cancel()
    assert ticks > 20  # the loop kept running while two transcriptions were in flight
    assert {"garden", "friday"} <= words(first.text)
    assert {"train", "london"} <= words(second.text)


@pytest.mark.slow
async def test_whisper_with_the_bundled_silero_vad_works_offline(whisper: WhisperEngine) -> None:
    engine = WhisperEngine(whisper.model, cpu_threads=whisper.cpu_threads, vad_filter=True)
    await engine.load()
    result = await engine.transcribe(read("speech_stella.webm"), "audio/webm")
    assert set(MANIFEST["speech_stella.webm"]["keywords"]) <= words(result.text), result.text


async def test_whisper_rejects_undecodable_audio(whisper: WhisperEngine) -> None:
    with pytest.raises(TranscriptionFailed, match="undecodable audio") as info:
        await whisper.transcribe(b"definitely not audio" * 50, "audio/webm")
    assert info.value.retryable is False
    with pytest.raises(TranscriptionFailed):
        await whisper.transcribe(read(PIECES[1]), "audio/webm")  # a continuation without its header


async def test_whisper_header_only_chunk_is_empty_text(whisper: WhisperEngine) -> None:
    header = read(PIECES[0])[: MANIFEST[PIECES[0]]["header_bytes"]]
    assert await whisper.transcribe(header, "audio/webm") == Transcription(text="", confidence=None, duration_ms=0)


def test_create_engine_kinds_and_threads() -> None:
    cores = available_cores()  # this process's, not the machine's
    assert isinstance(create_engine("none"), NoneEngine)
    assert create_engine("whisper", workers=3).cpu_threads == max(1, cores // 3)  # type: ignore[attr-defined]
    assert create_engine("whisper", whisper_threads=5).cpu_threads == 5  # type: ignore[attr-defined]
    openai = create_engine("openai", openai_base_url="http://h:1/", openai_api_key="k", transcribe_model="m")
    assert isinstance(openai, OpenAIEngine)
    assert (openai.url, openai.model) == ("http://h:1/v1/audio/transcriptions", "m")
    assert OpenAIEngine("https://api.example/v1", "k").url == "https://api.example/v1/audio/transcriptions"
    with pytest.raises(ValueError, match="unknown transcriber"):
        create_engine("vosk")


async def test_none_engine_measures_only() -> None:
    engine = create_engine("none")
    result = await engine.transcribe(read("speech_fox.webm"), "audio/webm")
    assert result == Transcription(text="", confidence=None, duration_ms=3446)
    assert (await engine.transcribe(b"junk", "audio/webm")).duration_ms is None
    await engine.close()


# --- OpenAI-compatible server ------------------------------------------------------------------

VERBOSE = {
    "task": "transcribe",
    "language": "english",
    "duration": 3.44,
    "text": " The quick brown fox jumps over the lazy dog.",
    "segments": [
        {"id": 0, "avg_logprob": -0.1, "tokens": [1, 2, 3]},
        {"id": 1, "avg_logprob": -0.4, "tokens": [4]},
    ],
}


def transcription_server(answer: Callable[[], web.Response]) -> tuple[web.Application, list[dict[str, Any]]]:
    """A stand-in for the paid API: records each request's headers and multipart fields."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        fields: dict[str, Any] = {"authorization": request.headers.get("Authorization")}
        async for part in await request.multipart():
            body = await part.read()  # type: ignore[union-attr]
            if part.filename:  # type: ignore[union-attr]
                fields[part.name] = (part.filename, part.headers["Content-Type"], body)  # type: ignore[union-attr]
            else:
                fields[part.name] = body.decode()  # type: ignore[union-attr]
        seen.append(fields)
        return answer()

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", handler)
    return app, seen


@pytest.fixture
async def openai_engine() -> AsyncIterator[Callable[[TestServer], OpenAIEngine]]:
    engines: list[OpenAIEngine] = []

    def make(server: TestServer) -> OpenAIEngine:
        engines.append(OpenAIEngine(str(server.make_url("/")), "sk-test", "whisper-1", timeout_s=10))
        return engines[-1]

    yield make
    for engine in engines:
        await engine.close()


async def test_openai_sends_multipart_and_reads_verbose_json(aiohttp_server: ServerFactory, openai_engine: Any) -> None:
    app, seen = transcription_server(lambda: web.json_response(VERBOSE))
    engine = openai_engine(await aiohttp_server(app))
    audio = read("speech_fox.webm")
    result = await engine.transcribe(audio, "audio/webm;codecs=opus")
    assert seen == [{
        "authorization": "Bearer sk-test",
        "file": ("audio.webm", "audio/webm", audio),
        "model": "whisper-1",
        "response_format": "verbose_json",
    }]
    assert result.text == "The quick brown fox jumps over the lazy dog."
    assert result.duration_ms == 3440
    assert result.language == "english"
    assert result.confidence == pytest.approx(math.exp((-0.1 * 3 - 0.4 * 1) / 4))


async def test_openai_file_name_follows_the_container(aiohttp_server: ServerFactory, openai_engine: Any) -> None:
    app, seen = transcription_server(lambda: web.json_response({"text": "welcome"}))
    engine = openai_engine(await aiohttp_server(app))
    await engine.transcribe(read("speech_welcome.ogg"), "audio/ogg;codecs=opus")
    await engine.transcribe(read("speech_hello.wav"), "audio/wav")
    assert [s["file"][:2] for s in seen] == [("audio.ogg", "audio/ogg"), ("audio.wav", "audio/wav")]


async def test_openai_plain_json_answer(aiohttp_server: ServerFactory, openai_engine: Any) -> None:
    app, _ = transcription_server(lambda: web.json_response({"text": "Hello world."}))
    engine = openai_engine(await aiohttp_server(app))
    result = await engine.transcribe(read("speech_hello.wav"), "audio/wav")
    assert result == Transcription(text="Hello world.", confidence=None, duration_ms=None, language=None)


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (429, True), (401, False), (400, False)])
async def test_openai_error_status_fails(
    aiohttp_server: ServerFactory, openai_engine: Any, status: int, retryable: bool
) -> None:
    app, seen = transcription_server(lambda: web.json_response({"error": {"message": "model exploded"}}, status=status))
    engine = openai_engine(await aiohttp_server(app))
    with pytest.raises(TranscriptionFailed) as info:
        await engine.transcribe(read("speech_fox.webm"), "audio/webm")
    assert info.value.reason == f'HTTP {status}: {{"error": {{"message": "model exploded"}}}}'
    assert info.value.retryable is retryable
    assert len(seen) == 1


async def test_openai_non_json_answer_fails(aiohttp_server: ServerFactory, openai_engine: Any) -> None:
    app, _ = transcription_server(lambda: web.Response(text="<html>proxy error</html>"))
    engine = openai_engine(await aiohttp_server(app))
    with pytest.raises(TranscriptionFailed, match="not JSON: <html>proxy error</html>"):
        await engine.transcribe(read("speech_fox.webm"), "audio/webm")


async def test_openai_unreachable_server_fails_retryably(unused_tcp_port: int) -> None:
    engine = OpenAIEngine(f"http://127.0.0.1:{unused_tcp_port}", "sk-test", timeout_s=5)
    try:
        with pytest.raises(TranscriptionFailed) as info:
            await engine.transcribe(read("speech_fox.webm"), "audio/webm")
        assert info.value.retryable is True
        assert "ClientConnectorError" in info.value.reason
    finally:
        await engine.close()


def test_known_hallucinations_are_dropped_only_without_support() -> None:
    from scribeai.transcription.engines import keep_piece

    assert keep_piece(" Thank you.", avg_logprob=-0.9, no_speech_prob=0.05) is False  # the classic over a pause
    assert keep_piece(" Thank you.", avg_logprob=-0.2, no_speech_prob=0.01) is True  # said clearly: kept
    assert keep_piece(" Thanks for watching!", avg_logprob=-0.3, no_speech_prob=0.4) is False
    assert keep_piece(" The budget is ready.", avg_logprob=-1.2, no_speech_prob=0.7) is False  # whisper's own silence rule
    assert keep_piece(" The budget is ready.", avg_logprob=-1.2, no_speech_prob=0.3) is True
    assert keep_piece(" ... ", avg_logprob=-0.1, no_speech_prob=0.0) is False
