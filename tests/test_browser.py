"""Real Chromium recorders (tests/browser/recorder.html, driven by tests/js/browser_driver.mjs) against a real server.

Chromium's fake microphone plays espeak-ng speech; MediaRecorder.start(timeslice) blobs go to the
server as a browser recorder sends them (blobs after the first start mid-element, a reload starts a
new WebM header mid-session), and whisper must transcribe all of it.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from sqlalchemy import select
from sqlmodel import col

from scribeai.models import Chunk
from tests.conftest import RunningServer, ServerFactory, token_for
from tests.node_tests import run_driver
from tests.speech import JS_DIR, make_speech_wav, require_browser_tools, word_recall

SENTENCES = [
    "Welcome to the weekly project meeting.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "The train to London leaves from platform seven.",
    "Our budget for the next quarter is almost ready.",
    "Remember to water the plants on Friday morning.",
    "We will meet again at the usual time next week.",
]
SPOKEN = " ".join(SENTENCES)
TIMESLICES = (1000, 5000, 15000)
RELOAD_TIMESLICE = 5000
RELOAD_AFTER_S = 10
# The bar is the same model on the whole WAV (tiny.en mishears some espeak words wherever the audio is cut):
# each page's live transcript must reach that recall less 3 points (the stream-transcription goal), and never
# go below the floor. With the server's own IDLE_FLUSH_S (40 s) every page measured 0.86-0.89 against a
# whole-file 0.81 (2026-12-01, two runs). The suite's 1 s idle flush had cut a window at the end of every 5 s
# and 15 s blob, mid-word: 0.71-0.79 and repeated words at the cuts ("for them for them"), a harness artifact.
RECALL_MARGIN = 0.03
MIN_RECALL = 0.7
EBML_MAGIC = "1a 45 df a3"
DRIVER_TIMEOUT_S = 240
TRANSCRIPT_TIMEOUT_S = 90
DRAIN_TIMEOUT_S = 60
USER = "alice"


async def _run_driver(server: RunningServer, wav: Path, seconds: int, out: Path) -> dict[str, Any]:
    """browser_driver.mjs as an asyncio subprocess (the server lives on this loop); its JSON result line."""
    pages = [str(t) for t in TIMESLICES] + [f"{RELOAD_TIMESLICE}:reload"]
    args = ["--server", server.url, "--token", token_for(USER),
            "--wav", str(wav), "--seconds", str(seconds), "--reload-after", str(RELOAD_AFTER_S), "--out", str(out),
            "--session-prefix", f"browser-{os.getpid()}", "--transcript-timeout", str(TRANSCRIPT_TIMEOUT_S)]
    for page in pages:
        args += ["--page", page]
    return await run_driver(JS_DIR / "browser_driver.mjs", args, DRIVER_TIMEOUT_S)


async def _stored_chunks(server: RunningServer, session_id: str) -> dict[int, tuple[int, str]]:
    async with server.services.db.read() as s:
        rows = (await s.execute(select(Chunk).where(col(Chunk.session_id) == session_id))).scalars().all()
    return {row.seq: (row.size, row.sha256) for row in rows}


async def _transcript(server: RunningServer, session_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/sessions/{session_id}/transcript",
                            headers={"Authorization": f"Bearer {token_for(USER)}"}) as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body


def _lives(page: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's states: one per load (the state before a reload, then the final one)."""
    return [page["beforeReload"], page] if page["reload"] else [page]


def _check_delivery(page: dict[str, Any], stored: dict[int, tuple[int, str]]) -> None:
    """Every blob MediaRecorder gave was sent once, acked once and stored byte for byte, in one sequence."""
    name, lives = page["name"], _lives(page)
    blobs = [blob for life in lives for blob in life["blobs"]]
    sent = [blob["seq"] for blob in blobs]
    assert sent == list(range(len(blobs))), f"{name}: sequences sent {sent}"
    assert [life["recorderError"] for life in lives] == [None] * len(lives), name
    # "overloaded" is backpressure the recorder obeys (it resends later); any other error is a failure
    errors = [error for life in lives for error in life["errors"]]
    assert [e for e in errors if not e["error"].startswith("overloaded: ")] == [], f"{name}: failed sends"
    acks = [(ack["sequence"], ack["duplicate"]) for life in lives for ack in life["acks"]]
    assert acks == [(seq, False) for seq in sent], f"{name}: acks"
    assert stored == {blob["seq"]: (blob["size"], blob["sha256"]) for blob in blobs}, f"{name}: stored chunks"
    # Chromium's timeslice blobs: only the first blob of each MediaRecorder carries the EBML header
    starts = [life["firstSeq"] for life in lives]
    assert [blob["seq"] for blob in blobs if blob["head"].startswith(EBML_MAGIC)] == starts, \
        f"{name}: blobs with a WebM header: " + ", ".join(f"{b['seq']}: {b['head']}" for b in blobs)
    reply = lives[-1]["stopReply"]
    assert {key: reply.get(key) for key in ("status", "maxSeq", "totalChunks", "missing")} == {
        "status": "stopped", "maxSeq": len(blobs) - 1, "totalChunks": len(blobs), "missing": []}, f"{name}: stopSession"


def _check_page_shows(page: dict[str, Any], segments: list[dict[str, Any]]) -> None:
    """What the page received and shows is the stored transcript, each segment once (a reload: replayed after lastSeq)."""
    name = page["name"]
    ids_by_seq = [s["id"] for s in sorted(segments, key=lambda s: s["seq"])]
    assert page["completed"] is True, f"{name}: no session-completed within {TRANSCRIPT_TIMEOUT_S} s"
    for life in _lives(page):
        assert [d["id"] for d in life["dom"]] == [s["id"] for s in sorted(life["segments"], key=lambda s: s["seq"])], name
        assert [d["text"] for d in life["dom"]] == [s["text"] for s in sorted(life["segments"], key=lambda s: s["seq"])], name
    if not page["reload"]:
        assert [d["id"] for d in page["dom"]] == ids_by_seq, f"{name}: the page shows other segments than stored"
        return
    before, last_seq = page["beforeReload"], page["beforeReload"]["lastSeq"]
    rejoin = page["joins"][0]
    assert {key: rejoin.get(key) for key in ("maxSeq", "missing")} == {"maxSeq": before["nextSeq"] - 1, "missing": []}, name
    assert page["joinedWithLastSeq"] == last_seq, name
    shown_before = [d["id"] for d in before["dom"]]
    shown_after = [d["id"] for d in page["dom"]]
    assert shown_before + shown_after == ids_by_seq, f"{name}: segments before + after the reload"
    assert [s["id"] for s in sorted(segments, key=lambda s: s["seq"]) if last_seq is None or s["seq"] > last_seq] == shown_after
    assert set(page["replayExpected"]) <= set(shown_after), f"{name}: segments missed across the reload"


def _whole_file_recall(wav: Path) -> float:
    """Word recall of the bundled model on the whole WAV, transcribed in one call (the reference for the pages)."""
    from scribeai.transcription import engines, media

    pcm = media.decode_pcm(wav.read_bytes(), 16000)
    model = engines._load_model(engines.bundled_model_path(), 2, 1)
    segments, _ = model.transcribe(pcm, beam_size=1)
    return word_recall(SPOKEN, " ".join(s.text for s in segments))


def _check_replayed(page: dict[str, Any]) -> None:
    """The reload left segments the page had not seen (its connection was down), and the re-join replayed them."""
    last_seq = page["beforeReload"]["lastSeq"]
    assert page["replayExpected"] != [], f"{page['name']}: no segment was left to replay after the reload (lastSeq {last_seq})"


@pytest.mark.slow
@pytest.mark.timeout(DRIVER_TIMEOUT_S + DRAIN_TIMEOUT_S + 60)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_chromium_recorders(start_server: ServerFactory, tmp_path: Path) -> None:
    """1 s, 5 s and 15 s timeslices and a mid-session reload, side by side: delivery, then the transcript."""
    require_browser_tools()
    started = time.monotonic()
    wav = tmp_path / "speech.wav"
    seconds = math.ceil(make_speech_wav(SENTENCES, wav))  # the fake mic loops the WAV: record about one pass
    # the server's default idle flush: a recorder's next blob comes 15 s later, and its held audio must wait for it
    server = await start_server(transcriber="whisper", max_concurrency=2, idle_flush_s=40.0)
    out = tmp_path / "browser"
    print(f"browser artifacts (screenshots, page states): {out}")
    result = await _run_driver(server, wav, seconds, out)
    await server.services.pipeline.drain(timeout=DRAIN_TIMEOUT_S)

    pages = {page["name"]: page for page in result["pages"]}
    assert sorted(pages) == sorted([f"ts{t}" for t in TIMESLICES] + [f"ts{RELOAD_TIMESLICE}-reload"])
    transcripts = {name: await _transcript(server, page["sessionId"]) for name, page in pages.items()}
    recall = {name: word_recall(SPOKEN, " ".join(s["text"] for s in body["segments"])) for name, body in transcripts.items()}
    print(f"{result['chromium']}, {seconds} s of speech, {time.monotonic() - started:.0f} s in all")
    for name, page in pages.items():
        blobs = [b for life in _lives(page) for b in life["blobs"]]
        body = transcripts[name]
        print(f"{name}: {len(blobs)} blobs, heads " + ", ".join(f"{b['seq']}:{b['head'][:11]}" for b in blobs))
        print(f"  recall {recall[name]:.2f}, {len(body['segments'])} segments, failed chunks "
              f"{[f['seq'] for f in body['failed']]}: {' | '.join(s['text'] for s in body['segments'])}")

    # the harness: every blob reached the server once and was stored as sent, no handler failed, and
    # each page shows exactly the stored segments (across the reload: each once, none missed)
    for name, page in pages.items():
        _check_delivery(page, await _stored_chunks(server, page["sessionId"]))
    assert {k: v for k, v in server.services.realtime.counters.items() if k.endswith(":internal")} == {}
    for name, page in pages.items():
        _check_page_shows(page, transcripts[name]["segments"])

    # the transcript: every chunk transcribed, whisper heard what was spoken at every timeslice,
    # and the reload had something to replay
    for name, body in transcripts.items():
        assert (body["pending"], body["failed"]) == ([], []), f"{name}: chunks not transcribed"
    whole = await asyncio.to_thread(_whole_file_recall, wav)
    bar = max(MIN_RECALL, whole - RECALL_MARGIN)
    print(f"whole-file recall {whole:.2f}: bar {bar:.2f}")
    assert {name: value >= bar for name, value in recall.items()} == {name: True for name in pages}, (whole, recall)
    _check_replayed(pages[f"ts{RELOAD_TIMESLICE}-reload"])


# -- Firefox's blobs, as recorded (no browser needed) ---------------------------------------------------------------

FIREFOX_BLOBS = Path(__file__).parent / "browser" / "firefox"


@pytest.mark.parametrize(("folder", "mime_type"), [("webm_1000", "audio/webm;codecs=opus"), ("ogg_1000", "audio/ogg;codecs=opus")])
def test_firefox_blobs_are_recordings_the_server_takes(folder: str, mime_type: str) -> None:
    """Firefox 153 ESR's 1 s MediaRecorder blobs of espeak-ng speech (the demo page, tests/js/demo_driver.mjs's captions
    scenario): WebM whose continuations begin at a Cluster of unknown size, audio in track 2, block sizes in 4-byte
    vints; Ogg whose every blob begins a page. Each is a chunk the server's recording check takes, and in order they
    are one stream of six seconds."""
    from scribeai.transcription.containers import refusal

    blobs = sorted((FIREFOX_BLOBS / folder).glob("blob_*"))
    assert len(blobs) == 6
    refused = {blob.name: refusal(blob.read_bytes(), mime_type) for blob in blobs}
    assert refused == dict.fromkeys(refused), refused
    samples, rate = 0, 48000
    with av.open(io.BytesIO(b"".join(blob.read_bytes() for blob in blobs))) as container:
        for frame in container.decode(audio=0):
            samples, rate = samples + frame.samples, frame.sample_rate
    assert abs(samples / rate - 6.0) <= 0.2, samples / rate
