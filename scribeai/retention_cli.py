"""`scribeai retention run`, `scribeai archive verify|restore`, `scribeai storage metrics`.

Exit status: 0 all went well (sessions still waiting for transcription count as well), 1 some session
failed or did not verify, 3 another retention run holds the lock, 2 bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from scribeai.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_BUSY = 0, 1, 3


def parse_now(value: str) -> datetime:
    """ISO-8601; a time without an offset is this machine's local time."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from exc
    return (parsed if parsed.tzinfo else parsed.astimezone()).astimezone(timezone.utc)


def register(sub: Any) -> None:
    retention = sub.add_parser("retention", help="move sessions down the storage tiers").add_subparsers(
        dest="retention_command", required=True)
    run = retention.add_parser("run", help="hot -> warm (verified ZIP) -> cold (transcript only); idempotent")
    run.add_argument("--now", type=parse_now, help="evaluate the policy at this ISO-8601 time instead of now")
    run.add_argument("--dry-run", action="store_true", help="report what would move; change nothing")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(func=_retention_run, overrides=())

    archive = sub.add_parser("archive", help="a session's warm archive").add_subparsers(dest="archive_command", required=True)
    verify = archive.add_parser("verify", help="check a session's archive member by member (and its hot files)")
    verify.add_argument("session", help="session id")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_archive_verify, overrides=())
    restore = archive.add_parser("restore", help="unpack a warm archive back into hot storage")
    restore.add_argument("session", help="session id")
    restore.add_argument("--now", type=parse_now, help="time recorded as the session's last activity (default: now)")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")
    restore.set_defaults(func=_archive_restore, overrides=())

    storage = sub.add_parser("storage", help="storage usage").add_subparsers(dest="storage_command", required=True)
    metrics = storage.add_parser("metrics", help="sessions, chunks and bytes per tier, free disk, the saving")
    metrics.add_argument("--json", action="store_true", help="print the metrics as JSON")
    metrics.set_defaults(func=_storage_metrics, overrides=())


def _run(settings: Settings, body: Callable[[Any], Awaitable[int]]) -> int:
    """Run `body(retention)` on a fresh loop with this process's own Database."""
    import asyncio

    from scribeai.cli import setup_logging
    from scribeai.db import Database
    from scribeai.retention import Retention, RetentionBusy

    setup_logging(settings)

    async def main() -> int:
        db = Database(settings.effective_database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
        try:
            await db.create_all()
            return await body(Retention(db, settings))
        except RetentionBusy as exc:
            print(f"retention: {exc.message}; try again later", file=sys.stderr)
            return EXIT_BUSY
        finally:
            await db.dispose()

    return asyncio.run(main())


def _retention_run(args: argparse.Namespace, settings: Settings) -> int:
    async def body(retention: Any) -> int:
        report = await retention.run(args.now or datetime.now(timezone.utc), dry_run=args.dry_run)
        print(json.dumps(report.wire(), indent=2) if args.json else _run_text(report.wire()))
        return EXIT_OK if report.ok else EXIT_FAILED
    return _run(settings, body)


def _archive_verify(args: argparse.Namespace, settings: Settings) -> int:
    async def body(retention: Any) -> int:
        from scribeai.errors import NotFound

        try:
            report = await retention.verify(args.session)
        except NotFound as exc:
            return _fail(args, args.session, exc)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            archive = report.get("archive")
            print(f"session {report['sessionId']}: {report['tier']}, {'OK' if report['ok'] else 'PROBLEMS'}")
            if archive:
                print(f"  archive {archive['name']}: {archive['members']} chunks verified, compression {archive['compression']}")
            print(f"  hot chunk files verified: {report['hotChunksChecked']}")
            for line in report["problems"]:
                print(f"  problem: {line}")
            for line in report["notes"]:
                print(f"  note: {line}")
        return EXIT_OK if report["ok"] else EXIT_FAILED
    return _run(settings, body)


def _archive_restore(args: argparse.Namespace, settings: Settings) -> int:
    async def body(retention: Any) -> int:
        from scribeai.errors import ScribeError
        from scribeai.retention import RetentionBusy

        try:
            result = await retention.restore(args.session, args.now or datetime.now(timezone.utc))
        except RetentionBusy:
            raise
        except ScribeError as exc:
            return _fail(args, args.session, exc)
        print(json.dumps(result, indent=2) if args.json else
              f"session {result['sessionId']}: {result['restoredChunks']} chunk(s) restored, now {result['tier']}")
        return EXIT_OK
    return _run(settings, body)


def _storage_metrics(args: argparse.Namespace, settings: Settings) -> int:
    async def body(retention: Any) -> int:
        metrics = await retention.metrics(datetime.now(timezone.utc))
        print(json.dumps(metrics, indent=2) if args.json else _metrics_text(metrics))
        return EXIT_OK
    return _run(settings, body)


def _fail(args: argparse.Namespace, session_id: str, exc: Any) -> int:
    if args.json:
        print(json.dumps({"sessionId": session_id, "ok": False, "error": {"code": exc.code, "message": exc.message}}, indent=2))
    else:
        print(f"session {session_id}: {exc.message}", file=sys.stderr)
    return EXIT_FAILED


def _run_text(report: dict[str, Any]) -> str:
    lines = [f"retention run at {report['now']}{' (dry run: nothing changed)' if report['dryRun'] else ''}"]
    for item in report["archived"]:
        size = f", {item['chunks']} chunks, {item['chunkBytes']:,} bytes -> {item['archiveBytes']:,} byte ZIP" if "chunks" in item else ""
        adopted = " (adopted the ZIP an interrupted run left)" if item.get("adopted") else ""
        lines.append(f"  archived  {item['sessionId']}: {item['reason']}{size}{adopted}")
    lines += [f"  cold      {item['sessionId']}: {item['reason']}" for item in report["cold"]]
    lines += [f"  waiting   {item['sessionId']}: {item['reason']}" for item in report["waiting"]]
    lines += [f"  FAILED    {item['sessionId']}: {item['error']}" for item in report["failed"]]
    removed = report["removed"]
    lines.append(f"{len(report['archived'])} archived, {len(report['cold'])} cold, {len(report['waiting'])} waiting, "
                 f"{len(report['failed'])} failed; removed {removed['temporaryArchives']} temporary ZIP(s) and "
                 f"{removed['orphanChunkFiles']} already-archived and {removed['unnamedChunkFiles']} unnamed chunk file(s); "
                 f"{report['durationS']} s")
    return "\n".join(lines)


def _metrics_text(m: dict[str, Any]) -> str:
    lines = [f"{'tier':<6}{'sessions':>10}{'chunks':>10}{'bytes kept':>16}{'chunk bytes':>16}"]
    for tier, t in m["tiers"].items():
        lines.append(f"{tier:<6}{t['sessions']:>10,}{t['chunks']:>10,}{t['bytes']:>16,}{t['chunkBytes']:>16,}")
    oldest = m["oldestHotSession"]
    saving = m["saving"]
    lines += [
        f"archives: {m['archiveBytes']:,} bytes; transcript segments: {m['transcriptSegments']:,}",
        f"oldest hot session: {oldest['sessionId']} (last activity {oldest['lastActivityAt']}, {oldest['ageDays']} days)"
        if oldest else "oldest hot session: none",
        f"free disk: {m['freeDiskBytes']:,} bytes" if "freeDiskBytes" in m else "free disk: none to report (object storage)",
        f"saving against keeping everything hot: {saving['savedBytes']:,} of {saving['allHotBytes']:,} bytes "
        f"({saving['savedRatio']:.1%})",
    ]
    return "\n".join(lines)
