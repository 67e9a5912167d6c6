"""Hypothesis-generated hostile input against a real `scribeai serve` process (issue "Hardening").

Every Socket.IO event the server handles (and names it does not) gets generated payloads over raw Engine.IO
frames, on websocket and on long-polling, with the audio as a binary attachment, as base64 text or as any JSON;
every REST route gets generated paths, queries and bodies. After each example: the event was answered on its ack
with a reply or a known error code (never `internal`), the connection still works, and REST never answers 500.
After each test: the server is healthy, every acked chunk is on disk with its row, and no file lacks its row.

The server is a subprocess, so the examples run in plain synchronous Hypothesis tests (shrinking included).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SECRET, token_for

ROOT = Path(__file__).parent.parent
EVENTS = ["audio-chunk", "audioChunk", "joinSession", "stopSession", "start-session", "pause-session",
          "resume-session", "stop-session", "join", "leave"]
CODES = {"invalid", "too_large", "forbidden", "not_found", "conflict", "overloaded", "unavailable", "unauthorized"}
EXAMPLES = int(os.environ.get("SCRIBEAI_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REPLY_TIMEOUT_S = 10


@dataclass
class Server:
    url: str
    data: Path
    chunks: Path
    acked: set[tuple[str, int]] = field(default_factory=set)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("fuzz")
    port = _free_port()
    env = {**os.environ, "SCRIBEAI_SECRET": SECRET, "DATA_DIR": str(base / "data"), "STORAGE_DIR": str(base / "chunks"),
           "ARCHIVE_STORAGE_PATH": str(base / "archives"), "TRANSCRIBER": "none", "RETENTION_SCHEDULE": "off",
           "MAX_CHUNK_BYTES": "65536", "LOG_LEVEL": "WARNING", "DEMO": "off"}
    process = subprocess.Popen([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"scribeai serve did not start:\n{process.communicate()[1]}")
        time.sleep(0.2)
    yield Server(url, base / "data", base / "chunks")
    process.terminate()
    _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert "Traceback" not in log, log  # a bug anywhere in the run would have logged one


# -- raw Socket.IO clients -------------------------------------------------------------------------------------------


class WsClient:
    """Socket.IO over a raw websocket: text packets, binary attachments as binary frames."""

    def __init__(self, url: str, user: str) -> None:
        self.ws = websocket.create_connection(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                              timeout=REPLY_TIMEOUT_S)
        assert str(self.ws.recv()).startswith("0{")
        self.ws.send("40" + json.dumps({"token": token_for(user)}))
        assert str(self._next()).startswith("40{")
        self.ack_id = 0

    def _next(self) -> str | bytes:
        while True:
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")
                continue
            return frame

    def emit(self, event: str, payload: Any, attachments: list[bytes]) -> Any:
        self.ack_id += 1
        body = json.dumps([event, payload])
        self.ws.send(f"45{len(attachments)}-{self.ack_id}{body}" if attachments else f"42{self.ack_id}{body}")
        for data in attachments:
            self.ws.send_binary(data)
        while True:
            frame = self._next()
            assert isinstance(frame, str), f"binary frame from the server: {frame!r}"
            if frame.startswith(f"43{self.ack_id}["):
                return json.loads(frame[2 + len(str(self.ack_id)):])[0]
            assert frame.startswith("42["), f"unexpected frame before the ack: {frame[:200]!r}"

    def close(self) -> None:
        self.ws.close()


class PollingClient:
    """Socket.IO over Engine.IO long-polling: binary attachments go base64 ('b' packets) in the POST body."""

    def __init__(self, url: str, user: str) -> None:
        self.http = requests.Session()
        self.base = url + "/socket.io/?EIO=4&transport=polling"
        opened = self.http.get(self.base, timeout=REPLY_TIMEOUT_S).text
        assert opened.startswith("0{"), opened
        self.base += "&sid=" + json.loads(opened[1:])["sid"]
        self._post(["40" + json.dumps({"token": token_for(user)})])
        assert any(p.startswith("40{") for p in self._poll())
        self.ack_id = 0
        self.pending: list[str] = []

    def _post(self, packets: list[str]) -> None:
        response = self.http.post(self.base, data="\x1e".join(packets).encode(), timeout=REPLY_TIMEOUT_S)
        assert response.status_code == 200 and response.text.lower() == "ok", response.text

    def _poll(self) -> list[str]:
        packets = self.http.get(self.base, timeout=REPLY_TIMEOUT_S + 30).text.split("\x1e")
        if "2" in packets:
            self._post(["3"])
        return [p for p in packets if p != "2"]

    def emit(self, event: str, payload: Any, attachments: list[bytes]) -> Any:
        self.ack_id += 1
        body = json.dumps([event, payload])
        head = f"45{len(attachments)}-{self.ack_id}{body}" if attachments else f"42{self.ack_id}{body}"
        self._post([head] + ["b" + base64.b64encode(data).decode() for data in attachments])
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            for packet in self._poll():
                if packet.startswith(f"43{self.ack_id}["):
                    return json.loads(packet[2 + len(str(self.ack_id)):])[0]
                assert packet.startswith(("42[", "6")), f"unexpected packet before the ack: {packet[:200]!r}"
        raise AssertionError(f"no ack for {event} within {REPLY_TIMEOUT_S} s")

    def close(self) -> None:
        self.http.close()


# -- strategies ------------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
SESSION_IDS = st.one_of(st.sampled_from(["fuzz-a", "fuzz-b"]), st.text(max_size=140), JSON)
SEQUENCES = st.one_of(st.integers(min_value=-3, max_value=5), st.integers(min_value=-(2**80), max_value=2**80), JSON)
_BINARY = st.binary(min_size=1, max_size=4096).map(lambda b: ("binary", b))
AUDIO = st.one_of(_BINARY, _BINARY, _BINARY,  # mostly well-formed, so that many examples reach the store
                  st.binary(min_size=0, max_size=2048).map(lambda b: ("base64", base64.b64encode(b).decode())),
                  st.binary(min_size=70_000, max_size=70_000).map(lambda b: ("binary", b)),  # over MAX_CHUNK_BYTES
                  st.just(("binary", b"")), JSON.map(lambda v: ("json", v)))
CHUNK_FIELDS = {"sessionId": SESSION_IDS, "sequence": SEQUENCES, "mimeType": st.one_of(
    st.sampled_from(["audio/webm", "audio/webm;codecs=opus", "audio/ogg", "audio/wav", "audio/mp4"]), JSON),
    "durationMs": st.one_of(st.integers(min_value=-5, max_value=60_000), JSON), "userId": st.one_of(
    st.just("alice"), st.just("mallory"), JSON), "timestamp": JSON, "checksum": st.one_of(st.text(max_size=70), JSON)}
SESSION_FIELDS = {"sessionId": SESSION_IDS, "lastSeq": SEQUENCES, "title": JSON, "userId": st.one_of(st.just("alice"), JSON),
                  "source": JSON, "reason": JSON}


@st.composite
def chunk_payloads(draw: st.DrawFn, sessions: tuple[str, ...]) -> tuple[Any, list[bytes]]:
    """A valid chunk with some fields dropped or replaced by generated values, or (rarely) no object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(JSON), []
    payload: dict[str, Any] = {"sessionId": draw(st.sampled_from(sessions)),
                               "sequence": draw(st.integers(0, 40)), "mimeType": "audio/webm"}
    for name in draw(st.sets(st.sampled_from(sorted(CHUNK_FIELDS)), max_size=3)):
        if draw(st.booleans()) and name in payload:
            del payload[name]
        else:
            payload[name] = draw(CHUNK_FIELDS[name])
    kind, audio = draw(AUDIO)
    if kind == "binary":
        payload["audio"] = {"_placeholder": True, "num": 0}
        return payload, [audio]
    payload["audio"] = audio
    return payload, []


SESSION_PAYLOADS = st.one_of(st.fixed_dictionaries({}, optional=SESSION_FIELDS), JSON)


# -- checks ----------------------------------------------------------------------------------------------------------


def check_reply(server: Server, event: str, payload: Any, reply: Any) -> None:
    assert isinstance(reply, dict), reply
    if os.environ.get("FUZZ_DEBUG"):
        print("REPLY", event, (reply.get("error") or {}).get("code", "ok"), (reply.get("error") or {}).get("message", "")[:80])
    if "error" in reply:
        error = reply["error"]
        assert error["code"] in CODES, (event, payload, reply)  # never `internal`: that would be a bug
        assert isinstance(error["message"], str) and error["message"], reply
        return
    if event in ("audio-chunk", "audioChunk"):
        assert reply["chunkId"] and reply["sessionId"] == payload["sessionId"], reply
        server.acked.add((payload["sessionId"], int(payload["sequence"])))


def check_storage(server: Server) -> None:
    """Every acked chunk has its row and its file; every file under STORAGE_DIR has its row."""
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    with sqlite3.connect(f"file:{server.data / 'scribeai.db'}?mode=ro", uri=True) as db:
        rows = {(sid, seq): path for sid, seq, path in db.execute("SELECT session_id, seq, path FROM chunk")}
    files = {p.resolve() for p in server.chunks.rglob("*") if p.is_file()}
    owned = {(server.chunks / path).resolve(): key for key, path in rows.items()}
    assert server.acked <= set(rows), server.acked - set(rows)
    assert not files - set(owned), files - set(owned)  # no file without its row (no temporary left either)
    missing = {owned_key for path, owned_key in owned.items() if owned_key in server.acked and path not in files}
    assert not missing, missing  # every acked chunk's file is there


def still_serves(client: WsClient | PollingClient, server: Server) -> None:
    reply = client.emit("joinSession", {"sessionId": "fuzz-a", "lastSeq": -1}, [])
    assert "error" not in reply, reply


# -- tests -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_generated_chunks_are_answered_and_nothing_is_orphaned(server: Server, transport: str) -> None:
    client = WsClient(server.url, "alice") if transport == "websocket" else PollingClient(server.url, "alice")
    acked_before = len(server.acked)

    @FUZZ
    @given(event=st.sampled_from(["audio-chunk", "audioChunk"]), sent=chunk_payloads((f"{transport}-a", f"{transport}-b")))
    def example(event: str, sent: tuple[Any, list[bytes]]) -> None:
        payload, attachments = sent
        check_reply(server, event, payload, client.emit(event, payload, attachments))

    try:
        example()
        still_serves(client, server)
    finally:
        client.close()
    assert len(server.acked) > acked_before  # some generated chunks were valid and stored: the store path was exercised
    check_storage(server)


def test_generated_session_events_are_answered(server: Server) -> None:
    client = WsClient(server.url, "alice")

    @FUZZ
    @given(event=st.one_of(st.sampled_from(EVENTS[2:]), st.text(min_size=1, max_size=30)), payload=SESSION_PAYLOADS,
           extra=st.lists(JSON, max_size=2))
    def example(event: str, payload: Any, extra: list[Any]) -> None:
        if event in ("connect", "disconnect", "connect_error"):
            return  # reserved names close nothing but are covered by test_hostile.py
        client.ack_id += 1
        frame = f"42{client.ack_id}" + json.dumps([event, payload, *extra])
        client.ws.send(frame)
        while True:
            got = client._next()
            assert isinstance(got, str)
            if got.startswith(f"43{client.ack_id}["):
                reply = json.loads(got[2 + len(str(client.ack_id)):])
                break
        assert reply, frame  # every event answers its ack with something
        check_reply(server, event, payload, reply[0])

    try:
        example()
        still_serves(client, server)
    finally:
        client.close()
    check_storage(server)


REST_ROUTES = [("GET", "/api/sessions"), ("POST", "/api/sessions"), ("GET", "/api/sessions/{id}"),
               ("GET", "/api/sessions/{id}/missing-chunks"), ("GET", "/api/sessions/{id}/transcript"),
               ("POST", "/api/sessions/{id}/stop"), ("POST", "/api/sessions/{id}/retry-failed"),
               ("GET", "/api/server/stats"), ("GET", "/api/storage/metrics"), ("GET", "/readyz"), ("GET", "/healthz"),
               ("GET", "/api/openapi.json")]
QUERY_KEYS = st.sampled_from(["limit", "cursor", "status", "lastSeq", "format", "x"])


def test_generated_rest_requests_never_fail_the_server(server: Server) -> None:
    http = requests.Session()
    headers = {"Authorization": f"Bearer {token_for('alice')}"}

    @FUZZ
    @given(route=st.sampled_from(REST_ROUTES), session_id=st.one_of(st.just("fuzz-a"), st.text(min_size=1, max_size=300)),
           query=st.dictionaries(QUERY_KEYS, st.text(max_size=30), max_size=3),
           body=st.one_of(st.none(), JSON.map(lambda v: ("json", v)), st.binary(max_size=2048).map(lambda b: ("raw", b)),
                          st.integers(100, 3000).map(lambda d: ("raw", ("[" * d + "]" * d).encode()))))
    def example(route: tuple[str, str], session_id: str, query: dict[str, str], body: Any) -> None:
        method, path = route
        url = server.url + path.replace("{id}", requests.utils.quote(session_id, safe=""))
        kwargs: dict[str, Any] = {"params": query, "headers": dict(headers), "timeout": REPLY_TIMEOUT_S}
        if body is not None and method == "POST":
            kind, value = body
            kwargs["data"] = json.dumps(value).encode() if kind == "json" else value
            kwargs["headers"]["Content-Type"] = "application/json"
        response = http.request(method, url, **kwargs)
        assert response.status_code < 500 or (path == "/readyz" and response.status_code == 503), \
            (method, url, response.status_code, response.text[:300])
        if response.status_code >= 400 and path.startswith("/api/"):
            error = response.json()["error"]
            assert error["code"] != "internal" and error["message"], response.text

    try:
        example()
    finally:
        http.close()
    check_storage(server)
