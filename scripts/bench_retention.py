"""Retention benchmark: time and peak RSS of `scribeai retention run` archiving seeded sessions.

    .venv/bin/python scripts/bench_retention.py                      # the presets below
    .venv/bin/python scripts/bench_retention.py --sessions 1 --chunks 240 --bytes 240000
    .venv/bin/python scripts/bench_retention.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

Each scenario seeds a fresh SQLite database (or the given PostgreSQL database, emptied first) and
STORAGE_DIR with N stopped, fully transcribed sessions of M chunks of B random bytes (incompressible,
like opus: 240,000 bytes is 15 s at 128 kbit/s) plus one transcript segment per chunk, then runs the
real CLI `python -m scribeai retention run --now <+8 days> --json` as a child process. Time is the
child's wall clock; peak RSS is the child's ru_maxrss (getrusage RUSAGE_CHILDREN, one child per
scenario, each in a fresh bench process). Seeded files were just written, so they are read from the
page cache: this measures the archiver, not the disk. A `--sessions 0` scenario gives the RSS floor
(interpreter + imports) that the others are compared to.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRESETS = [  # (label, sessions, chunks, bytes per chunk)
    ("floor (no sessions)", 0, 0, 0),
    ("1-hour session", 1, 240, 240_000),
    ("15-min session", 1, 60, 240_000),
    ("4-hour session", 1, 960, 240_000),
    ("batch of 100 (5-min sessions)", 100, 20, 240_000),
]


async def seed(database_url: str, storage: Path, sessions: int, chunks: int, size: int, now: datetime) -> None:
    from sqlalchemy import delete

    from scribeai.db import Database
    from scribeai.models import Chunk, RecordingSession, TranscriptSegment

    db = Database(database_url)
    await db.create_all()
    async with db.write() as s:  # a PostgreSQL bench database is emptied first
        for table in (TranscriptSegment, Chunk, RecordingSession):
            await s.execute(delete(table))
    blob = os.urandom(size) if size else b""
    for n in range(sessions):
        sid = f"bench-{n:04d}"
        folder = storage / sid
        folder.mkdir(parents=True, exist_ok=True)
        session = RecordingSession(id=sid, user_id="bench", status="stopped", created_at=now, started_at=now,
                                   stopped_at=now, last_activity_at=now)
        async with db.write() as s:  # its own transaction: the unit of work does not order rows without relationships
            s.add(session)
        rows: list[Any] = []
        for seq in range(chunks):
            data = seq.to_bytes(4, "big") + blob[4:]  # every chunk different, none compressible
            name = f"{sid}_{seq:04d}.webm"
            (folder / name).write_bytes(data)
            chunk = Chunk(session_id=sid, seq=seq, timestamp_ms=seq * 15000.0, size=len(data),
                          sha256=hashlib.sha256(data).hexdigest(), mime_type="audio/webm;codecs=opus",
                          path=f"{sid}/{name}", duration_ms=15000, created_at=now, status="done", transcribed_at=now)
            rows.append(chunk)
            rows.append(TranscriptSegment(session_id=sid, seq=seq, chunk_id=chunk.id, start_ms=seq * 15000,
                                          end_ms=seq * 15000 + 15000, text="words spoken in this chunk " * 8))
        async with db.write() as s:
            s.add_all(rows)
    await db.dispose()


def run_scenario(label: str, sessions: int, chunks: int, size: int, database_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        base = Path(tmp)
        url = database_url or f"sqlite+aiosqlite:///{base / 'data' / 'scribeai.db'}"
        env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(base / "data"), "STORAGE_DIR": str(base / "chunks"),
               "ARCHIVE_STORAGE_PATH": str(base / "archives"), "LOG_LEVEL": "WARNING", "TRANSCRIBER": "none"}
        now = datetime.now(timezone.utc)
        asyncio.run(seed(url, base / "chunks", sessions, chunks, size, now))
        cmd = [sys.executable, "-m", "scribeai", "retention", "run", "--now", (now + timedelta(days=8)).isoformat(), "--json"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise SystemExit(f"{label}: retention run failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        report = json.loads(proc.stdout)
        archives = sorted((base / "archives").glob("*.zip")) if (base / "archives").is_dir() else []
        return {
            "scenario": label, "sessions": sessions, "chunksPerSession": chunks, "bytesPerChunk": size,
            "rawBytes": sessions * chunks * size, "archiveBytes": sum(p.stat().st_size for p in archives),
            "archived": len(report["archived"]), "wallS": round(wall, 2), "runS": report["durationS"],
            "peakRssMiB": round(peak_kib / 1024, 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, help="one scenario: this many sessions (default: the presets)")
    parser.add_argument("--chunks", type=int, default=240, help="chunks per session")
    parser.add_argument("--bytes", type=int, default=240_000, help="bytes per chunk")
    parser.add_argument("--database-url", help="PostgreSQL URL of a scratch database (emptied!); default SQLite in a temp dir")
    parser.add_argument("--scenario", type=int, help=argparse.SUPPRESS)  # internal: run preset N in this process
    args = parser.parse_args()
    if args.scenario is not None or args.sessions is not None:
        spec = PRESETS[args.scenario] if args.scenario is not None else ("custom", args.sessions, args.chunks, args.bytes)
        print(json.dumps(run_scenario(*spec, args.database_url)))
        return 0
    results = []
    for index in range(len(PRESETS)):  # a fresh bench process per scenario: RUSAGE_CHILDREN is a high-water mark
        extra = ["--database-url", args.database_url] if args.database_url else []
        out = subprocess.run([sys.executable, __file__, "--scenario", str(index), *extra], check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'scenario':<32}{'raw MB':>9}{'zip MB':>9}{'wall s':>8}{'run s':>8}{'peak RSS MiB':>14}")
    for r in results:
        print(f"{r['scenario']:<32}{r['rawBytes'] / 1e6:>9.1f}{r['archiveBytes'] / 1e6:>9.1f}{r['wallS']:>8.2f}{r['runS']:>8.2f}{r['peakRssMiB']:>14.1f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
