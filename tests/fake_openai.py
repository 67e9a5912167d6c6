"""A local stand-in for the paid OpenAI-compatible transcription API (the only thing the suite fakes)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class FakeTranscriptionAPI:
    """Answers `heard <sha256[:12]>` for each upload after `delay_s`; `fail_first` requests get a 500."""

    delay_s: float = 0.0
    fail_first: int = 0
    fail_delay_s: float = 0.0  # a failing request takes this long to fail
    requests: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # texts answered, in order
    server: TestServer | None = None

    @staticmethod
    def text_for(audio: bytes) -> str:
        return f"heard {hashlib.sha256(audio).hexdigest()[:12]}"

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        audio = upload.file.read()  # type: ignore[union-attr]
        self.requests.append(hashlib.sha256(audio).hexdigest())
        if len(self.requests) <= self.fail_first:
            await asyncio.sleep(self.fail_delay_s)
            return web.json_response({"error": {"message": "upstream exploded"}}, status=500)
        await asyncio.sleep(self.delay_s)
        self.answers.append(self.text_for(audio))
        return web.json_response({"text": self.text_for(audio), "duration": 2.5, "language": "english", "segments": []})

    async def start(self) -> str:
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
