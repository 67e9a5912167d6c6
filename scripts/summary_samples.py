#!/usr/bin/env python3
"""Write docs/summaries.md: the extractive summaries of two long generated meetings (tests/meetings.py), with
their key points, action items and keywords, so that a reader can judge them.

    .venv/bin/python scripts/summary_samples.py            # writes docs/summaries.md
    .venv/bin/python scripts/summary_samples.py --out -    # prints it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scribeai.summarize import RegexTokenizer, extractive  # noqa: E402
from tests.meetings import MEETINGS, as_segments, meeting_lines  # noqa: E402

SAMPLES = (("product-launch", 10_000, "Product launch planning, about an hour (10,000 words)"),
           ("engineering-sync", 3_000, "Engineering sync, about 20 minutes (3,000 words)"))


def clock(ms: int | None) -> str:
    if ms is None:
        return "--:--"
    minutes, seconds = divmod(ms // 1000, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def sample(name: str, words: int, title: str) -> str:
    lines = meeting_lines(MEETINGS[name], words)
    segments = as_segments([text for text, _ in lines])
    digest = extractive(segments)
    kinds = {sentence: kind for text, kind in lines for sentence in RegexTokenizer().to_sentences(text)}
    planted = {text for text, kind in lines if kind == "commitment"}
    found = {p.text for p in digest.action_items}
    out = [f"## {title}", "",
           f"Generated with `meeting({name!r}, {words})`: {digest.words} words in {len(segments)} segments, "
           f"{clock(segments[-1]['endMs'])} long. Agenda: {', '.join(t.name for t in MEETINGS[name])}. Its first minute:", ""]
    out += ["> " + " ".join(s["text"] for s in segments[:6]), ""]
    out += ["**Summary** (`text`):", "", digest.text, "", "**Key points** (`keyPoints`):", ""]
    out += [f"- `{clock(p.start_ms)}` {p.text}" for p in digest.key_points] + [""]
    out += [f"**Action items** (`actionItems`, {len(digest.action_items)}):", ""]
    out += [f"- `{clock(p.start_ms)}` {p.text}" for p in digest.action_items] + [""]
    out += [f"**Keywords**: {', '.join(digest.keywords)}", ""]
    misses = sorted(planted - found)
    wrong = sorted(t for t in found if kinds.get(t) != "commitment")
    out += [f"Against what the generator planted: {len(planted & found)} of the {len(planted)} distinct commitments "
            f"found, {len(wrong)} sentences taken for one that are not"
            + (f"; missed: {'; '.join(misses[:5])}" if misses else "") + ".", ""]
    return "\n".join(out)


def document() -> str:
    head = [
        "# What the summaries say",
        "",
        "The extractive summaries (no model; see [protocol.md](protocol.md#summaries)) of two long meetings, as",
        "`GET /api/sessions/{id}/summary` would serve them, for a reader to judge. The meetings are generated",
        "(`tests/meetings.py`: agenda topics talked through by named people, with facts, small talk, questions,",
        "decisions and commitments with deadlines), so the commitments planted in them are known and counted",
        "below. Times are where each sentence was said in the recording (the links of the demo page seek there).",
        "",
        "Made by `.venv/bin/python scripts/summary_samples.py` (the same text each run).",
        "",
        "What to expect from the extractive method: its summary is sentences picked from the meeting, not",
        "written for it; it prefers what is said often and in many ways, so a topic discussed at length",
        "outweighs a short decision; action items are found by the way they are said (a person and *will*,",
        "*needs to*, *let's*, a deadline, a request), literally and in English only. A model set up with",
        "`SUMMARY_BASE_URL` writes the summary, key points and action items itself.",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(sample(*s) for s in SAMPLES).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "summaries.md"), help="file to write, or - for stdout")
    args = parser.parse_args()
    text = document()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
