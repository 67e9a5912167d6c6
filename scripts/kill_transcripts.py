"""Kill loop for transcription: recorders stream real speech at 1 s blobs while `scribeai serve` is SIGKILLed
every few seconds; afterwards every session's transcript must complete by itself.

    .venv/bin/python scripts/kill_transcripts.py --database sqlite --recorders 4 --minutes 5
    .venv/bin/python scripts/kill_transcripts.py --database postgres --recorders 4 --minutes 5 --baseline

N recorders each stream their own minutes of speech (espeak-ng sentences in another order, WebM/Opus cut into
1 s byte ranges like Chromium's blobs) in real time to one `scribeai serve` process (bundled whisper,
MAX_CONCURRENCY=1). Every 3-7 s the server is SIGKILLed and restarted on the same port and data; recorders
reconnect and resend what has no ack. `scribeai retention run` runs every 30 s beside it. When the minutes are
over the server is restarted a last time, half the recorders say stopSession and half just go quiet (the idle
flush must finish them), and the script waits for every chunk to be `done`, reporting the time from the last
restart to completion, chunks pending or failed, overlapping segments and word recall per session. With
--baseline the same recorders run once more without kills, for recall to compare with.
The JSON summary goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pg_scratch import create_database, drop_database  # noqa: E402
from bench_stream import SENTENCES, make_speech  # noqa: E402

from tests.conftest import token_for  # noqa: E402
from tests.speech import cut, encode_webm, word_recall  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
USER = "kill-loop"
LEASE_S = 30
IDLE_FLUSH_S = 10


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


@dataclass
class Recorder:
    """One session in real time: chunk k may go once k seconds have passed; what has no ack goes again."""

    server: ServerProcess
    session_id: str
    blobs: list[bytes]
    reference: str
    stops: bool
    epoch_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    acked: set[int] = field(default_factory=set)
    reconnects: int = 0
    refused: int = 0

    async def run(self, started: float) -> None:
        while len(self.acked) < len(self.blobs):
            client = socketio.AsyncClient(reconnection=False)
            try:
                await client.connect(self.server.url, auth={"token": token_for(USER)}, transports=["websocket"],
                                     wait_timeout=5)
            except socketio.exceptions.ConnectionError:
                await asyncio.sleep(0.3)
                continue
            self.reconnects += 1
            try:
                await self._send(client, started)
                if self.stops and len(self.acked) == len(self.blobs):
                    await client.call("stopSession", {"sessionId": self.session_id}, timeout=10)
            except (socketio.exceptions.SocketIOError, TimeoutError, ConnectionError):
                pass
            finally:
                if client.connected:
                    await client.disconnect()

    async def _send(self, client: socketio.AsyncClient, started: float) -> None:
        for seq, data in enumerate(self.blobs):
            if seq in self.acked:
                continue
            due = started + seq - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            ack = await client.call("audio-chunk", {
                "sessionId": self.session_id, "sequence": seq, "timestamp": self.epoch_ms + seq * 1000,
                "mimeType": "audio/webm;codecs=opus", "audio": data}, timeout=10)
            error = ack.get("error") if isinstance(ack, dict) else {"code": "no ack"}
            if error:
                self.refused += 1
                await asyncio.sleep(float(error.get("retryAfterMs", 1000)) / 1000)
                return  # reconnect and go on from the first chunk without an ack
            self.acked.add(seq)


def chunk_states(server: ServerProcess, database_url: str | None) -> dict[str, int]:
    query = "SELECT status, count(*) FROM chunk GROUP BY status"
    if database_url is None:
        with sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True, timeout=30) as db:
            return {s: int(n) for s, n in db.execute(query).fetchall()}
    return {s: int(n) for s, n in asyncio.run(_pg_rows(database_url, query))}


def session_segments(server: ServerProcess, database_url: str | None, session_id: str) -> list[tuple[int, int, str]]:
    if database_url is None:
        with sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute("SELECT start_ms, end_ms, text FROM segment WHERE session_id = ? ORDER BY start_ms",
                              (session_id,)).fetchall()
    else:
        rows = asyncio.run(_pg_rows(database_url, "SELECT start_ms, end_ms, text FROM segment WHERE session_id = "
                                    f"'{session_id}' ORDER BY start_ms"))
    return [(int(a), int(b), str(t)) for a, b, t in rows]


async def _pg_rows(url: str, query: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def run(args: argparse.Namespace, kills: bool, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workdir.mkdir(parents=True)
    database_url = await create_database(POSTGRES, "killtx") if args.database == "postgres" else None
    server = ServerProcess(workdir)
    server.settings = {"TRANSCRIBER": "whisper", "MAX_CONCURRENCY": "1", "IDLE_FLUSH_S": str(IDLE_FLUSH_S),
                       "TRANSCRIBE_LEASE_S": str(LEASE_S), "MAX_QUEUE_SIZE": "1000", "LOG_LEVEL": "INFO",
                       "NODE_ID": "kill-loop"}
    if database_url:
        server.settings["DATABASE_URL"] = database_url
    env = {**server.env()}
    recorders = []
    for index in range(args.recorders):
        order = list(range(len(SENTENCES)))
        rng.shuffle(order)
        sentences = max(1, round(args.minutes * 60 / 6.5))  # a sentence and its pause take ~6.5 s
        pcm, reference, _ = make_speech([order[i % len(order)] for i in range(sentences)], workdir, rng)
        blobs = cut(encode_webm(pcm), len(pcm) / 16000, 1000)
        recorders.append(Recorder(server, f"{'kill' if kills else 'base'}-{index}", blobs, reference, stops=index % 2 == 0))
    log(f"{'kill loop' if kills else 'baseline'}: {args.recorders} recorders x {args.minutes} min, {args.database}")
    await server.start()
    started = time.monotonic()
    tasks = [asyncio.create_task(r.run(started)) for r in recorders]
    retention = 0
    next_retention = started + 30
    count = 0
    minutes = max(len(r.blobs) for r in recorders) / 60
    while time.monotonic() - started < minutes * 60:
        await asyncio.sleep(rng.uniform(3, 7) if kills else 1)
        if kills and time.monotonic() - started < minutes * 60:
            await server.kill()
            count += 1
            await server.start()
        if time.monotonic() >= next_retention:
            subprocess.run([sys.executable, "-m", "scribeai", "retention", "run"], env=env, cwd=workdir,
                           capture_output=True, timeout=120)
            retention += 1
            next_retention += 30
    if kills:
        await server.kill()
        count += 1
        await server.start()
    last_restart = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    total = sum(len(r.blobs) for r in recorders)
    waited = 0.0
    states: dict[str, int] = {}
    while time.monotonic() - last_restart < LEASE_S + IDLE_FLUSH_S + 600:
        states = await asyncio.to_thread(chunk_states, server, database_url)
        if states.get("done", 0) + states.get("failed", 0) >= total and not states.get("pending") \
                and not states.get("transcribing"):
            break
        await asyncio.sleep(0.5)
    waited = time.monotonic() - last_restart
    sessions = []
    for r in recorders:
        found = await asyncio.to_thread(session_segments, server, database_url, r.session_id)
        overlaps = sum(1 for a, b in zip(found, found[1:]) if b[0] < a[1])
        sessions.append({"session": r.session_id, "chunks": len(r.blobs), "segments": len(found), "overlaps": overlaps,
                         "recall": round(word_recall(r.reference, " ".join(t for _, _, t in found)), 4),
                         "stopped": r.stops, "reconnects": r.reconnects, "refused": r.refused})
    # a month later, retention archives every session: none is held back as "not transcribed yet"
    month_later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 31 * 86400))
    archived = subprocess.run([sys.executable, "-m", "scribeai", "retention", "run", "--now", month_later, "--json"],
                              env=env, cwd=workdir, capture_output=True, text=True, timeout=600)
    retention_report = json.loads(archived.stdout) if archived.returncode == 0 else {"error": archived.stderr[-2000:]}
    log_text = server.log_path.read_text(errors="replace")
    server.kill_all()
    if database_url:
        await drop_database(POSTGRES, database_url)
    return {"kills": count, "retention_runs": retention, "chunks": total, "states": states,
            "complete_after_last_restart_s": round(waited, 1), "sessions": sessions,
            "resumed_from_checkpoint": log_text.count("(from its checkpoint)"),
            "read_from_header": log_text.count("(from its header)"),
            "tracebacks": log_text.count("Traceback"),
            "retention_a_month_later": {key: retention_report.get(key) for key in ("archived", "waiting", "failed", "error")}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--recorders", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline", action="store_true", help="also run the same recorders without kills")
    args = parser.parse_args()
    report: dict[str, Any] = {"database": args.database, "recorders": args.recorders, "minutes": args.minutes}
    with tempfile.TemporaryDirectory(prefix="kill-transcripts-") as tmp:
        report["killed"] = await run(args, True, Path(tmp) / "killed")
        if args.baseline:
            report["baseline"] = await run(args, False, Path(tmp) / "baseline")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
