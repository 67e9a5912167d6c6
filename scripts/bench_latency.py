"""How long a person waits for their words: per-sentence latency of live captions and final segments at 1 s blobs.

    .venv/bin/python scripts/bench_latency.py [--sentences 25] [--timeslice 1000] [--no-interim] [--env NAME=VALUE ...]

One recorder streams espeak-ng speech (the sentences of scripts/bench_stream.py, 0.6-1.5 s pauses) as
WebM/Opus cut into timeslice byte ranges like Chromium's blobs, in real time (blob k is sent when its audio
has ended: k+1 timeslices after the start), to `scribeai serve` (a process, bundled whisper, SQLite, the
server's defaults unless --env says otherwise), joined to its own room. For every sentence: the time from
the end of its audio to the arrival of the first final segment whose span reaches its end (p50, p95, max),
and (joined with interim: true) to the first caption or final whose span reaches its end and that holds at least
half of its words; the server's CPU seconds per minute of audio; then the WER of all finals against the text,
beside the same model on the whole (decoded) recording at once.
The JSON summary goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_stream import SENTENCES, decode_webm, make_speech, whole_file  # noqa: E402
from kill_transcripts import log  # noqa: E402

from tests.conftest import token_for  # noqa: E402
from tests.speech import cut, encode_webm, wer, word_recall  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)), 2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=25)
    parser.add_argument("--timeslice", type=int, default=1000, help="ms of audio per blob")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--env", nargs="*", default=[], help="server settings, NAME=VALUE")
    parser.add_argument("--no-interim", action="store_true", help="join without live captions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = Path(tmp)
        order = list(range(len(SENTENCES)))
        random.Random(args.seed).shuffle(order)
        spans: list[tuple[float, float]] = []
        chosen = [order[i % len(order)] for i in range(args.sentences)]
        pcm, reference, _ = make_speech(chosen, workdir,
                                        random.Random(args.seed), spans=spans)
        seconds = len(pcm) / 16000
        webm = encode_webm(pcm)
        blobs = cut(webm, seconds, args.timeslice)
        slice_s = args.timeslice / 1000
        log(f"{args.sentences} sentences, {seconds:.1f} s, {len(blobs)} blobs")
        server = ServerProcess(workdir)
        server.settings = {"TRANSCRIBER": "whisper", "LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)}
        finals: list[tuple[float, dict[str, Any]]] = []
        interims: list[tuple[float, dict[str, Any]]] = []
        cpu_s = 0.0
        captions: dict[str, float] = {}
        try:
            await server.start()
            client = socketio.AsyncClient(reconnection=False)

            @client.on("transcriptSegment", namespace="/")
            async def on_segment(segment: dict[str, Any]) -> None:
                finals.append((time.monotonic(), segment))

            @client.on("transcriptInterim", namespace="/")
            async def on_interim(caption: dict[str, Any]) -> None:
                interims.append((time.monotonic(), caption))

            await client.connect(server.url, auth={"token": token_for("latency")}, transports=["websocket"], wait_timeout=10)
            await client.call("joinSession", {"sessionId": "latency", "interim": not args.no_interim}, timeout=10)
            assert server.proc is not None
            process = psutil.Process(server.proc.pid)
            cpu_before = sum(process.cpu_times()[:2])
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
            cpu_s = sum(process.cpu_times()[:2]) - cpu_before
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
                captions = {m[1]: float(m[2]) for m in re.finditer(r'^scribeai_captions_total\{outcome="(\w+)"\} (\S+)',
                                                                   await response.text(), re.MULTILINE)}
            await client.disconnect()
        finally:
            server.kill_all()
        shown = []
        for sentence, (_, end) in zip(chosen, spans):
            arrivals = [at for at, s in interims + finals if s["endMs"] >= end * 1000 - 300 and s["startMs"] < end * 1000
                        and word_recall(SENTENCES[sentence], s["text"]) >= 0.5]
            shown.append(round(min(arrivals) - (started + end), 2) if arrivals else None)
        seen = [x for x in shown if x is not None]
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
                  "interims": len(interims), "caption_outcomes": captions, "sentences_never_shown": shown.count(None),
                  "shown_latency_s": {"p50": percentile(seen, 50), "p95": percentile(seen, 95), "max": max(seen)}
                  if seen else None,
                  "server_cpu_s_per_audio_min": round(cpu_s / (seconds / 60), 1),
                  "wer_finals": round(wer(reference, text), 4), "wer_whole_file": round(wer(reference, baseline), 4),
                  "latencies": latencies, "shown_latencies": shown, "finals": text, "whole_file": baseline}
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
