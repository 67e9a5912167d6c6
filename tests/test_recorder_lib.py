"""The browser recorder library (clients/js, `node --test`): its pure parts, and its socket part against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ServerFactory, token_for
from tests.fake_openai import FakeTranscriptionAPI

LIB_DIR = Path(__file__).parent.parent / "clients" / "js"
CLIENT_VERSION = "4.8.4"  # pinned in clients/js/package.json
MIN_NODE_MAJOR = 20
MIN_TESTS = 30  # a guard against a run that silently collects nothing
NODE_TIMEOUT_S = 120
SLOW_API_DELAY_S = 0.5  # the slow server's transcription: its queue fills, so it answers buffering and overloaded
SLOW_MAX_QUEUE_SIZE = 1


def _unavailable(reason: str) -> None:
    """Skip when the toolchain is missing; in CI it is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: Node.js must be installed)", pytrace=False)
    pytest.skip(reason)


async def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js is not installed (no `node` on PATH): the recorder library's tests need it")
        raise AssertionError("unreachable")
    proc = await asyncio.create_subprocess_exec(node, "--version", stdout=asyncio.subprocess.PIPE)
    version = (await proc.communicate())[0].decode().strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        _unavailable(f"Node.js >= {MIN_NODE_MAJOR} is needed for `node --test`, found {version}")
    return node


def _check_node_modules() -> None:
    modules = LIB_DIR / "node_modules"
    for package in ("socket.io-client", "fake-indexeddb"):
        if not (modules / package / "package.json").exists():
            pytest.fail(f"{modules / package} is missing: run `npm ci --prefix clients/js` (or `make js-deps`)", pytrace=False)
    installed = json.loads((modules / "socket.io-client" / "package.json").read_text())["version"]
    if installed != CLIENT_VERSION:
        pytest.fail(f"socket.io-client {installed} is installed, clients/js pins {CLIENT_VERSION}: run `npm ci --prefix clients/js`",
                    pytrace=False)


def _tap_counts(tap: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", tap, re.M)}


async def _run_node(node: str, env: dict[str, str], tap_file: Path) -> tuple[str, dict[str, int]]:
    """`node --test` in clients/js: its spec output and TAP counts; fails the test on a timeout or a failure."""
    files = sorted(str(p.relative_to(LIB_DIR)) for p in (LIB_DIR / "test").glob("*.test.mjs"))
    assert files, f"no test/*.test.mjs in {LIB_DIR}"
    # An asyncio subprocess: the servers live on this event loop and must keep serving while node runs.
    proc = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=spec", "--test-reporter-destination=stdout",
        "--test-reporter=tap", f"--test-reporter-destination={tap_file}", *files,
        cwd=LIB_DIR, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    received: list[bytes] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            received.append(data)
        await proc.wait()

    try:
        await asyncio.wait_for(collect(), NODE_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # node --test runs each test file in a child process
        await proc.wait()
        output = b"".join(received).decode(errors="replace")
        pytest.fail(f"node --test did not finish within {NODE_TIMEOUT_S} s; its output:\n{output}", pytrace=False)
    output = b"".join(received).decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"node --test exited with {proc.returncode}; its output:\n{output}", pytrace=False)
    counts = _tap_counts(tap_file.read_text())
    assert counts["fail"] == counts["cancelled"] == counts["skipped"] == counts["todo"] == 0, output
    assert counts["pass"] == counts["tests"], output
    return output, counts


@pytest.mark.timeout(NODE_TIMEOUT_S + 30)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_recorder_library(start_server: ServerFactory, tmp_path: Path) -> None:
    """Unit tests (outbox, resend set, credits, overload, segments) and the Recorder against real servers."""
    node = await _node()
    _check_node_modules()
    api = FakeTranscriptionAPI(delay_s=SLOW_API_DELAY_S)
    try:
        api_url = await api.start()
        main = await start_server()
        slow = await start_server(transcriber="openai", openai_base_url=api_url, openai_api_key="test-key",
                                  max_concurrency=1, max_queue_size=SLOW_MAX_QUEUE_SIZE,
                                  storage_dir=tmp_path / "slow-chunks", data_dir=tmp_path / "slow-data")
        env = {**os.environ, "NO_COLOR": "1",
               "SCRIBEAI_RECORDER_URL": main.url,
               "SCRIBEAI_RECORDER_SLOW_URL": slow.url,
               "SCRIBEAI_RECORDER_TOKEN": token_for("alice")}
        env.pop("NODE_OPTIONS", None)
        output, counts = await _run_node(node, env, tmp_path / "recorder-lib.tap")
    finally:
        await api.close()
    assert counts["tests"] >= MIN_TESTS, output
    for server in (main, slow):
        assert {k: v for k, v in server.services.realtime.counters.items() if k.endswith(":internal")} == {}
    for line in re.findall(r"^\s*ℹ backpressure.*$", output, re.M):
        print(line.strip())
    print(f"@scribeai/recorder: {counts['pass']} JS tests passed")
