"""Two nodes on one PostgreSQL database and one Redis: rooms span nodes, jobs are never shared."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from scribeai.models import TranscriptSegment
from tests.conftest import REDIS_URL, ServerFactory, chunk, fresh_postgres_database, require_service
from tests.fake_openai import FakeTranscriptionAPI
from tests.test_transcription import HELLO

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI(delay_s=0.05)
    yield api
    await api.close()


async def test_segment_transcribed_on_one_node_reaches_a_viewer_on_the_other(
        start_server: ServerFactory, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    require_service("Redis", REDIS_URL, 6379)
    common = {"transcriber": "openai", "openai_base_url": await fake_api.start(), "max_concurrency": 2,
              "redis_url": REDIS_URL, "redis_channel": f"scribeai-test-{uuid.uuid4().hex}"}
    node_a = await start_server(node_id="node-a", **common)
    node_b = await start_server(same_database_as=node_a, node_id="node-b", **common)
    viewer = await connect(node_b.url, namespace="/record")
    await viewer.call("joinSession", {"sessionId": "spread"}, timeout=5)
    recorder = await connect(node_a.url)
    sent = [HELLO] * 12  # real speech, 15 s apart: each chunk is a window of its own
    for seq, data in enumerate(sent):
        ack = await recorder.call("audio-chunk", chunk("spread", seq, data, mimeType="audio/wav"), timeout=5)
        assert ack["duplicate"] is False
    node_b.services.pipeline.notify()  # node B's workers would otherwise find the jobs at their next poll
    seen: dict[int, str] = {}
    while len(seen) < len(sent):
        name, *args = await viewer.receive(timeout=20)
        if name == "transcriptSegment":
            assert args[0]["seq"] not in seen, "a segment arrived twice"
            seen[args[0]["seq"]] = args[0]["text"]
    assert seen == {seq: fake_api.answers[0] for seq in range(len(sent))}
    await node_a.services.pipeline.drain()
    assert len(fake_api.requests) == len(sent)  # each window transcribed once, by one node or the other
    async with node_b.services.db.read() as s:
        count = (await s.execute(select(func.count()).select_from(TranscriptSegment))).scalar_one()
    assert count == len(sent)
    worked = (node_a.services.pipeline.completed, node_b.services.pipeline.completed)
    assert sum(worked) == len(sent)


async def test_nodes_starting_together_on_a_fresh_database_all_create_the_schema(backend: str) -> None:
    """Serve nodes and workers of one deployment start at once (compose, systemd) on an empty database: each one's
    create_all must succeed. Unserialized, concurrent CREATE TABLEs fail with duplicate pg_type rows."""
    import asyncio

    from scribeai.db import Database

    async with fresh_postgres_database("schema_race") as url:
        databases = [Database(url) for _ in range(4)]
        try:
            results = await asyncio.gather(*(db.create_all() for db in databases), return_exceptions=True)
            assert [r for r in results if isinstance(r, BaseException)] == []
            async with databases[0].read() as s:
                tables = set((await s.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars())
            assert {"recording_session", "chunk", "transcript_stream", "segment"} <= tables, tables
        finally:
            for db in databases:
                await db.dispose()
