"""The incremental demuxers against PyAV's own: any split, one byte at a time, gaps, garbage."""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from scribeai.transcription.containers import (
    Demuxer,
    Packet,
    StreamError,
    open_demuxer,
    opus_samples,
    stream_start,
)

AUDIO = Path(__file__).parent / "fixtures" / "audio"
CHROME_WEBM = AUDIO / "speech_long.webm"  # Chrome-like: unknown-size Segment and Clusters
FRAGMENTED = "frag_keyframe+empty_moov+default_base_moof"
SYNC_MAGIC = {"webm": b"\x1f\x43\xb6\x75", "ogg": b"OggS", "mp4": b"moof"}
SYNC_LEAD = {"webm": 0, "ogg": 0, "mp4": 4}  # bytes of the sync unit before its magic


@dataclass(frozen=True)
class Recording:
    container: str
    data: bytes
    # libavformat subtracts a Matroska CodecDelay rounded to its 1 ms time base (Opus: 7 ms for
    # 6.5 ms); the demuxer subtracts it exactly, so its pts are PyAV's plus this many nanoseconds.
    pts_offset_ns: int = 0
    pyav_durations: bool = True  # whether libavformat knows each packet's duration


OPUS_DELAY_ROUNDING_NS = 7_000_000 - 6_500_000


# --- making recordings ---------------------------------------------------------------------


def _pcm() -> NDArray[np.float32]:
    with av.open(str(CHROME_WEBM)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _encode(
    format_name: str, codec: str, rate: int, options: dict[str, str], bit_rate: int = 0, layout: str = "mono"
) -> bytes:
    out_buf = io.BytesIO()
    with av.open(out_buf, "w", format=format_name, options=options) as out:
        # FFmpeg's own Vorbis encoder is "experimental" and stereo only.
        stream = out.add_stream(codec, rate=rate, layout=layout, options={"strict": "experimental"})
        if bit_rate:
            stream.bit_rate = bit_rate
        pcm = _pcm()
        frame = av.AudioFrame.from_ndarray(pcm if layout == "mono" else np.concatenate([pcm, pcm]), "fltp", layout)
        frame.sample_rate = 48000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None), None]:
            for packet in stream.encode(resampled):
                out.mux(packet)
    return out_buf.getvalue()


def _opus_packets(source: Path | io.BytesIO = CHROME_WEBM) -> tuple[bytes, list[bytes]]:
    """The OpusHead and the Opus packets of a recording (the Chrome one by default)."""
    with av.open(source) as container:
        stream = container.streams.audio[0]
        return bytes(stream.codec_context.extradata), [bytes(p) for p in container.demux(stream) if p.size]


def _element(eid: int, payload: bytes) -> bytes:
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + (0x01 << 56 | len(payload)).to_bytes(8, "big") + payload


def _uint(eid: int, value: int) -> bytes:
    return _element(eid, value.to_bytes(4, "big"))


def _laced_webm() -> bytes:
    """Known-size Segment and Clusters; blocks with no, Xiph, EBML and fixed lacing, and BlockGroups."""
    head, packets = _opus_packets()
    track = _uint(0xD7, 1) + _uint(0x73C5, 7) + _uint(0x83, 2) + _element(0x86, b"A_OPUS") + _element(0x63A2, head)
    track += _uint(0x23E383, 20_000_000) + _element(0xE1, _element(0xB5, struct.pack(">d", 48000.0)) + _uint(0x9F, 1))
    body = _element(0x1549A966, _uint(0x2AD7B1, 1_000_000)) + _element(0x1654AE6B, _element(0xAE, track))
    body += _element(0xEC, bytes(40))  # Void
    i, cluster_ms = 0, 0
    while i < len(packets):
        blocks, rel, n = b"", 0, 0
        while i < len(packets) and rel < 900:
            kind = n % 5
            count = {0: 1, 1: 3, 2: 4, 3: 2, 4: 1}[kind]
            frames = packets[i : i + count]
            if kind == 3 and len({len(f) for f in frames}) != 1:
                frames = frames[:1]  # fixed lacing needs equal sizes: a lace of one frame
            blocks += _block(kind, frames, rel)
            i += len(frames)
            rel += 20 * len(frames)
            n += 1
        body += _element(0x1F43B675, _uint(0xE7, cluster_ms) + _element(0xA7, b"\x00") + blocks)
        cluster_ms += rel
    body += _element(0x1254C367, bytes(20))  # Tags
    ebml = _element(0x1A45DFA3, _uint(0x4286, 1) + _element(0x4282, b"webm"))
    return ebml + _element(0x18538067, body)


def _block(kind: int, frames: list[bytes], rel: int) -> bytes:
    header = b"\x81" + rel.to_bytes(2, "big", signed=True)
    if kind == 0:
        return _element(0xA3, header + b"\x80" + frames[0])
    if kind == 4:  # a BlockGroup: Block, then BlockDuration
        return _element(0xA0, _element(0xA1, header + b"\x00" + frames[0]) + _uint(0x9B, 20))
    if kind == 1:  # Xiph
        sizes = b"".join(b"\xff" * (len(f) // 255) + bytes([len(f) % 255]) for f in frames[:-1])
        return _element(0xA3, header + b"\x82" + bytes([len(frames) - 1]) + sizes + b"".join(frames))
    if kind == 2:  # EBML: the first size, then differences, as 2-byte varints
        sizes = (0x4000 | len(frames[0])).to_bytes(2, "big")
        for before, after in zip(frames, frames[1:-1]):
            sizes += (0x4000 | (len(after) - len(before) + 8191)).to_bytes(2, "big")
        return _element(0xA3, header + b"\x86" + bytes([len(frames) - 1]) + sizes + b"".join(frames))
    return _element(0xA3, header + b"\x84" + bytes([len(frames) - 1]) + b"".join(frames))  # fixed


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


CRC_TABLE = _crc_table()


def ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def ogg_page(flags: int, granule: int, sequence: int, lacing: bytes, body: bytes) -> bytes:
    header = b"OggS\x00" + struct.pack("<BqIIIB", flags, granule, 0x5EED, sequence, 0, len(lacing))
    page = header + lacing + body
    return page[:22] + ogg_crc(page).to_bytes(4, "little") + page[26:]


def _spanning_ogg() -> bytes:
    """Ogg/Opus of > 255-byte packets in pages of at most 300 bytes: most continue onto the next page."""
    head, packets = _opus_packets(io.BytesIO(_encode("ogg", "libopus", 48000, {}, bit_rate=128_000)))
    pre_skip = int.from_bytes(head[10:12], "little")
    pages = [ogg_page(0x02, 0, 0, bytes([len(head)]), head)]
    tags = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)
    pages.append(ogg_page(0, 0, 1, bytes([len(tags)]), tags))
    segments: list[tuple[int, bytes, int | None]] = []  # lacing value, bytes, granule if a packet ends
    granule = pre_skip
    for packet in packets:
        granule += opus_samples(packet) or 0
        pieces = [packet[i : i + 255] for i in range(0, len(packet) + 1, 255)]
        segments += [(len(p), p, granule if len(p) < 255 else None) for p in pieces]
    continued, sequence = 0, 2
    while segments:
        taken: list[tuple[int, bytes, int | None]] = []
        while segments and sum(len(s[1]) for s in taken) + len(segments[0][1]) <= 300:
            taken.append(segments.pop(0))
        if not taken:
            taken.append(segments.pop(0))
        ends = [s[2] for s in taken if s[2] is not None]
        flags = continued | (0x04 if not segments else 0)
        lacing = bytes(s[0] for s in taken)
        pages.append(ogg_page(flags, ends[-1] if ends else -1, sequence, lacing, b"".join(s[1] for s in taken)))
        continued, sequence = (0x01 if taken[-1][0] == 255 else 0), sequence + 1
    return b"".join(pages)


def _make_recordings() -> dict[str, Recording]:
    fmp4 = {"movflags": FRAGMENTED, "frag_duration": "300000"}
    clusters = {"cluster_size_limit": "3000"}
    return {
        "webm-chrome": Recording("webm", CHROME_WEBM.read_bytes(), OPUS_DELAY_ROUNDING_NS),
        "webm-known-sizes": Recording(
            "webm", _encode("webm", "libopus", 48000, clusters | {"cluster_time_limit": "500"}), OPUS_DELAY_ROUNDING_NS
        ),
        "webm-laced": Recording("webm", _laced_webm()),
        # CodecDelays: AAC's 1024 samples at 44.1 kHz, 23_219_955 ns; Vorbis' 16 samples, 333_333 ns.
        "mkv-aac": Recording("webm", _encode("matroska", "aac", 44100, clusters), 23_000_000 - 23_219_955, False),
        "webm-vorbis": Recording(
            "webm", _encode("webm", "vorbis", 48000, clusters, layout="stereo"), -333_333, pyav_durations=False
        ),
        "ogg": Recording("ogg", _encode("ogg", "libopus", 48000, {"page_duration": "200000"})),
        "ogg-spanning": Recording("ogg", _spanning_ogg()),
        "mp4-aac": Recording("mp4", _encode("mp4", "aac", 44100, fmp4)),
        "mp4-aac-absolute-offsets": Recording(
            "mp4", _encode("mp4", "aac", 44100, {"movflags": "frag_keyframe+empty_moov", "frag_duration": "300000"})
        ),
        "mp4-opus": Recording("mp4", _encode("mp4", "libopus", 48000, fmp4)),
    }


RECORDINGS = _make_recordings()
NAMES = sorted(RECORDINGS)


# --- helpers -------------------------------------------------------------------------------

Key = tuple[bytes, float | None, float | None]


def key(packets: list[Packet]) -> list[Key]:
    return [(p.data, p.pts_ms, p.duration_ms) for p in packets]


def feed(container: str, pieces: list[bytes], check: Callable[[Demuxer], None] | None = None) -> tuple[list[Packet], Demuxer]:
    demuxer = open_demuxer(container)
    packets: list[Packet] = []
    for seq, piece in enumerate(pieces):
        packets += demuxer.feed(piece, seq)
        if check:
            check(demuxer)
    return packets, demuxer


def random_pieces(data: bytes, seed: int, cuts: int) -> list[bytes]:
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(1, len(data)), cuts))
    return [data[a:b] for a, b in zip([0, *offsets], [*offsets, len(data)])]


def pyav_packets(data: bytes) -> list[tuple[bytes, float, float]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return [
            (bytes(p), float(p.pts * p.time_base * 1000), float(p.duration * p.time_base * 1000))
            for p in container.demux(stream)
            if p.size
        ]


def sync_offsets(recording: Recording) -> list[int]:
    """Offsets of the Clusters / pages / moofs of a recording (none of its audio bytes mimic them)."""
    magic, lead = SYNC_MAGIC[recording.container], SYNC_LEAD[recording.container]
    offsets, at = [], recording.data.find(magic)
    while at >= 0:
        offsets.append(at - lead)
        at = recording.data.find(magic, at + 1)
    return offsets


def first_packet_at(recording: Recording, offset: int) -> int:
    """Index, in the whole recording's packets, of the first packet that starts at or after `offset`."""
    packets, _ = feed(recording.container, [recording.data[:offset], recording.data[offset:]])
    index = next(i for i, p in enumerate(packets) if p.seq == 1)
    continued = recording.container == "ogg" and recording.data[offset + 5] & 0x01
    return index + 1 if continued else index


WHOLE = {name: feed(r.container, [r.data])[0] for name, r in RECORDINGS.items()}


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_packets_and_pts_match_pyavs_demuxer(name: str) -> None:
    recording = RECORDINGS[name]
    packets, demuxer = feed(recording.container, [recording.data])
    reference = pyav_packets(recording.data)
    assert [p.data for p in packets] == [r[0] for r in reference]
    assert [round((p.pts_ms - r[1]) * 1e6) for p, r in zip(packets, reference)] == [recording.pts_offset_ns] * len(
        reference
    )
    if recording.pyav_durations:
        # The last packet may be trimmed by the container; the codec-derived durations cannot know.
        assert [p.duration_ms for p in packets[:-1]] == [r[2] for r in reference[:-1]]
    assert (demuxer.buffered, demuxer.resyncs) == (0, 0)


def test_the_hand_made_recordings_hold_what_they_are_for() -> None:
    ogg = RECORDINGS["ogg-spanning"].data
    continued = [o for o in sync_offsets(RECORDINGS["ogg-spanning"]) if ogg[o + 5] & 0x01]
    assert len(continued) > 300
    webm = RECORDINGS["webm-laced"].data
    # SimpleBlock (A3) size (8 bytes), track 1, then the flags byte: no, Xiph, EBML and fixed lacing.
    lacing = [webm[i + 12] & 0x06 for i in range(len(webm) - 13) if webm[i : i + 2] == b"\xa3\x01" and webm[i + 9] == 0x81]
    assert {flag: lacing.count(flag) > 20 for flag in (0, 2, 4, 6)} == {0: True, 2: True, 4: True, 6: True}
    assert webm.count(b"\xa0\x01") > 20  # BlockGroups


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_pyavs_stream(name: str) -> None:
    recording = RECORDINGS[name]
    _, demuxer = feed(recording.container, [recording.data])
    with av.open(io.BytesIO(recording.data)) as container:
        context = container.streams.audio[0].codec_context
        expected = (context.name, context.sample_rate, context.channels, bytes(context.extradata))
    assert demuxer.config is not None
    assert (demuxer.config.codec, demuxer.config.sample_rate, demuxer.config.channels, demuxer.config.extradata) == expected


@pytest.mark.parametrize("name", NAMES)
def test_decoded_sample_count_matches_pyav(name: str) -> None:
    recording = RECORDINGS[name]
    packets, demuxer = feed(recording.container, [recording.data])
    config = demuxer.config
    assert config is not None
    context = av.CodecContext.create(config.codec, "r")
    context.extradata = config.extradata
    context.sample_rate = config.sample_rate
    context.layout = {1: "mono", 2: "stereo"}[config.channels]
    ours = sum(f.samples for p in packets for f in context.decode(av.Packet(p.data)))
    ours += sum(f.samples for f in context.decode(None))
    with av.open(io.BytesIO(recording.data)) as container:
        theirs = sum(f.samples for f in container.decode(audio=0))
    frame = {"aac": 1024, "opus": 960, "vorbis": 2048}[config.codec]
    assert abs(ours - theirs) <= frame, (ours, theirs)
    assert theirs > 16 * config.sample_rate  # the whole ~16.6 s recording was decoded


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("name", NAMES)
def test_random_splits_give_the_same_packets(name: str, seed: int) -> None:
    recording = RECORDINGS[name]
    cuts = [3, 40, 400][seed % 3]
    most_held = 0

    def note(demuxer: Demuxer) -> None:
        nonlocal most_held
        most_held = max(most_held, demuxer.buffered)

    pieces = random_pieces(recording.data, seed, cuts)
    packets, demuxer = feed(recording.container, pieces, note)
    assert key(packets) == key(WHOLE[name])
    assert [p.seq for p in packets] == sorted(p.seq for p in packets)
    assert (demuxer.buffered, demuxer.resyncs) == (0, 0)
    # Only a partial element/page/box is held back, never the stream (each is > 58 kB).
    assert most_held <= max(len(p) for p in pieces) + 4096


@pytest.mark.parametrize("name", NAMES)
def test_one_byte_feeds_give_the_same_packets(name: str) -> None:
    recording = RECORDINGS[name]
    packets, demuxer = feed(recording.container, [recording.data[i : i + 1] for i in range(len(recording.data))])
    assert key(packets) == key(WHOLE[name])
    assert (demuxer.buffered, demuxer.resyncs) == (0, 0)


def test_seq_is_that_of_the_feed_completing_the_packet() -> None:
    recording = RECORDINGS["webm-chrome"]
    first = WHOLE["webm-chrome"][0]
    end = recording.data.find(first.data) + len(first.data)
    packets, _ = feed("webm", [recording.data[: end - 1], recording.data[end - 1 : end], recording.data[end:]])
    assert (packets[0].data, packets[0].seq, packets[1].seq) == (first.data, 1, 2)


def test_chrome_timeslice_blobs_give_the_whole_recordings_packets() -> None:
    blobs = [(AUDIO / f"timeslice_000{i}.webm").read_bytes() for i in range(4)]
    packets, _ = feed("webm", blobs)
    assert key(packets) == key(WHOLE["webm-chrome"])
    assert [stream_start(b) for b in blobs] == ["webm", None, None, None]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", NAMES)
def test_gap_resyncs_at_the_next_sync_point(name: str, seed: int) -> None:
    recording = RECORDINGS[name]
    pieces = random_pieces(recording.data, 100 + seed, 30)
    lost = 10 + seed * 4
    whole_split, _ = feed(recording.container, pieces)
    demuxer = open_demuxer(recording.container)
    before = [p for seq, piece in enumerate(pieces[:lost]) for p in demuxer.feed(piece, seq)]
    demuxer.gap()
    after = [p for seq, piece in enumerate(pieces[lost + 1 :], lost + 1) for p in demuxer.feed(piece, seq)]

    resumed_at = sum(len(p) for p in pieces[: lost + 1])
    sync = next(o for o in sync_offsets(recording) if o >= resumed_at)
    assert key(before) == key([p for p in whole_split if p.seq < lost])
    assert key(after) == key(WHOLE[name][first_packet_at(recording, sync) :])
    assert (demuxer.resyncs, demuxer.buffered) == (1, 0)


@pytest.mark.parametrize("name", NAMES)
def test_garbage_between_sync_points_is_skipped(name: str) -> None:
    recording = RECORDINGS[name]
    offsets = sync_offsets(recording)
    at = offsets[len(offsets) // 2]
    garbage = random.Random(7).randbytes(700)
    data = recording.data[:at] + garbage + recording.data[at:]
    packets, demuxer = feed(recording.container, random_pieces(data, 5, 60))
    expected = key(WHOLE[name])
    if recording.container == "ogg" and recording.data[at + 5] & 0x01:
        lost = first_packet_at(recording, at) - 1  # the packet continued across the garbage
        expected = expected[:lost] + expected[lost + 1 :]
    assert key(packets) == expected
    assert demuxer.resyncs == 1


def completed_before(recording: Recording, offset: int) -> int:
    """How many of the whole recording's packets are complete before `offset`."""
    packets, _ = feed(recording.container, [recording.data[:offset], recording.data[offset:]])
    return sum(p.seq == 0 for p in packets)


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_unit_header_resyncs_without_raising(name: str) -> None:
    recording = RECORDINGS[name]
    offsets = sync_offsets(recording)
    start = offsets[len(offsets) // 2]
    data = bytearray(recording.data)
    data[start + 2 : start + 302] = random.Random(3).randbytes(300)  # breaks the Cluster / page / moof
    packets, demuxer = feed(recording.container, random_pieces(bytes(data), 9, 80))
    resumed = next(o for o in offsets if o >= start + 302)
    expected = WHOLE[name][: completed_before(recording, start)] + WHOLE[name][first_packet_at(recording, resumed) :]
    assert key(packets) == key(expected)
    assert demuxer.resyncs == 1


@pytest.mark.parametrize("name", NAMES)
def test_stream_start_tells_first_chunks_from_continuations(name: str) -> None:
    recording = RECORDINGS[name]
    pieces = random_pieces(recording.data, 11, 50)
    assert stream_start(pieces[0]) == recording.container
    assert [stream_start(p) for p in pieces[1:]] == [None] * 50
    later_units = [o for o in sync_offsets(recording) if o > 0]
    assert [stream_start(recording.data[o:]) for o in later_units] == [None] * len(later_units)


def test_stream_start_of_other_bytes() -> None:
    assert [stream_start(b) for b in (b"", b"Og", b"RIFF\x00\x00\x00\x00WAVE", random.Random(1).randbytes(64))] == [
        None
    ] * 4


def test_gap_before_the_header_only_skips_audio_until_a_new_header() -> None:
    recording = RECORDINGS["webm-chrome"]
    demuxer = open_demuxer("webm")
    demuxer.gap()
    assert demuxer.feed(recording.data[5000:], 0) == []
    assert demuxer.config is None
    assert key(demuxer.feed(recording.data, 1)) == key(WHOLE["webm-chrome"])
    assert demuxer.resyncs == 1


def test_a_new_stream_after_a_gap_restarts_the_timeline() -> None:
    recording = RECORDINGS["webm-chrome"]
    demuxer = open_demuxer("webm")
    demuxer.feed(recording.data[:30000], 0)
    demuxer.gap()
    assert key(demuxer.feed(recording.data, 1)) == key(WHOLE["webm-chrome"])
    assert demuxer.resyncs == 1


def _chrome_header() -> bytes:
    data = RECORDINGS["webm-chrome"].data
    return data[: data.find(b"\x1f\x43\xb6\x75")]


def test_a_cluster_without_timecode_gives_no_pts() -> None:
    head, packets = _opus_packets()
    block = b"\x81\x00\x14\x80"  # track 1, 20 ms into the cluster, keyframe
    timed = _element(0x1F43B675, _uint(0xE7, 1000) + _element(0xA3, block + packets[0]))
    untimed = _element(0x1F43B675, _element(0xA3, block + packets[1]))
    packets_out, _ = feed("webm", [_chrome_header() + timed + untimed])
    assert [(p.data, p.pts_ms) for p in packets_out] == [(packets[0], 1013.5), (packets[1], None)]


def test_a_cluster_id_without_timecode_is_no_sync_point() -> None:
    recording = RECORDINGS["webm-chrome"]
    offsets = sync_offsets(recording)
    fake = b"\x1f\x43\xb6\x75\x85\xa3\x83\x81\x00\x00"  # a Cluster ID, a size, but a block, not E7
    data = recording.data[: offsets[5] + 100] + fake + recording.data[offsets[6] :]
    demuxer = open_demuxer("webm")
    demuxer.feed(data[: offsets[5] + 90], 0)
    demuxer.gap()
    after = demuxer.feed(data[offsets[5] + 90 :], 1)
    assert key(after) == key(WHOLE["webm-chrome"][first_packet_at(recording, offsets[6]) :])
    assert demuxer.resyncs == 1


def _replace_once(data: bytes, old: bytes, new: bytes, within: int) -> bytes:
    assert data[:within].count(old) == 1
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("container", "make", "reason"),
    [
        ("webm", lambda d: _replace_once(d, b"A_OPUS", b"A_MPEG", 300), "unsupported WebM audio codec 'A_MPEG'"),
        ("webm", lambda d: _replace_once(d, b"\x83\x81\x02", b"\x83\x81\x01", 300), "no audio track in the WebM header"),
        ("mp4", lambda d: _replace_once(d, b"mp4a", b"mp4x", 800), "unsupported MP4 audio codec 'mp4x'"),
        ("mp4", lambda d: _replace_once(d, b"soun", b"vide", 800), "no audio track in the MP4 header"),
    ],
)
def test_unusable_headers_raise_stream_error(container: str, make: Callable[[bytes], bytes], reason: str) -> None:
    name = {"webm": "webm-chrome", "mp4": "mp4-aac"}[container]
    with pytest.raises(StreamError) as raised:
        feed(container, [make(RECORDINGS[name].data)])
    assert raised.value.reason == reason


def test_ogg_without_an_opus_stream_raises_stream_error() -> None:
    ident = b"\x01vorbis" + bytes(23)
    data = ogg_page(0x02, 0, 0, bytes([len(ident)]), ident) + ogg_page(0, 0, 1, b"\x04", b"\x03abc")
    with pytest.raises(StreamError) as raised:
        feed("ogg", [data])
    assert raised.value.reason == "no Opus stream in the Ogg header (found vorbis)"


@pytest.mark.parametrize("name", ["ogg", "ogg-spanning"])
def test_a_missing_ogg_page_drops_its_packets_and_keeps_pts(name: str) -> None:
    recording = RECORDINGS[name]
    offsets = sync_offsets(recording)
    lost = [o for o in offsets[5:] if recording.data[o + 5] & 0x01][0] if name == "ogg-spanning" else offsets[5]
    after = offsets[offsets.index(lost) + 1]
    packets, demuxer = feed("ogg", [recording.data[:lost] + recording.data[after:]])
    expected = WHOLE[name][: completed_before(recording, lost)] + WHOLE[name][first_packet_at(recording, after) :]
    assert key(packets) == key(expected)
    assert demuxer.resyncs == 0  # pages stay whole: nothing to scan for


def test_oggs_inside_audio_is_not_a_page() -> None:
    # A page whose body contains a fake page header: after a gap, the scan must not stop there.
    recording = RECORDINGS["ogg-spanning"]
    offsets = sync_offsets(recording)
    fake = ogg_page(0, 123, 99, b"\x05", b"hello")[:-5] + b"hell0"  # CRC no longer matches
    data = recording.data[: offsets[10] + 40] + fake + recording.data[offsets[11] :]
    demuxer = open_demuxer("ogg")
    demuxer.feed(data[: offsets[10] + 30], 0)
    demuxer.gap()
    after = demuxer.feed(data[offsets[10] + 30 :], 1)
    assert key(after) == key(WHOLE["ogg-spanning"][first_packet_at(recording, offsets[11]) :])


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (b"\x00", 480),  # SILK 10 ms
        (b"\x18", 2880),  # SILK 60 ms
        (b"\x78\x01", 960),  # CELT 20 ms (the one Chrome uses)
        (b"\x79", 1920),  # CELT 20 ms, two frames
        (b"\x83\x06", 720),  # CELT 2.5 ms, six frames
        (b"\x6b\x03", 2880),  # Hybrid 20 ms, three frames
        (b"\xfb\x07", None),  # CELT 20 ms, seven frames: over 120 ms
        (b"\x7b", None),  # code 3 without its frame count
        (b"", None),
    ],
)
def test_opus_samples_from_the_toc_byte(packet: bytes, samples: int | None) -> None:
    assert opus_samples(packet) == samples


def test_repr_shows_the_state() -> None:
    demuxer = open_demuxer("webm")
    demuxer.feed(RECORDINGS["webm-chrome"].data[:1000], 0)
    demuxer.gap()
    assert repr(demuxer) == (
        "<WebmDemuxer codec=opus offset=1000 buffered=0 skipping=0 scanning=True resyncs=1>"
    )


def test_open_demuxer_refuses_unknown_containers() -> None:
    with pytest.raises(ValueError, match="no demuxer for container 'wav'"):
        open_demuxer("wav")
