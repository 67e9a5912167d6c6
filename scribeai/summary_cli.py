"""`scribeai summary SESSION [--json]`: a session's summary, read from the database (made here if none is)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from scribeai.settings import Settings


def register(sub: Any) -> None:
    summary = sub.add_parser("summary", help="a session's summary: key sentences, key points, action items, keywords "
                                             "(made now if the session has none yet)")
    summary.add_argument("session", metavar="SESSION", help="the session id")
    summary.add_argument("--json", action="store_true", help="the REST body (GET /api/sessions/{id}/summary) as JSON")
    summary.set_defaults(func=_summary, overrides=())


def _summary(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from scribeai.cli import UsageError
    from scribeai.db import Database
    from scribeai.errors import ScribeError
    from scribeai.models import RecordingSession, SummaryStatus
    from scribeai.protocol import parse_session_id
    from scribeai.summaries import Summaries, render

    try:
        session_id = parse_session_id(args.session, "SESSION")
    except ScribeError as exc:
        raise UsageError(f"summary {args.session!r}: {exc.message}") from exc

    async def run() -> tuple[dict[str, Any], str | None]:
        db = Database(settings.effective_database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
        try:
            await db.create_all()
            async with db.read() as s:
                session = await s.get(RecordingSession, session_id)
            if session is None:
                raise UsageError(f"summary {session_id!r}: no such session")
            summaries = Summaries.from_settings(db, None, settings, own_process=False)  # one summary: no process for it
            body = await summaries.get_stored(session_id)
            if body["status"] != SummaryStatus.READY:
                body = await summaries.make(session_id) or body  # None: a server is making it right now
            return body, session.title
        finally:
            await db.dispose()

    body, title = asyncio.run(run())
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    elif body["status"] == SummaryStatus.PENDING:
        print(f"the summary of {session_id} is being made by a server now: try again in a moment")
    else:
        print(render(body, None, "txt", title), end="")
    return 0
