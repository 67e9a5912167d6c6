"""Container detection, session headers and decoding, on the committed speech fixtures."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from scribeai.transcription import media
from scribeai.transcription.media import MissingHeader, UndecodableAudio

AUDIO = Path(__file__).parent / "fixtures" / "audio"
MANIFEST: dict[str, dict[str, Any]] = json.loads((AUDIO / "manifest.json").read_text())
PIECES = sorted((n for n, e in MANIFEST.items() if "order" in e), key=lambda n: MANIFEST[n]["order"])
WEBM_MIME = "audio/webm;codecs=opus"
CLUSTER_ID = bytes.fromhex("1f43b675")
SEGMENT_ID = bytes.fromhex("18538067")
UNKNOWN_SIZE = bytes.fromhex("01ffffffffffffff")


def read(name: str) -> bytes:
    return (AUDIO / name).read_bytes()


def session_header() -> bytes:
    return read(PIECES[0])[: MANIFEST[PIECES[0]]["header_bytes"]]


def ogg_parts() -> tuple[bytes, bytes]:
    data = read("speech_welcome.ogg")
    cut = MANIFEST["speech_welcome.ogg"]["header_bytes"]
    return data[:cut], data[cut:]


def test_fixture_folder_is_small_and_complete() -> None:
    files = {p.name for p in AUDIO.iterdir()}
    assert files == {*MANIFEST, "manifest.json", "chromium"}  # chromium/: real browser blobs, with their own manifest
    assert sum(p.stat().st_size for p in AUDIO.iterdir() if p.is_file()) < 300_000
    assert PIECES == ["timeslice_0000.webm", "timeslice_0001.webm", "timeslice_0002.webm", "timeslice_0003.webm"]


def test_timeslice_pieces_join_to_the_long_clip() -> None:
    assert b"".join(read(n) for n in PIECES) == read("speech_long.webm")


@pytest.mark.parametrize(
    ("name", "container"),
    [
        ("speech_fox.webm", "webm"),
        ("speech_long.webm", "webm"),
        ("timeslice_0000.webm", "webm"),
        ("timeslice_0002.webm", "webm"),  # starts with a Cluster: a continuation, still WebM
        ("speech_welcome.ogg", "ogg"),
        ("speech_hello.wav", "wav"),
    ],
)
def test_detect_container_of_fixtures(name: str, container: str) -> None:
    assert media.detect_container(read(name)) == container


@pytest.mark.parametrize(
    ("data", "container"),
    [
        (b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00", "mp4"),
        (b"\x00\x00\x00\x68moof\x00\x00\x00\x10mfhd", "mp4"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mpeg"),
        (b"\xff\xfb\x90\x64\x00\x00\x00\x00", "mpeg"),  # MPEG-1 layer III frame sync
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "unknown"),  # ADTS AAC: layer bits 00, not MPEG audio
        (b"", "unknown"),
        (b"hello, world", "unknown"),
        (b"\xa3\x85\x00\x00\x00", "unknown"),  # a SimpleBlock ID and size, but track number 0
        (b"\xa3\x88\x81\x00\x00", "unknown"),  # a SimpleBlock longer than the data
    ],
)
def test_detect_container_by_magic(data: bytes, container: str) -> None:
    assert media.detect_container(data) == container


@pytest.mark.parametrize(
    ("mime", "container"),
    [("audio/webm;codecs=opus", "webm"), ("Audio/Ogg; codecs=opus", "ogg"), ("audio/wav", "wav"),
     ("audio/mp4", "mp4"), ("audio/mpeg", "mpeg"), ("text/plain", "unknown"), ("", "unknown")],
)
def test_container_for_mime(mime: str, container: str) -> None:
    assert media.container_for_mime(mime) == container


def test_only_the_first_timeslice_piece_has_a_header() -> None:
    assert [media.has_container_header(read(n), "webm") for n in PIECES] == [True, False, False, False]
    assert [MANIFEST[n]["has_header"] for n in PIECES] == [True, False, False, False]


def test_ogg_header_pages_and_continuation() -> None:
    header, rest = ogg_parts()
    assert media.has_container_header(header + rest, "ogg") is True
    assert rest[:4] == b"OggS"
    assert media.detect_container(rest) == "ogg"
    assert media.has_container_header(rest, "ogg") is False


def test_extract_webm_header_is_everything_before_the_first_cluster() -> None:
    first = read(PIECES[0])
    header = media.extract_header(first, "webm")
    assert header == first[: MANIFEST[PIECES[0]]["header_bytes"]]
    assert first[len(header) : len(header) + 4] == CLUSTER_ID
    assert media.extract_header(read("speech_long.webm"), "webm") == header


def test_extract_ogg_header_is_the_opus_head_and_tags_pages() -> None:
    header, rest = ogg_parts()
    assert media.extract_header(header + rest, "ogg") == header
    assert header[28:36] == b"OpusHead"
    assert b"OpusTags" in header
    assert b"OpusTags" not in rest


def test_extract_header_of_a_libavformat_file_makes_the_segment_unknown_size() -> None:
    """A complete file as chunk 0: known Segment size and a SeekHead, as ffmpeg writes them."""
    pcm = media.decode_pcm(read("speech_stella.webm"), sample_rate=48000)
    data = _encode_webm((pcm * 32767).astype(np.int16), cluster_ms=1000)
    header = media.extract_header(data, "webm")
    at = header.index(SEGMENT_ID) + 4
    assert header[at : at + 8] == UNKNOWN_SIZE
    assert data[at : at + 8] != UNKNOWN_SIZE
    later = data[data.index(CLUSTER_ID, len(header) + 4) :]  # from the second cluster on
    decoded_ms = len(media.decode_pcm(media.prepare(later, WEBM_MIME, header))) / 16
    assert 2500 < decoded_ms < 3500  # 4.3 s of speech minus the first ~1 s cluster


@pytest.mark.parametrize("garbage", [b"", b"\x1a\x45\xdf\xa3\x9f", b"no header here", read("timeslice_0001.webm")])
def test_extract_header_of_something_else_fails(garbage: bytes) -> None:
    with pytest.raises(UndecodableAudio):
        media.extract_header(garbage, "webm")


def test_extract_header_of_a_truncated_ogg_fails() -> None:
    header, _ = ogg_parts()
    with pytest.raises(UndecodableAudio, match="before its header packets"):
        media.extract_header(header[:60], "ogg")


def test_prepare_keeps_self_contained_chunks() -> None:
    for name in ["speech_fox.webm", "speech_welcome.ogg", "speech_hello.wav", PIECES[0]]:
        data = read(name)
        assert media.prepare(data, MANIFEST[name]["mime_type"], None) is data
        assert media.prepare(data, MANIFEST[name]["mime_type"], session_header()) is data


@pytest.mark.parametrize("name", PIECES[1:])
def test_prepare_puts_the_session_header_in_front(name: str) -> None:
    piece = read(name)
    assert media.prepare(piece, WEBM_MIME, session_header()) == session_header() + piece
    with pytest.raises(MissingHeader):
        media.prepare(piece, WEBM_MIME, None)


def test_prepare_ogg_continuation() -> None:
    header, rest = ogg_parts()
    assert media.prepare(rest, "audio/ogg", header) == header + rest
    with pytest.raises(MissingHeader):
        media.prepare(rest, "audio/ogg;codecs=opus", None)


@pytest.mark.parametrize("name", PIECES[1:])
def test_headerless_piece_decodes_only_behind_the_header(name: str) -> None:
    piece = read(name)
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(piece)
    pcm = media.decode_pcm(media.prepare(piece, WEBM_MIME, session_header()))
    assert pcm.dtype == np.float32
    assert pcm.ndim == 1
    # The Opus decoder drops its 6.5 ms pre-skip at the start of each decode.
    assert abs(len(pcm) / 16 - MANIFEST[name]["duration_ms"]) <= 10
    assert 0.1 < float(np.abs(pcm).max()) <= 1.0


def test_prepared_piece_durations_add_up_to_the_long_clip() -> None:
    durations = [media.measure_duration_ms(media.prepare(read(n), WEBM_MIME, session_header())) for n in PIECES]
    assert durations == [3981, 4500, 4000, 4098]
    assert sum(durations) == media.measure_duration_ms(read("speech_long.webm"))
    for name, measured in zip(PIECES, durations):
        assert abs(measured - MANIFEST[name]["duration_ms"]) <= 20  # + Opus padding of the last frame


def test_ogg_continuation_decodes_behind_its_header() -> None:
    header, rest = ogg_parts()
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(rest)
    whole = media.decode_pcm(header + rest)
    assert abs(len(whole) / 16 - MANIFEST["speech_welcome.ogg"]["duration_ms"]) <= 10


def test_chunk_starting_inside_a_cluster_is_decoded_whole() -> None:
    """Chrome's blobs often begin with bare SimpleBlocks of a cluster opened in the previous blob."""
    piece = read("timeslice_0002.webm")
    assert piece[:4] == CLUSTER_ID and piece[12] == 0xE7  # Cluster(unknown size), Timecode ...
    mid = piece[12 + 2 + piece[13] - 0x80 :]  # ... dropped: the chunk starts at a SimpleBlock
    assert mid[0] == 0xA3
    assert media.detect_container(mid) == "webm"
    assert media.has_container_header(mid, "webm") is False
    with pytest.raises(MissingHeader):
        media.prepare(mid, "", None)
    whole = media.decode_pcm(media.prepare(piece, WEBM_MIME, session_header()))
    resumed = media.prepare(mid, WEBM_MIME, session_header())
    assert len(media.decode_pcm(resumed)) == len(whole)
    assert media.measure_duration_ms(resumed) == 4000
    inside = mid[: mid.index(CLUSTER_ID)]  # only blocks of one cluster, no Cluster element at all
    assert abs(len(media.decode_pcm(media.prepare(inside, WEBM_MIME, session_header()))) / 16 - 500) <= 10


def test_fragmented_mp4_continuation_decodes_behind_the_init_segment() -> None:
    """Safari records audio/mp4 as fragments: chunk 0 = ftyp + moov (+ fragments), then moof + mdat."""
    pcm = media.decode_pcm(read("speech_stella.webm"), sample_rate=48000)
    data = _encode_fragmented_mp4((pcm * 32767).astype(np.int16))
    header = media.extract_header(data, "mp4")
    assert header[4:8] == b"ftyp" and b"moov" in header and data[len(header) + 4 : len(header) + 8] == b"moof"
    later = data[data.index(b"moof", len(header) + 8) - 4 :]  # from the second fragment on
    assert (media.detect_container(later), media.has_container_header(later, "mp4")) == ("mp4", False)
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(later)
    with pytest.raises(MissingHeader):
        media.prepare(later, "audio/mp4", None)
    decoded_ms = len(media.decode_pcm(media.prepare(later, "audio/mp4", header))) / 16
    assert 2500 < decoded_ms < 3500  # 4.3 s of speech minus the first 1 s fragment


def test_decode_fixture_at_another_rate() -> None:
    pcm = media.decode_pcm(read("speech_fox.webm"), sample_rate=48000)
    assert abs(len(pcm) / 48 - MANIFEST["speech_fox.webm"]["duration_ms"]) <= 10


@pytest.mark.parametrize("name", ["speech_fox.webm", "speech_stella.webm", "speech_welcome.ogg", "speech_hello.wav"])
def test_decode_and_measure_complete_clips(name: str) -> None:
    data = read(name)
    expected = MANIFEST[name]["duration_ms"]
    assert abs(len(media.decode_pcm(data)) / 16 - expected) <= 10
    measured = media.measure_duration_ms(data)
    assert measured is not None and abs(measured - expected) <= 10


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"this is not audio" * 100,
        random.Random(7).randbytes(20_000),
        bytes.fromhex("1a45dfa3") + random.Random(8).randbytes(4000),  # EBML magic, then noise
        b"OggS" + bytes(200),
    ],
)
def test_garbage_is_undecodable(garbage: bytes) -> None:
    with pytest.raises(UndecodableAudio) as info:
        media.decode_pcm(garbage)
    assert info.value.reason != ""
    assert media.measure_duration_ms(garbage) is None


def test_header_alone_is_empty_audio_not_garbage() -> None:
    """A recorder's first blob can be just the header; libavformat would not even open it."""
    ogg_header, _ = ogg_parts()
    for header in [session_header(), ogg_header]:
        assert media.decode_pcm(header).shape == (0,)
        assert media.measure_duration_ms(header) == 0
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(session_header()[:-10])  # a truncated header is not audio


def _encode_webm(pcm: np.ndarray, cluster_ms: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm", container_options={"cluster_time_limit": str(cluster_ms)}) as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        for start in range(0, len(pcm), 960):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 960], format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _encode_fragmented_mp4(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000"}
    with av.open(buf, "w", format="mp4", container_options=options) as out:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
