"""Command line: `scribeai serve`, `scribeai token create`, and the operator commands.

Only argparse and the settings are imported up front: each subcommand imports what it needs
(the server, the database, PyAV, whisper) when it runs, so `--help` and `token create` start at once.
Ordinary mistakes (a bad setting, a port in use, an unusable model) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from scribeai.errors import StartupCheckFailed
from scribeai.settings import SettingError, Settings

EXIT_USAGE = 2
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
log = logging.getLogger("scribeai")
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


class UsageError(Exception):
    """A mistake of the operator's (not a bug): `main` prints it as one line and exits with 2."""


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from scribeai.app import create_app, serve

    setup_logging(settings)

    async def run() -> None:
        try:
            await serve(create_app(settings), settings.host, settings.port)
        except socket.gaierror as exc:  # a HOST that is a name no resolver knows
            raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} "
                             "(HOST must be an address or a name of this machine)") from exc
        except OSError as exc:
            if exc.errno in _BIND_ERRORS and "bind" in str(exc):  # asyncio's create_server: "...while attempting to bind..."
                raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} "
                                 "(another server running? choose another PORT or --port)") from exc
            raise
        except ValueError as exc:
            if not _raised_by(exc, ("faster_whisper", "huggingface_hub")):
                raise
            # faster-whisper/huggingface_hub refuse a WHISPER_MODEL that is no size name, repo id or directory.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"setting WHISPER_MODEL={settings.whisper_model!r}: {first_line}") from exc

    _run_loop(run(), settings)
    log.info("ScribeAI stopped")
    return 0




def _run_loop(main: Coroutine[Any, Any, None], settings: Settings) -> None:
    """asyncio.run on the EVENT_LOOP setting's loop. uvloop (a C loop with C transports) cut the server's CPU per
    chunk by 13-20 % against the Node.js client (docs/performance.md, run AA)."""
    import asyncio

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if settings.event_loop == "uvloop":
                main.close()
                raise UsageError(f"setting EVENT_LOOP=uvloop: uvloop is not installed ({exc})") from exc
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _raised_by(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of `exc`'s traceback is in one of these packages."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0] in packages


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from scribeai.worker import run_worker

    setup_logging(settings)
    _run_loop(run_worker(settings), settings)
    return 0


def _positive_seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, not {value!r}") from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (a token with ttl {seconds} is expired at once); "
                                         "leave --ttl out for a token that does not expire")
    return seconds


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    """Sign with the server's secret; never make one (a secret made here, in another folder, is one the server lacks)."""
    from scribeai.auth import USER_ID_MAX, create_token, existing_secret, secret_file

    user = args.user
    if not user.strip() or len(user) > USER_ID_MAX or "\x00" in user:
        raise UsageError(f"token create --user {user!r}: expected a user id of 1 to {USER_ID_MAX} characters, not blank")
    path = secret_file(settings.data_dir).resolve()
    try:
        found = existing_secret(settings.secret, settings.data_dir)
    except OSError as exc:
        raise UsageError(f"cannot read the token secret {path}: {exc.strerror or exc}") from exc
    if found is None or not found[0]:
        problem = "is empty" if found is not None else "does not exist"
        raise UsageError(f"no token secret: SCRIBEAI_SECRET is not set and {path} {problem}; start the server once (it "
                         "creates that file), or set SCRIBEAI_SECRET, or DATA_DIR to the server's data directory")
    secret, source = found
    print(f"scribeai: signed with {'the secret in ' if source != 'SCRIBEAI_SECRET' else ''}{source}", file=sys.stderr)
    print(create_token(secret, user, args.ttl, "admin" if args.admin else None))
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

    worker = sub.add_parser("worker", help="transcribe (and run retention) without serving; needs the shared database, "
                                          "STORAGE_DIR and REDIS_URL")
    worker.add_argument("--max-concurrency", dest="max_concurrency", type=int, help="transcription workers (MAX_CONCURRENCY)")
    worker.add_argument("--transcriber", help="whisper or openai (TRANSCRIBER)")
    worker.set_defaults(func=_worker, overrides=("max_concurrency", "transcriber"))

    token = sub.add_parser("token", help="access tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="print a token for a user, signed with the server's secret (SCRIBEAI_SECRET, or "
                                             "DATA_DIR/secret.key, which the server makes on its first start)")
    create.add_argument("--user", required=True, help="user id (the token's sub)")
    create.add_argument("--ttl", type=_positive_seconds, default=None, help="lifetime in seconds, more than 0 (default: no expiry)")
    create.add_argument("--admin", action="store_true",
                        help="a role admin token: sees the whole server's stats and storage figures, not only the user's own")
    create.set_defaults(func=_token_create, overrides=())

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add their subcommands here (retention, archive, storage, stress, transcripts).
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _load_extra_commands(running: str | None = None) -> None:
    """Register the other modules' subcommands; with `running` given, a module's `register_listing`
    (a name in --help, no heavy imports) stands in for its full `register` unless it is that command."""
    import importlib

    for command, module in (("retention", "scribeai.retention_cli"), ("transcripts", "scribeai.transcripts_cli"),
                            ("stress", "scribeai.stress_cli"), ("search", "scribeai.search_cli"),
                            ("summary", "scribeai.summary_cli")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        listing = getattr(mod, "register_listing", None)
        _EXTRA_COMMANDS.append(listing if listing and running is not None and running != command else mod.register)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the settings, run the subcommand; its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _load_extra_commands(running=next((arg for arg in argv if not arg.startswith("-")), ""))
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name, None) for name in args.overrides}
    from pathlib import Path

    if overrides.get("storage_dir"):
        overrides["storage_dir"] = Path(str(overrides["storage_dir"]))
    try:
        settings = Settings.from_env(**overrides)
        return int(args.func(args, settings))
    except (SettingError, UsageError) as exc:
        print(f"scribeai: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupCheckFailed as exc:  # the token secret, the database, Redis: raised before the server's own check prints it
        starting = "not starting: " if args.command in ("serve", "worker") else ""
        print(f"scribeai: {starting}{exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
