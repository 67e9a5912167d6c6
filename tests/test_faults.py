"""Fault injection (issue "Hardening"): full and read-only disks under STORAGE_DIR and the database, bad HTTP.

Faults are real: a small tmpfs filled up (ENOSPC), or remounted read-only (EROFS). The suite runs as root,
where chmod does not stop writes, so these tests need `mount` and skip where it is not allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from scribeai.app import create_app
from scribeai.errors import StartupCheckFailed
from tests.conftest import RunningServer, ServerFactory, chunk, token_for

AUDIO = b"\x1aE\xdf\xa3" + os.urandom(60_000)  # a WebM header, then noise


@pytest.fixture
def backend() -> str:
    """The faults are on local filesystems: SQLite files only."""
    return "sqlite"


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/scribeai-mount-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and mount (tmpfs) to make real disk faults")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, dict(await response.json())


async def send(client: Any, session_id: str, seq: int) -> dict[str, Any]:
    return dict(await client.call("audio-chunk", chunk(session_id, seq, AUDIO), timeout=10))


@needs_mount
async def test_full_storage_refuses_retryably_leaves_no_file_and_is_not_ready(
        start_server: ServerFactory, connect: Any, base_settings: Any) -> None:
    with tmpfs(base_settings.storage_dir, "1m") as storage:
        server = await start_server()
        client = await connect(server.url)
        filler = fill(storage)
        for seq in range(20):
            ack = await send(client, "full-disk", seq)
            assert ack["error"]["code"] == "unavailable", ack
            assert ack["error"]["reason"] == "storage_full" and ack["error"]["retryAfterMs"] > 0
        assert files_under(storage) == {"filler"}  # no temporary file, no final file
        status, body = await get(f"{server.url}/readyz")
        assert (status, body["reason"]) == (503, "storage_full")
        assert (await get(f"{server.url}/healthz"))[0] == 200
        filler.unlink()
        await asyncio.sleep(5.1)  # the remembered refusal expires after its retryAfterMs
        assert await get(f"{server.url}/readyz") == (200, {"status": "ok"})
        assert (await send(client, "full-disk", 0)).get("chunkId")


@needs_mount
async def test_read_only_storage_at_runtime_answers_storage_read_only(
        start_server: ServerFactory, connect: Any, base_settings: Any) -> None:
    with tmpfs(base_settings.storage_dir, "4m") as storage:
        server = await start_server()
        client = await connect(server.url)
        assert (await send(client, "ro-disk", 0)).get("chunkId")
        remount(storage, "ro")
        ack = await send(client, "ro-disk", 1)
        assert (ack["error"]["code"], ack["error"]["reason"]) == ("unavailable", "storage_read_only"), ack
        status, body = await get(f"{server.url}/readyz")
        assert (status, body["reason"]) == (503, "storage_read_only")
        remount(storage, "rw")


@needs_mount
async def test_full_database_refuses_retryably_and_leaves_no_orphan(
        start_server: ServerFactory, connect: Any, base_settings: Any) -> None:
    with tmpfs(base_settings.data_dir, "2m") as data:
        server = await start_server()
        client = await connect(server.url)
        assert (await send(client, "full-db", 0)).get("chunkId")
        filler = fill(data)
        for seq in range(1, 6):
            ack = await send(client, "full-db", seq)
            assert ack["error"]["code"] == "unavailable", ack
            assert ack["error"]["reason"] == "database_unavailable"
        # Only the committed chunk has a file: the refused ones were renamed into place, then undone.
        assert files_under(base_settings.storage_dir) == {"full-db/full-db_0000.webm"}
        assert (await get(f"{server.url}/readyz"))[0] == 503
        filler.unlink()
        assert (await send(client, "full-db", 1)).get("chunkId")


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(600)
"""


async def test_database_locked_by_another_process_refuses_retryably(
        start_server: ServerFactory, connect: Any, base_settings: Any) -> None:
    server = await start_server(db_busy_timeout_ms=300)
    client = await connect(server.url)
    assert (await send(client, "locked-db", 0)).get("chunkId")
    database = base_settings.data_dir / "scribeai.db"
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCK_HOLDER, str(database),
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None and await holder.stdout.readline() == b"locked\n"
        for seq in (1, 2):
            ack = await send(client, "locked-db", seq)
            assert (ack["error"]["code"], ack["error"]["reason"]) == ("unavailable", "database_unavailable"), ack
            assert "locked" in ack["error"]["message"] and ack["error"]["retryAfterMs"] > 0
        assert files_under(base_settings.storage_dir) == {"locked-db/locked-db_0000.webm"}  # no file without its row
        # A new session's first chunk: its session cannot be created either, and is answered the same way.
        ack = await send(client, "locked-new", 0)
        assert (ack["error"]["code"], ack["error"]["reason"]) == ("unavailable", "database_unavailable"), ack
        assert files_under(base_settings.storage_dir) == {"locked-db/locked-db_0000.webm"}
        status, body = await get(f"{server.url}/readyz")
        assert (status, body["reason"]) == (503, "database_unavailable")
        assert (await get(f"{server.url}/healthz"))[0] == 200
    finally:
        holder.kill()
        await holder.wait()
    ack = await send(client, "locked-db", 1)
    assert ack.get("chunkId"), ack
    assert files_under(base_settings.storage_dir) == {"locked-db/locked-db_0000.webm", "locked-db/locked-db_0001.webm"}


@needs_mount
async def test_read_only_database_refuses_to_start(start_server: ServerFactory, base_settings: Any) -> None:
    with tmpfs(base_settings.data_dir, "1m") as data:
        remount(data, "ro")
        with pytest.raises(StartupCheckFailed, match="database"):
            await start_server()


@needs_mount
def test_cli_exits_2_with_one_line_when_the_data_dir_is_read_only(tmp_path: Path) -> None:
    """No secret configured either: the generated secret cannot be written, and that is said in one line too."""
    with tmpfs(tmp_path / "data", "1m") as data:
        remount(data, "ro")
        for secret in ("fault-test-secret-0123456789abcdef0123", ""):
            env = {**os.environ, "STORAGE_DIR": str(tmp_path / "chunks"), "DATA_DIR": str(data), "PORT": "0",
                   "SCRIBEAI_SECRET": secret, "TRANSCRIBER": "none", "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING"}
            done = subprocess.run([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1"], env=env,
                                  capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
            assert done.returncode == 2, done.stderr
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "read-only" in lines[0].lower() and str(data) in lines[0], done.stderr


@needs_mount
async def test_read_only_storage_refuses_to_start(start_server: ServerFactory, base_settings: Any) -> None:
    with tmpfs(base_settings.storage_dir, "1m") as storage:
        remount(storage, "ro")
        with pytest.raises(StartupCheckFailed, match="storage_read_only"):
            await start_server()


@needs_mount
def test_cli_exits_2_with_one_line_when_storage_is_read_only(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "chunks", "1m") as storage:
        remount(storage, "ro")
        env = {**os.environ, "STORAGE_DIR": str(storage), "DATA_DIR": str(tmp_path / "data"), "PORT": "0",
               "SCRIBEAI_SECRET": "fault-test-secret-0123456789abcdef0123", "TRANSCRIBER": "none",
               "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING"}
        done = subprocess.run([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1"], env=env,
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "storage_read_only" in lines[0], done.stderr


async def test_deep_json_body_is_a_400(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {token_for('alice')}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{server.url}/api/sessions", data="[" * 10_000 + "]" * 10_000) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid"
        async with http.post(f"{server.url}/api/sessions", data=io.BytesIO(b'{"title": "' + b"x" * (2 << 20) + b'"}')) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "too_large"
        async with http.post(f"{server.url}/api/sessions", json={"title": "[[[{{{"}) as response:
            assert response.status == 201  # brackets inside strings are not nesting


async def test_rest_401_does_not_offer_query_token(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/sessions") as response:
        assert response.status == 401
        message = (await response.json())["error"]["message"]
    assert "?token=" not in message and "Authorization: Bearer" in message


def _raw(url: str, data: bytes, *, linger: float = 0.0) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        if linger:
            import time
            time.sleep(linger)
        with contextlib.suppress(OSError):
            sock.recv(4096)


@contextlib.asynccontextmanager
async def production_runner(settings: Any) -> Any:
    """The server as `scribeai serve` runs it: aiohttp's TestServer cancels handlers when a client leaves,
    which hides what production (handler_cancellation off, as in app.serve) logs for a client gone mid-body."""
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_malformed_requests_and_aborted_bodies_log_one_warning_each(
        base_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    token = token_for("alice").encode()
    aborted = (b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
               b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"title\": \"")
    async with production_runner(base_settings) as port:
        url = f"http://127.0.0.1:{port}"
        for _ in range(3):
            await asyncio.to_thread(_raw, url, bad)
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(aborted)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()  # the client goes away mid-body
        await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6 and all("\n" not in w for w in warnings), warnings
