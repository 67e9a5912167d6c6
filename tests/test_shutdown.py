"""SIGTERM: in-flight chunks are acked, clients are disconnected, the process exits 0 promptly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import socketio

from tests.conftest import SECRET, chunk, token_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_acks_in_flight_chunks_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks"), "SCRIBEAI_SECRET": SECRET,
           "TRANSCRIBER": "none", "HOST": "127.0.0.1", "PORT": str(port), "SHUTDOWN_TIMEOUT": "5"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        client = socketio.AsyncClient(reconnection=False)
        disconnected = asyncio.Event()
        client.on("disconnect", lambda *args: disconnected.set())
        await client.connect(url, auth={"token": token_for("alice")}, transports=["websocket"], wait_timeout=5)
        audio = os.urandom(2_000_000)
        # a burst of large chunks, then SIGTERM while they are being written
        pending = [asyncio.ensure_future(client.call("audio-chunk", chunk("term", seq, audio[seq:]), timeout=6)) for seq in range(8)]
        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 15)  # a bound, not a speed check: SHUTDOWN_TIMEOUT is 5 s
        assert code == 0
        await asyncio.wait_for(disconnected.wait(), 5)
        replies = await asyncio.gather(*pending, return_exceptions=True)
        acked = [r for r in replies if isinstance(r, dict) and "chunkId" in r]
        refused = [r for r in replies if isinstance(r, dict) and "error" in r]
        assert len(acked) + len(refused) == 8, replies  # chunks on the wire are answered, never dropped silently
        assert all(r["error"]["code"] == "unavailable" for r in refused)
        stored = {p.name for p in (tmp_path / "chunks" / "term").glob("*.webm")}
        for reply in acked:  # every acked chunk survived, byte for byte
            name = f"term_{reply['sequence']:04d}.webm"
            assert name in stored
            assert (tmp_path / "chunks" / "term" / name).read_bytes() == audio[reply["sequence"]:]
        assert len(acked) >= 1, "no chunk was acked before the stop"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
