"""Storage tiers end to end: a real server stores real chunks, the `scribeai` CLI moves them hot -> warm -> cold."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import signal
import time as clock
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from scribeai.models import Chunk, RecordingSession
from scribeai.retention import (
    Decision,
    Move,
    Retention,
    RetentionBusy,
    RetentionLock,
    RetentionPolicy,
    SessionFacts,
    decide,
    next_run,
    parse_schedule,
)
from tests.conftest import RunningServer, ServerFactory, chunk, fresh_postgres_database, token_for
from tests.fake_openai import FakeTranscriptionAPI

ROOT = Path(__file__).resolve().parent.parent
AUDIO = Path(__file__).parent / "fixtures" / "audio"
DEFLATE64_FIXTURE = Path(__file__).parent / "fixtures" / "deflate64" / "d64.zip"
TIMESLICES = [AUDIO / f"timeslice_{i:04d}.webm" for i in range(4)]
WEBM = "audio/webm;codecs=opus"
T0 = datetime.now(timezone.utc)
POLICY = RetentionPolicy(retention_days=7, archive_retention_days=30)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


# -- the policy, pure ----------------------------------------------------------------------------------


def facts(tier: str = "hot", status: str = "stopped", idle_days: float = 8, **kw: Any) -> SessionFacts:
    return SessionFacts("s", status, tier, T0 - timedelta(days=idle_days), **kw)


@pytest.mark.parametrize(("row", "move"), [
    (facts(idle_days=6.9), Move.KEEP),
    (facts(idle_days=7.1), Move.ARCHIVE),
    (facts(status="recording", idle_days=8), Move.ARCHIVE),  # abandoned
    (facts(status="paused", idle_days=8), Move.ARCHIVE),
    (facts(status="recording", idle_days=8, latest_chunk_at=T0 - timedelta(days=1)), Move.KEEP),
    (facts(idle_days=8, live_chunks=3, unfinished_chunks=1), Move.WAIT),
    (facts("warm", archived_at=T0 - timedelta(days=29)), Move.KEEP),
    (facts("warm", archived_at=T0 - timedelta(days=30)), Move.COLD),
    (facts("warm", idle_days=8, archived_at=T0 - timedelta(days=40), live_chunks=1), Move.ARCHIVE),  # late chunk: merge
    (facts("warm", idle_days=2, archived_at=T0 - timedelta(days=40), live_chunks=1), Move.KEEP),
    (facts("cold", idle_days=400), Move.KEEP),
    (facts("cold", idle_days=9, live_chunks=2), Move.ARCHIVE),
])
def test_policy_moves(row: SessionFacts, move: str) -> None:
    assert decide(row, T0, POLICY).move == move


def test_policy_reasons_name_abandoned_sessions_and_the_queue() -> None:
    assert decide(facts(status="recording", idle_days=8), T0, POLICY) == Decision("s", Move.ARCHIVE, "abandoned (recording), idle for 8.0 days")
    assert decide(facts(live_chunks=2, unfinished_chunks=2), T0, POLICY) == Decision("s", Move.WAIT, "2 chunk(s) not transcribed yet")


def test_schedule_parsing_and_next_run() -> None:
    assert parse_schedule("02:00") == time(2, 0)
    assert parse_schedule("23:59:30") == time(23, 59, 30)
    assert parse_schedule("off") is None and parse_schedule("") is None
    for bad in ("2am", "25:00", "02:00:00:00"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    local = datetime(2026, 3, 10, 1, 30).astimezone()
    assert next_run(local, time(2, 0)) == datetime(2026, 3, 10, 2, 0).astimezone()
    assert next_run(local.replace(hour=2), time(2, 0)) == datetime(2026, 3, 11, 2, 0).astimezone()
    assert next_run(local.replace(hour=3), time(2, 0)) == datetime(2026, 3, 11, 2, 0).astimezone()


# -- harness ---------------------------------------------------------------------------------------------


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database the CLI can reach by URL alone: a SQLite file, or a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'scribeai.db'}"
        return
    async with fresh_postgres_database("retention") as url:
        yield url


@pytest.fixture
def start(database_url: str, start_server: ServerFactory) -> Callable[..., Awaitable[RunningServer]]:
    # database_url first: set up before the servers, so it is dropped only after they are closed.
    async def run(**overrides: Any) -> RunningServer:
        return await start_server(database_url=database_url, **overrides)
    return run


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


def cli_env(server: RunningServer) -> dict[str, str]:
    s = server.settings
    return {**os.environ, "DATABASE_URL": s.effective_database_url, "DATA_DIR": str(s.data_dir), "STORAGE_DIR": str(s.storage_dir),
            "ARCHIVE_STORAGE_PATH": str(s.archive_storage_path), "RETENTION_DAYS": "7", "ARCHIVE_RETENTION_DAYS": "30",
            "SCRIBEAI_SECRET": s.secret, "TRANSCRIBER": "none", "LOG_LEVEL": "WARNING"}


async def spawn(server: RunningServer, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", *args, cwd=ROOT, env=cli_env(server),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def cli(server: RunningServer, *args: str) -> tuple[int, Any, str]:
    """Run `scribeai ARGS` as its own process; stdout parsed as JSON when --json was given."""
    proc = await spawn(server, *args)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    return proc.returncode or 0, json.loads(text) if "--json" in args else text, err.decode()


async def run_at(server: RunningServer, days: float, *extra: str) -> tuple[int, dict[str, Any]]:
    code, report, _ = await cli(server, "retention", "run", "--now", at(days), "--json", *extra)
    return code, report


def ids(items: list[dict[str, Any]]) -> list[str]:
    return sorted(item["sessionId"] for item in items)


async def send(client: Any, session_id: str, blobs: list[bytes], first_seq: int = 0, mime: str = WEBM) -> None:
    for seq, data in enumerate(blobs, first_seq):
        ack = await client.call("audio-chunk", chunk(session_id, seq, data, mimeType=mime), timeout=10)
        assert ack["duplicate"] is False, ack


async def api(method: str, url: str, user: str | None = "alice", role: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token_for(user, role)}"} if user else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, headers=headers) as response:
            return response.status, await response.json()


async def stop(server: RunningServer, *session_ids: str) -> None:
    for sid in session_ids:
        assert (await api("POST", f"{server.url}/api/sessions/{sid}/stop"))[0] == 200


async def rows(server: RunningServer, session_id: str) -> tuple[RecordingSession, list[Chunk]]:
    async with server.services.db.read() as s:
        session = await s.get(RecordingSession, session_id)
        chunks = list((await s.execute(select(Chunk).where(Chunk.session_id == session_id).order_by(Chunk.seq))).scalars())  # type: ignore[arg-type]
    assert session is not None
    return session, chunks


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 30,
                   state: Callable[[], Awaitable[Any]] | None = None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"condition not met in {timeout} s" + (f"; last state: {await state()!r}" if state else ""))
        await asyncio.sleep(0.05)


def files(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under the roots: size, mtime and sha256 (what a second run must not touch)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file() and path.name != "scribeai.db" and not path.name.startswith("scribeai.db"):
                st = path.stat()
                found[str(path)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


async def db_state(server: RunningServer) -> list[Any]:
    async with server.services.db.read() as s:
        sessions = [r.model_dump() for r in (await s.execute(select(RecordingSession).order_by(RecordingSession.id))).scalars()]  # type: ignore[arg-type]
        chunks = [r.model_dump() for r in (await s.execute(select(Chunk).order_by(Chunk.session_id, Chunk.seq))).scalars()]  # type: ignore[arg-type]
    return [sessions, chunks]


def chunk_dir(server: RunningServer, session_id: str) -> Path:
    return server.settings.storage_dir / session_id


def archive_of(server: RunningServer, session_id: str) -> Path:
    return server.settings.archive_storage_path / f"{session_id}.zip"


def temporaries(server: RunningServer) -> list[str]:
    return sorted(p.name for p in server.settings.archive_storage_path.glob(".*.tmp"))


def assert_archive_holds(path: Path, session_id: str, sent: list[bytes], ext: str = "webm") -> dict[str, Any]:
    """Members byte for byte, audio stored and metadata.json deflated; returns the metadata."""
    names = [f"{session_id}_{seq:04d}.{ext}" for seq in range(len(sent))]
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["metadata.json", *names]
        assert [zf.getinfo(n).compress_type for n in zf.namelist()] == [zipfile.ZIP_DEFLATED] + [zipfile.ZIP_STORED] * len(sent)
        assert [zf.read(n) for n in names] == sent
        metadata: dict[str, Any] = json.loads(zf.read("metadata.json"))
    assert metadata["session"]["id"] == session_id
    assert [(c["seq"], c["name"], c["size"], c["sha256"]) for c in metadata["chunks"]] == [
        (seq, names[seq], len(data), hashlib.sha256(data).hexdigest()) for seq, data in enumerate(sent)]
    return metadata


# -- the tiers over time ------------------------------------------------------------------------------------


async def test_tiers_over_time_with_the_cli(start: Any, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    """+1 day nothing moves; +8 stopped and abandoned sessions are archived, one with a queued chunk waits; +40 cold."""
    fake_api.fail_first = 1  # the first upload fails: that chunk waits an hour for its retry
    server = await start(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k",
                         transcribe_retry_base_s=3600)
    client = await connect(server.url)
    busy_audio = (AUDIO / "speech_fox.webm").read_bytes()
    await send(client, "busy", [busy_audio])

    async def busy_is_queued() -> bool:  # its window was tried once and waits for the retry
        return len(fake_api.requests) == 1 and (await rows(server, "busy"))[1][0].status == "transcribing"
    await wait_for(busy_is_queued)
    meeting = [p.read_bytes() for p in TIMESLICES]
    abandoned = [(AUDIO / n).read_bytes() for n in ("speech_stella.webm", "speech_train.webm")]
    await send(client, "meeting", meeting)
    await send(client, "abandoned", abandoned)  # never stopped: still "recording"
    await stop(server, "meeting", "busy")

    async def transcribed() -> bool:
        statuses = [c.status for sid in ("meeting", "abandoned") for c in (await rows(server, sid))[1]]
        return statuses == ["done"] * 6
    await wait_for(transcribed)
    transcripts = {sid: (await api("GET", f"{server.url}/api/sessions/{sid}/transcript"))[1]["segments"] for sid in ("meeting", "abandoned")}
    # segments are windows cut at pauses: the meeting's 16.6 s are one or two; the abandoned clips are 15 s apart
    # (a cut inside a chunk starts the second window at that chunk, a cut between chunks at the next one)
    windows = [(g["fromSeq"], g["seq"]) for g in transcripts["meeting"]]
    assert windows in ([(0, 3)], *([(0, cut), (start, 3)] for cut in range(4) for start in (cut, cut + 1))), windows
    assert [(g["fromSeq"], g["seq"]) for g in transcripts["abandoned"]] == [(0, 0), (1, 1)]
    storage, archives = server.settings.storage_dir, server.settings.archive_storage_path

    code, report = await run_at(server, 1)
    assert (code, report["archived"], report["cold"], report["waiting"], report["failed"]) == (0, [], [], [], [])

    before = (files(storage, archives), await db_state(server))
    code, report = await run_at(server, 8, "--dry-run")
    assert (code, report["dryRun"], ids(report["archived"]), ids(report["waiting"])) == (0, True, ["abandoned", "meeting"], ["busy"])
    assert (files(storage, archives), await db_state(server)) == before

    code, report = await run_at(server, 8)
    assert (code, report["ok"], ids(report["archived"]), report["cold"], report["failed"]) == (0, True, ["abandoned", "meeting"], [], [])
    assert report["waiting"] == [{"sessionId": "busy", "reason": "1 chunk(s) not transcribed yet"}]
    by_id = {a["sessionId"]: a for a in report["archived"]}
    assert by_id["abandoned"]["reason"] == "abandoned (recording), idle for 8.0 days"
    assert (by_id["meeting"]["chunks"], by_id["meeting"]["chunkBytes"], by_id["meeting"]["adopted"]) == (4, sum(map(len, meeting)), False)
    for sid, sent in (("meeting", meeting), ("abandoned", abandoned)):
        metadata = assert_archive_holds(archive_of(server, sid), sid, sent)
        assert metadata["transcript"] == transcripts[sid]
        assert not chunk_dir(server, sid).exists()
        session, chunks = await rows(server, sid)
        zip_bytes = archive_of(server, sid).read_bytes()
        assert (session.tier, session.archive_path, session.archive_bytes, session.archive_sha256) == (
            "warm", f"{sid}.zip", len(zip_bytes), hashlib.sha256(zip_bytes).hexdigest())
        assert [c.deleted_at for c in chunks] == [T0 + timedelta(days=8)] * len(sent)
        status, view = await api("GET", f"{server.url}/api/sessions/{sid}")
        assert (view["tier"], view["archive"]["path"], view["archive"]["bytes"]) == ("warm", f"{sid}.zip", len(zip_bytes))
        status, transcript = await api("GET", f"{server.url}/api/sessions/{sid}/transcript")
        assert (status, transcript["segments"]) == (200, transcripts[sid])
    assert (chunk_dir(server, "busy") / "busy_0000.webm").read_bytes() == busy_audio
    assert (await rows(server, "busy"))[0].tier == "hot"
    assert temporaries(server) == []

    before = (files(storage, archives), await db_state(server))
    code, report = await run_at(server, 8)  # idempotent: nothing left to do
    assert (code, report["archived"], report["cold"], ids(report["waiting"]), report["removed"]) == (
        0, [], [], ["busy"], {"temporaryArchives": 0, "orphanChunkFiles": 0, "unnamedChunkFiles": 0})
    assert (files(storage, archives), await db_state(server)) == before

    code, report = await run_at(server, 40)
    assert (code, report["archived"], ids(report["cold"]), ids(report["waiting"])) == (0, [], ["abandoned", "meeting"], ["busy"])
    assert sorted(p.name for p in archives.iterdir()) == []
    for sid in ("meeting", "abandoned"):
        session, _ = await rows(server, sid)
        assert (session.tier, session.archive_path, session.cold_at) == ("cold", None, T0 + timedelta(days=40))
        status, view = await api("GET", f"{server.url}/api/sessions/{sid}")
        assert (view["tier"], view["archive"]) == ("cold", None)
        status, transcript = await api("GET", f"{server.url}/api/sessions/{sid}/transcript")
        assert (status, transcript["tier"], transcript["segments"]) == (200, "cold", transcripts[sid])
    assert (chunk_dir(server, "busy") / "busy_0000.webm").read_bytes() == busy_audio
    code, report = await run_at(server, 40)
    assert (code, report["archived"], report["cold"]) == (0, [], [])


async def test_a_damaged_chunk_fails_only_its_own_session(start: Any, connect: Any) -> None:
    server = await start()
    client = await connect(server.url)
    blobs = {sid: [os.urandom(3000 + i) for i in range(3)] for sid in ("good", "bad", "gone")}
    for sid, sent in blobs.items():
        await send(client, sid, sent)
    await stop(server, *blobs)
    damaged = chunk_dir(server, "bad") / "bad_0001.webm"
    damaged.write_bytes(b"\x00" * 3001)  # same size, other bytes
    (chunk_dir(server, "gone") / "gone_0000.webm").unlink()

    code, report = await run_at(server, 8)
    assert (code, report["ok"], ids(report["archived"])) == (1, False, ["good"])
    failed = {f["sessionId"]: f["error"] for f in report["failed"]}
    assert sorted(failed) == ["bad", "gone"]
    assert failed["bad"].startswith("chunk 1 (bad_0001.webm) does not match its checksum: 3001 bytes with sha256 ")
    assert failed["gone"].startswith("chunk 0 (gone_0000.webm) is unreadable: [Errno 2] No such file or directory")
    assert_archive_holds(archive_of(server, "good"), "good", blobs["good"])
    assert damaged.read_bytes() == b"\x00" * 3001
    assert [p.read_bytes() for p in sorted(chunk_dir(server, "bad").iterdir())] == [blobs["bad"][0], b"\x00" * 3001, blobs["bad"][2]]
    assert [p.name for p in sorted(chunk_dir(server, "gone").iterdir())] == ["gone_0001.webm", "gone_0002.webm"]
    for sid in ("bad", "gone"):
        session, chunks = await rows(server, sid)
        assert (session.tier, [c.deleted_at for c in chunks], archive_of(server, sid).exists()) == ("hot", [None] * 3, False)
    assert temporaries(server) == []

    code, verified, _ = await cli(server, "archive", "verify", "bad", "--json")
    assert (code, verified["ok"], verified["problems"]) == (1, False, ["chunk 1 (bad_0001.webm) does not match its checksum"])


async def test_a_run_killed_while_archiving_is_finished_by_the_next(start: Any, connect: Any) -> None:
    """SIGKILL the CLI while it writes the ZIP, and again as the ZIP takes its final name; the third run completes."""
    server = await start(max_chunk_bytes=4 * 1024 * 1024)
    client = await connect(server.url)
    sent = {sid: [os.urandom(3 * 1024 * 1024) for _ in range(10)] for sid in ("big-a", "big-b")}
    for sid, blobs in sent.items():
        await send(client, sid, blobs)
    await stop(server, "big-a", "big-b")
    archives = server.settings.archive_storage_path

    async def kill_when(seen: Callable[[], bool]) -> int:
        proc = await spawn(server, "retention", "run", "--now", at(8), "--json")
        while proc.returncode is None and not seen():
            await asyncio.sleep(0.001)
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.communicate()
        return proc.returncode or 0

    assert await kill_when(lambda: archives.is_dir() and any(archives.glob(".big-a.zip.*.tmp"))) == -signal.SIGKILL
    assert [t.startswith(".big-a.zip.") for t in temporaries(server)] == [True]
    for sid, blobs in sent.items():  # nothing was deleted, nothing recorded
        session, chunks = await rows(server, sid)
        assert (session.tier, [c.deleted_at for c in chunks]) == ("hot", [None] * 10)
        assert [p.read_bytes() for p in sorted(chunk_dir(server, sid).iterdir())] == blobs

    second = await kill_when(lambda: archive_of(server, "big-a").exists())
    assert second in (-signal.SIGKILL, 0)
    session, _ = await rows(server, "big-a")
    code, report = await run_at(server, 8)
    assert (code, report["failed"]) == (0, [])
    # Whichever instant the second kill hit: the ZIP without its commit is adopted, or the commit's leftovers removed.
    done = ids(report["archived"])
    if session.tier == "hot":
        assert (done, {a["sessionId"]: a["adopted"] for a in report["archived"]}["big-a"]) == (["big-a", "big-b"], True)
    else:
        assert done in (["big-b"], [])
    for sid, blobs in sent.items():
        assert_archive_holds(archive_of(server, sid), sid, blobs)
        session, chunks = await rows(server, sid)
        assert (session.tier, all(c.deleted_at for c in chunks), chunk_dir(server, sid).exists()) == ("warm", True, False)
    assert temporaries(server) == []


async def test_interrupted_states_are_finished_in_process(start: Any, connect: Any) -> None:
    """Each state a crash can leave, made by hand, then one run: stray temp ZIP, ZIP without its commit
    (adopted; a damaged one rewritten), raw files after the commit, a warm session whose ZIP is already gone."""
    server = await start()
    client = await connect(server.url)
    sent = {sid: [os.urandom(2000 + i) for i in range(3)] for sid in ("adopt", "rewrite", "orphans", "zipless")}
    for sid, blobs in sent.items():
        await send(client, sid, blobs)
    await stop(server, *sent)
    retention = Retention(server.services.db, server.settings)
    report = await retention.run(T0 + timedelta(days=8))
    assert (report.ok, ids(report.archived)) == (True, sorted(sent))
    archives = server.settings.archive_storage_path

    # "adopt"/"rewrite": restored (commit done) but killed before the ZIP was deleted -> a ZIP the database does not know.
    kept = {sid: archive_of(server, sid).read_bytes() for sid in ("adopt", "rewrite")}
    for sid in ("adopt", "rewrite"):
        assert (await retention.restore(sid, T0))["restoredChunks"] == 3
        archive_of(server, sid).write_bytes(kept[sid])
    damaged = bytearray(kept["rewrite"])
    damaged[damaged.index(sent["rewrite"][1]) + 10] ^= 0xFF
    archive_of(server, "rewrite").write_bytes(bytes(damaged))
    adopted_inode = archive_of(server, "adopt").stat().st_ino
    # "orphans": killed after the commit, before the raw files were deleted.
    chunk_dir(server, "orphans").mkdir()
    for seq, data in enumerate(sent["orphans"]):
        (chunk_dir(server, "orphans") / f"orphans_{seq:04d}.webm").write_bytes(data)
    # A temporary ZIP of a killed writer.
    (archives / f".adopt.zip.{uuid.uuid4().hex}.tmp").write_bytes(b"PK\x03\x04 half a zip")

    report = await retention.run(T0 + timedelta(days=8))
    assert (report.ok, ids(report.archived), report.removed_temporary_archives, report.removed_orphan_chunk_files) == (
        True, ["adopt", "rewrite"], 1, 3)
    assert {a["sessionId"]: a["adopted"] for a in report.archived} == {"adopt": True, "rewrite": False}
    assert archive_of(server, "adopt").stat().st_ino == adopted_inode
    for sid, blobs in sent.items():
        assert_archive_holds(archive_of(server, sid), sid, blobs)
        assert ((await rows(server, sid))[0].tier, chunk_dir(server, sid).exists()) == ("warm", False)
    assert temporaries(server) == []

    # "zipless": killed after deleting the ZIP, before recording the session as cold.
    archive_of(server, "zipless").unlink()
    report = await retention.run(T0 + timedelta(days=40))
    assert (report.ok, ids(report.cold)) == (True, sorted(sent))
    assert sorted(archives.iterdir()) == []


async def test_a_file_no_row_names_is_swept_once_an_hour_old(start: Any, connect: Any) -> None:
    """A crash between a chunk's file (written under its final name) and its row leaves a file nobody names; the
    chunk is never resent. The daily run removes it once it is an hour old, never a file a row names."""
    server = await start()
    client = await connect(server.url)
    await send(client, "live", [os.urandom(3000), os.urandom(3001)])
    folder = chunk_dir(server, "live")
    old, young = folder / "live_0007.webm", folder / "live_0008.webm"
    for path in (old, young):
        path.write_bytes(os.urandom(500))
    elsewhere = chunk_dir(server, "gone")  # a first chunk whose session row never committed either
    elsewhere.mkdir()
    (elsewhere / "gone_0000.webm").write_bytes(os.urandom(500))
    two_hours_ago = clock.time() - 7200
    for path in (old, elsewhere / "gone_0000.webm", *[folder / f"live_{seq:04d}.webm" for seq in (0, 1)]):
        os.utime(path, (two_hours_ago, two_hours_ago))
    retention = Retention(server.services.db, server.settings)
    report = await retention.run(T0)
    assert (report.ok, report.removed_unnamed_chunk_files, report.removed_orphan_chunk_files) == (True, 2, 0)
    assert sorted(p.name for p in folder.iterdir()) == ["live_0000.webm", "live_0001.webm", "live_0008.webm"]
    assert not elsewhere.exists()
    assert report.wire()["removed"]["unnamedChunkFiles"] == 2
    report = await retention.run(T0)
    assert report.removed_unnamed_chunk_files == 0


async def test_untranscribed_chunk_keeps_its_session_hot(start: Any, connect: Any, fake_api: FakeTranscriptionAPI) -> None:
    fake_api.fail_first = 10**6
    server = await start(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k",
                         transcribe_retry_base_s=3600)
    client = await connect(server.url)
    hello = (AUDIO / "speech_hello.wav").read_bytes()
    await send(client, "queued", [hello, hello], mime="audio/wav")
    await stop(server, "queued")

    async def state() -> tuple[int, list[str], list[str]]:
        return len(fake_api.requests), [c.status for c in (await rows(server, "queued"))[1]], [repr(server.services.pipeline)]

    async def tried() -> bool:  # the first window failed and waits an hour for its retry; the second chunk waits too
        requests, statuses, _ = await state()
        return requests == 1 and statuses[0] == "transcribing" and statuses[1] in ("pending", "transcribing")
    await wait_for(tried, timeout=90, state=state)  # generous: under a loaded CI machine the first turn can be slow
    report = await Retention(server.services.db, server.settings).run(T0 + timedelta(days=400))
    assert (report.archived, report.waiting) == ([], [{"sessionId": "queued", "reason": "2 chunk(s) not transcribed yet"}])
    assert sorted(p.name for p in chunk_dir(server, "queued").iterdir()) == ["queued_0000.wav", "queued_0001.wav"]
    assert (await rows(server, "queued"))[0].tier == "hot"


# -- verify, restore, Deflate64 -----------------------------------------------------------------------------------


async def test_verify_and_restore_round_trip(start: Any, connect: Any) -> None:
    server = await start()
    client = await connect(server.url)
    sent = [p.read_bytes() for p in TIMESLICES]
    await send(client, "rt", sent)
    await stop(server, "rt")
    assert (await run_at(server, 8))[0] == 0
    zip_sha = hashlib.sha256(archive_of(server, "rt").read_bytes()).hexdigest()

    code, report, _ = await cli(server, "archive", "verify", "rt", "--json")
    assert (code, report["ok"], report["tier"], report["problems"], report["notes"]) == (0, True, "warm", [], [])
    assert report["archive"] == {"name": "rt.zip", "members": 4, "compression": {"deflate": 1, "stored": 4}, "sha256": zip_sha}

    code, restored, _ = await cli(server, "archive", "restore", "rt", "--json")
    assert (code, restored) == (0, {"sessionId": "rt", "tier": "hot", "restoredChunks": 4, "restoredBytes": sum(map(len, sent))})
    assert [p.read_bytes() for p in sorted(chunk_dir(server, "rt").iterdir())] == sent
    assert not archive_of(server, "rt").exists()
    session, chunks = await rows(server, "rt")
    assert (session.tier, session.archive_path, session.archived_at, [c.deleted_at for c in chunks]) == ("hot", None, None, [None] * 4)
    assert (await api("GET", f"{server.url}/api/sessions/rt"))[1]["tier"] == "hot"
    code, report, _ = await cli(server, "archive", "verify", "rt", "--json")
    assert (code, report["ok"], report["tier"], report["hotChunksChecked"]) == (0, True, "hot", 4)

    # Archived again; then one member's bytes rot on disk: verify names it, restore refuses and changes nothing.
    assert (await run_at(server, 8))[0] == 0
    assert_archive_holds(archive_of(server, "rt"), "rt", sent)
    data = bytearray(archive_of(server, "rt").read_bytes())
    data[data.index(sent[2]) + 100] ^= 0x01
    archive_of(server, "rt").write_bytes(bytes(data))
    code, report, _ = await cli(server, "archive", "verify", "rt", "--json")
    assert (code, report["ok"], report["problems"]) == (1, False, ["chunk 2 (rt_0002.webm) is unreadable: Bad CRC-32 for file 'rt_0002.webm'"])
    before = await db_state(server)
    code, failed, _ = await cli(server, "archive", "restore", "rt", "--json")
    assert (code, failed["error"]["code"]) == (1, "archive_failed")
    assert (await db_state(server), chunk_dir(server, "rt").exists()) == (before, False)


async def test_a_deflate64_archive_is_verified_and_restored(start: Any, connect: Any) -> None:
    """tests/fixtures/deflate64/d64.zip was repacked by 7-Zip with Deflate64 (scripts/make_deflate64_fixture.py)."""
    with zipfile.ZipFile(DEFLATE64_FIXTURE) as zf:
        assert {i.compress_type for i in zf.infolist()} == {9}
    server = await start()
    client = await connect(server.url)
    sent = [p.read_bytes() for p in TIMESLICES]
    await send(client, "d64", sent)
    await stop(server, "d64")
    assert (await run_at(server, 8))[0] == 0
    shutil.copyfile(DEFLATE64_FIXTURE, archive_of(server, "d64"))  # an operator's ZIP tool repacked it

    code, report, _ = await cli(server, "archive", "verify", "d64", "--json")
    assert (code, report["ok"], report["archive"]["members"], report["archive"]["compression"]) == (0, True, 4, {"deflate64": 5})
    assert report["notes"] == ["archive file differs from the one written (repacked?); every member still verifies"]
    code, restored, _ = await cli(server, "archive", "restore", "d64", "--json")
    assert (code, restored["restoredChunks"]) == (0, 4)
    assert [p.read_bytes() for p in sorted(chunk_dir(server, "d64").iterdir())] == sent


async def test_a_late_chunk_is_merged_into_the_archive(start: Any, connect: Any) -> None:
    server = await start()
    client = await connect(server.url)
    sent = [p.read_bytes() for p in TIMESLICES]
    await send(client, "late", sent[:3])
    await stop(server, "late")
    retention = Retention(server.services.db, server.settings)
    assert ids((await retention.run(T0 + timedelta(days=8))).archived) == ["late"]
    await send(client, "late", sent[3:], first_seq=3)  # a resend after a reconnect, days later
    session, chunks = await rows(server, "late")
    assert (session.tier, [c.deleted_at is None for c in chunks]) == ("warm", [False, False, False, True])
    report = await retention.run(T0 + timedelta(days=8))
    assert (report.ok, report.archived[0]["reason"], report.archived[0]["chunks"]) == (True, "1 late chunk(s) idle for 8.0 days", 4)
    assert_archive_holds(archive_of(server, "late"), "late", sent)
    assert not chunk_dir(server, "late").exists()


# -- metrics, lock, schedule --------------------------------------------------------------------------------------


async def test_storage_metrics_per_tier_over_rest_and_cli(start: Any, connect: Any) -> None:
    server = await start()
    client = await connect(server.url)
    sizes = {"m1": [1000, 2000], "m2": [3000, 4000, 5000], "m3": [700]}
    for sid, lengths in sizes.items():
        await send(client, sid, [os.urandom(n) for n in lengths])
    await stop(server, "m1", "m2")
    url = f"{server.url}/api/storage/metrics"
    assert (await api("GET", url, user=None))[0] == 401

    status, metrics = await api("GET", url)
    assert (status, metrics["tiers"]["hot"], metrics["archiveBytes"]) == (200, {"sessions": 3, "chunks": 6, "bytes": 15700, "chunkBytes": 15700}, 0)
    assert metrics["oldestHotSession"]["sessionId"] == "m3"  # m1 and m2 were active later: their stop
    assert metrics["saving"] == {"allHotBytes": 15700, "keptBytes": 15700, "savedBytes": 0, "savedRatio": 0.0}
    status, metrics = await api("GET", url, role="admin")
    assert metrics["freeDiskBytes"] == min(d["freeBytes"] for d in metrics["disk"].values()) > 0

    retention = Retention(server.services.db, server.settings)
    await retention.run(T0 + timedelta(days=8))  # every session: m3 counts as abandoned
    zips = sum(archive_of(server, sid).stat().st_size for sid in sizes)
    status, metrics = await api("GET", url)
    assert metrics["tiers"] == {"hot": {"sessions": 0, "chunks": 0, "bytes": 0, "chunkBytes": 0},
                                "warm": {"sessions": 3, "chunks": 6, "bytes": zips, "chunkBytes": 15700},
                                "cold": {"sessions": 0, "chunks": 0, "bytes": 0, "chunkBytes": 0}}
    assert (metrics["archiveBytes"], metrics["oldestHotSession"]) == (zips, None)
    assert metrics["saving"]["savedBytes"] == 15700 - zips  # opus does not compress: warm saves nothing, costs the ZIP framing

    await retention.run(T0 + timedelta(days=40))
    code, cli_metrics, _ = await cli(server, "storage", "metrics", "--json")
    assert code == 0
    assert cli_metrics["tiers"]["cold"] == {"sessions": 3, "chunks": 6, "bytes": 0, "chunkBytes": 15700}
    assert cli_metrics["saving"] == {"allHotBytes": 15700, "keptBytes": 0, "savedBytes": 15700, "savedRatio": 1.0}
    code, text, _ = await cli(server, "storage", "metrics")
    assert "saving against keeping everything hot: 15,700 of 15,700 bytes (100.0%)" in text


async def test_storage_metrics_are_the_users_own_unless_admin(start: Any, connect: Any) -> None:
    server = await start()
    await send(await connect(server.url, user="alice"), "alice-1", [os.urandom(1000), os.urandom(2000)])
    await send(await connect(server.url, user="bob"), "bob-1", [os.urandom(900)])
    url = f"{server.url}/api/storage/metrics"

    status, whole = await api("GET", url, user="bob", role="admin")
    assert (status, whole["scope"], whole["tiers"]["hot"]) == (200, "server", {"sessions": 2, "chunks": 3, "bytes": 3900, "chunkBytes": 3900})
    assert whole["oldestHotSession"]["sessionId"] == "alice-1" and whole["freeDiskBytes"] > 0
    status, own = await api("GET", url, user="bob")
    assert (status, own["scope"], own["tiers"]["hot"]) == (200, "user", {"sessions": 1, "chunks": 1, "bytes": 900, "chunkBytes": 900})
    assert own["oldestHotSession"]["sessionId"] == "bob-1"
    assert "disk" not in own and "freeDiskBytes" not in own  # the server's disks are not a user's business
    status, none = await api("GET", url, user="carol")
    assert (status, none["tiers"]["hot"]["sessions"], none["oldestHotSession"]) == (200, 0, None)


async def test_one_run_at_a_time_across_processes(start: Any, connect: Any) -> None:
    server = await start()
    client = await connect(server.url)
    await send(client, "locked", [b"x" * 100])
    lock = RetentionLock(server.services.db, server.settings)
    async with lock.hold():
        with pytest.raises(RetentionBusy):
            async with RetentionLock(server.services.db, server.settings).hold():
                pass
        code, out, err = await cli(server, "retention", "run", "--now", at(8))
        assert (code, out, err) == (3, "", "retention: another retention run holds the lock; try again later\n")
        code, out, err = await cli(server, "archive", "restore", "locked")
        assert code == 3
    code, out, err = await cli(server, "retention", "run", "--now", at(8))
    assert code == 0 and "archived  locked: abandoned (recording), idle for 8.0 days, 1 chunks" in out


async def test_the_server_runs_retention_at_the_scheduled_time(start: Any, connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RETENTION_SCHEDULE in three seconds: the first server finds the lock taken and skips; the second archives."""
    caplog.set_level(logging.INFO, logger="scribeai.retention")

    def soon() -> str:
        return (datetime.now() + timedelta(seconds=3)).strftime("%H:%M:%S")
    first = await start(retention_days=0)
    client = await connect(first.url)
    await send(client, "sched", [b"y" * 100])
    await stop(first, "sched")
    async with RetentionLock(first.services.db, first.settings).hold():
        held = await start(retention_days=0, retention_schedule=soon())

        async def skipped() -> bool:
            return any("another run holds the lock; skipped" in r.getMessage() for r in caplog.records)
        await wait_for(skipped, timeout=15)
    assert (await rows(held, "sched"))[0].tier == "hot"
    second = await start(retention_days=0, retention_schedule=soon())

    async def archived() -> bool:
        return (await rows(second, "sched"))[0].tier == "warm"
    await wait_for(archived, timeout=15)
    assert_archive_holds(archive_of(second, "sched"), "sched", [b"y" * 100])
