"""What a reload of the demo page lost: the demo driver's `loss` scenario held against the audio the server stored.

Used by tests/test_demo.py and scripts/bench_reload.py. For each reload, the recorded wall time runs from the
MediaRecorder's `start` event to the page's `pagehide` (both the page's Date.now()); the stored audio is the
session's chunks, as the server holds them, decoded in sequence order as one stream. Lost = recorded - stored.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av


def stored_chunks(database: Path, storage_dir: Path, session_id: str) -> list[bytes]:
    """A session's chunk files in sequence order (read from the server's SQLite database and storage folder)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT seq, path FROM chunk WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
    return [(storage_dir / path).read_bytes() for _, path in rows]


def audio_seconds(chunks: list[bytes]) -> float:
    """Seconds of audio decoded from the chunks, concatenated (one MediaRecorder's blobs are one WebM stream)."""
    if not chunks:
        return 0.0
    samples = 0
    rate = 48000
    with av.open(io.BytesIO(b"".join(chunks))) as container:
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate


@dataclass(frozen=True)
class ReloadLoss:
    session_id: str
    offset_ms: int          # how far into a blob the reload came
    recorded_s: float       # MediaRecorder start to pagehide (wall time)
    stored_s: float         # audio the server holds for the session
    page_lost_s: float | None  # what the page said when it came back
    text: str | None
    flushed: bool           # a blob given as the page went (after beforeunload) was stored (the page's log of it
                            # may not have survived the unload: counted from the chunks past the logged ones)
    dialogs: list[str]
    going_ms: int | None    # beforeunload to pagehide: the time the page had to store its last blob
    flush_ms: int | None    # beforeunload to the flushed blob's dataavailable

    @property
    def lost_s(self) -> float:
        return self.recorded_s - self.stored_s


def measure(reload: dict[str, Any], chunks: list[bytes]) -> ReloadLoss:
    """One reload of the driver's result against the chunks the server stored for its session."""
    start, exit_ = reload["start"], reload["exit"]
    if start is None or exit_ is None or exit_["pagehideAt"] is None:
        raise AssertionError(f"reload of {reload['sessionId']}: no start or pagehide seen ({start}, {exit_})")
    cut = reload["cut"] or {}
    sizes = [len(c) for c in chunks]
    kept = sum(1 for b in reload["blobs"] if not b["unloading"])  # given before beforeunload
    before = exit_["beforeunloadAt"]
    flush = next((b["at"] for b in reload["blobs"] if b["unloading"]), None)
    return ReloadLoss(
        session_id=reload["sessionId"], offset_ms=reload["offsetMs"],
        recorded_s=(exit_["pagehideAt"] - start["at"]) / 1000, stored_s=audio_seconds(chunks),
        page_lost_s=None if cut.get("lostMs") is None else cut["lostMs"] / 1000, text=cut.get("text"),
        flushed=len(sizes) > kept, dialogs=reload["dialogs"],
        going_ms=None if before is None else exit_["pagehideAt"] - before,
        flush_ms=None if before is None or flush is None else flush - before)


def summary(losses: list[ReloadLoss]) -> dict[str, float]:
    lost = [x.lost_s for x in losses]
    return {"reloads": len(lost), "p50_s": round(statistics.median(lost), 3), "max_s": round(max(lost), 3),
            "min_s": round(min(lost), 3), "flushed": sum(x.flushed for x in losses)}
