"""Several nodes as real processes: nginx (deploy/nginx/scribeai.conf) in front of two `scribeai serve` processes
that transcribe nothing, two `scribeai worker` processes, one PostgreSQL database, one Redis, and the chunks in
SeaweedFS's S3 store (STORAGE_URL): no process shares a filesystem with another.

Recorders (the real JS socket.io-client over websocket and over polling, and the Python client) stream through
nginx while the node they are on is killed with SIGKILL: they reconnect through nginx to the other node and
finish, every chunk stored exactly once with its bytes; a viewer on the other node gets the live segments that
the worker processes make, and joinSession replays them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.conftest import IN_CI, REDIS_URL, SECRET, fresh_postgres_database, require_service, token_for
from tests.fake_openai import FakeTranscriptionAPI
from tests.processes import NGINX_SITE, Processes, free_port, nginx_site, start_nginx
from tests.test_object_storage import BUCKET, Seaweed
from tests.speech import JS_DIR
from tests.test_transcription import HELLO

ROOT = Path(__file__).parent.parent
CHUNKS = 16
INTERVAL_S = 0.25


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None:
        message = "nginx is not installed (Debian package nginx; `make test` installs it as root)"
        if IN_CI:
            pytest.fail(f"{message}; CI is set")
        pytest.skip(message)
    return found


class Topology(Processes):
    def __init__(self, tmp: Path, url: str, env: dict[str, str]) -> None:
        super().__init__(tmp, env)
        self.tmp = tmp
        self.url = url  # nginx
        self.nodes: dict[str, tuple[int, asyncio.subprocess.Process]] = {}
        self.seaweed: Seaweed | None = None

    async def serve(self, name: str) -> None:
        port = free_port()
        process = await self.spawn(name, sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port",
                                   str(port), ready="ScribeAI listening", env={"NODE_ID": name})
        self.nodes[name] = (port, process)

    async def node_for(self, local_address: str) -> str:
        """Which node nginx sends this client address to (the X-ScribeAI-Node header)."""
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{self.url}/healthz") as response:
            assert response.status == 200
            return response.headers["X-ScribeAI-Node"]

@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    nginx = _nginx()
    require_service("Redis", REDIS_URL, 6379)
    api = FakeTranscriptionAPI(delay_s=0.05)
    seaweed = Seaweed(tmp_path)
    try:
        await seaweed.start()
    except BaseException:
        await seaweed.close()
        raise
    async with fresh_postgres_database("topology") as database_url:
        env = {**os.environ, "DATABASE_URL": database_url, "STORAGE_URL": f"s3://{BUCKET}/topology",
               "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_REGION": "us-east-1", "STORAGE_DIR": str(tmp_path / "unused-chunks"),
               "DATA_DIR": str(tmp_path / "data"), "ARCHIVE_STORAGE_PATH": str(tmp_path / "archives"),
               "REDIS_URL": REDIS_URL, "REDIS_CHANNEL": f"scribeai-topology-{uuid.uuid4().hex}",
               "SCRIBEAI_SECRET": SECRET, "TRANSCRIBER": "openai", "OPENAI_BASE_URL": await api.start(),
               "OPENAI_API_KEY": "k", "RETENTION_SCHEDULE": "off", "IDLE_FLUSH_S": "1", "GAP_WAIT_S": "3",
               "TRANSCRIBE_LEASE_S": "5", "PING_INTERVAL": "2", "PING_TIMEOUT": "2", "DEMO": "off", "LOG_LEVEL": "INFO"}
        port = free_port()
        top = Topology(tmp_path, f"http://127.0.0.1:{port}", env)
        top.seaweed = seaweed
        try:
            top.env["MAX_CONCURRENCY"] = "0"  # the serve processes transcribe nothing: the workers do
            for name in ("serve-a", "serve-b"):
                await top.serve(name)
            for name in ("worker-1", "worker-2"):
                await top.spawn(name, sys.executable, "-m", "scribeai", "worker", ready="transcribing with",
                                env={"NODE_ID": name, "MAX_CONCURRENCY": "1"})
            await start_nginx(top, nginx, tmp_path, nginx_site(port, {n: p for n, (p, _) in top.nodes.items()}), port)
            yield top
        finally:
            await top.close()
            await api.close()
            await seaweed.close()


async def _stored(database_url: str) -> dict[tuple[str, int], tuple[str, str]]:
    """(session, seq) -> (sha256, path) of every chunk row."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch("SELECT session_id, seq, sha256, path FROM chunk")
    finally:
        await conn.close()
    return {(r["session_id"], r["seq"]): (r["sha256"], r["path"]) for r in rows}


async def _python_recorder(url: str, session_id: str, transport: str, acks: dict[int, Any]) -> None:
    """The Python client's recorder: the same never-give-up loop as topology_recorder.mjs."""
    client = socketio.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=1)
    await client.connect(url, auth={"token": token_for("alice")}, transports=[transport], wait_timeout=10)
    try:
        for seq in range(CHUNKS):
            while True:
                while not client.connected:
                    await asyncio.sleep(0.1)
                try:
                    ack = await client.call("audio-chunk", {"sessionId": session_id, "sequence": seq, "mimeType": "audio/wav",
                                                            "timestamp": 1_732_350_000_000 + seq * 15000, "audio": HELLO},
                                            timeout=5)
                except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError,
                        socketio.exceptions.DisconnectedError):
                    await asyncio.sleep(0.2)
                    continue
                if "error" in ack:
                    assert ack["error"]["code"] in ("overloaded", "unavailable"), ack
                    await asyncio.sleep(ack["error"].get("retryAfterMs", 500) / 1000)
                    continue
                acks[seq] = ack
                break
            await asyncio.sleep(INTERVAL_S)
    finally:
        await client.disconnect()


async def test_recorders_survive_a_killed_node_and_segments_cross_nodes(topology: Topology) -> None:
    top = topology
    doomed = await top.node_for("127.0.0.1")  # every recorder below comes from 127.0.0.1: they all share this node
    survivor = next(name for name in top.nodes if name != doomed)
    viewer_address = None
    for i in range(2, 60):
        if await top.node_for(f"127.0.0.{i}") == survivor:
            viewer_address = f"127.0.0.{i}"
            break
    assert viewer_address is not None, "no client address that nginx sends to the other node"

    viewer_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(viewer_address, 0)))
    viewer = socketio.AsyncClient(http_session=viewer_http)
    live: dict[int, str] = {}
    viewer.on("transcriptSegment", lambda segment: live.setdefault(segment["seq"], segment["text"]))
    await viewer.connect(top.url, auth={"token": token_for("alice")}, transports=["websocket"], wait_timeout=10)
    await viewer.call("joinSession", {"sessionId": "py-ws", "lastSeq": -1}, timeout=5)

    wav = top.tmp / "hello.wav"
    wav.write_bytes(HELLO)
    js = {transport: await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / "topology_recorder.mjs"), "--url", top.url, "--token", token_for("alice"),
        "--session", f"js-{transport}", "--file", str(wav), "--chunks", str(CHUNKS), "--transport", transport,
        "--interval-ms", str(int(INTERVAL_S * 1000)), cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for transport in ("websocket", "polling")}
    py_acks: dict[str, dict[int, Any]] = {"py-ws": {}, "py-polling": {}}
    python = [asyncio.create_task(_python_recorder(top.url, "py-ws", "websocket", py_acks["py-ws"])),
              asyncio.create_task(_python_recorder(top.url, "py-polling", "polling", py_acks["py-polling"]))]

    sessions = ["js-websocket", "js-polling", "py-ws", "py-polling"]
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        stored = await _stored(top.env["DATABASE_URL"])
        if min(sum(1 for sid, _ in stored if sid == s) for s in sessions) >= 4:
            break
        assert asyncio.get_running_loop().time() < deadline, "recorders did not get going"
        await asyncio.sleep(0.2)
    port, process = top.nodes[doomed]
    process.send_signal(signal.SIGKILL)  # mid-recording, with chunks in flight
    await process.wait()

    await asyncio.wait_for(asyncio.gather(*python), 120)
    results = {}
    for transport, proc in js.items():
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        results[f"js-{transport}"] = json.loads(out.decode().strip().splitlines()[-1])
    for sid in ("js-websocket", "js-polling"):
        assert sorted(map(int, results[sid]["acks"])) == list(range(CHUNKS)), results[sid]
        assert results[sid]["connects"] >= 2, results[sid]  # it did lose its node and come back through nginx
    for sid in ("py-ws", "py-polling"):
        assert sorted(py_acks[sid]) == list(range(CHUNKS))

    stored = await _stored(top.env["DATABASE_URL"])
    sha = hashlib.sha256(HELLO).hexdigest()
    assert top.seaweed is not None
    objects = top.seaweed.objects("topology")
    assert sorted(objects) == sorted(path for _, path in stored.values())  # one object a row, nothing else
    assert not (top.tmp / "unused-chunks").exists() or not any((top.tmp / "unused-chunks").rglob("*.wav"))
    for sid in sessions:  # exactly once: one row per sequence (the unique key), each with the bytes sent, on disk
        rows = {seq: value for (s, seq), value in stored.items() if s == sid}
        assert sorted(rows) == list(range(CHUNKS)), (sid, sorted(rows))
        for seq, (digest, path) in rows.items():
            assert digest == sha and hashlib.sha256(objects[path]).hexdigest() == sha

    # Live segments made by the worker processes reached the viewer on the surviving node, through Redis.
    deadline = asyncio.get_running_loop().time() + 60
    while len(live) < CHUNKS:
        assert asyncio.get_running_loop().time() < deadline, f"{len(live)} of {CHUNKS} live segments reached the viewer"
        await asyncio.sleep(0.2)
    assert set(live) == set(range(CHUNKS))
    # And a late joiner gets them replayed (from the surviving node: the other is dead).
    replayed: dict[int, str] = {}
    late = socketio.AsyncClient()
    late.on("transcriptSegment", lambda segment: replayed.setdefault(segment["seq"], segment["text"]))
    await late.connect(top.url, auth={"token": token_for("alice")}, transports=["polling"], wait_timeout=10)
    await late.call("joinSession", {"sessionId": "js-polling", "lastSeq": -1}, timeout=5)
    deadline = asyncio.get_running_loop().time() + 10
    while len(replayed) < CHUNKS and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert set(replayed) == set(range(CHUNKS))
    await late.disconnect()
    await viewer.disconnect()
    await viewer_http.close()


def test_the_deployment_guide_shows_the_tested_nginx_file() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert NGINX_SITE.read_text() in guide
