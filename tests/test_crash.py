"""Crash test: the real server is SIGKILLed while chunks are in flight and restarted; nothing acked is lost, nothing is stored twice.

Three recorders stream 60 chunks each (random 20-200 kB, known sha256) to `scribeai serve` running as a
subprocess. A recorder keeps every chunk it has no ack for and resends those after each reconnect. The
server is killed with SIGKILL five times while chunks are in flight and restarted on the same port and
data directory, then once more after every chunk went out once. A kill loses the acks the server had not
delivered yet; since which ones is luck, each recorder also drops the first ack of two chosen chunks (as
a crash would) so that those are certainly resent to a later server process, which must answer
duplicate:true with the chunk id it gave the first time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.conftest import SECRET, token_for

SESSIONS = 3
CHUNKS = 60
KILLS_IN_FLIGHT = 5
WINDOW = 4                    # chunks in flight per recorder
DROPPED_ACKS = (7, 31)        # per session: the recorder ignores the first ack of these, as if a crash ate it
DEADLINE_S = 50.0
USER = "crash-user"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m scribeai serve` on a fixed port and data directory; killed and restarted at will."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp_path / "data"
        self.storage_dir = tmp_path / "chunks"
        self.cwd = tmp_path
        self.log_path = tmp_path / "server.log"
        self.generation = 0           # bumped on every start: tells acks of different processes apart
        self.kills = 0
        self._killed: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.all_procs: list[subprocess.Popen[bytes]] = []
        self.settings: dict[str, str] = {}  # more environment for the next start (e.g. TRANSCRIBER, NODE_ID)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PORT", "STORAGE_DIR")}
        env.update(
            DATA_DIR=str(self.data_dir), STORAGE_DIR=str(self.storage_dir), ARCHIVE_STORAGE_PATH=str(self.cwd / "archives"),
            SCRIBEAI_SECRET=SECRET, SCRIBEAI_AUTH="jwt", TRANSCRIBER="none", HOST="127.0.0.1",
            RETENTION_SCHEDULE="off", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        return env

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.generation + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scribeai", "serve", "--port", str(self.port)],
                env=self.env(), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.all_procs.append(self.proc)
        self.generation += 1  # before it listens: a recorder may connect before /healthz is polled
        await self._wait_healthy(timeout=20.0)

    async def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"server did not answer /healthz within {timeout}s:\n{self.log()}")

    def signal_kill(self) -> None:
        """SIGKILL the current process now (once), without waiting for it."""
        assert self.proc is not None
        if self._killed is not self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self._killed = self.proc
            self.kills += 1

    async def kill(self) -> None:
        assert self.proc is not None
        self.signal_kill()
        await asyncio.to_thread(self.proc.wait, 10)

    def kill_all(self) -> None:
        for proc in self.all_procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    try:
        yield server
    finally:
        server.kill_all()  # whatever happened, no server outlives the test


@dataclass
class Ack:
    seq: int
    generation: int
    body: dict[str, Any]


@dataclass
class Recorder:
    """One session's recorder: keeps unacked chunks, resends them after every reconnect."""

    server: ServerProcess
    session_id: str
    chunks: dict[int, bytes]
    unacked: set[int] = field(default_factory=set)
    acks: list[Ack] = field(default_factory=list)
    dropped: list[Ack] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    connects: int = 0
    sends: int = 0
    waiting: asyncio.Event = field(default_factory=asyncio.Event)   # sent everything once; holds only unacked
    flush: asyncio.Event = field(default_factory=asyncio.Event)     # set after the last restart: resend until done
    on_ack: Callable[[], None] | None = None                         # the crash loop watches acks through this

    def __post_init__(self) -> None:
        self.unacked = set(self.chunks)
        self._to_drop = set(DROPPED_ACKS)
        self.sha = {seq: hashlib.sha256(data).hexdigest() for seq, data in self.chunks.items()}

    def payload(self, seq: int) -> dict[str, Any]:
        data = self.chunks[seq]
        return {"sessionId": self.session_id, "sequence": seq, "timestamp": 1_732_350_000_000 + seq * 1000,
                "mimeType": "audio/webm;codecs=opus", "size": len(data), "checksum": self.sha[seq], "audio": data}

    async def run(self) -> None:
        while self.unacked:
            client = socketio.AsyncClient(reconnection=False)
            lost = asyncio.Event()
            outstanding: dict[int, asyncio.Future[Any]] = {}

            async def on_disconnect(*_: Any, lost: asyncio.Event = lost,
                                    outstanding: dict[int, asyncio.Future[Any]] = outstanding) -> None:
                lost.set()
                for fut in outstanding.values():
                    if not fut.done():
                        fut.set_exception(ConnectionResetError("disconnected before the ack"))

            client.on("disconnect", on_disconnect)
            try:
                await client.connect(self.server.url, auth={"token": token_for(USER)}, transports=["websocket"],
                                     wait_timeout=5)
            except socketio.exceptions.ConnectionError:
                await asyncio.sleep(0.05)  # the server is down or starting: try again
                continue
            generation = self.server.generation
            self.connects += 1
            self.waiting.clear()
            try:
                await self._send_all(client, generation, lost, outstanding)
                while self.unacked and not lost.is_set() and not self.flush.is_set():
                    self.waiting.set()  # the rest goes out after the next reconnect
                    await _first(lost.wait(), self.flush.wait())
            finally:
                if client.connected:
                    await client.disconnect()

    async def _send_all(self, client: socketio.AsyncClient, generation: int, lost: asyncio.Event,
                        outstanding: dict[int, asyncio.Future[Any]]) -> None:
        window = asyncio.Semaphore(WINDOW)
        tasks = []
        for seq in sorted(self.unacked):
            await window.acquire()
            if lost.is_set():
                window.release()
                break
            task = asyncio.create_task(self._send_one(client, seq, generation, outstanding))
            task.add_done_callback(lambda _: window.release())
            tasks.append(task)
        await asyncio.gather(*tasks)

    async def _send_one(self, client: socketio.AsyncClient, seq: int, generation: int,
                        outstanding: dict[int, asyncio.Future[Any]]) -> None:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outstanding[seq] = fut

        def on_ack(*reply: Any) -> None:
            if not fut.done():
                fut.set_result(reply[0] if reply else None)

        try:
            self.sends += 1
            await client.emit("audio-chunk", self.payload(seq), callback=on_ack)
            reply = await asyncio.wait_for(fut, 10)
        except (ConnectionResetError, TimeoutError, socketio.exceptions.SocketIOError):
            return  # no ack: the chunk stays unacked and goes out again after the reconnect
        finally:
            outstanding.pop(seq, None)
        if not isinstance(reply, dict) or "error" in reply:
            self.errors.append({"seq": seq, "generation": generation, "reply": reply})
            return
        ack = Ack(seq, generation, reply)
        if seq in self._to_drop:
            self._to_drop.discard(seq)
            self.dropped.append(ack)  # as if the server died before this ack arrived
            return
        self.acks.append(ack)
        self.unacked.discard(seq)
        if self.on_ack is not None:
            self.on_ack()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _crash_loop(server: ServerProcess, recorders: list[Recorder], rng: random.Random) -> list[float]:
    """Kill the server at random moments while chunks are in flight, restart it each time; then once more at the end.

    Some kills land the instant an ack arrives, when the rest of that group commit is stored but its acks
    are still on the way (lost acks, resent, answered duplicate:true); others a few milliseconds later.
    """
    total = SESSIONS * CHUNKS
    thresholds = sorted(rng.sample(range(total // 12, total * 9 // 10), KILLS_IN_FLIGHT))
    restart_s = []
    for i, threshold in enumerate(thresholds):
        delay = 0.0 if i % 2 == 0 else rng.uniform(0.001, 0.02)
        reached = asyncio.Event()

        def check(threshold: int = threshold, delay: float = delay, reached: asyncio.Event = reached) -> None:
            if not reached.is_set() and sum(len(r.acks) for r in recorders) >= threshold:
                if delay == 0.0:
                    server.signal_kill()
                reached.set()

        for r in recorders:
            r.on_ack = check
        check()
        await reached.wait()
        await asyncio.sleep(delay)
        assert any(r.unacked for r in recorders), "a kill must happen while chunks are still in flight"
        await server.kill()
        t0 = time.monotonic()
        await server.start()
        restart_s.append(time.monotonic() - t0)
    for r in recorders:
        r.on_ack = None
    # Every chunk went out once; what is left has no ack yet (among them the dropped ones): crash once more.
    while not all(r.waiting.is_set() or not r.unacked for r in recorders):
        await asyncio.sleep(0.01)
    if any(r.unacked for r in recorders):
        await server.kill()
        await server.start()
    for r in recorders:
        r.flush.set()
    return restart_s


@pytest.mark.timeout(60)
async def test_sigkill_while_recording_loses_nothing_and_stores_once(server_process: ServerProcess) -> None:
    started = time.monotonic()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    server = server_process
    run = os.urandom(4).hex()
    recorders = [
        Recorder(server, f"crash-{run}-{i}", {seq: rng.randbytes(rng.randint(20_000, 200_000)) for seq in range(CHUNKS)})
        for i in range(SESSIONS)
    ]
    crash: asyncio.Task[list[float]] | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            await server.start()
            crash = asyncio.create_task(_crash_loop(server, recorders, rng))
            tasks = [crash, *(asyncio.create_task(r.run()) for r in recorders)]
            await asyncio.gather(*tasks)
    except TimeoutError:
        state = [(r.session_id, sorted(r.unacked), r.waiting.is_set(), r.flush.is_set(), r.connects, r.errors[-3:])
                 for r in recorders]
        raise AssertionError(f"not done after {DEADLINE_S}s (seed={seed}, generation={server.generation}): "
                             f"{state}\n{server.log()}") from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert crash is not None
    restart_s = crash.result()
    context = f"seed={seed}; server log tail:\n{server.log()}"

    # Every chunk acked, and exactly once stored: one first-time ack at most, one chunk id per chunk.
    for r in recorders:
        assert r.unacked == set(), context
        by_seq: dict[int, list[Ack]] = {}
        for ack in r.dropped + r.acks:
            by_seq.setdefault(ack.seq, []).append(ack)
            assert ack.body["sessionId"] == r.session_id
            assert ack.body["sequence"] == ack.seq
        assert sorted(by_seq) == list(range(CHUNKS))
        for seq, acks in by_seq.items():
            assert sum(1 for a in acks if a.body["duplicate"] is False) <= 1, (seq, acks, context)
            assert len({a.body["chunkId"] for a in acks}) == 1, (seq, acks, context)
        # The dropped acks' chunks were resent to a later server process, which knew them.
        assert [a.seq for a in r.dropped] == sorted(DROPPED_ACKS), r.dropped
        for dropped in r.dropped:
            later = [a for a in by_seq[dropped.seq] if a is not dropped]
            assert len(later) == 1, (later, context)
            assert later[0].generation > dropped.generation
            assert later[0].body["duplicate"] is True
            assert later[0].body["chunkId"] == dropped.body["chunkId"]

    # The server says nothing is missing.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for(USER)}"}) as http:
        for r in recorders:
            async with http.get(f"{server.url}/api/sessions/{r.session_id}/missing-chunks",
                                params={"lastSeq": str(CHUNKS - 1)}) as resp:
                assert resp.status == 200
                assert await resp.json() == {"missing": [], "maxSeq": CHUNKS - 1, "totalChunks": CHUNKS}

    await server.kill()  # read the files and the database as the last crash left them

    # One file per chunk with exactly the bytes sent; anything else is a temporary file of a chunk whose final file exists.
    leftovers = 0
    for r in recorders:
        folder = server.storage_dir / r.session_id
        names = sorted(p.name for p in folder.iterdir())
        finals = [n for n in names if not n.startswith(".")]
        temps = [n for n in names if n.startswith(".")]
        assert finals == [f"{r.session_id}_{seq:04d}.webm" for seq in range(CHUNKS)], context
        for seq in range(CHUNKS):
            data = (folder / f"{r.session_id}_{seq:04d}.webm").read_bytes()
            assert hashlib.sha256(data).hexdigest() == r.sha[seq], (r.session_id, seq)
        for name in temps:
            match = re.fullmatch(r"\.(.+\.webm)\.[0-9a-f]{32}\.tmp", name)
            assert match is not None, name
            assert match.group(1) in finals  # an acked chunk never lives only in a temporary file
        leftovers += len(temps)

    # The database holds one row per distinct chunk, with the right checksum and size.
    db = sqlite3.connect(f"file:{server.data_dir / 'scribeai.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT session_id, seq, sha256, size FROM chunk").fetchall()
    finally:
        db.close()
    expected = {(r.session_id, seq, r.sha[seq], len(r.chunks[seq])) for r in recorders for seq in range(CHUNKS)}
    assert len(rows) == SESSIONS * CHUNKS
    assert set(rows) == expected

    duplicates = sum(1 for r in recorders for a in r.acks if a.body["duplicate"])
    natural = duplicates - sum(len(r.dropped) for r in recorders)
    errors = [e for r in recorders for e in r.errors]
    elapsed = time.monotonic() - started
    assert errors == [], context
    print(f"\ncrash test: seed={seed} kills={server.kills} restarts={[round(s, 2) for s in restart_s]}s "
          f"sends={sum(r.sends for r in recorders)} connects={sum(r.connects for r in recorders)} "
          f"duplicate acks={duplicates} (from lost acks at kills: {natural}) error replies={len(errors)} "
          f"tmp leftovers={leftovers} elapsed={elapsed:.1f}s")
    assert elapsed < 60
