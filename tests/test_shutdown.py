"""SIGTERM: in-flight chunks are acked, clients are disconnected, the process exits 0 promptly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import socketio

from tests.conftest import SECRET, chunk, token_for
from tests.processes import free_port, wait_healthy


async def test_sigterm_acks_in_flight_chunks_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks"), "SCRIBEAI_SECRET": SECRET,
           "TRANSCRIBER": "none", "HOST": "127.0.0.1", "PORT": str(port), "SHUTDOWN_TIMEOUT": "5"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, process)
        client = socketio.AsyncClient(reconnection=False)
        disconnected = asyncio.Event()
        client.on("disconnect", lambda *args: disconnected.set())
        await client.connect(url, auth={"token": token_for("alice")}, transports=["websocket"], wait_timeout=5)
        audio = os.urandom(2_000_000)
        # a burst of large chunks, then SIGTERM once the first is acked, while the others are being written (a fixed
        # 50 ms before the signal acked none once in 16 runs on a loaded machine)
        pending = [asyncio.ensure_future(client.call("audio-chunk", chunk("term", seq, audio[seq:]), timeout=6)) for seq in range(8)]
        await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
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


async def test_sigterm_with_recorders_that_keep_sending_is_answered_and_logged_in_one_line(tmp_path: Path) -> None:
    """Recorders that resend at once after `unavailable` neither hold the stop nor flood the log (issue 25: 21,426
    INFO lines, then "chunks still in flight" for chunks that had been refused)."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks"), "SCRIBEAI_SECRET": SECRET,
           "TRANSCRIBER": "none", "HOST": "127.0.0.1", "PORT": str(port), "SHUTDOWN_TIMEOUT": "5", "DEMO": "off"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []

    async def read_log() -> None:  # read as it comes: a flood of lines must not block the server on a full pipe
        assert process.stdout is not None
        async for line in process.stdout:
            lines.append(line.decode(errors="replace"))
    reader = asyncio.ensure_future(read_log())
    url = f"http://127.0.0.1:{port}"
    clients: list[socketio.AsyncClient] = []
    try:
        await wait_healthy(url, process)
        acked: dict[str, list[int]] = {}
        refused: list[str] = []
        stopping = asyncio.Event()

        async def record(client: socketio.AsyncClient, session: str, gone: asyncio.Event) -> None:
            seq = 0
            while client.connected:
                call = asyncio.ensure_future(client.call("audio-chunk", chunk(session, seq, os.urandom(4000)), timeout=10))
                cut = asyncio.ensure_future(gone.wait())
                await asyncio.wait([call, cut], return_when=asyncio.FIRST_COMPLETED)
                cut.cancel()
                if not call.done():  # an answer that came just before the close is still being delivered
                    await asyncio.wait([call], timeout=0.5)
                if not call.done() or call.exception() is not None:
                    call.cancel()  # the connection closed first: this chunk was not received, a recorder resends it
                    return
                reply = call.result()
                if "chunkId" in reply:
                    acked.setdefault(session, []).append(seq)
                    seq += 1
                else:
                    refused.append(reply["error"]["code"])
                    stopping.set()  # and resend at once, as a careless recorder would

        tasks = []
        for i, transport in enumerate(["websocket", "websocket", "polling"]):
            client = socketio.AsyncClient(reconnection=False)
            gone = asyncio.Event()
            client.on("disconnect", lambda *args, gone=gone: gone.set())
            await client.connect(url, auth={"token": token_for("alice")}, transports=[transport], wait_timeout=5)
            clients.append(client)
            tasks.append(asyncio.ensure_future(record(client, f"keep-{i}", gone)))
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(process.wait(), 30) == 0
        except TimeoutError:
            raise AssertionError("".join(lines)[-5000:])
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await reader
        assert stopping.is_set() and set(refused) == {"unavailable"}
        log = "".join(lines)
        assert "answered unavailable" not in log  # refusals while stopping are counted, not logged one by one
        summary = re.findall(r"shutdown: (\d+) chunks refused \(unavailable\) while stopping", log)
        assert len(summary) == 1, log[-3000:]
        # each recorder waits for an answer before it sends again: at most its last answer was cut by the close
        assert len(refused) <= int(summary[0]) <= len(refused) + len(clients), (summary, len(refused))
        assert "still in flight" not in log and "still being stored" not in log
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        assert len(lines) < 40, log[-3000:]
        for session, seqs in acked.items():  # every acked chunk survived
            stored = {p.name for p in (tmp_path / "chunks" / session).glob("*.webm")}
            assert {f"{session}_{seq:04d}.webm" for seq in seqs} <= stored
    finally:
        for client in clients:
            await client.shutdown()
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
