"""A session's audio as one continuous recording: chunks in (split anywhere), windows on its timeline out.

Pure and blocking (the pipeline runs it in a thread): no database, no files, no model. A chunk that
begins with a container header starts a new stream (a page reload, a restarted recorder); every other
chunk continues the current one, whatever byte it starts at. Whole files that are no stream (WAV, MP3,
a complete non-fragmented MP4) are decoded on their own and placed at their chunk's start.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field, replace
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

from scribeai.transcription import containers, media
from scribeai.transcription.windows import Window, Windower

RATE = 16_000
EPOCH_MS_MIN = 1e11  # below: ms since the recording started (the original app's timestamps)
WARMUP_MS = 400  # decoded (and dropped) before the resume point, so the codec's state is right there
JUMP_MS = 60  # a packet this far from the decoded audio's end is a discontinuity, not jitter


CHECKPOINT_VERSION = 1


class NoStream(Exception):
    """A continuation chunk, but no stream has started: its container header never arrived."""


@dataclass(frozen=True)
class ChunkBytes:
    seq: int
    data: bytes
    mime_type: str
    timestamp_ms: float


@dataclass(frozen=True)
class Timing:
    """Where a chunk starts on the recording's timeline, from its `timestamp`.

    Epoch timestamps (the contract) mark a chunk's start and count from chunk 0's; relative ones
    (the original app: ms since the recording started) mark its end, so a chunk starts where the
    previous one ended.
    """

    origin_ms: float | None  # timestamp of the session's chunk 0 (or an estimate), for epoch timestamps
    chunk_duration_ms: int

    def start_of(self, chunk: ChunkBytes, previous_timestamp_ms: float | None) -> float:
        if chunk.timestamp_ms >= EPOCH_MS_MIN:
            origin = self.origin_ms if self.origin_ms is not None else chunk.timestamp_ms - chunk.seq * self.chunk_duration_ms
            return max(0.0, chunk.timestamp_ms - origin)
        if previous_timestamp_ms is not None and previous_timestamp_ms < EPOCH_MS_MIN:
            return previous_timestamp_ms
        return max(0.0, chunk.timestamp_ms - self.chunk_duration_ms)


class PacketDecoder:
    """Codec packets of one stream to 16 kHz mono float32."""

    def __init__(self, config: containers.CodecConfig) -> None:
        self.config = config
        self._codec: Any = av.CodecContext.create(config.codec, "r")
        if config.extradata:
            self._codec.extradata = config.extradata
        self._codec.sample_rate = config.sample_rate  # type: ignore[attr-defined]
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        self.errors = 0

    def __repr__(self) -> str:
        return f"PacketDecoder({self.config.codec}, {self.config.sample_rate} Hz, errors={self.errors})"

    def decode(self, packet: containers.Packet) -> NDArray[np.float32]:
        try:
            frames = self._codec.decode(av.Packet(packet.data))
        except av.FFmpegError:
            self.errors += 1  # one damaged packet costs its 20 ms, not the stream
            return np.zeros(0, dtype=np.float32)
        pieces = [out.to_ndarray()[0] for frame in frames for out in self._resampler.resample(frame)]
        return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, dtype=np.float32)


@dataclass
class Gap:
    from_seq: int
    to_seq: int
    start_ms: float
    end_ms: float | None = None  # where audio resumed after it
    filled: bool = False
    reason: str = "missing"  # or "failed": audio whose transcription failed for good (retry-failed redoes it)
    checkpoint: bytes | None = field(default=None, repr=False, compare=False)  # reading state just before from_seq
    # a late fill under way has its windows stored up to here: one killed midway goes on from it, not over them again
    done_ms: float | None = None

    def wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"fromSeq": self.from_seq, "toSeq": self.to_seq, "startMs": round(self.start_ms),
                                "endMs": None if self.end_ms is None else round(self.end_ms), "filled": self.filled,
                                "reason": self.reason}
        if self.done_ms is not None and not self.filled:
            wire["doneMs"] = round(self.done_ms)  # kept with the stream's row, not shown to clients
        return wire


@dataclass
class _Current:
    """The stream being read: its demuxer, decoder and place on the session's timeline."""

    demuxer: containers.Demuxer
    start_seq: int
    offset_ms: float
    first_pts_ms: float | None = None
    decoder: PacketDecoder | None = None


@dataclass
class SessionStream:
    """Feed a session's chunks in sequence order; get transcription windows."""

    windower: Windower
    timing: Timing
    resume_ms: float = 0.0  # audio before this point was transcribed already (a stream rebuilt after a restart)
    until_ms: float = float("inf")  # audio from here on is not wanted (filling one gap late)
    next_seq: int = 0
    end_ms: float = 0.0  # end of the audio placed on the timeline so far
    chunk_end_ms: dict[int, float] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    problems: int = 0  # damaged packets and resyncs
    _current: _Current | None = None
    _clock_ms: float | None = None
    _last_timestamp_ms: float | None = None

    def __repr__(self) -> str:
        return (f"SessionStream(next_seq={self.next_seq}, end_ms={self.end_ms:.0f}, resume_ms={self.resume_ms:.0f}, "
                f"gaps={len(self.gaps)}, {self.windower!r})")

    @property
    def stream_start_seq(self) -> int | None:
        return None if self._current is None else self._current.start_seq

    def feed(self, chunk: ChunkBytes) -> list[Window]:
        """Read one chunk (the next in sequence, or the first after a `gap()`)."""
        try:
            return self._feed(chunk)
        finally:
            self.next_seq = chunk.seq + 1
            self._last_timestamp_ms = chunk.timestamp_ms

    def _feed(self, chunk: ChunkBytes) -> list[Window]:
        container = containers.stream_start(chunk.data)
        if (container == "mp4" and not _fragmented(chunk.data)) or (container is None and _whole_file(chunk)):
            self._current = None  # a file of its own ends the stream before it
            return self._place_whole(chunk)
        if container is not None:
            self._current = _Current(containers.open_demuxer(container), chunk.seq, self._stream_offset(chunk))
            self._clock_ms = None
        if self._current is None:
            raise NoStream(f"chunk {chunk.seq} continues a recording whose first chunk (with the container header) "
                           "has not arrived")
        windows: list[Window] = []
        for packet in self._current.demuxer.feed(chunk.data, chunk.seq):
            windows += self._place(packet)
        return windows

    def gap(self, from_seq: int, to_seq: int) -> Gap:
        """Chunks from_seq..to_seq are missing: the next chunk is read after a resync.

        The gap keeps the reading state from before it, so that its chunks, if they come, can be read later
        exactly as if they had come in time. A gap already known (a stream read again) is not recorded twice.
        """
        gap = next((g for g in self.gaps if g.from_seq == from_seq), None)
        if gap is None:
            gap = Gap(from_seq, to_seq, self.end_ms, checkpoint=self.checkpoint() if from_seq > 0 else None)
            self.gaps.append(gap)
        if self._current is not None:
            self._current.demuxer.gap()
        self.next_seq = to_seq + 1
        return gap

    def flush(self) -> list[Window]:
        return self.windower.flush()

    def done_through_seq(self) -> int:
        """The highest seq whose audio is all in returned windows."""
        first = self.windower.first_pending_seq
        return self.next_seq - 1 if first is None else first - 1

    def checkpoint(self) -> bytes:
        """The reading state after chunk `next_seq - 1`: demuxer, codec setup and place on the timeline.

        `resumed()` goes on from it with the next chunk, as if every chunk before had been read again; the
        windower's held audio is not in it (it is redone from the chunks after the last committed window).
        """
        current = None if self._current is None else replace(self._current, decoder=None)
        state = _Checkpoint(CHECKPOINT_VERSION, self.next_seq - 1, current, self.timing, self.end_ms, self._clock_ms,
                            self._last_timestamp_ms)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def resumed(cls, windower: Windower, checkpoint: bytes, *, resume_ms: float,
                until_ms: float = float("inf")) -> SessionStream:
        """A stream that reads on from a `checkpoint()` (raises CheckpointError if it cannot be used)."""
        state = _load_checkpoint(checkpoint)
        stream = cls(windower, state.timing, resume_ms=resume_ms, until_ms=until_ms, next_seq=state.seq + 1,
                     end_ms=state.end_ms)
        stream._current, stream._clock_ms, stream._last_timestamp_ms = state.current, state.clock_ms, state.last_timestamp_ms
        return stream

    # -- placing audio on the timeline -------------------------------------------------------

    def _stream_offset(self, chunk: ChunkBytes) -> float:
        start = 0.0 if chunk.seq == 0 else self.timing.start_of(chunk, self._last_timestamp_ms)
        return max(start, self.end_ms)  # a new stream never goes back over audio already placed

    def _place(self, packet: containers.Packet) -> list[Window]:
        current = self._current
        assert current is not None
        if current.first_pts_ms is None and packet.pts_ms is not None:
            current.first_pts_ms = packet.pts_ms
        at = (current.offset_ms + packet.pts_ms - (current.first_pts_ms or 0.0)) if packet.pts_ms is not None \
            else (self._clock_ms if self._clock_ms is not None else current.offset_ms)
        if self._clock_ms is None or abs(at - self._clock_ms) > JUMP_MS:
            self._clock_ms = at
        if at + (packet.duration_ms or 20.0) < self.resume_ms - WARMUP_MS:
            # long done: not even decoded, but on the timeline as if it were (gaps found here, chunk ends, end_ms)
            self._advance(at, at + (packet.duration_ms or 20.0), packet.seq)
            return []
        if current.decoder is None:
            if current.demuxer.config is None:
                return []
            current.decoder = PacketDecoder(current.demuxer.config)
            if packet.pts_ms is not None:
                # A fresh decoder's resampler holds its first few samples back: what it gives is the packet's start.
                # (Mid-stream, after a checkpoint, the carried-on clock would place it that much early.)
                self._clock_ms = at
        pcm = current.decoder.decode(packet)
        return self._add(pcm, packet.seq)

    def _advance(self, start: float, end: float, seq: int) -> None:
        """Chunk `seq` placed audio at start..end, decoded or not: the timeline's bookkeeping."""
        self._clock_ms = end
        for gap in self.gaps:
            if gap.end_ms is None and gap.to_seq < seq:  # a gap kept ahead of a read from the header ends after it
                gap.end_ms = start
        self.chunk_end_ms[seq] = max(end, self.chunk_end_ms.get(seq, 0.0))
        self.end_ms = max(self.end_ms, end)

    def _add(self, pcm: NDArray[np.float32], seq: int) -> list[Window]:
        start = self._clock_ms if self._clock_ms is not None else self.end_ms
        end = start + len(pcm) * 1000 / RATE
        self._advance(start, end, seq)
        if end <= self.resume_ms or start >= self.until_ms or len(pcm) == 0:
            return []
        if end > self.until_ms:
            pcm = pcm[: int(round((self.until_ms - start) * RATE / 1000))]
        if start < self.resume_ms:
            skip = int(round((self.resume_ms - start) * RATE / 1000))
            pcm, start = pcm[skip:], start + skip * 1000 / RATE
        return self.windower.add(pcm, start, seq)

    def _place_whole(self, chunk: ChunkBytes) -> list[Window]:
        pcm = media.decode_pcm(chunk.data, RATE)  # UndecodableAudio: this chunk fails, the session goes on
        if chunk.seq == 0:
            start = 0.0
        elif chunk.timestamp_ms < EPOCH_MS_MIN:
            start = chunk.timestamp_ms - len(pcm) * 1000 / RATE  # its own length is known: no need to guess
        else:
            start = self.timing.start_of(chunk, self._last_timestamp_ms)
        self._clock_ms = max(start, self.end_ms)
        return self._add(pcm, chunk.seq)


@dataclass(frozen=True)
class _Checkpoint:
    version: int
    seq: int  # the last chunk read
    current: _Current | None
    timing: Timing
    end_ms: float
    clock_ms: float | None
    last_timestamp_ms: float | None


class CheckpointError(Exception):
    """A stored checkpoint that this version cannot use (the stream is then read from its header again)."""


class _CheckpointUnpickler(pickle.Unpickler):
    """Only the stream's own state classes: a checkpoint row can never name anything else to build."""

    _MODULES = frozenset({__name__, containers.__name__})
    _BUILTINS = frozenset({"bytearray", "set", "frozenset"})

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES or (module == "builtins" and name in self._BUILTINS):
            return super().find_class(module, name)
        raise CheckpointError(f"a checkpoint may not hold {module}.{name}")


def _load_checkpoint(data: bytes) -> _Checkpoint:
    try:
        state = _CheckpointUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
    if not isinstance(state, _Checkpoint) or state.version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint of another version ({getattr(state, 'version', None)!r})")
    return state


def begins_decoding(data: bytes, mime_type: str) -> bool:
    """Whether a chunk decodes without the chunks before it: a stream's header, or a whole WAV/MP3 file."""
    return containers.stream_start(data) is not None or _whole_file(ChunkBytes(0, data, mime_type, 0.0))


def _whole_file(chunk: ChunkBytes) -> bool:
    """WAV and MP3 chunks decode on their own.

    MP3's frame sync is two bytes that Opus data in the middle of a WebM block can start with too,
    so it counts only when the MIME type does not name a streaming container.
    """
    container, declared = media.detect_container(chunk.data), media.container_for_mime(chunk.mime_type)
    if container == "wav" or declared in ("wav", "mpeg"):
        return True
    return container == "mpeg" and declared == "unknown"


def _fragmented(data: bytes) -> bool:
    """An MP4 that streams as fragments (moov with mvex, or moof boxes) rather than one mdat."""
    boxes = [box for box, _, _ in media.mp4_boxes(data)]
    return b"moof" in boxes or b"mvex" in data[:65536] or b"mdat" not in boxes
