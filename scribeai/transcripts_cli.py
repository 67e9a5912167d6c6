"""`scribeai transcripts retry-failed`: put chunks whose transcription failed for good back in the queue."""

from __future__ import annotations

import argparse
from typing import Any

from scribeai.settings import Settings


def register(sub: Any) -> None:
    transcripts = sub.add_parser("transcripts", help="transcription jobs").add_subparsers(dest="transcripts_command", required=True)
    retry = transcripts.add_parser("retry-failed", help="requeue failed transcriptions (a running server picks them up)")
    retry.add_argument("--session", default=None, help="only this session (one that exists)")
    retry.set_defaults(func=_retry_failed, overrides=())


def _retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import socket

    from scribeai.cli import UsageError
    from scribeai.db import Database
    from scribeai.models import RecordingSession
    from scribeai.transcription.queue import StreamQueue

    async def run() -> int:
        db = Database(settings.effective_database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
        try:
            await db.create_all()
            if args.session is not None:
                async with db.read() as s:
                    if await s.get(RecordingSession, args.session) is None:
                        # "requeued 0" would read as "nothing failed there": a mistyped id must not look like that
                        raise UsageError(f"transcripts retry-failed --session {args.session!r}: no such session")
            return await StreamQueue(db, settings.node_id or socket.gethostname()).retry_failed(args.session)
        finally:
            await db.dispose()

    count = asyncio.run(run())
    print(f"requeued {count} failed chunk(s)")
    return 0
