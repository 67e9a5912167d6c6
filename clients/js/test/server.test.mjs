// The Recorder's socket part against a REAL ScribeAI server (started by tests/test_recorder_lib.py, which
// passes SCRIBEAI_RECORDER_URL and SCRIBEAI_RECORDER_TOKEN): real socket.io-client, real Chromium timeslice
// blobs through a fake MediaRecorder, the outbox in fake-indexeddb. Skipped when run without a server.

import { afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Manager } from "socket.io-client";
import { Recorder } from "../index.js";
import { FakeMediaRecorder, collect, fakeStream, freshDB, timesliceBlobs, until } from "./support.mjs";

const URL = process.env.SCRIBEAI_RECORDER_URL;
const TOKEN = process.env.SCRIBEAI_RECORDER_TOKEN;
const UNREACHABLE = "http://127.0.0.1:9";  // discard port: nothing listens, connects fail at once
const skip = URL ? false : "SCRIBEAI_RECORDER_URL is not set: run through tests/test_recorder_lib.py";

const open = [];
afterEach(async () => {
  for (const recorder of open.splice(0)) await recorder.close();
  FakeMediaRecorder.instances.length = 0;
});

function recorder(options) {
  const rec = new Recorder({ url: URL, token: TOKEN, MediaRecorder: FakeMediaRecorder, timesliceMs: 1000,
    socketOptions: { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 }, ...options });
  open.push(rec);
  return rec;
}

async function session(sessionId, url = URL) {
  const response = await fetch(`${url}/api/sessions/${sessionId}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function tickAll(mediaRecorder) {
  while (mediaRecorder.tick()) await new Promise((resolve) => setTimeout(resolve, 5));
}

/** Start `rec`, hand over every blob (one per timeslice), stop: stop()'s result. */
async function recordAll(rec, timeoutMs = 10000) {
  await rec.start(fakeStream());
  await tickAll(FakeMediaRecorder.instances[0]);
  return rec.stop({ timeoutMs });
}

describe("Recorder against a real server", { skip }, () => {
  test("every blob of a recording is stored once, in order, and stop() reports nothing missing", async () => {
    const blobs = await timesliceBlobs();
    FakeMediaRecorder.blobs = blobs;
    const db = freshDB();
    const rec = recorder({ sessionId: `lib-${randomUUID()}`, ...db });
    const acks = collect(rec, "ack");
    const errors = collect(rec, "error");
    await rec.start(fakeStream());
    assert.equal(rec.state, "recording");
    assert.equal(rec.mimeType, "audio/webm;codecs=opus");
    const mediaRecorder = FakeMediaRecorder.instances[0];
    assert.equal(mediaRecorder.timeslice, 1000);
    mediaRecorder.tick();
    mediaRecorder.tick();  // two timeslices; stop() flushes the other two
    const result = await rec.stop({ timeoutMs: 10000 });

    assert.deepEqual(errors, []);
    assert.equal(result.drained, true);
    assert.deepEqual(result.queue, { chunks: 0, bytes: 0 });
    assert.equal(result.reply.maxSeq, 3);
    assert.deepEqual(result.reply.missing, []);
    assert.equal(result.reply.totalChunks, 4);
    assert.deepEqual(acks.map((a) => [a.sequence, a.status]).sort((a, b) => a[0] - b[0]),
      [[0, "stored"], [1, "stored"], [2, "stored"], [3, "stored"]]);
    assert.equal(rec.state, "stopped");
    const view = await session(rec.sessionId);
    assert.equal(view.totalChunks, 4);
    assert.equal(view.bytes, blobs.reduce((n, b) => n + b.size, 0));
    assert.deepEqual(await Recorder.pending(db), []);
  });

  test("an outbox filled offline survives a new page: pending() lists it, resume() sends it, sequences continue", async () => {
    const blobs = await timesliceBlobs();
    const db = freshDB();
    const sessionId = `lib-${randomUUID()}`;
    FakeMediaRecorder.blobs = blobs.slice(0, 2);
    const offline = recorder({ url: UNREACHABLE, sessionId, ...db, socketOptions: { transports: ["websocket"], reconnection: false } });
    await offline.start(fakeStream());
    await offline.close();  // the tab goes away: the two blobs are flushed into the outbox, nothing was sent
    assert.deepEqual((await Recorder.pending(db)).map(({ sessionId: id, chunks, bytes, nextSeq }) => ({ id, chunks, bytes, nextSeq })),
      [{ id: sessionId, chunks: 2, bytes: blobs[0].size + blobs[1].size, nextSeq: 2 }]);

    // the next page load
    FakeMediaRecorder.blobs = blobs.slice(2);
    const resumed = Recorder.resume({ url: URL, token: TOKEN, sessionId, MediaRecorder: FakeMediaRecorder, ...db,
      socketOptions: { transports: ["websocket"] } });
    open.push(resumed);
    const acks = collect(resumed, "ack");
    assert.equal(await resumed.flush({ timeoutMs: 10000 }), true);
    assert.deepEqual(acks.map((a) => a.sequence).sort(), [0, 1]);
    assert.deepEqual(await Recorder.pending(db), []);

    await resumed.start(fakeStream());  // record more into the same session
    await tickAll(FakeMediaRecorder.instances.at(-1));
    const result = await resumed.stop({ timeoutMs: 10000 });
    assert.deepEqual(acks.map((a) => [a.sequence, a.status]).sort((a, b) => a[0] - b[0]),
      [[0, "stored"], [1, "stored"], [2, "stored"], [3, "stored"]]);
    assert.equal(result.reply.maxSeq, 3);
    assert.deepEqual(result.reply.missing, []);
    const view = await session(sessionId);
    assert.equal(view.totalChunks, 4);
    assert.equal(view.bytes, blobs.reduce((n, b) => n + b.size, 0));
  });

  test("over HTTP long-polling only (binary as base64): every blob stored with its exact size", async () => {
    const blobs = await timesliceBlobs();
    FakeMediaRecorder.blobs = blobs;
    const rec = recorder({ sessionId: `lib-${randomUUID()}`, ...freshDB(), socketOptions: { transports: ["polling"] } });
    const connections = collect(rec, "connection");
    const result = await recordAll(rec);
    assert.equal(connections[0].transport, "polling");
    assert.equal(result.drained, true);
    assert.equal(result.reply.totalChunks, 4);
    const view = await session(rec.sessionId);
    assert.equal(view.bytes, blobs.reduce((n, b) => n + b.size, 0));
  });

  test("a network cut mid-recording: the real client reconnects, rejoins and resends; every chunk stored once", async () => {
    const blobs = await timesliceBlobs();
    FakeMediaRecorder.blobs = blobs;
    const rec = recorder({ sessionId: `lib-${randomUUID()}`, ...freshDB() });
    const acks = collect(rec, "ack");
    const connections = collect(rec, "connection");
    const joins = collect(rec, "joined");
    await rec.start(fakeStream());
    const mediaRecorder = FakeMediaRecorder.instances[0];
    mediaRecorder.tick();
    mediaRecorder.tick();
    await until(() => acks.length === 2, 5000, "two acks");
    rec.socket.io.engine.close();  // the transport dies, as when the network goes away
    mediaRecorder.tick();          // recorded while the connection is down
    await until(() => connections.some((c) => !c.connected), 5000, "the disconnect");
    const result = await rec.stop({ timeoutMs: 10000 });
    assert.equal(result.drained, true);
    assert.deepEqual(connections.map((c) => c.connected).filter((c, i, all) => i === 0 || c !== all[i - 1]), [true, false, true]);
    assert.equal(joins.length, 2);
    assert.deepEqual(acks.filter((a) => a.status === "stored").map((a) => a.sequence).sort(), [0, 1, 2, 3]);
    assert.deepEqual(result.reply.missing, []);
    const view = await session(rec.sessionId);
    assert.equal(view.totalChunks, 4);
    assert.equal(view.bytes, blobs.reduce((n, b) => n + b.size, 0));
  });

  test("a chunk whose ack was lost is resent after the reconnect and answered duplicate, then leaves the outbox", async () => {
    const blobs = await timesliceBlobs();
    const db = freshDB();
    const sessionId = `lib-${randomUUID()}`;
    FakeMediaRecorder.blobs = blobs.slice(0, 1);
    const first = recorder({ sessionId, ...db });
    await first.start(fakeStream());
    await first.stop({ timeoutMs: 10000 });
    await first.close();
    // put the acked chunk back into the outbox, as if the ack never came before the tab closed
    const { Outbox } = await import("../outbox.js");
    const outbox = await Outbox.open("scribeai-recorder", db);
    await outbox.put({ sessionId, sequence: 0, bytes: await blobs[0].arrayBuffer(), mimeType: "audio/webm;codecs=opus",
      timestamp: Date.now() });
    outbox.close();
    assert.equal((await Recorder.pending(db))[0].chunks, 1);

    const again = Recorder.resume({ url: URL, token: TOKEN, sessionId, ...db, socketOptions: { transports: ["websocket"] } });
    open.push(again);
    const joined = new Promise((resolve) => again.addEventListener("joined", (e) => resolve(e.detail), { once: true }));
    const acks = collect(again, "ack");
    const plan = (await joined).plan;
    assert.equal(await again.flush({ timeoutMs: 10000 }), true);
    assert.deepEqual(acks.map((a) => [a.sequence, a.status]), [[0, "duplicate"]]);
    assert.deepEqual(plan.alreadyStored, [0]);
    assert.deepEqual(await Recorder.pending(db), []);
  });
});

const SLOW_URL = process.env.SCRIBEAI_RECORDER_SLOW_URL;

describe("Recorder against a real server whose transcription is slow (MAX_QUEUE_SIZE=1)", { skip: SLOW_URL ? false : skip || "no slow server" }, () => {
  test("the recorder holds chunks the server cannot take yet and sends them later: all stored, none twice", async (t) => {
    FakeMediaRecorder.blobs = await timesliceBlobs();
    const db = freshDB();
    const rec = recorder({ url: SLOW_URL, sessionId: `slow-${randomUUID()}`, ...db, flow: { probeMs: 300 } });
    const acks = collect(rec, "ack");
    const levels = collect(rec, "backpressure");
    const retries = collect(rec, "retry");
    const errors = collect(rec, "error");
    const result = await recordAll(rec, 30000);
    t.diagnostic(`backpressure ${levels.map((l) => l.level).join(",")}; retries ${retries.map((r) => `${r.sequence}:${r.code}`).join(",")}`);
    assert.deepEqual(errors, []);
    // the server did push back (its queue of one was full), and the recorder waited instead of dropping
    assert.equal(levels.some((l) => l.level === "buffering" && l.canAccept === false), true);
    assert.equal(result.drained, true);
    assert.deepEqual(result.reply.missing, []);
    assert.deepEqual(acks.map((a) => a.sequence).sort(), [0, 1, 2, 3]);
    assert.equal(acks.filter((a) => a.status === "stored").length, 4);
    assert.equal((await session(rec.sessionId, SLOW_URL)).totalChunks, 4);
  });
});

// MAX_CHUNK_BYTES of 64 KiB: a chunk over it is answered too_large; one over the Engine.IO message limit (~1.1 MiB)
// would close the connection (protocol-error too_large, on a websocket a close 1009), so it must never be resent.
const SMALL_URL = process.env.SCRIBEAI_RECORDER_SMALL_URL;
const SMALL_MAX_CHUNK_BYTES = Number(process.env.SCRIBEAI_RECORDER_SMALL_MAX_CHUNK_BYTES);
const MESSAGE_LIMIT = Number(process.env.SCRIBEAI_RECORDER_SMALL_MESSAGE_LIMIT);
const filler = (size, fill) => new Blob([new Uint8Array(size).fill(fill)], { type: "audio/webm;codecs=opus" });

describe("Recorder against a real server with MAX_CHUNK_BYTES=64 KiB", { skip: SMALL_URL ? false : skip || "no small server" }, () => {
  for (const transport of ["websocket", "polling"]) {
    test(`over ${transport}: a chunk over the server's message limit is not sent, one over MAX_CHUNK_BYTES is refused; both set aside as too_large, the rest stored`, async () => {
      const blobs = await timesliceBlobs();
      const refused = filler(SMALL_MAX_CHUNK_BYTES + 1, 1);
      const huge = filler(MESSAGE_LIMIT + 1, 2);
      FakeMediaRecorder.blobs = [blobs[0], refused, blobs[1], huge, blobs[2], blobs[3]];
      const db = freshDB();
      const rec = recorder({ url: SMALL_URL, sessionId: `small-${randomUUID()}`, ...db,
        socketOptions: { transports: [transport], reconnectionDelay: 100, reconnectionDelayMax: 500 } });
      const acks = collect(rec, "ack");
      const errors = collect(rec, "error");
      const connections = collect(rec, "connection");
      const result = await recordAll(rec);

      // the connection was never closed: the huge chunk was refused here (the handshake's maxPayload), never sent
      assert.deepEqual(connections, [{ connected: true, transport }]);
      assert.equal(result.drained, true);
      assert.deepEqual(errors.map(({ code, sequence }) => [code, sequence]).sort((a, b) => a[1] - b[1]), [["too_large", 1], ["too_large", 3]]);
      const byChunk = Object.fromEntries(errors.map((e) => [e.sequence, e.message]));
      assert.match(byChunk[1], new RegExp(`^chunk 1 was refused: audio of ${SMALL_MAX_CHUNK_BYTES + 1} bytes exceeds MAX_CHUNK_BYTES \\(${SMALL_MAX_CHUNK_BYTES}\\)`));
      assert.match(byChunk[3], new RegExp(`^chunk 3 was refused: not sent: its ${MESSAGE_LIMIT + 1} bytes .*over the server's limit of ${MESSAGE_LIMIT} bytes per message; it is kept aside`));
      assert.deepEqual(acks.map((a) => [a.sequence, a.status]).sort((a, b) => a[0] - b[0]),
        [[0, "stored"], [2, "stored"], [4, "stored"], [5, "stored"]]);
      assert.deepEqual(result.reply.missing, [1, 3]);
      const rejected = await Recorder.rejected({ ...db, sessionId: rec.sessionId });
      assert.deepEqual(rejected.map((r) => [r.sequence, r.error.code, r.bytes.byteLength]),
        [[1, "too_large", SMALL_MAX_CHUNK_BYTES + 1], [3, "too_large", MESSAGE_LIMIT + 1]]);
      assert.deepEqual(await Recorder.pending(db), []);
      const view = await session(rec.sessionId, SMALL_URL);
      assert.equal(view.totalChunks, 4);
      assert.equal(view.bytes, blobs.reduce((n, b) => n + b.size, 0));
    });

    test(`over ${transport}: a page whose socket.io connection was up first (no handshake seen): the server closes it over a chunk; that chunk is set aside as too_large, sent once, the rest stored`, async () => {
      const blobs = await timesliceBlobs();
      const huge = filler(MESSAGE_LIMIT + 1, 3);
      FakeMediaRecorder.blobs = [blobs[0], huge, blobs[1], blobs[2]];
      const socketOptions = { transports: [transport], reconnectionDelay: 100, reconnectionDelayMax: 500 };
      // the page's viewer on /record and the recorder share one socket.io-client Manager, its handshake done before
      const manager = new Manager(SMALL_URL, socketOptions);
      const viewer = manager.socket("/record", { auth: { token: TOKEN } });
      try {
        await new Promise((resolve, reject) => { viewer.once("connect", resolve); viewer.once("connect_error", reject); });
        const db = freshDB();
        const rec = recorder({ url: SMALL_URL, sessionId: `small-${randomUUID()}`, ...db, socketOptions, reconnectMs: 100,
          io: (url, options) => manager.socket("/", options) });
        const acks = collect(rec, "ack");
        const errors = collect(rec, "error");
        const retries = collect(rec, "retry");
        const connections = collect(rec, "connection");
        await rec.start(fakeStream());
        assert.equal(rec.socket.io, manager);
        await tickAll(FakeMediaRecorder.instances[0]);
        const result = await rec.stop({ timeoutMs: 10000 });

        assert.deepEqual(connections.map((c) => c.connected), [true, false, true]);  // one close, not one per resend
        assert.equal(result.drained, true);
        assert.deepEqual(errors.map(({ code, sequence }) => [code, sequence]), [["too_large", 1]]);
        const sizeSaid = transport === "polling" ? "a message of \\d+ bytes" : "a message";
        assert.match(errors[0].message, new RegExp(`^chunk 1 was refused: the server closed the connection over its ${MESSAGE_LIMIT + 1} bytes: ` +
          `${sizeSaid} is over this server's limit of ${MESSAGE_LIMIT} bytes per message.*; it is kept aside`));
        assert.deepEqual(retries.filter((r) => r.sequence === 1), []);
        assert.deepEqual(acks.filter((a) => a.status === "stored").map((a) => a.sequence).sort(), [0, 2, 3]);
        assert.deepEqual(result.reply.missing, [1]);
        const rejected = await Recorder.rejected({ ...db, sessionId: rec.sessionId });
        assert.deepEqual(rejected.map((r) => [r.sequence, r.error.code, r.bytes.byteLength]), [[1, "too_large", MESSAGE_LIMIT + 1]]);
        assert.equal((await session(rec.sessionId, SMALL_URL)).totalChunks, 3);
      } finally {
        viewer.disconnect();
      }
    });
  }
});
