"""Container detection and decoding of recorder chunks (blocking: callers run these in a thread).

A `MediaRecorder.start(timeslice)` recording sends the container header only in its first
chunk; each later WebM chunk is a run of Cluster elements (or starts inside one), each later Ogg
chunk a run of audio pages. A session's chunks are read as one stream by containers.py; this
module tells containers apart by their first bytes and decodes whole files (and a header alone).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import NamedTuple

import av
import numpy as np
from numpy.typing import NDArray

_EBML = b"\x1a\x45\xdf\xa3"
_SEGMENT = 0x18538067
_CLUSTER = 0x1F43B675
_SIMPLEBLOCK = 0xA3
_BLOCKGROUP = 0xA0
_MP4_BOXES = {b"ftyp", b"styp", b"moov", b"moof", b"sidx", b"mdat", b"free", b"skip", b"emsg"}
_MIME_CONTAINERS = {
    "audio/webm": "webm", "video/webm": "webm", "audio/x-matroska": "webm",
    "audio/ogg": "ogg", "application/ogg": "ogg", "audio/opus": "ogg",
    "audio/wav": "wav", "audio/wave": "wav", "audio/x-wav": "wav", "audio/vnd.wave": "wav",
    "audio/mp4": "mp4", "video/mp4": "mp4", "audio/x-m4a": "mp4", "audio/aac": "mp4",
    "audio/mpeg": "mpeg", "audio/mp3": "mpeg",
}


class UndecodableAudio(ValueError):
    """The bytes are not audio this server can decode."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def container_for_mime(mime_type: str) -> str:
    """'audio/webm;codecs=opus' -> 'webm'; 'unknown' for anything else."""
    return _MIME_CONTAINERS.get(mime_type.split(";")[0].strip().lower(), "unknown")


def detect_container(data: bytes) -> str:
    """The container of a chunk by its magic bytes; continuation chunks are recognised too."""
    if data[:4] in (_EBML, _CLUSTER.to_bytes(4, "big")) or _starts_with_block(data):
        return "webm"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[4:8] in _MP4_BOXES:
        return "mp4"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06):
        return "mpeg"  # an ID3 tag, or an MPEG audio frame sync with a layer (ADTS has layer 0)
    return "unknown"


def has_container_header(data: bytes, container: str) -> bool:
    """Whether a chunk starts with its container's header (False for a timeslice continuation)."""
    if container == "webm":
        return data[:4] == _EBML
    if container == "ogg":
        # The first page of a stream has the beginning-of-stream flag and carries OpusHead et al.
        return data[:4] == b"OggS" and len(data) > 5 and bool(data[5] & 0x02)
    if container == "mp4":
        return any(box == b"moov" for box, _, _ in mp4_boxes(data))
    return container != "unknown" and detect_container(data) == container  # WAV, MP3: every chunk is whole


def decode_pcm(data: bytes, sample_rate: int = 16000) -> NDArray[np.float32]:
    """Decode the first audio stream to float32 mono at `sample_rate` (empty for a header alone)."""
    if _header_only(data):
        return np.zeros(0, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    pieces: list[NDArray[np.float32]] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise UndecodableAudio("no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                pieces.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
            pieces.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    except av.FFmpegError as exc:
        # Keep what decoded before a damaged tail; fail only when nothing did.
        if not pieces:
            raise UndecodableAudio(f"{type(exc).__name__}: {exc}") from exc
    if not pieces:
        raise UndecodableAudio("no audio frames")
    return np.concatenate(pieces).astype(np.float32, copy=False)


def wav_bytes(pcm: NDArray[np.float32], sample_rate: int) -> bytes:
    """16-bit mono WAV of float audio (for engines that take a file)."""
    samples = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + (36 + len(samples)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + sample_rate.to_bytes(4, "little")
    header += (sample_rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return header + b"data" + len(samples).to_bytes(4, "little") + samples


def measure_duration_ms(data: bytes) -> int | None:
    """Length of the audio from its packet timestamps (no decoding); None when not readable."""
    if _header_only(data):
        return 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            spans = [(p.pts, p.pts + (p.duration or 0)) for p in container.demux(stream) if p.pts is not None]
            time_base = stream.time_base  # PyAV 18.1.1 refuses a closed container's stream attributes
    except av.FFmpegError:
        return None
    if not spans or time_base is None:
        return None
    ticks = max(end for _, end in spans) - min(start for start, _ in spans)
    return round(ticks * time_base * 1000)


def _header_only(data: bytes) -> bool:
    """A WebM or Ogg chunk that is a complete header and nothing else (a recorder's first blob
    can be), which libavformat refuses to open; it holds no audio rather than bad audio."""
    container = detect_container(data)
    try:
        if container == "webm" and has_container_header(data, "webm"):
            return _webm_header_end(data) == len(data)
        if container == "ogg" and has_container_header(data, "ogg"):
            return _ogg_header_end(data) == len(data)
    except UndecodableAudio:
        return False
    return False


# --- WebM (EBML) ---------------------------------------------------------------------------


class _Element(NamedTuple):
    id: int
    start: int  # offset of the element ID
    data_start: int
    size: int | None  # None: unknown size (live streams)


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    """(raw value with its length marker, length) of the EBML variable-length integer at pos."""
    if pos >= len(data) or data[pos] == 0:
        raise UndecodableAudio(f"bad EBML number at byte {pos}")
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        raise UndecodableAudio(f"truncated EBML number at byte {pos}")
    return int.from_bytes(data[pos : pos + length], "big"), length


def _element(data: bytes, pos: int) -> _Element:
    eid, id_len = _vint(data, pos)
    raw_size, size_len = _vint(data, pos + id_len)
    size = raw_size & ~(1 << (7 * size_len))
    unknown = size == (1 << (7 * size_len)) - 1
    return _Element(eid, pos, pos + id_len + size_len, None if unknown else size)


def _webm_header_end(data: bytes) -> int:
    """Where the header (EBML header + Segment start + every Segment child before the first Cluster) ends.

    Walks the elements instead of searching for the Cluster ID, which could also occur inside
    CodecPrivate or a SeekHead.
    """
    ebml = _element(data, 0)
    if ebml.id != int.from_bytes(_EBML, "big") or ebml.size is None:
        raise UndecodableAudio("not a WebM header (no EBML element)")
    segment = _element(data, ebml.data_start + ebml.size)
    if segment.id != _SEGMENT:
        raise UndecodableAudio("no Segment after the EBML header")
    pos = segment.data_start
    while pos < len(data):
        child = _element(data, pos)
        if child.id == _CLUSTER:
            break
        if child.size is None or child.data_start + child.size > len(data):
            raise UndecodableAudio("WebM header ends inside an element")
        pos = child.data_start + child.size
    return pos


def _starts_with_block(data: bytes) -> bool:
    """A WebM chunk that starts inside a cluster: a whole SimpleBlock of track >= 1, or a BlockGroup."""
    if data[:1] not in (bytes([_SIMPLEBLOCK]), bytes([_BLOCKGROUP])):
        return False
    try:
        element = _element(data, 0)
        if element.size is None or element.data_start + element.size > len(data):
            return False
        if element.id == _BLOCKGROUP:
            return data[element.data_start] == 0xA1  # its Block
        track, length = _vint(data, element.data_start)
        return track & ~(1 << (7 * length)) >= 1 and element.size >= length + 3
    except UndecodableAudio:
        return False


# --- Ogg ---------------------------------------------------------------------------------------

# Header packets of each Ogg codec mapping, by the signature of its first packet.
_OGG_HEADER_PACKETS = {b"OpusHead": 2, b"\x01vorbis": 3, b"Speex   ": 2}


def _ogg_pages(data: bytes) -> Iterator[tuple[int, list[int], bytes]]:
    """(end offset, lacing values, body) of each complete Ogg page."""
    pos = 0
    while pos + 27 <= len(data) and data[pos : pos + 4] == b"OggS":
        count = data[pos + 26]
        lacing = list(data[pos + 27 : pos + 27 + count])
        body_start = pos + 27 + count
        end = body_start + sum(lacing)
        if end > len(data):
            return
        yield end, lacing, data[body_start:end]
        pos = end


def _ogg_header_end(data: bytes) -> int:
    """End of the pages that carry the codec's header packets (OpusHead and OpusTags for Opus)."""
    needed, packets = None, 0
    for end, lacing, body in _ogg_pages(data):
        if needed is None:
            needed = next((n for sig, n in _OGG_HEADER_PACKETS.items() if body.startswith(sig)), None)
            if needed is None:
                raise UndecodableAudio("Ogg stream of an unsupported codec")
        packets += sum(1 for value in lacing if value < 255)
        if packets >= needed:
            return end
    raise UndecodableAudio("Ogg chunk ends before its header packets")


# --- MP4 ---------------------------------------------------------------------------------------


def mp4_boxes(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of the top-level boxes, stopping at the first malformed one."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        box = data[pos + 4 : pos + 8]
        if size == 1 and pos + 16 <= len(data):
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            return
        yield box, pos, min(pos + size, len(data))
        pos += size
