"""`scribeai worker` as real processes beside a `serve` that transcribes nothing (MAX_CONCURRENCY=0).

The server and the workers share one PostgreSQL database, one STORAGE_DIR and one Redis channel: a recorder on
the server gets its live segments from a worker process; a worker killed with SIGKILL mid-transcription leaves
its claim to run out (TRANSCRIBE_LEASE_S) and another worker finishes the session with no duplicate segment;
a worker stopped with SIGTERM releases its claims at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from scribeai.models import Chunk, ChunkStatus, TranscriptSegment, TranscriptStream
from tests.conftest import REDIS_URL, RunningServer, ServerFactory, chunk, fresh_postgres_database, require_service
from tests.fake_openai import FakeTranscriptionAPI
from tests.processes import Processes
from tests.test_streams import blobs as chromium_blobs
from tests.test_transcription import HELLO

ROOT = Path(__file__).parent.parent
LEASE_S = 3


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    require_service("Redis", REDIS_URL, 6379)
    async with fresh_postgres_database("worker") as url:
        yield url


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI(delay_s=0.5)  # slow enough to kill a worker in the middle of a window
    yield api
    await api.close()


class Workers(Processes):
    """`python -m scribeai worker` processes on the server's database, STORAGE_DIR and Redis channel."""

    def __init__(self, server: RunningServer, api_url: str) -> None:
        settings = server.settings
        super().__init__(settings.data_dir, {
            **os.environ, "DATABASE_URL": settings.database_url, "STORAGE_DIR": str(settings.storage_dir),
            "DATA_DIR": str(settings.data_dir), "REDIS_URL": settings.redis_url, "REDIS_CHANNEL": settings.redis_channel,
            "TRANSCRIBER": "openai", "OPENAI_BASE_URL": api_url, "OPENAI_API_KEY": "k", "MAX_CONCURRENCY": "1",
            "TRANSCRIBE_LEASE_S": str(LEASE_S), "RETENTION_SCHEDULE": "off", "IDLE_FLUSH_S": "1", "GAP_WAIT_S": "3",
            "SCRIBEAI_SECRET": settings.secret, "LOG_LEVEL": "INFO"})

    async def start(self, node_id: str, **settings: str) -> asyncio.subprocess.Process:
        return await self.spawn(node_id, sys.executable, "-m", "scribeai", "worker", ready="transcribing with",
                                env={"NODE_ID": node_id, **settings})


@pytest.fixture
async def setup(database_url: str, start_server: ServerFactory,
                fake_api: FakeTranscriptionAPI) -> AsyncIterator[tuple[RunningServer, Workers]]:
    api_url = await fake_api.start()
    server = await start_server(database_url=database_url, transcriber="openai", openai_base_url=api_url,
                                openai_api_key="k", max_concurrency=0, redis_url=REDIS_URL,
                                redis_channel=f"scribeai-test-{uuid.uuid4().hex}", transcribe_lease_s=LEASE_S)
    workers = Workers(server, api_url)
    yield server, workers
    await workers.close()


async def segments_until(viewer: Any, count: int, seen: dict[int, str], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(seen) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"{len(seen)} of {count} segments arrived"
        name, *args = await viewer.receive(timeout=remaining)
        if name == "transcriptSegment":
            assert args[0]["seq"] not in seen, "a segment arrived twice"
            seen[args[0]["seq"]] = args[0]["text"]


async def test_a_killed_worker_s_session_is_finished_by_another(
        setup: tuple[RunningServer, Workers], connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server, workers = setup
    assert server.services.pipeline.workers == 0  # the server transcribes nothing itself
    first = await workers.start("worker-1")
    recorder = await connect(server.url)
    await recorder.call("joinSession", {"sessionId": "remote"}, timeout=5)
    sent = [HELLO] * 8  # each WAV chunk is a window of its own
    for seq, data in enumerate(sent):
        ack = await recorder.call("audio-chunk", chunk("remote", seq, data, mimeType="audio/wav"), timeout=5)
        assert ack["duplicate"] is False
    seen: dict[int, str] = {}
    await segments_until(recorder, 2, seen)  # from the worker process, through Redis and the server's room
    first.kill()  # SIGKILL in the middle of the session: its claim stays until the lease runs out
    await first.wait()
    await workers.start("worker-2")
    await segments_until(recorder, len(sent), seen, timeout=60)
    assert seen == {seq: fake_api.answers[0] for seq in range(len(sent))}
    async with server.services.db.read() as s:
        rows = (await s.execute(select(col(TranscriptSegment.seq), func.count()).where(
            col(TranscriptSegment.session_id) == "remote").group_by(col(TranscriptSegment.seq)))).all()
        statuses = (await s.execute(select(col(Chunk.status)).where(col(Chunk.session_id) == "remote"))).scalars().all()
        claims = (await s.execute(select(col(TranscriptStream.claimed_by)))).scalars().all()
    assert dict(rows) == {seq: 1 for seq in range(len(sent))}  # no duplicate segment in the database either
    assert set(statuses) == {ChunkStatus.DONE}
    assert "worker-1" not in claims


async def test_a_dead_worker_s_held_tail_is_finished_by_the_idle_survivor(
        setup: tuple[RunningServer, Workers], connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    """The worker holding a stream dies after reading its last chunk (no chunk left pending to draw anyone):
    once its lease runs out, the other worker, idle all along, takes the stream and transcribes the tail."""
    server, workers = setup
    fake_api.delay_s = 4.0  # the holder is inside the tail's window when it dies
    processes = {name: await workers.start(name, IDLE_FLUSH_S="2") for name in ("worker-a", "worker-b")}
    recorder = await connect(server.url)
    pieces = chromium_blobs("ts1000")
    for seq, data in enumerate(pieces):
        await recorder.call("audio-chunk", chunk("tail", seq, data, timestamp=1_732_000_000_000 + seq * 1000), timeout=5)

    async def holder() -> str | None:
        async with server.services.db.read() as s:
            claimed = (await s.execute(select(col(TranscriptStream.claimed_by)).where(
                col(TranscriptStream.session_id) == "tail"))).scalar_one_or_none()
            pending = (await s.execute(select(func.count()).select_from(Chunk).where(
                col(Chunk.session_id) == "tail", col(Chunk.status) == ChunkStatus.PENDING))).scalar_one()
        return claimed if pending == 0 else None

    deadline = asyncio.get_running_loop().time() + 30
    while (dead := await holder()) is None:
        assert asyncio.get_running_loop().time() < deadline, "no worker took the session"
        await asyncio.sleep(0.05)
    processes[dead].kill()
    await processes[dead].wait()
    deadline = asyncio.get_running_loop().time() + LEASE_S + 30
    while True:
        async with server.services.db.read() as s:
            statuses = (await s.execute(select(col(Chunk.status)).where(col(Chunk.session_id) == "tail"))).scalars().all()
        if set(statuses) == {ChunkStatus.DONE}:
            break
        assert asyncio.get_running_loop().time() < deadline, f"the tail was never finished: {statuses}"
        await asyncio.sleep(0.2)
    segments = await server.services.pipeline.segments_after("tail", None)
    assert segments and len({s["startMs"] for s in segments}) == len(segments)


async def test_sigterm_releases_claims_and_backpressure_follows_remote_reads(
        setup: tuple[RunningServer, Workers], connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    server, workers = setup
    recorder = await connect(server.url)
    await recorder.call("joinSession", {"sessionId": "graceful"}, timeout=5)
    for seq in range(3):
        await recorder.call("audio-chunk", chunk("graceful", seq, HELLO, mimeType="audio/wav"), timeout=5)
    conn = next(iter(server.services.realtime.connections.values()))
    assert len(conn.pending) == 3  # nobody has read them: there is no worker yet
    worker = await workers.start("worker-3")
    seen: dict[int, str] = {}
    await segments_until(recorder, 1, seen)
    deadline = asyncio.get_running_loop().time() + 10
    while conn.pending and asyncio.get_running_loop().time() < deadline:  # the server learns of reads from the database
        await asyncio.sleep(0.1)
    assert conn.pending == set()
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    log = workers.logs[-1].read_text()
    assert log.strip().splitlines()[-1].endswith("ScribeAI worker stopped"), log
    async with server.services.db.read() as s:
        claims = (await s.execute(select(col(TranscriptStream.claimed_by)))).scalars().all()
    assert "worker-3" not in claims  # released on the way out, not left to its lease


def test_worker_without_redis_is_one_line_and_status_2(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": "", "DATA_DIR": str(tmp_path), "TRANSCRIBER": "openai", "OPENAI_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "scribeai", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "scribeai: not starting: a separate worker needs REDIS_URL (the Socket.IO nodes' Redis): "
        "its live segments reach recorders and viewers through it"]
