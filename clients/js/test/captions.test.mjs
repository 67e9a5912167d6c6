// Live captions merged with the final transcript (pure): event sequences as a server sends them.

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LiveTranscript } from "../captions.js";

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures");
const interim = (startMs, endMs, text, stable, revision) => ({ sessionId: "s", startMs, endMs, fromSeq: 0, toSeq: 1, text, stable, revision });
const final = (id, seq, startMs, endMs, text) => ({ id, sessionId: "s", seq, fromSeq: 0, toSeq: seq, startMs, endMs, text, isFinal: true });
const shown = (live) => live.lines().map((l) => (l.kind === "final" ? `[${l.text}]` : `${l.confirmed}|${l.tentative}`));

test("a caption grows, its confirmed part plain and the rest tentative; the final replaces it in place", () => {
  const live = new LiveTranscript();
  live.addSegment(final("a", 2, 0, 2900, "Welcome to the meeting."));
  assert.deepEqual(live.addInterim(interim(2900, 4200, "The train", 0, 1)), { startMs: 2900, endMs: 4200, fromSeq: 0, toSeq: 1,
    confirmed: "", tentative: "The train", revision: 1 });
  live.addInterim(interim(2900, 5100, "The train to Lund", 9, 2));
  assert.deepEqual(shown(live), ["[Welcome to the meeting.]", "The train| to Lund"]);
  live.addInterim(interim(2900, 6000, "The train to London leaves", 19, 3));
  assert.deepEqual(shown(live), ["[Welcome to the meeting.]", "The train to London| leaves"]);
  const replaced = live.addSegment(final("b", 6, 2900, 7400, "The train to London leaves from platform seven."));
  assert.deepEqual(replaced.map((c) => [c.startMs, c.revision]), [[2900, 3]]);
  assert.deepEqual(shown(live), ["[Welcome to the meeting.]", "[The train to London leaves from platform seven.]"]);
  assert.equal(live.text(), "Welcome to the meeting.\nThe train to London leaves from platform seven.");
});

test("confirmed words are never taken back: a revision saying less, or contradicting them, keeps them", () => {
  const live = new LiveTranscript();
  live.addInterim(interim(0, 3000, "Please call Stella", 11, 1));
  assert.deepEqual(shown(live), ["Please call| Stella"]);
  live.addInterim(interim(0, 3500, "Please call Stella and", 6, 2));  // says less is stable: the shown part stays
  assert.deepEqual(shown(live), ["Please call| Stella and"]);
  live.addInterim(interim(0, 4000, "Police call Stella and ask", 0, 3));  // contradicts it: confirmed kept, tail dropped
  assert.deepEqual(shown(live), ["Please call|"]);
  live.addInterim(interim(0, 4500, "Please call Stella and ask her", 18, 4));
  assert.deepEqual(shown(live), ["Please call Stella| and ask her"]);
});

test("an older or repeated revision changes nothing; a caption after its final is dropped", () => {
  const live = new LiveTranscript();
  assert.notEqual(live.addInterim(interim(0, 2000, "Our budget", 0, 2)), null);
  assert.equal(live.addInterim(interim(0, 1500, "Our", 0, 1)), null);
  assert.equal(live.addInterim(interim(0, 2000, "Our budget", 0, 2)), null);
  assert.deepEqual(shown(live), ["|Our budget"]);
  live.addSegment(final("a", 3, 0, 3100, "Our budget is ready."));
  assert.equal(live.addInterim(interim(0, 3000, "Our budget is", 10, 3)), null);  // late: the final already covers it
  assert.equal(live.addInterim(interim(1500, 3000, "is", 0, 1)), null);            // starts inside the final
  assert.deepEqual(shown(live), ["[Our budget is ready.]"]);
  assert.equal(live.addSegment(final("a", 3, 0, 3100, "Our budget is ready.")), null);  // a replayed final: no event
});

test("a window another server process takes over goes on: revisions grow with the audio covered, not per process", () => {
  // as a server sends them: the revision is ten times the ms of the window's audio the caption covers
  const live = new LiveTranscript();
  const covering = (endMs, text, stable) => interim(0, endMs, text, stable, endMs * 10);
  live.addInterim(covering(1192, "The quarter-ly", 0));
  live.addInterim(covering(2912, "The quarterly renew has been moved to the", 13));
  // that process stopped; the next one decodes the same audio again (it cannot know what was shown), then more
  assert.equal(live.addInterim(covering(2912, "The quarterly review has been moved to the", 0)), null);
  assert.notEqual(live.addInterim(covering(3812, "The quarterly review has been moved to the large conference.", 13)), null);
  assert.deepEqual(shown(live), ["The quarterly| review has been moved to the large conference."]);
  // a late one from the process before (delivered through another node) is older: dropped
  assert.equal(live.addInterim({ ...covering(2912, "The quarterly renew has been moved to the", 13), revision: 29121 }), null);
  assert.deepEqual(shown(live), ["The quarterly| review has been moved to the large conference."]);
});

test("a final replaces every caption that starts before its end, not the ones after", () => {
  const live = new LiveTranscript();
  live.addInterim(interim(0, 4000, "one two", 3, 5));
  live.addInterim(interim(4000, 6000, "three", 0, 1));  // the next window opened before the first one's final came
  assert.deepEqual(shown(live), ["one| two", "|three"]);
  const replaced = live.addSegment(final("x", 4, 0, 4000, "One, two."));
  assert.deepEqual(replaced.map((c) => c.startMs), [0]);
  assert.deepEqual(shown(live), ["[One, two.]", "|three"]);
});

test("once the session is completely transcribed, a caption no final covered is dropped", () => {
  const live = new LiveTranscript();
  live.addSegment(final("a", 2, 0, 2000, "Hello."));
  live.addInterim(interim(2500, 4000, "Thank you.", 0, 1));  // noise after the last words: its window gives no final
  assert.deepEqual(live.dropCaptions().map((c) => c.startMs), [2500]);
  assert.deepEqual(shown(live), ["[Hello.]"]);
  assert.deepEqual(live.dropCaptions(), []);
});

test("malformed captions are ignored", () => {
  const live = new LiveTranscript();
  for (const body of [null, "text", {}, { ...interim(0, 1, "a", 0, 1), startMs: "0" }, { ...interim(0, 1, "a", 0, 1), text: 3 },
    { ...interim(0, 1, "a", -1, 1) }, { ...interim(0, 1, "a", 0, 1.5) }]) {
    assert.equal(live.addInterim(body), null, JSON.stringify(body));
  }
  assert.deepEqual(live.lines(), []);
});

// Sequences recorded from a real server (window.demo.liveEvents of the demo page in the captions scenario of
// tests/js/demo_driver.mjs, in Firefox at 1 s blobs):
// whatever the server said, what a viewer sees holds these rules.
for (const name of (existsSync(FIXTURES) ? readdirSync(FIXTURES) : []).filter((f) => f.startsWith("captions-") && f.endsWith(".json"))) {
  test(`recorded: ${name}: confirmed text only grows, every caption ends replaced by a final`, () => {
    const events = JSON.parse(readFileSync(path.join(FIXTURES, name), "utf8"));
    assert.ok(events.filter((e) => e.event === "transcriptInterim").length >= 3, "the recording has captions");
    const live = new LiveTranscript();
    const confirmed = new Map();
    let replacedCount = 0;
    for (const { event, body } of events) {
      if (event === "transcriptSegment") {
        const replaced = live.addSegment(body) ?? [];
        replacedCount += replaced.length;
        for (const c of replaced) confirmed.delete(c.startMs);
      } else {
        const caption = live.addInterim(body);
        if (!caption) continue;
        const before = confirmed.get(caption.startMs) ?? "";
        assert.ok(caption.confirmed.startsWith(before), `${JSON.stringify(before)} then ${JSON.stringify(caption.confirmed)}`);
        assert.equal(`${caption.confirmed}${caption.tentative}`, body.text.startsWith(caption.confirmed) ? body.text : caption.confirmed);
        confirmed.set(caption.startMs, caption.confirmed);
      }
    }
    assert.ok(replacedCount >= 1, "a final replaced a caption");
    assert.deepEqual(live.captions, [], "captions left after the last final");
    assert.equal(live.segments.length, events.filter((e) => e.event === "transcriptSegment").length);
  });
}
