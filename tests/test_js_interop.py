"""The real JavaScript socket.io-client (tests/js, `node --test`) against real servers of this suite."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from scribeai.auth import create_token
from tests.conftest import SECRET, RunningServer, ServerFactory, token_for
from tests.fake_openai import FakeTranscriptionAPI
from tests.node_tests import find_node, run_node_tests

JS_DIR = Path(__file__).parent / "js"
CLIENT_VERSION = "4.8.4"  # pinned in tests/js/package.json
MIN_JS_TESTS = 90  # a guard against a run that silently collects nothing
NODE_TIMEOUT_S = 90
SMALL_MAX_CHUNK_BYTES = 1024 * 1024
TRANSCRIPTION_JS = "transcription.test.mjs"
TRANSCRIPTION_JS_TESTS = 5
TRANSCRIPTION_NODE_TIMEOUT_S = 90
FIXTURES_DIR = Path(__file__).parent / "fixtures" / "audio"
SLOW_API_DELAY_S = 0.25
SLOW_MAX_QUEUE_SIZE = 4


async def _node() -> str:
    return await find_node("the socket.io-client interop suite")


def _check_node_modules() -> None:
    manifest = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    if not manifest.exists():
        pytest.fail(f"{JS_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/js` before pytest", pytrace=False)
    installed = json.loads(manifest.read_text())["version"]
    if installed != CLIENT_VERSION:
        pytest.fail(f"socket.io-client {installed} is installed, the lock file pins {CLIENT_VERSION}: "
                    "run `npm ci --prefix tests/js`", pytrace=False)


def _node_env(**values: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", **values}
    env.pop("NODE_OPTIONS", None)
    return env


def _assert_no_internal_errors(*servers: RunningServer) -> None:
    """Every error the clients saw was one they provoked: no handler failed."""
    for server in servers:
        assert {k: v for k, v in server.services.realtime.counters.items() if k.endswith(":internal")} == {}


@pytest.mark.timeout(NODE_TIMEOUT_S + 30)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_socketio_client_interop(start_server: ServerFactory, tmp_path: Path) -> None:
    node = await _node()
    _check_node_modules()
    main = await start_server()
    small = await start_server(max_chunk_bytes=SMALL_MAX_CHUNK_BYTES, storage_dir=tmp_path / "small-chunks",
                               data_dir=tmp_path / "small-data")
    env = _node_env(
        SCRIBEAI_URL=main.url,
        SCRIBEAI_STORAGE_DIR=str(main.settings.storage_dir),
        SCRIBEAI_MAX_CHUNK_BYTES=str(main.settings.max_chunk_bytes),
        SCRIBEAI_MAX_QUEUE_SIZE=str(main.settings.max_queue_size),
        SCRIBEAI_SMALL_URL=small.url,
        SCRIBEAI_SMALL_STORAGE_DIR=str(small.settings.storage_dir),
        SCRIBEAI_SMALL_MAX_CHUNK_BYTES=str(small.settings.max_chunk_bytes),
        SCRIBEAI_TOKEN_ALICE=token_for("alice"),
        SCRIBEAI_TOKEN_BOB=token_for("bob"),
        SCRIBEAI_TOKEN_EXPIRED=create_token(SECRET, "alice", ttl_s=-60),
    )
    # transcription.test.mjs needs servers of its own (whisper, a slow engine): the test below runs it
    files = sorted(str(p) for p in JS_DIR.glob("*.test.mjs") if p.name != TRANSCRIPTION_JS)
    assert files, f"no *.test.mjs in {JS_DIR}"
    output, counts = await run_node_tests(node, files, JS_DIR, env, tmp_path / "node-test.tap", NODE_TIMEOUT_S)
    assert counts["tests"] >= MIN_JS_TESTS, output
    _assert_no_internal_errors(main, small)
    print(f"socket.io-client {CLIENT_VERSION}: {counts['pass']} JS tests passed")


@pytest.mark.timeout(TRANSCRIPTION_NODE_TIMEOUT_S + 60)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_socketio_client_transcription(start_server: ServerFactory, tmp_path: Path) -> None:
    """transcription.test.mjs: real speech through whisper, and a recorder obeying backpressure of a slow engine."""
    node = await _node()
    _check_node_modules()
    api = FakeTranscriptionAPI(delay_s=SLOW_API_DELAY_S)
    try:
        api_url = await api.start()
        whisper = await start_server(transcriber="whisper", max_concurrency=2, storage_dir=tmp_path / "whisper-chunks",
                                     data_dir=tmp_path / "whisper-data")
        slow = await start_server(transcriber="openai", openai_base_url=api_url, openai_api_key="test-key",
                                  max_concurrency=1, max_queue_size=SLOW_MAX_QUEUE_SIZE,
                                  storage_dir=tmp_path / "slow-chunks", data_dir=tmp_path / "slow-data")
        env = _node_env(
            SCRIBEAI_WHISPER_URL=whisper.url,
            SCRIBEAI_WHISPER_MAX_QUEUE_SIZE=str(whisper.settings.max_queue_size),
            SCRIBEAI_SLOW_URL=slow.url,
            SCRIBEAI_SLOW_MAX_QUEUE_SIZE=str(slow.settings.max_queue_size),
            SCRIBEAI_TOKEN_ALICE=token_for("alice"),
            SCRIBEAI_FIXTURES_DIR=str(FIXTURES_DIR),
        )
        output, counts = await run_node_tests(node, [str(JS_DIR / TRANSCRIPTION_JS)], JS_DIR, env, tmp_path / "node-transcription.tap",
                                         TRANSCRIPTION_NODE_TIMEOUT_S)
    finally:
        await api.close()
    assert counts["tests"] == TRANSCRIPTION_JS_TESTS, output
    _assert_no_internal_errors(whisper, slow)
    assert (whisper.services.pipeline.failed, slow.services.pipeline.failed) == (0, 0)
    for line in re.findall(r"^\s*(?:# ack latencies|# backpressure|✔).*$", output, re.M):
        print(line.strip())
    print(f"socket.io-client {CLIENT_VERSION}: {counts['pass']} JS transcription tests passed")
