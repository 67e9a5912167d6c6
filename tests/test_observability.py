"""/metrics after a known workload, METRICS_TOKEN, and JSON logs that carry ids but never audio or tokens."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from scribeai.cli import JsonFormatter
from tests.conftest import RunningServer, ServerFactory, chunk, token_for

AUDIO = os.urandom(3000)
WAV_HEADER = b"RIFF\x00\x00\x00\x00WAVE"  # enough of a WAV for a transcribing server to take the chunk


async def scrape(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, float]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics", headers=headers or {}) as response:
            if response.status != 200:
                return response.status, {}
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" not in sample.labels:
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return 200, values


async def test_metrics_count_a_known_workload(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    for seq in range(3):
        await client.call("audio-chunk", chunk("m", seq, AUDIO), timeout=5)
    await client.call("audio-chunk", chunk("m", 0, AUDIO), timeout=5)            # duplicate
    await client.call("audio-chunk", chunk("m", 1, b"different"), timeout=5)     # conflict
    await client.call("audio-chunk", {"sessionId": "m"}, timeout=5)              # invalid
    status, values = await scrape(server.url)
    assert status == 200
    assert values["scribeai_chunks_total{result=stored}"] == 3
    assert values["scribeai_chunks_total{result=duplicate}"] == 1
    assert values["scribeai_chunk_errors_total{code=conflict}"] == 1
    assert values["scribeai_chunk_errors_total{code=invalid}"] == 1
    assert values["scribeai_chunk_bytes_total"] == 3 * len(AUDIO)
    assert values["scribeai_ack_latency_seconds_count"] == 4
    assert values["scribeai_connections"] == 1
    assert values["scribeai_connections_opened_total"] == 1
    assert values["scribeai_transcription_queue_depth"] == 0
    assert values["process_resident_memory_bytes"] > 10_000_000


async def test_metrics_token(start_server: ServerFactory) -> None:
    server = await start_server(metrics_token="scrape-me")
    assert (await scrape(server.url))[0] == 401
    assert (await scrape(server.url, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await scrape(server.url, {"Authorization": "Bearer scrape-me"}))[0] == 200


def test_json_log_lines_carry_context_fields() -> None:
    record = logging.LogRecord("scribeai.realtime", logging.INFO, __file__, 1, "chunk %s stored", ("s/1",), None)
    record.sessionId, record.seq, record.sid = "s", 1, "abc"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "chunk s/1 stored"
    assert (entry["sessionId"], entry["seq"], entry["sid"], entry["level"]) == ("s", 1, "abc", "INFO")


async def test_logs_never_contain_audio_or_tokens(server: RunningServer, connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="scribeai")
    marker = b"AUDIO-MARKER-0123456789"
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("logged", 0, marker * 10), timeout=5)
    await client.call("audio-chunk", chunk("logged", 0, marker * 11), timeout=5)  # conflict, logged with context
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert "AUDIO-MARKER" not in text
    assert token_for("alice") not in text
    conflict = [json.loads(line) for line in lines if '"code": "conflict"' in line]
    assert conflict and (conflict[0]["sessionId"], conflict[0]["seq"]) == ("logged", 0)
    assert conflict[0]["sid"]


async def test_retention_runs_are_counted(server: RunningServer) -> None:
    from datetime import time

    from scribeai.retention import Retention, RetentionScheduler

    scheduler = RetentionScheduler(Retention(server.services.db, server.settings), time(2, 0), metrics=server.services.metrics)
    report = await scheduler.run_once()
    assert report is not None and report.ok
    _, values = await scrape(server.url)
    assert values["scribeai_retention_runs_total{result=ok}"] == 1
    assert values["scribeai_retention_sessions_total{action=archived}"] == 0


async def test_slowdown_once_when_the_global_backlog_passes_its_limit(start_server: ServerFactory, connect: Any) -> None:
    from tests.fake_openai import FakeTranscriptionAPI

    api = FakeTranscriptionAPI(delay_s=1.0)
    try:
        server = await start_server(transcriber="openai", openai_base_url=await api.start(), max_concurrency=1,
                                    global_queue_limit=2, max_queue_size=100)
        client = await connect(server.url)
        for seq in range(5):
            ack = await client.call("audio-chunk", chunk("busy", seq, WAV_HEADER + bytes([seq]) * 300, mimeType="audio/wav"), timeout=5)
            assert "error" not in ack
        events = []
        while True:
            try:
                events.append(await client.receive(timeout=0.5))
            except socketio.exceptions.TimeoutError:
                break
        slowdowns = [e[1] for e in events if e[0] == "slowDown"]
        assert len(slowdowns) == 1
        assert "backlog of 3 chunks" in slowdowns[0]["message"]
        _, values = await scrape(server.url)
        assert values["scribeai_slowdown_total"] == 1
    finally:
        await api.close()
