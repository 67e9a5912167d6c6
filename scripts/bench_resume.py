"""What a restart costs a long session's transcription: resume from the checkpoint vs from the stream's header.

    .venv/bin/python scripts/bench_resume.py --chunks 60
    .venv/bin/python scripts/bench_resume.py --chunks 3600

Two sessions of the same recording (N 1 s WebM/Opus blobs cut like Chromium's: speech in the first and
last minute, quiet noise between) are sent to `scribeai serve` (a process, bundled whisper, SQLite). Once
both have every chunk read and only their tail held for a window, the server is SIGKILLed; session B's
checkpoints are deleted (so it is read again from its header, as before checkpoints existed), the server is
restarted and both sessions are stopped. Reported per session: how many chunks the restart read again
(from the "read on from chunk K" log line) and the seconds from the stop to the session's last chunk `done`.
The JSON summary goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
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

from bench_stream import make_speech  # noqa: E402
from kill_transcripts import log  # noqa: E402

from tests.conftest import token_for  # noqa: E402
from tests.speech import cut, encode_webm  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402

USER = "resume-bench"
SESSIONS = ("resume-a", "resume-b")


def recording(chunks: int, workdir: Path) -> list[bytes]:
    import random

    speech, _, _ = make_speech(list(range(10)), workdir, random.Random(3))
    minute = speech[: 60 * 16000]
    quiet = np.random.default_rng(5).normal(0, 0.002, max(0, chunks - 2 * len(minute) // 16000) * 16000)
    pcm = np.concatenate([minute, quiet.astype(np.float32), minute])[: chunks * 16000]
    return cut(encode_webm(pcm), len(pcm) / 16000, 1000)


def states(server: ServerProcess, session_id: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT status, count(*) FROM chunk WHERE session_id = ? GROUP BY status", (session_id,))
        return {s: int(n) for s, n in rows.fetchall()}


async def send_all(server: ServerProcess, blobs: list[bytes]) -> None:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, auth={"token": token_for(USER)}, transports=["websocket"], wait_timeout=10)
    epoch = int(time.time() * 1000)
    for seq, data in enumerate(blobs):
        for session_id in SESSIONS:
            ack = await client.call("audio-chunk", {"sessionId": session_id, "sequence": seq, "timestamp": epoch + seq * 1000,
                                                    "mimeType": "audio/webm;codecs=opus", "audio": data}, timeout=30)
            assert isinstance(ack, dict) and "error" not in ack, ack
    await client.disconnect()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        workdir = Path(tmp)
        blobs = recording(args.chunks, workdir)
        log(f"{len(blobs)} chunks of {sum(map(len, blobs)) / len(blobs):.0f} bytes")
        server = ServerProcess(workdir)
        server.settings = {"TRANSCRIBER": "whisper", "MAX_CONCURRENCY": "2", "IDLE_FLUSH_S": "600",
                           "MAX_QUEUE_SIZE": "100000", "GLOBAL_QUEUE_LIMIT": "100000", "LOG_LEVEL": "INFO",
                           "NODE_ID": "resume"}
        try:
            await server.start()
            started = time.monotonic()
            await send_all(server, blobs)
            log(f"sent in {time.monotonic() - started:.1f} s; waiting for both tails to be held")
            while not all((s := states(server, sid)).get("pending", 0) == 0 and s.get("transcribing", 0) > 0
                          for sid in SESSIONS):
                await asyncio.sleep(1)
            log(f"read through in {time.monotonic() - started:.1f} s; killing")
            await server.kill()
            with sqlite3.connect(server.data_dir / "scribeai.db") as db:
                db.execute("DELETE FROM stream_checkpoint WHERE session_id = ?", (SESSIONS[1],))
            restarted = time.monotonic()
            await server.start()
            listening = time.monotonic() - restarted
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(server.url, auth={"token": token_for(USER)}, transports=["websocket"], wait_timeout=10)
            stopped = time.monotonic()
            for session_id in SESSIONS:
                await client.call("stopSession", {"sessionId": session_id}, timeout=10)
            done: dict[str, float] = {}
            while len(done) < len(SESSIONS):
                for session_id in SESSIONS:
                    if session_id not in done and set(states(server, session_id)) == {"done"}:
                        done[session_id] = round(time.monotonic() - stopped, 2)
                await asyncio.sleep(0.1)
            await client.disconnect()
            text = server.log_path.read_text().split(f"--- start {server.generation}", 1)[1]
            reads = {sid: [int(k) for k in re.findall(rf"session {sid}: stream read on from chunk (\d+)", text)]
                     for sid in SESSIONS}
            report: dict[str, Any] = {"chunks": len(blobs), "restart_to_listening_s": round(listening, 2)}
            for session_id, how in zip(SESSIONS, ("checkpoint", "header")):
                first = reads[session_id][0] if reads[session_id] else None
                report[how] = {"read_from_chunk": first, "chunks_read_again": None if first is None else len(blobs) - first,
                               "stop_to_done_s": done[session_id]}
            print(json.dumps(report, indent=1))
        finally:
            server.kill_all()


if __name__ == "__main__":
    asyncio.run(main())
