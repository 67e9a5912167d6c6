"""How long a graceful stop (SIGTERM) takes with connected recorders, and what it leaves behind (issue 25, goal <= 3 s).

    .venv/bin/python scripts/bench_stop.py                          # 20 recorders sending, SIGTERM, 3 runs
    .venv/bin/python scripts/bench_stop.py --recorders 20 --runs 5 --json out.json
    .venv/bin/python scripts/bench_stop.py --keep-sending           # recorders that go on sending after `unavailable`
    .venv/bin/python scripts/bench_stop.py --idle                   # connected, sending nothing

Each run starts `python -m scribeai serve` (TRANSCRIBER=none, a temporary directory, SHUTDOWN_TIMEOUT as given),
connects N python-socketio recorders (half websocket, half polling), lets them send 8 kB chunks back to back for a
second, sends SIGTERM and measures the wall time until the process has exited. It checks that every chunk a
recorder sent was answered (acked, or refused `unavailable`) and that every acked chunk is on disk, and counts the
server's log lines and whether it claimed chunks "still in flight". A chunk a recorder had sent but had no answer
for when its connection closed counts as cut by the disconnect (not acked: a recorder resends it later).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scribeai.auth import create_token  # noqa: E402
from tests.processes import wait_healthy  # noqa: E402

SECRET = "bench-stop-secret-0123456789abcdef"
CHUNK_BYTES = 8192


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """One connection sending chunks back to back, each waiting for its answer (as a recorder with one credit would)."""

    def __init__(self, url: str, index: int, transport: str, keep_sending: bool) -> None:
        self.url, self.index, self.transport, self.keep_sending = url, index, transport, keep_sending
        self.client = socketio.AsyncClient(reconnection=False)
        self.sent = 0
        self.acked: list[int] = []
        self.refused: dict[str, int] = {}
        self.cut = 0  # sent, unanswered when the connection closed
        self.disconnected = asyncio.Event()
        self.client.on("disconnect", lambda *args: self.disconnected.set())

    async def connect(self) -> None:
        token = create_token(SECRET, f"user{self.index}")
        await self.client.connect(self.url, auth={"token": token}, transports=[self.transport], wait_timeout=10)

    async def run(self, sending: asyncio.Event) -> None:
        seq = 0
        session = f"stop-{self.index}"
        while sending.is_set() and self.client.connected:
            audio = os.urandom(CHUNK_BYTES)
            payload = {"sessionId": session, "sequence": seq, "timestamp": 1_732_350_000_000 + seq * 1000,
                       "mimeType": "audio/webm;codecs=opus", "audio": audio}
            self.sent += 1
            # A recorder stops waiting for answers when its connection closes (socket.io-client rejects them): a
            # chunk the server had not received by then is not acked, and is resent after reconnecting.
            call = asyncio.ensure_future(self.client.call("audio-chunk", payload, timeout=15))
            cut = asyncio.ensure_future(self.disconnected.wait())
            await asyncio.wait([call, cut], return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
            if not call.done():  # an answer that came just before the close is still being delivered
                await asyncio.wait([call], timeout=0.5)
            if not call.done() or call.exception() is not None:
                call.cancel()
                self.cut += 1
                return
            reply = call.result()
            if isinstance(reply, dict) and "chunkId" in reply:
                self.acked.append(seq)
                seq += 1
            else:
                code = reply.get("error", {}).get("code", "?") if isinstance(reply, dict) else "?"
                self.refused[code] = self.refused.get(code, 0) + 1
                if not self.keep_sending:
                    return
                await asyncio.sleep(0)




async def one_run(recorders: int, keep_sending: bool, idle: bool, shutdown_timeout: float, show_log: bool = False,
                  transports: tuple[str, ...] = ("websocket", "polling")) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        port = _free_port()
        env = {**os.environ, "DATA_DIR": tmp, "STORAGE_DIR": f"{tmp}/chunks", "SCRIBEAI_SECRET": SECRET,
               "TRANSCRIBER": "none", "HOST": "127.0.0.1", "PORT": str(port), "SHUTDOWN_TIMEOUT": str(shutdown_timeout),
               "RETENTION_SCHEDULE": "off", "DEMO": "off"}
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", env=env, cwd=tmp,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        lines: list[bytes] = []
        times: list[float] = []

        async def read_log() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                lines.append(line)
                times.append(time.perf_counter())
        reader = asyncio.create_task(read_log())
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(url, process)
            clients = [Recorder(url, i, transports[i % len(transports)], keep_sending) for i in range(recorders)]
            await asyncio.gather(*(c.connect() for c in clients))
            sending = asyncio.Event()
            tasks = []
            if not idle:
                sending.set()
                tasks = [asyncio.create_task(c.run(sending)) for c in clients]
                await asyncio.sleep(1.0)
            before = len(lines)
            started = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), shutdown_timeout * 3 + 60)
            stop_s = time.perf_counter() - started
            await reader
            sending.clear()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
            for c in clients:
                await c.client.shutdown()
            stored = {p.name for p in Path(tmp, "chunks").rglob("*.webm")}
            missing = sum(1 for c in clients for seq in c.acked if f"stop-{c.index}_{seq:04d}.webm" not in stored)
            text = b"".join(lines).decode(errors="replace")
            if show_log:
                for at, line in list(zip(times, lines))[before:before + 200]:
                    print(f"  +{at - started:6.2f} s  {line.decode(errors='replace').rstrip()[:160]}")
            return {
                "stopS": round(stop_s, 2), "exitCode": code, "recorders": recorders,
                "chunksSent": sum(c.sent for c in clients), "acked": sum(len(c.acked) for c in clients),
                "refused": {k: sum(c.refused.get(k, 0) for c in clients) for k in sorted({k for c in clients for k in c.refused})},
                "cutByDisconnect": sum(c.cut for c in clients), "ackedNotOnDisk": missing,
                "disconnected": sum(1 for c in clients if c.disconnected.is_set()),
                "logLinesDuringStop": len(lines) - before,
                "claimedStillInFlight": "still in flight" in text or "still being stored" in text,
            }
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            reader.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorders", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-sending", action="store_true", help="recorders go on sending after `unavailable`")
    parser.add_argument("--idle", action="store_true", help="recorders connected, sending nothing")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0, help="SHUTDOWN_TIMEOUT of the server (its default)")
    parser.add_argument("--transport", choices=["both", "websocket", "polling"], default="both",
                        help="the recorders' transport (both: half each)")
    parser.add_argument("--log", action="store_true", help="print the server's first 60 log lines of the stop, timed")
    parser.add_argument("--json", type=Path, help="write the runs here")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        try:
            run = await one_run(args.recorders, args.keep_sending, args.idle, args.shutdown_timeout, args.log,
                                ("websocket", "polling") if args.transport == "both" else (args.transport,))
        except (RuntimeError, TimeoutError) as exc:  # a server that would not start on a loaded machine: say so, go on
            print(f"run {i + 1}: failed: {exc!r}", flush=True)
            continue
        print(f"run {i + 1}: {json.dumps(run)}", flush=True)
        runs.append(run)
    if not runs:
        raise SystemExit("no run finished")
    times = [r["stopS"] for r in runs]
    print(f"stop: median {statistics.median(times):.2f} s, max {max(times):.2f} s over {len(runs)} runs "
          f"({args.recorders} recorders, {'idle' if args.idle else 'keep sending' if args.keep_sending else 'sending'})")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
