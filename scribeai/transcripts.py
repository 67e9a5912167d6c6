"""Transcript exports (pure): plain text, SubRip and WebVTT from ordered segments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "md": "text/markdown; charset=utf-8",  # over REST with the session's summary ahead of it (scribeai.summaries)
}


def _clock(ms: int, separator: str) -> str:
    ms = max(int(ms), 0)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def clock(ms: int) -> str:
    """hh:mm:ss on the recording's timeline (the txt and md exports' times, a summary item's, a search result's)."""
    return _clock(ms, ".")[:-4]


def _cues(segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # Cues must not run backwards or overlap for players: clamp each start to the previous end.
    cues, last_end = [], 0
    for segment in segments:
        text = " ".join(str(segment["text"]).split())
        if not text:
            continue
        start = max(int(segment["startMs"]), last_end)
        end = max(int(segment["endMs"]), start + 1)
        cues.append({"start": start, "end": end, "text": text})
        last_end = end
    return cues


def markdown_text(text: str) -> str:
    """Text that Markdown shows as it is: every character it could read as markup escaped."""
    return "".join("\\" + ch if ch in "\\`*_[]<>|~#&!" else ch for ch in text)


def render(segments: Sequence[dict[str, Any]], fmt: str) -> str:
    """Segments in seq order (wire shape) as `txt`, `srt`, `vtt` or `md` (a list, times first)."""
    cues = _cues(segments)
    if fmt == "txt":
        return "".join(f"[{clock(c['start'])}] {c['text']}\n" for c in cues)
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{_clock(c['start'], ',')} --> {_clock(c['end'], ',')}\n{c['text']}\n" for i, c in enumerate(cues, 1)
        )
    if fmt == "md":
        return "".join(f"- [{clock(c['start'])}] {markdown_text(c['text'])}\n" for c in cues)
    if fmt == "vtt":
        body = "\n".join(f"{_clock(c['start'], '.')} --> {_clock(c['end'], '.')}\n{c['text']}\n" for c in cues)
        return "WEBVTT\n\n" + body
    raise ValueError(f"unknown transcript format {fmt!r}")
