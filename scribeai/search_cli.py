"""`scribeai search QUERY --user USER`: a user's transcript segments and summaries that match, as GET /api/search
finds them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scribeai.settings import Settings


def register(sub: Any) -> None:
    search = sub.add_parser("search", help="search a user's transcripts and summaries (words, \"a phrase\", prefix*, a OR b)")
    search.add_argument("query", help="what to search for, as the q of GET /api/search")
    search.add_argument("--user", required=True, help="whose transcripts (the token's user id)")
    search.add_argument("--limit", type=int, default=20, help="at most this many results (1 to 100, default 20)")
    search.add_argument("--from", dest="since", default=None, help="only sessions created on or after this date (2026-12-07)")
    search.add_argument("--to", dest="until", default=None, help="only sessions created on or before this date")
    search.add_argument("--json", action="store_true", help="print the page as GET /api/search answers it")
    search.set_defaults(func=_search, overrides=())


def _search(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from scribeai import search
    from scribeai.cli import UsageError
    from scribeai.db import Database
    from scribeai.errors import InvalidInput

    if not 1 <= args.limit <= search.MAX_LIMIT:
        raise UsageError(f"search --limit {args.limit}: expected 1 to {search.MAX_LIMIT}")
    try:
        query = search.parse_query(args.query, "the query")
        since = search.parse_day(args.since, "--from", end=False)
        until = search.parse_day(args.until, "--to", end=True)
    except InvalidInput as exc:
        raise UsageError(f"search: {exc.message}") from exc

    async def run() -> search.SearchPage:
        db = Database(settings.effective_database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
        try:
            await db.create_all()
            return await search.search(db, args.user, query, limit=args.limit, since=since, until=until)
        finally:
            await db.dispose()

    page = asyncio.run(run())
    if args.json:
        print(json.dumps(page.wire(), indent=2))
        return 0
    for result in page.results:
        where = _KINDS.get(result["kind"], "")
        print(f"{result['sessionId']}  {_clock(result['startMs'])}  {result['title'] or '(untitled)'}: {where}{_plain(result['snippet'])}")
    if not page.results:
        print(f"no matches for {args.query!r} in {args.user}'s transcripts and summaries", file=sys.stderr)
    return 0


_KINDS = {"summary": "(summary) ", "keyPoint": "(key point) ", "actionItem": "(action item) "}


def _clock(ms: int | None) -> str:
    from scribeai.transcripts import clock

    return "--:--:--" if ms is None else clock(ms)


def _plain(snippet: str) -> str:
    """The HTML-safe snippet for a terminal: matches in [brackets], entities back to characters."""
    import html

    return html.unescape(snippet.replace("<mark>", "[").replace("</mark>", "]"))
