"""Cut a session's continuous audio into transcription windows at pauses (pure: no I/O, no threads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Audio = NDArray[np.float32]
Ranges = list[tuple[int, int]]

_PAD_MS = 200.0  # silence kept around a window's speech
_JITTER_MS = 100.0  # timestamp slack between consecutive pieces that is absorbed
_LONG_PAUSE_MS = 2000.0  # a pause this long ends the search for a better one
_MIN_SPEECH_MS = 100.0  # shorter isolated "speech" is a click or a noise burst
_LOOKBACK_MS = 5000.0  # how far before max_ms a forced cut may fall
_BLOCK_MS = 512.0  # the VAD runs on new audio in steps of this...
_CONTEXT_MS = 512.0  # ...with this much earlier audio to warm its state up
_DIP_RATIO = 0.5  # an energy dip counts as a pause below this fraction of the median


@dataclass(frozen=True, eq=False)
class Window:
    """A stretch of the session timeline to transcribe as one piece."""

    pcm: Audio  # 16 kHz mono, trimmed to its speech plus a small pad
    start_ms: float  # timeline position of pcm[0]
    end_ms: float  # timeline position of the end of pcm
    from_seq: int  # first chunk seq with audio in the window's span
    to_seq: int  # last chunk seq with audio in the window's span
    speech_ms: float  # VAD speech inside; 0 means nothing to transcribe
    through_ms: float  # the windower is done up to here once this window is handled

    def __repr__(self) -> str:
        return (f"Window({self.start_ms:.0f}-{self.end_ms:.0f} ms, through {self.through_ms:.0f} ms, "
                f"seq {self.from_seq}-{self.to_seq}, speech {self.speech_ms:.0f} ms, {len(self.pcm)} samples)")


class SpeechDetector(Protocol):
    def speech(self, pcm: Audio) -> Ranges:
        """[start, end) sample ranges of speech in pcm (which must not be modified)."""
        ...


class SileroDetector:
    """Silero VAD as shipped with faster-whisper: 32 ms frames, hysteresis, no padding."""

    def __init__(self, threshold: float = 0.5) -> None:
        # Imported here so that windowing itself needs neither onnxruntime nor the model file.
        from faster_whisper.vad import VadOptions, get_vad_model

        get_vad_model()  # load now rather than inside the first window
        self.threshold = threshold
        self._options = VadOptions(threshold=threshold, min_silence_duration_ms=0, speech_pad_ms=0)

    def speech(self, pcm: Audio) -> Ranges:
        from faster_whisper.vad import get_speech_timestamps

        if len(pcm) == 0:
            return []
        found = get_speech_timestamps(pcm, self._options, sampling_rate=16000)
        return [(int(span["start"]), int(span["end"])) for span in found]

    def __repr__(self) -> str:
        return f"SileroDetector(threshold={self.threshold})"


@dataclass(frozen=True)
class _Gap:
    """Non-speech in the analysed pending audio; an open one still runs at the analysed end."""

    start: int
    end: int
    open: bool

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def mid(self) -> int:
        return (self.start + self.end) // 2


class _Samples:
    """A growing float32 buffer addressed by sample index since the segment began."""

    def __init__(self) -> None:
        self._data: Audio = np.empty(0, dtype=np.float32)
        self.start = 0  # index of self._data[0]
        self.end = 0

    def append(self, pcm: Audio) -> None:
        used = self.end - self.start
        if used + len(pcm) > len(self._data):
            grown = np.empty(max(2 * len(self._data), used + len(pcm)), dtype=np.float32)
            grown[:used] = self._data[:used]
            self._data = grown
        self._data[used:used + len(pcm)] = pcm
        self.end += len(pcm)

    def view(self, start: int, end: int) -> Audio:
        return self._data[start - self.start:end - self.start]

    def drop_before(self, index: int) -> None:
        cut = index - self.start
        if cut <= 0:
            return
        used = self.end - self.start
        self._data[:used - cut] = self._data[cut:used]
        self.start = index


def _as_audio(pcm: Audio) -> Audio:
    audio = np.ascontiguousarray(pcm, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"pcm must be mono (1-D), got shape {audio.shape}")
    return audio


def _append_run(runs: Ranges, start: int, end: int) -> None:
    if runs and runs[-1][1] >= start:
        runs[-1] = (runs[-1][0], max(runs[-1][1], end))
    else:
        runs.append((start, end))


def _gaps(runs: Ranges, start: int, end: int) -> list[_Gap]:
    gaps: list[_Gap] = []
    at = start
    for run_start, run_end in runs:
        if run_start > at:
            gaps.append(_Gap(at, min(run_start, end), False))
        at = max(at, run_end)
    if at < end:
        gaps.append(_Gap(at, end, True))
    return gaps


def _clip(runs: Ranges, start: int, end: int) -> Ranges:
    return [(max(s, start), min(e, end)) for s, e in runs if e > start and s < end]


def _rms(pcm: Audio) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0


class Windower:
    """Audio pieces in, transcription windows cut at pauses out.

    Once min_ms is pending, a window is cut in the middle of the pause (>= pause_ms) nearest target_ms,
    longer pauses counting as nearer, as soon as no later pause could be better; a pause of 2 s is cut
    at once. Reaching max_ms forces a cut: the longest short pause of the last 5 s, else the quietest
    30 ms if under half the median energy, else max_ms itself. The VAD runs once over each new 512 ms
    (with 512 ms before it), so windows do not depend on how the audio was split into pieces, and
    pending stays below max_ms.
    """

    def __init__(self, detector: SpeechDetector, *, sample_rate: int = 16000, min_ms: float = 10_000,
                 target_ms: float = 20_000, max_ms: float = 30_000, pause_ms: float = 300) -> None:
        if not 0 < min_ms <= target_ms <= max_ms:
            raise ValueError(f"need 0 < min_ms <= target_ms <= max_ms, got {min_ms}, {target_ms}, {max_ms}")
        if pause_ms <= 0:
            raise ValueError(f"pause_ms must be positive, got {pause_ms}")
        self._detector = detector
        self._rate = sample_rate
        self._min, self._target, self._max = self._n(min_ms), self._n(target_ms), self._n(max_ms)
        self._pause, self._long = self._n(pause_ms), self._n(_LONG_PAUSE_MS)
        self._block, self._context = self._n(_BLOCK_MS), self._n(_CONTEXT_MS)
        self._done_ms = 0.0
        self._reset()

    def _reset(self) -> None:
        self._live = False  # a segment (continuous stretch of the timeline) is open
        self._origin_ms = 0.0  # timeline position of the segment's sample 0
        self._audio = _Samples()
        self._pos0 = 0  # first pending sample: where the last window ended
        self._analyzed = 0  # the VAD has seen the segment up to here
        self._runs: Ranges = []  # speech found, merged, none entirely before _pos0
        self._spans: list[tuple[int, int, int]] = []  # (start, end, seq) of added pieces

    def __repr__(self) -> str:
        return (f"<Windower pending={self.pending_ms:.0f}ms done={self._done_ms:.0f}ms "
                f"first_pending_seq={self.first_pending_seq} min/target/max={self._ms(self._min):.0f}/"
                f"{self._ms(self._target):.0f}/{self._ms(self._max):.0f}ms {self._detector!r}>")

    @property
    def pending_ms(self) -> float:
        """Audio held, not yet in a window."""
        return self._ms(self._audio.end - self._pos0)

    @property
    def done_ms(self) -> float:
        """Timeline position up to which windows were returned (never decreases)."""
        return self._done_ms

    @property
    def trailing_silence_ms(self) -> float:
        """Non-speech at the end of the audio the VAD has seen (0 while speech reaches it or nothing is pending)."""
        if not self._live or self._analyzed <= self._pos0:
            return 0.0
        last_speech = max((end for _, end in self._audible(self._analyzed)), default=self._pos0)
        return self._ms(self._analyzed - max(last_speech, self._pos0))

    @property
    def first_pending_seq(self) -> int | None:
        """Lowest seq with audio still pending."""
        return min((seq for _, _, seq in self._spans), default=None)

    def add(self, pcm: Audio, start_ms: float, seq: int) -> list[Window]:
        """Append a piece of decoded audio at its timeline position; return the windows complete now."""
        audio = _as_audio(pcm)
        windows: list[Window] = []
        if self._live and abs(start_ms - self._time(self._audio.end)) > _JITTER_MS:
            windows += self.flush()
        if not self._live:
            self._live, self._origin_ms = True, start_ms
        self._append(audio, seq)
        return windows + self._advance()

    def flush(self) -> list[Window]:
        """Everything pending becomes a window (recording paused or stopped, or the wait ran out)."""
        if not self._live:
            return []
        end = self._audio.end
        if self._analyzed < end:
            self._analyze(end)
        windows = [self._emit(end, final=True)] if end > self._pos0 or self._spans else []
        self._reset()
        return windows

    def settle(self) -> list[Window]:
        """No more audio for now: cut at the best complete pause already seen once min_ms is pending.

        For live latency: `add()` waits for a pause nearer target_ms that later audio might bring; a caller
        whose held audio has waited long enough takes the best pause it has instead of waiting on.
        """
        windows: list[Window] = []
        while self._live and self._analyzed - self._pos0 >= self._min:
            gaps = _gaps(self._audible(self._analyzed), self._pos0, self._analyzed)
            options = [(self._cost(gap, cut), cut) for gap in gaps
                       if gap.length >= self._pause and not gap.open and (cut := self._place(gap)) is not None]
            if not options:
                break
            windows.append(self._emit(min(options)[1]))
        return windows

    def open_audio(self) -> Window | None:
        """A copy of the audio held for the window still open (from its first speech, less a pad, to the end of
        what came), for a live caption; None without speech in it so far. Changes nothing."""
        if not self._live or self._audio.end <= self._pos0:
            return None
        runs = _clip(self._audible(self._analyzed + 1), self._pos0, self._audio.end)
        if not runs:
            return None
        low, high = max(self._pos0, runs[0][0] - self._n(_PAD_MS)), self._audio.end
        seqs = [seq for _, _, seq in self._spans]
        return Window(pcm=self._audio.view(low, high).copy(), start_ms=self._time(self._pos0), end_ms=self._time(high),
                      from_seq=min(seqs), to_seq=max(seqs), speech_ms=self._ms(sum(e - s for s, e in runs)),
                      through_ms=self._time(self._pos0))

    def _n(self, ms: float) -> int:
        return round(ms * self._rate / 1000)

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self._rate

    def _time(self, index: int) -> float:
        return self._origin_ms + self._ms(index)

    def _append(self, audio: Audio, seq: int) -> None:
        start = self._audio.end
        self._audio.append(audio)
        if self._spans and self._spans[-1][2] == seq and self._spans[-1][1] == start:
            start = self._spans.pop()[0]
        self._spans.append((start, self._audio.end, seq))

    def _advance(self) -> list[Window]:
        windows = []
        # Steps depend only on the audio, never on how it was split into pieces, so the windows do not either.
        while (step := min(self._analyzed + self._block, self._pos0 + self._max)) <= self._audio.end:
            self._analyze(step)
            while (cut := self._due_cut()) is not None:
                windows.append(self._emit(cut))
        return windows

    def _analyze(self, end: int) -> None:
        begin = max(self._audio.start, self._analyzed - self._context)
        for start, stop in sorted(self._detector.speech(self._audio.view(begin, end))):
            start, stop = max(begin + start, self._analyzed), min(begin + stop, end)
            if start < stop:
                _append_run(self._runs, start, stop)
        self._analyzed = end

    def _audible(self, horizon: int) -> Ranges:
        """Speech runs without the short ones that are over (one reaching the horizon may still grow)."""
        shortest = self._n(_MIN_SPEECH_MS)
        return [(s, e) for s, e in self._runs if e - s >= shortest or e >= horizon]

    def _due_cut(self) -> int | None:
        if self._analyzed - self._pos0 < self._min:
            return None
        gaps = _gaps(self._audible(self._analyzed), self._pos0, self._analyzed)
        options = [(self._cost(gap, cut), cut, gap) for gap in gaps
                   if gap.length >= self._pause and (cut := self._place(gap)) is not None]
        best = min(options, key=lambda option: option[:2], default=None)
        if self._analyzed - self._pos0 >= self._max:
            return best[1] if best else self._forced_cut(gaps)
        if best is not None and any(gap.length >= self._long for _, _, gap in options):
            return best[1]
        closed = min((option[:2] for option in options if not option[2].open), default=None)
        if closed is not None and closed[0] <= self._best_possible_later(gaps):
            return closed[1]
        return None

    def _place(self, gap: _Gap) -> int | None:
        """The cut inside a pause: its middle, moved as little as needed to keep the window within bounds."""
        half = self._pause // 2
        low = max(gap.start + half, self._pos0 + self._min)
        high = min(gap.end - half, self._pos0 + self._max)
        return min(max(gap.mid, low), high) if low <= high else None

    def _cost(self, gap: _Gap, cut: int) -> int:
        return abs(cut - self._pos0 - self._target) - min(gap.length, self._long)

    def _best_possible_later(self, gaps: list[_Gap]) -> int:
        """A lower bound on the cost of any pause not yet complete (the open one or one still to come)."""
        begins = gaps[-1].start if gaps and gaps[-1].open else self._analyzed
        earliest = max(begins + self._pause // 2, self._pos0 + self._min)
        return max(0, earliest - self._pos0 - self._target) - self._long

    def _forced_cut(self, gaps: list[_Gap]) -> int:
        """No pause fits: the longest short one near max_ms, else an energy dip, else max_ms itself."""
        high = self._pos0 + self._max
        low = max(self._pos0 + self._min, high - self._n(_LOOKBACK_MS))
        short = [gap for gap in gaps if low <= gap.mid <= high]
        if short:
            return max(short, key=lambda gap: (gap.length, -_rms(self._audio.view(gap.start, gap.end)))).mid
        dip = self._energy_dip(low, high)
        return high if dip is None else dip

    def _energy_dip(self, low: int, high: int) -> int | None:
        frame = self._rate // 100
        count = (high - low) // frame
        if count < 3:
            return None
        frames = self._audio.view(low, low + count * frame).reshape(count, frame)
        energy = np.convolve(np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)), np.ones(3) / 3, "valid")
        quietest = int(np.argmin(energy))
        if energy[quietest] >= _DIP_RATIO * float(np.median(energy)):
            return None
        return low + (quietest + 1) * frame + frame // 2

    def _emit(self, cut: int, final: bool = False) -> Window:
        horizon = self._analyzed + 1 if final else self._analyzed
        runs = _clip(self._audible(horizon), self._pos0, cut)
        pad = self._n(_PAD_MS)
        low, high = (max(self._pos0, runs[0][0] - pad), min(cut, runs[-1][1] + pad)) if runs else (self._pos0,) * 2
        seqs = [seq for start, _, seq in self._spans if final or start < cut]
        window = Window(pcm=self._audio.view(low, high).copy(), start_ms=self._time(low), end_ms=self._time(high),
                        from_seq=min(seqs), to_seq=max(seqs), speech_ms=self._ms(sum(e - s for s, e in runs)),
                        through_ms=self._time(cut))
        self._done_ms = max(self._done_ms, window.through_ms)
        self._forget_before(cut)
        return window

    def _forget_before(self, cut: int) -> None:
        self._pos0 = cut
        self._runs = [run for run in self._runs if run[1] > cut]
        self._spans = [span for span in self._spans if span[1] > cut or span[0] >= cut]
        self._audio.drop_before(min(cut, self._analyzed - self._context))
