"""How long a person waits for their words: per-sentence latency of the final segments at 1 s blobs.

    .venv/bin/python scripts/bench_latency.py [--sentences 25] [--timeslice 1000] [--env WINDOW_WAIT_S=2 ...]

One recorder streams espeak-ng speech (the sentences of scripts/bench_stream.py, 0.6-1.5 s pauses) as
WebM/Opus cut into timeslice byte ranges like Chromium's blobs, in real time (blob k is sent when its audio
has ended: k+1 timeslices after the start), to `scribeai serve` (a process, bundled whisper, SQLite, the
server's defaults unless --env says otherwise), joined to its own room. For every sentence: the time from
the end of its audio to the arrival of the first final segment whose span reaches its end (p50, p95, max);
then the WER of all finals against the text, beside the same model on the whole (decoded) recording at once.
The JSON summary goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_stream import SENTENCES, decode_webm, make_speech, whole_file  # noqa: E402
from kill_transcripts import log  # noqa: E402

from tests.conftest import token_for  # noqa: E402
from tests.speech import cut, encode_webm, wer  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)), 2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=25)
    parser.add_argument("--timeslice", type=int, default=1000, help="ms of audio per blob")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--env", nargs="*", default=[], help="server settings, NAME=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = Path(tmp)
        order = list(range(len(SENTENCES)))
        random.Random(args.seed).shuffle(order)
        spans: list[tuple[float, float]] = []
        pcm, reference, _ = make_speech([order[i % len(order)] for i in range(args.sentences)], workdir,
                                        random.Random(args.seed), spans=spans)
        seconds = len(pcm) / 16000
        webm = encode_webm(pcm)
        blobs = cut(webm, seconds, args.timeslice)
        slice_s = args.timeslice / 1000
        log(f"{args.sentences} sentences, {seconds:.1f} s, {len(blobs)} blobs")
        server = ServerProcess(workdir)
        server.settings = {"TRANSCRIBER": "whisper", "LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)}
        finals: list[tuple[float, dict[str, Any]]] = []
        try:
            await server.start()
            client = socketio.AsyncClient(reconnection=False)

            @client.on("transcriptSegment", namespace="/")
            async def on_segment(segment: dict[str, Any]) -> None:
                finals.append((time.monotonic(), segment))

            await client.connect(server.url, auth={"token": token_for("latency")}, transports=["websocket"], wait_timeout=10)
            await client.call("joinSession", {"sessionId": "latency"}, timeout=10)
            epoch = int(time.time() * 1000)
            started = time.monotonic()
            for seq, data in enumerate(blobs):
                await asyncio.sleep(max(0.0, started + (seq + 1) * slice_s - time.monotonic()))
                ack = await client.call("audio-chunk", {"sessionId": "latency", "sequence": seq,
                                                        "timestamp": epoch + seq * args.timeslice,
                                                        "mimeType": "audio/webm;codecs=opus", "audio": data}, timeout=30)
                assert isinstance(ack, dict) and "error" not in ack, ack
            deadline = time.monotonic() + 120  # no stop: the recorder goes quiet, as a person who stops talking
            while time.monotonic() < deadline and not any(s["endMs"] >= spans[-1][1] * 1000 - 300 for _, s in finals):
                await asyncio.sleep(0.2)
            await client.disconnect()
        finally:
            server.kill_all()
        latencies, missed = [], 0
        for _, end in spans:
            arrivals = [at for at, s in finals if s["endMs"] >= end * 1000 - 300 and s["startMs"] < end * 1000]
            if arrivals:
                latencies.append(round(min(arrivals) - (started + end), 2))
            else:
                missed += 1
        text = " ".join(s["text"] for _, s in sorted(finals, key=lambda f: f[1]["startMs"]))
        baseline, _ = whole_file(decode_webm(webm))  # the same Opus audio, transcribed at once
        report = {"sentences": args.sentences, "audio_s": round(seconds, 1), "timeslice_ms": args.timeslice,
                  "settings": server.settings, "segments": len(finals), "sentences_without_final": missed,
                  "final_latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                      "max": max(latencies)} if latencies else None,
                  "wer_finals": round(wer(reference, text), 4), "wer_whole_file": round(wer(reference, baseline), 4),
                  "latencies": latencies, "finals": text, "whole_file": baseline}
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
