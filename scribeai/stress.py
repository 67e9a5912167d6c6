"""Long-session stress client: many recorders streaming real-time sessions against a running server.

    scribeai stress --chunks=120 --fast --userId=test-user          # or: python scripts/stress.py ...
    scribeai stress --chunks=240 --chunk-seconds=15 --sessions=50 --drop-every=40 --plot --out=reports/

Each of `--sessions` recorders opens its own session and behaves like a good recorder speaking the wire
contract (docs/protocol.md): it "records" one chunk every `--interval` seconds into a local outbox and
sends from it, at most `--window` chunks awaiting their ack; it pauses on `canAccept: false` or
`credits: 0` and resumes on `canAccept: true`, resends a chunk refused as `overloaded` after its
`retryAfterMs`, and after a reconnect (`--drop-every K` cuts the connection after every K-th chunk) it
rejoins the session, reads the missing-chunks list and resends everything unacked. Chunks are real
WebM/Opus files of `--chunk-seconds` (speech looped from a clip, or synthetic voiced babble), encoded
once with PyAV and cached on disk, so the server's transcription does real work (each is a complete file,
so the server starts a new stream at each chunk and places it on the timeline by its timestamp).

It measures the server, not itself: RSS, CPU and transcription backlog from GET /api/server/stats every
`--sample-interval` seconds, the disk used by each session, ack latency, throughput, backpressure
episodes and transcription lag. The server's figures are an admin's to read (a token minted from
`--secret` is one): with a plain user's token the run goes on with the client's own figures and what the
server stored for its sessions, and the report and the summary name the figures it could not read (server
RSS, CPU, the whole server's backlog and connections, the engine) and how to get them. The server transcribes a session as one recording cut into windows at
pauses, so segments are not one per chunk: a segment's `seq` is the last chunk its audio touches, several
may share one, a chunk of silence gets none. The lag of a chunk is its ack -> the first transcriptSegment
with `seq` >= its sequence received after that ack (chunks no later segment covers are left out of it).
At the end each recorder sends stopSession and polls GET /api/sessions/{id}/transcript until nothing is
`pending` (at most --transcript-timeout); the run then checks that the server holds every chunk
(missing-chunks empty, totalChunks right), that every chunk's transcription is `done` (none pending or
failed, no unfilled gap) and that every segment the server stored reached the recorder, then writes
perf-report-<timestamp>.json (and a PNG with --plot). Exit status: 0 clean, 1 on any loss or failed
check, 2 when the run could not happen (bad options, no server, --plot without matplotlib).

Everything lives in this module so that `scribeai stress` (scribeai/stress_cli.py) and the thin
scripts/stress.py share it; it uses only the wire contract (plus auth.create_token to mint a token).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import socketio
from numpy.typing import NDArray

DEFAULT_URL = "http://localhost:3001"
FAST_INTERVAL_S = 0.1
NORMAL_INTERVAL_S = 1.0
MIME_TYPE = "audio/webm;codecs=opus"
SAMPLE_RATE = 48_000
AUDIO_VERSION = "stress-audio-1"  # part of the cache key: bump when the generated audio changes
TRANSIENT_CODES = ("internal", "unavailable", "unauthorized", "timeout")
EXIT_OK, EXIT_LOSS, EXIT_CANNOT_RUN = 0, 1, 2
TRANSCRIPT_POLL_S = 0.25  # first interval of the transcript polls after stopSession (then x1.5, at most 2 s)
SEGMENT_SETTLE_S = 30.0   # how long segments the server stored may take to reach the recorder once nothing is pending
REPO_SPEECH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio" / "speech_long.webm"


class CannotRun(Exception):
    """The run could not start (no server, refused token, missing optional dependency)."""


# -- options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    url: str = DEFAULT_URL
    token: str | None = None
    secret: str | None = None
    user_id: str = "test-user"
    chunks: int = 120
    fast: bool = False
    interval_s: float = NORMAL_INTERVAL_S
    sessions: int = 1
    chunk_seconds: float = 30.0
    namespace: str = "/"
    transport: str = "websocket"
    drop_every: int = 0
    drop_seconds: float = 0.5
    window: int = 1
    ack_timeout_s: float = 30.0
    pause_probe_s: float = 15.0
    max_attempts: int = 50
    sample_interval_s: float = 5.0
    transcript_timeout_s: float = 600.0
    reconnect_timeout_s: float = 60.0
    storage_dir: Path | None = None
    out_dir: Path = Path(".")
    plot: bool = False
    progress: bool = True
    speech: str = "auto"
    bitrate: int = 32_000
    variants: int = 4
    cache_dir: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scribeai" / "stress"
    session_prefix: str = "stress"

    def public(self) -> dict[str, Any]:
        """The settings as the report records them (never the token or the secret)."""
        values = asdict(self)
        for secret in ("token", "secret"):
            values[secret] = "<given>" if values[secret] else None
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `scribeai stress` and scripts/stress.py (one definition for both)."""
    p.add_argument("--chunks", type=int, default=120, help="chunks per session (default 120)")
    p.add_argument("--fast", action="store_true", help=f"record a chunk every {FAST_INTERVAL_S} s instead of {NORMAL_INTERVAL_S} s")
    p.add_argument("--interval", type=float, default=None, help="seconds between recorded chunks (overrides --fast; 0: as fast as acks allow)")
    p.add_argument("--userId", "--user-id", dest="user_id", default="test-user", help="user the minted token is for (default test-user)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--token", help="access token (default: minted for --userId from --secret)")
    p.add_argument("--secret", default=os.environ.get("SCRIBEAI_SECRET") or None, help="HS256 secret to mint the token (default $SCRIBEAI_SECRET)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent recorders, one session each (default 1)")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="audio length of each chunk (default 30, as the original)")
    p.add_argument("--namespace", default="/", choices=("/", "/record"), help="Socket.IO namespace (default /)")
    p.add_argument("--transport", default="websocket", choices=("websocket", "polling"), help="Engine.IO transport (default websocket)")
    p.add_argument("--drop-every", type=int, default=0, metavar="K", help="cut the connection after every K-th chunk and resume (default off)")
    p.add_argument("--drop-seconds", type=float, default=0.5, help="how long each cut lasts before reconnecting (default 0.5)")
    p.add_argument("--window", type=int, default=1, help="chunks sent and not yet acked, at most (default 1: wait for each ack)")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for an ack before resending (default 30)")
    p.add_argument("--pause-probe", type=float, default=15.0,
                   help="while paused with nothing in flight and no word from the server for this long, send one chunk (default 15)")
    p.add_argument("--max-attempts", type=int, default=50, help="sends of one chunk before it counts as lost (default 50)")
    p.add_argument("--sample-interval", type=float, default=5.0, help="seconds between server samples (default 5)")
    p.add_argument("--transcript-timeout", type=float, default=600.0, help="seconds to wait after stopSession for every chunk's transcription to finish (default 600)")
    p.add_argument("--reconnect-timeout", type=float, default=60.0, help="give a session up after this long without a connection (default 60)")
    p.add_argument("--storage-dir", type=Path, default=None, help="the server's STORAGE_DIR when it runs on this machine: disk usage by du")
    p.add_argument("--out", type=Path, default=Path("."), help="directory for perf-report-<timestamp>.json/.png (default .)")
    p.add_argument("--plot", action="store_true", help="also write a PNG of latency, server memory and queue depth (needs the 'plot' extra)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no live progress bar")
    p.add_argument("--speech", default="auto",
                   help="audio to loop into chunks: a file PyAV decodes, 'synthetic', or 'auto' (the repo's speech fixture if present)")
    p.add_argument("--bitrate", type=int, default=32_000, help="Opus bitrate of the generated chunks (default 32000)")
    p.add_argument("--variants", type=int, default=4, help="distinct chunk files, cycled by sequence (default 4)")
    p.add_argument("--cache-dir", type=Path, default=Options.cache_dir, help="where generated chunks are cached")
    p.add_argument("--session-prefix", default="stress", help="session ids are <prefix>-<run id>-<n>")


def options_from_args(args: argparse.Namespace) -> Options:
    interval = args.interval if args.interval is not None else (FAST_INTERVAL_S if args.fast else NORMAL_INTERVAL_S)
    return Options(
        url=args.url.rstrip("/"), token=args.token, secret=args.secret, user_id=args.user_id, chunks=args.chunks,
        fast=args.fast, interval_s=interval, sessions=args.sessions, chunk_seconds=args.chunk_seconds,
        namespace=args.namespace, transport=args.transport, drop_every=args.drop_every, drop_seconds=args.drop_seconds,
        window=args.window, ack_timeout_s=args.ack_timeout, pause_probe_s=args.pause_probe, max_attempts=args.max_attempts,
        sample_interval_s=args.sample_interval, transcript_timeout_s=args.transcript_timeout,
        reconnect_timeout_s=args.reconnect_timeout, storage_dir=args.storage_dir, out_dir=args.out, plot=args.plot,
        progress=args.progress, speech=args.speech, bitrate=args.bitrate, variants=args.variants,
        cache_dir=args.cache_dir, session_prefix=args.session_prefix,
    )


def check_options(o: Options) -> list[str]:
    problems = []
    if min(o.chunks, o.sessions, o.window, o.variants, o.max_attempts) < 1:
        problems.append("--chunks, --sessions, --window, --variants and --max-attempts must be >= 1")
    if o.drop_every < 0 or o.interval_s < 0 or o.drop_seconds < 0:
        problems.append("--drop-every, --interval and --drop-seconds must be >= 0")
    if not 0.1 <= o.chunk_seconds <= 600:
        problems.append("--chunk-seconds must be between 0.1 and 600")
    if o.sample_interval_s <= 0 or o.ack_timeout_s <= 0:
        problems.append("--sample-interval and --ack-timeout must be > 0")
    return problems


# -- audio -----------------------------------------------------------------------------------------

_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410), (440, 1020, 2240)]


def synthetic_speech(seconds: float, seed: int = 5) -> NDArray[np.int16]:
    """Voiced babble: syllables with a falling pitch and vowel formants, words and pauses, 48 kHz mono."""
    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    parts: list[NDArray[np.float64]] = []
    n, words = 0, 0
    while n < total:
        for _ in range(int(rng.integers(1, 4))):
            part = _syllable(rng)
            parts.append(part)
            n += len(part)
        words += 1
        pause = rng.uniform(0.4, 0.7) if words % 7 == 0 else rng.uniform(0.05, 0.15)
        parts.append(np.zeros(int(pause * SAMPLE_RATE)))
        n += len(parts[-1])
    signal = np.concatenate(parts)[:total]
    scaled: NDArray[np.int16] = (signal / max(np.abs(signal).max(), 1e-9) * 0.3 * 32767).astype(np.int16)
    return scaled


def _syllable(rng: np.random.Generator) -> NDArray[np.float64]:
    duration = rng.uniform(0.12, 0.28)
    m = int(duration * SAMPLE_RATE)
    f0 = np.linspace(rng.uniform(110, 170), rng.uniform(90, 140), m)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
    voiced = np.zeros(m)
    for k in range(1, 32):
        fk = k * f0
        gain = sum(w / (1 + ((fk - f) / bw) ** 2) for f, bw, w in zip(formants, (90, 110, 160), (1.0, 0.6, 0.3), strict=True))
        voiced += gain / k**0.5 * np.sin(k * phase) * (fk < 7000)
    envelope = np.sin(np.pi * np.arange(m) / m) ** 0.6
    burst = rng.normal(0, 0.3, m) * np.exp(-np.arange(m) / (0.015 * SAMPLE_RATE))  # a consonant onset
    return np.asarray((voiced + burst) * envelope)


def decode_pcm(path: Path) -> NDArray[np.int16]:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(path), mode="r") as container:
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    frames += resampler.resample(None)
    if not frames:
        raise CannotRun(f"{path}: no audio decoded")
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def encode_webm(pcm: NDArray[np.int16], bitrate: int) -> bytes:
    """A complete, self-contained WebM/Opus file (EBML header, tracks, clusters), 48 kHz mono."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm", container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        for start in range(0, len(pcm), 960):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 960], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def decoded_ms(data: bytes) -> int:
    with av.open(io.BytesIO(data), mode="r") as container:
        samples = sum(int(frame.samples) for frame in container.decode(audio=0))
    return round(samples * 1000 / SAMPLE_RATE)


@dataclass(frozen=True)
class ChunkAudio:
    """The chunk files of a run: `variants` distinct ones, chunk `seq` is variants[seq % len]."""

    variants: tuple[bytes, ...]
    duration_ms: int
    source: str
    cached: bool

    def for_seq(self, seq: int) -> bytes:
        return self.variants[seq % len(self.variants)]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "mimeType": MIME_TYPE, "durationMs": self.duration_ms,
                "variants": len(self.variants), "chunkBytes": [len(v) for v in self.variants], "fromCache": self.cached}


def resolve_source(speech: str) -> Path | None:
    if speech == "synthetic":
        return None
    if speech == "auto":
        return REPO_SPEECH if REPO_SPEECH.is_file() else None
    path = Path(speech)
    if not path.is_file():
        raise CannotRun(f"--speech {speech}: no such file")
    return path


def load_chunk_audio(seconds: float, speech: str, cache_dir: Path, bitrate: int, variants: int) -> ChunkAudio:
    """Generate the chunk files once (PCM looped to length, Opus-encoded) and cache them on disk."""
    source = resolve_source(speech)
    source_id = hashlib.sha256(source.read_bytes()).hexdigest() if source else "synthetic"
    samples = round(seconds * SAMPLE_RATE)
    keys = [hashlib.sha256(f"{AUDIO_VERSION}|{source_id}|{samples}|{bitrate}|{i}".encode()).hexdigest()[:24] for i in range(variants)]
    paths = [cache_dir / f"{key}.webm" for key in keys]
    label = str(source) if source else "synthetic"
    if all(p.is_file() for p in paths):
        return ChunkAudio(tuple(p.read_bytes() for p in paths), round(samples * 1000 / SAMPLE_RATE), label, True)
    pcm = decode_pcm(source) if source else synthetic_speech(min(max(seconds * variants, 20.0), 240.0))
    # Consecutive variants continue the loop; when it is too short for that, spread their starts over it.
    step = samples if samples * variants <= len(pcm) else len(pcm) // variants
    made = []
    for i, path in enumerate(paths):
        index = (np.arange(samples) + i * step) % len(pcm)
        data = encode_webm(pcm[index], bitrate)
        if abs(decoded_ms(data) - seconds * 1000) > 100:
            raise CannotRun(f"generated chunk decodes to {decoded_ms(data)} ms, not {seconds * 1000:.0f} ms")
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temp.write_bytes(data)
        temp.replace(path)
        made.append(data)
    return ChunkAudio(tuple(made), round(samples * 1000 / SAMPLE_RATE), label, False)


# -- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)
    return {"count": len(values), "avg": r(sum(values) / len(values)) if values else None,
            "min": r(min(values)) if values else None, "max": r(max(values)) if values else None,
            "p50": r(percentile(values, 50)), "p95": r(percentile(values, 95)), "p99": r(percentile(values, 99))}


# -- REST ------------------------------------------------------------------------------------------


class Api:
    """The few REST calls the run needs, with the recorder's token."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        async with self.http.get(self.url + path, params=params, timeout=aiohttp.ClientTimeout(total=15)) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status} {body}")
            return dict(body)

    async def server_stats(self) -> dict[str, Any]:
        return await self.get("/api/server/stats")

    async def missing_chunks(self, session_id: str, last_seq: int | None = None) -> dict[str, Any]:
        params = {"lastSeq": last_seq} if last_seq is not None and last_seq >= 0 else {}
        return await self.get(f"/api/sessions/{session_id}/missing-chunks", **params)

    async def session(self, session_id: str) -> dict[str, Any]:
        return await self.get(f"/api/sessions/{session_id}")

    async def transcript(self, session_id: str) -> dict[str, Any]:
        return await self.get(f"/api/sessions/{session_id}/transcript")


# -- one recorder ----------------------------------------------------------------------------------


@dataclass
class Episode:
    start: float
    reason: str                      # what paused the recorder: canAccept, credits, overloaded, or a backpressure state
    end: float | None = None
    server_reason: str | None = None  # the metric the server named in its backpressure event (queue, latency, memory, ...)


@dataclass(frozen=True)
class SegmentSeen:
    """A transcriptSegment as the recorder first received it (a window: chunks from_seq..seq)."""

    t: float
    conn: int
    from_seq: int
    seq: int


def segment_key(data: dict[str, Any]) -> str:
    """A segment's identity: its id, or (from servers without ids) where it lies on the recording."""
    if data.get("id") is not None:
        return str(data["id"])
    return f"{data.get('fromSeq')}-{data.get('seq')}-{data.get('startMs')}-{data.get('endMs')}"


@dataclass
class Recorder:
    """One session recorded by a good client; all times are seconds since the run started."""

    index: int
    session_id: str
    options: Options
    audio: ChunkAudio
    token: str | None
    api: Api
    clock: Callable[[], float]
    transcribing: bool | None                                  # None: not known yet (a user's token cannot see the engine)
    outbox: set[int] = field(default_factory=set)              # recorded, to be sent (or resent)
    retry_at: dict[int, float] = field(default_factory=dict)   # not before this time (overloaded, transient errors)
    inflight: dict[int, float] = field(default_factory=dict)   # seq -> send time
    acked: dict[int, float] = field(default_factory=dict)      # seq -> ack time
    ack_conn: dict[int, int] = field(default_factory=dict)     # seq -> connection number of its ack
    first_sent: dict[int, float] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)
    failed: dict[int, str] = field(default_factory=dict)
    lost_after_ack: set[int] = field(default_factory=set)
    acks: list[tuple[float, int, float, bool]] = field(default_factory=list)    # (time, seq, latency ms, duplicate)
    segments: dict[str, SegmentSeen] = field(default_factory=dict)              # segment key -> first receipt
    errors: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)                      # backpressure events by state
    episodes: list[Episode] = field(default_factory=list)
    overloads: list[tuple[float, int, float]] = field(default_factory=list)     # (time, seq, retryAfterMs) of each refusal
    reconnects: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    stored: int = 0
    resends: int = 0
    overloaded_retries: int = 0
    probes: int = 0
    slowdowns: int = 0
    credits: int | None = None
    paused: bool = False
    last_signal: float = 0.0
    produced: int = 0
    producing_done: bool = False
    connected: bool = False
    conn_no: int = 0
    stop_reply: dict[str, Any] | None = None
    fatal: str | None = None
    completed: bool = False
    transcript: dict[str, Any] | None = None      # the last GET .../transcript of the wait after stopSession
    transcript_wait_s: float | None = None         # stopSession -> nothing pending
    transcript_timed_out: bool = False
    bytes_acked: int = 0
    finished_at: float | None = None
    epoch_ms: int = field(default_factory=lambda: int(time.time() * 1000))  # the recording's start, for chunk timestamps
    _client: socketio.AsyncClient | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _dropping: bool = False
    _lose_reply: tuple[int, int] | None = None   # (seq, connection) whose answer the next drop swallows
    _reply_lost: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return (f"Recorder({self.session_id}, acked={len(self.acked)}/{self.options.chunks}, inflight={len(self.inflight)}, "
                f"outbox={len(self.outbox)}, paused={self.paused})")

    # -- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Record the whole session; whatever goes wrong ends up in `fatal` and the report, not in a traceback."""
        try:
            await self._connect()
        except (CannotRun, socketio.exceptions.SocketIOError, TimeoutError) as exc:
            self.fatal = f"first connection failed: {exc}"
            return
        producer = asyncio.get_running_loop().create_task(self._produce())
        try:
            await self._send_loop()
            if self.fatal is None:
                await self._finish()
        except Exception as exc:  # the outermost edge of one recorder: keep the others and the report going
            self.fatal = f"{type(exc).__name__}: {exc}"
        finally:
            producer.cancel()
            self.finished_at = self.clock()  # before the goodbye: a polling disconnect waits out the long poll
            if self._client is not None and self._client.connected:
                self.connected = False  # our own goodbye is not a drop
                await self._client.disconnect()

    async def _produce(self) -> None:
        """The microphone: one chunk every interval, whatever the network does (drift-free pacing)."""
        start = time.monotonic()
        for seq in range(self.options.chunks):
            self.outbox.add(seq)
            self.produced = seq + 1
            self._wake.set()
            if self.options.interval_s > 0 and seq + 1 < self.options.chunks:
                await asyncio.sleep(max(0.0, start + (seq + 1) * self.options.interval_s - time.monotonic()))
        self.producing_done = True
        self._wake.set()

    def finished(self) -> bool:
        return self.producing_done and all(s in self.acked or s in self.failed for s in range(self.options.chunks))

    async def _send_loop(self) -> None:
        while not self.finished():
            if not self.connected:
                if not await self._reconnect():
                    return
                continue
            self._expire_inflight()
            seq, wait = self._pick()
            if seq is None:
                await self._nap(wait)
                continue
            await self._emit(seq)
            if self.options.drop_every and (seq + 1) % self.options.drop_every == 0 and self.attempts[seq] == 1:
                await self._drop(seq)

    async def _nap(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.005, min(seconds, 0.5)))
        except TimeoutError:
            pass

    def _pick(self) -> tuple[int | None, float]:
        """The next chunk to send, or how long to wait: the window, pauses and retry times decide."""
        now = self.clock()
        if not self.outbox or len(self.inflight) >= self.options.window:
            return None, 0.5
        due = [s for s in self.outbox if self.retry_at.get(s, 0.0) <= now]
        if not due:
            return None, min(self.retry_at[s] for s in self.outbox) - now
        overload_retries = [s for s in due if s in self.retry_at]
        if overload_retries:  # a refused chunk's retry goes out even while paused: it is the server's own invitation
            return min(overload_retries), 0.0
        if self.paused:
            if not self.inflight and now - self.last_signal >= self.options.pause_probe_s:
                self.probes += 1
                self.last_signal = now
                return min(due), 0.0
            return None, 0.5
        if self.credits == 0 and self.inflight:
            return None, 0.5
        return min(due), 0.0

    async def _emit(self, seq: int) -> None:
        now = self.clock()
        self.attempts[seq] += 1
        if seq in self.first_sent:
            self.resends += 1
        else:
            self.first_sent[seq] = now
        self.outbox.discard(seq)
        self.retry_at.pop(seq, None)
        self.inflight[seq] = now
        if self.credits:
            self.credits -= 1
        audio = self.audio.for_seq(seq)
        payload = {"sessionId": self.session_id, "sequence": seq, "timestamp": self.epoch_ms + seq * self.audio.duration_ms,
                   "size": len(audio), "mimeType": MIME_TYPE, "durationMs": self.audio.duration_ms, "audio": audio}
        conn = self.conn_no
        client = self._client
        assert client is not None
        try:
            await client.emit("audio-chunk", payload, namespace=self.options.namespace,
                              callback=lambda *reply: self._on_reply(seq, conn, now, reply[0] if reply else None))
        except socketio.exceptions.SocketIOError:
            self.errors["send_failed"] += 1
            self._requeue(seq)
            self._on_disconnect(conn)

    def _requeue(self, seq: int) -> None:
        self.inflight.pop(seq, None)
        if seq not in self.acked and seq not in self.failed:
            self.outbox.add(seq)
        self._wake.set()

    def _expire_inflight(self) -> None:
        now = self.clock()
        for seq, sent in list(self.inflight.items()):
            if now - sent > self.options.ack_timeout_s:
                self.errors["timeout"] += 1
                del self.inflight[seq]
                self._retry_later(seq, 0.0, "timeout")

    # -- server answers --------------------------------------------------------------------------

    def _on_reply(self, seq: int, conn: int, sent: float, reply: Any) -> None:
        if self._lose_reply == (seq, conn):  # the network "ate" this answer: the chunk stays unacked
            self._reply_lost.set()
            return
        now = self.clock()
        if self.inflight.get(seq) == sent:
            del self.inflight[seq]
        self.last_signal = now
        self._wake.set()
        if seq in self.acked or seq in self.failed:
            return  # a late answer to a chunk already settled (resent after a timeout)
        if not isinstance(reply, dict):
            self.errors["bad_reply"] += 1
            self._retry_later(seq, 1.0, "bad_reply")
            return
        if "error" in reply:
            self._on_error(seq, reply["error"] if isinstance(reply["error"], dict) else {"code": str(reply["error"])})
            return
        self.acked[seq] = now
        self.ack_conn[seq] = conn
        self.outbox.discard(seq)
        self.retry_at.pop(seq, None)
        duplicate = bool(reply.get("duplicate"))
        self.acks.append((now, seq, (now - sent) * 1000, duplicate))
        self.duplicates += duplicate
        self.stored += not duplicate
        self.bytes_acked += len(self.audio.for_seq(seq))
        if "credits" in reply:
            self.credits = reply["credits"]
        if reply.get("canAccept", True) is False:
            self._pause(now, "canAccept")
        elif reply.get("credits") == 0:
            self._pause(now, "credits")
        else:
            self._resume(now)

    def _on_error(self, seq: int, error: dict[str, Any]) -> None:
        code = str(error.get("code", "unknown"))
        self.errors[code] += 1
        if code == "overloaded":
            retry_after_ms = float(error.get("retryAfterMs") or 1000)
            self.overloaded_retries += 1
            self.overloads.append((self.clock(), seq, retry_after_ms))
            self._pause(self.clock(), "overloaded")
            self._retry_later(seq, retry_after_ms / 1000, code)
        elif code in TRANSIENT_CODES:
            self._retry_later(seq, 1.0, code)
        else:  # invalid, too_large, forbidden, conflict: resending the same bytes cannot help
            self.failed[seq] = code

    def _retry_later(self, seq: int, delay_s: float, code: str) -> None:
        if self.attempts[seq] >= self.options.max_attempts:
            self.failed[seq] = f"{code} after {self.attempts[seq]} attempts"
            return
        self.retry_at[seq] = self.clock() + delay_s
        self.outbox.add(seq)

    def _pause(self, now: float, reason: str) -> None:
        if not self.paused:
            self.paused = True
            self.episodes.append(Episode(now, reason))

    def _resume(self, now: float) -> None:
        if self.paused:
            self.paused = False
            self.episodes[-1].end = now

    def _on_backpressure(self, conn: int, data: Any) -> None:
        if conn != self.conn_no or not isinstance(data, dict):
            return
        now = self.clock()
        self.last_signal = now
        self.signals[str(data.get("state"))] += 1
        if data.get("canAccept") is True:
            self._resume(now)
        elif data.get("canAccept") is False:
            self._pause(now, str(data.get("state") or "backpressure"))
            if self.episodes[-1].server_reason is None and data.get("reason"):
                self.episodes[-1].server_reason = str(data["reason"])
        self._wake.set()

    def _on_segment(self, conn: int, data: Any) -> None:
        if not isinstance(data, dict) or data.get("sessionId") != self.session_id or not isinstance(data.get("seq"), int):
            return
        seq = data["seq"]
        from_seq = data["fromSeq"] if isinstance(data.get("fromSeq"), int) else seq
        self.segments.setdefault(segment_key(data), SegmentSeen(self.clock(), conn, from_seq, seq))
        self._wake.set()

    def _on_completed(self, data: Any) -> None:
        if isinstance(data, dict) and data.get("sessionId") == self.session_id:
            self.completed = True
            self._wake.set()

    def _on_disconnect(self, conn: int) -> None:
        if conn != self.conn_no or not self.connected:
            return
        self.connected = False
        self.reconnects.append({"droppedAt": round(self.clock(), 3), "planned": self._dropping})
        if not self._dropping:
            self.errors["disconnected"] += 1
        for seq in list(self.inflight):
            self._requeue(seq)
        self._wake.set()

    # -- connections -----------------------------------------------------------------------------

    def _new_client(self, conn: int) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        ns = self.options.namespace

        async def on_disconnect(*_: Any) -> None:
            self._on_disconnect(conn)

        async def on_backpressure(data: Any = None) -> None:
            self._on_backpressure(conn, data)

        async def on_segment(data: Any = None) -> None:
            self._on_segment(conn, data)

        async def on_completed(data: Any = None) -> None:
            self._on_completed(data)

        async def on_slowdown(data: Any = None) -> None:
            self.slowdowns += 1

        for event, handler in (("disconnect", on_disconnect), ("backpressure", on_backpressure), ("transcriptSegment", on_segment),
                               ("session-completed", on_completed), ("slowDown", on_slowdown)):
            client.on(event, handler, namespace=ns)
        return client

    async def _connect(self) -> dict[str, Any]:
        """Connect, join the session (room for its segments; replay from the last seq a segment came for)."""
        conn = self.conn_no + 1
        client = self._new_client(conn)
        try:
            await client.connect(self.options.url, auth={"token": self.token} if self.token else None,
                                 transports=[self.options.transport], namespaces=[self.options.namespace], wait_timeout=10)
        except socketio.exceptions.ConnectionError as exc:
            await client.shutdown()
            raise CannotRun(f"cannot connect to {self.options.url}{self.options.namespace}: {exc}") from exc
        self._client, self.conn_no, self.connected = client, conn, True
        self.credits = None
        self._resume(self.clock())  # a new connection starts with fresh backpressure state on the server
        body: dict[str, Any] = {"sessionId": self.session_id}
        # Several segments may share a seq, so the replay starts at the highest one received (lastSeq one below it):
        # one that shares it and came while disconnected is replayed too; the repeats are recognised by id.
        highest = max((seen.seq for seen in self.segments.values()), default=-1)
        if highest > 0:
            body["lastSeq"] = highest - 1
        try:
            reply = await client.call("joinSession", body, namespace=self.options.namespace, timeout=15)
        except socketio.exceptions.SocketIOError as exc:
            reply = {"error": {"code": "client", "message": f"{type(exc).__name__}: {exc}"}}
        if not isinstance(reply, dict) or "error" in reply:
            self.connected = False
            await client.disconnect()
            raise CannotRun(f"joinSession {self.session_id} failed: {reply}")
        self.last_signal = self.clock()
        return reply

    async def _drop(self, seq: int) -> None:
        """Cut the connection like a network drop: no Socket.IO goodbye, answers in flight are lost.

        Drops alternate between the two ways a network loses a chunk: odd ones cut right after the
        emit (the chunk itself is usually lost), even ones let the server store it and lose the
        ack (the resend must come back `duplicate: true`)."""
        self._dropping = True
        planned = sum(1 for r in self.reconnects if r.get("planned")) + 1
        try:
            if planned % 2 == 0:
                self._lose_reply = (seq, self.conn_no)
                self._reply_lost.clear()
                try:
                    await asyncio.wait_for(self._reply_lost.wait(), self.options.ack_timeout_s)
                except TimeoutError:
                    pass
            records = len(self.reconnects)
            if self._client is not None:
                await self._client.eio.disconnect(abort=True)
            self._on_disconnect(self.conn_no)
            if len(self.reconnects) > records:
                self.reconnects[-1]["kind"] = "ack lost" if planned % 2 == 0 else "cut after send"
            await asyncio.sleep(self.options.drop_seconds)
        finally:
            self._dropping = False
            self._lose_reply = None

    async def _reconnect(self) -> bool:
        """Seed 003's resume: reconnect with backoff, rejoin, read missing-chunks, resend everything unacked."""
        record = self.reconnects[-1]
        deadline = self.clock() + self.options.reconnect_timeout_s
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                join = await self._connect()
                break
            except (CannotRun, socketio.exceptions.SocketIOError, TimeoutError) as exc:
                if self.clock() + delay > deadline:
                    self.fatal = f"no connection for {self.options.reconnect_timeout_s:.0f}s: {exc}"
                    return False
                delay = min(max(delay * 2, 1.0), 5.0)
        last_sent = max(self.first_sent, default=-1)
        try:
            rest = await self.api.missing_chunks(self.session_id, last_sent)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
            self.errors["missing_chunks_failed"] += 1
            rest = {"missing": [], "error": str(exc)}
        reported = set(join.get("missing") or []) | set(rest.get("missing") or [])
        for seq in sorted(reported):
            if seq in self.acked:  # the server acked it and no longer has it: a broken promise, resend
                self.lost_after_ack.add(seq)
                del self.acked[seq]
                self.bytes_acked -= len(self.audio.for_seq(seq))
                self.outbox.add(seq)
        record.update(reconnectedAt=round(self.clock(), 3), downtimeMs=round((self.clock() - record["droppedAt"]) * 1000, 1),
                      toResend=sorted(s for s in self.outbox if s in self.first_sent), serverMissing=sorted(reported),
                      serverTotalChunks=rest.get("totalChunks"), serverMaxSeq=rest.get("maxSeq"))
        return True

    # -- the end ---------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """stopSession with lastSeq, then wait for the transcription to finish (and for the last pause to end)."""
        if not self.connected and not await self._reconnect():
            return
        if self.transcribing is None:  # the engine is the admin's to see: the chunks' status tells (stored: none)
            try:
                statuses = (await self.api.session(self.session_id)).get("chunksByStatus") or {}
                self.transcribing = set(statuses) != {"stored"}
            except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError):
                self.errors["session_read_failed"] += 1
                self.transcribing = True
        assert self._client is not None
        try:
            self.stop_reply = await self._client.call("stopSession", {"sessionId": self.session_id, "lastSeq": self.options.chunks - 1},
                                                      namespace=self.options.namespace, timeout=15)
        except (socketio.exceptions.SocketIOError, TimeoutError) as exc:
            self.errors["stop_failed"] += 1
            self.stop_reply = {"error": {"code": "client", "message": str(exc)}}
        if self.transcribing and not await self._await_transcription():
            return
        end = self.clock() + 2.0
        while self.paused and self.clock() < end and self.connected:
            await self._nap(0.1)

    async def _await_transcription(self) -> bool:
        """Poll the transcript until no chunk is pending (stopSession flushed the last window), then give the
        segments the server stored a moment to arrive live. False when the connection could not be had back."""
        started = self.clock()
        deadline = started + self.options.transcript_timeout_s
        poll_s = TRANSCRIPT_POLL_S
        while True:
            if not self.connected and not await self._reconnect():
                return False
            polled = self.clock()
            try:
                self.transcript = await self.api.transcript(self.session_id)
            except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError):
                self.errors["transcript_failed"] += 1
            if self.transcript is not None and not self.transcript.get("pending"):
                break
            if self.clock() >= deadline:
                self.transcript_timed_out = True
                break
            wait_s = poll_s
            while self.clock() - polled < wait_s:
                await self._nap(wait_s - (self.clock() - polled))
                if self.completed:  # session-completed: nothing is unfinished any more, poll (almost) at once
                    wait_s = min(wait_s, 0.05)
            poll_s = min(poll_s * 1.5, 2.0)
        self.transcript_wait_s = self.clock() - started
        stored = {segment_key(seg) for seg in (self.transcript or {}).get("segments") or [] if isinstance(seg, dict)}
        settle = min(deadline, self.clock() + SEGMENT_SETTLE_S)
        while not stored <= set(self.segments) and self.clock() < settle:
            if not self.connected and not await self._reconnect():
                return False
            await self._nap(settle - self.clock())
        return True

    def local_queue(self) -> int:
        return len(self.outbox)


# -- sampling the server ---------------------------------------------------------------------------


def storage_bytes(storage_dir: Path, session_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """du of STORAGE_DIR/<session>: apparent bytes and allocated bytes (st_blocks)."""
    found: dict[str, dict[str, int]] = {}
    for sid in session_ids:
        apparent = allocated = files = 0
        try:
            entries = list(os.scandir(storage_dir / sid))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                st = entry.stat(follow_symlinks=False)
                apparent += st.st_size
                allocated += st.st_blocks * 512
                files += 1
        found[sid] = {"bytes": apparent, "allocatedBytes": allocated, "files": files}
    return found


@dataclass
class Sampler:
    """GET /api/server/stats every interval, with the clients' own counters beside each sample."""

    api: Api
    recorders: list[Recorder]
    clock: Callable[[], float]
    interval_s: float
    storage_dir: Path | None
    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    latest: dict[str, Any] = field(default_factory=dict)

    async def sample(self) -> None:
        row: dict[str, Any] = {"t": round(self.clock(), 3)}
        try:
            stats = await self.api.server_stats()
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError):
            self.failures += 1
            stats = {}
        transcription = stats.get("transcription") or {}
        row.update(rssBytes=stats.get("rssBytes"), peakRssBytes=stats.get("peakRssBytes"), cpuPercent=stats.get("cpuPercent"),
                   connections=stats.get("connections"), backlog=transcription.get("backlog"),
                   transcribing=transcription.get("inFlight"), transcribed=transcription.get("completed"),
                   recentLatencyMs=transcription.get("recentLatencyMs"))
        rs = self.recorders
        row.update(acked=sum(len(r.acked) for r in rs), sent=sum(len(r.first_sent) for r in rs),
                   inflight=sum(len(r.inflight) for r in rs), localQueue=sum(r.local_queue() for r in rs),
                   paused=sum(r.paused for r in rs), segments=sum(len(r.segments) for r in rs))
        if self.storage_dir is not None:
            disk = await asyncio.to_thread(storage_bytes, self.storage_dir, [r.session_id for r in rs])
            row["diskBytes"] = sum(d["bytes"] for d in disk.values())
        self.samples.append(row)
        self.latest = row

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sample()


# -- live progress ---------------------------------------------------------------------------------


class Display:
    """A rich progress bar on a terminal; a plain line per sample otherwise; nothing with --no-progress."""

    def __init__(self, options: Options, recorders: list[Recorder], sampler: Sampler, clock: Callable[[], float]) -> None:
        self.options, self.recorders, self.sampler, self.clock = options, recorders, sampler, clock
        self.total = options.chunks * options.sessions
        self._progress: Any = None
        self._task: Any = None
        self._last_line = 0.0

    def status(self) -> str:
        rs = self.recorders
        acked = sum(len(r.acked) for r in rs)
        sent = sum(len(r.first_sent) for r in rs)
        elapsed = max(self.clock(), 1e-6)
        kb = sum(r.bytes_acked for r in rs) / 1024
        p95 = percentile([lat for r in rs for _, _, lat, _ in r.acks[-100:]], 95)  # "current": the recent acks
        paused = sum(r.paused for r in rs)
        bp = f"PAUSED {paused}/{len(rs)}" if paused else "ok"
        s = self.sampler.latest
        rss = f"{s['rssBytes'] / 2**20:.0f} MiB" if s.get("rssBytes") else "?"
        backlog = s.get("backlog")
        return (f"acked {acked}/{sent} sent | {kb / elapsed:.0f} KB/s {acked / elapsed:.1f} ch/s | "
                f"p95 {p95:.0f} ms | bp {bp} | server {rss} backlog {backlog if backlog is not None else '?'}"
                if p95 is not None else f"acked {acked}/{sent} sent | bp {bp} | server {rss}")

    def __enter__(self) -> Display:
        if self.options.progress and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]stress"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[status]}"), console=Console(stderr=True), refresh_per_second=4)
            self._progress.start()
            self._task = self._progress.add_task("stress", total=self.total, status="connecting")
        return self

    def update(self) -> None:
        if self._progress is not None:
            acked = sum(len(r.acked) for r in self.recorders)
            self._progress.update(self._task, completed=acked, status=self.status())
        elif self.options.progress and self.clock() - self._last_line >= self.options.sample_interval_s:
            self._last_line = self.clock()
            print(f"[{self.clock():7.1f}s] {self.status()}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self.update()
            self._progress.stop()

    async def run(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(0.25)


# -- the whole run ---------------------------------------------------------------------------------


# What GET /api/server/stats shows an admin only; a user's token gets its own connections, sessions and backlog.
SERVER_ONLY_FIGURES = ("server RSS", "server CPU", "the whole server's backlog and connections", "the transcription engine")
HOW_TO_READ = ("run with an admin's token: --secret (or $SCRIBEAI_SECRET) mints one, `scribeai token create --user "
               "NAME --admin` makes one, or list the user in the server's ADMIN_USERS")
NOT_ADMIN = ("the token is not an admin's: running on the client's own figures (acks, latency, backpressure, what the "
             f"server stored for these sessions); not read: {', '.join(SERVER_ONLY_FIGURES)} ({HOW_TO_READ})")


def mint_token(options: Options) -> str | None:
    if options.token:
        return options.token
    if not options.secret:
        return None  # fine against SCRIBEAI_AUTH=none; otherwise the connect error says why
    from scribeai.auth import create_token

    return create_token(options.secret, options.user_id, role="admin")  # the run reads the whole server's figures


async def run(options: Options) -> dict[str, Any]:
    """Run the stress test and return the report (run_cli writes it to --out)."""
    problems = check_options(options)
    if problems:
        raise CannotRun("; ".join(problems))
    token = mint_token(options)
    audio = await asyncio.to_thread(load_chunk_audio, options.chunk_seconds, options.speech, options.cache_dir,
                                    options.bitrate, options.variants)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started_at = datetime.now(UTC)
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    async with aiohttp.ClientSession(headers=headers) as http:
        api = Api(http, options.url)
        try:
            stats_before = await api.server_stats()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CannotRun(f"no server at {options.url}: {exc}") from exc
        except RuntimeError as exc:
            raise CannotRun(f"{exc} (is the token right? give --token, or --secret / $SCRIBEAI_SECRET)") from exc
        admin = stats_before.get("scope") != "user"
        if not admin:  # a plain user's token: run on the client's own figures, and say what is missing
            print(f"stress: {NOT_ADMIN}", file=sys.stderr)
        engine = str((stats_before.get("transcription") or {}).get("engine", "unknown")) if admin else "unknown"
        run_id = uuid.uuid4().hex[:8]
        recorders = [Recorder(i, f"{options.session_prefix}-{run_id}-{i:03d}", options, audio, token, api, clock,
                              transcribing=None if engine == "unknown" else engine != "none") for i in range(options.sessions)]
        sampler = Sampler(api, recorders, clock, options.sample_interval_s, options.storage_dir)
        await sampler.sample()
        loop = asyncio.get_running_loop()
        with Display(options, recorders, sampler, clock) as display:
            background = [loop.create_task(sampler.run()), loop.create_task(display.run())]
            try:
                await asyncio.gather(*(r.run() for r in recorders))
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        await sampler.sample()
        fatal = [r.fatal for r in recorders if r.fatal]
        if fatal and all(r.conn_no == 0 for r in recorders):
            raise CannotRun(fatal[0])
        verification = await _verify(api, recorders, options)
        try:
            stats_after = await api.server_stats()
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as exc:
            stats_after = {"error": f"{type(exc).__name__}: {exc}"}
    wall_s = max((r.finished_at for r in recorders if r.finished_at is not None), default=clock())
    report = build_report(options, audio, engine, started_at, wall_s, recorders, sampler, verification, stats_before, stats_after, run_id)
    return report


async def _verify(api: Api, recorders: list[Recorder], options: Options) -> dict[str, dict[str, Any]]:
    """What the server holds for each session: missing-chunks (with the tail), the session row, the transcript."""
    limit = asyncio.Semaphore(8)

    async def one(r: Recorder) -> tuple[str, dict[str, Any]]:
        async with limit:
            try:
                missing = await api.missing_chunks(r.session_id, options.chunks - 1)
                session = await api.session(r.session_id)
                transcript = await api.transcript(r.session_id)
            except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as exc:
                return r.session_id, {"missing": {}, "session": {}, "transcript": {}, "error": f"{type(exc).__name__}: {exc}"}
        return r.session_id, {"missing": missing, "session": session, "transcript": transcript}

    found = dict(await asyncio.gather(*(one(r) for r in recorders)))
    if options.storage_dir is not None:
        disk = await asyncio.to_thread(storage_bytes, options.storage_dir, [r.session_id for r in recorders])
        for sid, usage in disk.items():
            found[sid]["disk"] = usage
    return found


# -- the report ------------------------------------------------------------------------------------


def _session_report(r: Recorder, v: dict[str, Any], options: Options) -> dict[str, Any]:
    n = options.chunks
    missing = v["missing"]
    session = v["session"]
    problems: list[str] = []
    if "error" in v:
        problems.append(f"could not read the session back from the server: {v['error']}")
    if r.fatal:
        problems.append(f"recorder gave up: {r.fatal}")
    unacked = sorted(set(range(n)) - set(r.acked))
    if unacked:
        problems.append(f"{len(unacked)} chunks never acked: {unacked[:20]}")
    if r.failed:
        problems.append(f"chunks refused for good: {dict(list(r.failed.items())[:20])}")
    if r.lost_after_ack:
        problems.append(f"chunks acked then reported missing by the server: {sorted(r.lost_after_ack)}")
    if missing.get("missing"):
        problems.append(f"server missing-chunks not empty: {missing['missing'][:20]}")
    if missing.get("totalChunks") != n or missing.get("maxSeq") != n - 1:
        problems.append(f"server has totalChunks={missing.get('totalChunks')} maxSeq={missing.get('maxSeq')}, expected {n} and {n - 1}")
    acked_bytes = r.bytes_acked
    if session.get("bytes") != acked_bytes:
        problems.append(f"server stores {session.get('bytes')} bytes for the session, the acked chunks hold {acked_bytes}")
    if "disk" in v and v["disk"]["bytes"] != acked_bytes:
        problems.append(f"STORAGE_DIR/{r.session_id} holds {v['disk']['bytes']} bytes, the acked chunks {acked_bytes}")
    transcript = v.get("transcript") or {}
    stored_segments = [seg for seg in transcript.get("segments") or [] if isinstance(seg, dict)]
    by_status = dict(session.get("chunksByStatus") or {})
    done = int(by_status.get("done", 0))
    pending = list(transcript.get("pending") or [])
    failed = list(transcript.get("failed") or [])
    gaps = list(transcript.get("gaps") or [])
    not_received = [segment_key(seg) for seg in stored_segments if segment_key(seg) not in r.segments]
    covered = {seq for seg in stored_segments if isinstance(seg.get("seq"), int)
               for seq in range(seg["fromSeq"] if isinstance(seg.get("fromSeq"), int) else seg["seq"], seg["seq"] + 1)}
    if r.transcribing:
        # Segments are windows cut at pauses and silence gets none: the server's chunk status says what is transcribed.
        not_done = sum(by_status.values()) - done
        if not_done or pending or failed:
            waited = (f"; still pending {r.transcript_wait_s:.1f} s after stopSession"
                      if r.transcript_timed_out and r.transcript_wait_s is not None else "")
            problems.append(f"{not_done} stored chunks not transcribed: pending {pending[:20]}, "
                            f"failed {[f.get('seq') if isinstance(f, dict) else f for f in failed][:20]} "
                            f"(chunks by status {by_status}{waited})")
        unfilled = [g for g in gaps if not (isinstance(g, dict) and g.get("filled"))]
        if unfilled:
            problems.append(f"{len(unfilled)} transcript gaps never filled: {unfilled[:5]}")
        if not_received:
            problems.append(f"{len(not_received)} of the {len(stored_segments)} transcript segments the server stored "
                            f"never reached the recorder: {not_received[:10]}")
    return {
        "sessionId": r.session_id, "chunksAcked": len(r.acked), "acksNew": r.stored, "duplicates": r.duplicates,
        "resends": r.resends, "failed": {str(k): c for k, c in r.failed.items()}, "bytesAcked": acked_bytes,
        "server": {"missing": missing.get("missing"), "maxSeq": missing.get("maxSeq"), "totalChunks": missing.get("totalChunks"),
                   "bytes": session.get("bytes"), "durationMs": session.get("durationMs"), "status": session.get("status"),
                   "chunksByStatus": session.get("chunksByStatus"), "segmentsStored": len(stored_segments)},
        "disk": v.get("disk") or {"bytes": session.get("bytes"), "method": "rest"},
        "stopReply": r.stop_reply, "chunksDone": done, "chunksPending": pending, "chunksFailed": failed, "gaps": gaps,
        "chunksWithoutSegment": sorted(set(range(n)) - covered), "segmentsReceived": len(r.segments),
        "segmentsNotReceived": not_received,
        "transcriptWaitS": None if r.transcript_wait_s is None else round(r.transcript_wait_s, 3),
        "backpressureEpisodes": len(r.episodes), "reconnects": r.reconnects, "probes": r.probes,
        "errors": dict(r.errors), "ok": not problems, "problems": problems,
    }


def _rss_shape(samples: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    rows = [s for s in samples if s.get("rssBytes")]
    if not rows:
        return {"note": "the server reported no RSS"}
    middle = min(rows, key=lambda s: abs(s["t"] - wall_s / 2))
    second_half = [s for s in rows if s["t"] >= wall_s / 2]
    slope = None
    if len(second_half) >= 3:
        ts = np.array([s["t"] for s in second_half])
        mb = np.array([s["rssBytes"] / 2**20 for s in second_half])
        slope = round(float(np.polyfit(ts, mb, 1)[0]) * 60, 3)
    peaks = [s["peakRssBytes"] for s in rows if s.get("peakRssBytes")]
    return {"start": rows[0]["rssBytes"], "middle": middle["rssBytes"], "end": rows[-1]["rssBytes"],
            "max": max(s["rssBytes"] for s in rows), "peakReported": max(peaks) if peaks else None,
            "peakAtStart": rows[0].get("peakRssBytes"), "peakAtMiddle": middle.get("peakRssBytes"), "peakAtEnd": rows[-1].get("peakRssBytes"),
            "secondHalfSlopeMiBPerMin": slope, "secondHalfSamples": len(second_half), "samples": len(rows)}


def chunk_lags(r: Recorder) -> dict[int, tuple[float, bool]]:
    """Per acked chunk: ms from its ack to the first segment with seq >= its sequence received after the ack, and
    whether that segment came on the connection of the ack. Chunks no later segment reaches are left out."""
    arrivals = sorted(r.segments.values(), key=lambda x: x.t)
    lags: dict[int, tuple[float, bool]] = {}
    for seq, t_ack in r.acked.items():
        first = next((x for x in arrivals if x.seq >= seq and x.t >= t_ack), None)
        if first is not None:
            lags[seq] = ((first.t - t_ack) * 1000, first.conn == r.ack_conn.get(seq))
    return lags


def build_report(options: Options, audio: ChunkAudio, engine: str, started_at: datetime, wall_s: float,
                 recorders: list[Recorder], sampler: Sampler, verification: dict[str, dict[str, Any]],
                 stats_before: dict[str, Any], stats_after: dict[str, Any], run_id: str) -> dict[str, Any]:
    sessions = [_session_report(r, verification[r.session_id], options) for r in recorders]
    latencies = [lat for r in recorders for _, _, lat, _ in r.acks]
    first_send = min((t for r in recorders for t in r.first_sent.values()), default=0.0)
    last_ack = max((t for r in recorders for t in r.acked.values()), default=first_send)
    send_wall = max(last_ack - first_send, 1e-9)
    acked = sum(len(r.acked) for r in recorders)
    acked_bytes = sum(s["bytesAcked"] for s in sessions)
    planned = options.chunks * options.sessions
    errors: Counter[str] = Counter()
    signals: Counter[str] = Counter()
    for r in recorders:
        errors.update(r.errors)
        signals.update(r.signals)
    episodes = [(r.index, e) for r in recorders for e in r.episodes]
    paused_s = sum((e.end if e.end is not None else wall_s) - e.start for _, e in episodes)
    lags = {r.index: chunk_lags(r) for r in recorders}
    lag_all = [lag for per in lags.values() for lag, _ in per.values()]
    lag_same = [lag for per in lags.values() for lag, same in per.values() if same]
    if engine == "unknown":  # a user's token: what the chunks' status showed
        engine = "unknown (transcribes)" if any(r.transcribing for r in recorders) else "none (chunks stored untranscribed)"
    checked = any(r.transcribing for r in recorders)
    transcription: dict[str, Any] = {"engine": engine, "checked": checked}
    if not checked:
        transcription["note"] = "the server runs TRANSCRIBER=none: no segments are made, the transcription check is skipped"
    else:
        transcription.update(
            chunksExpected=planned, chunksDone=sum(s["chunksDone"] for s in sessions),
            segmentsReceived=sum(len(r.segments) for r in recorders),
            segmentsStored=sum(s["server"]["segmentsStored"] for s in sessions),
            chunksWithoutSegment=sum(len(s["chunksWithoutSegment"]) for s in sessions),
            lagMs=summary(lag_all), lagSameConnectionMs=summary(lag_same),
            lagNote="chunk acked (stored) -> the first transcriptSegment with seq >= the chunk's received after that ack, "
                    "client clock; chunks no later segment covers (silence at the end) are left out; 'sameConnection' "
                    "leaves out segments received on another connection than the ack (replayed by joinSession)",
            transcriptWaitS=summary([r.transcript_wait_s for r in recorders if r.transcript_wait_s is not None]),
            doneNote="a chunk is transcribed when the server's status for it is done (GET /api/sessions/{id}/transcript "
                     "lists it neither pending nor failed); segments are windows cut at pauses, several chunks each",
        )
    reconnects = [c for r in recorders for c in r.reconnects]
    cpu = [s["cpuPercent"] for s in sampler.samples if s.get("cpuPercent") is not None]
    disk_total = sum(s["disk"]["bytes"] for s in sessions)
    problems = [f"{s['sessionId']}: {p}" for s in sessions for p in s["problems"]]
    report = {
        "tool": "scribeai stress", "reportVersion": 1, "runId": run_id,
        "startedAt": started_at.isoformat(), "wallS": round(wall_s, 3),
        "settings": {**options.public(), "audio": audio.describe()},
        "server": {"url": options.url, "engine": engine, "statsBefore": stats_before, "statsAfter": stats_after,
                   "scope": stats_before.get("scope", "server"),
                   "notRead": [] if stats_before.get("scope") != "user" else list(SERVER_ONLY_FIGURES),
                   **({} if stats_before.get("scope") != "user" else {"howToRead": HOW_TO_READ})},
        "totals": {"sessions": options.sessions, "chunksPlanned": planned, "chunksSent": sum(len(r.first_sent) for r in recorders),
                   "sendAttempts": sum(sum(r.attempts.values()) for r in recorders), "chunksAcked": acked,
                   "acksNew": sum(r.stored for r in recorders), "duplicates": sum(r.duplicates for r in recorders),
                   "resends": sum(r.resends for r in recorders), "failed": sum(len(r.failed) for r in recorders),
                   "lostAfterAck": sum(len(r.lost_after_ack) for r in recorders), "bytesAcked": acked_bytes,
                   "successRate": round(acked / planned, 6) if planned else None},
        "throughput": {"sendPhaseS": round(send_wall, 3), "kbPerS": round(acked_bytes / 1024 / send_wall, 1),
                       "chunksPerS": round(acked / send_wall, 2),
                       "audioSecondsPerS": round(acked * audio.duration_ms / 1000 / send_wall, 1),
                       "note": "acked audio bytes (KB = 1024 B) from the first send to the last ack"},
        "ackLatencyMs": summary(latencies),
        "errors": dict(sorted(errors.items())),
        "backpressure": {"episodes": len(episodes), "pausedS": round(paused_s, 3),
                         "episodesOpenAtEnd": sum(e.end is None for _, e in episodes),
                         "byReason": dict(Counter(e.reason for _, e in episodes)),
                         "byServerReason": dict(Counter(e.server_reason or "unknown" for _, e in episodes)), "serverSignals": dict(signals),
                         "overloadedRetries": sum(r.overloaded_retries for r in recorders),
                         "overloaded": [{"session": r.index, "seq": seq, "t": round(t, 3), "retryAfterMs": ms}
                                        for r in recorders for t, seq, ms in r.overloads],
                         "probes": sum(r.probes for r in recorders), "slowDown": sum(r.slowdowns for r in recorders),
                         "list": [{"session": i, "start": round(e.start, 3), "end": None if e.end is None else round(e.end, 3),
                                   "reason": e.reason, "serverReason": e.server_reason} for i, e in episodes]},
        "reconnects": {"count": sum("reconnectedAt" in c for c in reconnects), "planned": sum(bool(c.get("planned")) for c in reconnects),
                       "downtimeMs": summary([c["downtimeMs"] for c in reconnects if "downtimeMs" in c]),
                       "chunksToResend": sum(len(c.get("toResend", [])) for c in reconnects),
                       "serverMissingAtResume": sum(len(c.get("serverMissing", [])) for c in reconnects)},
        "transcription": transcription,
        "serverResources": {"rssBytes": _rss_shape(sampler.samples, wall_s),
                            "cpuPercent": {"avg": round(sum(cpu) / len(cpu), 1) if cpu else None, "max": max(cpu, default=None)},
                            "sampleIntervalS": options.sample_interval_s, "sampleFailures": sampler.failures},
        "disk": {"method": "du" if options.storage_dir else "rest", "bytes": disk_total,
                 "allocatedBytes": sum(s["disk"].get("allocatedBytes", 0) for s in sessions) if options.storage_dir else None},
        "sessions": sessions,
        "timeSeries": {"samples": sampler.samples,
                       "acks": [[round(t, 3), r.index, seq, round(lat, 2), dup] for r in recorders for t, seq, lat, dup in r.acks],
                       "segments": [[round(x.t, 3), r.index, x.from_seq, x.seq, x.conn]
                                    for r in recorders for x in sorted(r.segments.values(), key=lambda x: (x.t, x.seq))],
                       "chunkLag": [[r.index, seq, round(lag, 1)] for r in recorders for seq, (lag, _) in sorted(lags[r.index].items())],
                       "columns": {"acks": ["t", "session", "seq", "latencyMs", "duplicate"],
                                   "segments": ["t", "session", "fromSeq", "seq", "connection"],
                                   "chunkLag": ["session", "seq", "lagMs"]}},
        "verdict": {"ok": not problems, "problems": problems},
    }
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report["startedAt"]).strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"perf-report-{stamp}.json"
    if path.exists():
        path = out_dir / f"perf-report-{stamp}-{report['runId']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def require_matplotlib() -> None:
    try:
        import matplotlib  # type: ignore[import-not-found]  # noqa: F401
    except ModuleNotFoundError as exc:
        raise CannotRun("--plot needs matplotlib: pip install 'scribeai[plot]' (or pip install matplotlib)") from exc


def plot(report: dict[str, Any], path: Path) -> None:
    """Ack latency, server memory and queue depth over time, paused spans shaded."""
    import matplotlib  # type: ignore[import-not-found]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]

    series = report["timeSeries"]
    samples = series["samples"]
    fig, (lat_ax, mem_ax, queue_ax) = plt.subplots(3, 1, sharex=True, figsize=(11, 9))
    acks = series["acks"]
    lat_ax.scatter([a[0] for a in acks], [a[3] for a in acks], s=4, alpha=0.5, label="ack latency")
    if acks:
        window = max(10, len(acks) // 50)
        ordered = sorted(acks)
        rolling = [percentile([a[3] for a in ordered[max(0, i - window):i + 1]], 95) for i in range(len(ordered))]
        lat_ax.plot([a[0] for a in ordered], rolling, color="C3", label=f"p95 of last {window}")
    lat_ax.set_ylabel("ack latency (ms)")
    lat_ax.set_yscale("symlog", linthresh=10)
    for e in report["backpressure"]["list"]:
        lat_ax.axvspan(e["start"], e["end"] if e["end"] is not None else report["wallS"], color="orange", alpha=0.08)
    lat_ax.legend(loc="upper left")
    ts = [s["t"] for s in samples]
    mem_ax.plot(ts, [(s.get("rssBytes") or 0) / 2**20 for s in samples], marker=".", label="server RSS")
    mem_ax.plot(ts, [(s.get("peakRssBytes") or 0) / 2**20 for s in samples], linestyle="--", label="server peak RSS")
    mem_ax.set_ylabel("MiB")
    mem_ax.set_ylim(bottom=0)
    mem_ax.legend(loc="upper left")
    queue_ax.plot(ts, [s.get("backlog") or 0 for s in samples], marker=".", label="server transcription backlog")
    queue_ax.plot(ts, [s.get("localQueue") or 0 for s in samples], marker=".", label="recorders' local queue")
    queue_ax.plot(ts, [s.get("paused") or 0 for s in samples], linestyle=":", label="recorders paused")
    queue_ax.set_ylabel("chunks")
    queue_ax.set_xlabel("seconds since start")
    queue_ax.legend(loc="upper left")
    s = report["settings"]
    fig.suptitle(f"scribeai stress: {s['sessions']} x {s['chunks']} chunks of {s['chunk_seconds']} s, "
                 f"interval {s['interval_s']} s, engine {report['server']['engine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rss_line(rss: dict[str, Any], not_admin: bool) -> str:
    if "start" not in rss:
        return "not read (an admin's figure)" if not_admin else rss.get("note", "not reported")
    slope = rss.get("secondHalfSlopeMiBPerMin")
    trend = (f"slope 2nd half {slope} MiB/min" if slope is not None else
             f"no slope: {rss.get('secondHalfSamples', 0)} samples in the 2nd half, 3 needed (a longer run or a smaller --sample-interval)")

    def mib(v: Any) -> str:
        return f"{v / 2**20:.1f}" if isinstance(v, (int, float)) else "?"

    return (f"start {mib(rss.get('start'))}  middle {mib(rss.get('middle'))}  end {mib(rss.get('end'))}  "
            f"max {mib(rss.get('max'))} MiB  ({trend})")


def summary_table(report: dict[str, Any], path: Path | None) -> str:
    lat, tp, bp, tr = report["ackLatencyMs"], report["throughput"], report["backpressure"], report["transcription"]
    tot, rss = report["totals"], report["serverResources"]["rssBytes"]

    rows = [
        ("run", f"{report['runId']}  {tot['sessions']} session(s) x {report['settings']['chunks']} chunks, engine {tr['engine']}"),
        ("acked", f"{tot['chunksAcked']}/{tot['chunksPlanned']} ({100 * (tot['successRate'] or 0):.2f}%)  new acks {tot['acksNew']}  "
                  f"duplicates {tot['duplicates']}  resends {tot['resends']}  failed {tot['failed']}"),
        ("throughput", f"{tp['kbPerS']} KB/s  {tp['chunksPerS']} chunks/s  over {tp['sendPhaseS']} s"),
        ("ack ms", f"avg {lat['avg']}  min {lat['min']}  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}"),
        ("backpressure", f"{bp['episodes']} episodes, {bp['pausedS']} s paused, {bp['overloadedRetries']} overloaded retries, {bp['probes']} probes"),
        ("reconnects", f"{report['reconnects']['count']}  resent {report['reconnects']['chunksToResend']}"),
        ("server RSS", _rss_line(rss, report["server"].get("scope") == "user")),
        ("disk", f"{report['disk']['bytes'] / 1024:.1f} KB ({report['disk']['method']})"),
        ("errors", ", ".join(f"{k}={v}" for k, v in report["errors"].items()) or "none"),
    ]
    if tr["checked"]:
        lag = tr["lagMs"]
        rows.append(("transcripts", f"{tr['chunksDone']}/{tr['chunksExpected']} chunks done, {tr['segmentsReceived']} segments "
                                    f"({tr['segmentsStored']} stored), lag p50 {lag['p50']} ms p95 {lag['p95']} ms over {lag['count']} chunks"))
    else:
        rows.append(("transcripts", tr["note"]))
    if report["server"].get("notRead"):
        rows.append(("not read", f"{', '.join(report['server']['notRead'])}: {report['server']['howToRead']}"))
    rows.append(("verdict", "OK" if report["verdict"]["ok"] else "LOSS: " + "; ".join(report["verdict"]["problems"][:5])))
    if path is not None:
        rows.append(("report", str(path)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stress.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def run_cli(options: Options) -> int:
    """Run, write the report (and plot), print the summary; the exit status says whether anything was lost."""
    try:
        problems = check_options(options)
        if problems:
            raise CannotRun("; ".join(problems))
        if options.plot:
            require_matplotlib()
        report = asyncio.run(run(options))
    except CannotRun as exc:
        print(f"stress: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("stress: interrupted", file=sys.stderr)
        return 130
    path = write_report(report, options.out_dir)
    if options.plot:
        png = path.with_suffix(".png")
        plot(report, png)
        print(f"plot: {png}")
    print(summary_table(report, path))
    return EXIT_OK if report["verdict"]["ok"] else EXIT_LOSS


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(options_from_args(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
