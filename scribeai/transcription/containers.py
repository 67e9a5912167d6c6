"""Incremental demuxers for browser recordings: WebM/Matroska, Ogg and fragmented MP4 (pure, no I/O).

`MediaRecorder.start(timeslice)` blobs are byte ranges of one continuous stream cut anywhere.
A demuxer takes them in order through `feed()` and returns the codec packets completed so
far, with their timestamps, holding back only the partial element, page or box (master
elements are descended into, never buffered). After `gap()`, or on bytes that cannot be
parsed, it scans for the next Cluster / CRC-valid page / `moof` and goes on from there.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

_MAX_UNIT = 1 << 20  # the largest element, page, box or sample held back; larger means corruption


class StreamError(ValueError):
    """The stream header cannot be used: unsupported codec, or no audio track."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CodecConfig:
    codec: str  # PyAV decoder name: "opus", "aac", "vorbis"
    sample_rate: int
    channels: int
    extradata: bytes  # opus: an OpusHead; aac: AudioSpecificConfig; vorbis: Xiph-laced headers


@dataclass(frozen=True)
class Packet:
    data: bytes
    pts_ms: float | None  # time of the packet's first sample on the stream's own timeline
    duration_ms: float | None
    seq: int  # the `seq` of the feed() call in which the packet was completed


class Demuxer(Protocol):
    container: str
    config: CodecConfig | None
    buffered: int
    resyncs: int

    def feed(self, data: bytes, seq: int) -> list[Packet]: ...

    def gap(self) -> None: ...


class _Corrupt(Exception):
    """The bytes at the current position are not a valid unit of the container."""


def stream_start(data: bytes) -> str | None:
    """'webm' / 'ogg' / 'mp4' when `data` begins with that container's stream header, else None."""
    if data[:4] == _EBML_MAGIC:
        return "webm"
    if data[:4] == b"OggS" and len(data) > 5 and data[5] & 0x02:
        return "ogg"
    if data[4:8] in (b"ftyp", b"moov"):
        return "mp4"
    return None


def open_demuxer(container: str) -> Demuxer:
    """A fresh demuxer for 'webm', 'ogg' or 'mp4'."""
    kinds: dict[str, type[_Demuxer]] = {"webm": WebmDemuxer, "ogg": OggDemuxer, "mp4": Mp4Demuxer}
    if container not in kinds:
        raise ValueError(f"no demuxer for container {container!r}")
    return kinds[container]()


class _Demuxer:
    """Byte bookkeeping shared by the demuxers: the held-back bytes, skipping, resync scans."""

    container = ""
    _sync: re.Pattern[bytes]  # magic bytes of a candidate sync point
    _sync_lead = 0  # bytes of a sync point before its magic
    _sync_keep = 3  # bytes kept at the end of a scan that found nothing: a magic may begin there

    def __init__(self) -> None:
        self.config: CodecConfig | None = None
        self.buffered = 0
        self.resyncs = 0
        self._buf = bytearray()
        self._at = 0  # read position in _buf; consumed bytes are cut off once per feed()
        self._pos = 0  # stream offset of _buf[0]
        self._skip = 0  # bytes still to pass over without holding them
        self._scanning = False
        self._seq = 0
        self._out: list[Packet] = []

    def feed(self, data: bytes, seq: int) -> list[Packet]:
        """Take the next bytes of the stream; return the packets they complete."""
        self._seq = seq
        self._buf += data
        while self._step():
            pass
        del self._buf[: self._at]
        self._pos += self._at
        self._at = 0
        self.buffered = len(self._buf)
        out, self._out = self._out, []
        return out

    def gap(self) -> None:
        """Bytes are missing before the next feed(): drop the partial unit and resync."""
        self._pos += len(self._buf)
        self._buf.clear()
        self._at = 0
        self.buffered = 0
        self._lost()

    def __repr__(self) -> str:
        codec = self.config.codec if self.config else None
        return (
            f"<{type(self).__name__} codec={codec} offset={self._pos + self._at} buffered={self.buffered} "
            f"skipping={self._skip} scanning={self._scanning} resyncs={self.resyncs}>"
        )

    @property
    def _avail(self) -> int:
        return len(self._buf) - self._at

    @property
    def _offset(self) -> int:
        return self._pos + self._at

    def _step(self) -> bool:
        """Consume one unit if the buffer holds it; False when more bytes are needed."""
        if self._skip:
            n = min(self._skip, self._avail)
            self._at += n
            self._skip -= n
            return self._skip == 0
        if self._scanning:
            return self._scan()
        start = self._at
        try:
            return self._parse()
        except (_Corrupt, IndexError, struct.error):
            # IndexError/struct.error: lengths inside a complete unit that point past its end.
            self._at = start + 1
            self._lost()
            return True

    def _lost(self) -> None:
        self.resyncs += 1
        self._skip = 0
        self._scanning = True
        self._reset()

    def _scan(self) -> bool:
        start = self._at + self._sync_lead
        while (match := self._sync.search(self._buf, start)) is not None:
            at = match.start() - self._sync_lead
            verdict = self._sync_at(at)
            if verdict is None:
                self._at = at
                return False
            if verdict:
                self._at = at
                self._scanning = False
                return True
            start = match.start() + 1
        self._at = max(self._at, len(self._buf) - self._sync_keep)
        return False

    def _emit(self, data: bytes, pts_ms: float | None, duration_ms: float | None) -> None:
        self._out.append(Packet(data, pts_ms, duration_ms, self._seq))

    def _parse(self) -> bool:
        raise NotImplementedError

    def _sync_at(self, at: int) -> bool | None:
        """Whether a sync point starts at _buf[at]; None when more bytes are needed to tell."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget the state that bytes lost before a resync made unreliable."""
        raise NotImplementedError


# --- codec helpers -------------------------------------------------------------------------

_OPUS_FRAME = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4  # by TOC config
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def opus_samples(packet: bytes) -> int | None:
    """Samples at 48 kHz in an Opus packet, from its TOC byte (RFC 6716 §3.1); None if malformed."""
    if not packet:
        return None
    toc = packet[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    elif len(packet) < 2 or not packet[1] & 0x3F:
        return None
    else:
        frames = packet[1] & 0x3F
    samples = _OPUS_FRAME[toc >> 3] * frames
    return samples if samples <= 5760 else None


def _opus_config(head: bytes, fallback_channels: int = 0) -> CodecConfig:
    if len(head) < 19 or head[:8] != b"OpusHead":
        raise StreamError("malformed OpusHead")
    return CodecConfig("opus", 48000, head[9] or fallback_channels, head)


def _opus_head(channels: int, pre_skip: int) -> bytes:
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48000, 0, 0)


def _asc_info(asc: bytes) -> tuple[int, int]:
    """(sample rate, channels) of an AAC AudioSpecificConfig."""
    bits = int.from_bytes(asc[:8].ljust(8, b"\0"), "big")
    shift = 64 - 5
    if bits >> shift == 31:
        shift -= 6
    shift -= 4
    index = (bits >> shift) & 0xF
    if index == 15:
        shift -= 24
        rate = (bits >> shift) & 0xFFFFFF
    elif index < len(_AAC_RATES):
        rate = _AAC_RATES[index]
    else:
        raise StreamError("malformed AudioSpecificConfig")
    shift -= 4
    return rate, (bits >> shift) & 0xF


def _aac_config(asc: bytes, rate: int = 0, channels: int = 0) -> CodecConfig:
    asc_rate, asc_channels = _asc_info(asc)
    return CodecConfig("aac", asc_rate or rate, asc_channels or channels, asc)


def _lc_asc(rate: int, channels: int) -> bytes:
    if rate not in _AAC_RATES:
        raise StreamError(f"AAC at {rate} Hz without an AudioSpecificConfig")
    return ((2 << 11) | (_AAC_RATES.index(rate) << 7) | (channels << 3)).to_bytes(2, "big")


def _duration_ms(config: CodecConfig | None, packet: bytes) -> float | None:
    if config is None:
        return None
    if config.codec == "opus":
        samples = opus_samples(packet)
        return None if samples is None else samples / 48
    if config.codec == "aac":
        return 1024_000 / config.sample_rate
    return None


# --- WebM / Matroska -----------------------------------------------------------------------

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML = 0x1A45DFA3
_SEGMENT = 0x18538067
_CLUSTER = 0x1F43B675
_INFO = 0x1549A966
_TRACKS = 0x1654AE6B
_TIMECODE = 0xE7
_SIMPLEBLOCK = 0xA3
_BLOCK = 0xA1
_BLOCKGROUP = 0xA0
_CRC32 = 0xBF
_BLOCKS = (_SIMPLEBLOCK, _BLOCK)
_UNSIZED = (_SEGMENT, _CLUSTER)  # the only masters Matroska lets have an unknown size
_EBML_HEADER_CHILDREN = (0x4286, 0x42F7, 0x42F2, 0x42F3, 0x4282, 0x4287, 0x4285)

# What to do with each element met at the levels walked: EBML header, Segment, Cluster, BlockGroup.
# Anything else there means the bytes are not Matroska (garbage, or a cut we were not told of).
_WEBM_ACTIONS: dict[int, str] = {
    _SEGMENT: "descend", _CLUSTER: "descend", _BLOCKGROUP: "descend",
    _EBML: "read", _INFO: "read", _TRACKS: "read", _TIMECODE: "read", _SIMPLEBLOCK: "read", _BLOCK: "read",
    0x114D9B74: "skip-any", 0x1C53BB6B: "skip-any", 0x1254C367: "skip-any",  # SeekHead, Cues, Tags
    0x1043A770: "skip-any", 0x1941A469: "skip-any",  # Chapters, Attachments
    0xEC: "skip", _CRC32: "skip", 0xA7: "skip", 0xAB: "skip", 0x5854: "skip", 0xAF: "skip",  # Void, CRC-32, ...
    0x9B: "skip", 0xFB: "skip", 0x75A2: "skip", 0x75A1: "skip", 0xFA: "skip", 0xA4: "skip",  # in BlockGroup
    0xA2: "skip", 0x8E: "skip", 0xFD: "skip", 0xC8: "skip", 0xC0: "skip",
}
_WEBM_CODECS = {"A_OPUS": "opus", "A_VORBIS": "vorbis"}


def _vint_length(first: int) -> int:
    return 9 - first.bit_length()  # 9 (invalid) for a zero byte


def _read_vint(buf: bytes | bytearray, i: int, max_length: int = 8) -> tuple[int, int] | None:
    """(length, value without the marker bit) of the EBML varint at buf[i]; None if incomplete."""
    if i >= len(buf):
        return None
    length = _vint_length(buf[i])
    if length > max_length:
        raise _Corrupt
    if i + length > len(buf):
        return None
    return length, int.from_bytes(buf[i : i + length], "big") & ((1 << (7 * length)) - 1)


def _element_header(buf: bytes | bytearray, i: int) -> tuple[int, int | None, int] | None:
    """(id, size or None when unknown, header length) of the element at buf[i]; None if incomplete."""
    if i >= len(buf):
        return None
    id_length = _vint_length(buf[i])
    if id_length > 4:
        raise _Corrupt
    size = _read_vint(buf, i + id_length)
    if size is None:
        return None
    size_length, value = size
    eid = int.from_bytes(buf[i : i + id_length], "big")
    unknown = value == (1 << (7 * size_length)) - 1
    return eid, None if unknown else value, id_length + size_length


def _elements(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The children of a known-size master element held whole."""
    i = 0
    while i < len(data):
        head = _element_header(data, i)
        if head is None:
            raise _Corrupt
        eid, size, length = head
        if size is None or i + length + size > len(data):
            raise _Corrupt
        yield eid, data[i + length : i + length + size]
        i += length + size


def _ebml_uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _ebml_float(data: bytes) -> float:
    if len(data) == 4:
        return float(struct.unpack(">f", data)[0])
    if len(data) == 8:
        return float(struct.unpack(">d", data)[0])
    return 0.0


def _unlace(body: bytes, i: int, flags: int) -> list[bytes]:
    """The frames of a block whose frame data starts at body[i] (Matroska lacing)."""
    lacing = (flags >> 1) & 3
    if lacing == 0:
        return [body[i:]]
    count = body[i] + 1
    i += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph: each size a run of 255s ended by a smaller byte
        for _ in range(count - 1):
            size = 0
            while body[i] == 255:
                size += 255
                i += 1
            sizes.append(size + body[i])
            i += 1
    elif lacing == 3:  # EBML: the first size, then signed differences
        for n in range(count - 1):
            vint = _read_vint(body, i)
            if vint is None:
                raise _Corrupt
            length, value = vint
            sizes.append(value if n == 0 else sizes[-1] + value - ((1 << (7 * length - 1)) - 1))
            i += length
    else:  # fixed: equal sizes
        if (len(body) - i) % count:
            raise _Corrupt
        sizes = [(len(body) - i) // count] * (count - 1)
    sizes.append(len(body) - i - sum(sizes))
    if min(sizes) < 0:
        raise _Corrupt
    frames = []
    for size in sizes:
        frames.append(body[i : i + size])
        i += size
    return frames


@dataclass(frozen=True)
class _WebmTrack:
    number: int
    config: CodecConfig
    codec_delay_ns: int


def _webm_track(tracks: bytes) -> _WebmTrack:
    """The first audio track of a Tracks element."""
    for eid, entry in _elements(tracks):
        if eid != 0xAE:
            continue
        fields = dict(_elements(entry))
        if _ebml_uint(fields.get(0x83, b"")) == 2:
            return _WebmTrack(
                _ebml_uint(fields.get(0xD7, b"")), _webm_config(fields), _ebml_uint(fields.get(0x56AA, b""))
            )
    raise StreamError("no audio track in the WebM header")


def _webm_config(fields: dict[int, bytes]) -> CodecConfig:
    codec_id = fields.get(0x86, b"").rstrip(b"\0").decode("ascii", "replace")
    private = fields.get(0x63A2, b"")
    audio = dict(_elements(fields.get(0xE1, b"")))
    rate = round(_ebml_float(audio.get(0xB5, b""))) or 8000  # Matroska's defaults: 8 kHz, mono
    channels = _ebml_uint(audio.get(0x9F, b"")) or 1
    if codec_id == "A_OPUS":
        delay = _ebml_uint(fields.get(0x56AA, b"")) * 48 // 1_000_000
        return _opus_config(private or _opus_head(channels, delay), channels)
    if codec_id.startswith("A_AAC"):
        return _aac_config(private or _lc_asc(rate, channels), rate, channels)
    if codec_id == "A_VORBIS" and private:
        return CodecConfig("vorbis", rate, channels, private)
    raise StreamError(f"unsupported WebM audio codec {codec_id!r}")


class WebmDemuxer(_Demuxer):
    """WebM/Matroska: SimpleBlocks and BlockGroups of the first audio track, in any lacing."""

    container = "webm"
    # A Cluster (to be confirmed by its Timecode) or a new stream's EBML header.
    _sync = re.compile(re.escape(_CLUSTER.to_bytes(4, "big")) + b"|" + re.escape(_EBML_MAGIC))

    def __init__(self) -> None:
        super().__init__()
        self._track: _WebmTrack | None = None
        self._scale = 1_000_000  # TimecodeScale, ns per tick
        self._cluster_tc: int | None = None

    def _reset(self) -> None:
        self._cluster_tc = None

    def _parse(self) -> bool:
        head = _element_header(self._buf, self._at)
        if head is None:
            return False
        eid, size, length = head
        action = _WEBM_ACTIONS.get(eid)
        if action is None or (size is None and eid not in _UNSIZED):
            raise _Corrupt
        if action == "descend":
            self._at += length
            if eid == _CLUSTER:
                self._cluster_tc = None
            return True
        assert size is not None
        if eid in _BLOCKS:
            track = _read_vint(self._buf, self._at + length)
            if track is None:
                return False
            if self._track is None or track[1] != self._track.number:
                action = "skip-any"  # another track's blocks may be large video frames
        if action.startswith("skip"):
            if action == "skip" and size > _MAX_UNIT:
                raise _Corrupt
            self._at += length
            self._skip = size
            return True
        if size > _MAX_UNIT:
            raise _Corrupt
        if self._avail < length + size:
            return False
        body = bytes(self._buf[self._at + length : self._at + length + size])
        self._read(eid, body)
        self._at += length + size
        return True

    def _read(self, eid: int, body: bytes) -> None:
        if eid in _BLOCKS:
            self._block(body)
        elif eid == _TIMECODE:
            self._cluster_tc = _ebml_uint(body)
        elif eid == _INFO:
            self._scale = _ebml_uint(dict(_elements(body)).get(0x2AD7B1, b"")) or 1_000_000
        elif eid == _TRACKS:
            try:
                self._track = _webm_track(body)
            except (_Corrupt, IndexError, struct.error):
                raise StreamError("malformed WebM Tracks element") from None
            self.config = self._track.config
        elif eid == _EBML:  # a new stream (recorder restarted): its own Tracks follow
            self._track = None
            self._scale = 1_000_000
            self._cluster_tc = None

    def _block(self, body: bytes) -> None:
        assert self._track is not None
        vint = _read_vint(body, 0)
        if vint is None or len(body) < vint[0] + 3:
            raise _Corrupt
        length = vint[0]
        relative = int.from_bytes(body[length : length + 2], "big", signed=True)
        frames = _unlace(body, length + 3, body[length + 2])
        pts: float | None = None
        if self._cluster_tc is not None:
            ticks = self._cluster_tc + relative
            # CodecDelay is subtracted as Matroska prescribes, like Ogg's pre-skip and libavformat.
            pts = (ticks * self._scale - self._track.codec_delay_ns) / 1e6
        for frame in frames:
            duration = _duration_ms(self.config, frame)
            self._emit(frame, pts, duration)
            pts = None if pts is None or duration is None else pts + duration

    def _sync_at(self, at: int) -> bool | None:
        try:
            head = _element_header(self._buf, at)
            if head is None:
                return None
            if head[0] == _EBML:
                child = _element_header(self._buf, at + head[2])
                return None if child is None else child[0] in _EBML_HEADER_CHILDREN
            at += head[2]
            timecode = _element_header(self._buf, at)
            if timecode is not None and timecode[:2] == (_CRC32, 4):  # Matroska muxers checksum Clusters
                at += timecode[2] + 4
                timecode = _element_header(self._buf, at)
        except _Corrupt:
            return False
        if timecode is None:
            return None
        eid, size, length = timecode
        if eid != _TIMECODE or size is None or size > 8:
            return False
        return True if at + length + size <= len(self._buf) else None


# --- Ogg -----------------------------------------------------------------------------------

_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
_NO_GRANULE = -1


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, unreflected, initial 0), computed by zlib for speed."""
    data = page[:22] + b"\0\0\0\0" + page[26:]
    # zlib's CRC is the reflected one with pre/post inversion: reflect the bytes, cancel the inversion.
    raw = zlib.crc32(data.translate(_BIT_REVERSED)) ^ zlib.crc32(bytes(len(data)))
    return int(f"{raw:032b}"[::-1], 2)


def _page_length(buf: bytes | bytearray, i: int) -> int | None:
    """The length of the Ogg page at buf[i]; None if its header is incomplete."""
    if len(buf) - i < 27:
        return None
    if buf[i : i + 4] != b"OggS" or buf[i + 4] != 0:
        raise _Corrupt
    segments = buf[i + 26]
    if len(buf) - i < 27 + segments:
        return None
    return 27 + segments + sum(buf[i + 27 : i + 27 + segments])


def _page_valid(buf: bytes | bytearray, i: int, length: int) -> bool:
    page = bytes(buf[i : i + length])
    return _ogg_crc(page) == int.from_bytes(page[22:26], "little")


class OggDemuxer(_Demuxer):
    """Ogg: the first Opus logical stream, packets joined across pages, pts from granule positions."""

    container = "ogg"
    _sync = re.compile(b"OggS")

    def __init__(self) -> None:
        super().__init__()
        self._serial: int | None = None
        self._pre_skip = 0
        self._headers_left = 0
        self._page_seq: int | None = None
        self._partial: bytearray | None = None  # None: drop bytes until the next packet starts
        self._next: int | None = None  # granule at which the next packet starts, when known
        self._in_bos_group = False
        self._unsupported: str | None = None

    def _reset(self) -> None:
        self._page_seq = None
        self._partial = None
        self._next = None

    def _parse(self) -> bool:
        length = _page_length(self._buf, self._at)
        if length is None or self._avail < length:
            return False
        if not _page_valid(self._buf, self._at, length):
            raise _Corrupt
        page = bytes(self._buf[self._at : self._at + length])
        self._at += length
        self._page(page)
        return True

    def _sync_at(self, at: int) -> bool | None:
        try:
            length = _page_length(self._buf, at)
        except _Corrupt:
            return False
        if length is None or len(self._buf) - at < length:
            return None
        return _page_valid(self._buf, at, length)

    def _page(self, page: bytes) -> None:
        flags = page[5]
        granule, serial, sequence = struct.unpack_from("<qII", page, 6)
        bos = bool(flags & 0x02)
        if bos:
            self._begin(serial, page[27 + page[26] :])
        elif self._in_bos_group and self._serial is None and self._unsupported:
            raise StreamError(f"no Opus stream in the Ogg header (found {self._unsupported})")
        self._in_bos_group = bos
        if bos or serial != self._serial:
            return
        if self._page_seq is not None and sequence != (self._page_seq + 1) & 0xFFFFFFFF:
            self._reset()  # a page went missing: its packet and the running granule are unknown
        self._page_seq = sequence
        packets = self._packets(page, continued=bool(flags & 0x01))
        while packets and self._headers_left:
            packets.pop(0)
            self._headers_left -= 1
        if packets:
            self._timestamp(packets, granule)

    def _begin(self, serial: int, first: bytes) -> None:
        # A BOS page after non-BOS pages starts a new chained stream (a restarted recorder).
        if self._serial is not None and self._in_bos_group:
            return
        if not first.startswith(b"OpusHead"):
            self._unsupported = first[:8].strip(b"\x00\x01").decode("ascii", "replace") or "unknown"
            return
        self.config = _opus_config(first)
        self._pre_skip = int.from_bytes(first[10:12], "little")
        self._serial = serial
        self._headers_left = 1  # OpusTags
        self._page_seq = None
        self._partial = bytearray()
        self._next = None

    def _packets(self, page: bytes, continued: bool) -> list[bytes]:
        if not continued or not self._partial:
            self._partial = None if continued else bytearray()
        body_at = 27 + page[26]
        packets: list[bytes] = []
        for lace in page[27:body_at]:
            if self._partial is not None:
                self._partial += page[body_at : body_at + lace]
            body_at += lace
            if lace < 255:
                if self._partial is not None:
                    packets.append(bytes(self._partial))
                self._partial = bytearray()
        return packets

    def _timestamp(self, packets: list[bytes], granule: int) -> None:
        durations = [opus_samples(p) for p in packets]
        end: int | None = None
        if self._next is not None:
            starts, end = _count_forward(self._next, durations)
        elif granule != _NO_GRANULE:  # the first page after the headers or a resync: count back
            starts = _count_back(granule, durations)
        else:
            starts = [None] * len(packets)
        self._next = granule if granule != _NO_GRANULE else end
        for packet, start, duration in zip(packets, starts, durations):
            pts = None if start is None else (start - self._pre_skip) / 48
            self._emit(packet, pts, None if duration is None else duration / 48)


def _count_forward(start: int, durations: list[int | None]) -> tuple[list[int | None], int | None]:
    """The start of each packet from the first one's, and the end of the last."""
    starts: list[int | None] = []
    at: int | None = start
    for duration in durations:
        starts.append(at)
        at = None if at is None or duration is None else at + duration
    return starts, at


def _count_back(end: int, durations: list[int | None]) -> list[int | None]:
    """The start of each packet from the end of the last one."""
    starts: list[int | None] = []
    at: int | None = end
    for duration in reversed(durations):
        at = None if at is None or duration is None else at - duration
        starts.append(at)
    return starts[::-1]


# --- fragmented MP4 ------------------------------------------------------------------------

_MP4_TOP = {b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"sidx", b"ssix", b"emsg",
            b"prft", b"mfra", b"meta", b"uuid", b"pdin", b"wide"}  # fmt: skip
_AAC_OBJECT_TYPES = (0x40, 0x66, 0x67, 0x68)  # MPEG-4 audio, MPEG-2 AAC profiles


def _box_header(buf: bytes | bytearray, i: int) -> tuple[bytes, int, int] | None:
    """(type, size, header length) of the box at buf[i]; None if incomplete."""
    if len(buf) - i < 8:
        return None
    size = int.from_bytes(buf[i : i + 4], "big")
    kind = bytes(buf[i + 4 : i + 8])
    length = 8
    if size == 1:
        if len(buf) - i < 16:
            return None
        size = int.from_bytes(buf[i + 8 : i + 16], "big")
        length = 16
    if size < length:  # includes size 0, "to the end of the file", which a live stream never ends
        raise _Corrupt
    return kind, size, length


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The child boxes of a box body held whole (a short tail, like udta's terminator, is ignored)."""
    i = 0
    while len(data) - i >= 8:
        head = _box_header(data, i)
        if head is None or i + head[1] > len(data):
            raise _Corrupt
        kind, size, length = head
        yield kind, data[i + length : i + size]
        i += size


def _child(data: bytes, *path: bytes) -> bytes | None:
    for kind in path:
        found = next((body for k, body in _boxes(data) if k == kind), None)
        if found is None:
            return None
        data = found
    return data


def _descriptor(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the MPEG-4 descriptor at data[i]."""
    tag = data[i]
    size = 0
    for i in range(i + 1, i + 5):
        size = (size << 7) | (data[i] & 0x7F)
        if not data[i] & 0x80:
            break
    return tag, i + 1, i + 1 + size


def _esds_asc(esds: bytes) -> bytes:
    tag, i, _ = _descriptor(esds, 4)
    if tag != 0x03:
        raise _Corrupt
    flags = esds[i + 2]
    i += 3 + (2 if flags & 0x80 else 0)
    if flags & 0x40:
        i += 1 + esds[i]
    i += 2 if flags & 0x20 else 0
    tag, i, _ = _descriptor(esds, i)
    if tag != 0x04:
        raise _Corrupt
    if esds[i] not in _AAC_OBJECT_TYPES:
        raise StreamError(f"unsupported MP4 audio object type 0x{esds[i]:02x}")
    tag, i, end = _descriptor(esds, i + 13)
    if tag != 0x05:
        raise _Corrupt
    return esds[i:end]


def _dops_to_opus_head(dops: bytes) -> bytes:
    channels = dops[1]
    pre_skip, rate, gain = struct.unpack_from(">HIh", dops, 2)
    return b"OpusHead" + struct.pack("<BBHIh", 1, channels, pre_skip, rate, gain) + dops[10:]


def _sample_entry_config(kind: bytes, entry: bytes) -> CodecConfig:
    version = int.from_bytes(entry[8:10], "big")
    channels = int.from_bytes(entry[16:18], "big")
    rate = int.from_bytes(entry[24:28], "big") >> 16
    children = entry[28 + {1: 16, 2: 36}.get(version, 0) :]
    if kind == b"mp4a":
        esds = _child(children, b"esds") or _child(children, b"wave", b"esds")
        if esds is None:
            raise StreamError("mp4a without esds")
        return _aac_config(_esds_asc(esds), rate, channels)
    if kind == b"Opus":
        dops = _child(children, b"dOps")
        if dops is None:
            raise StreamError("Opus sample entry without dOps")
        return _opus_config(_dops_to_opus_head(dops), channels)
    raise StreamError(f"unsupported MP4 audio codec {kind.decode('ascii', 'replace')!r}")


def _full_box_fields(body: bytes, *widths: int) -> list[int]:
    """Integer fields after a full box's version/flags; a width of 0 means 8 bytes in version 1, else 4."""
    version = body[0]
    values, i = [], 4
    for width in widths:
        width = width or (8 if version == 1 else 4)
        values.append(int.from_bytes(body[i : i + width], "big"))
        i += width
    return values


@dataclass(frozen=True)
class _Mp4Track:
    track_id: int
    timescale: int
    shift: int  # media ticks subtracted by the edit list
    config: CodecConfig


def _mp4_track(trak: bytes, movie_timescale: int) -> _Mp4Track | None:
    """The track described by a trak box, None when it is not audio."""
    hdlr = _child(trak, b"mdia", b"hdlr")
    if hdlr is None or hdlr[8:12] != b"soun":
        return None
    tkhd, mdhd = _child(trak, b"tkhd"), _child(trak, b"mdia", b"mdhd")
    stsd = _child(trak, b"mdia", b"minf", b"stbl", b"stsd")
    if tkhd is None or mdhd is None or stsd is None:
        raise _Corrupt
    track_id = _full_box_fields(tkhd, 0, 0, 4)[2]
    timescale = _full_box_fields(mdhd, 0, 0, 4)[2]
    entry = next(_boxes(stsd[8:]), None)
    if entry is None or not timescale:
        raise _Corrupt
    shift = _edit_shift(_child(trak, b"edts", b"elst"), movie_timescale, timescale)
    return _Mp4Track(track_id, timescale, shift, _sample_entry_config(*entry))


def _edit_shift(elst: bytes | None, movie_timescale: int, timescale: int) -> int:
    """Media ticks to subtract for presentation: the first edit's media time less leading empty edits."""
    if elst is None:
        return 0
    wide = elst[0] == 1
    step = 20 if wide else 12
    empty = 0
    for i in range(8, 8 + step * int.from_bytes(elst[4:8], "big"), step):
        duration, media_time = struct.unpack_from(">Qq" if wide else ">Ii", elst, i)
        if media_time != -1:
            return int(media_time) - empty * timescale // max(movie_timescale, 1)
        empty += duration
    return 0


@dataclass(frozen=True)
class _Sample:
    offset: int  # in the stream
    size: int
    pts: int | None  # media ticks
    duration: int


class Mp4Demuxer(_Demuxer):
    """Fragmented MP4: moov once, then moof + mdat pairs; samples of the first audio track."""

    container = "mp4"
    _sync = re.compile(b"moof|ftyp")
    _sync_lead = 4
    _sync_keep = 7

    def __init__(self) -> None:
        super().__init__()
        self._track: _Mp4Track | None = None
        self._defaults = (0, 0)  # trex default sample duration and size
        self._samples: list[_Sample] = []  # of the last moof, waiting for their mdat
        self._mdat_end: int | None = None  # stream offset where the mdat being read ends
        self._next_dts: int | None = None
        # File offset minus stream offset, for tfhd's explicit base-data-offset; unknown after lost bytes.
        self._shift: int | None = 0
        self._unanchored = False  # _samples hold file offsets, to be anchored at the next mdat

    def _reset(self) -> None:
        self._samples = []
        self._mdat_end = None
        self._next_dts = None
        self._shift = None
        self._unanchored = False

    def _parse(self) -> bool:
        if self._mdat_end is not None:
            return self._mdat_step()
        head = _box_header(self._buf, self._at)
        if head is None:
            return False
        kind, size, length = head
        if kind not in _MP4_TOP:
            raise _Corrupt
        if kind == b"mdat":
            self._at += length
            self._mdat_end = self._offset + size - length
            if self._unanchored and self._samples:
                self._anchor(self._offset)
            return True
        if kind not in (b"moov", b"moof"):
            self._at += length
            self._skip = size - length
            return True
        if size > _MAX_UNIT:
            raise _Corrupt
        if self._avail < size:
            return False
        body = bytes(self._buf[self._at + length : self._at + size])
        if kind == b"moov":
            self._moov(body)
        else:
            self._moof(body, self._offset)
        self._at += size
        return True

    def _moov(self, body: bytes) -> None:
        try:
            mvhd = _child(body, b"mvhd")
            movie_timescale = _full_box_fields(mvhd, 0, 0, 4)[2] if mvhd else 1000
            tracks = (_mp4_track(trak, movie_timescale) for kind, trak in _boxes(body) if kind == b"trak")
            track = next((t for t in tracks if t is not None), None)
            if track is None:
                raise StreamError("no audio track in the MP4 header")
            mvex = _child(body, b"mvex") or b""
            for kind, trex in _boxes(mvex):
                if kind == b"trex" and int.from_bytes(trex[4:8], "big") == track.track_id:
                    self._defaults = (int.from_bytes(trex[12:16], "big"), int.from_bytes(trex[16:20], "big"))
        except (_Corrupt, IndexError, struct.error):
            raise StreamError("malformed MP4 moov box") from None
        self._track = track
        self.config = track.config
        self._samples = []
        self._next_dts = None

    def _moof(self, body: bytes, moof_offset: int) -> None:
        self._unanchored = False
        samples: list[_Sample] = []
        for kind, traf in _boxes(body):
            if kind == b"traf":
                samples += self._traf(traf, moof_offset)
        self._samples = samples

    def _anchor(self, payload_offset: int) -> None:
        # fMP4 muxers put a fragment's first sample first in its mdat: that fixes the file offsets.
        shift = min(s.offset for s in self._samples) - payload_offset
        self._samples = [_Sample(s.offset - shift, s.size, s.pts, s.duration) for s in self._samples]
        self._shift = shift
        self._unanchored = False

    def _traf(self, traf: bytes, moof_offset: int) -> list[_Sample]:
        tfhd = _child(traf, b"tfhd")
        if tfhd is None:
            raise _Corrupt
        flags = int.from_bytes(tfhd[1:4], "big")
        if self._track is None or int.from_bytes(tfhd[4:8], "big") != self._track.track_id:
            return []
        i, base = 8, moof_offset  # default-base-is-moof, and the rule for a first traf without it
        if flags & 0x01:
            base = int.from_bytes(tfhd[8:16], "big") - (self._shift or 0)
            self._unanchored = self._shift is None
            i += 8
        i += 4 if flags & 0x02 else 0
        duration, size = self._defaults
        if flags & 0x08:
            duration = int.from_bytes(tfhd[i : i + 4], "big")
            i += 4
        if flags & 0x10:
            size = int.from_bytes(tfhd[i : i + 4], "big")
        tfdt = _child(traf, b"tfdt")
        dts = _full_box_fields(tfdt, 0)[0] if tfdt is not None else self._next_dts
        samples: list[_Sample] = []
        offset = base
        for kind, trun in _boxes(traf):
            if kind == b"trun":
                dts, offset = self._trun(trun, base, offset, dts, (duration, size), samples)
        self._next_dts = dts
        return samples

    def _trun(
        self, trun: bytes, base: int, offset: int, dts: int | None, defaults: tuple[int, int], out: list[_Sample]
    ) -> tuple[int | None, int]:
        assert self._track is not None
        flags = int.from_bytes(trun[1:4], "big")
        count = int.from_bytes(trun[4:8], "big")
        i = 8
        if flags & 0x01:
            offset = base + int.from_bytes(trun[8:12], "big", signed=True)
            i += 4
        i += 4 if flags & 0x04 else 0
        fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit]
        if len(trun) < i + 4 * len(fields) * count:
            raise _Corrupt
        for _ in range(count):
            values = dict.fromkeys((0x100, 0x200, 0x800), 0) | {0x100: defaults[0], 0x200: defaults[1]}
            for bit in fields:
                values[bit] = int.from_bytes(trun[i : i + 4], "big", signed=bit == 0x800)
                i += 4
            pts = None if dts is None else dts + values[0x800] - self._track.shift
            out.append(_Sample(offset, values[0x200], pts, values[0x100]))
            offset += values[0x200]
            dts = None if dts is None else dts + values[0x100]
        return dts, offset

    def _mdat_step(self) -> bool:
        assert self._mdat_end is not None
        end = self._mdat_end
        here = self._offset
        while self._samples and (self._samples[0].offset < here or self._samples[0].offset + self._samples[0].size > end):
            self._samples.pop(0)  # outside this mdat's unread part: unreachable
        if not self._samples:
            self._skip = end - here
            self._mdat_end = None
            return True
        sample = self._samples[0]
        if sample.offset > here:
            n = min(sample.offset - here, self._avail)
            self._at += n
            return n > 0
        if sample.size > _MAX_UNIT:
            raise _Corrupt
        if self._avail < sample.size:
            return False
        data = bytes(self._buf[self._at : self._at + sample.size])
        self._at += sample.size
        self._samples.pop(0)
        self._emit_sample(data, sample)
        return True

    def _emit_sample(self, data: bytes, sample: _Sample) -> None:
        assert self._track is not None
        scale = self._track.timescale
        pts = None if sample.pts is None else sample.pts * 1000 / scale
        self._emit(data, pts, sample.duration * 1000 / scale)

    def _sync_at(self, at: int) -> bool | None:
        if len(self._buf) - at < 16:
            return None
        size = int.from_bytes(self._buf[at : at + 4], "big")
        if self._buf[at + 4 : at + 8] == b"ftyp":
            return 16 <= size <= 1024 and all(32 <= b < 127 for b in self._buf[at + 8 : at + 12])
        first_child = self._buf[at + 8 : at + 16]
        return 24 <= size <= _MAX_UNIT and first_child == b"\x00\x00\x00\x10mfhd"


# --- is it a recording at all? (checked before a chunk is stored) ----------------------------------------------------

_JUDGED_MIN = 4096  # a shorter continuation is taken as it is: a recording's last blob may hold no whole block
_SCAN = 64 * 1024  # a continuation's first whole unit begins within this (before it: the rest of the previous chunk's)
_HEADER_SCAN = 8192  # a stream header is read from this much of its chunk
_ENOUGH_BLOCKS = 8  # a run of this many blocks settles it
_MAX_OGG_PAGE = 27 + 255 + 255 * 255
_CHAIN_SPAN = 256 * 1024  # how far a run of units is followed
_WEBM_SYNC = re.compile(rb"[\xa3\xa0]|\x1f\x43\xb6\x75")  # SimpleBlock, BlockGroup, Cluster
_MAX_BLOCK = 1 << 16  # an audio block larger than this is not one
_DECLARED = {"audio/webm": "webm", "audio/ogg": "ogg", "audio/wav": "wav", "audio/mp4": "mp4", "audio/mpeg": "mpeg"}
_NAMES = {"webm": "WebM", "ogg": "Ogg", "mp4": "MP4"}


def refusal(data: bytes, mime_type: str) -> str | None:
    """Why `data` cannot be a chunk of a recording this server reads, or None when it can be (pure, fast).

    A chunk may start a stream (a WebM or Ogg header of a codec this server decodes, an MP4 header), be a whole
    WAV or MP3 file, or continue a stream. Browsers cut continuations anywhere, so one is judged by what follows
    its first bytes: WebM elements (blocks of track 1, clusters) or CRC-valid Ogg pages that run on to its end.
    Continuations shorter than _JUDGED_MIN, those of audio/mp4 (a byte range of an `mdat` has no structure of its
    own) and audio/ogg ones shorter than a page (that may lie inside one) are taken as they are.
    """
    kind = stream_start(data)
    if kind is not None:
        return _header_refusal(data, kind)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return None
    declared = _DECLARED.get(mime_type.split(";")[0].strip().lower(), "webm")
    if declared == "mpeg":
        if _mpeg_start(data):
            return None
        return f"audio/mpeg chunk of {len(data)} bytes without an ID3 tag or an MPEG audio frame at its start ({_first(data)})"
    if declared == "wav":
        return f"audio/wav chunk of {len(data)} bytes without a RIFF/WAVE header at its start ({_first(data)})"
    if declared == "mp4" or len(data) < _JUDGED_MIN or _webm_continues(data) or _ogg_continues(data) \
            or _mp4_continues(data):
        return None
    if declared == "ogg" and len(data) <= _MAX_OGG_PAGE:
        return None
    return (f"{len(data)} bytes that neither start a recording (WebM, Ogg, MP4, WAV or MP3) nor continue one "
            f"(no run of WebM blocks or clusters, no Ogg page); they start {_first(data)}")


def _first(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data[:8]) + (" …" if len(data) > 8 else "")


def _header_refusal(data: bytes, kind: str) -> str | None:
    """A stream header whose codec or track this server cannot use (read from the chunk's first _SCAN bytes)."""
    if kind == "mp4":
        return None  # a whole MP4 file is decoded as a file; a fragmented one's header is read with the stream
    try:
        open_demuxer(kind).feed(data[:_HEADER_SCAN], 0)
    except StreamError as exc:
        return f"a {_NAMES[kind]} stream this server cannot transcribe: {exc.reason}"
    except Exception:  # anything else is the stream reader's to report, with the chunk's sequence
        return None
    return None


def _webm_continues(data: bytes) -> bool:
    return any(_webm_run(data, m.start()) for m in _WEBM_SYNC.finditer(data, 0, min(len(data), _SCAN)))


def _webm_run(data: bytes, i: int) -> bool:
    """Whether WebM elements run from data[i] to the chunk's end (or _CHAIN_SPAN) with a whole block among them, or
    on for _ENOUGH_BLOCKS whole blocks."""
    end, blocks = min(len(data), i + _CHAIN_SPAN), 0
    try:
        while i < end:
            head = _element_header(data, i)
            if head is None:
                break  # a header cut by the chunk's end: the next chunk holds the rest
            eid, size, length = head
            action = _WEBM_ACTIONS.get(eid)
            if action is None or (size is None and eid not in _UNSIZED):
                return False
            if action == "descend":
                i += length
                continue
            assert size is not None
            if eid in _BLOCKS and not _audio_block(data, i + length, size):
                return False
            if i + length + size > len(data) and eid not in _BLOCKS:
                return False  # what the chunk's end cuts is the next chunk's to finish: a block, not a leap
            i += length + size
            blocks += eid in _BLOCKS and i <= len(data)
            if blocks >= _ENOUGH_BLOCKS:
                return True
    except _Corrupt:
        return False
    return blocks >= 1


def _audio_block(data: bytes, body: int, size: int) -> bool:
    """A (Simple)Block as recorders write them: a one-byte track number of 1-15 (Chromium's audio is track 1,
    Firefox's track 2), reserved flag bits clear."""
    if size > _MAX_BLOCK or size < 4:
        return False
    if body < len(data) and not 0x81 <= data[body] <= 0x8F:
        return False
    return body + 3 >= len(data) or not data[body + 3] & 0x70


def _ogg_continues(data: bytes) -> bool:
    at = data.find(b"OggS", 0, _SCAN + 4)
    while at >= 0:
        try:
            length = _page_length(data, at)
            if length is None or at + length > len(data) or _page_valid(data, at, length):
                return length is not None or len(data) - at >= 5  # a page (or its header) cut by the chunk's end
        except _Corrupt:
            pass
        at = data.find(b"OggS", at + 1, _SCAN + 4)
    return False


_MP4_SYNC = re.compile(rb"moof|mdat|styp|sidx|emsg|prft|free")


def _mp4_continues(data: bytes) -> bool:
    """Fragmented MP4 boxes (moof, mdat, ...) that run from within the first _SCAN bytes to the chunk's end."""
    for match in _MP4_SYNC.finditer(data, 4, min(len(data), _SCAN + 4)):
        i, whole = match.start() - 4, 0
        try:
            while i < len(data):
                head = _box_header(data, i)
                if head is None or head[0] not in _MP4_TOP:
                    break
                i += head[1]
                whole += i <= len(data)
        except _Corrupt:
            continue
        if whole and (i >= len(data) or _box_header(data, i) is None):
            return True
    return False


def _mpeg_start(data: bytes) -> bool:
    """An ID3 tag, or an MPEG audio frame header (version, layer, bitrate and rate not reserved)."""
    if data[:3] == b"ID3":
        return True
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate, rate = (data[1] >> 3) & 3, (data[1] >> 1) & 3, data[2] >> 4, (data[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3
