#!/usr/bin/env python3
"""Time a session summary of a long generated meeting (tests/meetings.py): the extractive one (sumy LexRank,
keywords, action items), cold (first in the process, imports included) and warm; with --fake-endpoint-delay,
a model's summary through a local fake OpenAI-compatible chat endpoint, against the endpoint's own time.

    .venv/bin/python scripts/bench_summary.py --words 10000 --repeat 5
    .venv/bin/python scripts/bench_summary.py --words 10000 --fake-endpoint-delay 0.5
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=10_000, help="transcript length in words (default 10000)")
    parser.add_argument("--meeting", choices=sorted(MEETINGS), default="product-launch")
    parser.add_argument("--repeat", type=int, default=5, help="warm runs after the cold one (default 5)")
    parser.add_argument("--fake-endpoint-delay", type=float, default=None, metavar="S",
                        help="also time a model's summary through a fake chat endpoint that takes S seconds a request")
    parser.add_argument("--context-tokens", type=int, default=4096, help="SUMMARY_CONTEXT_TOKENS for the model run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.words < 10 or args.repeat < 1:
        parser.error("--words must be 10 or more and --repeat 1 or more")
    report: dict[str, object] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                                 "extractive": extractive_runs(args.words, args.meeting, args.repeat)}
    if args.fake_endpoint_delay is not None:
        report["model"] = asyncio.run(model_run(args.words, args.meeting, args.fake_endpoint_delay, args.context_tokens))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
