"""Windower: cuts at pauses, gaps, flush and bookkeeping with a sample-exact fake VAD; Silero on real speech."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from scribeai.transcription.windows import SileroDetector, Window, Windower

RATE = 16000
PER_MS = RATE // 1000
FIXTURE = Path(__file__).parent / "fixtures" / "audio" / "speech_long.webm"
Key = tuple[float, float, int, int, float, float, bytes]


class LoudDetector:
    """Speech is every run of samples louder than a threshold: exact to the sample."""

    def speech(self, pcm: NDArray[np.float32]) -> list[tuple[int, int]]:
        loud = np.concatenate([[False], np.abs(pcm) > 0.05, [False]])
        edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
        return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2])]


def synth(*parts: tuple[float, float], seed: int = 0) -> NDArray[np.float32]:
    """(duration_ms, loudness) parts: loudness 0 is silence, else noise of exactly that magnitude."""
    loudness = np.concatenate([np.full(round(ms) * PER_MS, level, dtype=np.float32) for ms, level in parts])
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], dtype=np.float32), len(loudness))
    audio: NDArray[np.float32] = (signs * loudness).astype(np.float32)
    return audio


def feed(windower: Windower, audio: NDArray[np.float32], piece_ms: float, chunk_ms: float = 3000,
         at_ms: float = 0.0, first_seq: int = 0, flush: bool = True) -> list[Window]:
    """Add audio in pieces (never across a chunk boundary, so seqs do not depend on piece size)."""
    piece, chunk = round(piece_ms * PER_MS), round(chunk_ms * PER_MS)
    windows, pos = [], 0
    while pos < len(audio):
        end = min(pos + piece, (pos // chunk + 1) * chunk, len(audio))
        windows += windower.add(audio[pos:end], at_ms + pos / PER_MS, first_seq + pos // chunk)
        pos = end
    return windows + (windower.flush() if flush else [])


def key(window: Window) -> Key:
    return (window.start_ms, window.end_ms, window.from_seq, window.to_seq, window.speech_ms, window.through_ms,
            window.pcm.tobytes())


def summary(window: Window) -> tuple[float, float, int, int, float, float]:
    return (window.start_ms, window.end_ms, window.from_seq, window.to_seq, window.speech_ms, window.through_ms)


SENTENCES = synth((7800, 0.3), (400, 0), (5600, 0.3), (400, 0), (4800, 0.3), (1000, 0), (4800, 0.3), (400, 0),
                  (3800, 0.3))


def test_cut_at_the_pause_nearest_target() -> None:
    windows = feed(Windower(LoudDetector()), SENTENCES, 20)
    assert [summary(w) for w in windows] == [
        (0.0, 19200.0, 0, 6, 18200.0, 19500.0),  # the 1 s pause at 19-20 s, not the 0.4 s one at 14 s
        (19800.0, 29000.0, 6, 9, 8600.0, 29000.0),
    ]
    assert len(windows[0].pcm) == 19200 * PER_MS


def test_a_longer_pause_beats_a_slightly_nearer_short_one() -> None:
    audio = synth((17750, 0.3), (1500, 0), (1775, 0.3), (350, 0), (8625, 0.3))
    windows = feed(Windower(LoudDetector()), audio, 20)
    assert [w.through_ms for w in windows] == [18500.0, 30000.0]  # not 20600, 600 ms nearer to target


def test_a_long_pause_is_cut_without_waiting_for_target() -> None:
    windower = Windower(LoudDetector())
    audio = synth((12000, 0.3), (4000, 0), (6000, 0.3))
    returned_at = []
    for start in range(0, len(audio), 20 * PER_MS):
        for window in windower.add(audio[start:start + 20 * PER_MS], start / PER_MS, 0):
            returned_at.append((start / PER_MS + 20, window))
    assert len(returned_at) == 1
    audio_end_ms, window = returned_at[0]
    assert 12150 <= window.through_ms <= 15850  # inside the pause, away from both words
    assert audio_end_ms <= 14000 + 512 + 20  # 2 s into the pause, plus one VAD step and one piece
    assert (window.start_ms, window.end_ms, window.speech_ms) == (0.0, 12200.0, 12000.0)


def test_no_pause_forces_the_longest_short_pause_in_the_last_seconds() -> None:
    audio = synth((19900, 0.3), (200, 0), (5850, 0.3), (100, 0), (875, 0.3), (150, 0), (12925, 0.3))
    windows = feed(Windower(LoudDetector()), audio, 20)
    assert [summary(w) for w in windows] == [
        (0.0, 27000.0, 0, 8, 26625.0, 27000.0),  # the 150 ms gap; the 200 ms one at 20 s is too early
        (27000.0, 40000.0, 9, 13, 12925.0, 40000.0),
    ]


def test_no_pause_at_all_cuts_at_an_energy_dip() -> None:
    audio = synth((28000, 0.3), (60, 0.06), (6940, 0.3))
    first = feed(Windower(LoudDetector()), audio, 20)[0]
    assert 28000 < first.through_ms < 28060
    assert first.speech_ms == first.through_ms


def test_steady_speech_is_cut_at_max_as_a_last_resort() -> None:
    windows = feed(Windower(LoudDetector()), synth((35000, 0.3)), 20)
    assert [summary(w) for w in windows] == [(0.0, 30000.0, 0, 9, 30000.0, 30000.0),
                                             (30000.0, 35000.0, 10, 11, 5000.0, 35000.0)]
    assert len(windows[0].pcm) == 30000 * PER_MS


def test_silence_gives_empty_windows_every_min_ms() -> None:
    windows = feed(Windower(LoudDetector()), np.zeros(60 * RATE, dtype=np.float32), 1000)
    assert [w.through_ms for w in windows] == [10000.0, 20000.0, 30000.0, 40000.0, 50000.0, 60000.0]
    assert [(w.start_ms, w.end_ms, w.speech_ms, len(w.pcm)) for w in windows] == [
        (start, start, 0.0, 0) for start in [0.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0]]


def test_a_click_is_not_speech_but_a_short_word_is() -> None:
    click = feed(Windower(LoudDetector()), synth((5000, 0), (50, 0.3), (3000, 0)), 20)
    word = feed(Windower(LoudDetector()), synth((5000, 0), (150, 0.3), (3000, 0)), 20)
    assert [summary(w) for w in click] == [(0.0, 0.0, 0, 2, 0.0, 8050.0)]
    assert [summary(w) for w in word] == [(4800.0, 5350.0, 0, 2, 150.0, 8150.0)]


def test_trimmed_pcm_is_the_audio_at_its_timeline_position() -> None:
    audio = synth((3000, 0), (4000, 0.3), (3000, 0))
    [window] = feed(Windower(LoudDetector()), audio, 20, at_ms=60_000)
    assert (window.start_ms, window.end_ms, window.through_ms) == (62800.0, 67200.0, 70000.0)
    assert window.pcm.tobytes() == audio[2800 * PER_MS:7200 * PER_MS].tobytes()


def test_seq_bookkeeping() -> None:
    windower = Windower(LoudDetector())
    assert windower.first_pending_seq is None
    first = feed(windower, SENTENCES[:22000 * PER_MS], 300, chunk_ms=1000, flush=False)
    assert [(w.from_seq, w.to_seq, w.through_ms) for w in first] == [(0, 19, 19500.0)]
    assert windower.first_pending_seq == 19  # chunk 19 (19-20 s) is split between two windows
    assert windower.pending_ms == 2500.0
    rest = feed(windower, SENTENCES[22000 * PER_MS:], 300, chunk_ms=1000, at_ms=22000, first_seq=22)
    assert [(w.from_seq, w.to_seq) for w in rest] == [(19, 28)]
    assert windower.first_pending_seq is None


def test_one_window_per_chunk_when_pieces_of_a_chunk_arrive_together() -> None:
    windower = Windower(LoudDetector())
    windower.add(synth((500, 0.3)), 0, 7)
    windower.add(np.zeros(0, dtype=np.float32), 500, 8)  # a chunk that decoded to nothing
    windower.add(synth((500, 0.3)), 500, 9)
    assert windower.first_pending_seq == 7
    [window] = windower.flush()
    assert (window.from_seq, window.to_seq, window.speech_ms) == (7, 9, 1000.0)


def test_a_gap_in_the_timeline_cuts_the_pending_audio_first() -> None:
    windower = Windower(LoudDetector())
    assert feed(windower, synth((5000, 0.3)), 1000, chunk_ms=5000, flush=False) == []
    cut = windower.add(synth((1000, 0.3)), 5500, 1)  # a chunk was lost
    assert [summary(w) for w in cut] == [(0.0, 5000.0, 0, 0, 5000.0, 5000.0)]
    assert windower.pending_ms == 1000.0
    assert windower.first_pending_seq == 1
    back = windower.add(synth((1000, 0.3)), 2000, 2)  # the timeline jumps backwards
    assert [summary(w) for w in back] == [(5500.0, 6500.0, 1, 1, 1000.0, 6500.0)]
    assert [summary(w) for w in windower.flush()] == [(2000.0, 3000.0, 2, 2, 1000.0, 3000.0)]
    assert windower.done_ms == 6500.0


def test_jitter_is_absorbed_at_the_end_of_pending_audio() -> None:
    windower = Windower(LoudDetector())
    for second, jitter in enumerate([0, 60, -90, 100, -40, 0, 80, -100]):
        assert windower.add(synth((1000, 0.3)), second * 1000 + jitter, second) == []
    assert windower.pending_ms == 8000.0
    assert [summary(w) for w in windower.flush()] == [(0.0, 8000.0, 0, 7, 8000.0, 8000.0)]


def test_overlap_beyond_the_jitter_is_a_discontinuity() -> None:
    windower = Windower(LoudDetector())
    windower.add(synth((1000, 0.3)), 0, 0)
    assert [w.through_ms for w in windower.add(synth((1000, 0.3)), 850, 1)] == [1000.0]


def test_flush_makes_everything_pending_a_window_once() -> None:
    windower = Windower(LoudDetector())
    assert windower.flush() == []
    feed(windower, synth((2000, 0), (3000, 0.3)), 1000, flush=False)
    assert windower.pending_ms == 5000.0
    assert [summary(w) for w in windower.flush()] == [(1800.0, 5000.0, 0, 1, 3000.0, 5000.0)]
    assert (windower.pending_ms, windower.first_pending_seq, windower.flush()) == (0.0, None, [])
    windower.add(synth((1000, 0.3)), 9000, 5)  # after a pause the recording resumes later on the timeline
    assert [summary(w) for w in windower.flush()] == [(9000.0, 10000.0, 5, 5, 1000.0, 10000.0)]


@pytest.mark.parametrize("piece_ms", [20, 160, 1000, 15000])
def test_same_windows_for_any_piece_size(piece_ms: float) -> None:
    audio = np.concatenate([SENTENCES, synth((25000, 0), (36000, 0.3), seed=1), SENTENCES])
    reference = [key(w) for w in feed(Windower(LoudDetector()), audio, 3000)]
    assert len(reference) == 7  # pauses, long silence, steady speech cut at max
    assert [key(w) for w in feed(Windower(LoudDetector()), audio, piece_ms)] == reference


def test_done_ms_and_pending_stay_within_bounds() -> None:
    rng = np.random.default_rng(7)
    audio = np.concatenate([SENTENCES, synth((40000, 0.3), (30000, 0), seed=2)])
    windower, returned = Windower(LoudDetector()), []
    done, pos, at_ms = 0.0, 0, 0.0
    while pos < len(audio):
        end = min(len(audio), pos + int(rng.integers(1, 3 * RATE)))
        at_ms += float(rng.choice([0.0, 0.0, 0.0, 500.0, -3000.0]))  # gaps and backward jumps
        returned += windower.add(audio[pos:end], at_ms + pos / PER_MS, pos // (3 * RATE))
        pos = end
        assert windower.done_ms >= done
        assert windower.done_ms == max((w.through_ms for w in returned), default=0.0)
        assert windower.pending_ms < 30000.0
        done = windower.done_ms
    returned += windower.flush()
    assert windower.done_ms == max(w.through_ms for w in returned)
    assert all(w.start_ms <= w.end_ms <= w.through_ms for w in returned)
    throughs = [w.through_ms for w in returned]
    assert throughs != sorted(throughs)  # the timeline did jump backwards, and done_ms held


def test_pending_never_reaches_max_even_with_long_pieces() -> None:
    windower = Windower(LoudDetector())
    sizes = []
    for index, start in enumerate(range(0, 90 * RATE, 15 * RATE)):
        windows = windower.add(synth((15000, 0.3), seed=index), start / PER_MS, index)
        sizes += [w.through_ms - w.start_ms for w in windows]
        assert windower.pending_ms < 30000.0
    assert sizes == [30000.0, 30000.0, 30000.0]


class CountingDetector(LoudDetector):
    def __init__(self) -> None:
        self.samples_seen = 0

    def speech(self, pcm: NDArray[np.float32]) -> list[tuple[int, int]]:
        self.samples_seen += len(pcm)
        return super().speech(pcm)


def test_the_vad_sees_each_sample_about_twice_however_small_the_pieces() -> None:
    detector = CountingDetector()
    audio = np.concatenate([SENTENCES] * 4)
    windows = feed(Windower(detector), audio, 20)
    assert len(windows) == 6
    assert len(audio) < detector.samples_seen <= 2 * len(audio)  # each step also reads the step before it


def test_rejects_bad_settings_and_stereo() -> None:
    with pytest.raises(ValueError):
        Windower(LoudDetector(), min_ms=20_000, target_ms=10_000)
    with pytest.raises(ValueError):
        Windower(LoudDetector(), pause_ms=0)
    with pytest.raises(ValueError):
        Windower(LoudDetector()).add(np.zeros((2, 100), dtype=np.float32), 0, 0)


def test_reprs_say_where_things_stand() -> None:
    windower = Windower(LoudDetector())
    windower.add(synth((1500, 0.3)), 0, 3)
    assert repr(windower).startswith("<Windower pending=1500ms done=0ms first_pending_seq=3 min/target/max=")
    assert repr(windower.flush()[0]) == "Window(0-1500 ms, through 1500 ms, seq 3-3, speech 1500 ms, 24000 samples)"


# Real speech, real Silero VAD.

@pytest.fixture(scope="module")
def silero() -> SileroDetector:
    return SileroDetector()


@pytest.fixture(scope="module")
def speech() -> NDArray[np.float32]:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with av.open(str(FIXTURE)) as container:
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    frames += resampler.resample(None)
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32)


def envelope(audio: NDArray[np.float32]) -> NDArray[np.float64]:
    """RMS of 10 ms frames."""
    frames = audio[:len(audio) // 160 * 160].reshape(-1, 160).astype(np.float64)
    rms: NDArray[np.float64] = np.sqrt(np.mean(frames ** 2, axis=1))
    return rms


def quiet_runs(audio: NDArray[np.float32], at_least_ms: int = 300) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of stretches whose energy stays below speech level."""
    quiet = np.concatenate([[False], envelope(audio) < 0.005, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8))) * 10
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= at_least_ms]


def test_fixture_has_the_pauses_the_other_tests_rely_on(speech: NDArray[np.float32]) -> None:
    assert len(speech) == 265141
    assert [run for run in quiet_runs(speech) if run[1] - run[0] >= 800] == [(3280, 4470), (7540, 8740),
                                                                            (11690, 12930)]


def test_silero_cuts_inside_the_sentence_pauses(silero: SileroDetector, speech: NDArray[np.float32]) -> None:
    windows = feed(Windower(silero, min_ms=3000, target_ms=4000, max_ms=8000), speech, 20, chunk_ms=4000)
    pauses = quiet_runs(speech)
    cuts = [w.through_ms for w in windows[:-1]]
    assert [next((p for p in pauses if p[0] < cut < p[1]), None) for cut in cuts] == [
        (3280, 4470), (7540, 8740), (11690, 12930)]
    assert windows[-1].through_ms == len(speech) / PER_MS
    assert [(w.from_seq, w.to_seq) for w in windows] == [(0, 0), (0, 2), (2, 3), (3, 4)]


def test_silero_trimming_keeps_every_loud_frame(silero: SileroDetector, speech: NDArray[np.float32]) -> None:
    windows = feed(Windower(silero, min_ms=3000, target_ms=4000, max_ms=8000), speech, 20)
    loud_ms = np.flatnonzero(envelope(speech) >= 0.01) * 10
    kept = np.zeros(len(loud_ms), dtype=bool)
    for window in windows:
        kept |= (loud_ms >= window.start_ms) & (loud_ms + 10 <= window.end_ms)
    assert loud_ms[~kept].tolist() == []
    assert sum(w.end_ms - w.start_ms for w in windows) < len(speech) / PER_MS - 2000  # the pauses were trimmed


def test_silero_with_default_settings_cuts_near_20_s(silero: SileroDetector, speech: NDArray[np.float32]) -> None:
    twice = np.concatenate([speech, speech])
    windows = feed(Windower(silero), twice, 20)
    pauses = quiet_runs(twice)
    assert len(windows) == 2
    assert next(p for p in pauses if p[0] < windows[0].through_ms < p[1]) == (19850, 21040)
    assert windows[1].through_ms == len(twice) / PER_MS
    assert all(w.speech_ms > 9000 for w in windows)


def test_silero_gives_the_same_windows_for_any_piece_size(silero: SileroDetector,
                                                          speech: NDArray[np.float32]) -> None:
    twice = np.concatenate([speech, speech])
    by_size = {piece_ms: [key(w) for w in feed(Windower(silero), twice, piece_ms)] for piece_ms in [20, 1000, 15000]}
    assert len(by_size[20]) == 2
    assert by_size[1000] == by_size[20]
    assert by_size[15000] == by_size[20]


@pytest.mark.parametrize("kind", ["silence", "white noise", "loud white noise"])
def test_silero_finds_no_speech_in_silence_or_noise(silero: SileroDetector, kind: str) -> None:
    rng = np.random.default_rng(3)
    audio = {"silence": np.zeros(60 * RATE),
             "white noise": rng.standard_normal(60 * RATE) * 0.1,
             "loud white noise": rng.uniform(-1, 1, 60 * RATE)}[kind].astype(np.float32)
    windows = feed(Windower(silero), audio, 1000)
    assert [(w.speech_ms, len(w.pcm)) for w in windows] == [(0.0, 0)] * 6
    assert windows[-1].through_ms == 60000.0


def test_silero_speed_on_30_s(silero: SileroDetector, speech: NDArray[np.float32]) -> None:
    audio = np.concatenate([speech, speech])[:30 * RATE]
    silero.speech(audio)  # warm-up
    started = time.perf_counter()
    found = silero.speech(audio)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    feed(Windower(silero), audio, 20)
    windowed = time.perf_counter() - started
    print(f"\nSilero VAD on 30 s: {whole * 1000:.1f} ms in one call; "
          f"Windower at 20 ms pieces: {windowed * 1000:.1f} ms")
    assert len(found) >= 5


def test_settle_takes_the_best_pause_seen_instead_of_waiting_for_target() -> None:
    windower = Windower(LoudDetector())
    # 14.5 s held: pauses at 7.8-8.2 s and 13.8-14.2 s; add() waits, since a pause nearer 20 s may still come
    held = feed(windower, SENTENCES[: 14_500 * PER_MS], 1000, flush=False)
    assert held == [] and windower.pending_ms == 14_500.0
    settled = windower.settle()
    assert [summary(w) for w in settled] == [(0.0, 14000.0, 0, 4, 13400.0, 14000.0)]  # the pause past min_ms, cut in its middle
    assert windower.settle() == []  # 0.5 s left: below min_ms
    assert Windower(LoudDetector()).settle() == []  # nothing held
