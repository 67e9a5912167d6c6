"""The OpenAPI document: in step with the router, and the live server checked against it by schemathesis."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import update

from scribeai.models import Chunk, ChunkStatus, RecordingSession, TranscriptSegment, utcnow
from tests.conftest import RunningServer, chunk, token_for

AUDIO = os.urandom(1000)
SEEDED = "seeded-session"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
# A deeper local run: SCRIBEAI_SCHEMATHESIS_ARGS="--max-examples 500 --checks all" (later options win).
EXTRA_ARGS = shlex.split(os.environ.get("SCRIBEAI_SCHEMATHESIS_ARGS", ""))
SCHEMATHESIS_TIMEOUT_S = 600 if EXTRA_ARGS else 90


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every REST route; HEAD and OPTIONS are aiohttp's and aiohttp-cors' own.

    The demo page's routes (scribeai.demo: static files, its config, the redirect from /) are no REST API.
    """
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and not route.resource.canonical.startswith("/socket.io/")
        and route.method not in ("HEAD", "OPTIONS") and route.handler.__module__ != "scribeai.demo"
    }


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


async def fetch_spec(server: RunningServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/openapi.json") as response:  # no token: a public route
            assert response.status == 200
            assert response.content_type == "application/json"
            return dict(await response.json())


async def test_spec_covers_exactly_the_routes(server: RunningServer) -> None:
    spec = await fetch_spec(server)
    assert spec["openapi"] == "3.1.0"
    assert spec_operations(spec) == router_operations(server.app)
    public = {(m.upper(), p) for p, item in spec["paths"].items() for m, op in item.items() if op.get("security") == []}
    assert public == {("GET", "/healthz"), ("GET", "/api/openapi.json")}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "500" in operation["responses"], (method, path)
            if path.startswith("/api/") and operation.get("security") != []:
                assert "401" in operation["responses"], (method, path)


async def seed(server: RunningServer, connect: Any) -> None:
    """A session with chunks, a gap, a failed chunk and a segment; and one with an archive, so 200s carry data."""
    client = await connect(server.url)
    acks = [await client.call("audio-chunk", chunk(SEEDED, seq, AUDIO, durationMs=15000), timeout=5) for seq in (0, 1, 3)]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_for('alice')}"}) as http:
        async with http.post(f"{server.url}/api/sessions", json={"id": "archived-session", "title": "Old"}) as response:
            assert response.status == 201
    now = utcnow()
    async with server.services.db.write() as s:
        s.add(TranscriptSegment(session_id=SEEDED, seq=0, chunk_id=acks[0]["chunkId"], start_ms=0, end_ms=15000,
                                text="hello world", speaker=None, confidence=0.9))
        await s.execute(update(Chunk).where(Chunk.session_id == SEEDED, Chunk.seq == 1)
                        .values(status=ChunkStatus.FAILED, error="cannot decode"))
        await s.execute(update(RecordingSession).where(RecordingSession.id == "archived-session").values(
            tier="warm", archive_path="archived-session.zip", archive_sha256="0" * 64, archive_bytes=123, archived_at=now))


async def test_schemathesis_finds_no_violation(server: RunningServer, connect: Any, tmp_path: Path) -> None:
    await seed(server, connect)
    spec = await fetch_spec(server)
    for item in spec["paths"].values():  # the explicit examples point at the seeded sessions
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "session_id":
                    parameter["examples"] = {"seeded": {"value": SEEDED}, "archived": {"value": "archived-session"}}
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(spec))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", str(schema), "--url", server.url,
        "--header", f"Authorization: Bearer {token_for('alice')}", "--checks", CHECKS,
        "--max-examples", "25", "--seed", "6", "--request-timeout", "10", "--workers", "1",
        "--generation-database", "none", "--no-color", "--output-truncate", "false", *EXTRA_ARGS,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), SCHEMATHESIS_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-20000:]


async def test_errors_the_fuzzer_does_not_reach_have_the_documented_shape(server: RunningServer) -> None:
    spec = await fetch_spec(server)
    responses = spec["components"]["responses"]

    def documented_code(name: str) -> str:
        return str(responses[name]["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]["const"])

    headers = {"Authorization": f"Bearer {token_for('alice')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/sessions", data=io.BytesIO(b"x" * (2 * 1024 * 1024)), headers=headers) as response:
            assert "413" in spec["paths"]["/api/sessions"]["post"]["responses"]
            assert (response.status, (await response.json())["error"]["code"]) == (413, documented_code("PayloadTooLarge"))
        async with http.delete(f"{server.url}/api/sessions", headers=headers) as response:
            assert (response.status, (await response.json())["error"]["code"]) == (405, documented_code("MethodNotAllowed"))
            assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
        async with http.get(f"{server.url}/api/sessions") as response:
            assert (response.status, (await response.json())["error"]["code"]) == (401, documented_code("Unauthorized"))
