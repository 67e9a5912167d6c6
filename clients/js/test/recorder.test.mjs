// The Recorder's logic with a fake socket (the `io` option) and a fake MediaRecorder: what it sends, when,
// and what it keeps. The same logic against a real server: server.test.mjs.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { Recorder } from "../index.js";
import { Outbox } from "../outbox.js";
import { FakeMediaRecorder, FakeSocket, NO_ANSWER, collect, fakeServer, fakeStream, freshDB, nextEvent, until } from "./support.mjs";

const blob = (n, fill) => new Blob([new Uint8Array(n).fill(fill)], { type: "audio/webm;codecs=opus" });
const BLOBS = [blob(100, 1), blob(200, 2), blob(300, 3), blob(400, 4)];

const open = [];
afterEach(async () => {
  for (const rec of open.splice(0)) await rec.close();
  FakeMediaRecorder.instances.length = 0;
});

function make(socket, db = freshDB(), options = {}) {
  const rec = new Recorder({ url: "http://scribe.test", token: "tok", sessionId: "sess-1", MediaRecorder: FakeMediaRecorder,
    io: socket.factory(), ...db, ...options });
  open.push(rec);
  return rec;
}

async function record(rec, blobs = BLOBS) {
  FakeMediaRecorder.blobs = blobs;
  await rec.start(fakeStream());
  const mediaRecorder = FakeMediaRecorder.instances.at(-1);
  while (mediaRecorder.tick()) await new Promise((resolve) => setTimeout(resolve, 2));
  return mediaRecorder;
}

/** An outbox holding `sequences` for sess-1, as a previous page left it. */
async function leftOutbox(db, sequences) {
  const outbox = await Outbox.open("scribeai-recorder", db);
  for (const sequence of sequences) {
    await outbox.put({ sessionId: "sess-1", sequence, bytes: new Uint8Array([sequence]).buffer, mimeType: "audio/webm", timestamp: 1 });
  }
  outbox.close();
}

test("io() gets the url, the token as auth and the socketOptions", async () => {
  const socket = new FakeSocket(fakeServer().handler, { autoConnect: false });
  make(socket, freshDB(), { socketOptions: { transports: ["websocket"], path: "/socket.io/" } })._connect();
  assert.equal(socket.url, "http://scribe.test");
  assert.deepEqual(socket.options, { transports: ["websocket"], path: "/socket.io/", auth: { token: "tok" } });
});

test("close() takes off the listeners it added to its socket, its Manager and the engine, and no others", async () => {
  const socket = new FakeSocket(fakeServer().handler);
  const pages = () => {};
  socket.io.on("reconnect", pages);  // the page's own socket's, on the Manager io() gave both (see page.test.mjs)
  socket.on("transcriptSegment", pages);
  const rec = make(socket);
  rec._connect();
  await nextEvent(rec, "joined");
  assert.deepEqual([socket.io.events().reconnect_attempt, socket.io.engine.events()], [1, { handshake: 1, upgrade: 1 }]);
  await rec.close();
  assert.deepEqual(socket.io.events(), { reconnect: 1 });
  assert.deepEqual(socket.io.engine.events(), {});
  assert.deepEqual(socket.events(), { transcriptSegment: 1 });
  assert.equal(socket.connected, false);
});

test("a recording is written to the outbox, sent in order with its metadata, and the outbox empties on the acks", async () => {
  const server = fakeServer();
  const socket = new FakeSocket(server.handler);
  const rec = make(socket);
  const states = collect(rec, "state");
  const acks = collect(rec, "ack");
  await record(rec);
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.deepEqual(states.map((s) => s.state), ["connecting", "recording", "stopping", "stopped"]);
  assert.deepEqual(socket.chunkSequences(), [0, 1, 2, 3]);
  const first = server.stored.get(0);
  assert.equal(first.mimeType, "audio/webm;codecs=opus");
  assert.equal(first.size, 100);
  assert.equal(first.audio.byteLength, 100);
  assert.equal(first.checksum.length, 64);
  assert.deepEqual(acks.map((a) => [a.sequence, a.status]), [[0, "stored"], [1, "stored"], [2, "stored"], [3, "stored"]]);
  assert.equal(result.drained, true);
  const stop = socket.sent.find(([event]) => event === "stopSession");
  assert.deepEqual(stop[1], { sessionId: "sess-1", lastSeq: 3 });
  // stopSession goes after the last chunk's ack
  assert.equal(socket.sent.indexOf(stop), socket.sent.length - 1);
  assert.deepEqual(rec.queue, { chunks: 0, bytes: 0 });
  assert.equal(FakeMediaRecorder.instances[0].stream.track.stopped, false);  // a stream we were given is not ours to stop
});

test("every chunk is in IndexedDB before it is sent", async () => {
  const db = freshDB();
  const seenInOutbox = [];
  const server = fakeServer();
  const rec = make(new FakeSocket(async (event, payload) => {
    if (event === "audio-chunk") {
      const outbox = await Outbox.open("scribeai-recorder", db);
      seenInOutbox.push((await outbox.get("sess-1", payload.sequence))?.size ?? null);
      outbox.close();
    }
    return server.handler(event, payload);
  }), db);
  await record(rec);
  await rec.stop({ timeoutMs: 2000 });
  assert.deepEqual(seenInOutbox, [100, 200, 300, 400]);
  assert.deepEqual(await Recorder.pending(db), []);
});

test("overloaded: the chunk is held in the outbox and resent after retryAfterMs; nothing is dropped", async () => {
  const refusedAt = [];
  const sentAt = new Map();
  const server = fakeServer({
    onChunk: (payload) => {
      sentAt.set(payload.sequence, [...(sentAt.get(payload.sequence) ?? []), Date.now()]);
      if (payload.sequence === 1 && refusedAt.length < 2) {
        refusedAt.push(Date.now());
        return { error: { code: "overloaded", message: "over its hard limit", retryAfterMs: 150 } };
      }
      return undefined;
    },
  });
  const socket = new FakeSocket(server.handler);
  const rec = make(socket);
  const levels = collect(rec, "backpressure");
  const retries = collect(rec, "retry");
  const errors = collect(rec, "error");
  await record(rec);
  const result = await rec.stop({ timeoutMs: 3000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 1, 2, 3]);
  assert.equal(sentAt.get(1).length, 3);
  assert.ok(sentAt.get(1)[1] - refusedAt[0] >= 145, `resent after ${sentAt.get(1)[1] - refusedAt[0]} ms`);
  assert.ok(sentAt.get(1)[2] - refusedAt[1] >= 145, `resent after ${sentAt.get(1)[2] - refusedAt[1]} ms`);
  assert.deepEqual(retries.map((r) => [r.sequence, r.code, r.retryAfterMs]), [[1, "overloaded", 150], [1, "overloaded", 150]]);
  assert.equal(levels.some((l) => l.level === "overloaded" && l.overloaded && l.retryAfterMs === 150), true);
  assert.equal(levels.at(-1).level, "ok");
  assert.deepEqual(errors, []);
});

test("never more chunks in flight than the last credits allowed", async () => {
  const db = freshDB();
  await leftOutbox(db, [0, 1, 2, 3, 4, 5, 6, 7]);
  let inFlight = 0;
  let most = 0;
  const stored = new Map();
  const socket = new FakeSocket(async (event, payload) => {
    if (event !== "audio-chunk") return fakeServer({ stored }).handler(event, payload);
    inFlight += 1;
    most = Math.max(most, inFlight);
    await new Promise((resolve) => setTimeout(resolve, 15));
    inFlight -= 1;
    stored.set(payload.sequence, payload);
    return { sessionId: "sess-1", sequence: payload.sequence, chunkId: "c", duplicate: false, canAccept: true, credits: 2 };
  });
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: socket.factory(), ...db });
  open.push(rec);
  assert.equal(await rec.flush({ timeoutMs: 3000 }), true);
  assert.equal(most, 2);
  assert.deepEqual(socket.chunkSequences(), [0, 1, 2, 3, 4, 5, 6, 7]);
});

test("canAccept false holds the rest until the server's backpressure says ok", async () => {
  const db = freshDB();
  await leftOutbox(db, [0, 1, 2]);
  let buffering = true;
  const stored = new Map();
  const socket = new FakeSocket((event, payload) => {
    if (event !== "audio-chunk") return fakeServer({ stored }).handler(event, payload);
    stored.set(payload.sequence, payload);
    return { sessionId: "sess-1", sequence: payload.sequence, chunkId: "c", duplicate: false, canAccept: !buffering,
      credits: buffering ? 0 : 5 };
  });
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: socket.factory(), ...db,
    flow: { probeMs: 60000 } });
  open.push(rec);
  const level = await nextEvent(rec, "backpressure", (b) => b.level === "buffering");
  assert.equal(level.canAccept, false);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(socket.chunkSequences(), [0]);
  assert.deepEqual(rec.queue, { chunks: 2, bytes: 2 });
  buffering = false;
  socket.push("backpressure", { canAccept: true, state: "ok", reason: "queue", queueSize: 0, fillRatio: 0 });
  assert.equal(await rec.flush({ timeoutMs: 2000 }), true);
  assert.deepEqual(socket.chunkSequences(), [0, 1, 2]);
});

test("while canAccept stays false, one probe chunk goes every probeMs (a lost 'ok' cannot stall the outbox)", async () => {
  const db = freshDB();
  await leftOutbox(db, [0, 1, 2]);
  const times = [];
  const socket = new FakeSocket((event, payload) => {
    if (event !== "audio-chunk") return fakeServer().handler(event, payload);
    times.push(Date.now());
    return { sessionId: "sess-1", sequence: payload.sequence, chunkId: "c", duplicate: false, canAccept: false, credits: 0 };
  });
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: socket.factory(), ...db, flow: { probeMs: 120 } });
  open.push(rec);
  assert.equal(await rec.flush({ timeoutMs: 3000 }), true);
  assert.equal(times.length, 3);
  assert.ok(times[1] - times[0] >= 115 && times[2] - times[1] >= 115, `gaps ${times[1] - times[0]}, ${times[2] - times[1]}`);
});

test("on reconnect: joinSession with the transcript's lastSeq, then the outbox is resent in order; duplicates leave it", async () => {
  const db = freshDB();
  await leftOutbox(db, [0, 1, 2, 3, 4]);
  const stored = new Map([[0, {}], [2, {}]]);  // acked before, the acks were lost
  const server = fakeServer({ stored });
  let answer = true;
  const socket = new FakeSocket((event, payload) => (event === "audio-chunk" && !answer ? NO_ANSWER : server.handler(event, payload)));
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: socket.factory(), ...db });
  open.push(rec);
  const joined = await nextEvent(rec, "joined");
  assert.deepEqual(server.joins[0], { sessionId: "sess-1", lastSeq: -1 });
  assert.deepEqual(joined.plan.resend, [0, 1, 2, 3, 4]);
  assert.deepEqual(joined.plan.alreadyStored, [0, 2]);
  const acks = collect(rec, "ack");
  assert.equal(await rec.flush({ timeoutMs: 2000 }), true);
  assert.deepEqual(socket.chunkSequences(), [0, 1, 2, 3, 4]);
  assert.deepEqual(acks.map((a) => [a.sequence, a.status]),
    [[0, "duplicate"], [1, "stored"], [2, "duplicate"], [3, "stored"], [4, "stored"]]);

  // a transcript arrives (once live, once more in a replay), then the connection drops and comes back
  const segments = collect(rec, "segment");
  const segment = { id: "g1", sessionId: "sess-1", seq: 3, fromSeq: 2, toSeq: 3, startMs: 0, endMs: 900, text: "hello" };
  socket.push("transcriptSegment", segment);
  socket.push("transcriptSegment", { ...segment });
  socket.push("transcriptSegment", { ...segment, id: "other-session", sessionId: "sess-2" });
  assert.equal(segments.length, 1);
  assert.deepEqual(rec.segments.map((s) => s.id), ["g1"]);
  answer = false;
  await leftOutbox(db, []);
  socket.drop();
  socket.connect();
  await until(() => server.joins.length === 2, 2000, "the second join");
  assert.deepEqual(server.joins[1], { sessionId: "sess-1", lastSeq: 3 });
});

test("interim: true asks for captions at every join; captions come as interim events, finals replace them", async () => {
  const server = fakeServer();
  const socket = new FakeSocket(server.handler);
  const rec = make(socket, freshDB(), { interim: true });
  const interims = collect(rec, "interim");
  const segments = collect(rec, "segment");
  rec._connect();
  await until(() => server.joins.length === 1, 2000, "the join");
  assert.deepEqual(server.joins[0], { sessionId: "sess-1", lastSeq: -1, interim: true });
  const caption = (text, stable, revision) => ({ sessionId: "sess-1", startMs: 0, endMs: 2000, fromSeq: 0, toSeq: 1, text, stable, revision });
  socket.push("transcriptInterim", caption("Hello", 0, 1));
  socket.push("transcriptInterim", caption("Hello there", 5, 2));
  socket.push("transcriptInterim", caption("Hello there", 5, 2));  // repeated: no event
  socket.push("transcriptInterim", { ...caption("Someone else", 0, 9), sessionId: "sess-2" });
  assert.deepEqual(interims.map((d) => [d.caption.confirmed, d.caption.tentative, d.interim.revision]),
    [["", "Hello", 1], ["Hello", " there", 2]]);
  assert.deepEqual(rec.live.captions.map((c) => c.revision), [2]);
  socket.push("transcriptSegment", { id: "g1", sessionId: "sess-1", seq: 1, fromSeq: 0, toSeq: 1, startMs: 0, endMs: 2100, text: "Hello there." });
  assert.deepEqual(segments.map((d) => [d.segment.id, d.replaced.map((c) => c.revision)]), [["g1", [2]]]);
  assert.deepEqual(rec.live.captions, []);
  socket.drop();
  socket.connect();
  await until(() => server.joins.length === 2, 2000, "the second join");
  assert.deepEqual(server.joins[1], { sessionId: "sess-1", lastSeq: 1, interim: true });
  // a caption whose window gave no final: dropped once every chunk is transcribed
  const completed = collect(rec, "completed");
  socket.push("transcriptInterim", { ...caption("Thank you.", 0, 1), startMs: 3000, endMs: 4000 });
  socket.push("session-completed", { sessionId: "sess-1" });
  assert.deepEqual(completed.map((d) => [d.sessionId, d.dropped.map((c) => c.startMs)]), [["sess-1", [3000]]]);
  assert.deepEqual(rec.live.captions, []);
});

test("a browser that names no container (type \"\" everywhere): each chunk's mimeType comes from the recording's bytes", async () => {
  class Untyped extends FakeMediaRecorder {
    static isTypeSupported() { return false; }  // the library asks for nothing: the browser records its default
  }
  const ogg = (n) => new Blob([new Uint8Array([0x4f, 0x67, 0x67, 0x53, n])]);  // type "": page-aligned Ogg blobs
  const server = fakeServer();
  const rec = make(new FakeSocket(server.handler), freshDB(), { MediaRecorder: Untyped });
  await record(rec, [ogg(1), ogg(2)]);
  await rec.stop({ timeoutMs: 2000 });
  assert.equal(rec.mimeType, null);
  assert.deepEqual([...server.stored.values()].map((c) => c.mimeType), ["audio/ogg", "audio/ogg"]);
});

test("each chunk is sent with the time it recorded (durationMs, whole ms, a pause not counted)", async () => {
  const server = fakeServer();
  const rec = make(new FakeSocket(server.handler));
  FakeMediaRecorder.blobs = BLOBS;
  const startedAt = Date.now();
  await rec.start(fakeStream());
  const mediaRecorder = FakeMediaRecorder.instances.at(-1);
  await new Promise((resolve) => setTimeout(resolve, 20));
  mediaRecorder.tick();                                        // chunk 0
  rec.pause();                                                 // chunk 1: requestData as it pauses
  const pausedAt = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 80));
  const resumedAt = Date.now();
  rec.resume();
  await new Promise((resolve) => setTimeout(resolve, 10));
  mediaRecorder.tick();                                        // chunk 2: recorded from the resume on
  const tickedAt = Date.now();
  await rec.stop({ timeoutMs: 2000 });
  const durations = [0, 1, 2].map((seq) => server.stored.get(seq).durationMs);
  assert.ok(durations.every((ms) => Number.isInteger(ms) && ms >= 1), durations);  // chunk 1 took ~0 ms: sent as 1
  assert.ok(durations[0] >= 1 && durations[0] <= pausedAt - startedAt, durations);
  // the 80 ms pause is no audio: chunk 2 counts the time from the resume to its blob, not from the pause (counted,
  // it would reach tickedAt - pausedAt)
  assert.ok(durations[2] >= 1 && durations[2] < tickedAt - pausedAt - 40, [durations, tickedAt - resumedAt, tickedAt - pausedAt]);
});

test("without interim: true, joinSession does not ask for captions", async () => {
  const server = fakeServer();
  const rec = make(new FakeSocket(server.handler));
  rec._connect();
  await until(() => server.joins.length === 1, 2000, "the join");
  assert.deepEqual(server.joins[0], { sessionId: "sess-1", lastSeq: -1 });
});

test("a chunk in flight when the connection drops is resent after the rejoin", async () => {
  const server = fakeServer();
  let swallow = true;
  const socket = new FakeSocket((event, payload) => {
    if (event === "audio-chunk" && payload.sequence === 1 && swallow) return NO_ANSWER;
    return server.handler(event, payload);
  });
  const rec = make(socket);
  const connections = collect(rec, "connection");
  await record(rec, BLOBS.slice(0, 2));
  await until(() => socket.chunkSequences().includes(1), 2000, "the send of chunk 1");
  assert.deepEqual(rec.queue, { chunks: 1, bytes: 200 });
  swallow = false;
  socket.drop();
  setTimeout(() => socket.connect(), 20);
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual(socket.chunkSequences(), [0, 1, 1]);
  assert.deepEqual([...server.stored.keys()], [0, 1]);
  assert.deepEqual(connections.map((c) => c.connected), [true, false, true]);
  assert.equal(connections[0].transport, "websocket");
});

test("an unanswered chunk times out and is resent", async () => {
  const server = fakeServer();
  let tries = 0;
  const socket = new FakeSocket((event, payload) => {
    if (event === "audio-chunk" && tries++ === 0) return NO_ANSWER;
    return server.handler(event, payload);
  });
  const rec = make(socket, freshDB(), { ackTimeoutMs: 80, flow: { retryMs: 10 } });
  const retries = collect(rec, "retry");
  await record(rec, BLOBS.slice(0, 1));
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual(socket.chunkSequences(), [0, 0]);
  assert.deepEqual(retries.map((r) => [r.sequence, r.code]), [[0, "timeout"]]);
});

test("a chunk refused for good is set aside with an error event, not deleted; the others are stored", async () => {
  const db = freshDB();
  const server = fakeServer({
    onChunk: (payload) => (payload.sequence === 1 ? { error: { code: "invalid", message: "bad mimeType", sequence: 1 } } : undefined),
  });
  const rec = make(new FakeSocket(server.handler), db);
  const errors = collect(rec, "error");
  await record(rec, BLOBS.slice(0, 3));
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 2]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "invalid");
  assert.equal(errors[0].sequence, 1);
  const rejected = await Recorder.rejected({ ...db, sessionId: "sess-1" });
  assert.deepEqual(rejected.map((r) => [r.sequence, r.error.code, r.bytes.byteLength]), [[1, "invalid", 200]]);
  assert.deepEqual(await Recorder.pending(db), []);
});

/** A server that closes the connection when chunk `over` comes (a message over its limit), as `close(socket)` says. */
function closingServer(over, close) {
  const server = fakeServer();
  const socket = new FakeSocket((event, payload) => {
    if (event !== "audio-chunk" || payload.sequence !== over) return server.handler(event, payload);
    setTimeout(() => close(socket), 1);
    return NO_ANSWER;
  });
  return { server, socket };
}

const OVERSIZED = [blob(100, 1), blob(5000, 2), blob(200, 3), blob(300, 4)];

test("a websocket closed with 1009 over a chunk (no protocol-error): that chunk is set aside as too_large, sent once; the rest is stored", async () => {
  const db = freshDB();
  const { server, socket } = closingServer(1, (s) => {
    s.drop("transport close", { description: "websocket connection closed",
      context: { code: 1009, reason: "message over the server's limit of 1000 bytes" } });
    setTimeout(() => s.connect(), 20);  // socket.io-client reconnects by itself after a transport close
  });
  const rec = make(socket, db);
  const errors = collect(rec, "error");
  const retries = collect(rec, "retry");
  await record(rec, OVERSIZED);
  const result = await rec.stop({ timeoutMs: 3000 });
  assert.equal(result.drained, true);
  assert.deepEqual(socket.chunkSequences().filter((seq) => seq === 1), [1]);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 2, 3]);
  assert.deepEqual(errors.map(({ code, sequence }) => [code, sequence]), [["too_large", 1]]);
  assert.match(errors[0].message, /^chunk 1 was refused: the server closed the connection over its 5000 bytes: message over the server's limit of 1000 bytes; it is kept aside/);
  assert.deepEqual(retries.filter((r) => r.sequence === 1), []);
  const rejected = await Recorder.rejected({ ...db, sessionId: "sess-1" });
  assert.deepEqual(rejected.map((r) => [r.sequence, r.error.code, r.bytes.byteLength]), [[1, "too_large", 5000]]);
  assert.deepEqual(result.reply.missing, []);  // the fake server does not count gaps
});

test("protocol-error too_large, then the server's disconnect: the chunk over its limit is set aside, later ones over it are not sent", async () => {
  const db = freshDB();
  const { server, socket } = closingServer(1, (s) => {
    s.push("protocol-error", { code: "too_large", message: "a message of 6669 bytes is over this server's limit of 1000 bytes per message",
      error: "Message too large", details: { limit: 1000, size: 6669 } });
    s.drop("io server disconnect");  // the Recorder reconnects by itself after reconnectMs
  });
  const rec = make(socket, db, { reconnectMs: 20 });
  const errors = collect(rec, "error");
  await record(rec, [...OVERSIZED, blob(1001, 5), blob(1000, 6)]);
  const result = await rec.stop({ timeoutMs: 3000 });
  assert.equal(result.drained, true);
  assert.deepEqual(socket.chunkSequences().filter((seq) => seq === 1 || seq === 4), [1]);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 2, 3, 5]);
  assert.deepEqual(errors.map(({ code, sequence }) => [code, sequence]).sort(), [["too_large", 1], ["too_large", 4]]);
  const byChunk = Object.fromEntries(errors.map((e) => [e.sequence, e.message]));
  assert.match(byChunk[1], /^chunk 1 was refused: the server closed the connection over its 5000 bytes: a message of 6669 bytes is over/);
  assert.match(byChunk[4], /^chunk 4 was refused: not sent: its 1001 bytes are over the server's limit of 1000 bytes per message; it is kept aside/);
  const rejected = await Recorder.rejected({ ...db, sessionId: "sess-1" });
  assert.deepEqual(rejected.map((r) => [r.sequence, r.error.code, r.bytes.byteLength]), [[1, "too_large", 5000], [4, "too_large", 1001]]);
});

test("a close over a message too large that no chunk in flight is over (another socket's): a protocol error, the chunks resent", async () => {
  let closed = false;
  const server = fakeServer();
  const socket = new FakeSocket((event, payload) => {
    if (event === "audio-chunk" && payload.sequence === 1 && !closed) {
      closed = true;
      setTimeout(() => {
        socket.push("protocol-error", { code: "too_large", message: "a message is over this server's limit of 1000 bytes per message",
          details: { limit: 1000 } });
        socket.drop("transport close", { context: { code: 1009, reason: "message over the server's limit of 1000 bytes" } });
        setTimeout(() => socket.connect(), 20);
      }, 1);
      return NO_ANSWER;
    }
    return server.handler(event, payload);
  });
  const rec = make(socket);
  const errors = collect(rec, "error");
  await record(rec, BLOBS.slice(0, 3));
  const result = await rec.stop({ timeoutMs: 3000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 1, 2]);
  assert.deepEqual(errors.map(({ code, sequence }) => [code, sequence]), [["protocol", undefined]]);
  assert.match(errors[0].message, /^the server closed the connection: a message is over this server's limit of 1000 bytes per message$/);
});

test("storage full: a clear storage_full error, the new chunk is still sent from memory, stored chunks stay safe", async () => {
  const db = freshDB();
  let quota = 10 * 1024 * 1024;
  const storage = { estimate: async () => ({ usage: 1000, quota }) };
  const server = fakeServer();
  const socket = new FakeSocket(server.handler, { autoConnect: false });  // offline while recording
  const rec = make(socket, db, { storage });
  const errors = collect(rec, "error");
  FakeMediaRecorder.blobs = BLOBS.slice(0, 2);
  await rec.start(fakeStream());
  const mediaRecorder = FakeMediaRecorder.instances[0];
  mediaRecorder.tick();
  await until(() => rec.queue.chunks === 1, 2000, "chunk 0 queued");
  quota = 1000 + 150;  // chunk 1 (200 bytes) does not fit
  mediaRecorder.tick();
  await until(() => rec.queue.chunks === 2, 2000, "chunk 1 queued");
  assert.deepEqual(errors.map((e) => [e.code, e.sequence]), [["storage_full", 1]]);
  assert.match(errors[0].message, /storage is full/);
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.chunks, p.bytes, p.nextSeq]), [[1, 100, 2]]);
  socket.connect();
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()], [0, 1]);
  assert.equal(server.stored.get(1).audio.byteLength, 200);
});

test("IndexedDB throwing QuotaExceededError: storage_full once, the chunk is sent from memory, the outbox is intact", async (t) => {
  const db = freshDB();
  const append = Outbox.prototype.append;
  let refuse = false;
  t.after(() => { Outbox.prototype.append = append; });
  Outbox.prototype.append = function (...args) {
    if (refuse) return Promise.reject(new DOMException("The quota has been exceeded.", "QuotaExceededError"));
    return append.apply(this, args);
  };
  const server = fakeServer();
  const socket = new FakeSocket(server.handler, { autoConnect: false });
  const rec = make(socket, db);
  const errors = collect(rec, "error");
  FakeMediaRecorder.blobs = BLOBS;
  await rec.start(fakeStream());
  const mediaRecorder = FakeMediaRecorder.instances[0];
  mediaRecorder.tick();
  await until(() => rec.queue.chunks === 1, 2000, "chunk 0 queued");
  refuse = true;
  mediaRecorder.tick();
  mediaRecorder.tick();
  await until(() => rec.queue.chunks === 3, 2000, "chunks 1 and 2 queued");
  assert.deepEqual(errors.map((e) => [e.code, e.sequence]), [["storage_full", 1]]);  // once per episode
  assert.match(errors[0].message, /QuotaExceededError/);
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.chunks, p.nextSeq]), [[1, 3]]);
  refuse = false;
  socket.connect();
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 1, 2, 3]);
  assert.deepEqual([1, 2].map((seq) => server.stored.get(seq).audio.byteLength), [200, 300]);
});

test("a chunk refused for good is not reported lost on the next join", async () => {
  const db = freshDB();
  await leftOutbox(db, [0, 1, 2]);
  const outbox = await Outbox.open("scribeai-recorder", db);
  await outbox.reject("sess-1", 1, { code: "invalid", message: "bad" });
  outbox.close();
  const server = fakeServer({ stored: new Map([[0, {}], [2, {}]]) });  // the server lacks 1
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: new FakeSocket(server.handler).factory(), ...db });
  open.push(rec);
  const errors = collect(rec, "error");
  const joined = await nextEvent(rec, "joined");
  assert.deepEqual(joined.reply.missing, [1]);
  assert.deepEqual(joined.plan.lost, []);
  assert.equal(await rec.flush({ timeoutMs: 2000 }), true);
  assert.deepEqual(errors, []);
});

test("a sequence the server lacks and no outbox holds is reported as chunks_lost", async () => {
  const db = freshDB();
  const outbox = await Outbox.open("scribeai-recorder", db);
  await outbox.updateMeta("sess-1", { nextSeq: 3 });
  outbox.close();
  const server = fakeServer({ stored: new Map([[0, {}], [2, {}]]) });
  const rec = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: new FakeSocket(server.handler).factory(), ...db });
  open.push(rec);
  const error = await nextEvent(rec, "error");
  assert.equal(error.code, "chunks_lost");
  assert.match(error.message, /sequences 1 /);
});

test("sequences continue after a reload: a new Recorder on the same database records into the same session", async () => {
  const db = freshDB();
  const offline = new FakeSocket(() => NO_ANSWER, { autoConnect: false });
  const first = make(offline, db);
  await record(first, BLOBS.slice(0, 2));
  await first.close();
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.sessionId, p.chunks, p.nextSeq]), [["sess-1", 2, 2]]);

  const server = fakeServer();
  const socket = new FakeSocket(server.handler);
  const second = make(socket, db);
  assert.equal(second.sessionId, "sess-1");
  await record(second, BLOBS.slice(2));
  const result = await second.stop({ timeoutMs: 2000 });
  assert.equal(result.drained, true);
  assert.deepEqual([...server.stored.keys()].sort(), [0, 1, 2, 3]);
  assert.equal(server.stored.get(2).audio.byteLength, 300);
  assert.equal(second.nextSequence, 4);
});

test("stop with the server unreachable: drained false after the timeout, the chunks stay in the outbox", async () => {
  const db = freshDB();
  const rec = make(new FakeSocket(() => NO_ANSWER, { autoConnect: false }), db);
  const errors = collect(rec, "error");
  await record(rec, BLOBS.slice(0, 2));
  const result = await rec.stop({ timeoutMs: 150 });
  assert.equal(result.drained, false);
  assert.equal(result.reply, null);
  assert.deepEqual(result.queue, { chunks: 2, bytes: 300 });
  assert.deepEqual(errors.map((e) => e.code), ["stop_incomplete"]);
  assert.equal(rec.state, "stopped");
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.sessionId, p.chunks, p.bytes]), [["sess-1", 2, 300]]);
});

test("a stop the server did not hear of is sent once the outbox empties, on a later page too", async () => {
  const db = freshDB();
  const offline = make(new FakeSocket(() => NO_ANSWER, { autoConnect: false }), db);
  await record(offline, BLOBS.slice(0, 2));
  assert.equal((await offline.stop({ timeoutMs: 100 })).reply, null);
  await offline.close();
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.sessionId, p.chunks, p.stopPending]), [["sess-1", 2, true]]);

  const server = fakeServer();
  const socket = new FakeSocket(server.handler);
  const later = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: socket.factory(), ...db });
  open.push(later);
  const stopped = await nextEvent(later, "sessionStopped", () => true, 3000);
  assert.equal(stopped.reply.maxSeq, 1);
  const events = socket.sent.map(([event, body]) => [event, body.sequence ?? body.lastSeq ?? null]);
  assert.deepEqual(events, [["joinSession", -1], ["audio-chunk", 0], ["audio-chunk", 1], ["stopSession", 1]]);
  // told: nothing is pending, a third page does not stop it again
  await later.close();
  assert.deepEqual(await Recorder.pending(db), []);
  const third = new FakeSocket(server.handler);
  const again = Recorder.resume({ url: "http://scribe.test", sessionId: "sess-1", io: third.factory(), ...db });
  open.push(again);
  await nextEvent(again, "joined");
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(third.sent.map(([event]) => event), ["joinSession"]);
});

test("pause and resume: the audio so far is flushed, the server is told, the states follow", async () => {
  const server = fakeServer();
  const socket = new FakeSocket(server.handler);
  const rec = make(socket);
  const states = collect(rec, "state");
  FakeMediaRecorder.blobs = BLOBS;
  await rec.start(fakeStream());
  await nextEvent(rec, "joined");
  rec.pause();
  const mediaRecorder = FakeMediaRecorder.instances[0];
  assert.equal(mediaRecorder.state, "paused");
  await until(() => server.stored.has(0), 2000, "the flushed chunk 0");
  rec.resume();
  assert.equal(mediaRecorder.state, "recording");
  await rec.stop({ timeoutMs: 2000 });
  assert.deepEqual(states.map((s) => s.state), ["connecting", "recording", "paused", "recording", "stopping", "stopped"]);
  const events = socket.sent.map(([event]) => event).filter((e) => e.endsWith("-session"));
  assert.deepEqual(events, ["pause-session", "resume-session"]);
});

test("the browser stopping the MediaRecorder on its own: an error, state error, the last blob still delivered", async () => {
  const server = fakeServer();
  const rec = make(new FakeSocket(server.handler));
  const errors = collect(rec, "error");
  FakeMediaRecorder.blobs = BLOBS.slice(0, 2);
  await rec.start(fakeStream());
  FakeMediaRecorder.instances[0].fail();
  await nextEvent(rec, "state", (s) => s.state === "error");
  assert.deepEqual(errors.map((e) => e.code), ["recorder"]);
  assert.equal(await rec.flush({ timeoutMs: 2000 }), true);
  assert.deepEqual([...server.stored.keys()], [0]);
  const result = await rec.stop({ timeoutMs: 2000 });
  assert.equal(result.reply.maxSeq, 0);
  assert.equal(rec.state, "stopped");
});

test("two stop() calls at once stop once", async () => {
  const socket = new FakeSocket(fakeServer().handler);
  const rec = make(socket);
  await record(rec, BLOBS.slice(0, 1));
  const [a, b] = await Promise.all([rec.stop({ timeoutMs: 2000 }), rec.stop({ timeoutMs: 2000 })]);
  assert.equal(a, b);
  assert.equal(socket.sent.filter(([event]) => event === "stopSession").length, 1);
});

test("a title goes out once with start-session when recording starts", async () => {
  const socket = new FakeSocket(fakeServer().handler);
  const rec = make(socket, freshDB(), { title: "Weekly sync" });
  await record(rec, BLOBS.slice(0, 1));
  await rec.stop({ timeoutMs: 2000 });
  const starts = socket.sent.filter(([event]) => event === "start-session").map(([, body]) => body);
  assert.deepEqual(starts, [{ title: "Weekly sync", sessionId: "sess-1" }]);
});

test("a refused token gives an unauthorized error; setToken() reconnects with the new one", async () => {
  const socket = new FakeSocket(fakeServer().handler, { autoConnect: false });
  const rec = make(socket);
  rec._connect();
  const error = nextEvent(rec, "error");
  socket.push("connect_error", Object.assign(new Error("unauthorized"), { data: { code: "unauthorized", message: "token expired" } }));
  assert.equal((await error).code, "unauthorized");
  rec.setToken("fresh");
  assert.deepEqual(socket.auth, { token: "fresh" });
  assert.equal(socket.connected, true);
});

test("an hour of 1 s chunks recorded offline: 3,600 in the outbox, counted by pending(), resent in order once online", async () => {
  const HOUR = 3600;
  const db = freshDB();
  const server = fakeServer({ credits: 8 });
  let online = false;
  const socket = new FakeSocket((event, payload) => (online ? server.handler(event, payload) : NO_ANSWER), { autoConnect: false });
  const rec = make(socket, db, { timesliceMs: 1000 });
  FakeMediaRecorder.blobs = Array.from({ length: HOUR }, (_, i) => blob(4000, i % 251));  // ~4 kB: a second of opus
  await rec.start(fakeStream());
  assert.equal(FakeMediaRecorder.instances[0].timeslice, 1000);
  while (FakeMediaRecorder.instances[0].tick());
  await until(() => rec.nextSequence === HOUR, 60_000, "an hour of chunks in the outbox");
  assert.deepEqual((await Recorder.pending(db)).map((p) => [p.chunks, p.bytes]), [[HOUR, HOUR * 4000]]);
  online = true;
  socket.connect();
  await until(() => rec.queue.chunks === 0, 60_000, "the outbox resent");
  assert.deepEqual(socket.chunkSequences(), Array.from({ length: HOUR }, (_, i) => i));
  assert.equal(server.stored.size, HOUR);
});
