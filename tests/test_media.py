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
from scribeai.transcription.media import UndecodableAudio

AUDIO = Path(__file__).parent / "fixtures" / "audio"
MANIFEST: dict[str, dict[str, Any]] = json.loads((AUDIO / "manifest.json").read_text())
PIECES = sorted((n for n, e in MANIFEST.items() if "order" in e), key=lambda n: MANIFEST[n]["order"])


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


@pytest.mark.parametrize("name", PIECES[1:])
def test_headerless_piece_decodes_only_behind_the_header(name: str) -> None:
    piece = read(name)
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(piece)
    pcm = media.decode_pcm(session_header() + piece)
    assert pcm.dtype == np.float32
    assert pcm.ndim == 1
    # The Opus decoder drops its 6.5 ms pre-skip at the start of each decode.
    assert abs(len(pcm) / 16 - MANIFEST[name]["duration_ms"]) <= 10
    assert 0.1 < float(np.abs(pcm).max()) <= 1.0


def test_piece_durations_behind_the_header_add_up_to_the_long_clip() -> None:
    durations = [media.measure_duration_ms(read(n) if n == PIECES[0] else session_header() + read(n)) for n in PIECES]
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


def test_fragmented_mp4_continuation_decodes_behind_the_init_segment() -> None:
    """Safari records audio/mp4 as fragments: chunk 0 = ftyp + moov (+ fragments), then moof + mdat."""
    pcm = media.decode_pcm(read("speech_stella.webm"), sample_rate=48000)
    data = _encode_fragmented_mp4((pcm * 32767).astype(np.int16))
    header = data[: next(start for box, start, _ in media.mp4_boxes(data) if box == b"moof")]
    assert header[4:8] == b"ftyp" and b"moov" in header and data[len(header) + 4 : len(header) + 8] == b"moof"
    later = data[data.index(b"moof", len(header) + 8) - 4 :]  # from the second fragment on
    assert (media.detect_container(later), media.has_container_header(later, "mp4")) == ("mp4", False)
    with pytest.raises(UndecodableAudio):
        media.decode_pcm(later)
    decoded_ms = len(media.decode_pcm(header + later)) / 16
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
