"""Running `node --test` suites from pytest (the JavaScript client's interop tests, the recorder library's tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

import pytest


def tap_counts(tap: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", tap, re.M)}


async def run_node_tests(node: str, files: list[str], cwd: Path, env: dict[str, str], tap_file: Path,
                         timeout_s: float) -> tuple[str, dict[str, int]]:
    """`node --test` on `files`: its spec output and the TAP counts; fails the test on a timeout, a non-zero exit,
    or any test failed, cancelled, skipped or left to do."""
    # An asyncio subprocess: the servers live on this event loop and must keep serving while node runs.
    proc = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=spec", "--test-reporter-destination=stdout",
        "--test-reporter=tap", f"--test-reporter-destination={tap_file}", *files,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    received: list[bytes] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            received.append(data)
        await proc.wait()

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # node --test runs each test file in a child process
        await proc.wait()
        output = b"".join(received).decode(errors="replace")
        pytest.fail(f"node --test did not finish within {timeout_s} s; its output:\n{output}", pytrace=False)
    output = b"".join(received).decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"node --test exited with {proc.returncode}; its output:\n{output}", pytrace=False)
    counts = tap_counts(tap_file.read_text())
    assert counts["fail"] == counts["cancelled"] == counts["skipped"] == counts["todo"] == 0, output
    assert counts["pass"] == counts["tests"], output
    return output, counts
