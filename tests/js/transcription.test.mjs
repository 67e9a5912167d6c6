// Transcription end to end with the real socket.io-client (started by tests/test_js_interop.py):
// real speech through whisper, pushed live to a viewer; replay after lastSeq; headerless timeslice
// chunks; a recorder that obeys backpressure against a slow engine; acks while whisper is busy.
//
// A session's chunks are one recording, cut into windows at pauses (docs/protocol.md, "Transcripts"):
// a segment is a stretch of text, not a chunk. Its `seq` (= `toSeq`) is the last chunk its audio
// touches, several segments may share it, and a chunk may have none. Whole clips placed more than
// 100 ms apart are windows of their own, so here each clip's words come in the segments of its seq.
// The servers run with IDLE_FLUSH_S=1 and GAP_WAIT_S=3 (tests/conftest.py); a stopped session's
// last window is transcribed at once, and `session-completed` comes after its last segment.

import { after, afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this suite through tests/test_js_interop.py`);
  return value;
}

const WHISPER_URL = required("SCRIBEAI_WHISPER_URL");               // TRANSCRIBER=whisper (tiny.en)
const WHISPER_MAX_QUEUE_SIZE = Number(required("SCRIBEAI_WHISPER_MAX_QUEUE_SIZE"));
const SLOW_URL = required("SCRIBEAI_SLOW_URL");                     // TRANSCRIBER=openai, a fake API with a delay
const SLOW_MAX_QUEUE_SIZE = Number(required("SCRIBEAI_SLOW_MAX_QUEUE_SIZE"));
const ALICE = required("SCRIBEAI_TOKEN_ALICE");
const FIXTURES = required("SCRIBEAI_FIXTURES_DIR");
const MANIFEST = JSON.parse(readFileSync(path.join(FIXTURES, "manifest.json"), "utf8"));
const TIMESLICES = Object.keys(MANIFEST).filter((name) => name.startsWith("timeslice_")).sort();
const T0 = 1_732_350_000_000;
const HIGH_WATERMARK = 0.85;
const LOW_WATERMARK = 0.70;

// -- helpers ------------------------------------------------------------------

const sockets = new Set();

function closeAll() {
  for (const socket of sockets) socket.disconnect();
  sockets.clear();
}
afterEach(closeAll);
after(closeAll);

/** A connected socket with its own connection that never reconnects; closed after the test. */
function connect(url, { namespace = "/", token = ALICE, ...options } = {}) {
  const socket = io(url + namespace, { auth: { token }, forceNew: true, reconnection: false, timeout: 5000, ...options });
  sockets.add(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect to ${url + namespace} within 5 s`)), 5000);
    socket.once("connect", () => { clearTimeout(timer); resolve(socket); });
    socket.once("connect_error", (err) => { clearTimeout(timer); reject(err); });
  });
}

/** emitWithAck with a timeout; a disconnect fails it at once, with its reason. */
function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const dropped = (reason) => reject(new Error(`${event}: disconnected (${reason}) before the ack`));
    socket.once("disconnect", dropped);
    socket.timeout(10_000).emitWithAck(event, ...args)
      .then(resolve, reject)
      .finally(() => socket.off("disconnect", dropped));
  });
}

/**
 * Every event a socket receives, in arrival order, with its arrival time; `until(pred)` waits for
 * the log to satisfy `pred` (checked at once and after each new event) and fails with the log's
 * event names when it does not within `ms`.
 */
function record(socket) {
  const log = [];
  const waiters = new Set();
  socket.onAny((event, ...args) => {
    log.push({ event, body: args[0], at: performance.now() });
    for (const wake of waiters) wake();
  });
  const of = (event) => log.filter((e) => e.event === event).map((e) => e.body);
  const until = (pred, ms, what) => new Promise((resolve, reject) => {
    const check = () => {
      if (!pred(log)) return;
      clearTimeout(timer);
      waiters.delete(check);
      resolve(log);
    };
    const timer = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`${what}: not within ${ms} ms; got ${JSON.stringify(log.map((e) => e.event))}`));
    }, ms);
    waiters.add(check);
    check();
  });
  const count = (event) => (entries) => entries.filter((e) => e.event === event).length;
  return { log, of, until, count };
}

const sid = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;
// tests/fake_openai.py answers `heard <sha256[:12]>` of the WAV window the server uploads (decoded PCM, not the chunk)
const HEARD = /^heard [0-9a-f]{12}$/;
const clip = (name) => readFileSync(path.join(FIXTURES, name));
const toArrayBuffer = (buf) => buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);

/** The words of a transcript: lowercase, punctuation stripped. */
const words = (text) => new Set(text.toLowerCase().replace(/[^a-z0-9' ]/g, " ").split(/\s+/).filter(Boolean));

function assertWords(text, name) {
  const missing = MANIFEST[name].keywords.filter((w) => !words(text).has(w));
  assert.deepEqual(missing, [], `${name}: ${JSON.stringify(text)} lacks ${missing.join(", ")}`);
}

/** The words of a transcript in order (for "this before that"). */
const wordList = (text) => text.toLowerCase().replace(/[^a-z0-9' ]/g, " ").split(/\s+/).filter(Boolean);

const SLACK_MS = 100; // decoded audio vs the manifest's duration (codec delay, padding, 10 ms rounding)
const SEGMENT_KEYS = ["id", "sessionId", "seq", "fromSeq", "toSeq", "startMs", "endMs", "text", "speaker", "confidence", "isFinal"];

/**
 * A transcriptSegment's shape, field by field; whisper gives a confidence in (0, 1], the fake API none
 * (its answer has no segments with log probabilities), so there it is null.
 */
function assertSegment(segment, sessionId, { scored = true } = {}) {
  assert.deepEqual(Object.keys(segment).sort(), [...SEGMENT_KEYS].sort(), JSON.stringify(segment));
  assert.match(segment.id, /^[0-9a-f]{32}$/);
  assert.equal(segment.sessionId, sessionId);
  assert.ok(Number.isInteger(segment.fromSeq) && segment.fromSeq >= 0 && segment.fromSeq <= segment.seq, JSON.stringify(segment));
  assert.equal(segment.toSeq, segment.seq);
  assert.ok(Number.isInteger(segment.startMs) && segment.startMs >= 0 && segment.startMs < segment.endMs, JSON.stringify(segment));
  assert.equal(typeof segment.text, "string");
  assert.ok(segment.text.length > 0 && segment.text === segment.text.trim(), JSON.stringify(segment));
  assert.equal(segment.speaker, null);
  if (scored) assert.ok(segment.confidence > 0 && segment.confidence <= 1, `confidence ${segment.confidence}`);
  else assert.equal(segment.confidence, null);
  assert.equal(segment.isFinal, true);
}

/** Segments on the recording's timeline: by startMs; they never overlap and their seqs never go back. */
function onTimeline(segments) {
  const sorted = [...segments].sort((a, b) => a.startMs - b.startMs);
  sorted.slice(1).forEach((segment, i) => {
    const before = sorted[i];
    assert.ok(segment.startMs >= before.endMs, `overlap: ${JSON.stringify(before)} then ${JSON.stringify(segment)}`);
    assert.ok(segment.fromSeq >= before.seq && segment.seq >= before.seq, `seq goes back: ${JSON.stringify(before)} then ${JSON.stringify(segment)}`);
  });
  return sorted;
}

/** Replay's (and the REST transcript's) order: by seq, then startMs. */
const bySeq = (segments) => [...segments].sort((a, b) => a.seq - b.seq || a.startMs - b.startMs);

/** Each transcript-updated mirrors the transcriptSegment sent just before it: same text, seq, chunk `seq`'s id. */
function assertMirrored(segments, updates, chunkIds) {
  assert.equal(updates.length, segments.length, "a transcript-updated per transcriptSegment");
  segments.forEach((segment, i) => {
    assert.ok(chunkIds[segment.seq], `no ack for chunk ${segment.seq}`);
    assert.deepEqual(updates[i], { sessionId: segment.sessionId, sequence: segment.seq, text: segment.text, speaker: segment.speaker,
      chunkId: chunkIds[segment.seq], timestamp: segment.startMs }, `update ${i}`);
  });
}

/** GET /api/sessions/{id}/transcript (segments by seq, then startMs; pending, failed, gaps). */
async function storedTranscript(url, sessionId) {
  const response = await fetch(`${url}/api/sessions/${sessionId}/transcript`, { headers: { Authorization: `Bearer ${ALICE}` } });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A stored (first-time) ack, field by field; canAccept false comes with credits 0, true with 1..window. */
function assertStored(ack, { sessionId, sequence, timestamp, maxQueueSize }) {
  assert.match(ack.chunkId, /^[0-9a-f]{32}$/);
  assert.equal(typeof ack.canAccept, "boolean");
  const credits = ack.canAccept ? ack.credits : 0;
  assert.deepEqual(ack, { sessionId, sequence, timestamp, chunkId: ack.chunkId, duplicate: false, canAccept: ack.canAccept, credits });
  if (ack.canAccept) {
    assert.ok(Number.isInteger(credits) && credits >= 1 && credits <= Math.floor(HIGH_WATERMARK * maxQueueSize), `credits ${credits}`);
  }
}

const emptyJoin = (sessionId) => ({ sessionId, status: "recording", maxSeq: -1, totalChunks: 0, missing: [] });

// -- live segments from whisper ---------------------------------------------------

test("whisper: a viewer on /record gets each clip's words in transcriptSegments of its seq, each mirrored by a transcript-updated", { timeout: 60_000 }, async () => {
  const id = sid("live");
  // mixed containers in one session, each a whole file placed 0.4-0.6 s after the previous one ends (a discontinuity:
  // a window of its own); uneven offsets, so that the times can only come from the timestamps
  const clips = [
    { name: "speech_fox.webm", offset: 0 },            // ends at 3438
    { name: "speech_stella.webm", offset: 3_900 },     // ends at 8245
    { name: "speech_train.webm", offset: 8_800 },      // ends at 12161
    { name: "speech_welcome.ogg", offset: 12_700 },    // ends at 15391
    { name: "speech_hello.wav", offset: 15_950 },      // ends at 17210
  ];
  const viewer = await connect(WHISPER_URL, { namespace: "/record" }); // default transports: polling, then the upgrade
  const seen = record(viewer);
  assert.deepEqual(await call(viewer, "joinSession", { sessionId: id }), emptyJoin(id));
  const recorder = await connect(WHISPER_URL, { transports: ["websocket"] });
  const recorderSeen = record(recorder);

  const chunkIds = [];
  for (const [seq, { name, offset }] of clips.entries()) {
    const body = { sessionId: id, sequence: seq, timestamp: T0 + offset, mimeType: MANIFEST[name].mime_type, audio: clip(name) };
    const ack = await call(recorder, "audio-chunk", body);
    assertStored(ack, { sessionId: id, sequence: seq, timestamp: T0 + offset, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    chunkIds.push(ack.chunkId);
  }
  const stopped = await call(recorder, "stop-session", { sessionId: id });
  assert.deepEqual(stopped, { sessionId: id, status: "stopped", stoppedAt: stopped.stoppedAt, maxSeq: 4, totalChunks: 5, missing: [] });
  await seen.until((log) => log.some((e) => e.event === "session-completed"), 50_000, "session-completed");

  const events = seen.log.map((e) => e.event);
  assert.equal(events.at(-1), "session-completed", "session-completed after every segment");
  assert.deepEqual(seen.of("session-completed"), [{ sessionId: id }]);
  const segments = seen.of("transcriptSegment");
  for (const segment of segments) assertSegment(segment, id);
  assertMirrored(segments, seen.of("transcript-updated"), chunkIds);
  const timeline = onTimeline(segments);
  assert.deepEqual([...new Set(timeline.map((s) => s.seq))], [0, 1, 2, 3, 4], "every clip has its segments");
  for (const [seq, { name, offset }] of clips.entries()) {
    const mine = timeline.filter((s) => s.seq === seq);
    // a clip's own window: it starts and ends inside the clip, and its words are the clip's
    assert.deepEqual(mine.map((s) => s.fromSeq), mine.map(() => seq), name);
    assert.ok(mine[0].startMs >= offset, `${name}: starts at ${mine[0].startMs}, the clip at ${offset}`);
    assert.ok(mine.at(-1).endMs <= offset + MANIFEST[name].duration_ms + SLACK_MS,
      `${name}: ends at ${mine.at(-1).endMs}, the clip at ${offset + MANIFEST[name].duration_ms}`);
    assertWords(mine.map((s) => s.text).join(" "), name);
  }
  // what was pushed is what is stored, and replay's order is seq, then startMs
  const stored = await storedTranscript(WHISPER_URL, id);
  assert.deepEqual({ ...stored, segments: bySeq(segments) }, { sessionId: id, status: "stopped", tier: stored.tier, segments: stored.segments,
    pending: [], failed: [], gaps: [] });
  // the recorder never joined the room: segments go to the room only
  assert.deepEqual(recorderSeen.log.filter((e) => e.event.startsWith("transcript") || e.event === "session-completed"), []);
  assert.equal(recorderSeen.of("chunk-ack").length, clips.length);
});

// -- timeslice continuations ---------------------------------------------------------

test("timeslice: headerless pieces sent before piece 0 are waited for and transcribed, every piece's words in order, times inside the recording", { timeout: 60_000 }, async () => {
  const id = sid("slices");
  const socket = await connect(WHISPER_URL, { transports: ["websocket"] });
  const seen = record(socket);
  assert.deepEqual(await call(socket, "joinSession", { sessionId: id }), emptyJoin(id));
  const order = [TIMESLICES[3], TIMESLICES[1], TIMESLICES[0], TIMESLICES[2]]; // two continuations before the header
  assert.deepEqual(order.map((name) => MANIFEST[name].has_header === true), [false, false, true, false]);
  const chunkIds = [];
  for (const name of order) {
    const { order: seq, start_ms: timestamp, mime_type: mimeType } = MANIFEST[name];
    if (seq === 0) {
      await sleep(1_000); // the continuations wait for chunk 0 (GAP_WAIT_S=3), past an idle flush (IDLE_FLUSH_S=1)
      assert.deepEqual(seen.log.map((e) => e.event).filter((e) => e !== "chunk-ack" && e !== "backpressure"), ["session-joined"],
        "nothing transcribed or refused before chunk 0 came");
    }
    const ack = await call(socket, "audio-chunk", { sessionId: id, sequence: seq, timestamp, mimeType, audio: clip(name) });
    assertStored(ack, { sessionId: id, sequence: seq, timestamp, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    chunkIds[seq] = ack.chunkId;
  }
  const stopped = await call(socket, "stop-session", { sessionId: id });
  assert.deepEqual(stopped, { sessionId: id, status: "stopped", stoppedAt: stopped.stoppedAt, maxSeq: 3, totalChunks: 4, missing: [] });
  await seen.until((log) => log.some((e) => e.event === "session-completed"), 50_000, "session-completed");

  assert.equal(seen.log.at(-1).event, "session-completed", "session-completed after every segment");
  const segments = seen.of("transcriptSegment");
  for (const segment of segments) assertSegment(segment, id);
  assertMirrored(segments, seen.of("transcript-updated"), chunkIds);
  const timeline = onTimeline(segments);
  const total = MANIFEST[TIMESLICES.at(-1)].start_ms + MANIFEST[TIMESLICES.at(-1)].duration_ms;
  assert.ok(timeline.length >= 1 && timeline[0].startMs >= 0 && timeline.at(-1).endMs <= total + SLACK_MS,
    `${timeline.at(0)?.startMs}..${timeline.at(-1)?.endMs} ms, the recording lasts ${total} ms`);
  // each segment names the pieces its start and end fall in (a piece's span: start_ms .. start_ms + duration_ms)
  const pieceAt = (ms) => TIMESLICES.map((name) => MANIFEST[name])
    .filter((p) => p.start_ms - SLACK_MS <= ms && ms <= p.start_ms + p.duration_ms + SLACK_MS).map((p) => p.order);
  for (const segment of timeline) {
    assert.ok(pieceAt(segment.startMs).includes(segment.fromSeq), `fromSeq of ${JSON.stringify(segment)}`);
    assert.ok(pieceAt(segment.endMs).includes(segment.seq), `seq of ${JSON.stringify(segment)}`);
  }
  const text = timeline.map((s) => s.text).join(" ");
  for (const name of TIMESLICES) assertWords(text, name);
  // ... and in the recording's order: one word only each piece has
  const list = wordList(text);
  const at = ["everyone", "meetings", "flowers", "friday"].map((w) => list.indexOf(w));
  assert.deepEqual([...at].sort((a, b) => a - b), at, `out of order: ${JSON.stringify(text)}`);
  // the session's end of speech is in the last piece, so some segment's seq is 3
  assert.equal(timeline.at(-1).seq, 3);
  // chunk 0 was waited for, not skipped: no gap, nothing failed, all stored as pushed
  const stored = await storedTranscript(WHISPER_URL, id);
  assert.deepEqual({ ...stored, segments: bySeq(segments) }, { sessionId: id, status: "stopped", tier: stored.tier, segments: stored.segments,
    pending: [], failed: [], gaps: [] });
});

// -- replay after lastSeq ------------------------------------------------------------

/** Five speech clips, 15 s apart: each its own window, so the fake API gives exactly one segment per chunk. */
const SPOKEN = ["speech_fox.webm", "speech_hello.wav", "speech_welcome.ogg", "speech_train.webm", "speech_stella.webm"];

test("replay: joinSession with lastSeq=N sends exactly the segments with seq > N, in order, after session-joined", { timeout: 30_000 }, async () => {
  const id = sid("replay");
  const recorder = await connect(SLOW_URL, { transports: ["websocket"] });
  const live = record(recorder);
  assert.deepEqual(await call(recorder, "joinSession", { sessionId: id }), emptyJoin(id));
  const chunkIds = [];
  for (const [seq, name] of SPOKEN.entries()) {
    const timestamp = T0 + seq * 15000;
    const ack = await call(recorder, "audio-chunk", { sessionId: id, sequence: seq, timestamp, mimeType: MANIFEST[name].mime_type, audio: clip(name) });
    assertStored(ack, { sessionId: id, sequence: seq, timestamp, maxQueueSize: SLOW_MAX_QUEUE_SIZE });
    chunkIds.push(ack.chunkId);
  }
  // the last window closes after IDLE_FLUSH_S without a chunk (the session keeps recording)
  await live.until((log) => live.count("transcriptSegment")(log) === SPOKEN.length && live.count("transcript-updated")(log) === SPOKEN.length,
    20_000, "the live segments and their updates");
  const segments = live.of("transcriptSegment");
  for (const segment of segments) assertSegment(segment, id, { scored: false });
  assertMirrored(segments, live.of("transcript-updated"), chunkIds);
  assert.deepEqual(segments.map((s) => [s.fromSeq, s.seq]), SPOKEN.map((_, seq) => [seq, seq]));
  segments.forEach((segment, seq) => {
    assert.match(segment.text, HEARD);
    const clipEnd = seq * 15000 + MANIFEST[SPOKEN[seq]].duration_ms;
    assert.ok(segment.startMs >= seq * 15000 && segment.endMs <= clipEnd + SLACK_MS, `${JSON.stringify(segment)}: the clip is at ${seq * 15000}..${clipEnd}`);
  });
  assert.equal(new Set(segments.map((s) => s.text)).size, SPOKEN.length, "each window's own audio was uploaded");
  const joined = { sessionId: id, status: "recording", maxSeq: 4, totalChunks: 5, missing: [] };

  const cases = [
    { lastSeq: 2, namespace: "/record", expected: segments.slice(3) },
    { lastSeq: 0, namespace: "/", expected: segments.slice(1) },
    { lastSeq: 4, namespace: "/", expected: [] },
    { lastSeq: undefined, namespace: "/record", expected: segments },
  ];
  const late = [];
  for (const { lastSeq, namespace, expected } of cases) {
    const socket = await connect(SLOW_URL, { namespace, transports: ["websocket"] });
    const seen = record(socket);
    const payload = lastSeq === undefined ? { sessionId: id } : { sessionId: id, lastSeq };
    assert.deepEqual(await call(socket, "joinSession", payload), joined);
    await seen.until((log) => seen.count("transcriptSegment")(log) >= expected.length, 5_000, `replay after ${lastSeq}`);
    late.push({ seen, expected, lastSeq });
  }
  // checked after every join: by then any extra replayed segment would have arrived too
  for (const { seen, expected, lastSeq } of late) {
    assert.deepEqual(seen.log.map((e) => e.event), ["session-joined", ...expected.map(() => "transcriptSegment")], `lastSeq ${lastSeq}`);
    assert.deepEqual(seen.of("session-joined"), [joined]);
    assert.deepEqual(seen.of("transcriptSegment"), expected, `lastSeq ${lastSeq}`);
  }
  assert.deepEqual(live.of("transcriptSegment"), segments); // joins of others replay to them only
  assert.equal(live.of("transcript-updated").length, SPOKEN.length);
});

// -- backpressure --------------------------------------------------------------------

test("backpressure: a recorder that obeys the signals buffers, resumes, gets every chunk acked and transcribed", { timeout: 40_000 }, async () => {
  const CHUNKS = 12;
  const id = sid("bp");
  const socket = await connect(SLOW_URL, { transports: ["websocket"] });
  const seen = record(socket);
  const started = await call(socket, "start-session", { sessionId: id });
  assert.deepEqual(started, { sessionId: id, status: "recording", startedAt: started.startedAt });

  // speech clips 15 s apart: each chunk is a window of its own, transcribed (slowly) once the next one is read
  const names = Array.from({ length: CHUNKS }, (_, seq) => SPOKEN[seq % SPOKEN.length]);
  const acks = [];
  let waits = 0;
  for (const [seq, name] of names.entries()) {
    const timestamp = T0 + seq * 15000;
    const ack = await call(socket, "audio-chunk", { sessionId: id, sequence: seq, timestamp, mimeType: MANIFEST[name].mime_type,
      audio: toArrayBuffer(clip(name)) });
    assertStored(ack, { sessionId: id, sequence: seq, timestamp, maxQueueSize: SLOW_MAX_QUEUE_SIZE });
    acks.push(ack);
    if (seq < CHUNKS - 1 && (!ack.canAccept || ack.credits === 0)) {
      // obey: stop until the server says canAccept:true (it may already have, right after this ack)
      waits += 1;
      const signalsBefore = seen.of("backpressure").length;
      assert.ok(signalsBefore > 0, "canAccept:false without a backpressure signal before the ack");
      await seen.until((log) => {
        const last = log.filter((e) => e.event === "backpressure").at(-1);
        return last.body.canAccept === true;
      }, 15_000, `resume after chunk ${seq}`);
    }
  }
  assert.deepEqual(acks.map((a) => a.sequence), [...Array(CHUNKS).keys()]);

  const stopped = await call(socket, "stop-session", { sessionId: id });
  assert.deepEqual(stopped, { sessionId: id, status: "stopped", stoppedAt: stopped.stoppedAt, maxSeq: CHUNKS - 1, totalChunks: CHUNKS, missing: [] });
  await seen.until((log) => log.some((e) => e.event === "session-completed"), 20_000, "session-completed");

  const events = seen.log.map((e) => e.event);
  assert.deepEqual(seen.of("session-completed"), [{ sessionId: id }]);
  assert.equal(events.at(-1), "session-completed", "session-completed after every segment");
  assert.equal(events.filter((e) => e === "chunk-error").length, 0, "an obedient recorder is never refused");
  assert.deepEqual(seen.of("chunk-ack"), acks); // the event and the callback carry the same body
  const segments = seen.of("transcriptSegment");
  for (const segment of segments) assertSegment(segment, id, { scored: false });
  assert.deepEqual(segments.map((s) => [s.fromSeq, s.seq, HEARD.test(s.text)]), names.map((_, seq) => [seq, seq, true]),
    "one segment per chunk, in order");
  segments.forEach((segment, seq) => assert.ok(segment.startMs >= seq * 15000
    && segment.endMs <= seq * 15000 + MANIFEST[names[seq]].duration_ms + SLACK_MS, JSON.stringify(segment)));
  assertMirrored(segments, seen.of("transcript-updated"), acks.map((a) => a.chunkId));

  // one signal per transition: buffering at the high watermark, ok below the low one, strictly alternating
  const signals = seen.of("backpressure");
  const atHigh = Math.ceil(HIGH_WATERMARK * SLOW_MAX_QUEUE_SIZE);   // the first queue size at or over 0.85
  const atLow = Math.ceil(LOW_WATERMARK * SLOW_MAX_QUEUE_SIZE) - 1; // the first queue size under 0.70
  assert.ok(signals.length >= 2, `signals ${JSON.stringify(signals)}`);
  assert.equal(signals.length % 2, 0, `signals ${JSON.stringify(signals)}`);
  signals.forEach((signal, i) => {
    const queueSize = i % 2 === 0 ? atHigh : atLow;
    assert.deepEqual(signal, {
      canAccept: i % 2 === 1, state: i % 2 === 0 ? "buffering" : "ok", reason: "queue", queueSize,
      fillRatio: Math.round((queueSize / SLOW_MAX_QUEUE_SIZE) * 1000) / 1000,
    }, `signal ${i} of ${JSON.stringify(signals)}`);
  });
  assert.equal(waits, acks.slice(0, -1).filter((a) => !a.canAccept).length);
  assert.ok(waits >= 1, "the recorder never had to wait: the engine was not slow enough");
  console.log(`# backpressure: ${signals.length / 2} buffering episodes, the recorder waited ${waits} times`);
});

// -- acks while whisper is busy ----------------------------------------------------------

test("acks keep flowing while whisper transcribes a backlog", { timeout: 60_000 }, async () => {
  const BACKLOG = 3;
  const SMALL = 6;
  const long = clip("speech_long.webm");
  const hello = clip("speech_hello.wav");
  const backlogIds = Array.from({ length: BACKLOG }, (_, i) => sid(`backlog${i}`));
  const smallId = sid("small");

  const viewer = await connect(WHISPER_URL, { transports: ["websocket"] });
  const seen = record(viewer);
  for (const id of [...backlogIds, smallId]) assert.deepEqual(await call(viewer, "joinSession", { sessionId: id }), emptyJoin(id));
  const completed = (ids) => (log) => log.filter((e) => e.event === "session-completed" && ids.includes(e.body.sessionId)).length;

  // three sessions of 16.6 s of speech each, stopped at once: their windows are all due now
  const busy = await connect(WHISPER_URL, { transports: ["websocket"] });
  const backlogChunkIds = {};
  for (const id of backlogIds) {
    const ack = await call(busy, "audio-chunk", { sessionId: id, sequence: 0, timestamp: T0, mimeType: "audio/webm;codecs=opus", audio: long });
    assertStored(ack, { sessionId: id, sequence: 0, timestamp: T0, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    backlogChunkIds[id] = [ack.chunkId];
    assert.equal((await call(busy, "stop-session", { sessionId: id })).status, "stopped");
  }

  const recorder = await connect(WHISPER_URL, { transports: ["websocket"] });
  const latencies = [];
  const backlogAtAck = [];
  const chunkIds = [];
  for (let seq = 0; seq < SMALL; seq++) {
    const timestamp = T0 + seq * 1500; // 240 ms after the previous hello ends: a window each
    const sentAt = performance.now();
    const ack = await call(recorder, "audio-chunk", { sessionId: smallId, sequence: seq, timestamp, mimeType: "audio/wav", audio: hello });
    latencies.push(Math.round((performance.now() - sentAt) * 10) / 10);
    backlogAtAck.push(completed(backlogIds)(seen.log));
    assertStored(ack, { sessionId: smallId, sequence: seq, timestamp, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    chunkIds.push(ack.chunkId);
    await sleep(100); // a recorder's pace, spread over the busy time
  }
  console.log(`# ack latencies while whisper is busy (ms): ${latencies.join(", ")}; backlog sessions done at each ack: ${backlogAtAck.join(", ")}`);
  // every small ack came while the backlog was still being transcribed
  assert.ok(backlogAtAck.at(-1) < BACKLOG, `the backlog was done before the last ack (${backlogAtAck.join(", ")})`);
  assert.equal((await call(recorder, "stop-session", { sessionId: smallId })).status, "stopped");

  await seen.until((log) => completed([...backlogIds, smallId])(log) === BACKLOG + 1, 50_000, "every session completed");
  const segments = seen.of("transcriptSegment");
  for (const id of backlogIds) {
    const mine = segments.filter((s) => s.sessionId === id);
    for (const segment of mine) assertSegment(segment, id);
    const timeline = onTimeline(mine);
    assert.deepEqual(timeline.map((s) => [s.fromSeq, s.seq]), timeline.map(() => [0, 0]), id);
    assert.ok(timeline.length >= 1 && timeline.at(-1).endMs <= MANIFEST["speech_long.webm"].duration_ms + SLACK_MS, id);
    assertWords(timeline.map((s) => s.text).join(" "), "speech_long.webm");
    assertMirrored(mine, seen.of("transcript-updated").filter((u) => u.sessionId === id), backlogChunkIds[id]);
  }
  const small = onTimeline(segments.filter((s) => s.sessionId === smallId));
  for (const segment of small) assertSegment(segment, smallId);
  assert.deepEqual([...new Set(small.map((s) => s.seq))], [...Array(SMALL).keys()], "every hello has its segments");
  for (let seq = 0; seq < SMALL; seq++) {
    const mine = small.filter((s) => s.seq === seq);
    assert.deepEqual(mine.map((s) => s.fromSeq), mine.map(() => seq));
    assert.ok(mine[0].startMs >= seq * 1500 && mine.at(-1).endMs <= seq * 1500 + MANIFEST["speech_hello.wav"].duration_ms + SLACK_MS,
      JSON.stringify(mine));
    assertWords(mine.map((s) => s.text).join(" "), "speech_hello.wav");
  }
  assertMirrored(segments.filter((s) => s.sessionId === smallId),
    seen.of("transcript-updated").filter((u) => u.sessionId === smallId), chunkIds);
});
