"""Ack latency while whisper is saturated versus with no transcription backlog, on one server.

Starts `scribeai serve` (TRANSCRIBER=whisper) in a temporary directory, then:
  idle:      R recorders send C real speech chunks each (window 1) with an empty queue;
  saturated: B long speech chunks are queued first (every worker busy for the whole phase),
             then the same recorders send the same traffic.
Prints ack latency p50/p95/p99/max per phase and the ratio, and one JSON line.

    .venv/bin/python scripts/bench_ack_under_load.py --recorders 4 --chunks 30 --backlog 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
sys.path.insert(0, str(ROOT))

from scribeai.auth import create_token  # noqa: E402

SECRET = "bench-ack-under-load-secret-0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def wait_healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server did not start")


async def backlog_size(url: str, token: str) -> int:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{url}/api/server/stats") as response:
            return int((await response.json())["transcription"]["backlog"])


async def record(url: str, token: str, chunks: int, audio: bytes, interval: float) -> list[float]:
    client = socketio.AsyncClient()
    await client.connect(url, auth={"token": token}, transports=["websocket"])
    session = f"bench-{uuid.uuid4().hex[:10]}"
    latencies = []
    for seq in range(chunks):
        started = time.perf_counter()
        ack = await client.call("audio-chunk", {"sessionId": session, "sequence": seq, "timestamp": time.time() * 1000,
                                                "mimeType": "audio/wav", "audio": audio}, timeout=30)
        if "error" in ack:
            raise SystemExit(f"chunk refused: {ack}")
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(interval)
    await client.disconnect()
    return latencies


async def phase(url: str, token: str, args: argparse.Namespace, audio: bytes) -> dict[str, float]:
    results = await asyncio.gather(*(record(url, token, args.chunks, audio, args.interval) for _ in range(args.recorders)))
    values = [v for r in results for v in r]
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values), "mean": statistics.fmean(values)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorders", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a recorder's chunks")
    parser.add_argument("--backlog", type=int, default=60, help="long chunks queued for the saturated phase")
    parser.add_argument("--workers", type=int, default=3, help="MAX_CONCURRENCY of the server")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    token = create_token(SECRET, "bench", role="admin")  # the backlog in /api/server/stats is the server's
    hello = (FIXTURES / "speech_hello.wav").read_bytes()
    long = (FIXTURES / "speech_long.webm").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATA_DIR": tmp, "STORAGE_DIR": f"{tmp}/chunks", "SCRIBEAI_SECRET": SECRET, "HOST": "127.0.0.1",
               "PORT": str(port), "TRANSCRIBER": "whisper", "MAX_CONCURRENCY": str(args.workers), "LOG_LEVEL": "WARNING",
               "MAX_QUEUE_SIZE": "1000"}
        server = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", env=env)
        try:
            await wait_healthy(url)
            idle = await phase(url, token, args, hello)
            while await backlog_size(url, token) > 0:
                await asyncio.sleep(0.5)
            filler = socketio.AsyncClient()
            await filler.connect(url, auth={"token": token}, transports=["websocket"])
            for seq in range(args.backlog):
                await filler.call("audio-chunk", {"sessionId": "backlog", "sequence": seq, "timestamp": seq * 16000,
                                                  "mimeType": "audio/webm", "audio": long}, timeout=30)
            before = await backlog_size(url, token)
            saturated = await phase(url, token, args, hello)
            after = await backlog_size(url, token)
            await filler.disconnect()
        finally:
            server.terminate()
            await server.wait()
    print(f"{'phase':<10} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
    for name, row in (("idle", idle), ("saturated", saturated)):
        print(f"{name:<10} {row['n']:>4} {row['p50']:>8.1f} {row['p95']:>8.1f} {row['p99']:>8.1f} {row['max']:>8.1f}")
    print(f"backlog during the saturated phase: {before} -> {after} chunks; p99 ratio {saturated['p99'] / idle['p99']:.2f}")
    print(json.dumps({"idle": idle, "saturated": saturated, "backlog_before": before, "backlog_after": after,
                      "p99_ratio": saturated["p99"] / idle["p99"], "args": vars(args)}))


if __name__ == "__main__":
    asyncio.run(main())
