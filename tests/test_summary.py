"""Session summaries: the extractive summary (sumy LexRank with a tokenizer that needs no NLTK data), action
items with their times, a model behind a real fake chat endpoint (pieces, truncation, slow, failing, refusing),
the REST routes, the `session-summary` event on both namespaces, downloads, and `scribeai summary`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import socketio

from scribeai.models import TranscriptSegment
from scribeai.settings import SettingError, Settings
from scribeai.summarize import (RegexTokenizer, Sentence, extractive, is_action_item, keywords, lexrank_scores,
                                sentences_of)
from scribeai.summary_llm import ChatSummarizer, SummaryFailed, parse_answer
from tests.conftest import RunningServer, ServerFactory, chunk, token_for
from tests.fake_openai import FakeTranscriptionAPI
from tests.fake_chat import FakeChatAPI
from tests.meetings import MEETINGS, SHORT_MEETINGS, as_segments, meeting_lines
from tests.speech import MEETING

ACTIONS = {  # the MEETING sentences that commit someone to something
    "Please remember to send the slides to everyone before the meeting starts tomorrow morning.",
    "We agreed that the marketing team will own the launch plan for the new product.",
    "I think we should postpone the decision until we hear back from the legal department.",
    "Sarah will follow up with the vendor about the delayed shipment.",
    "Could you share the notes from yesterday's call with the whole group?",
    "Let's schedule a short meeting next week to check on the progress.",
    "We should write down the open questions and assign an owner to each one.",
    "Please update the project board so that it reflects the current status.",
}


def meeting_segments(rounds: int = 1) -> list[dict[str, Any]]:
    """MEETING's sentences two to a segment, 9 s a segment, `rounds` times over."""
    lines = MEETING * rounds
    return [{"text": " ".join(lines[i:i + 2]), "startMs": i // 2 * 9000, "endMs": i // 2 * 9000 + 8500}
            for i in range(0, len(lines), 2)]


# -- extractive (pure) -------------------------------------------------------------------

def test_sentences_keep_the_time_they_were_said() -> None:
    segments = [{"text": "Dr. Smith opened the meeting. We will ship the", "startMs": 1000, "endMs": 5000},
                {"text": "report by Friday. Thanks!", "startMs": 6000, "endMs": 8000}]
    assert sentences_of(segments) == [
        Sentence("Dr. Smith opened the meeting.", 1000, 3521),  # 29 of the segment's 46 characters in its 4 s
        Sentence("We will ship the report by Friday.", 3608, 7360),
        Sentence("Thanks!", 7440, 8000)]
    # Speech without punctuation is cut into pieces a reader (and LexRank) can take.
    unpunctuated = sentences_of([{"text": " ".join(["word"] * 130), "startMs": 0, "endMs": 13000}])
    assert [len(s.text.split()) for s in unpunctuated] == [40, 40, 50]


def test_action_items_are_commitments_and_requests() -> None:
    assert {s for s in MEETING if is_action_item(s)} == ACTIONS
    for text in ["Maria will send the budget to finance by Friday.", "We'll follow up with legal next week.",
                 "I'm going to draft the announcement tonight.", "Tom needs to fix the login bug before Monday.",
                 "Can you book the room for Thursday?", "Action item: rewrite the onboarding guide."]:
        assert is_action_item(text), text
    for text in ["The new office in Berlin will open in June.", "It will rain tomorrow afternoon probably.",
                 "Will we ever ship this feature?", "We did send the slides yesterday.", "Okay, thanks."]:
        assert not is_action_item(text), text


def test_extractive_summary_needs_no_nltk_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])  # nothing NLTK could load or download is reachable
    with pytest.raises(LookupError):
        nltk.data.find("tokenizers/punkt_tab/english/")
    digest = extractive(meeting_segments(2))
    assert digest.method == "extractive" and digest.reason is None
    assert digest.words == 2 * sum(len(RegexTokenizer().to_words(s)) for s in MEETING)
    assert 3 <= len(digest.text.split(". ")) <= 7 and all(p.text in MEETING for p in digest.key_points)
    assert not any(p.text.endswith("?") for p in digest.key_points)  # questions are no key points
    assert {a.text for a in digest.action_items} == ACTIONS  # each once, though said twice
    sarah = next(a for a in digest.action_items if a.text.startswith("Sarah"))
    assert (sarah.start_ms, sarah.end_ms) == (27000, 31059)  # MEETING[6] opens the fourth segment (27 s to 35.5 s), about half of it
    assert len(digest.keywords) == 10 and len(set(digest.keywords)) == 10


@pytest.mark.parametrize("name", sorted(MEETINGS))
def test_a_long_generated_meeting(name: str) -> None:
    lines = meeting_lines(MEETINGS[name], 3000)
    assert {text for text, kind in lines if is_action_item(text)} == {text for text, kind in lines if kind == "commitment"}
    digest = extractive(as_segments([text for text, _ in lines]))
    kinds = {sentence: kind for text, kind in lines for sentence in RegexTokenizer().to_sentences(text)}
    assert [kinds[p.text] for p in digest.action_items] == ["commitment"] * len(digest.action_items)
    assert len(digest.action_items) == len({text for text, kind in lines if kind == "commitment"})  # none said twice here
    assert 3 <= len(digest.key_points) <= 8 and all(kinds[p.text] in ("fact", "decision") for p in digest.key_points)
    starts = [p.start_ms for p in digest.key_points]
    assert starts == sorted(starts) and starts[-1] > 0.6 * as_segments([t for t, _ in lines])[-1]["endMs"]  # the whole meeting
    topics = [t.name.removeprefix("the ") for t in MEETINGS[name]]
    named = [topic for topic in topics if any(word in " ".join(digest.keywords) for word in topic.split())]
    assert len(named) > len(topics) / 2, (named, digest.keywords)  # most of the agenda is in the keywords


def test_keywords_are_the_subject_not_the_fillers() -> None:
    texts = ["Yeah so the launch date is Friday, okay.", "The launch date moved, you know.",
             "Um the launch date and the pricing page.", "The pricing page needs new copy.", "Okay yeah thanks."]
    assert keywords(texts, 3) == ["launch date", "pricing page"]  # "okay", "yeah" and once-said common words never


GENERIC = {"finish", "rest", "need", "think", "look", "looked", "work", "worked", "people", "start", "make", "going",
           "meeting", "done", "want", "take", "keep"}  # said in every meeting: never what one is about


@pytest.mark.parametrize("name", sorted(SHORT_MEETINGS))
def test_a_short_meetings_keywords_name_its_subject(name: str) -> None:
    short = SHORT_MEETINGS[name]
    found = extractive(as_segments(list(short.lines))).keywords
    words = {word for phrase in found for word in phrase.split()}
    assert short.subject <= words and not words & GENERIC, found  # its subject (even said once: "Stripe"), no verbs
    assert len(found) == 10


def test_keywords_weigh_a_word_by_how_rare_it_is_in_english() -> None:
    # "people" is said more often than "invoices" and "webhook", but any meeting says it: it comes last.
    texts = ["People keep asking about the invoices.", "The invoices are wrong for some people.",
             "People said the webhook failed.", "Three people saw duplicate invoices.", "The webhook retries."]
    assert keywords(texts) == ["invoices", "webhook", "people"]


def test_keywords_are_nouns_not_verbs() -> None:
    # "finish" said three times, as a verb each time, says nothing about the meeting: no keyword at all.
    assert keywords(["We need to finish this today.", "Let's finish it and then look at the rest.",
                     "I think we can finish it, then we look again."]) == []
    # The same word used as a noun is one.
    assert keywords(["The finish on the door is too shiny.", "A dark finish costs more.",
                     "Which finish did the client pick?"]) == ["finish"]


def test_a_sentence_said_again_is_not_more_of_the_subject() -> None:
    # A line repeated (a transcription loop, a speaker read twice) counts once; topics said in different ways win.
    texts = (["The outage on Tuesday lasted forty minutes."] * 4
             + ["The database upgrade is tested in staging.", "We still plan the database upgrade for May.",
                "Who owns the database upgrade?"])
    assert keywords(texts) == ["database upgrade", "outage", "staging"]


def test_fast_lexrank_equals_sumys_own() -> None:
    from sumy.nlp.stemmers import Stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.utils import get_stop_words

    from scribeai.summarize import _sumy

    fast, tokenizer, _ = _sumy()
    stock = LexRankSummarizer(Stemmer("english"))
    stock.stop_words = get_stop_words("english")
    words = [fast._to_words_set(type("S", (), {"words": tokenizer.to_words(s)})()) for s in MEETING]
    tf = stock._compute_tf(words)
    assert fast._compute_idf(words) == pytest.approx(stock._compute_idf(words))
    idf = stock._compute_idf(words)
    assert np.allclose(fast._create_matrix(words, 0.1, tf, idf), stock._create_matrix(words, 0.1, tf, idf))
    scores = lexrank_scores(MEETING)
    assert len(scores) == len(MEETING) and len(set(np.round(scores, 6))) > 1


# -- a model -------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "message"), [
    ({"SUMMARY_BASE_URL": "localhost:11434"},
     "setting SUMMARY_BASE_URL='localhost:11434': expected empty, or an http:// or https:// URL"),
    ({"SUMMARY_BASE_URL": "http://127.0.0.1:11434"},
     "setting SUMMARY_MODEL='': expected a model name when SUMMARY_BASE_URL is set"),
    ({"SUMMARY_CONTEXT_TOKENS": "1023"}, "setting SUMMARY_CONTEXT_TOKENS=1023: expected 1024 to 262144"),
    ({"SUMMARY_CONTEXT_TOKENS": "262145"}, "setting SUMMARY_CONTEXT_TOKENS=262145: expected 1024 to 262144"),
    ({"SUMMARY_TIMEOUT_S": "0.5"}, "setting SUMMARY_TIMEOUT_S=0.5: expected 1 to 3600"),
    ({"SUMMARY_TIMEOUT_S": "3601"}, "setting SUMMARY_TIMEOUT_S=3601: expected 1 to 3600"),
])
def test_summary_settings_out_of_range_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_summary_settings_at_their_bounds() -> None:
    settings = Settings.from_env({"SUMMARY_BASE_URL": "http://127.0.0.1:11434/v1", "SUMMARY_MODEL": "llama3.2:3b",
                                  "SUMMARY_CONTEXT_TOKENS": "1024", "SUMMARY_TIMEOUT_S": "3600"})
    assert (settings.summary_base_url, settings.summary_model, settings.summary_context_tokens, settings.summary_timeout_s) == (
        "http://127.0.0.1:11434/v1", "llama3.2:3b", 1024, 3600.0)
    assert Settings.from_env({"SUMMARY_CONTEXT_TOKENS": "262144", "SUMMARY_TIMEOUT_S": "1"}).summary_base_url == ""


def timed_lines(count: int) -> list[Sentence]:
    return [Sentence(MEETING[i % len(MEETING)], i * 5000, i * 5000 + 4000) for i in range(count)]


@pytest.fixture
async def chat() -> Any:
    fakes: list[FakeChatAPI] = []

    async def make(**kwargs: Any) -> tuple[FakeChatAPI, str]:
        fake = FakeChatAPI(**kwargs)
        fakes.append(fake)
        return fake, await fake.start()
    yield make
    for fake in fakes:
        await fake.close()


async def test_a_long_transcript_goes_in_pieces_then_combined(chat: Any) -> None:
    fake, url = await chat()
    lines = timed_lines(120)
    notes = await ChatSummarizer(url + "/v1", "tiny-model", context_tokens=2048).summarize(lines)
    pieces = [p for p in fake.prompts if p.startswith("Transcript")]
    assert len(pieces) == 3 and all(len(p) <= (2048 - 850) * 3 + 80 for p in pieces)  # fits with room for the answer
    assert len(fake.prompts) == 4
    sent = [line for p in pieces for line in p.splitlines()[2:]]
    assert sent == [f"[{i * 5 // 60:02d}:{i * 5 % 60:02d}] {s.text}" for i, s in enumerate(lines)]  # each once, in order
    assert notes.summary.startswith("Combined ") and fake.models == ["tiny-model"] * len(fake.prompts)
    assert notes.action_items == [s.text for s in lines if " will " in s.text]  # nothing lost through the combining


async def test_a_prompt_cut_by_the_endpoint_is_sent_again_in_pieces_that_fit(chat: Any) -> None:
    fake, url = await chat(context_tokens=1500)  # the operator said 32k; the endpoint keeps 1,500 tokens, silently
    lines = timed_lines(100)
    notes = await ChatSummarizer(url, "m", context_tokens=32768).summarize(lines)
    assert len(fake.prompts[0]) > 1500 * 4 and fake.seen[0] != fake.prompts[0]  # the first try was cut...
    after = fake.prompts[1:]
    assert [p for p in after if p != fake.seen[fake.prompts.index(p, 1)]] == []  # ...none after it
    whole = "\n".join(p for p in after if p.startswith("Transcript"))
    assert all(f"] {s.text}" in whole for s in lines)
    assert notes.action_items == [s.text for s in lines if " will " in s.text]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"mode": "fail"}, "answered HTTP 500: {\"error\": {\"message\": \"model runner crashed\"}}"),
    ({"mode": "refuse"}, "the model refused: I'm sorry, but I can't help with summarising this conversation."),
    ({"mode": "refusal_field"}, "the model refused: This request violates the usage policy."),
    ({"mode": "cut"}, "the model's answer was cut at 600 tokens"),
    ({"delay_s": 3.0}, "did not answer within 1 s (SUMMARY_TIMEOUT_S)"),
])
async def test_an_endpoint_that_fails_says_why(chat: Any, kwargs: dict[str, Any], reason: str) -> None:
    fake, url = await chat(**kwargs)
    with pytest.raises(SummaryFailed) as caught:
        await ChatSummarizer(url, "m", timeout_s=1.0).summarize(timed_lines(5))
    assert caught.value.reason.endswith(reason) and len(fake.prompts) == 1


def test_the_answer_is_parsed_as_plain_text() -> None:
    notes = parse_answer("Here you go.\n**Summary:** The team met.\nIt went well.\n## KEY POINTS\n* Budget cut\n"
                         "2. Launch moved\x07\n### Action items:\n- None\n")
    assert (notes.summary, notes.key_points, notes.action_items) == (
        "Here you go. The team met. It went well.", ["Budget cut", "Launch moved"], [])


# -- the server ------------------------------------------------------------------------------

async def seeded(server: RunningServer, session_id: str, segments: list[dict[str, Any]], user: str = "alice") -> None:
    await rest(server, "POST", "/api/sessions", user, {"id": session_id, "title": "Weekly sync"}, expect=201)
    async with server.services.db.write() as s:
        for i, seg in enumerate(segments):
            s.add(TranscriptSegment(session_id=session_id, seq=i, from_seq=i, chunk_id=f"c{i}", start_ms=seg["startMs"],
                                    end_ms=seg["endMs"], text=seg["text"]))


async def rest(server: RunningServer, method: str, path: str, user: str, body: Any = None, expect: int = 200) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, server.url + path, json=body,
                                headers={"Authorization": f"Bearer {token_for(user)}"}) as response:
            assert response.status == expect, await response.text()
            if response.content_type == "application/json":
                return await response.json()
            return response.content_type, response.headers.get("Content-Disposition"), await response.text()


async def summary_events(client: socketio.AsyncSimpleClient, until: str = "ready") -> list[dict[str, Any]]:
    events = []
    while True:
        name, *args = await client.receive(timeout=30)
        if name == "session-summary":
            events.append(args[0])
            if args[0]["status"] == until:
                return events


async def test_a_completed_session_gets_its_summary_pushed_and_served(
        start_server: ServerFactory, connect: Any) -> None:
    server = await start_server()
    await seeded(server, "sync1", meeting_segments(2))
    assert (await rest(server, "GET", "/api/sessions/sync1/summary", "alice"))["status"] == "pending"  # still recording
    viewers = [await connect(server.url, namespace=ns) for ns in ("/", "/record")]
    for viewer in viewers:
        await viewer.call("joinSession", {"sessionId": "sync1"}, timeout=5)
    await rest(server, "POST", "/api/sessions/sync1/stop", "alice")
    pushed = [await summary_events(viewer) for viewer in viewers]
    assert [e["status"] for e in pushed[0]] == ["pending", "ready"] and pushed[0] == pushed[1]
    body = await rest(server, "GET", "/api/sessions/sync1/summary", "alice")
    assert body == pushed[0][-1]
    assert (body["sessionId"], body["method"], body["reason"], "model" in body) == ("sync1", "extractive", None, False)
    assert {a["text"] for a in body["actionItems"]} == ACTIONS and body["words"] > 400 and len(body["keywords"]) == 10
    assert {"text": MEETING[6], "startMs": 27000, "endMs": 31059} in body["actionItems"]
    assert body["generatedAt"] is not None and all(p["startMs"] is not None for p in body["keyPoints"])
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        scrape = await response.text()
    assert 'scribeai_summaries_total{outcome="extractive"} 1.0' in scrape
    assert "scribeai_summary_seconds_count 1.0" in scrape
    # Someone else's session does not exist for them, and nothing is made for them.
    await rest(server, "GET", "/api/sessions/sync1/summary", "mallory", expect=404)
    await rest(server, "POST", "/api/sessions/sync1/summary", "mallory", expect=404)
    await rest(server, "GET", "/api/sessions/sync1/summary?format=pdf", "alice", expect=400)
    # Downloads: the summary, then the transcript.
    kind, disposition, text = await rest(server, "GET", "/api/sessions/sync1/summary?format=txt", "alice")
    assert (kind, disposition) == ("text/plain", 'attachment; filename="sync1-summary.txt"')
    assert text.startswith("SUMMARY (extractive)\n\n" + body["text"] + "\n\nKEY POINTS\n")
    assert f"- [00:00:27] {MEETING[6]}\n" in text and text.index("ACTION ITEMS") < text.index("TRANSCRIPT\n")
    assert f"[00:00:27] {MEETING[6]} {MEETING[7]}\n" in text
    kind, disposition, md = await rest(server, "GET", "/api/sessions/sync1/summary?format=md", "alice")
    assert kind == "text/markdown" and md.startswith("# Weekly sync\n\n## Summary (extractive)\n")
    assert "- [00:00:27] Sarah will follow up with the vendor about the delayed shipment.\n" in md
    assert md.split("\n## Transcript\n\n")[1] == "".join(
        f"- [00:{s['startMs'] // 60000:02d}:{s['startMs'] // 1000 % 60:02d}] {s['text']}\n" for s in meeting_segments(2))
    # The transcript's own download in Markdown carries the summary too.
    kind, disposition, transcript_md = await rest(server, "GET", "/api/sessions/sync1/transcript?format=md", "alice")
    assert (kind, disposition, transcript_md) == ("text/markdown", 'attachment; filename="sync1.md"', md)
    # Made again on request: pending at once, the same summary again (nothing changed in the transcript).
    again = await rest(server, "POST", "/api/sessions/sync1/summary", "alice", expect=202)
    assert again["status"] == "pending"
    again_pushed = await summary_events(viewers[0])
    assert again_pushed[-1]["generatedAt"] != body["generatedAt"]
    assert {k: v for k, v in again_pushed[-1].items() if k != "generatedAt"} == {
        k: v for k, v in body.items() if k != "generatedAt"}
    # A segment that comes after the summary (a chunk resent late): the next GET makes it again.
    late = "Priya will book the venue for the offsite by Friday."
    async with server.services.db.write() as s:
        s.add(TranscriptSegment(session_id="sync1", seq=99, from_seq=99, chunk_id="late", start_ms=500_000,
                                end_ms=503_000, text=late))
    assert (await rest(server, "GET", "/api/sessions/sync1/summary", "alice"))["generatedAt"] == again_pushed[-1]["generatedAt"]
    renewed = await wait_ready(server, "sync1", after=again_pushed[-1]["generatedAt"])
    assert renewed["actionItems"][-1] == {"text": late, "startMs": 500_000, "endMs": 503_000}
    assert (await summary_events(viewers[0]))[-1] == renewed  # pushed to the room as well


async def test_a_model_summary_through_the_server_and_its_fallback(
        start_server: ServerFactory, chat: Any, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the model's path is the same on both databases (the extractive test runs on both)")
    fake, url = await chat()
    server = await start_server(summary_base_url=url, summary_model="llama3.2:1b")
    await seeded(server, "m1", meeting_segments())
    await rest(server, "POST", "/api/sessions/m1/stop", "alice")
    body = await wait_ready(server, "m1")
    assert (body["method"], body["model"], body["reason"]) == ("llm", "llama3.2:1b", None)
    assert body["text"] == f"This part has {len(MEETING)} lines."
    assert body["keyPoints"] == [{"text": MEETING[0], "startMs": 0, "endMs": 4080}]  # placed by the sentence it came from
    assert [a["text"] for a in body["actionItems"]] == [s for s in MEETING if " will " in s]
    assert body["actionItems"][1] == {"text": MEETING[6], "startMs": 27000, "endMs": 31059}
    # The model's markup stays text: verbatim in JSON, escaped in Markdown.
    fake.mode = "markup"
    await rest(server, "POST", "/api/sessions/m1/summary", "alice", expect=202)
    body = await wait_ready(server, "m1", after=body["generatedAt"])
    assert body["text"] == "<script>alert('x')</script> **Bold** [link](http://evil.example)"
    assert body["keyPoints"] == [{"text": "<img src=x onerror=alert(1)>", "startMs": None, "endMs": None}]
    _, _, md = await rest(server, "GET", "/api/sessions/m1/summary?format=md", "alice")
    assert "\\<script\\>alert('x')\\</script\\> \\*\\*Bold\\*\\* \\[link\\](http://evil.example)" in md
    assert "- \\<img src=x onerror=alert(1)\\>" in md
    # A failing endpoint: the extractive summary, with the reason.
    fake.mode = "fail"
    await rest(server, "POST", "/api/sessions/m1/summary", "alice", expect=202)
    body = await wait_ready(server, "m1", after=body["generatedAt"])
    assert (body["method"], "model" in body) == ("extractive", False)
    assert body["reason"].startswith("the model's summary failed: ") and "HTTP 500" in body["reason"]
    outcomes = server.services.metrics.registry.get_sample_value
    assert [outcomes("scribeai_summaries_total", {"outcome": o}) for o in ("llm", "fallback", "extractive")] == [2.0, 1.0, None]
    assert {a["text"] for a in body["actionItems"]} == ACTIONS


class MeetingTranscriber(FakeTranscriptionAPI):
    """The fake transcription API, hearing one MEETING line (or pair) per upload, in order."""

    lines: tuple[str, ...] = (f"{MEETING[0]} {MEETING[1]}", MEETING[6], MEETING[11])

    def text_for(self, audio: bytes) -> str:  # type: ignore[override]
        return self.lines[(len(self.requests) - 1) % len(self.lines)]  # the upload being answered


async def test_recorded_audio_to_summary_through_the_pipeline(start_server: ServerFactory, connect: Any,
                                                              backend: str) -> None:
    """Chunks in, transcribed (the paid API faked), stopped: the pipeline's completion makes the summary."""
    if backend != "sqlite":
        pytest.skip("the completion hook is the same on both databases (the REST stop test runs on both)")
    api = MeetingTranscriber()
    try:
        server = await start_server(transcriber="openai", openai_base_url=await api.start(), openai_api_key="k")
        recorder = await connect(server.url, namespace="/record")
        await recorder.call("joinSession", {"sessionId": "rec"}, timeout=5)
        hello = (Path(__file__).parent / "fixtures" / "audio" / "speech_hello.wav").read_bytes()
        for seq in range(3):
            await recorder.call("audio-chunk", chunk("rec", seq, hello, mimeType="audio/wav"), timeout=5)
        await recorder.call("stopSession", {"sessionId": "rec", "lastSeq": 2}, timeout=5)
        body = (await summary_events(recorder))[-1]
        segments = await server.services.pipeline.segments_after("rec", None)
        assert [s["text"] for s in segments] == list(MeetingTranscriber.lines)
        said = {s["text"]: (s["startMs"], s["endMs"]) for s in segments}
        first = said[MeetingTranscriber.lines[0]]
        assert [a["text"] for a in body["actionItems"]] == [MEETING[1], MEETING[6], MEETING[11]]
        # MEETING[1] is the second half of the first segment; the others are segments of their own.
        assert first[0] < body["actionItems"][0]["startMs"] < first[1] == body["actionItems"][0]["endMs"]
        assert body["actionItems"][1:] == [
            {"text": MEETING[6], "startMs": said[MEETING[6]][0], "endMs": said[MEETING[6]][1]},
            {"text": MEETING[11], "startMs": said[MEETING[11]][0], "endMs": said[MEETING[11]][1]}]
        assert said[MEETING[11]][0] >= 30000  # the third chunk's audio, 30 s into the recording
        assert body["words"] == sum(len(RegexTokenizer().to_words(s["text"])) for s in segments)
    finally:
        await api.close()


async def test_a_summary_cut_short_by_a_stop_is_made_again_on_the_next_get(
        start_server: ServerFactory, chat: Any, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the claim is one UPDATE on both databases")
    from scribeai.models import SessionSummary
    from scribeai.summaries import summaries_key

    fake, url = await chat(delay_s=2.0)
    server = await start_server(summary_base_url=url, summary_model="m")
    await seeded(server, "cut", meeting_segments())
    await rest(server, "POST", "/api/sessions/cut/stop", "alice")
    while not fake.prompts:  # the model is at work
        await asyncio.sleep(0.02)
    await server.app[summaries_key].stop()  # what a graceful stop does
    async with server.services.db.read() as s:
        row = await s.get(SessionSummary, "cut")
    assert row is not None and (row.status, row.claimed_until, row.generated_at) == ("pending", None, None)
    again = await start_server(same_database_as=server, summary_base_url=url, summary_model="m")  # the restarted server
    assert (await rest(again, "GET", "/api/sessions/cut/summary", "alice"))["status"] == "pending"
    body = await wait_ready(again, "cut")  # that GET started it again (a claim of a live process would wait)
    assert (body["method"], len(fake.prompts)) == ("llm", 2)
    assert (await rest(server, "GET", "/api/sessions/cut/summary", "alice")) == body  # the stopped one starts nothing


async def wait_ready(server: RunningServer, session_id: str, after: str | None = None) -> dict[str, Any]:
    for _ in range(300):
        body = await rest(server, "GET", f"/api/sessions/{session_id}/summary", "alice")
        if body["status"] == "ready" and body["generatedAt"] != after:
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no new summary of {session_id}: {body}")


async def test_an_empty_transcript_and_a_missing_session(start_server: ServerFactory, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("no database-specific path")
    server = await start_server()
    await seeded(server, "quiet", [])
    await rest(server, "POST", "/api/sessions/quiet/stop", "alice")
    body = await wait_ready(server, "quiet")
    assert (body["text"], body["keyPoints"], body["actionItems"], body["words"], body["reason"]) == (
        "", [], [], 0, "the transcript has no words")
    await rest(server, "GET", "/api/sessions/nope/summary", "alice", expect=404)
    await rest(server, "POST", "/api/sessions/nope/summary", "alice", expect=404)
    await rest(server, "GET", "/api/sessions/bad%20id/summary", "alice", expect=400)


# -- the command line ----------------------------------------------------------------------------

def test_scribeai_summary_prints_or_makes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from scribeai import cli
    from scribeai.db import Database
    from scribeai.models import RecordingSession, SessionSummary

    url = f"sqlite:///{tmp_path / 'cli.db'}"

    async def seed() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
        await db.create_all()
        async with db.write() as s:
            s.add(RecordingSession(id="cli1", user_id="alice", title="Weekly sync"))
        async with db.write() as s:
            for i, seg in enumerate(meeting_segments()):
                s.add(TranscriptSegment(session_id="cli1", seq=i, chunk_id=f"c{i}", start_ms=seg["startMs"],
                                        end_ms=seg["endMs"], text=seg["text"]))
        await db.dispose()

    async def stored() -> str | None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
        async with db.read() as s:
            row = await s.get(SessionSummary, "cli1")
        await db.dispose()
        return row.status if row else None

    def main(argv: list[str]) -> int:
        monkeypatch.setattr(cli, "_EXTRA_COMMANDS", [])  # main() registers the subcommands once per process
        return cli.main(argv)

    asyncio.run(seed())
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    # No summary stored yet (the session is still recording): the command makes one and stores it.
    assert main(["summary", "cli1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["status"], body["method"], asyncio.run(stored())) == ("ready", "extractive", "ready")
    assert {a["text"] for a in body["actionItems"]} == ACTIONS
    assert main(["summary", "cli1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SUMMARY (extractive)\n\n" + body["text"] + "\n\nKEY POINTS\n")
    assert f"- [00:00:27] {MEETING[6]}\n" in out and "TRANSCRIPT" not in out
    for args, message in [(["nope"], "scribeai: summary 'nope': no such session\n"),
                          (["a b"], "scribeai: summary 'a b': SESSION must be 1-128 characters of A-Z a-z 0-9 _ -\n")]:
        assert main(["summary", *args]) == 2
        assert capsys.readouterr() == ("", message)
    with pytest.raises(SystemExit):  # argparse: the session is required
        main(["summary"])
