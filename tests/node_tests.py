"""Running `node --test` suites from pytest (the JavaScript client's interop tests, the recorder library's tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

MIN_NODE_MAJOR = 20


def node_unavailable(reason: str) -> None:
    """Skip when the toolchain is missing; in CI it is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: Node.js must be installed)", pytrace=False)
    pytest.skip(reason)


async def find_node(needed_by: str) -> str:
    """`node` from PATH, at least MIN_NODE_MAJOR (for `node --test`); `needed_by` names the suite in the skip reason."""
    node = shutil.which("node")
    if node is None:
        node_unavailable(f"Node.js is not installed (no `node` on PATH): {needed_by} needs it")
        raise AssertionError("unreachable")
    proc = await asyncio.create_subprocess_exec(node, "--version", stdout=asyncio.subprocess.PIPE)
    version = (await proc.communicate())[0].decode().strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        node_unavailable(f"Node.js >= {MIN_NODE_MAJOR} is needed for `node --test`, found {version}")
    return node


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


async def run_driver(script: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    """A puppeteer driver script (tests/js/*_driver.mjs) as an asyncio subprocess: its last stdout line, parsed.

    Its stderr (the driver's log) is printed; a timeout kills its whole process group (Chromium included)."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("NODE_OPTIONS", None)
    proc = await asyncio.create_subprocess_exec("node", str(script), *args, cwd=script.parent, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helpers are in the driver's group
        await proc.wait()
        pytest.fail(f"{script.name} did not finish within {timeout_s} s", pytrace=False)
    log = stderr.decode(errors="replace")
    print(log)
    if proc.returncode != 0:
        pytest.fail(f"{script.name} exited with {proc.returncode}:\n{log}", pytrace=False)
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result
