"""The stress client (scripts/stress.py, `scribeai stress`) against real servers: its report is checked
against what the server stored, reconnects lose nothing, a slow engine makes it pause and still finish.

The server transcribes a session as one recording cut into windows at pauses: a segment spans chunks
fromSeq..seq, so the checks count chunks whose status is done, not segments per chunk."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scribeai import stress
from scribeai.models import Chunk, TranscriptSegment
from tests.conftest import SECRET, RunningServer, ServerFactory, token_for
from tests.fake_openai import FakeTranscriptionAPI

ROOT = Path(__file__).resolve().parent.parent
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the client is the subject, not the database


@pytest.fixture(scope="module")
def audio_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chunk audio is generated once for the whole file, as the script caches it between runs."""
    return tmp_path_factory.mktemp("stress-audio")


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTranscriptionAPI]:
    api = FakeTranscriptionAPI()
    yield api
    await api.close()


def options_for(server: RunningServer, tmp_path: Path, cache: Path, **overrides: Any) -> stress.Options:
    base = stress.Options(
        url=server.url, secret=SECRET, user_id="stress-user", chunks=12, interval_s=0.02, chunk_seconds=0.5,
        sample_interval_s=0.2, transcript_timeout_s=30, progress=False, storage_dir=server.settings.storage_dir,
        out_dir=tmp_path / "out", cache_dir=cache, speech="auto",
    )
    return dataclasses.replace(base, **overrides)


def argv_for(options: stress.Options) -> list[str]:
    args = ["--url", options.url, "--secret", str(options.secret), "--userId", options.user_id, "--chunks", str(options.chunks),
            "--interval", str(options.interval_s), "--chunk-seconds", str(options.chunk_seconds),
            "--sample-interval", str(options.sample_interval_s), "--transcript-timeout", str(options.transcript_timeout_s),
            "--storage-dir", str(options.storage_dir), "--out", str(options.out_dir), "--cache-dir", str(options.cache_dir),
            "--no-progress", "--namespace", options.namespace, "--transport", options.transport, "--window", str(options.window)]
    if options.drop_every:
        args += ["--drop-every", str(options.drop_every), "--drop-seconds", str(options.drop_seconds)]
    return args


async def run_process(*command: str) -> tuple[int, str, str]:
    """Run the script as a subprocess while this loop keeps serving the server under test."""
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def only_report(out_dir: Path) -> dict[str, Any]:
    reports = list(out_dir.glob("perf-report-*.json"))
    assert len(reports) == 1, reports
    return dict(json.loads(reports[0].read_text()))


async def stored_chunks(server: RunningServer, session_id: str) -> list[Chunk]:
    async with server.services.db.read() as s:
        rows = (await s.execute(select(Chunk).where(Chunk.session_id == session_id).order_by(Chunk.seq))).scalars()  # type: ignore[arg-type]
        return list(rows)


async def stored_segments(server: RunningServer, session_id: str) -> list[TranscriptSegment]:
    async with server.services.db.read() as s:
        rows = (await s.execute(select(TranscriptSegment).where(TranscriptSegment.session_id == session_id))).scalars()  # type: ignore[arg-type]
        return sorted(rows, key=lambda row: (row.seq, row.start_ms))


def chunks_covered(segments: list[TranscriptSegment]) -> set[int]:
    """The chunks whose audio went into some segment's window (fromSeq..seq)."""
    return {seq for segment in segments for seq in range(segment.from_seq, segment.seq + 1)}


def check_lag_series(report: dict[str, Any]) -> None:
    """Each chunk's lag runs from its ack to the first segment received after it whose seq reaches the chunk."""
    acks = {(a[1], a[2]): a[0] for a in report["timeSeries"]["acks"]}
    segments = report["timeSeries"]["segments"]  # [t, session, fromSeq, seq, connection]
    for session, seq, lag_ms in report["timeSeries"]["chunkLag"]:
        t_ack = acks[(session, seq)]
        first = min(x[0] for x in segments if x[1] == session and x[3] >= seq and x[0] >= t_ack)
        assert abs(first - t_ack - lag_ms / 1000) <= 0.002, (session, seq, lag_ms, t_ack, first)


def files_on_disk(server: RunningServer, session_id: str) -> dict[str, int]:
    folder = server.settings.storage_dir / session_id
    return {p.name: p.stat().st_size for p in folder.iterdir() if not p.name.startswith(".")}


@SQLITE
async def test_report_matches_what_the_server_stored(start_server: ServerFactory, fake_api: FakeTranscriptionAPI,
                                                     tmp_path: Path, audio_cache: Path) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k")
    options = options_for(server, tmp_path, audio_cache, sessions=2, window=2)
    report = await stress.run(options)

    assert report["verdict"] == {"ok": True, "problems": []}
    assert report["server"]["engine"] == "openai"
    sizes = [len(v) for v in stress.load_chunk_audio(0.5, "auto", audio_cache, 32_000, 4).variants]
    expected_bytes = sum(sizes[seq % 4] for seq in range(12))
    stored_segment_count, stored_texts = 0, []
    for entry in report["sessions"]:
        sid = entry["sessionId"]
        chunks = await stored_chunks(server, sid)
        assert [c.seq for c in chunks] == list(range(12))
        assert {c.mime_type for c in chunks} == {stress.MIME_TYPE}
        assert {c.status for c in chunks} == {"done"}
        assert sum(c.size for c in chunks) == entry["bytesAcked"] == entry["server"]["bytes"] == expected_bytes
        assert sum(files_on_disk(server, sid).values()) == entry["disk"]["bytes"] == expected_bytes
        assert entry["disk"]["files"] == 12
        assert entry["server"]["missing"] == [] and entry["server"]["totalChunks"] == 12 and entry["server"]["maxSeq"] == 11
        segments = await stored_segments(server, sid)
        stored_segment_count += len(segments)
        stored_texts += [seg.text for seg in segments]
        assert segments and segments[-1].seq == 11 and chunks_covered(segments) == set(range(12))  # real speech throughout
        assert entry["server"]["segmentsStored"] == entry["segmentsReceived"] == len(segments) and entry["segmentsNotReceived"] == []
        assert (entry["chunksDone"], entry["chunksPending"], entry["chunksFailed"], entry["gaps"]) == (12, [], [], [])
        assert entry["chunksWithoutSegment"] == [] and entry["server"]["chunksByStatus"] == {"done": 12}
        assert entry["transcriptWaitS"] is not None and entry["transcriptWaitS"] < options.transcript_timeout_s
        assert entry["stopReply"]["status"] == "stopped" and entry["stopReply"]["missing"] == []
    counters = server.services.realtime.counters
    totals = report["totals"]
    assert (totals["chunksPlanned"], totals["chunksSent"], totals["chunksAcked"], totals["acksNew"]) == (24, 24, 24, 24)
    assert totals["chunksAcked"] == counters["chunks_stored"] + counters.get("chunks_duplicate", 0)
    assert totals["duplicates"] == counters.get("chunks_duplicate", 0) == 0
    assert (totals["successRate"], totals["failed"], totals["lostAfterAck"]) == (1.0, 0, 0)
    assert report["disk"]["bytes"] == 2 * expected_bytes == totals["bytesAcked"]
    # every window really went through the engine, one request (and one segment) each
    assert len(fake_api.requests) == stored_segment_count >= 2 and sorted(fake_api.answers) == sorted(stored_texts)
    assert report["ackLatencyMs"]["count"] == 24 and 0 < report["ackLatencyMs"]["min"] <= report["ackLatencyMs"]["p50"]
    assert report["ackLatencyMs"]["p50"] <= report["ackLatencyMs"]["p95"] <= report["ackLatencyMs"]["p99"] <= report["ackLatencyMs"]["max"]
    tr = report["transcription"]
    lag = tr["lagMs"]
    assert (tr["chunksExpected"], tr["chunksDone"], tr["chunksWithoutSegment"]) == (24, 24, 0)
    assert tr["segmentsReceived"] == tr["segmentsStored"] == stored_segment_count
    assert lag["count"] == 24 and 0 <= lag["min"] <= lag["p50"] <= lag["p95"]  # every chunk: a later segment reached it
    check_lag_series(report)
    assert report["throughput"]["chunksPerS"] > 0 and report["throughput"]["kbPerS"] > 0
    assert report["errors"] == {} and report["reconnects"]["count"] == 0
    samples = report["timeSeries"]["samples"]
    assert len(samples) >= 2 and all(s["rssBytes"] > 0 for s in samples)
    assert samples[-1]["acked"] == 24 and samples[-1]["diskBytes"] == 2 * expected_bytes
    rss = report["serverResources"]["rssBytes"]
    assert rss["start"] > 0 and rss["end"] > 0 and rss["max"] >= rss["end"]
    assert len(report["timeSeries"]["acks"]) == 24 and len(report["timeSeries"]["segments"]) == stored_segment_count
    assert sorted((c[0], c[1]) for c in report["timeSeries"]["chunkLag"]) == [(i, seq) for i in range(2) for seq in range(12)]
    assert report["settings"]["chunks"] == 12 and report["settings"]["sessions"] == 2 and report["settings"]["secret"] == "<given>"
    path = stress.write_report(report, options.out_dir)
    assert path.name.startswith("perf-report-") and json.loads(path.read_text())["totals"] == totals


@SQLITE
async def test_drop_every_resumes_with_nothing_missing(start_server: ServerFactory, fake_api: FakeTranscriptionAPI,
                                                       tmp_path: Path, audio_cache: Path) -> None:
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k")
    options = options_for(server, tmp_path, audio_cache, drop_every=4, drop_seconds=0.2, transport="polling", namespace="/record")
    code, out, err = await run_process(sys.executable, "scripts/stress.py", *argv_for(options))

    assert code == 0, out + err
    report = only_report(options.out_dir)
    assert report["verdict"]["ok"] is True
    (entry,) = report["sessions"]
    chunks = await stored_chunks(server, entry["sessionId"])
    assert [c.seq for c in chunks] == list(range(12))
    assert entry["server"]["missing"] == [] and entry["server"]["totalChunks"] == 12
    assert report["reconnects"]["count"] == report["reconnects"]["planned"] == 3  # after chunks 3, 7 and 11
    assert [(r["planned"], r["kind"]) for r in entry["reconnects"]] == [(True, "cut after send"), (True, "ack lost"), (True, "cut after send")]
    assert 7 in entry["reconnects"][1]["toResend"] and 7 not in entry["reconnects"][1]["serverMissing"]  # stored, ack lost
    assert all("reconnectedAt" in r for r in entry["reconnects"])
    counters = server.services.realtime.counters
    assert report["totals"]["duplicates"] == counters.get("chunks_duplicate", 0) >= 1  # at least chunk 7's resend
    assert counters["chunks_stored"] == 12 and report["totals"]["acksNew"] == 11  # the one swallowed ack was a new one
    assert {c.status for c in chunks} == {"done"}
    segments = await stored_segments(server, entry["sessionId"])
    assert segments and segments[-1].seq == 11 and chunks_covered(segments) == set(range(12))
    assert entry["segmentsReceived"] == entry["server"]["segmentsStored"] == len(segments) and entry["segmentsNotReceived"] == []
    assert (entry["chunksDone"], entry["chunksPending"], entry["chunksFailed"]) == (12, [], [])
    assert all(gap["filled"] for gap in entry["gaps"])
    assert report["transcription"]["lagMs"]["count"] == 12
    check_lag_series(report)
    assert "verdict       OK" in out


@SQLITE
async def test_slow_engine_makes_it_pause_and_it_still_completes(start_server: ServerFactory, fake_api: FakeTranscriptionAPI,
                                                                 tmp_path: Path, audio_cache: Path) -> None:
    fake_api.delay_s = 0.12
    server = await start_server(transcriber="openai", openai_base_url=await fake_api.start(), openai_api_key="k",
                                max_concurrency=1, max_queue_size=1)
    options = options_for(server, tmp_path, audio_cache, chunks=16, interval_s=0.0, window=3)
    code, out, err = await run_process(sys.executable, "-m", "scribeai", "stress", *argv_for(options))

    assert code == 0, out + err
    report = only_report(options.out_dir)
    bp = report["backpressure"]
    counters = server.services.realtime.counters
    server_signals = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("backpressure:")}
    assert bp["episodes"] >= 1 and bp["pausedS"] > 0
    assert bp["serverSignals"] == server_signals  # every transition the server made reached the recorder
    assert bp["episodesOpenAtEnd"] == 0 and bp["episodes"] == server_signals["ok"]
    assert bp["overloadedRetries"] == report["errors"].get("overloaded", 0) == counters.get("chunk-error:overloaded", 0) >= 1
    for refusal in bp["overloaded"]:  # each refused chunk went out again only after retryAfterMs, and was stored
        (t_ack, latency_ms), *_ = [(a[0], a[3]) for a in report["timeSeries"]["acks"] if a[2] == refusal["seq"]]
        assert t_ack - latency_ms / 1000 >= refusal["t"] + refusal["retryAfterMs"] / 1000 - 0.01
    (entry,) = report["sessions"]
    chunks = await stored_chunks(server, entry["sessionId"])
    assert [c.seq for c in chunks] == list(range(16)) and {c.status for c in chunks} == {"done"}
    segments = await stored_segments(server, entry["sessionId"])
    assert segments and segments[-1].seq == 15 and chunks_covered(segments) == set(range(16))
    assert (report["totals"]["chunksAcked"], report["transcription"]["chunksDone"]) == (16, 16)
    assert report["transcription"]["segmentsReceived"] == report["transcription"]["segmentsStored"] == len(segments)
    assert report["transcription"]["lagMs"]["count"] == 16
    check_lag_series(report)
    assert report["verdict"]["ok"] is True


@SQLITE
async def test_store_only_server_skips_the_segment_check_with_a_note(start_server: ServerFactory, tmp_path: Path,
                                                                     audio_cache: Path) -> None:
    server = await start_server()  # TRANSCRIBER=none
    report = await stress.run(options_for(server, tmp_path, audio_cache, chunks=5, storage_dir=None))

    assert report["verdict"]["ok"] is True
    assert report["transcription"]["checked"] is False
    assert "TRANSCRIBER=none" in report["transcription"]["note"]
    assert report["disk"]["method"] == "rest"
    assert report["disk"]["bytes"] == sum(c.size for c in await stored_chunks(server, report["sessions"][0]["sessionId"]))


@SQLITE
async def test_any_loss_makes_the_exit_status_non_zero(start_server: ServerFactory, tmp_path: Path, audio_cache: Path) -> None:
    server = await start_server(max_chunk_bytes=2400)  # some of the generated chunks are larger: refused as too_large
    options = options_for(server, tmp_path, audio_cache, chunks=8)
    code, out, err = await run_process(sys.executable, "scripts/stress.py", *argv_for(options))

    assert code == 1, out + err
    report = only_report(options.out_dir)
    sizes = [len(v) for v in stress.load_chunk_audio(0.5, "auto", audio_cache, 32_000, 4).variants]
    refused = [seq for seq in range(8) if sizes[seq % 4] > 2400]
    assert refused and len(refused) < 8
    assert report["verdict"]["ok"] is False
    assert report["errors"] == {"too_large": len(refused)}
    assert report["totals"]["failed"] == len(refused) and report["totals"]["chunksAcked"] == 8 - len(refused)
    assert report["sessions"][0]["failed"] == {str(seq): "too_large" for seq in refused}
    assert "LOSS" in out


def test_plot_without_matplotlib_fails_before_running(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the 'plot' extra were not installed
    assert stress.main(["--plot", "--url", "http://127.0.0.1:9", "--no-progress"]) == stress.EXIT_CANNOT_RUN
    assert "pip install 'scribeai[plot]'" in capsys.readouterr().err


def test_plot_draws_latency_memory_and_queue(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (the test extra installs it: a missing one is a failure, not a skip)
    report = {"settings": {"sessions": 1, "chunks": 2, "chunk_seconds": 1.0, "interval_s": 0.1}, "server": {"engine": "none"},
              "wallS": 3.0, "backpressure": {"list": [{"session": 0, "start": 0.5, "end": 1.0, "reason": "canAccept"}]},
              "timeSeries": {"acks": [[0.1, 0, 0, 12.5, False], [0.2, 0, 1, 20.0, False]],
                             "samples": [{"t": 0.0, "rssBytes": 10 * 2**20, "peakRssBytes": 10 * 2**20, "backlog": 0, "localQueue": 1, "paused": 0},
                                         {"t": 2.0, "rssBytes": 11 * 2**20, "peakRssBytes": 11 * 2**20, "backlog": 2, "localQueue": 0, "paused": 1}]}}
    stress.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scribeai_stress_has_the_options_of_the_script() -> None:
    from scribeai import cli

    cli._EXTRA_COMMANDS.clear()
    cli._load_extra_commands()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = sub.choices["stress"]  # type: ignore[index]

    def flags(p: Any) -> set[str]:
        return {s for a in p._actions for s in a.option_strings}

    assert flags(registered) == flags(stress.build_parser())
    args = parser.parse_args(["stress", "--chunks=120", "--fast", "--userId=test-user"])
    options = stress.options_from_args(args)
    assert (options.chunks, options.interval_s, options.user_id, options.url) == (120, 0.1, "test-user", "http://localhost:3001")
    assert stress.options_from_args(parser.parse_args(["stress"])).interval_s == 1.0
    assert stress.options_from_args(parser.parse_args(["stress", "--fast", "--interval", "0.5"])).interval_s == 0.5


@SQLITE
@pytest.mark.parametrize("engine", ["none", "openai"])
async def test_a_plain_users_token_runs_on_the_clients_figures_and_says_what_it_could_not_read(
        start_server: ServerFactory, fake_api: FakeTranscriptionAPI, tmp_path: Path, audio_cache: Path,
        capsys: pytest.CaptureFixture[str], engine: str) -> None:
    """Before, a token without the admin role stopped the run at once ('the token is not an admin's')."""
    extra = {"transcriber": "openai", "openai_base_url": await fake_api.start(), "openai_api_key": "k"} if engine == "openai" else {}
    server = await start_server(**extra)
    options = options_for(server, tmp_path, audio_cache, chunks=6, secret=None, token=token_for("alice"), storage_dir=None)
    report = await stress.run(options)

    assert report["verdict"] == {"ok": True, "problems": []}
    assert report["totals"]["chunksAcked"] == 6
    assert report["server"]["scope"] == "user"
    assert report["server"]["notRead"] == ["server RSS", "server CPU", "the whole server's backlog and connections",
                                           "the transcription engine"]
    assert "--secret" in report["server"]["howToRead"] and "ADMIN_USERS" in report["server"]["howToRead"]
    assert report["serverResources"]["rssBytes"] == {"note": "the server reported no RSS"}
    if engine == "openai":  # the chunks' status shows that the server transcribes: the transcripts are checked
        assert (report["server"]["engine"], report["transcription"]["checked"]) == ("unknown (transcribes)", True)
        assert report["transcription"]["chunksDone"] == 6
    else:
        assert (report["server"]["engine"], report["transcription"]["checked"]) == ("none (chunks stored untranscribed)", False)
    assert "the token is not an admin's: running on the client's own figures" in capsys.readouterr().err
    table = stress.summary_table(report, None)
    assert "server RSS    not read (an admin's figure)" in table
    assert "not read      server RSS, server CPU, the whole server's backlog and connections, the transcription engine: " \
           "run with an admin's token" in table


def test_a_run_too_short_for_a_memory_slope_says_so() -> None:
    samples = [{"t": t, "rssBytes": (100 + t) * 2**20, "peakRssBytes": (100 + t) * 2**20} for t in (0.0, 1.0, 2.0)]
    rss = stress._rss_shape(samples, wall_s=2.0)
    assert (rss["secondHalfSlopeMiBPerMin"], rss["secondHalfSamples"]) == (None, 2)
    line = stress._rss_line(rss, not_admin=False)
    assert "None" not in line
    assert line == ("start 100.0  middle 101.0  end 102.0  max 102.0 MiB  (no slope: 2 samples in the 2nd half, 3 needed "
                    "(a longer run or a smaller --sample-interval))")
    longer = samples + [{"t": 3.0, "rssBytes": 103 * 2**20}, {"t": 4.0, "rssBytes": 104 * 2**20}]
    assert stress._rss_line(stress._rss_shape(longer, wall_s=4.0), not_admin=False).endswith("(slope 2nd half 60.0 MiB/min)")
