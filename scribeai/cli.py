"""Command line: `scribeai serve`, `scribeai token create`, and the operator commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from scribeai.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]


class JsonFormatter(logging.Formatter):
    """One JSON object a line; extra fields given as `extra={...}` come along."""

    _SKIP = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from scribeai.app import create_app, serve

    setup_logging(settings)

    async def run() -> None:
        await serve(create_app(settings), settings.host, settings.port)

    asyncio.run(run())
    return 0


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    from scribeai.auth import create_token, load_secret

    print(create_token(load_secret(settings.secret, settings.data_dir), args.user, args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribeai", description="ScribeAI recording server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the Socket.IO + REST server")
    serve.add_argument("--host", help="interface (HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (PORT, default 3001)")
    serve.add_argument("--storage-dir", dest="storage_dir", help="chunk directory (STORAGE_DIR)")
    serve.add_argument("--database-url", dest="database_url", help="database URL (DATABASE_URL)")
    serve.add_argument("--transcriber", help="whisper, openai or none (TRANSCRIBER)")
    serve.add_argument("--max-concurrency", dest="max_concurrency", type=int, help="transcription workers (MAX_CONCURRENCY)")
    serve.set_defaults(func=_serve, overrides=("host", "port", "storage_dir", "database_url", "transcriber", "max_concurrency"))

    token = sub.add_parser("token", help="access tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="print a token for a user")
    create.add_argument("--user", required=True, help="user id (the token's sub)")
    create.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default: no expiry)")
    create.set_defaults(func=_token_create, overrides=())

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add their subcommands here (retention, archive, storage, stress, transcripts).
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _load_extra_commands() -> None:
    import importlib

    for module in ("scribeai.retention_cli", "scribeai.transcription.cli", "scribeai.stress_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        _EXTRA_COMMANDS.append(mod.register)


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name, None) for name in args.overrides}
    from pathlib import Path

    if overrides.get("storage_dir"):
        overrides["storage_dir"] = Path(str(overrides["storage_dir"]))
    settings = Settings.from_env(**overrides)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
