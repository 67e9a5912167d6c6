"""Summaries by a model behind an OpenAI-compatible `/v1/chat/completions` endpoint (Ollama, vLLM, llama.cpp's
server, OpenAI). A transcript longer than the model's context goes in pieces, whose notes are then combined.

Ollama keeps only the end of a prompt longer than its context window and says nothing; an endpoint that
reports fewer prompt tokens than the prompt can hold is taken to have cut it, and the pieces are made
smaller to fit what it kept. The model's answer is plain text in three labelled parts, never markup.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from scribeai.summarize import Sentence

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.0  # English runs ~4 characters a token; fewer keeps a piece inside the context
ANSWER_TOKENS = 600
PROMPT_TOKENS = 250  # the instructions and the piece's heading
MAX_TRIES = 4  # pieces made smaller after an endpoint cut the prompt
MAX_TEXT = 4000
MAX_ITEMS = 20
MAX_ITEM = 500
_SECTIONS = {"summary": "summary", "key points": "key_points", "action items": "action_items"}
_HEADING = re.compile(r"^\W*(summary|key points|action items)\W*:?\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+")
_REFUSAL = re.compile(r"^\W*(?:i'?m sorry|i am sorry|i can(?:no|')t|i cannot|i won'?t|as an ai)\b", re.IGNORECASE)
_NOTHING = re.compile(r"^\W*(?:none|n/a|no action items?|nothing)\W*$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

SYSTEM = (
    "You summarise meeting transcripts. Use only what the transcript says. Answer in plain text, no markdown, "
    "in exactly this form:\n"
    "SUMMARY:\n<three to five sentences>\n"
    "KEY POINTS:\n- <one decision, fact or open question per line>\n"
    "ACTION ITEMS:\n- <who will do what, and by when if said; one per line; 'none' if there are none>"
)


class SummaryFailed(Exception):
    """The endpoint gave no usable summary; `reason` says why in one line (it goes into the served body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Notes:
    """A model's answer, parsed."""

    summary: str = ""
    key_points: list[str] = field(default_factory=list)
    action_items: list[str] = field(default_factory=list)


class _Truncated(Exception):
    def __init__(self, kept_tokens: int) -> None:
        super().__init__(kept_tokens)
        self.kept_tokens = kept_tokens


class ChatSummarizer:
    """`await summarize(sentences)` -> Notes, or SummaryFailed with the reason."""

    def __init__(self, base_url: str, model: str, api_key: str = "", *, timeout_s: float = 120.0,
                 context_tokens: int = 4096) -> None:
        base = base_url.rstrip("/")
        self.url = f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.context_tokens = context_tokens
        self.requests = 0

    def __repr__(self) -> str:
        return f"ChatSummarizer(url={self.url!r}, model={self.model!r}, context_tokens={self.context_tokens})"

    async def summarize(self, sentences: list[Sentence]) -> Notes:
        context = self.context_tokens
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(10.0, self.timeout_s))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for _ in range(MAX_TRIES):
                try:
                    return await self._summarize(http, sentences, context)
                except _Truncated as cut:
                    # Fit the pieces to what the endpoint kept (with room for its answer), at least halving them.
                    context = min(context // 2, max(cut.kept_tokens, 2 * (ANSWER_TOKENS + PROMPT_TOKENS)))
        raise SummaryFailed(f"the endpoint kept cutting the prompt short (last fit tried: {context} tokens)")

    async def _summarize(self, http: aiohttp.ClientSession, sentences: list[Sentence], context: int) -> Notes:
        budget = max(200, int((context - ANSWER_TOKENS - PROMPT_TOKENS) * CHARS_PER_TOKEN))
        pieces = _pieces([f"[{_clock(s.start_ms)}] {s.text}" for s in sentences], budget)
        if not pieces:
            return Notes()
        notes = [await self._ask(http, _piece_prompt(piece, i, len(pieces))) for i, piece in enumerate(pieces)]
        while len(notes) > 1:  # combine the parts' notes, in groups that fit, until one is left
            texts = [_notes_text(n, i) for i, n in enumerate(notes)]
            groups = _pieces(texts, budget)
            if len(groups) == len(notes):
                # Each part's notes fill the context alone (a tiny context): pairs, each cut to half of it.
                log.warning("summary notes do not fit %d tokens of context two at a time: cutting them", context)
                groups = [[text[:budget // 2] for text in texts[i:i + 2]] for i in range(0, len(texts), 2)]
            notes = [await self._ask(http, _combine_prompt("\n\n".join(group))) for group in groups]
        return notes[0]

    async def _ask(self, http: aiohttp.ClientSession, prompt: str) -> Notes:
        body = {"model": self.model, "temperature": 0.2, "max_tokens": ANSWER_TOKENS, "stream": False,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.requests += 1
        try:
            async with http.post(self.url, json=body, headers=headers) as response:
                status, raw = response.status, await response.read()
        except TimeoutError as exc:
            raise SummaryFailed(f"{self.url} did not answer within {self.timeout_s:g} s (SUMMARY_TIMEOUT_S)") from exc
        except aiohttp.ClientError as exc:
            raise SummaryFailed(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        text = raw.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            raise SummaryFailed(f"{self.url} answered HTTP {status}: {_one_line(text)[:200]}")
        try:
            payload = json.loads(text)
            choice = payload["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SummaryFailed(f"{self.url} answered no chat completion: {_one_line(text)[:200]}") from exc
        _check_prompt_kept(payload, len(SYSTEM) + len(prompt))
        content = message.get("content") if isinstance(message, dict) else None
        refusal = message.get("refusal") if isinstance(message, dict) else None
        if refusal or choice.get("finish_reason") == "content_filter":
            raise SummaryFailed(f"the model refused: {_one_line(str(refusal or 'content filter'))[:200]}")
        if not isinstance(content, str) or not content.strip():
            raise SummaryFailed("the model answered nothing")
        if choice.get("finish_reason") == "length":
            raise SummaryFailed(f"the model's answer was cut at {ANSWER_TOKENS} tokens")
        notes = parse_answer(content)
        if _REFUSAL.match(content) and not any(_HEADING.match(line) for line in content.splitlines()):
            raise SummaryFailed(f"the model refused: {_one_line(content)[:200]}")
        if not notes.summary:
            raise SummaryFailed(f"the model's answer has no summary: {_one_line(content)[:200]}")
        return notes


def _check_prompt_kept(payload: Any, prompt_chars: int) -> None:
    """An endpoint that counted far fewer prompt tokens than the prompt has (English runs about 4 characters
    a token; 5 is already generous) kept only part of it."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    counted = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(counted, int) and 0 < counted < prompt_chars / 5:
        raise _Truncated(counted)


def parse_answer(content: str) -> Notes:
    """SUMMARY / KEY POINTS / ACTION ITEMS sections (headings in any case, with or without markdown around
    them); text before any heading counts as summary. Plain text only: control characters dropped, lengths capped."""
    sections: dict[str, list[str]] = {"summary": [], "key_points": [], "action_items": []}
    current = "summary"
    for line in _CONTROL.sub("", content).splitlines():
        heading = _HEADING.match(line)
        if heading and heading.group(1).lower() in _SECTIONS:
            current = _SECTIONS[heading.group(1).lower()]
            line = heading.group(2)
        line = line.strip().strip("*_#").strip()
        if line:
            sections[current].append(line)

    def items(lines: list[str]) -> list[str]:
        out = [_BULLET.sub("", line).strip()[:MAX_ITEM] for line in lines]
        return [item for item in out if item and not _NOTHING.match(item)][:MAX_ITEMS]
    summary = " ".join(_BULLET.sub("", line) for line in sections["summary"])
    return Notes(" ".join(summary.split())[:MAX_TEXT], items(sections["key_points"]), items(sections["action_items"]))


def _pieces(lines: list[str], budget: int) -> list[list[str]]:
    """Consecutive lines grouped up to `budget` characters (a longer line is cut)."""
    pieces: list[list[str]] = []
    size = 0
    for line in lines:
        line = line[:budget]
        if pieces and size + len(line) + 1 <= budget:
            pieces[-1].append(line)
            size += len(line) + 1
        else:
            pieces.append([line])
            size = len(line)
    return pieces


def _piece_prompt(piece: list[str], index: int, count: int) -> str:
    where = f" (part {index + 1} of {count})" if count > 1 else ""
    return f"Transcript of a meeting{where}, each line with its time:\n\n" + "\n".join(piece)


def _combine_prompt(notes: str) -> str:
    return ("Notes on consecutive parts of one meeting follow. Write the summary of the whole meeting from them, "
            "in the same form.\n\n" + notes)


def _notes_text(notes: Notes, index: int) -> str:
    points = "\n".join(f"- {p}" for p in notes.key_points) or "- none"
    actions = "\n".join(f"- {a}" for a in notes.action_items) or "- none"
    return f"Part {index + 1}:\nSUMMARY:\n{notes.summary}\nKEY POINTS:\n{points}\nACTION ITEMS:\n{actions}"


def _clock(ms: int) -> str:
    minutes, seconds = divmod(max(ms, 0) // 1000, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
