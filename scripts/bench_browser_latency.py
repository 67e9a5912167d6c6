"""Live captions in a real browser: per sentence, from the end of its audio to its words on screen, and to its final.

    .venv/bin/python scripts/bench_browser_latency.py [--sentences 25] [--seed 11] [--env NAME=VALUE ...] [--keep DIR]

The 25 MEETING sentences of tests/speech.py (in a seeded order, `--sentences` of them) are spoken by espeak-ng
(en-us, 150 wpm), each resampled by sox to 48 kHz, and joined with 0.6-1.5 s pauses after a 0.5 s lead-in and
before 40 s of silence (Chromium's fake microphone loops its file: the recording stops before it comes round);
each sentence's span is kept, its end being its last sample above 1 % of its peak (espeak-ng's own trailing
silence is not speech). The same sentences, order and pauses as scripts/bench_latency.py with the same --seed. `scribeai serve` runs as a process (bundled whisper, SQLite, the server's defaults
unless --env). scripts/bench_browser_latency.mjs opens the demo page in Debian's Chromium with the WAV as
fake microphone, signs in, presses Record (the page's default 1 s timeslice), and notes in the page when each
transcript line changed and when the next animation frame began (the frame that paints it: "on screen").

Where the recording starts in the WAV: the fake microphone starts playing its file when getUserMedia opens it,
a little before MediaRecorder.start(); the offset is found by cross-correlating the audio the server stored
(decoded) with the WAV, at the start and again near the end (the same figure both times: no samples lost).
The wall time of the recording's first sample is taken as the page's MediaRecorder.start() call (Date.now(),
the same clock as every other time here). So a sentence's end, in wall time, is
start() + (its end in the WAV - offset).

Per sentence: caption latency = from its end to the first frame showing a caption or final whose span reaches
its end (endMs >= end - 0.3 s, startMs < end) and holds at least half its words (tests.speech.word_recall);
final latency = to the first frame showing a final segment whose span reaches its end (as scripts/bench_latency.py).
Server CPU: user + system seconds of the serve process from start() to the last sentence's final on screen,
per minute of audio recorded in that time. WER: the page's finals (after Stop and session-completed) against
the text, beside the same model on the whole recording as the server stored it (decoded, at once).

The JSON summary goes to stdout; progress to stderr. Needs /usr/bin/chromium, espeak-ng, sox, and
tests/js/node_modules (`make js-deps`); the demo page needs clients/js/node_modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_stream import decode_webm, whole_file  # noqa: E402

from tests.conftest import token_for  # noqa: E402
from tests.reload_loss import stored_chunks  # noqa: E402
from tests.speech import ESPEAK_VOICE, ESPEAK_WPM, LEAD_IN_S, MEETING, missing_browser_tools, wer, word_recall  # noqa: E402
from tests.test_crash import ServerProcess  # noqa: E402

RATE = 48000
SR = 16000
TAIL_S = 40.0  # silence after the speech: longer than the driver waits for the last final
DRIVER = ROOT / "scripts" / "bench_browser_latency.mjs"
GOALS = {"caption_p50_s": 1.5, "caption_p95_s": 3.0, "final_p50_s": 3.0, "final_p95_s": 6.0, "wer_gap_points": 2.0}


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)), 2)


def sentence_pcm(text: str, workdir: Path, index: int) -> np.ndarray:
    """One sentence: espeak-ng, then sox to 48 kHz mono 16 bit; int16 samples."""
    spoken, part = workdir / f"s{index:03d}.wav", workdir / f"p{index:03d}.wav"
    subprocess.run(["espeak-ng", "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "-w", str(spoken), text],
                   check=True, capture_output=True)
    subprocess.run(["sox", "-R", str(spoken), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(part)],
                   check=True, capture_output=True)
    with wave.open(str(part)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def make_wav(sentences: list[str], path: Path, rng: random.Random) -> tuple[list[tuple[float, float]], float]:
    """The speech WAV; returns each sentence's (start, end) of voiced audio in seconds, and where the speech ends."""
    parts = [np.zeros(int(LEAD_IN_S * RATE), np.int16)]
    spans = []
    at = len(parts[0])
    for i, text in enumerate(sentences):
        pcm = sentence_pcm(text, path.parent, i)
        voiced = np.nonzero(np.abs(pcm.astype(np.int32)) > 0.01 * np.abs(pcm.astype(np.int32)).max())[0]
        spans.append(((at + voiced[0]) / RATE, (at + voiced[-1] + 1) / RATE))
        pause = np.zeros(int(rng.uniform(0.6, 1.5) * RATE), np.int16)
        parts += [pcm, pause]
        at += len(pcm) + len(pause)
    speech_s = at / RATE
    parts.append(np.zeros(int(TAIL_S * RATE), np.int16))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(parts).tobytes())
    return spans, speech_s


def to_16k(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.float32) / 32768.0
    out: np.ndarray = x[: len(x) // 3 * 3].reshape(-1, 3).mean(axis=1)  # 48 to 16 kHz (enough to correlate)
    return out


def offset_in_wav(recording: np.ndarray, wav: np.ndarray, at_s: float, length_s: float = 20.0,
                  lead_s: float = 1.0, lag_s: float = 3.0) -> tuple[float, float]:
    """Where the recording's time 0 is in the WAV's time, in seconds (from -lead_s to +lag_s), from the
    recording[at_s:at_s + length_s]; and the peak's strength (normalized cross-correlation, 1.0 = identical)."""
    a = recording[int(at_s * SR): int((at_s + length_s) * SR)]
    first = max(0, int((at_s - lead_s) * SR))
    b = wav[first: int((at_s + length_s + lag_s) * SR)]
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)[: len(b) - len(a) + 1]
    k = int(np.argmax(corr))
    strength = corr[k] / (np.linalg.norm(a) * np.linalg.norm(b[k: k + len(a)]) + 1e-9)
    return (first + k) / SR - at_s, round(float(strength), 3)


async def sample_cpu(pid: int, samples: list[tuple[float, float, float, float]], stop: asyncio.Event) -> None:
    """Every 0.25 s: (epoch ms, the server's CPU s, the whole machine's busy CPU s, the 1-minute load average)."""
    process = psutil.Process(pid)
    while not stop.is_set():
        times, machine = process.cpu_times(), psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        samples.append((time.time() * 1000, times.user + times.system, busy, os.getloadavg()[0]))
        await asyncio.sleep(0.25)


def cpu_at(samples: list[tuple[float, float, float, float]], at_ms: float, column: int = 1) -> float:
    return float(np.interp(at_ms, [s[0] for s in samples], [s[column] for s in samples]))


def code_state() -> dict[str, Any]:
    """The commit the server and page run, and the files of theirs that differ from it (the working tree is what runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "modified": git("status", "--porcelain", "--", "scribeai", "clients/js").splitlines()}


def stats(values: list[float]) -> dict[str, float] | None:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)} if values else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=len(MEETING))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--env", nargs="*", default=[], help="server settings, NAME=VALUE")
    parser.add_argument("--keep", type=Path, default=None, help="copy the WAV, the screenshots and the driver's JSON here")
    args = parser.parse_args()
    missing = missing_browser_tools()
    if missing:
        raise SystemExit("missing: " + ", ".join(missing))
    with tempfile.TemporaryDirectory(prefix="bench-browser-latency-") as tmp:
        workdir = Path(tmp)
        order = list(range(len(MEETING)))
        random.Random(args.seed).shuffle(order)
        chosen = [MEETING[order[i % len(order)]] for i in range(args.sentences)]
        wav_path = workdir / "speech.wav"
        spans, speech_s = make_wav(chosen, wav_path, random.Random(args.seed))
        reference = " ".join(chosen)
        log(f"{len(chosen)} sentences, {speech_s:.1f} s of speech (+{TAIL_S:.0f} s silence), {len(reference.split())} words")
        server = ServerProcess(workdir)
        server.settings = {"TRANSCRIBER": "whisper", "LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)}
        cpu: list[tuple[float, float, float, float]] = []
        try:
            await server.start()
            assert server.proc is not None
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_cpu(server.proc.pid, cpu, stop))
            proc = await asyncio.create_subprocess_exec(
                "node", str(DRIVER), "--url", server.url, "--token", token_for("bench-browser-latency"),
                "--wav", str(wav_path), "--out", str(workdir / "driver"), "--speech-seconds", f"{speech_s + 0.5:.2f}",
                "--last-end-ms", str(int(spans[-1][1] * 1000)), cwd=ROOT / "tests" / "js", stdout=asyncio.subprocess.PIPE)
            stdout, _ = await proc.communicate()
            stop.set()
            await sampler
            if proc.returncode != 0:
                raise SystemExit(f"bench_browser_latency.mjs exited with {proc.returncode}\n{server.log()}")
            page: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
            chunks = stored_chunks(server.data_dir / "scribeai.db", server.storage_dir, page["sessionId"])
        finally:
            server.kill_all()
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(wav_path, args.keep / "speech.wav")
            for shot in page["screenshots"]:
                shutil.copy(shot, args.keep / Path(shot).name)
            (args.keep / "page.json").write_text(json.dumps(page, indent=1))
            (args.keep / "recording.webm").write_bytes(b"".join(chunks))
        recording = decode_webm(b"".join(chunks))
        with wave.open(str(wav_path)) as w:
            wav16 = to_16k(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
        offset_s, strength = offset_in_wav(recording, wav16, 1.0)  # recording time t is WAV time t + offset_s
        late_at = max(0.0, min(speech_s - 25, len(recording) / SR - 25))
        offset_late_s, strength_late = offset_in_wav(recording, wav16, late_at)
        start_ms = page["startCall"]  # wall time of the recording's first sample
        stop_ms = page["stopClickedAt"]
        ends = [end - offset_s for _, end in spans]  # in the recording's time
        shown = [e for e in page["shown"] if e["endMs"] is not None]
        caption_lat: list[float | None] = []
        final_lat: list[float | None] = []
        confirmed_lat: list[float | None] = []  # half its words confirmed (plain, not grey)
        final_arrival: list[float | None] = []  # the same, when the transcriptSegment reached the page
        for sentence, end in zip(chosen, ends):
            end_wall = start_ms + end * 1000
            covers = [e for e in shown if e["endMs"] >= end * 1000 - 300 and e["startMs"] < end * 1000]
            words = [e["frame"] or e["t"] for e in covers if word_recall(sentence, e["text"]) >= 0.5]
            finals = [e["frame"] or e["t"] for e in covers if e["kind"] == "final"]
            caption_lat.append(round((min(words) - end_wall) / 1000, 2) if words else None)
            black = [e["frame"] or e["t"] for e in covers if word_recall(sentence, e["confirmed"]) >= 0.5]
            confirmed_lat.append(round((min(black) - end_wall) / 1000, 2) if black else None)
            final_lat.append(round((min(finals) - end_wall) / 1000, 2) if finals else None)
            arrived = [e["at"] for e in page["events"] if e["event"] == "transcriptSegment"
                       and e["endMs"] >= end * 1000 - 300 and e["startMs"] < end * 1000]
            final_arrival.append(round((min(arrived) - end_wall) / 1000, 2) if arrived else None)
        last_final_ms = start_ms + ends[-1] * 1000 + (final_lat[-1] or 0) * 1000 if final_lat[-1] is not None else stop_ms
        cpu_s = cpu_at(cpu, last_final_ms) - cpu_at(cpu, start_ms)
        recorded_min = (last_final_ms - start_ms) / 60000
        machine_s = cpu_at(cpu, last_final_ms, 2) - cpu_at(cpu, start_ms, 2)
        loads = [s[3] for s in cpu if start_ms <= s[0] <= last_final_ms]
        text = " ".join(page["finals"])
        baseline, _ = whole_file(recording)
        dom_to_frame = [e["frame"] - e["t"] for e in page["shown"] if e["frame"]]
        captions_seen = [x for x in caption_lat if x is not None]
        finals_seen = [x for x in final_lat if x is not None]
        report = {
            "chromium": page["chromium"], "code": code_state(), "sentences": len(chosen), "speech_s": round(speech_s, 1),
            "timeslice_ms": page["timesliceMs"], "mime": page["mimeType"], "settings": server.settings,
            "reference_point": {
                "getUserMedia_to_start_ms": page["startCall"] - page["gum"] if page["gum"] else None,
                "start_call_to_return_ms": page["startReturn"] - page["startCall"],
                "start_call_to_event_ms": page["startEvent"] - page["startCall"] if page["startEvent"] else None,
                "first_blob_after_start_ms": page["blobs"][0]["at"] - page["startCall"] if page["blobs"] else None,
                "recording_starts_in_wav_s": round(offset_s, 4), "correlation": strength,
                "near_the_end": {"at_s": round(late_at, 1), "recording_starts_in_wav_s": round(offset_late_s, 4),
                                 "correlation": strength_late},
                "recorded_audio_s": round(len(recording) / SR, 2),
                "start_to_stop_wall_s": round((stop_ms - start_ms) / 1000, 2),
                "blobs": len(page["blobs"]),
            },
            "caption_latency_s": stats(captions_seen), "sentences_never_captioned": caption_lat.count(None),
            "confirmed_latency_s": stats([x for x in confirmed_lat if x is not None]),
            "final_latency_s": stats(finals_seen), "sentences_without_final": final_lat.count(None),
            "final_arrival_latency_s": stats([x for x in final_arrival if x is not None]),
            "dom_to_frame_ms": {"p50": percentile(dom_to_frame, 50), "max": max(dom_to_frame)} if dom_to_frame else None,
            "lines_changed": len(page["shown"]), "finals_shown": len(page["finals"]),
            "server_cpu_s_per_audio_min": round(cpu_s / recorded_min, 1),
            # the machine is shared: how busy it was while this recorded (cores, of psutil.cpu_count())
            "machine": {"cores": psutil.cpu_count(), "busy_cores": round(machine_s / (recorded_min * 60), 2),
                        "server_cores": round(cpu_s / (recorded_min * 60), 2),
                        "load1_mean": round(float(np.mean(loads)), 1) if loads else None,
                        "load1_max": round(max(loads), 1) if loads else None},
            "wer_finals": round(wer(reference, text), 4), "wer_whole_file": round(wer(reference, baseline), 4),
            "goals": GOALS, "caption_latencies": caption_lat, "final_latencies": final_lat,
            "page_errors": page["errors"], "finals": text, "whole_file": baseline,
            "screenshot": {"at_recording_s": round((page["screenshotAt"] - start_ms) / 1000, 1),
                           "last_lines": page.get("screenshotShowed"),
                           "files": [str(args.keep / Path(p).name) for p in page["screenshots"]] if args.keep else None},
        }
        report["wer_gap_points"] = round(100 * (report["wer_finals"] - report["wer_whole_file"]), 2)
        c, f = report["caption_latency_s"], report["final_latency_s"]
        report["verdict"] = {
            "caption_p50": bool(c and c["p50"] <= GOALS["caption_p50_s"] and not report["sentences_never_captioned"]),
            "caption_p95": bool(c and c["p95"] <= GOALS["caption_p95_s"] and not report["sentences_never_captioned"]),
            "final_p50": bool(f and f["p50"] <= GOALS["final_p50_s"] and not report["sentences_without_final"]),
            "final_p95": bool(f and f["p95"] <= GOALS["final_p95_s"] and not report["sentences_without_final"]),
            "wer": report["wer_gap_points"] <= GOALS["wer_gap_points"],
        }
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
