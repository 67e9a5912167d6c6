"""Stream transcription with real-browser-like timeslices: WER per timeslice, and real-time recorders' lag.

    .venv/bin/python scripts/bench_stream.py --mode wer [--timeslices 1000,5000,15000]
    .venv/bin/python scripts/bench_stream.py --mode recorders --recorders 30 --minutes 2 [--captioned 4] [--in-process]
    .venv/bin/python scripts/bench_stream.py --mode recorders --recorders 30 --minutes 3 --workers 2

Speech is synthesized with espeak-ng (en-us, 150 wpm) from 25 English sentences without numbers,
joined with pauses at 16 kHz mono and encoded once as WebM/Opus (PyAV, libopus 48 kHz mono, muxer
option live=1: Segment and Clusters of unknown size, like Chrome's MediaRecorder).

--mode wer: the encoded bytes are cut at byte offsets proportional to the timeslice T
(offset = len * t / duration, so cuts fall in the middle of elements like Chromium's blobs; piece 0
is at least the header), sent as one session's `audio-chunk`s to a real server in this process
(transcriber=whisper, max_concurrency=2) as fast as acks allow, the pipeline is drained and the
session's segments are joined and scored (word-level Levenshtein WER, lowercased, punctuation
stripped). Baseline: the same model (bundled tiny.en, int8, beam_size=1) on the whole file at once.

--mode recorders: N recorders in real time, each sending a --timeslice piece (1 s by default) of its own WebM
(same sentences, another order, ~30 % silence) every --timeslice with staggered starts; the first --captioned
of them join with live captions (interim: true), over websocket to a
server started as a separate process (`scribeai serve`) unless --in-process. Each recorder joins its
session's room; transcript lag of a chunk = time from its ack to the first transcriptSegment whose
`seq` >= the chunk's sequence. After M minutes: stopSession, wait for the tail, report.
With --workers N (N >= 1) transcription leaves the serve process: `scribeai serve` with MAX_CONCURRENCY=0 and
N `scribeai worker` processes (MAX_CONCURRENCY=--worker-concurrency each) on a fresh PostgreSQL database and
Redis, as docs/deployment.md deploys them; the CPU reported is the sum over all of them.

The JSON summary goes to stdout (one object); progress and the table go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pg_scratch import create_database, drop_database  # noqa: E402  (scripts/pg_scratch.py, beside this script)

from tests.speech import CLUSTER_ID, MEETING as SENTENCES, cut, encode_webm  # noqa: E402

SR = 16000
MIME = "audio/webm;codecs=opus"
EPOCH_MS = 1_764_000_000_000
SECRET = "bench-stream-secret-0123456789abcdef"




def _error_of(ack: Any) -> dict[str, Any] | None:
    """The server acks a refused chunk with {error: {code, message, retryAfterMs?}}; None for a stored one."""
    if not isinstance(ack, dict):
        return {"code": "no-ack"}
    error = ack.get("error")
    return error if isinstance(error, dict) else None

def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- speech ------------------------------------------------------------------------------------

_wav_cache: dict[int, np.ndarray] = {}


def sentence_pcm(index: int, workdir: Path) -> np.ndarray:
    """One sentence from espeak-ng as float32 16 kHz mono."""
    if index not in _wav_cache:
        path = workdir / f"s{index}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), SENTENCES[index]], check=True)
        with wave.open(str(path)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
        pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        n_out = int(len(pcm) * SR / rate)
        pcm = np.interp(np.arange(n_out) * rate / SR, np.arange(len(pcm)), pcm).astype(np.float32)
        _wav_cache[index] = pcm
    return _wav_cache[index]


def make_speech(order: list[int], workdir: Path, rng: random.Random, min_seconds: float = 0.0,
                silence_fraction: float | None = None,
                spans: list[tuple[float, float]] | None = None) -> tuple[np.ndarray, str, float]:
    """Join sentences with pauses (0.6–1.5 s, or sized for ~silence_fraction); repeat the order to reach min_seconds.

    Returns (pcm, reference text, silence seconds); `spans`, if given, gets each sentence's (start, end) in seconds."""
    parts, words, silence = [np.zeros(int(0.5 * SR), np.float32)], [], 0.5
    total = 0.5
    i = 0
    while i < len(order) or total < min_seconds:
        pcm = sentence_pcm(order[i % len(order)], workdir)
        if spans is not None:
            at = sum(len(part) for part in parts) / SR
            spans.append((at, at + len(pcm) / SR))
        parts.append(pcm)
        words.append(SENTENCES[order[i % len(order)]])
        speech_s = len(pcm) / SR
        if silence_fraction is None:
            pause = rng.uniform(0.6, 1.5)
        else:
            pause = max(0.6, speech_s * silence_fraction / (1 - silence_fraction) * rng.uniform(0.7, 1.3))
        parts.append(np.zeros(int(pause * SR), np.float32))
        total += speech_s + pause
        silence += pause
        i += 1
    return np.concatenate(parts), " ".join(words), silence


def decode_webm(data: bytes) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32)


# -- WER -----------------------------------------------------------------------------------------

def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("'", "").replace("’", "")).split()


def wer(reference: str, hypothesis: str) -> dict[str, Any]:
    ref, hyp = words_of(reference), words_of(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return {"wer": prev[-1] / max(1, len(ref)), "errors": prev[-1], "ref_words": len(ref), "hyp_words": len(hyp)}


# -- mode wer ------------------------------------------------------------------------------------

async def run_timeslice(pieces: list[bytes], timeslice_ms: int, tmp: Path) -> dict[str, Any]:
    import socketio
    from aiohttp.test_utils import TestServer

    from scribeai.app import create_app
    from scribeai.auth import create_token
    from scribeai.services import services_key
    from scribeai.settings import Settings

    base = tmp / f"t{timeslice_ms}"
    settings = Settings(host="127.0.0.1", port=0, data_dir=base / "data", storage_dir=base / "chunks",
                        archive_storage_path=base / "archives", secret=SECRET, transcriber="whisper",
                        max_concurrency=2, retention_schedule="off", shutdown_timeout=5)
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = socketio.AsyncSimpleClient()
    session_id = str(uuid.uuid4())
    counts = {"acked": 0, "nacks": {}, "backpressure_not_accepting": 0, "retries": 0}
    try:
        await client.connect(str(server.make_url("")).rstrip("/"), auth={"token": create_token(SECRET, "bench")},
                             transports=["websocket"], wait_timeout=10)
        started = time.perf_counter()
        for seq, audio in enumerate(pieces):
            while True:
                ack = await client.call("audio-chunk", {"sessionId": session_id, "sequence": seq,
                                                        "timestamp": EPOCH_MS + seq * timeslice_ms,
                                                        "mimeType": MIME, "audio": audio}, timeout=120)
                error = _error_of(ack)
                code = None if error is None else str(error.get("code"))
                if code is None:
                    counts["acked"] += 1
                    if ack.get("canAccept") is False:
                        counts["backpressure_not_accepting"] += 1
                    break
                counts["nacks"][code] = counts["nacks"].get(code, 0) + 1
                if code == "overloaded":
                    counts["retries"] += 1
                    await asyncio.sleep(float(error.get("retryAfterMs", 1000)) / 1000)
                    continue
                break
        sent_s = time.perf_counter() - started
        pipeline = app[services_key].pipeline
        await pipeline.drain(timeout=600)
        wall_s = time.perf_counter() - started
        segments = await pipeline.segments_after(session_id, None)
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
        await server.close()
    segments.sort(key=lambda s: (s["startMs"], s["seq"]))
    text = " ".join(s["text"] for s in segments)
    return {"timeslice_ms": timeslice_ms, "chunks": len(pieces), "segments": len(segments), "send_s": sent_s,
            "wall_s": wall_s, "text": text, **counts}


def whole_file(pcm: np.ndarray) -> tuple[str, float]:
    from faster_whisper import WhisperModel

    from scribeai.transcription.engines import bundled_model_path

    model = WhisperModel(bundled_model_path(), device="cpu", compute_type="int8")
    started = time.perf_counter()
    segments, _ = model.transcribe(pcm, beam_size=1)
    text = " ".join(s.text.strip() for s in segments)
    return text, time.perf_counter() - started


async def mode_wer(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmpdir:
        tmp = Path(tmpdir)
        rng = random.Random(args.seed)
        pcm, reference, silence = make_speech(list(range(len(SENTENCES))), tmp, rng)
        duration = len(pcm) / SR
        webm = encode_webm(pcm)
        log(f"speech: {duration:.1f} s ({silence:.1f} s pauses), {len(reference.split())} words, webm {len(webm)} bytes, "
            f"header {webm.find(CLUSTER_ID)} bytes")
        decoded = decode_webm(webm)
        base_text, base_s = whole_file(decoded)
        base = wer(reference, base_text)
        pcm_text, pcm_s = whole_file(pcm)
        base_pcm = wer(reference, pcm_text)
        log(f"whole file (decoded webm): WER {base['wer']:.4f} in {base_s:.1f} s; original PCM: WER {base_pcm['wer']:.4f}")
        rows = []
        for t in args.timeslices:
            pieces = cut(webm, duration, t)
            log(f"T={t} ms: {len(pieces)} pieces, sending ...")
            result = await run_timeslice(pieces, t, tmp)
            result.update(wer(reference, result["text"]))
            result["wer_minus_whole"] = result["wer"] - base["wer"]
            rows.append(result)
            log(f"T={t}: WER {result['wer']:.4f} (Δ {result['wer_minus_whole']:+.4f}), {result['segments']} segments, "
                f"wall {result['wall_s']:.1f} s")
    log("")
    log("| T ms | chunks | WER | WER − whole-file | wall s |")
    log("| --- | --- | --- | --- | --- |")
    for r in rows:
        log(f"| {r['timeslice_ms']} | {r['chunks']} | {r['wer']:.4f} | {r['wer_minus_whole']:+.4f} | {r['wall_s']:.1f} |")
    return {"mode": "wer", "audio_s": duration, "silence_s": silence, "webm_bytes": len(webm),
            "reference_words": len(words_of(reference)), "reference": reference,
            "whole_file": {**base, "seconds": base_s, "text": base_text},
            "whole_file_original_pcm": {**base_pcm, "seconds": pcm_s},
            "timeslices": rows}


# -- mode recorders ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Recorder:
    index: int
    pieces: list[bytes]
    session_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    acks: dict[int, float] = dataclasses.field(default_factory=dict)
    segments: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    nacks: dict[str, int] = dataclasses.field(default_factory=dict)
    backpressure: dict[str, int] = dataclasses.field(default_factory=dict)
    slow_down: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    ack_ms: list[float] = dataclasses.field(default_factory=list)
    captioned: bool = False  # joins with interim: true (live captions)
    interims: int = 0

    def lags(self) -> tuple[list[float], int]:
        lags, unresolved = [], 0
        for seq, acked in self.acks.items():
            later = [t for t, s in self.segments if s >= seq]
            if later:
                lags.append(min(later) - acked)
            else:
                unresolved += 1
        return lags, unresolved


async def run_recorder(rec: Recorder, url: str, token: str | None, start_delay: float, deadline: float,
                       interval: float) -> None:
    import socketio

    client = socketio.AsyncClient(reconnection=False)

    @client.on("transcriptSegment")
    async def on_segment(segment: dict[str, Any]) -> None:
        rec.segments.append((time.monotonic(), int(segment.get("seq", -1))))

    @client.on("backpressure")
    async def on_backpressure(body: dict[str, Any]) -> None:
        state = str(body.get("state"))
        rec.backpressure[state] = rec.backpressure.get(state, 0) + 1

    @client.on("transcriptInterim")
    async def on_interim(caption: dict[str, Any]) -> None:
        rec.interims += 1

    @client.on("slowDown")
    async def on_slow_down(body: Any = None) -> None:
        rec.slow_down += 1

    await asyncio.sleep(start_delay)
    try:
        await client.connect(url, auth={"token": token} if token else None, transports=["websocket"], wait_timeout=30)
        joined = False
        for seq, audio in enumerate(rec.pieces):
            due = time.monotonic() if seq == 0 else rec_start + seq * interval
            if due > deadline:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if seq == 0:
                rec_start = time.monotonic()
            while True:
                sent = time.monotonic()
                ack = await client.call("audio-chunk", {"sessionId": rec.session_id, "sequence": seq,
                                                        "timestamp": EPOCH_MS + seq * int(interval * 1000),
                                                        "mimeType": MIME, "audio": audio}, timeout=60)
                now = time.monotonic()
                error = _error_of(ack)
                code = None if error is None else str(error.get("code"))
                if code is None:
                    rec.acks[seq] = now
                    rec.ack_ms.append((now - sent) * 1000)
                    break
                rec.nacks[code] = rec.nacks.get(code, 0) + 1
                if code == "overloaded":
                    await asyncio.sleep(float(error.get("retryAfterMs", 1000)) / 1000)
                    continue
                break
            if not joined:
                await client.call("joinSession", {"sessionId": rec.session_id, "interim": rec.captioned}, timeout=30)
                joined = True
        rec.stopped_at = time.monotonic()  # type: ignore[attr-defined]
        await client.call("stopSession", {"sessionId": rec.session_id}, timeout=30)
        # wait for the tail: until every acked chunk is covered, or 120 s
        tail_deadline = time.monotonic() + 120
        while time.monotonic() < tail_deadline and rec.lags()[1] > 0:
            await asyncio.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
        rec.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.array(values), q))


async def mode_recorders(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import psutil

    interval = args.timeslice / 1000
    with tempfile.TemporaryDirectory(prefix="bench_stream_rec_") as tmpdir:
        tmp = Path(tmpdir)
        recorders = []
        for i in range(args.recorders):
            rng = random.Random(args.seed + i)
            order = list(range(len(SENTENCES)))
            rng.shuffle(order)
            pcm, _, silence = make_speech(order, tmp, rng, min_seconds=args.minutes * 60 + interval,
                                          silence_fraction=0.30)
            duration = len(pcm) / SR
            pieces = cut(encode_webm(pcm), duration, int(interval * 1000))
            recorders.append(Recorder(i, pieces, captioned=i < args.captioned))
        log(f"{len(recorders)} recorders ready; silence fraction of recorder 0: "
            f"{silence / duration:.2f} of {duration:.1f} s")

        proc = None
        workers: list[subprocess.Popen[bytes]] = []
        database = None
        app_server = None
        token = None
        if args.in_process:
            from aiohttp.test_utils import TestServer

            from scribeai.app import create_app
            from scribeai.auth import create_token
            from scribeai.settings import Settings

            settings = Settings(host="127.0.0.1", port=0, data_dir=tmp / "data", storage_dir=tmp / "chunks",
                                archive_storage_path=tmp / "archives", secret=SECRET, transcriber="whisper",
                                max_concurrency=2, retention_schedule="off", shutdown_timeout=5)
            app_server = TestServer(create_app(settings), host="127.0.0.1")
            await app_server.start_server()
            url = str(app_server.make_url("")).rstrip("/")
            token = create_token(SECRET, "bench")
            server_proc = psutil.Process(os.getpid())
        else:
            port = free_port()
            env = {**os.environ, "DATA_DIR": str(tmp / "data"), "STORAGE_DIR": str(tmp / "chunks"),
                   "ARCHIVE_STORAGE_PATH": str(tmp / "archives"), "SCRIBEAI_AUTH": "none", "TRANSCRIBER": "whisper",
                   "MAX_CONCURRENCY": "2", "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING", "DEMO": "off"}
            if args.workers:
                database = await create_database(args.postgres, "bench_stream")
                env.update(DATABASE_URL=database, REDIS_URL=args.redis, REDIS_CHANNEL=f"bench-{uuid.uuid4().hex[:8]}",
                           MAX_CONCURRENCY="0")
            server_log = open(tmp / "server.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "scribeai"), "serve", "--host", "127.0.0.1",
                                     "--port", str(port)], env=env, stdout=server_log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                for _ in range(1200):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{url}/healthz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"server did not start: {(tmp / 'server.log').read_text(errors='replace')[-2000:]}")
            server_proc = psutil.Process(proc.pid)
            for i in range(args.workers):  # after serve: it has created the schema
                worker_env = {**env, "MAX_CONCURRENCY": str(args.worker_concurrency), "NODE_ID": f"bench-worker-{i}"}
                workers.append(subprocess.Popen([str(ROOT / ".venv" / "bin" / "scribeai"), "worker"], env=worker_env,
                                                stdout=server_log, stderr=subprocess.STDOUT))
            await asyncio.sleep(10)  # the workers load their models
            for worker in workers:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited: {(tmp / 'server.log').read_text(errors='replace')[-2000:]}")
        measured = [server_proc] + [psutil.Process(w.pid) for w in workers]

        def cpu_seconds() -> float:
            return sum(t.user + t.system for t in (p.cpu_times() for p in measured))

        cpu_samples: list[float] = []
        cpu_each0 = [sum(p.cpu_times()[:2]) for p in measured]
        cpu0 = cpu_seconds()
        wall0 = time.monotonic()
        deadline = wall0 + args.minutes * 60
        load_before = os.getloadavg()

        async def sample_cpu() -> None:
            last_t, last = time.monotonic(), cpu_seconds()
            while True:
                await asyncio.sleep(5)
                now_t, now = time.monotonic(), cpu_seconds()
                cpu_samples.append((now - last) / (now_t - last_t))
                last_t, last = now_t, now

        sampler = asyncio.create_task(sample_cpu())
        try:
            await asyncio.gather(*(run_recorder(r, url, token, interval * i / len(recorders), deadline, interval)
                                   for i, r in enumerate(recorders)))
        finally:
            sampler.cancel()
            wall = time.monotonic() - wall0
            cpu1 = cpu_seconds()
            cpu_each = [sum(p.cpu_times()[:2]) - before for p, before in zip(measured, cpu_each0)]
            load_after = os.getloadavg()
            if proc is not None:
                for child in [proc, *workers]:
                    child.terminate()
                for child in [proc, *workers]:
                    try:
                        child.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        child.kill()
                server_log.close()
                if database:
                    await drop_database(args.postgres, database)
                server_tail = (tmp / "server.log").read_text(errors="replace")[-3000:]
            else:
                server_tail = ""
                await app_server.close()

    lags, unresolved, ack_ms = [], 0, []
    nacks: dict[str, int] = {}
    backpressure: dict[str, int] = {}
    errors: list[str] = []
    for r in recorders:
        lag, unres = r.lags()
        lags.extend(lag)
        unresolved += unres
        ack_ms.extend(r.ack_ms)
        for k, v in r.nacks.items():
            nacks[k] = nacks.get(k, 0) + v
        for k, v in r.backpressure.items():
            backpressure[k] = backpressure.get(k, 0) + v
        errors.extend(r.errors)
    cpu_s = cpu1 - cpu0
    summary = {
        "mode": "recorders", "recorders": len(recorders), "minutes": args.minutes, "server": "in-process" if args.in_process else "subprocess",
        "workers": args.workers, "worker_concurrency": args.worker_concurrency if args.workers else None,
        "wall_s": wall, "chunks_acked": sum(len(r.acks) for r in recorders),
        "segments": sum(len(r.segments) for r in recorders), "timeslice_ms": args.timeslice,
        "captioned": args.captioned, "interims": sum(r.interims for r in recorders),
        "lag_s_captioned": {"p50": pct(cap := [x for r in recorders if r.captioned for x in r.lags()[0]], 50),
                            "p95": pct(cap, 95)},
        "lag_s": {"n": len(lags), "p50": pct(lags, 50), "p95": pct(lags, 95), "max": max(lags) if lags else None},
        "chunks_without_segment": unresolved,
        "ack_ms": {"p50": pct(ack_ms, 50), "p95": pct(ack_ms, 95), "max": max(ack_ms) if ack_ms else None},
        "nacks": nacks, "backpressure_events": backpressure, "slow_down_events": sum(r.slow_down for r in recorders),
        "errors": errors[:20], "error_count": len(errors),
        "server_cpu_s": cpu_s, "server_cpu_avg_cores": cpu_s / wall,
        "cpu_avg_cores_by_process": dict(zip(["serve"] + [f"worker-{i}" for i in range(len(cpu_each) - 1)],
                                             (round(c / wall, 3) for c in cpu_each))),
        "server_cpu_max_5s_cores": max(cpu_samples) if cpu_samples else None,
        "loadavg_before": load_before, "loadavg_after": load_after,
    }
    if (errors or unresolved) and server_tail:
        summary["server_log_tail"] = server_tail
    log(json.dumps({k: v for k, v in summary.items() if k != "server_log_tail"}, indent=1))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["wer", "recorders"], required=True)
    p.add_argument("--timeslices", default="1000,5000,15000", help="wer: timeslices in ms, comma-separated")
    p.add_argument("--recorders", type=int, default=15)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--timeslice", type=int, default=1000, help="recorders: ms of audio per chunk (browsers' timeslice)")
    p.add_argument("--captioned", type=int, default=0, help="recorders: how many of them join with live captions")
    p.add_argument("--in-process", action="store_true", help="recorders: server in this process instead of a subprocess")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=0,
                   help="recorders: transcribe in N `scribeai worker` processes (PostgreSQL + Redis) instead of in serve")
    p.add_argument("--worker-concurrency", type=int, default=2, help="MAX_CONCURRENCY of each worker process")
    p.add_argument("--postgres", default=os.environ.get("SCRIBEAI_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    args.timeslices = [int(t) for t in args.timeslices.split(",") if t]
    result = asyncio.run(mode_wer(args) if args.mode == "wer" else mode_recorders(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
