"""`scribeai stress`: the long-session stress client (scribeai/stress.py), with the options of scripts/stress.py."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from scribeai import stress
from scribeai.settings import Settings


def register(subparsers: Any) -> None:
    """Add `scribeai stress` to the `scribeai` command line."""
    parser = subparsers.add_parser("stress", help="long-session stress test against a running server (perf report)",
                                   description=stress.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stress.add_arguments(parser)
    parser.set_defaults(func=_run, overrides=())


def _run(args: argparse.Namespace, settings: Settings) -> int:
    options = stress.options_from_args(args)
    if not options.token and not options.secret:
        # Like `scribeai token create`: on the server's machine, use the secret it generated into DATA_DIR.
        key = settings.data_dir / "secret.key"
        secret = settings.secret or (key.read_text().strip() if key.is_file() else "")
        if secret:
            options = dataclasses.replace(options, secret=secret)
    return stress.run_cli(options)
