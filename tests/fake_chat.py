"""A local stand-in for an OpenAI-compatible chat endpoint (the summary model): a real HTTP server whose
answers are made from what it was sent, with the failures real ones have (slow, errors, refusals, a prompt
cut to its context window as Ollama does, an answer cut at max_tokens)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

LINE = re.compile(r"^\[[0-9:]+\] (.+)$", re.MULTILINE)


def tokens(text: str) -> int:
    return len(text) // 4 + 1  # about what real tokenizers count for English


@dataclass
class FakeChatAPI:
    """`mode`: ok, fail (HTTP 500), refuse (a refusal as text), refusal_field (OpenAI's `refusal`), cut
    (finish_reason length), markup (an answer full of HTML). `context_tokens`: keep only the prompt's last
    that many tokens and say so in usage.prompt_tokens (Ollama's silent truncation)."""

    mode: str = "ok"
    delay_s: float = 0.0
    context_tokens: int | None = None
    prompts: list[str] = field(default_factory=list)  # user messages as sent
    seen: list[str] = field(default_factory=list)  # user messages as the model saw them (after any cut)
    models: list[str] = field(default_factory=list)
    server: TestServer | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.models.append(body["model"])
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        self.prompts.append(user)
        await asyncio.sleep(self.delay_s)
        if self.mode == "fail":
            return web.json_response({"error": {"message": "model runner crashed"}}, status=500)
        counted = tokens(system) + tokens(user)
        if self.context_tokens is not None and counted > self.context_tokens:
            user = user[-(self.context_tokens - tokens(system)) * 4:]
            counted = self.context_tokens
        self.seen.append(user)
        message: dict[str, Any] = {"role": "assistant", "content": self.answer(user)}
        finish = "stop"
        if self.mode == "refuse":
            message["content"] = "I'm sorry, but I can't help with summarising this conversation."
        elif self.mode == "refusal_field":
            message["content"], message["refusal"] = None, "This request violates the usage policy."
        elif self.mode == "cut":
            message["content"], finish = message["content"][:40], "length"
        elif self.mode == "markup":
            message["content"] = ("SUMMARY:\n<script>alert('x')</script> **Bold** [link](http://evil.example)\n"
                                  "KEY POINTS:\n- <img src=x onerror=alert(1)>\nACTION ITEMS:\n- none")
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": counted, "completion_tokens": tokens(message["content"] or ""),
                      "total_tokens": counted + tokens(message["content"] or "")}})

    @staticmethod
    def answer(user: str) -> str:
        """A piece: how many lines it saw, its first line as key point, its 'will' lines as action items.
        Notes to combine: how many parts, and every key point and action item of theirs."""
        if user.startswith("Notes on consecutive parts"):
            parts = len(re.findall(r"^Part \d+:", user, re.MULTILINE))
            points = [p for block in user.split("KEY POINTS:")[1:] for p in re.findall(r"^- (.+)$", block.split("ACTION ITEMS:")[0], re.MULTILINE)]
            actions = [a for block in user.split("ACTION ITEMS:")[1:] for a in re.findall(r"^- (.+)$", block.split("Part ")[0], re.MULTILINE)]
            actions = [a for a in actions if a != "none"]
            return (f"SUMMARY:\nCombined {parts} parts.\nKEY POINTS:\n" + "".join(f"- {p}\n" for p in points)
                    + "ACTION ITEMS:\n" + ("".join(f"- {a}\n" for a in actions) or "- none\n"))
        lines = LINE.findall(user)
        actions = [line for line in lines if " will " in line]
        return (f"SUMMARY:\nThis part has {len(lines)} lines.\nKEY POINTS:\n- {lines[0] if lines else 'nothing'}\n"
                "ACTION ITEMS:\n" + ("".join(f"- {a}\n" for a in actions) or "- none\n"))

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
