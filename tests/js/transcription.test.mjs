// Transcription end to end with the real socket.io-client (started by tests/test_js_interop.py):
// real speech through whisper, pushed live to a viewer; replay after lastSeq; headerless timeslice
// chunks; a recorder that obeys backpressure against a slow engine; acks while whisper is busy.

import { after, afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
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
const SLOW_DURATION_MS = Number(required("SCRIBEAI_SLOW_DURATION_MS")); // the fake API's answer, in ms
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
const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");
const heard = (buf) => `heard ${sha256(buf).slice(0, 12)}`; // tests/fake_openai.py's answer
const clip = (name) => readFileSync(path.join(FIXTURES, name));
const toArrayBuffer = (buf) => buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);

/** The words of a transcript: lowercase, punctuation stripped. */
const words = (text) => new Set(text.toLowerCase().replace(/[^a-z0-9' ]/g, " ").split(/\s+/).filter(Boolean));

function assertWords(text, name) {
  const missing = MANIFEST[name].keywords.filter((w) => !words(text).has(w));
  assert.deepEqual(missing, [], `${name}: ${JSON.stringify(text)} lacks ${missing.join(", ")}`);
}

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

test("whisper: a viewer on /record gets a transcriptSegment and a transcript-updated with the right words for each chunk", { timeout: 60_000 }, async () => {
  const id = sid("live");
  // mixed containers in one session; uneven offsets so that startMs can only come from the timestamps
  const clips = [
    { name: "speech_fox.webm", offset: 0 },
    { name: "speech_stella.webm", offset: 3_500 },
    { name: "speech_train.webm", offset: 8_200 },
    { name: "speech_welcome.ogg", offset: 11_700 },
    { name: "speech_hello.wav", offset: 14_450 },
  ];
  const viewer = await connect(WHISPER_URL, { namespace: "/record" }); // default transports: polling, then the upgrade
  const seen = record(viewer);
  assert.deepEqual(await call(viewer, "joinSession", { sessionId: id }), emptyJoin(id));
  const recorder = await connect(WHISPER_URL, { transports: ["websocket"] });
  const recorderSeen = record(recorder);

  const acks = [];
  for (const [seq, { name, offset }] of clips.entries()) {
    const body = { sessionId: id, sequence: seq, timestamp: T0 + offset, mimeType: MANIFEST[name].mime_type, audio: clip(name) };
    const ack = await call(recorder, "audio-chunk", body);
    assertStored(ack, { sessionId: id, sequence: seq, timestamp: T0 + offset, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    acks.push(ack);
  }

  await seen.until((log) => seen.count("transcriptSegment")(log) >= clips.length && seen.count("transcript-updated")(log) >= clips.length,
    50_000, "a segment and an update per chunk");
  const segments = seen.of("transcriptSegment").sort((a, b) => a.seq - b.seq);
  const updates = seen.of("transcript-updated").sort((a, b) => a.sequence - b.sequence);
  assert.deepEqual(segments.map((s) => s.seq), [0, 1, 2, 3, 4]);
  assert.deepEqual(updates.map((u) => u.sequence), [0, 1, 2, 3, 4]);
  for (const [seq, { name, offset }] of clips.entries()) {
    const segment = segments[seq];
    assertWords(segment.text, name);
    assert.match(segment.id, /^[0-9a-f]{32}$/);
    assert.ok(segment.confidence > 0 && segment.confidence <= 1, `${name}: confidence ${segment.confidence}`);
    assert.ok(Math.abs(segment.endMs - segment.startMs - MANIFEST[name].duration_ms) <= 100,
      `${name}: ${segment.endMs - segment.startMs} ms, the clip lasts ${MANIFEST[name].duration_ms} ms`);
    assert.deepEqual(segment, { id: segment.id, sessionId: id, seq, startMs: offset, endMs: segment.endMs, text: segment.text,
      speaker: null, confidence: segment.confidence, isFinal: true });
    assert.deepEqual(updates[seq], { sessionId: id, sequence: seq, text: segment.text, speaker: null, chunkId: acks[seq].chunkId,
      timestamp: T0 + offset });
  }
  // the recorder never joined the room: segments go to the room only
  assert.deepEqual(recorderSeen.log.filter((e) => e.event.startsWith("transcript")), []);
  assert.equal(recorderSeen.of("chunk-ack").length, clips.length);
});

// -- timeslice continuations ---------------------------------------------------------

test("timeslice: headerless pieces sent before piece 0 are each transcribed with their words, startMs from start_ms", { timeout: 60_000 }, async () => {
  const id = sid("slices");
  const socket = await connect(WHISPER_URL, { transports: ["websocket"] });
  const seen = record(socket);
  assert.deepEqual(await call(socket, "joinSession", { sessionId: id }), emptyJoin(id));
  const order = [TIMESLICES[3], TIMESLICES[1], TIMESLICES[0], TIMESLICES[2]]; // two continuations before the header
  assert.deepEqual(order.map((name) => MANIFEST[name].has_header === true), [false, false, true, false]);
  const acks = {};
  for (const name of order) {
    const { order: seq, start_ms: timestamp, mime_type: mimeType } = MANIFEST[name];
    const ack = await call(socket, "audio-chunk", { sessionId: id, sequence: seq, timestamp, mimeType, audio: clip(name) });
    assertStored(ack, { sessionId: id, sequence: seq, timestamp, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    acks[seq] = ack;
  }
  await seen.until((log) => seen.count("transcriptSegment")(log) >= TIMESLICES.length && seen.count("transcript-updated")(log) >= TIMESLICES.length,
    50_000, "a segment per piece");
  const segments = seen.of("transcriptSegment").sort((a, b) => a.seq - b.seq);
  assert.deepEqual(segments.map((s) => s.seq), [0, 1, 2, 3]);
  for (const name of TIMESLICES) {
    const { order: seq, start_ms: startMs } = MANIFEST[name];
    assertWords(segments[seq].text, name);
    assert.equal(segments[seq].startMs, startMs, name);
    // the piece's own length, measured behind the session header
    assert.ok(Math.abs(segments[seq].endMs - startMs - MANIFEST[name].duration_ms) <= 100,
      `${name}: ${segments[seq].endMs - startMs} ms, the piece lasts ${MANIFEST[name].duration_ms} ms`);
    const update = seen.of("transcript-updated").find((u) => u.sequence === seq);
    assert.deepEqual(update, { sessionId: id, sequence: seq, text: segments[seq].text, speaker: null, chunkId: acks[seq].chunkId, timestamp: startMs });
  }
});

// -- replay after lastSeq ------------------------------------------------------------

test("replay: joinSession with lastSeq=N sends exactly the segments with seq > N, in order, after session-joined", { timeout: 30_000 }, async () => {
  const id = sid("replay");
  const recorder = await connect(SLOW_URL, { transports: ["websocket"] });
  const live = record(recorder);
  assert.deepEqual(await call(recorder, "joinSession", { sessionId: id }), emptyJoin(id));
  const sent = Array.from({ length: 5 }, (_, seq) => randomBytes(400 + seq));
  for (const [seq, audio] of sent.entries()) {
    const ack = await call(recorder, "audio-chunk", { sessionId: id, sequence: seq, timestamp: T0 + seq * 15000, mimeType: "audio/wav", audio });
    assertStored(ack, { sessionId: id, sequence: seq, timestamp: T0 + seq * 15000, maxQueueSize: SLOW_MAX_QUEUE_SIZE });
  }
  await live.until((log) => live.count("transcriptSegment")(log) === sent.length, 20_000, "the live segments");
  const segments = live.of("transcriptSegment");
  assert.deepEqual(segments.map((s) => [s.seq, s.text, s.startMs, s.endMs]),
    sent.map((audio, seq) => [seq, heard(audio), seq * 15000, seq * 15000 + SLOW_DURATION_MS]));
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
});

// -- backpressure --------------------------------------------------------------------

test("backpressure: a recorder that obeys the signals buffers, resumes, gets every chunk acked and transcribed", { timeout: 40_000 }, async () => {
  const CHUNKS = 12;
  const id = sid("bp");
  const socket = await connect(SLOW_URL, { transports: ["websocket"] });
  const seen = record(socket);
  const started = await call(socket, "start-session", { sessionId: id });
  assert.deepEqual(started, { sessionId: id, status: "recording", startedAt: started.startedAt });

  const sent = Array.from({ length: CHUNKS }, (_, seq) => randomBytes(2000 + seq));
  const acks = [];
  let waits = 0;
  for (const [seq, audio] of sent.entries()) {
    const timestamp = T0 + seq * 15000;
    const ack = await call(socket, "audio-chunk", { sessionId: id, sequence: seq, timestamp, mimeType: "audio/wav", audio: toArrayBuffer(audio) });
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
  assert.deepEqual(seen.of("transcriptSegment").map((s) => [s.seq, s.text]).sort((a, b) => a[0] - b[0]),
    sent.map((audio, seq) => [seq, heard(audio)]));
  assert.deepEqual(seen.of("transcript-updated").map((u) => u.sequence).sort((a, b) => a - b), [...Array(CHUNKS).keys()]);

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
  const backlogDone = (log) => log.filter((e) => e.event === "transcriptSegment" && backlogIds.includes(e.body.sessionId)).length;

  const busy = await connect(WHISPER_URL, { transports: ["websocket"] });
  for (const id of backlogIds) {
    const ack = await call(busy, "audio-chunk", { sessionId: id, sequence: 0, timestamp: T0, mimeType: "audio/webm;codecs=opus", audio: long });
    assertStored(ack, { sessionId: id, sequence: 0, timestamp: T0, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
  }

  const recorder = await connect(WHISPER_URL, { transports: ["websocket"] });
  const latencies = [];
  const backlogAtAck = [];
  for (let seq = 0; seq < SMALL; seq++) {
    const timestamp = T0 + seq * 1500;
    const sentAt = performance.now();
    const ack = await call(recorder, "audio-chunk", { sessionId: smallId, sequence: seq, timestamp, mimeType: "audio/wav", audio: hello });
    latencies.push(Math.round((performance.now() - sentAt) * 10) / 10);
    backlogAtAck.push(backlogDone(seen.log));
    assertStored(ack, { sessionId: smallId, sequence: seq, timestamp, maxQueueSize: WHISPER_MAX_QUEUE_SIZE });
    await new Promise((resolve) => setTimeout(resolve, 100)); // a recorder's pace, spread over the busy time
  }
  console.log(`# ack latencies while whisper is busy (ms): ${latencies.join(", ")}; backlog segments done at each ack: ${backlogAtAck.join(", ")}`);
  // every small ack came while the backlog was still being transcribed
  assert.ok(backlogAtAck.at(-1) < BACKLOG, `the backlog was done before the last ack (${backlogAtAck.join(", ")})`);

  await seen.until((log) => backlogDone(log) === BACKLOG
    && log.filter((e) => e.event === "transcriptSegment" && e.body.sessionId === smallId).length === SMALL, 50_000, "every segment");
  const segments = seen.of("transcriptSegment");
  for (const segment of segments.filter((s) => backlogIds.includes(s.sessionId))) {
    assert.equal(segment.seq, 0);
    assertWords(segment.text, "speech_long.webm");
  }
  const small = segments.filter((s) => s.sessionId === smallId).sort((a, b) => a.seq - b.seq);
  assert.deepEqual(small.map((s) => [s.seq, s.startMs]), [...Array(SMALL).keys()].map((seq) => [seq, seq * 1500]));
  for (const segment of small) assertWords(segment.text, "speech_hello.wav");
});
