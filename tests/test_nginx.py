"""deploy/nginx/scribeai.conf in front of real `scribeai serve` processes (SQLite each, no Redis: what is tested
here is routing): a long-polling client stays on its node when another node comes back, upstream connections
are reused, and a request for a session a node does not hold is a warning, not an error."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer

from scribeai.app import create_app
from scribeai.settings import Settings
from tests.conftest import IN_CI, SECRET, token_for
from tests.processes import Processes, free_port, nginx_site, start_nginx
from tests.test_transcription import HELLO

NODES = ("serve-a", "serve-b")
FAIL_TIMEOUT_S = 5  # the site's fail_timeout: how long nginx leaves a node that failed out of the pool


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None:
        message = "nginx is not installed (Debian package nginx; `make test` installs it as root)"
        if IN_CI:
            pytest.fail(f"{message}; CI is set")
        pytest.skip(message)
    return found


class Site(Processes):
    """Two serve nodes (each its own SQLite and chunk folder) behind nginx on `url`."""

    def __init__(self, tmp: Path, nginx: str) -> None:
        super().__init__(tmp, {**os.environ, "SCRIBEAI_SECRET": SECRET, "TRANSCRIBER": "none", "DEMO": "off",
                               "RETENTION_SCHEDULE": "off", "PING_INTERVAL": "1", "PING_TIMEOUT": "2",
                               "LOG_LEVEL": "INFO", "REDIS_URL": ""})
        self.tmp, self.nginx = tmp, nginx
        self.ports = {name: free_port() for name in NODES}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.node: dict[str, asyncio.subprocess.Process] = {}

    async def serve(self, name: str) -> None:
        self.node[name] = await self.spawn(
            f"{name}-{len(self.processes)}", sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1",
            "--port", str(self.ports[name]), ready="ScribeAI listening",
            env={"NODE_ID": name, "DATA_DIR": str(self.tmp / name), "STORAGE_DIR": str(self.tmp / name / "chunks")})

    async def start(self, nodes: tuple[str, ...] = NODES) -> None:
        await asyncio.gather(*(self.serve(name) for name in nodes))
        site = nginx_site(self.port, {name: self.ports[name] for name in nodes})  # a node not started: not in the site
        await start_nginx(self, self.nginx, self.tmp, site, self.port)

    async def node_for(self, local_address: str = "127.0.0.1") -> str:
        """The node nginx gives a new connection from this address (the X-ScribeAI-Node header)."""
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{self.url}/healthz") as response:
            assert response.status == 200
            return response.headers["X-ScribeAI-Node"]

    def logs_of(self, name: str) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.name.startswith(f"{name}-"))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    site = Site(tmp_path, _nginx())
    try:
        yield site
    finally:
        await site.close()


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_node_that_comes_back_keeps_no_polling_client_from_its_new_node(site: Site) -> None:
    """A long-polling client whose node died moved to the other node; when its first node is back in nginx's
    pool, the client stays where its session is (before: nginx's address hash sent its next request home,
    which answered 400 'Invalid session', logged as ERROR, and the client had to connect again)."""
    await site.start()
    home = await site.node_for()
    other = next(n for n in NODES if n != home)
    connects: list[str] = []
    client = socketio.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=0.5)
    client.on("connect", lambda: connects.append(client.eio.sid))
    await client.connect(site.url, auth={"token": token_for("alice")}, transports=["polling"], wait_timeout=10)
    try:
        assert connects[0].startswith(f"{home}.")  # the session id names its node
        site.node[home].send_signal(signal.SIGKILL)
        await site.node[home].wait()
        await _until(lambda: len(connects) == 2 and client.connected, 15, "the client did not reconnect")
        assert connects[1].startswith(f"{other}.")
        await site.serve(home)  # back, same name, same port
        deadline = asyncio.get_running_loop().time() + FAIL_TIMEOUT_S + 10
        while await site.node_for() != home:  # nginx tries it again after the site's fail_timeout (5 s) ...
            assert asyncio.get_running_loop().time() < deadline, "nginx never took the node back"
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # ... while the client long-polls and pings (PING_INTERVAL=1) for a few rounds
        assert (len(connects), client.connected) == (2, True)  # and the moved client stays where it is
        ack = await client.call("audio-chunk", {"sessionId": "moved", "sequence": 0, "mimeType": "audio/wav",
                                                "timestamp": 1_732_350_000_000, "audio": HELLO}, timeout=5)
        assert (ack["sequence"], ack["duplicate"]) == (0, False)
    finally:
        await client.disconnect()
    for name in NODES:
        assert "Invalid session" not in site.logs_of(name)
        assert "does not hold" not in site.logs_of(name)


def _connections_to(port: int) -> set[int]:
    """The other end's port of every TCP connection with this port at one end (any state but listening, so
    closed ones in TIME_WAIT count too, on whichever side closed first), from /proc/net/tcp."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = (int(a.split(":")[1], 16) if ":" in a else a for a in line.split()[1:4])
        if state != "0A" and port in (local, remote):
            peers.add(remote if local == port else local)
    return peers


async def test_upstream_connections_are_reused(site: Site) -> None:
    """`keepalive` in the site works only if nginx does not send `Connection: close` upstream: 20 requests one
    after another, REST and Engine.IO handshakes, reach the node over one connection (before: one each)."""
    await site.start(("serve-a",))
    home = await site.node_for()
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            path = "/healthz" if i % 2 else "/socket.io/?EIO=4&transport=polling"
            async with http.get(f"{site.url}{path}", headers={"Authorization": f"Bearer {token_for('alice')}"}) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-ScribeAI-Node"] == home
    assert len(_connections_to(site.ports[home])) == 1  # node_for's request and these 20: one connection


async def test_a_request_for_a_session_this_node_does_not_hold_is_one_warning(caplog: pytest.LogCaptureFixture,
                                                                              tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, storage_dir=tmp_path / "chunks", transcriber="none",
                              node_id="serve-x", secret=SECRET, demo="off", retention_schedule="off"))
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(server.make_url("/socket.io/?EIO=4&transport=polling&sid=serve-y.gone")) as r:
                assert r.status == 400
        async with http.get(server.make_url("/socket.io/?EIO=4&transport=polling")) as r:
            assert (await r.text()).split('"sid":"')[1].startswith("serve-x.")
    records = [r for r in caplog.records if r.name == "engineio.server"]
    assert [(r.levelname, r.getMessage()) for r in records] == [(
        "WARNING", "a request for Engine.IO session serve-y.gone, which this node does not hold: the client "
        "reconnects (its node restarted or is gone, or the balancer does not route by session: docs/deployment.md)")]
