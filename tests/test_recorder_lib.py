"""The browser recorder library (clients/js, `node --test`): its pure parts, and its socket part against real servers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, token_for
from tests.fake_openai import FakeTranscriptionAPI
from tests.node_tests import find_node, run_node_tests

LIB_DIR = Path(__file__).parent.parent / "clients" / "js"
CLIENT_VERSION = "4.8.4"  # pinned in clients/js/package.json
MIN_TESTS = 30  # a guard against a run that silently collects nothing
NODE_TIMEOUT_S = 120
SLOW_API_DELAY_S = 0.5  # the slow server's transcription: its queue fills, so it answers buffering and overloaded
SLOW_MAX_QUEUE_SIZE = 1
SMALL_MAX_CHUNK_BYTES = 64 * 1024  # the small server: chunks over it answered too_large, over ~1.1 MiB a closed connection


async def _node() -> str:
    return await find_node("the recorder library's tests")


def _check_node_modules() -> None:
    modules = LIB_DIR / "node_modules"
    for package in ("socket.io-client", "fake-indexeddb"):
        if not (modules / package / "package.json").exists():
            pytest.fail(f"{modules / package} is missing: run `npm ci --prefix clients/js` (or `make js-deps`)", pytrace=False)
    installed = json.loads((modules / "socket.io-client" / "package.json").read_text())["version"]
    if installed != CLIENT_VERSION:
        pytest.fail(f"socket.io-client {installed} is installed, clients/js pins {CLIENT_VERSION}: run `npm ci --prefix clients/js`",
                    pytrace=False)


def _test_files() -> list[str]:
    files = sorted(str(p.relative_to(LIB_DIR)) for p in (LIB_DIR / "test").glob("*.test.mjs"))
    assert files, f"no test/*.test.mjs in {LIB_DIR}"
    return files


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
        small = await start_server(max_chunk_bytes=SMALL_MAX_CHUNK_BYTES, storage_dir=tmp_path / "small-chunks",
                                   data_dir=tmp_path / "small-data")
        env = {**os.environ, "NO_COLOR": "1",
               "SCRIBEAI_RECORDER_URL": main.url,
               "SCRIBEAI_RECORDER_SLOW_URL": slow.url,
               "SCRIBEAI_RECORDER_SMALL_URL": small.url,
               "SCRIBEAI_RECORDER_SMALL_MAX_CHUNK_BYTES": str(small.settings.max_chunk_bytes),
               "SCRIBEAI_RECORDER_SMALL_MESSAGE_LIMIT": str(small.settings.engineio_max_message_bytes),
               "SCRIBEAI_RECORDER_TOKEN": token_for("alice")}
        env.pop("NODE_OPTIONS", None)
        output, counts = await run_node_tests(node, _test_files(), LIB_DIR, env, tmp_path / "recorder-lib.tap", NODE_TIMEOUT_S)
    finally:
        await api.close()
    assert counts["tests"] >= MIN_TESTS, output
    for server in (main, slow, small):
        assert {k: v for k, v in server.services.realtime.counters.items() if k.endswith(":internal")} == {}
    # the server closed a connection over a message too large once per transport (the recorder that missed the
    # handshake), never over a chunk the recorder knew to be over the limit, and never over a resend
    assert small.services.realtime.counters.get("protocol-error:too_large") == 2
    for line in re.findall(r"^\s*ℹ backpressure.*$", output, re.M):
        print(line.strip())
    print(f"@scribeai/recorder: {counts['pass']} JS tests passed")
