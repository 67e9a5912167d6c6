"""REST session endpoints against a real server: ownership, pagination, gaps, JSON errors."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from tests.conftest import RunningServer, chunk, token_for

AUDIO = os.urandom(1000)


def auth(user: str, role: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user, role)}"}


async def request(method: str, url: str, user: str | None = "alice", role: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {**(auth(user, role) if user else {}), **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, headers=headers, **kwargs) as response:
            return response.status, await response.json()


async def test_healthz_needs_no_token(server: RunningServer) -> None:
    assert await request("GET", f"{server.url}/healthz", user=None) == (200, {"status": "ok"})


async def test_api_without_token_is_401_json(server: RunningServer) -> None:
    status, body = await request("GET", f"{server.url}/api/sessions", user=None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    status, body = await request("GET", f"{server.url}/api/sessions", user=None, headers={"Authorization": "Bearer junk"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_create_view_and_another_user_gets_404(server: RunningServer) -> None:
    status, created = await request("POST", f"{server.url}/api/sessions", json={"id": "rest-1", "title": "Weekly"})
    assert status == 201
    assert (created["id"], created["title"], created["status"], created["tier"], created["totalChunks"]) == ("rest-1", "Weekly", "recording", "hot", 0)
    status, generated = await request("POST", f"{server.url}/api/sessions", json={})
    assert status == 201 and len(generated["id"]) == 32
    for path in ("", "/missing-chunks", "/transcript"):
        status, body = await request("GET", f"{server.url}/api/sessions/rest-1{path}", user="mallory")
        assert (status, body["error"]["code"]) == (404, "not_found"), path
    status, body = await request("POST", f"{server.url}/api/sessions/rest-1/stop", user="mallory")
    assert status == 404
    status, body = await request("GET", f"{server.url}/api/sessions/does-not-exist")
    assert status == 404


async def test_missing_chunks_counts_and_stop(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    status, body = await request("POST", f"{server.url}/api/sessions", json={"id": "gaps"})
    assert (await request("GET", f"{server.url}/api/sessions/gaps/missing-chunks")) == (200, {"missing": [], "maxSeq": -1, "totalChunks": 0})
    for seq in (0, 2, 5):
        await client.call("audio-chunk", chunk("gaps", seq, AUDIO, durationMs=15000), timeout=5)
    assert (await request("GET", f"{server.url}/api/sessions/gaps/missing-chunks")) == (200, {"missing": [1, 3, 4], "maxSeq": 5, "totalChunks": 3})
    status, view = await request("GET", f"{server.url}/api/sessions/gaps")
    assert (view["totalChunks"], view["bytes"], view["durationMs"]) == (3, 3000, 45000)
    assert view["chunksByStatus"] == {"stored": 3}
    status, stopped = await request("POST", f"{server.url}/api/sessions/gaps/stop", json={"lastSeq": 6})
    assert status == 200
    assert (stopped["status"], stopped["missing"]) == ("stopped", [1, 3, 4, 6])


async def test_list_is_own_newest_first_paginated_and_filtered(server: RunningServer) -> None:
    for i in range(5):
        await request("POST", f"{server.url}/api/sessions", json={"id": f"list-{i}"})
    await request("POST", f"{server.url}/api/sessions", user="bob", json={"id": "bobs"})
    await request("POST", f"{server.url}/api/sessions/list-1/stop")
    seen: list[str] = []
    cursor = None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        status, page = await request("GET", f"{server.url}/api/sessions{query}")
        assert status == 200 and len(page["sessions"]) <= 2
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [f"list-{i}" for i in (4, 3, 2, 1, 0)]
    status, stopped = await request("GET", f"{server.url}/api/sessions?status=stopped")
    assert [s["id"] for s in stopped["sessions"]] == ["list-1"]


async def test_bad_parameters_are_400_json(server: RunningServer) -> None:
    for query in ("?limit=0", "?limit=abc", "?cursor=%%%", "?status=weird"):
        status, body = await request("GET", f"{server.url}/api/sessions{query}")
        assert (status, body["error"]["code"]) == (400, "invalid"), query
    status, body = await request("POST", f"{server.url}/api/sessions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, "invalid")
    status, body = await request("POST", f"{server.url}/api/sessions", json={"id": "bad id!"})
    assert (status, body["error"]["code"]) == (400, "invalid")
    status, body = await request("POST", f"{server.url}/api/sessions", json=[1])
    assert (status, body["error"]["code"]) == (400, "invalid")


async def test_unknown_route_and_wrong_method_are_json(server: RunningServer) -> None:
    status, body = await request("GET", f"{server.url}/api/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not_found")
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{server.url}/api/sessions", headers=auth("alice")) as response:
            assert response.status == 405
            assert "GET" in response.headers["Allow"]
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_cors_preflight_for_rest(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{server.url}/api/sessions", headers={
            "Origin": "http://recorder.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "http://recorder.example"
        async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://recorder.example"}) as response:
            assert response.status == 200
            assert response.headers.getall("Access-Control-Allow-Origin") == ["http://recorder.example"]


async def test_server_stats_reports_load(server: RunningServer, connect: Any) -> None:
    client = await connect(server.url)
    await client.call("audio-chunk", chunk("stats", 0, AUDIO), timeout=5)
    await client.call("audio-chunk", chunk("stats", 0, AUDIO), timeout=5)
    status, stats = await request("GET", f"{server.url}/api/server/stats", role="admin")
    assert status == 200
    assert stats["scope"] == "server"
    assert stats["rssBytes"] > 10_000_000
    assert stats["connections"] == 1
    assert stats["counters"]["chunks_stored"] == 1
    assert stats["counters"]["chunks_duplicate"] == 1
    assert stats["transcription"]["engine"] == "none"
    assert (await request("GET", f"{server.url}/api/server/stats", user=None))[0] == 401


async def test_server_stats_show_other_users_only_their_own(start_server: Any, connect: Any) -> None:
    server = await start_server(admin_users="carol, dave")
    alice, bob = await connect(server.url, user="alice"), await connect(server.url, user="bob")
    await alice.call("audio-chunk", chunk("alice-s", 0, AUDIO), timeout=5)
    await alice.call("audio-chunk", chunk("alice-s", 1, AUDIO), timeout=5)
    await bob.call("audio-chunk", chunk("bob-s", 0, AUDIO), timeout=5)

    status, mine = await request("GET", f"{server.url}/api/server/stats", user="alice")
    assert status == 200
    assert mine == {"scope": "user", "userId": "alice", "connections": 1, "sessions": {"recording": 1},
                    "chunksByStatus": {"stored": 2}, "transcription": {"backlog": 0}}
    status, other = await request("GET", f"{server.url}/api/server/stats", user="nobody")
    assert (status, other["connections"], other["sessions"], other["chunksByStatus"]) == (200, 0, {}, {})
    for admin in ("carol", "dave"):  # listed in ADMIN_USERS, with a plain token
        status, whole = await request("GET", f"{server.url}/api/server/stats", user=admin)
        assert (status, whole["scope"], whole["connections"], whole["counters"]["chunks_stored"]) == (200, "server", 2, 3)
    status, whole = await request("GET", f"{server.url}/api/server/stats", user="alice", role="admin")
    assert (status, whole["scope"]) == (200, "server")
    status, body = await request("GET", f"{server.url}/api/server/stats", user="alice", role="superuser")
    assert (status, body["scope"]) == (200, "user")
