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

from tests.conftest import token_for
from tests.speech import make_speech_wav, timeslice_blobs, word_recall
from tests.test_crash import ServerProcess

SENTENCES = [
    "The quarterly review has been moved to the large conference room on the third floor.",
    "Please remember to send the slides to everyone before the meeting starts tomorrow morning.",
    "We agreed that the marketing team will own the launch plan for the new product.",
    "Our customers keep asking for a simpler way to export their reports.",
    "The database migration finished overnight without any serious problems.",
    "Sarah will follow up with the vendor about the delayed shipment.",
    "The budget for the design work is tighter than we expected this year.",
    "Several users reported that the mobile application crashes when they upload large photos.",
    "The engineering team needs more time to finish the security review.",
    "Let's schedule a short meeting next week to check on the progress.",
    "The new office in Berlin will open at the beginning of the summer.",
    "Hiring remains our biggest challenge for the rest of the quarter.",
]
REFERENCE = " ".join(SENTENCES)
USER = "recovery-user"
LEASE_S = 8
EPOCH = 1_732_400_000_000


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = tmp_path_factory.mktemp("recovery") / "meeting.wav"
    make_speech_wav(SENTENCES, wav, pause_s=0.8)
    return timeslice_blobs(wav, 1000)


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
