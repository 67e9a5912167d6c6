#!/usr/bin/env python3
"""Time a session summary of a long generated meeting (tests/meetings.py): the extractive one (sumy LexRank,
keywords, action items), cold (first in the process, imports included) and warm; with --fake-endpoint-delay,
a model's summary through a local fake OpenAI-compatible chat endpoint, against the endpoint's own time.

    .venv/bin/python scripts/bench_summary.py --words 10000 --repeat 5
    .venv/bin/python scripts/bench_summary.py --words 10000 --fake-endpoint-delay 0.5 --server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.meetings import MEETINGS, meeting  # noqa: E402


def extractive_runs(words: int, name: str, repeat: int) -> dict[str, object]:
    segments = meeting(name, words)
    wall, cpu = [], []
    for _ in range(repeat + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        from scribeai.summarize import extractive, sentences_of  # the first run pays for importing sumy and NLTK

        digest = extractive(segments)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "words": digest.words, "segments": len(segments), "sentences": len(sentences_of(segments)),
        "coldS": round(wall[0], 3), "warmMedianS": round(statistics.median(wall[1:]), 3), "warmMaxS": round(max(wall[1:]), 3),
        "warmCpuMedianS": round(statistics.median(cpu[1:]), 3), "actionItems": len(digest.action_items),
        "keyPoints": len(digest.key_points), "keywords": digest.keywords,
    }


async def model_run(words: int, name: str, delay_s: float, context_tokens: int) -> dict[str, object]:
    from scribeai.summarize import sentences_of
    from scribeai.summary_llm import ChatSummarizer
    from tests.fake_chat import FakeChatAPI

    fake = FakeChatAPI(delay_s=delay_s)
    url = await fake.start()
    try:
        sentences = sentences_of(meeting(name, words))
        chat = ChatSummarizer(url, "fake", context_tokens=context_tokens)
        t0 = time.perf_counter()
        await chat.summarize(sentences)
        total = time.perf_counter() - t0
    finally:
        await fake.close()
    endpoint = delay_s * chat.requests  # the fake's own time: its delay per request (its answer itself takes ~1 ms)
    return {"requests": chat.requests, "contextTokens": context_tokens, "endpointS": round(endpoint, 3),
            "totalS": round(total, 3), "overheadS": round(total - endpoint, 3)}


async def server_run(words: int, name: str, acks_idle: int, in_thread: bool) -> dict[str, object]:
    """A real server (TRANSCRIBER=none, SQLite): the session's segments stored, POST stop, until GET says ready;
    meanwhile one recorder sends chunks back to back, and their ack latency is compared with an idle server's."""
    import tempfile

    import aiohttp
    import socketio
    from aiohttp.test_utils import TestServer

    from scribeai.app import create_app
    from scribeai.auth import create_token
    from scribeai.models import TranscriptSegment
    from scribeai.services import services_key
    from scribeai.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="bench_summary_"))
    secret = os.urandom(24).hex()
    settings = Settings(host="127.0.0.1", port=0, data_dir=root / "data", storage_dir=root / "chunks", demo="off",
                        archive_storage_path=root / "archives", secret=secret, transcriber="none", retention_schedule="off")
    app = create_app(settings)
    from scribeai.summaries import summaries_key

    app[summaries_key].own_process = not in_thread  # to compare: the CPU work in a thread of the server
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    token = create_token(secret, "bench")
    client = socketio.AsyncSimpleClient()
    audio = os.urandom(16_000)
    seq = 0

    async def ack_ms() -> float:
        nonlocal seq
        t0 = time.perf_counter()
        reply = await client.call("audio-chunk", {"sessionId": "load", "sequence": seq, "timestamp": seq * 1000,
                                                  "mimeType": "audio/webm", "audio": audio}, timeout=30)
        assert "error" not in reply, reply
        seq += 1
        return (time.perf_counter() - t0) * 1000

    def pct(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 1)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            await (await http.post(url + "/api/sessions", json={"id": "bench"})).read()
            async with app[services_key].db.write() as s:
                for i, seg in enumerate(meeting(name, words)):
                    s.add(TranscriptSegment(session_id="bench", seq=i, from_seq=i, chunk_id=f"c{i}", start_ms=seg["startMs"],
                                            end_ms=seg["endMs"], text=seg["text"]))
            await client.connect(url, auth={"token": token}, transports=["websocket"])
            idle = [await ack_ms() for _ in range(acks_idle)]
            t0 = time.perf_counter()
            await (await http.post(url + "/api/sessions/bench/stop")).read()
            during: list[float] = []
            while True:
                during.append(await ack_ms())
                if len(during) % 5 == 0:
                    async with http.get(url + "/api/sessions/bench/summary") as response:
                        if (await response.json())["status"] == "ready":
                            break
            total = time.perf_counter() - t0
    finally:
        await client.disconnect()
        await server.close()
    return {"stopToReadyS": round(total, 3), "acksDuring": len(during),
            "ackIdleMs": {"p50": pct(idle, 0.5), "p99": pct(idle, 0.99)},
            "ackDuringMs": {"p50": pct(during, 0.5), "p99": pct(during, 0.99), "max": round(max(during), 1)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=10_000, help="transcript length in words (default 10000)")
    parser.add_argument("--meeting", choices=sorted(MEETINGS), default="product-launch")
    parser.add_argument("--repeat", type=int, default=5, help="warm runs after the cold one (default 5)")
    parser.add_argument("--fake-endpoint-delay", type=float, default=None, metavar="S",
                        help="also time a model's summary through a fake chat endpoint that takes S seconds a request")
    parser.add_argument("--context-tokens", type=int, default=4096, help="SUMMARY_CONTEXT_TOKENS for the model run")
    parser.add_argument("--server", action="store_true",
                        help="also through a real server: stop to summary ready, and chunk acks meanwhile against idle")
    parser.add_argument("--in-thread", action="store_true",
                        help="with --server: the summary's CPU work in a thread of the server, not its own process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.words < 10 or args.repeat < 1:
        parser.error("--words must be 10 or more and --repeat 1 or more")
    report: dict[str, object] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                                 "extractive": extractive_runs(args.words, args.meeting, args.repeat)}
    if args.fake_endpoint_delay is not None:
        report["model"] = asyncio.run(model_run(args.words, args.meeting, args.fake_endpoint_delay, args.context_tokens))
    if args.server:
        report["server"] = asyncio.run(server_run(args.words, args.meeting, 200, args.in_thread))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    e = report["extractive"]
    assert isinstance(e, dict)
    print(f"extractive, {e['words']} words ({e['sentences']} sentences), {report['cpus']} cores: cold {e['coldS']} s "
          f"(imports included), warm median {e['warmMedianS']} s, max {e['warmMaxS']} s, CPU {e['warmCpuMedianS']} s; "
          f"{e['keyPoints']} key points, {e['actionItems']} action items")
    if "model" in report:
        m = report["model"]
        assert isinstance(m, dict)
        print(f"model ({m['contextTokens']}-token context): {m['requests']} requests, endpoint {m['endpointS']} s, "
              f"total {m['totalS']} s, ours {m['overheadS']} s")
    if "server" in report:
        v = report["server"]
        assert isinstance(v, dict)
        print(f"server ({'thread' if args.in_thread else 'own process'}): stop -> summary ready {v['stopToReadyS']} s; chunk acks meanwhile p50 {v['ackDuringMs']['p50']} ms, "
              f"p99 {v['ackDuringMs']['p99']} ms, max {v['ackDuringMs']['max']} ms ({v['acksDuring']} chunks); idle p50 "
              f"{v['ackIdleMs']['p50']} ms, p99 {v['ackIdleMs']['p99']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
