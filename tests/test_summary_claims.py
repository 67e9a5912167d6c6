"""A summary's claim while a slow model writes it: renewed for as long as the process works on it, so another
node's GET does not start the same summary a second time; given back when the process dies (tests/test_summary.py
has the stop and the restart)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from scribeai.models import SessionSummary, TranscriptSegment, utcnow
from scribeai.summaries import Summaries, summaries_key
from tests.conftest import RunningServer, ServerFactory, token_for
from tests.fake_chat import FakeChatAPI
from tests.speech import MEETING

CLAIM_S = 1.0
MODEL_DELAY_S = 4 * CLAIM_S


async def post(server: RunningServer, path: str, body: Any = None) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.post(server.url + path, json=body) as response:
            assert response.status in (200, 201), await response.text()


async def claim_of(server: RunningServer, session_id: str) -> tuple[str, datetime | None]:
    async with server.services.db.read() as s:
        row = await s.get(SessionSummary, session_id)
    assert row is not None
    return row.status, row.claimed_until


async def test_a_slow_model_keeps_its_claim_and_no_other_node_starts_it_again(start_server: ServerFactory) -> None:
    fake = FakeChatAPI(delay_s=MODEL_DELAY_S)
    url = await fake.start()
    try:
        server = await start_server(summary_base_url=url, summary_model="slow-model")
        making = server.app[summaries_key]
        making.claim_s = CLAIM_S
        # Another node on the same database: its GETs start a summary whose claim has lapsed.
        other = Summaries.from_settings(server.services.db, None, server.settings, CollectorRegistry(), own_process=False)
        other.claim_s = CLAIM_S
        await post(server, "/api/sessions", {"id": "slow", "title": "Slow"})
        async with server.services.db.write() as s:
            s.add_all(TranscriptSegment(session_id="slow", seq=i, from_seq=i, chunk_id=f"c{i}", start_ms=i * 4000,
                                        end_ms=i * 4000 + 3900, text=line) for i, line in enumerate(MEETING[:8]))
        await post(server, "/api/sessions/slow/stop")  # complete: this node starts the summary
        while not fake.prompts:  # the model is writing it
            await asyncio.sleep(0.02)
        status, first_claim = await claim_of(server, "slow")
        assert status == "pending" and first_claim is not None
        while utcnow() <= first_claim:
            await asyncio.sleep(0.05)  # the first claim has run out: only a renewal keeps it
        status, claim = await claim_of(server, "slow")
        assert status == "pending" and claim is not None and claim > first_claim, (status, claim, first_claim)
        body = await other.get("slow")  # what a GET on the other node does
        assert body["status"] == "pending"
        await making.drain()
        await other.drain()
        assert len(fake.prompts) == 1, fake.prompts  # one model run, not two
        status, claim = await claim_of(server, "slow")
        assert (status, claim, other.made) == ("ready", None, 0)
    finally:
        await fake.close()
