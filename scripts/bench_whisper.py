"""Real-time factor of the default whisper engine on this machine, for 1, 2 and 3 concurrent workers.

    .venv/bin/python scripts/bench_whisper.py [--jobs 6] [--workers 1,2,3] [--clip FILE]

Each configuration builds the engine the way the server does (create_engine("whisper",
workers=N): one shared model, N CTranslate2 replicas, max(1, cores // N) threads each),
warms it up with one transcription, then N asyncio workers transcribe `--jobs` copies of the
clip concurrently. Reported: seconds of audio per wall second and per process-CPU second
(user + system of all threads), and the mean latency of one chunk. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scribeai.monitor import available_cores  # noqa: E402
from scribeai.transcription import media  # noqa: E402
from scribeai.transcription.engines import WhisperEngine, create_engine  # noqa: E402

DEFAULT_CLIP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio" / "speech_long.webm"


async def run(workers: int, jobs: int, audio: bytes, mime: str, threads: int) -> dict[str, float]:
    engine = create_engine("whisper", workers=workers, whisper_threads=threads)
    assert isinstance(engine, WhisperEngine)
    await engine.transcribe(audio, mime)  # loads the model; not measured
    queue: asyncio.Queue[int] = asyncio.Queue()
    for job in range(jobs):
        queue.put_nowait(job)
    latencies: list[float] = []
    audio_ms = 0

    async def worker() -> None:
        nonlocal audio_ms
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            result = await engine.transcribe(audio, mime)
            latencies.append(time.perf_counter() - started)
            audio_ms += result.duration_ms or 0

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(workers)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await engine.close()
    audio_s = audio_ms / 1000
    return {
        "workers": workers,
        "cpu_threads": engine.cpu_threads,
        "jobs": jobs,
        "audio_s": round(audio_s, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "audio_per_wall_s": round(audio_s / wall, 2),
        "audio_per_cpu_s": round(audio_s / cpu, 2),
        "mean_latency_s": round(sum(latencies) / len(latencies), 2),
        "load_1m": round(os.getloadavg()[0], 2),  # other processes on the machine skew the numbers
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="chunks transcribed per configuration")
    parser.add_argument("--workers", default="1,2,3", help="comma-separated worker counts")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="audio file used as every chunk")
    parser.add_argument("--threads", type=int, default=0, help="cpu threads per worker (0: cores // workers)")
    args = parser.parse_args()
    audio = args.clip.read_bytes()
    mime = {"ogg": "audio/ogg", "wav": "audio/wav"}.get(media.detect_container(audio), "audio/webm")
    cores = available_cores()  # what this process is given, as the server counts them
    rows = [asyncio.run(run(int(w), args.jobs, audio, mime, args.threads)) for w in args.workers.split(",")]
    print(f"clip {args.clip.name}: {media.measure_duration_ms(audio)} ms, {cores} cores")
    header = ["workers", "cpu_threads", "jobs", "audio_s", "wall_s", "cpu_s", "audio_per_wall_s", "audio_per_cpu_s",
              "mean_latency_s", "load_1m"]
    print("  ".join(f"{h:>{max(7, len(h))}}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]:>{max(7, len(h))}}" for h in header))
    print(json.dumps({"bench": "whisper", "clip": args.clip.name, "cores": cores, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
