"""`scribeai stress`: the long-session stress client (scribeai/stress.py), with the options of scripts/stress.py.

scribeai/stress.py imports PyAV, numpy and the Socket.IO client, so it is imported only when `scribeai stress`
is the command: for any other, `register_listing` just names it, and the other commands start at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from scribeai.settings import Settings

HELP = "long-session stress test against a running server (perf report)"
DESCRIPTION = """Long-session stress test of a running ScribeAI server.

    scribeai stress --chunks=120 --fast --userId=test-user          # or: python scripts/stress.py ...
    scribeai stress --chunks=240 --chunk-seconds=15 --sessions=50 --drop-every=40 --plot --out=reports/

Each of --sessions recorders opens its own session and behaves like a good recorder speaking the wire
protocol (docs/protocol.md): it sends real WebM/Opus chunks from a local outbox, pauses on
`canAccept: false` or `credits: 0`, resends after `retryAfterMs` or a reconnect (--drop-every), and at
the end checks that the server holds every chunk and every transcription is done. It samples the
server's RSS, CPU and transcription backlog and writes perf-report-<timestamp>.json (and a PNG with
--plot). Exit status: 0 clean, 1 on any loss or failed check, 2 when the run could not happen.
"""


def register(subparsers: Any) -> None:
    """Add `scribeai stress` with all its options (imports scribeai.stress: PyAV, numpy, Socket.IO)."""
    from scribeai import stress

    parser = subparsers.add_parser("stress", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    stress.add_arguments(parser)
    parser.set_defaults(func=_run, overrides=())


def register_listing(subparsers: Any) -> None:
    """Add `scribeai stress` only as a name in `scribeai --help`: used when another command runs."""
    subparsers.add_parser("stress", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from scribeai import stress

    options = stress.options_from_args(args)
    if not options.token and not options.secret:
        # Like `scribeai token create`: on the server's machine, use the secret it generated into DATA_DIR.
        key = settings.data_dir / "secret.key"
        secret = settings.secret or (key.read_text().strip() if key.is_file() else "")
        if secret:
            options = dataclasses.replace(options, secret=secret)
    return stress.run_cli(options)
