"""Transcription finishes by itself after `scribeai serve` is killed at each point of a long session's life.

A minute of real speech (espeak-ng) as one WebM/Opus stream cut into 1 s byte ranges like Chromium's
timeslice blobs, sent to the real server (a process, bundled whisper). The server is killed (SIGKILL, or
stopped with SIGTERM) and restarted with the same or a new NODE_ID: while chunks wait and a window is
being transcribed (more than 32 chunks past the stream's header), while the tail is held for the idle
flush, and long after the last chunk, after which the recorder goes on. The recorder never says stop: every
chunk must still end `done`, each second transcribed once (no overlapping segments), the words right, and a
restarted process must read on from the stream's checkpoint, not from its first chunk.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import text as text_query

from tests.conftest import token_for
from tests.speech import MEETING, make_speech_wav, spoken_blobs, word_recall
from tests.test_crash import ServerProcess

SENTENCES = [MEETING[i] for i in (0, 1, 2, 3, 4, 6, 7, 9, 10, 11, 12, 13)]
REFERENCE = " ".join(SENTENCES)
USER = "recovery-user"
LEASE_S = 8
EPOCH = 1_732_400_000_000


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return spoken_blobs(SENTENCES, tmp_path_factory.mktemp("recovery"))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    server.settings = {"TRANSCRIBER": "whisper", "MAX_CONCURRENCY": "1", "IDLE_FLUSH_S": "4", "GAP_WAIT_S": "2",
                       "TRANSCRIBE_LEASE_S": str(LEASE_S), "MAX_QUEUE_SIZE": "500", "LOG_LEVEL": "INFO"}
    try:
        yield server
    finally:
        server.kill_all()


def counts(server: ServerProcess) -> dict[str, int]:
    """Chunks by status, and segments, as the server's SQLite database has them now."""
    with sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True, timeout=10) as db:
        found = dict(db.execute("SELECT status, count(*) FROM chunk GROUP BY status").fetchall())
        found["segments"] = db.execute("SELECT count(*) FROM segment").fetchone()[0]
    return {key: int(value) for key, value in found.items()}


def segments(server: ServerProcess) -> list[tuple[int, int, str]]:
    with sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True, timeout=10) as db:
        return [(int(a), int(b), str(t)) for a, b, t in db.execute("SELECT start_ms, end_ms, text FROM segment ORDER BY start_ms")]


async def until(server: ServerProcess, condition: Any, what: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await asyncio.to_thread(counts, server)
        if condition(state):
            return
        assert asyncio.get_running_loop().time() < deadline, f"not {what} after {timeout}s: {state}\n{server.log()}"
        await asyncio.sleep(0.1)


async def send(server: ServerProcess, blobs: list[bytes], seqs: range) -> None:
    """A recorder that connects, sends these chunks in order (each acked), and goes away without a stop."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, auth={"token": token_for(USER)}, transports=["websocket"], wait_timeout=10)
    try:
        for seq in seqs:
            ack = await client.call("audio-chunk", {"sessionId": "meeting", "sequence": seq, "timestamp": EPOCH + seq * 1000,
                                                    "mimeType": "audio/webm;codecs=opus", "audio": blobs[seq]}, timeout=10)
            assert isinstance(ack, dict) and "error" not in ack, ack
    finally:
        await client.disconnect()


async def restart(server: ServerProcess, how: str, node: int) -> None:
    assert server.proc is not None
    if how == "sigterm":
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.proc.wait, 30)
    else:
        await server.kill()
    if how == "new-node":
        server.settings["NODE_ID"] = f"node-{node}"
    await server.start()


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "new-node"])
async def test_a_long_session_finishes_after_restarts_at_every_point(server: ServerProcess, blobs: list[bytes],
                                                                       how: str) -> None:
    server.settings["NODE_ID"] = "node-1"
    tail = len(blobs) - 8  # the last sentence comes after the server's last restart
    await server.start()
    await send(server, blobs, range(40))
    # 1. a window is being transcribed, chunks wait (read and unread), 32+ chunks past the header
    await until(server, lambda c: c["segments"] >= 1 and c.get("pending", 0) > 0, "transcribing with chunks waiting", 120)
    await restart(server, how, 2)
    await send(server, blobs, range(40, tail))
    # 2. every chunk read, the tail held for the idle flush (IDLE_FLUSH_S=4), the recorder gone without a stop
    await until(server, lambda c: c.get("pending", 0) == 0 and c.get("transcribing", 0) > 0, "holding the tail", 120)
    await restart(server, how, 3)
    done = {"done": tail}
    await until(server, lambda c: {k: v for k, v in c.items() if k != "segments"} == done, "finished", LEASE_S + 60)
    before = segments(server)
    # 3. long after the last chunk: a restart redoes nothing, and the recorder goes on where it was
    await restart(server, how, 4)
    await send(server, blobs, range(tail, len(blobs)))
    done = {"done": len(blobs)}
    await until(server, lambda c: {k: v for k, v in c.items() if k != "segments"} == done, "finished", LEASE_S + 60)

    found = segments(server)
    assert found[:len(before)] == before, "a restart after everything was done transcribed something again"
    for (start, end, _), (after, _, _) in zip(found, found[1:]):
        assert after >= end, f"overlapping segments: {found}"
    text = " ".join(t for _, _, t in found)
    assert word_recall(REFERENCE, text) >= 0.85, text
    # every restart read on from a checkpoint past the first windows, never the whole session again
    resumed = [int(n) for n in re.findall(r"stream read on from chunk (\d+) \(from its checkpoint\)", server.log_path.read_text())]
    assert len(resumed) >= 2 and min(resumed) > 0, server.log()
    assert "from its header" not in server.log_path.read_text().split("--- start 2", 1)[1], server.log()


@pytest.fixture(scope="module")
def an_hour(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], str]:
    """3,600 one-second blobs: an hour of quiet room noise, then two sentences."""
    import numpy as np

    from tests.speech import cut, encode_webm, wav_pcm

    wav = tmp_path_factory.mktemp("hour") / "end.wav"
    make_speech_wav(SENTENCES[-2:], wav, pause_s=0.8)
    speech = wav_pcm(wav)
    quiet = np.random.default_rng(5).normal(0, 0.002, 3600 * 16000 - len(speech)).astype(np.float32)
    pcm = np.concatenate([quiet, speech])
    pieces = cut(encode_webm(pcm), len(pcm) / 16000, 1000)
    assert len(pieces) == 3600
    return pieces, " ".join(SENTENCES[-2:])


@pytest.mark.timeout(900)  # an hour of audio: encoded, stored chunk by chunk and read through once before the restart
async def test_a_restart_an_hour_in_reads_only_the_chunks_since_the_last_window(
        start_server: Any, connect: Any, an_hour: tuple[list[bytes], str], backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("an hour of audio once is enough (the checkpoint table is the same on PostgreSQL)")
    pieces, spoken = an_hour
    shared = {"transcriber": "whisper", "max_concurrency": 1, "node_id": "node-a", "idle_flush_s": 600.0,
              "max_queue_size": 100_000, "global_queue_limit": 100_000}
    first = await start_server(**shared)
    client = await connect(first.url)
    for seq, data in enumerate(pieces):
        ack = await client.call("audio-chunk", {"sessionId": "hour", "sequence": seq, "timestamp": EPOCH + seq * 1000,
                                                "mimeType": "audio/webm;codecs=opus", "audio": data}, timeout=30)
        assert "error" not in ack, ack
    queue = first.services.pipeline.queue
    deadline = asyncio.get_running_loop().time() + 600
    while await queue.backlog() > 0 or await queue.unfinished() == 0:  # every chunk read, the tail held
        assert asyncio.get_running_loop().time() < deadline, "the hour was not read through"
        await asyncio.sleep(0.5)
    await client.disconnect()
    await first.app.shutdown()
    await first.app.cleanup()

    second = await start_server(same_database_as=first, **shared)
    store, reads = second.services.pipeline.store, []
    read = store.read

    def counting(path: str) -> bytes:
        reads.append(path)
        return read(path)

    store.read = counting  # type: ignore[method-assign]
    client = await connect(second.url)
    await client.call("stopSession", {"sessionId": "hour"}, timeout=10)
    await second.services.pipeline.drain(timeout=120)
    # the tail since the last window (at most a 30 s window's worth of 1 s chunks) and one before it to settle in
    assert 0 < len(reads) <= 40, len(reads)
    text = " ".join(s["text"] for s in await second.services.pipeline.segments_after("hour", None))
    assert word_recall(spoken, text) >= 0.8, text
    async with second.services.db.read() as s:
        statuses = {status for (status,) in (await s.execute(text_query("SELECT DISTINCT status FROM chunk"))).all()}
    assert statuses == {"done"}
