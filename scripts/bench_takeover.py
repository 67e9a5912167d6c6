"""Takeover after a node dies: two `scribeai serve` processes with different NODE_IDs share one database; the one
holding a session's stream is SIGKILLed mid-session and the survivor must take the stream over and finish it.

    .venv/bin/python scripts/bench_takeover.py --database sqlite --runs 5
    .venv/bin/python scripts/bench_takeover.py --database postgres --runs 5

Per run: a fresh data directory (and PostgreSQL database), both nodes started (bundled whisper, MAX_CONCURRENCY=1,
TRANSCRIBE_LEASE_S left at 120 s, TRANSCRIBE_TAKEOVER_S as given), a recorder sends ~40 s of speech as 1 s
WebM/Opus blobs to node-a as fast as they are acked; once a node holds the stream with a segment stored and chunks
still to do, that node is SIGKILLed. Reported: the time from the kill to the survivor's claim (the database polled
every 20 ms) and to every chunk `done`, and how long the dead node's heartbeat and lease still had to run at the
kill. JSON to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pg_scratch import create_database, drop_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from scribeai.db import Database  # noqa: E402
from tests.speech import MEETING, spoken_blobs  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402
from tests.test_recovery_kills import send  # noqa: E402

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SESSION = "meeting"


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def aware(when: Any) -> datetime:
    when = datetime.fromisoformat(when) if isinstance(when, str) else when
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


async def one(db: Database, query: str) -> Any:
    async with db.read() as s:
        return (await s.execute(text(query), {"s": SESSION})).first()


async def run(args: argparse.Namespace, blobs: list[bytes], workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    database_url = await create_database(POSTGRES, "takeover") if args.database == "postgres" else None
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'data' / 'scribeai.db'}"
    nodes: dict[str, ServerProcess] = {}
    for name in ("node-a", "node-b"):
        node = ServerProcess(workdir)
        node.log_path = workdir / f"{name}.log"
        node.settings = {"TRANSCRIBER": "whisper", "MAX_CONCURRENCY": "1", "IDLE_FLUSH_S": "3", "MAX_QUEUE_SIZE": "500",
                         "LOG_LEVEL": "INFO", "NODE_ID": name, "TRANSCRIBE_TAKEOVER_S": str(args.takeover_s)}
        if database_url:
            node.settings["DATABASE_URL"] = database_url
        nodes[name] = node
    db = Database(url)
    try:
        for node in nodes.values():
            await node.start()
        await send(nodes["node-a"], blobs, range(len(blobs)))
        while True:  # a node holds the stream, with a window stored and chunks still to do
            claim = await one(db, "SELECT claimed_by, lease_until FROM transcript_stream WHERE session_id = :s")
            work = await one(db, "SELECT (SELECT count(*) FROM segment WHERE session_id = :s), (SELECT count(*) FROM "
                                 "chunk WHERE session_id = :s AND status != 'done')")
            if claim is not None and claim[0] in nodes and work[0] > 0 and work[1] > 0:
                break
            await asyncio.sleep(0.02)
        holder, lease_until = claim
        alive_until = (await one(db, f"SELECT alive_until FROM transcriber_node WHERE node_id = '{holder}'"))[0]
        survivor = next(name for name in nodes if name != holder)
        await nodes[holder].kill()
        killed, killed_at = time.monotonic(), datetime.now(timezone.utc)
        log(f"killed {holder} holding the stream ({work[1]} chunks to do)")
        claimed = done = None
        while done is None:
            now = time.monotonic()
            if claimed is None:
                row = await one(db, "SELECT claimed_by FROM transcript_stream WHERE session_id = :s")
                if row is not None and row[0] == survivor:
                    claimed = now - killed
            left = (await one(db, "SELECT count(*) FROM chunk WHERE session_id = :s AND status != 'done'"))[0]
            if left == 0:
                done = now - killed
                claimed = claimed if claimed is not None else done  # claimed and released between two polls
            if now - killed > 600:
                raise RuntimeError(f"not finished 600 s after the kill\n{nodes[survivor].log()}")
            await asyncio.sleep(0.02)
        return {"killed": holder, "kill_to_claim_s": round(claimed, 2), "kill_to_done_s": round(done, 2),
                "heartbeat_left_at_kill_s": round((aware(alive_until) - killed_at).total_seconds(), 2),
                "lease_left_at_kill_s": round((aware(lease_until) - killed_at).total_seconds(), 2)}
    finally:
        await db.dispose()
        for node in nodes.values():
            node.kill_all()
        if database_url:
            await drop_database(POSTGRES, database_url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--takeover-s", type=float, default=20.0, help="TRANSCRIBE_TAKEOVER_S of both nodes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        blobs = spoken_blobs([MEETING[i] for i in (0, 1, 2, 6, 7, 9)], Path(tmp) / "speech")
        runs = []
        for index in range(args.runs):
            runs.append(await run(args, blobs, Path(tmp) / f"run-{index}"))
            log(f"run {index + 1}: {runs[-1]}")
    summary = {key: {"min": min(r[key] for r in runs), "median": statistics.median(r[key] for r in runs),
                     "max": max(r[key] for r in runs)} for key in ("kill_to_claim_s", "kill_to_done_s")}
    print(json.dumps({"database": args.database, "takeover_s": args.takeover_s, "blobs": len(blobs), "runs": runs,
                      **summary}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
