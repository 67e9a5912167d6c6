"""Shared fixtures: real servers on ephemeral ports, over SQLite files and (where reachable) PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from scribeai.app import create_app
from scribeai.auth import create_token
from scribeai.services import Services, services_key
from scribeai.settings import Settings

SECRET = "test-secret-for-the-suite-only-0123456789"
POSTGRES_URL = os.environ.get("SCRIBEAI_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SCRIBEAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, port: int) -> None:
    """Skip with a reason when a service is missing; in CI a missing service is a failure."""
    if _reachable(url, port):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message} (CI is set: the service must be running)")
    pytest.skip(message)


@contextlib.asynccontextmanager
async def fresh_postgres_database(prefix: str) -> AsyncIterator[str]:
    """A PostgreSQL database of its own (not a schema), so other processes reach it by DATABASE_URL alone."""
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def token_for(user: str, role: str | None = None) -> str:
    return create_token(SECRET, user, role=role)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_service("PostgreSQL", POSTGRES_URL, 5432)
    return str(request.param)


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        storage_dir=tmp_path / "chunks",
        archive_storage_path=tmp_path / "archives",
        secret=SECRET,
        transcriber="none",
        ping_interval=2,
        ping_timeout=2,
        shutdown_timeout=2,
        retention_schedule="off",
        idle_flush_s=1.0,  # a session's last window is not held for 40 s in tests that wait for it
        gap_wait_s=3.0,
    )


@dataclasses.dataclass
class RunningServer:
    url: str
    app: web.Application
    settings: Settings
    schema: str | None = None

    @property
    def services(self) -> Services:
        return self.app[services_key]


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(base_settings: Settings, backend: str) -> AsyncIterator[ServerFactory]:
    """Start real servers: `await start_server(max_queue_size=2)`; all are closed after the test."""
    servers: list[TestServer] = []
    schemas: list[str] = []

    async def start(same_database_as: RunningServer | None = None, **overrides: Any) -> RunningServer:
        """A server; `same_database_as` shares another one's database (a restart, or a second node)."""
        settings = dataclasses.replace(base_settings, **overrides)
        schema = None
        if same_database_as is not None:
            schema = same_database_as.schema
            settings = dataclasses.replace(settings, database_url=same_database_as.settings.database_url)
        elif backend == "postgres" and not overrides.get("database_url"):
            schema = f"t_{uuid.uuid4().hex[:12]}"
            schemas.append(schema)
            settings = dataclasses.replace(settings, database_url=POSTGRES_URL)
        app = create_app(settings, db_schema=schema)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return RunningServer(str(server.make_url("")).rstrip("/"), app, settings, schema)

    yield start
    for server in servers:
        await server.close()
    if schemas:
        await _drop_schemas(schemas)


async def _drop_schemas(schemas: list[str]) -> None:
    import asyncpg

    dsn = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def server(start_server: ServerFactory) -> RunningServer:
    return await start_server()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[socketio.AsyncSimpleClient]]]:
    """Connected python-socketio clients, disconnected after the test."""
    clients: list[socketio.AsyncSimpleClient] = []

    async def open_client(url: str, user: str | None = "alice", namespace: str = "/", transport: str = "websocket",
                          **kwargs: Any) -> socketio.AsyncSimpleClient:
        client = socketio.AsyncSimpleClient()
        auth = {"token": token_for(user)} if user else None
        await client.connect(url, auth=auth, namespace=namespace, transports=[transport], wait_timeout=5, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        if client.connected:
            await client.disconnect()
    await asyncio.sleep(0)


def chunk(session_id: str, seq: int, audio: bytes, **extra: Any) -> dict[str, Any]:
    return {"sessionId": session_id, "sequence": seq, "timestamp": 1_732_350_000_000 + seq * 15000,
            "mimeType": "audio/webm;codecs=opus", "audio": audio, **extra}
