"""An OpenAI-compatible transcription endpoint that runs the bundled whisper, and can hold requests.

The recovery tests point a real `scribeai serve` process at it (TRANSCRIBER=openai): the words are real (tiny.en
on the real speech), and the test knows exactly which window the server is transcribing, so it can SIGKILL the
server while it is inside that step (a request held here), not after a sleep that may have missed it. A chosen request
can also be refused (HTTP 400): its window fails for good.
"""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

from scribeai.transcription.engines import WhisperEngine, background_executor


@dataclass
class Request:
    """One window the server asked about: its audio's length and prompt, and what was answered (None: held)."""

    seconds: float
    prompt: str
    text: str | None = None


@dataclass
class WhisperAPI:
    """POST /v1/audio/transcriptions answered by the bundled whisper; requests numbered from `hold_from` on wait
    for `release()`; those numbered in `refused` get HTTP 400."""

    engine: WhisperEngine = field(default_factory=lambda: WhisperEngine(workers=1))
    requests: list[Request] = field(default_factory=list)
    hold_from: int | None = None
    refused: set[int] = field(default_factory=set)
    server: TestServer | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        audio = upload.file.read()  # type: ignore[union-attr]
        with wave.open(io.BytesIO(audio)) as wav:
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32) / 32768
        asked = Request(len(pcm) / 16000, str(form.get("prompt") or ""))
        index = len(self.requests)
        async with self._arrived:
            self.requests.append(asked)
            self._arrived.notify_all()
        if index in self.refused:
            asked.text = ""
            return web.json_response({"error": {"message": "refused by the test", "type": "invalid_request_error"}},
                                     status=400)
        if self.hold_from is not None and index >= self.hold_from:
            await self._released.wait()
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # its server was killed meanwhile: nobody waits for the words
        result = await asyncio.get_running_loop().run_in_executor(
            background_executor(), self.engine.transcribe_window, pcm, asked.prompt)
        asked.text = result.text
        segments = [{"start": p.start_ms / 1000, "end": p.end_ms / 1000, "text": p.text, "avg_logprob": -0.2,
                     "no_speech_prob": 0.0} for p in result.pieces]
        return web.json_response({"text": result.text, "duration": len(pcm) / 16000, "language": "en",
                                  "segments": segments})

    async def arrived(self, count: int, timeout: float = 120) -> None:
        """Until `count` requests have come in (the last may be held)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), timeout)

    def hold(self, from_index: int) -> None:
        """Requests numbered `from_index` and later wait until `release()`."""
        self.hold_from = from_index
        self._released.clear()

    def release(self) -> None:
        self.hold_from = None
        self._released.set()

    async def start(self) -> str:
        await self.engine.load()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        self.release()
        if self.server is not None:
            await self.server.close()
