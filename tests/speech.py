"""Test helpers for real speech: WAVs made with espeak-ng + sox, word recall / WER, and the browser toolchain check."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections import Counter
from pathlib import Path

import numpy as np

JS_DIR = Path(__file__).parent / "js"
CHROMIUM = "/usr/bin/chromium"
ESPEAK_VOICE = "en-us"
ESPEAK_WPM = 150
LEAD_IN_S = 0.5  # a recorder's first few ms are often lost; speech starts after a short silence

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


class SpeechToolMissing(RuntimeError):
    """espeak-ng or sox is not installed."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SpeechToolMissing(f"`{name}` is not installed (apt-get install espeak-ng sox): it is needed to make test speech")
    return path


def make_speech_wav(sentences: list[str], path: Path, pause_s: float = 1.0, rate: int = 48000) -> float:
    """Speak `sentences` with `pause_s` of silence after each into a mono 16-bit WAV at `rate`; returns its length in s."""
    espeak, sox = _tool("espeak-ng"), _tool("sox")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speech-") as tmp:
        parts = []
        for i, sentence in enumerate(sentences):
            spoken, part = Path(tmp) / f"s{i:03d}.wav", Path(tmp) / f"p{i:03d}.wav"
            subprocess.run([espeak, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "-w", str(spoken), sentence],
                           check=True, capture_output=True)
            subprocess.run([sox, "-R", str(spoken), str(part), "pad", "0", str(pause_s)], check=True, capture_output=True)
            parts.append(str(part))
        # espeak-ng writes 22,050 Hz mono: sox joins the parts and resamples once
        # -R: repeatable, so sox seeds its dither with a fixed number and the same text gives the same WAV
        subprocess.run([sox, "-R", *parts, "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(path),
                        "pad", str(LEAD_IN_S), "0"], check=True, capture_output=True)
    return wav_seconds(path)


def wav_seconds(path: Path) -> float:
    """The length of an audio file in seconds (sox --i)."""
    result = subprocess.run([_tool("sox"), "--i", "-D", str(path)], check=True, capture_output=True, text=True)
    return float(result.stdout)


MEETING = [  # meeting talk without numbers (espeak-ng speaks them unlike whisper writes them)
    "The quarterly review has been moved to the large conference room on the third floor.",
    "Please remember to send the slides to everyone before the meeting starts tomorrow morning.",
    "We agreed that the marketing team will own the launch plan for the new product.",
    "Our customers keep asking for a simpler way to export their reports.",
    "The database migration finished overnight without any serious problems.",
    "I think we should postpone the decision until we hear back from the legal department.",
    "Sarah will follow up with the vendor about the delayed shipment.",
    "The budget for the design work is tighter than we expected this year.",
    "Could you share the notes from yesterday's call with the whole group?",
    "Several users reported that the mobile application crashes when they upload large photos.",
    "The engineering team needs more time to finish the security review.",
    "Let's schedule a short meeting next week to check on the progress.",
    "The new office in Berlin will open at the beginning of the summer.",
    "Hiring remains our biggest challenge for the rest of the quarter.",
    "We should write down the open questions and assign an owner to each one.",
    "The support queue has grown because of the outage on Friday afternoon.",
    "Everyone liked the prototype, but the colors need another round of feedback.",
    "Our main competitor lowered their prices again last month.",
    "Michael suggested that we run a small pilot with a few friendly customers first.",
    "The training sessions for the sales staff went better than planned.",
    "Please update the project board so that it reflects the current status.",
    "We are still waiting for the final contract from the partner company.",
    "The server costs went down after we moved the batch jobs to the night.",
    "Thank you all for joining today, and have a great rest of your week.",
    "Before we finish, does anyone have any other business to raise?",
]


CLUSTER_ID = b"\x1f\x43\xb6\x75"
RATE = 16000


def wav_pcm(path: Path) -> np.ndarray:
    """A mono 16-bit WAV as float32 at 16 kHz."""
    with wave.open(str(path)) as w:
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    n_out = int(len(pcm) * RATE / rate)
    return np.interp(np.arange(n_out) * rate / RATE, np.arange(len(pcm)), pcm).astype(np.float32)


def encode_webm(pcm16k: np.ndarray) -> bytes:
    """WebM/Opus, 48 kHz mono, live=1: Segment and Clusters of unknown size, like Chromium's MediaRecorder."""
    import av

    s16 = (np.clip(pcm16k, -1, 1) * 32767).astype(np.int16)
    src = av.AudioFrame.from_ndarray(s16[None, :], format="s16", layout="mono")
    src.sample_rate = RATE
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    pcm48 = np.concatenate([f.to_ndarray()[0] for f in [*resampler.resample(src), *resampler.resample(None)]])
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm", container_options={"live": "1"}) as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = 32000
        pts = 0
        for start in range(0, len(pcm48), 960):
            block = pcm48[start:start + 960]
            if len(block) < 960:
                block = np.concatenate([block, np.zeros(960 - len(block), np.int16)])
            frame = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, pts
            pts += 960
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def cut(data: bytes, duration_s: float, timeslice_ms: int) -> list[bytes]:
    """Byte offsets proportional to the timeslice: cuts fall anywhere, as in Chromium's blobs; piece 0 holds at
    least the header."""
    header = data.find(CLUSTER_ID)
    assert header > 0, "no Cluster in the WebM"
    n = max(1, math.ceil(duration_s * 1000 / timeslice_ms))
    offsets = [0]
    for k in range(1, n):
        off = int(len(data) * k * timeslice_ms / (duration_s * 1000))
        if off <= header or off <= offsets[-1]:
            continue
        offsets.append(min(off, len(data)))
    offsets.append(len(data))
    return [data[a:b] for a, b in zip(offsets, offsets[1:]) if b > a]


def timeslice_blobs(wav: Path, timeslice_ms: int = 1000) -> list[bytes]:
    """A speech WAV as a browser recorder's timeslice blobs: one WebM/Opus stream cut into byte ranges."""
    pcm = wav_pcm(wav)
    return cut(encode_webm(pcm), len(pcm) / RATE, timeslice_ms)


def spoken_blobs(sentences: list[str], directory: Path, timeslice_ms: int = 1000) -> list[bytes]:
    """Sentences spoken with 0.8 s pauses, as a browser recorder's timeslice blobs."""
    wav = directory / "speech.wav"
    make_speech_wav(sentences, wav, pause_s=0.8)
    return timeslice_blobs(wav, timeslice_ms)


def _number_words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (_number_words(n % 100) if n % 100 else [])
    return list(str(n))  # rare in test speech: compare digit by digit


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation; numbers as words ("7" and "seven" compare equal, "twenty-one" is two words)."""
    words: list[str] = []
    for token in re.findall(r"[a-z0-9']+", text.lower().replace("-", " ")):
        token = token.strip("'")
        if not token:
            continue
        if token.isdigit():
            words.extend(_number_words(int(token)))
        else:
            words.append(token.removesuffix("'s") if token.endswith("'s") and len(token) > 2 else token)
    return words


def word_recall(reference: str, hypothesis: str) -> float:
    """Share of the reference's words (with their counts) found anywhere in the hypothesis.

    Order-free, so a transcript of looped audio or of a recording that starts mid-sentence is scored
    on what it heard, and words repeated in the hypothesis cannot count twice.
    """
    ref = Counter(normalize(reference))
    if not ref:
        raise ValueError("the reference has no words")
    hyp = Counter(normalize(hypothesis))
    return sum((ref & hyp).values()) / sum(ref.values())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, on normalized words."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise ValueError("the reference has no words")
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / len(ref)


def missing_browser_tools() -> list[str]:
    """What the real-browser tests lack on this machine (empty when nothing)."""
    missing = [f"`{name}` (apt-get install {package})" for name, package in
               (("espeak-ng", "espeak-ng"), ("sox", "sox"), ("node", "nodejs")) if shutil.which(name) is None]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    for module in ("puppeteer-core", "socket.io-client"):
        if not (JS_DIR / "node_modules" / module / "package.json").exists():
            missing.append(f"tests/js/node_modules/{module} (npm ci --prefix tests/js)")
    return missing


def require_browser_tools() -> None:
    """Skip with the reason when chromium, espeak-ng, sox or the npm modules are missing; under CI, fail instead."""
    missing = missing_browser_tools()
    if not missing:
        return
    import pytest  # here, not at the top: scripts use this module without pytest installed

    reason = "the real-browser test needs " + ", ".join(missing) + " (`make test` installs them; the apt packages only as root)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: they must be installed)", pytrace=False)
    pytest.skip(reason)
