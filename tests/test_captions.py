"""Live captions: the agreement policy on recorded hypothesis sequences, the CPU budget, and a real server that
captions real speech streamed in 1 s blobs to the sockets that asked, before the final segment replaces them, and
goes on when another node takes the stream over mid-window."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from scribeai.transcription.captions import Budget, Caption, agreed
from tests.conftest import RunningServer, ServerFactory, chunk
from tests.node_tests import find_node
from tests.speech import MEETING, normalize, spoken_blobs

# Hypotheses whisper tiny.en gave for a growing window (1 s steps) of "We agreed that the marketing team will own the
# launch plan for the new product. The budget is tight.", decoded unpadded as captions are, each forced to begin
# with the words confirmed before it.
GROWING = [
    "We are greed, that are not.",
    "We agreed that the marketing team will own",
    "We agreed that the marketing team will own the launch plan for",
    "We agreed that the marketing team will own the launch plan for the new product.",
    "We agreed that the marketing team will own the launch plan for the new product, the budget in time.",
    "We agreed that the marketing team will own the launch plan for the new product, the budget is tight.",
]


def test_agreement_confirms_what_two_hypotheses_share_and_never_takes_it_back() -> None:
    caption, seen = Caption(0.0), []
    for step, hypothesis in enumerate(GROWING):
        # the decoder is forced to start with the confirmed words: give it that, as the engine would
        forced = " ".join(caption.stable + hypothesis.split()[len(caption.stable):])
        assert caption.update(forced, 1000.0 * (step + 1))
        seen.append((caption.text, caption.stable_chars, caption.revision))
    confirmed = [text[:stable] for text, stable, _ in seen]
    assert confirmed == [
        "",  # nothing to agree with yet
        "We",  # "We are" / "We agreed": only the first word
        "We agreed that the marketing team will own",
        "We agreed that the marketing team will own the launch plan for",
        # punctuation does not count when words are compared: "product." and "product," agree
        "We agreed that the marketing team will own the launch plan for the new product,",
        "We agreed that the marketing team will own the launch plan for the new product, the budget",  # in / is
    ]
    for before, after in zip(confirmed, confirmed[1:]):
        assert after.startswith(before), (before, after)  # the stable prefix never shrinks nor changes
    assert [text for text, _, _ in seen] == [" ".join(h.split()) for h in GROWING]
    # the revision is the audio the caption covers (1 s more at each step), ten revisions a millisecond
    assert [revision for _, _, revision in seen] == [10000, 20000, 30000, 40000, 50000, 60000]


def test_a_revision_grows_with_the_audio_covered_whichever_process_decoded_it() -> None:
    before = Caption(0.0)  # the process that captioned the window until it stopped
    for step, hypothesis in enumerate(GROWING[:3]):
        assert before.update(hypothesis, 860.0 * (step + 1))
    taken_over = Caption(0.0)  # the process that read the window on from the stored chunks: no count of its own
    assert taken_over.update(GROWING[3], 3 * 860.0 + 900.0)
    assert (before.revision, taken_over.revision) == (25800, 34800)
    assert taken_over.update(GROWING[4], 3 * 860.0 + 900.0)  # the same audio said differently (not done by the
    assert taken_over.revision == 34801                     # pipeline, which waits for STEP_MS more): still grows
    again = Caption(0.0)
    assert again.update(GROWING[2], 3 * 860.0)  # the same audio as `before` last covered, decoded again elsewhere:
    assert again.revision == before.revision    # not news to a viewer who saw that


def test_a_hypothesis_that_drops_confirmed_words_keeps_them() -> None:
    caption = Caption(0.0)
    caption.update("the budget is", 1000)
    caption.update("the budget is tight", 2000)
    assert caption.text[:caption.stable_chars] == "the budget is"
    caption.update("a budget", 3000)  # a decoder that ignored its forced prefix
    assert caption.text.startswith("the budget is") and caption.stable_chars == len("the budget is")


def test_a_flickering_tail_is_not_confirmed_and_silence_inventions_are_not_shown() -> None:
    caption = Caption(0.0)
    for hypothesis in ["hiring remains", "hiring remains our big", "hiring remains our bigger", "hiring remains our biggest"]:
        caption.update(" ".join(caption.stable + hypothesis.split()[len(caption.stable):]), 0)
    assert caption.text[:caption.stable_chars] == "hiring remains our"  # big / bigger / biggest never agreed
    assert not agreed([], ["thank", "you"], ["thank", "me"])[1:]
    shown = Caption(0.0)
    shown.update("Thank you.", 1000)  # whisper over silence
    assert shown.text == ""
    assert not shown.update("Thank you.", 2000)  # nothing a viewer sees changed: no event


def test_the_budget_counts_recent_decoding_only() -> None:
    now = [100.0]
    budget = Budget(0.5, clock=lambda: now[0])
    assert budget.allows()
    budget.spend(4.0)  # 4 s of decoding in the last 10 s: 0.4 s/s
    assert budget.allows()
    budget.spend(1.5)
    assert not budget.allows() and budget.used() == pytest.approx(0.55)
    now[0] += 10.5
    assert budget.allows() and budget.used() == 0
    assert not Budget(0.0).allows()  # 0 turns captions off


SENTENCES = [MEETING[i] for i in (0, 6, 11)]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return spoken_blobs(SENTENCES, tmp_path_factory.mktemp("captions"))


@pytest.mark.timeout(150)
async def test_captions_come_before_the_final_and_only_to_who_asked(start_server: ServerFactory, connect: Any,
                                                                      blobs: list[bytes], backend: str) -> None:
    if backend == "postgres":
        pytest.skip("captions run the same code on PostgreSQL; the viewer mark's SQL is covered by test_viewers_*")
    server = await start_server(transcriber="whisper", max_concurrency=2, idle_flush_s=40, max_queue_size=500)
    recorder, viewer, plain = await connect(server.url), await connect(server.url), await connect(server.url)
    events: list[tuple[str, str, dict[str, Any]]] = []

    async def collect(name: str, client: Any) -> None:
        while True:
            event, *args = await client.receive()
            if event in ("transcriptInterim", "transcriptSegment", "transcript-updated"):
                events.append((name, event, args[0]))

    collectors = [asyncio.create_task(collect(name, client)) for name, client in (("viewer", viewer), ("plain", plain))]
    first = await recorder.call("audio-chunk", chunk("live", 0, blobs[0]), timeout=10)
    assert "error" not in first, first
    assert "error" not in await viewer.call("joinSession", {"sessionId": "live", "interim": True}, timeout=10)
    assert "error" not in await plain.call("joinSession", {"sessionId": "live"}, timeout=10)
    bad = await plain.call("joinSession", {"sessionId": "live", "interim": "yes"}, timeout=10)
    assert bad["error"]["code"] == "invalid" and "interim" in bad["error"]["message"], bad
    for seq in range(1, len(blobs)):  # in real time: blob k when its second of audio has ended
        await asyncio.sleep(1.0)
        ack = await recorder.call("audio-chunk", chunk("live", seq, blobs[seq]), timeout=10)
        assert "error" not in ack, ack
    await recorder.call("stopSession", {"sessionId": "live"}, timeout=10)
    await server.services.pipeline.drain(timeout=60)
    for _ in range(50):  # what was sent has arrived
        await asyncio.sleep(0.1)
        if len([1 for who, event, _ in events if event == "transcriptInterim"]) >= server.services.pipeline.captioned:
            break
    for task in collectors:
        task.cancel()

    for who, event, data in events:
        if who == "viewer" and event != "transcript-updated":
            print(event, data["startMs"], data["endMs"], data.get("stable"), data["text"])
    interims = [data for who, event, data in events if event == "transcriptInterim"]
    assert interims and all(who == "viewer" for who, event, _ in events if event == "transcriptInterim")
    finals = [data for who, event, data in events if who == "viewer" and event == "transcriptSegment"]
    assert finals and len(finals) == len([1 for who, e, _ in events if who == "plain" and e == "transcriptSegment"])
    # the original app's event carries finals only, the same for both sockets
    updated = {who: [d["text"] for w, e, d in events if w == who and e == "transcript-updated"] for who in ("viewer", "plain")}
    assert updated["viewer"] == updated["plain"] == [f["text"] for f in finals]
    by_window: dict[int, list[dict[str, Any]]] = {}
    for interim in interims:
        assert set(interim) == {"sessionId", "startMs", "endMs", "fromSeq", "toSeq", "text", "stable", "revision"}
        assert interim["sessionId"] == "live" and 0 <= interim["stable"] <= len(interim["text"])
        by_window.setdefault(interim["startMs"], []).append(interim)
    for updates in by_window.values():
        assert [u["revision"] for u in updates] == sorted({u["revision"] for u in updates}), updates
        confirmed = [u["text"][:u["stable"]] for u in updates]
        for before, after in zip(confirmed, confirmed[1:]):
            assert after.startswith(before), (before, after)
    # before the final segment that covers a stretch of audio came, a caption of it did
    order = [(event, data) for who, event, data in events if who == "viewer" and event != "transcript-updated"]
    first_final = next(i for i, (event, _) in enumerate(order) if event == "transcriptSegment")
    covered = [d for e, d in order[:first_final] if e == "transcriptInterim" and d["startMs"] < order[first_final][1]["endMs"]]
    assert covered, order[:first_final + 1]
    # the captions say the words that were spoken
    reference = set(normalize(" ".join(SENTENCES)))
    said = [word for updates in by_window.values() for word in normalize(updates[-1]["text"])]
    assert len(said) >= 8 and sum(word in reference for word in said) >= 0.7 * len(said), said
    assert server.services.pipeline.captioned == len(interims)


async def test_viewers_are_marked_in_the_database_and_lapse(start_server: ServerFactory, connect: Any) -> None:
    server = await start_server(transcriber="none")
    queue = server.services.pipeline.queue
    client = await connect(server.url)
    assert await queue.watched_sessions() == set()
    assert "error" not in await client.call("joinSession", {"sessionId": "seen", "interim": True}, timeout=10)
    assert "error" not in await client.call("joinSession", {"sessionId": "unseen"}, timeout=10)
    assert await queue.watched_sessions() == {"seen"}
    await queue.watch(["seen"], -1.0)  # as if the node that marked it had died long ago
    assert await queue.watched_sessions() == set()
    realtime = server.services.realtime
    realtime._captions_renewed = float("-inf")  # the renewal is due
    await realtime.renew_captions()
    assert await queue.watched_sessions() == {"seen"}  # still joined with interim: renewed
    assert "error" not in await client.call("joinSession", {"sessionId": "seen", "interim": False}, timeout=10)
    await queue.watch(["seen"], -1.0)
    realtime._captions_renewed = float("-inf")
    await realtime.renew_captions()
    assert await queue.watched_sessions() == set()  # it left the caption room: nobody renews the mark


def test_open_audio_is_the_held_audio_from_its_first_speech(tmp_path: Path) -> None:
    import numpy as np

    from scribeai.transcription.windows import Windower

    class Halves:
        def speech(self, pcm: Any) -> list[tuple[int, int]]:  # speech wherever the signal is loud
            loud = np.abs(pcm) > 0.1
            return [(int(np.argmax(loud)), len(pcm))] if loud.any() else []

    windower = Windower(Halves(), min_ms=3000, target_ms=8000)
    assert windower.open_audio() is None
    windower.add(np.zeros(16000, dtype=np.float32), 5000.0, 0)
    assert windower.open_audio() is None  # silence only: nothing to caption
    windower.add(np.full(16000, 0.5, dtype=np.float32), 6000.0, 1)
    held = windower.open_audio()
    assert held is not None and (held.start_ms, held.end_ms, held.from_seq, held.to_seq) == (5000.0, 7000.0, 0, 1)
    assert len(held.pcm) == 16000 + 3200  # from 200 ms before the speech to the end
    assert windower.pending_ms == 2000  # nothing changed


def test_a_loop_is_cut_where_it_starts_repeating() -> None:
    caption = Caption(0.0)
    caption.update("The quarterly review has been moved to the large conference room on the third. "
                   "The quarterly review has been moved to the", 4672)
    assert caption.text == "The quarterly review has been moved to the large conference room on the third."
    caption.update("The quarterly review has been moved to the large conference room on the third floor.", 5772)
    assert caption.text.endswith("third floor.") and caption.stable_chars == len(
        "The quarterly review has been moved to the large conference room on the third")


LIBRARY = Path(__file__).parent.parent / "clients" / "js" / "captions.js"


async def shown_by_the_library(events: list[tuple[str, dict[str, Any]]]) -> list[bool]:
    """Each caption of `events` (transcriptInterim and transcriptSegment, as one viewer got them) fed in order to
    the recorder library's LiveTranscript (clients/js/captions.js, in node): whether it showed it."""
    node = await find_node("the caption handoff test")
    script = f"""import {{ LiveTranscript }} from {json.dumps(LIBRARY.as_uri())};
        import {{ readFileSync }} from "node:fs";
        const live = new LiveTranscript(), shown = [];
        for (const [event, body] of JSON.parse(readFileSync(0, "utf8"))) {{
          if (event === "transcriptSegment") live.addSegment(body); else shown.push(live.addInterim(body) !== null);
        }}
        console.log(JSON.stringify(shown));"""
    proc = await asyncio.create_subprocess_exec(node, "--input-type=module", "-e", script, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(json.dumps(events).encode())
    assert proc.returncode == 0, out
    return [bool(s) for s in json.loads(out)]


@pytest.mark.timeout(240)
async def test_a_window_s_captions_go_on_being_shown_after_a_restart_mid_window(
        start_server: ServerFactory, connect: Any, blobs: list[bytes], backend: str) -> None:
    """Another node takes over a stream whose open window has captions on a viewer's screen: its captions of that
    window, which cover more of it, must be shown, not dropped as old revisions until the final comes."""
    if backend == "postgres":
        pytest.skip("captions run the same code on PostgreSQL; the handoff is the same on either database")
    # one window over the whole recording (cut only by the stop): the restart is certainly in the middle of it
    shared = {"transcriber": "whisper", "max_concurrency": 2, "idle_flush_s": 40, "max_queue_size": 500,
              "window_min_s": 30, "window_target_s": 30}
    events: list[tuple[str, dict[str, Any]]] = []  # what one viewer got, through its reconnect to the other node

    def interims() -> list[dict[str, Any]]:
        return [body for event, body in events if event == "transcriptInterim"]

    async def watch(server: RunningServer) -> tuple[Any, asyncio.Task[None]]:
        recorder, viewer = await connect(server.url), await connect(server.url)
        assert "error" not in await viewer.call("joinSession", {"sessionId": "handoff", "interim": True}, timeout=10)

        async def collect() -> None:
            while True:
                event, *args = await viewer.receive()
                if event in ("transcriptInterim", "transcriptSegment"):
                    events.append((event, args[0]))
        return recorder, asyncio.create_task(collect())

    first = await start_server(**shared, node_id="node-a")
    recorder, collector = await watch(first)
    seq = 0
    while len(interims()) < 3:  # in real time, until the open window has had a few captions
        assert seq < len(blobs) // 2, "no captions in the first half of the recording"
        ack = await recorder.call("audio-chunk", chunk("handoff", seq, blobs[seq]), timeout=10)
        assert "error" not in ack, ack
        seq += 1
        await asyncio.sleep(1.0)
    collector.cancel()
    await first.app.shutdown()  # its claim on the stream is released: the other node reads on from what is stored
    await first.app.cleanup()
    before = len(interims())

    second = await start_server(same_database_as=first, **shared, node_id="node-b")
    recorder, collector = await watch(second)
    for later in range(seq, len(blobs)):
        await asyncio.sleep(1.0)
        ack = await recorder.call("audio-chunk", chunk("handoff", later, blobs[later]), timeout=10)
        assert "error" not in ack, ack
    await recorder.call("stopSession", {"sessionId": "handoff"}, timeout=10)
    await second.services.pipeline.drain(timeout=60)
    finals = len(await second.services.pipeline.segments_after("handoff", None))
    while len([1 for event, _ in events if event == "transcriptSegment"]) < finals:  # and the captions sent before them
        await asyncio.sleep(0.05)
    collector.cancel()

    for event, body in events:
        print(event, body["startMs"], body["endMs"], body.get("revision"), body["text"])
    sent = interims()
    windows = {body["startMs"] for body in sent[:before]}
    assert [body for body in sent[before:] if body["startMs"] in windows], "no caption of the open window after the restart"
    covered: dict[int, int] = {}  # startMs -> the end of the most of its window a caption covered so far
    for body, shown in zip(sent, await shown_by_the_library(events), strict=True):
        more = body["endMs"] > covered.get(body["startMs"], -1)
        covered[body["startMs"]] = max(body["endMs"], covered.get(body["startMs"], -1))
        # a caption that covers more of its window than any before it is news, whichever node sent it
        assert shown or not more, (body, [(b["endMs"], b["revision"]) for b in sent if b["startMs"] == body["startMs"]])
