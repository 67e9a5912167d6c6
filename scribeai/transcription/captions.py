"""Live captions: hypotheses of a session's open window, with a prefix that two of them agreed on.

The final window transcription is the transcript; captions are what a person watching sees before it. Each
update re-decodes the open window's audio (unpadded, so a few seconds cost a fraction of a 30 s window),
forced to begin with the words already confirmed, and confirms the words on which it agrees with the update
before it (local agreement of two hypotheses). Confirmed words are never taken back until the final segment
replaces the caption. Pure, but for the clock the budget reads.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scribeai.transcription.engines import HALLUCINATIONS

BUDGET_HORIZON_S = 10.0  # the decode time of captions is summed over this much of the recent past
STEP_MS = 700.0  # a caption is decoded again once the open window's audio grew by this much
MIN_AUDIO_MS = 1000.0  # less than this is too little for whisper to say anything sensible
VIEWER_TTL_S = 30.0  # a serve node says "someone here watches this session's captions" for this long, renewed
VIEWER_RENEW_S = 10.0
LOOP_WORDS = 4  # a caption's words from the first repeated run of this many on are a loop, not speech
REVISIONS_PER_MS = 10  # a caption's revision is at least this times its endMs - startMs (see Caption.update)


def _key(word: str) -> str:
    """How two hypotheses' words are compared: case and punctuation do not count."""
    return re.sub(r"[^\w']+", "", word.lower())


def agreed(stable: list[str], previous: list[str], hypothesis: list[str]) -> list[str]:
    """The confirmed words after a new hypothesis: the old ones, plus the words after them on which the new
    hypothesis and the one before it agree, from the first on (local agreement of two hypotheses)."""
    confirmed = list(stable)
    for before, now in zip(previous[len(stable):], hypothesis[len(stable):]):
        if not _key(now) or _key(before) != _key(now):
            break
        confirmed.append(now)
    return confirmed


@dataclass
class Caption:
    """The caption of one open window (identified by where its audio starts on the timeline).

    Its revision comes from the audio it covers, not from a count of this object's updates: a process that takes
    the stream over mid-window (a restart, another node) has no count, and viewers drop revisions not above the
    last they showed. A caption that covers more of the window has a higher revision, whoever decoded it."""

    start_ms: float
    revision: int = 0
    stable: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    audio_ms: float = 0.0  # how much of the window's audio the last update decoded
    text: str = ""

    def update(self, hypothesis: str, audio_ms: float) -> bool:
        """Take a new hypothesis (which begins with the confirmed words); False when nothing a viewer sees changed."""
        heard = hypothesis.split()
        if heard[:len(self.stable)] != self.stable:  # the decoder was forced to start with them; keep them anyway
            heard = self.stable + heard[len(self.stable):]
        heard = heard[:_loop_start(heard, len(self.stable))]
        if _hallucinated(heard[len(self.stable):]):
            heard = list(self.stable)
        self.stable = agreed(self.stable, self.last, heard)
        self.last = heard
        self.audio_ms = audio_ms
        text = " ".join(heard)
        if text == self.text and self.revision:
            return False
        self.text = text
        # from the wire's endMs - startMs; + 1: an update of the same audio (the pipeline waits for STEP_MS more) grows
        covered = round(self.start_ms + audio_ms) - round(self.start_ms)
        self.revision = max(self.revision + 1, covered * REVISIONS_PER_MS)
        return True

    @property
    def stable_chars(self) -> int:
        """Characters of `text` that are confirmed (the caption's first words, and the space after them)."""
        return len(" ".join(self.stable))

    def wire(self, session_id: str, end_ms: float, from_seq: int, to_seq: int) -> dict[str, Any]:
        return {"sessionId": session_id, "startMs": round(self.start_ms), "endMs": round(end_ms), "fromSeq": from_seq,
                "toSeq": to_seq, "text": self.text, "stable": self.stable_chars, "revision": self.revision}


def _loop_start(heard: list[str], keep: int) -> int:
    """Where whisper starts saying again what it said (LOOP_WORDS words repeated), not before `keep` words."""
    keys = [_key(w) for w in heard]
    seen: set[tuple[str, ...]] = set()
    for at in range(len(keys) - LOOP_WORDS + 1):
        gram = tuple(keys[at:at + LOOP_WORDS])
        if gram in seen and at >= keep:
            return at
        seen.add(gram)
    return len(heard)


def _hallucinated(tail: list[str]) -> bool:
    """Whisper's inventions over silence at the end of a caption ("thank you", "you") are not shown."""
    said = " ".join(_key(w) for w in tail).strip()
    return bool(said) and said in HALLUCINATIONS


class Budget:
    """Seconds of caption decoding per second of wall time, over the last BUDGET_HORIZON_S: captions stop while
    they are over it, so that a crowd of viewers cannot take the CPU the final transcripts need."""

    def __init__(self, share: float, clock: Any = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._spent: deque[tuple[float, float]] = deque()  # (when it ended, seconds)

    def __repr__(self) -> str:
        return f"Budget({self.used():.2f}/{self.share:.2f} s/s)"

    def used(self) -> float:
        now = self._clock()
        while self._spent and self._spent[0][0] < now - BUDGET_HORIZON_S:
            self._spent.popleft()
        return sum(seconds for _, seconds in self._spent) / BUDGET_HORIZON_S

    def allows(self) -> bool:
        return self.share > 0 and self.used() < self.share

    def spend(self, seconds: float) -> None:
        self._spent.append((self._clock(), seconds))
