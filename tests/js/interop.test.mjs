// The real socket.io-client against a real ScribeAI server (started by tests/test_js_interop.py).
// Every test asserts exact values: the acks' bodies, the bytes on disk (sha256), the REST answers.

import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac, randomBytes, randomUUID } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { io, Manager } from "socket.io-client";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this suite through tests/test_js_interop.py`);
  return value;
}

const URL = required("SCRIBEAI_URL");
const STORAGE_DIR = required("SCRIBEAI_STORAGE_DIR");
const MAX_CHUNK_BYTES = Number(required("SCRIBEAI_MAX_CHUNK_BYTES"));
const SMALL_URL = required("SCRIBEAI_SMALL_URL");
const SMALL_STORAGE_DIR = required("SCRIBEAI_SMALL_STORAGE_DIR");
const SMALL_MAX_CHUNK_BYTES = Number(required("SCRIBEAI_SMALL_MAX_CHUNK_BYTES"));
const ALICE = required("SCRIBEAI_TOKEN_ALICE");
const BOB = required("SCRIBEAI_TOKEN_BOB");
const EXPIRED = required("SCRIBEAI_TOKEN_EXPIRED");
// An idle connection may send this many chunks before it should wait (PROTOCOL.md: credits, high watermark 0.85).
const IDLE_CREDITS = Math.floor(0.85 * Number(required("SCRIBEAI_MAX_QUEUE_SIZE")));
const MIB = 1024 * 1024;
const T0 = 1_732_350_000_000;

// -- helpers ------------------------------------------------------------------

const sockets = new Set();

function closeAll() {
  for (const socket of sockets) socket.disconnect();
  sockets.clear();
}
afterEach(closeAll);
after(closeAll);

/** A socket with its own connection (forceNew) that never reconnects unless asked to; closed after the test unless `keep`. */
function open({ url = URL, namespace = "/", token = ALICE, keep = false, ...options } = {}) {
  const socket = io(url + namespace, {
    auth: token === null ? undefined : { token },
    forceNew: true,
    reconnection: false,
    timeout: 5000,
    ...options,
  });
  if (!keep) sockets.add(socket);
  return socket;
}

function connected(socket, ms = 5000) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve(socket);
    const timer = setTimeout(() => reject(new Error(`no connect within ${ms} ms`)), ms);
    socket.once("connect", () => { clearTimeout(timer); resolve(socket); });
    socket.once("connect_error", (err) => { clearTimeout(timer); reject(err); });
  });
}

const connect = (options) => connected(open(options));

/** The connect_error a refused socket gets (and a failure if it connects instead). */
function refusal(socket, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect_error within ${ms} ms`)), ms);
    socket.once("connect", () => { clearTimeout(timer); reject(new Error("connected, expected a refusal")); });
    socket.once("connect_error", (err) => { clearTimeout(timer); resolve(err); });
  });
}

/** The first `event` whose body satisfies `match`. */
function next(socket, event, match = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.off(event, listener); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    function listener(body) {
      if (!match(body)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(body);
    }
    socket.on(event, listener);
  });
}

/** emitWithAck with a timeout; a disconnect fails it at once, with its reason, instead of at the timeout. */
function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const dropped = (reason) => reject(new Error(`${event}: disconnected (${reason}) before the ack`));
    socket.once("disconnect", dropped);
    socket.timeout(10_000).emitWithAck(event, ...args)
      .then(resolve, reject)
      .finally(() => socket.off("disconnect", dropped));
  });
}

function chunk(sessionId, sequence, audio, extra = {}) {
  return { sessionId, sequence, timestamp: T0 + sequence * 15000, mimeType: "audio/webm;codecs=opus", audio, ...extra };
}

const sid = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;
const bytesOf = (audio) => (audio instanceof ArrayBuffer ? Buffer.from(audio) : Buffer.from(audio.buffer, audio.byteOffset, audio.byteLength));
const sha256 = (audio) => createHash("sha256").update(bytesOf(audio)).digest("hex");
const toArrayBuffer = (buf) => buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
const fileName = (sessionId, seq, ext = "webm") => `${sessionId}_${String(seq).padStart(4, "0")}.${ext}`;

/** { fileName: sha256 } of a session's chunk folder; {} when the folder does not exist. */
async function storedFiles(sessionId, dir = STORAGE_DIR) {
  let names;
  try {
    names = (await readdir(path.join(dir, sessionId))).sort();
  } catch (err) {
    if (err.code === "ENOENT") return {};
    throw err;
  }
  const out = {};
  for (const name of names) out[name] = sha256(await readFile(path.join(dir, sessionId, name)));
  return out;
}

async function rest(pathname, token = ALICE, url = URL) {
  const res = await fetch(url + pathname, { headers: { Authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
}

/**
 * A stored or duplicate ack, checked field by field. `credits: null` accepts any window >= 1;
 * `busy: true` is for bursts, where the server may answer canAccept:false (and then credits 0).
 */
function assertAck(ack, { sessionId, sequence, timestamp = T0 + sequence * 15000, duplicate = false, credits = IDLE_CREDITS, busy = false }) {
  assert.match(ack.chunkId, /^[0-9a-f]{32}$/);
  const canAccept = busy && ack.canAccept === false ? false : true;
  const expected = { sessionId, sequence, timestamp, chunkId: ack.chunkId, duplicate, canAccept };
  if (!duplicate) expected.credits = !canAccept ? 0 : credits === null ? ack.credits : credits;
  assert.deepEqual(ack, expected);
  if (!duplicate && canAccept) assert.ok(Number.isInteger(ack.credits) && ack.credits >= 1, `credits ${ack.credits}`);
}

/** The chunk-error body the server must send for `payload` (context fields only when well formed). */
function errorContext(payload) {
  const ctx = {};
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) return ctx;
  if (typeof payload.sessionId === "string" && /^[A-Za-z0-9_-]{1,128}$/.test(payload.sessionId)) ctx.sessionId = payload.sessionId;
  const seq = "sequence" in payload ? payload.sequence : payload.seq;
  if (typeof seq === "number" && Number.isInteger(seq)) ctx.sequence = seq;
  return ctx;
}

function assertChunkError(body, code, short, messagePattern, context = {}) {
  assert.deepEqual(body, { ...context, code, message: body.message, error: short, details: body.details });
  assert.match(body.message, messagePattern);
  assert.equal(typeof body.details, "object");
}

/** An HS256 JWT signed with `secret` (a secret the server does not know). */
function jwt(claims, secret, header = { alg: "HS256", typ: "JWT" }) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signingInput = `${b64(header)}.${b64(claims)}`;
  return `${signingInput}.${createHmac("sha256", secret).update(signingInput).digest("base64url")}`;
}

// -- transports ---------------------------------------------------------------

describe("transports", () => {
  test("websocket only: connects on websocket, chunk acked duplicate:false", { timeout: 10_000 }, async () => {
    const socket = open({ transports: ["websocket"] });
    assert.equal(socket.io.engine.transport.name, "websocket");
    await connected(socket);
    const audio = randomBytes(4096);
    const id = sid("ws");
    const event = next(socket, "chunk-ack");
    const ack = await call(socket, "audio-chunk", chunk(id, 0, audio, { size: audio.length }));
    assertAck(ack, { sessionId: id, sequence: 0 });
    assert.deepEqual(await event, ack);
    assert.equal(socket.io.engine.transport.name, "websocket");
    assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(audio) });
  });

  test("polling only: stays on polling, chunk acked duplicate:false", { timeout: 10_000 }, async () => {
    const socket = open({ transports: ["polling"] });
    const upgrades = [];
    socket.io.engine.on("upgrade", (t) => upgrades.push(t.name));
    assert.equal(socket.io.engine.transport.name, "polling");
    await connected(socket);
    const audio = randomBytes(4096);
    const id = sid("poll");
    const event = next(socket, "chunk-ack");
    const ack = await call(socket, "audio-chunk", chunk(id, 0, audio));
    assertAck(ack, { sessionId: id, sequence: 0 });
    assert.deepEqual(await event, ack);
    assert.equal(socket.io.engine.transport.name, "polling");
    assert.deepEqual(upgrades, []);
    assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(audio) });
  });

  test("default: starts on polling, upgrades to websocket, chunks acked before and after", { timeout: 10_000 }, async () => {
    const socket = open();
    assert.equal(socket.io.engine.transport.name, "polling");
    const upgraded = new Promise((resolve) => socket.io.engine.once("upgrade", (t) => resolve(t.name)));
    const id = sid("default");
    const first = randomBytes(4096);
    // emitted before the connection is up: the client buffers it and sends it once connected
    const firstAck = call(socket, "audio-chunk", chunk(id, 0, first));
    await connected(socket);
    assertAck(await firstAck, { sessionId: id, sequence: 0 });
    assert.equal(await upgraded, "websocket");
    assert.equal(socket.io.engine.transport.name, "websocket");
    const second = randomBytes(4096);
    assertAck(await call(socket, "audio-chunk", chunk(id, 1, second)), { sessionId: id, sequence: 1 });
    assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(first), [fileName(id, 1)]: sha256(second) });
  });
});

// -- namespaces and payload forms ----------------------------------------------

for (const namespace of ["/", "/record"]) {
  describe(`namespace ${namespace}`, () => {
    test("audio-chunk / audioChunk with one object payload: ArrayBuffer, Buffer, Uint8Array view, base64", { timeout: 10_000 }, async () => {
      const socket = await connect({ namespace, transports: ["websocket"] });
      const id = sid("obj");
      const backing = randomBytes(5000);
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 7, 4000); // a view at an offset into a larger buffer
      const audios = [
        ["audio-chunk", toArrayBuffer(randomBytes(3000))],
        ["audio-chunk", randomBytes(3001)],
        ["audio-chunk", view],
        ["audioChunk", Buffer.from("pooled Buffer: a slice of Node's shared pool")],
        ["audio-chunk", randomBytes(2000).toString("base64")], // ext: base64 string
      ];
      const expected = {};
      for (const [seq, [event, audio]] of audios.entries()) {
        const ack = await call(socket, event, chunk(id, seq, audio));
        assertAck(ack, { sessionId: id, sequence: seq });
        expected[fileName(id, seq)] = typeof audio === "string" ? sha256(Buffer.from(audio, "base64")) : sha256(audio);
      }
      assert.deepEqual(await storedFiles(id), expected);
      assert.equal(expected[fileName(id, 2)], sha256(backing.subarray(7, 4007)));
    });

    test("seed 004 form emit('audioChunk', metadata, buffer): Buffer, Uint8Array, ArrayBuffer", { timeout: 10_000 }, async () => {
      const socket = await connect({ namespace, transports: ["websocket"] });
      const id = sid("meta");
      const audios = [randomBytes(3000), new Uint8Array(randomBytes(3001)), toArrayBuffer(randomBytes(3002))];
      const expected = {};
      for (const [seq, audio] of audios.entries()) {
        const metadata = { sessionId: id, seq, timestamp: 1000 + seq, mimeType: "audio/ogg;codecs=opus", size: audio.byteLength };
        const ack = await call(socket, "audioChunk", metadata, audio);
        assertAck(ack, { sessionId: id, sequence: seq, timestamp: 1000 + seq });
        expected[fileName(id, seq, "ogg")] = sha256(audio);
      }
      // the same two-argument form on the other event name
      const last = randomBytes(100);
      assertAck(await call(socket, "audio-chunk", { sessionId: id, sequence: 3, timestamp: 7 }, last), { sessionId: id, sequence: 3, timestamp: 7 });
      expected[fileName(id, 3)] = sha256(last);
      assert.deepEqual(await storedFiles(id), expected);
    });
  });
}

test("one Manager multiplexes / and /record: each namespace gets only its own acks", { timeout: 10_000 }, async () => {
  const manager = new Manager(URL, { transports: ["websocket"], reconnection: false, timeout: 5000 });
  const root = manager.socket("/", { auth: { token: ALICE } });
  const record = manager.socket("/record", { auth: { token: ALICE } });
  sockets.add(root).add(record);
  root.connect();
  record.connect();
  await Promise.all([connected(root), connected(record)]);
  const rootAcks = [];
  const recordAcks = [];
  root.on("chunk-ack", (a) => rootAcks.push(a.sessionId));
  record.on("chunk-ack", (a) => recordAcks.push(a.sessionId));
  const a = sid("mux-root");
  const b = sid("mux-record");
  const [ackA, ackB] = await Promise.all([
    call(root, "audio-chunk", chunk(a, 0, randomBytes(1000))),
    call(record, "audio-chunk", chunk(b, 0, randomBytes(1000))),
  ]);
  assertAck(ackA, { sessionId: a, sequence: 0 });
  assertAck(ackB, { sessionId: b, sequence: 0 });
  assert.deepEqual(rootAcks, [a]);
  assert.deepEqual(recordAcks, [b]);
  assert.equal(manager.engine.transport.name, "websocket");
});

// -- acks -----------------------------------------------------------------------

test("emitWithAck and a classic callback get the same body as the chunk-ack / chunk-error event", { timeout: 10_000 }, async () => {
  const socket = await connect({ transports: ["websocket"] });
  const id = sid("ack");
  const audio = randomBytes(2048);
  const events = [];
  socket.on("chunk-ack", (body) => events.push(["chunk-ack", body]));
  socket.on("chunk-error", (body) => events.push(["chunk-error", body]));

  const stored = await call(socket, "audio-chunk", chunk(id, 0, audio));
  assertAck(stored, { sessionId: id, sequence: 0 });
  const duplicate = await new Promise((resolve) => socket.emit("audio-chunk", chunk(id, 0, audio), resolve));
  assertAck(duplicate, { sessionId: id, sequence: 0, duplicate: true });
  assert.equal(duplicate.chunkId, stored.chunkId);
  const rejected = await call(socket, "audio-chunk", chunk(id, 1, audio, { size: 1 }));
  assert.deepEqual(Object.keys(rejected), ["error"]);
  assertChunkError(rejected.error, "invalid", "Invalid chunk data", /^size 1 does not match the audio length 2048$/, { sessionId: id, sequence: 1 });
  // without a callback, only the event comes back
  socket.emit("audio-chunk", chunk(id, 2, audio));
  const plain = await next(socket, "chunk-ack", (a) => a.sequence === 2);
  assertAck(plain, { sessionId: id, sequence: 2 });

  assert.deepEqual(events, [["chunk-ack", stored], ["chunk-ack", duplicate], ["chunk-error", rejected.error], ["chunk-ack", plain]]);
});

// -- exactly once ---------------------------------------------------------------

test("the same chunk three times: duplicate [false, true, true], one file with the sent sha256", { timeout: 10_000 }, async () => {
  const socket = await connect({ transports: ["websocket"] });
  const id = sid("thrice");
  const audio = randomBytes(8192);
  const acks = [];
  for (let i = 0; i < 3; i++) acks.push(await call(socket, "audio-chunk", chunk(id, 5, audio)));
  assert.deepEqual(acks.map((a) => a.duplicate), [false, true, true]);
  assertAck(acks[0], { sessionId: id, sequence: 5 });
  assertAck(acks[1], { sessionId: id, sequence: 5, duplicate: true });
  assertAck(acks[2], { sessionId: id, sequence: 5, duplicate: true });
  assert.equal(new Set(acks.map((a) => a.chunkId)).size, 1);
  assert.deepEqual(await storedFiles(id), { [fileName(id, 5)]: sha256(audio) });
  assert.deepEqual(await rest(`/api/sessions/${id}/missing-chunks`), { status: 200, body: { missing: [0, 1, 2, 3, 4], maxSeq: 5, totalChunks: 1 } });
});

test("concurrent duplicates from two sockets (websocket on /, polling on /record) are stored once", { timeout: 15_000 }, async () => {
  const [a, b] = await Promise.all([
    connect({ transports: ["websocket"] }),
    connect({ namespace: "/record", transports: ["polling"] }),
  ]);
  const id = sid("race");
  const audios = Array.from({ length: 5 }, () => randomBytes(100_000));
  const sends = [];
  for (const [seq, audio] of audios.entries()) {
    for (const socket of [a, b, a, b]) sends.push(call(socket, "audio-chunk", chunk(id, seq, audio)));
  }
  const acks = await Promise.all(sends);
  for (const [seq] of audios.entries()) {
    const group = acks.filter((ack) => ack.sequence === seq);
    assert.equal(group.length, 4);
    assert.deepEqual(group.map((ack) => ack.duplicate).sort(), [false, true, true, true], `seq ${seq}`);
    assert.equal(new Set(group.map((ack) => ack.chunkId)).size, 1, `seq ${seq}`);
    for (const ack of group) assertAck(ack, { sessionId: id, sequence: seq, duplicate: ack.duplicate, credits: null, busy: true });
  }
  const expected = Object.fromEntries(audios.map((audio, seq) => [fileName(id, seq), sha256(audio)]));
  assert.deepEqual(await storedFiles(id), expected);
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks`)).body, { missing: [], maxSeq: 4, totalChunks: 5 });
});

test("different bytes under a stored sequence: chunk-error conflict, the stored file is kept", { timeout: 10_000 }, async () => {
  const socket = await connect({ transports: ["websocket"] });
  const id = sid("conflict");
  const original = randomBytes(4096);
  assertAck(await call(socket, "audio-chunk", chunk(id, 0, original)), { sessionId: id, sequence: 0 });
  const event = next(socket, "chunk-error");
  const other = randomBytes(4096);
  const reply = await call(socket, "audio-chunk", chunk(id, 0, other));
  assertChunkError(reply.error, "conflict", "Chunk conflict", /^sequence 0 is already stored with different audio/, { sessionId: id, sequence: 0 });
  assert.deepEqual(reply.error.details, { storedSha256: sha256(original), receivedSha256: sha256(other) });
  assert.deepEqual(await event, reply.error);
  assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(original) });
  // the original bytes are still the stored ones
  assertAck(await call(socket, "audio-chunk", chunk(id, 0, original)), { sessionId: id, sequence: 0, duplicate: true });
  assert.equal(socket.connected, true);
});

// -- sizes ----------------------------------------------------------------------

for (const [transport, size] of [["websocket", 5 * MIB], ["polling", 5 * MIB], ["polling", MAX_CHUNK_BYTES]]) {
  test(`a ${size} byte chunk over ${transport} is stored without a disconnect`, { timeout: 30_000 }, async () => {
    const socket = await connect({ transports: [transport] });
    const disconnects = [];
    socket.on("disconnect", (reason) => disconnects.push(reason));
    const id = sid(`big-${transport}`);
    const audio = randomBytes(size);
    const ack = await call(socket, "audio-chunk", chunk(id, 0, audio, { size, checksum: sha256(audio) }));
    assertAck(ack, { sessionId: id, sequence: 0 });
    const small = randomBytes(100);
    assertAck(await call(socket, "audio-chunk", chunk(id, 1, small)), { sessionId: id, sequence: 1 });
    assert.deepEqual(disconnects, []);
    assert.equal(socket.connected, true);
    assert.equal(socket.io.engine.transport.name, transport);
    assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(audio), [fileName(id, 1)]: sha256(small) });
  });
}

test("polling: chunks buffered before the connection is up, then a burst, arrive batched in POSTs and are all stored", { timeout: 15_000 }, async () => {
  // socket.io-client queues emits while offline and flushes them together: one POST then carries
  // two Engine.IO packets per chunk (the event and its binary attachment), here far more than 16.
  const socket = open({ transports: ["polling"] });
  const batches = []; // Engine.IO packets per POST, observed on the client's transport
  const transport = socket.io.engine.transport;
  const send = transport.send.bind(transport);
  transport.send = (packets) => { batches.push(packets.length); return send(packets); };
  const disconnects = [];
  socket.on("disconnect", (reason) => disconnects.push(reason));
  const id = sid("burst");
  // 12 at a time: more than 16 packets per POST, and below the server's hard queue limit (no "overloaded")
  const audios = Array.from({ length: 24 }, () => randomBytes(20_000));
  const offline = audios.slice(0, 12).map((audio, seq) => call(socket, "audio-chunk", chunk(id, seq, audio)));
  await connected(socket);
  const acks = await Promise.all(offline);
  const burst = audios.slice(12).map((audio, i) => call(socket, "audio-chunk", chunk(id, 12 + i, audio)));
  acks.push(...(await Promise.all(burst)));
  acks.forEach((ack, seq) => assertAck(ack, { sessionId: id, sequence: seq, credits: null, busy: true }));
  assert.ok(Math.max(...batches) > 16, `packets per POST: ${batches}`);
  assert.deepEqual(disconnects, []);
  assert.equal(socket.io.engine.transport.name, "polling");
  assert.deepEqual(await storedFiles(id), Object.fromEntries(audios.map((a, seq) => [fileName(id, seq), sha256(a)])));
});

for (const transport of ["websocket", "polling"]) {
  test(`a chunk over MAX_CHUNK_BYTES over ${transport}: chunk-error too_large, still connected, still serving`, { timeout: 15_000 }, async () => {
    const socket = await connect({ url: SMALL_URL, transports: [transport] });
    const disconnects = [];
    socket.on("disconnect", (reason) => disconnects.push(reason));
    const id = sid(`over-${transport}`);
    const event = next(socket, "chunk-error");
    const reply = await call(socket, "audio-chunk", chunk(id, 0, randomBytes(SMALL_MAX_CHUNK_BYTES + 1)));
    assertChunkError(reply.error, "too_large", "Chunk too large", new RegExp(`exceeds MAX_CHUNK_BYTES \\(${SMALL_MAX_CHUNK_BYTES}\\)`),
      { sessionId: id, sequence: 0 });
    assert.deepEqual(await event, reply.error);
    assert.deepEqual(await storedFiles(id, SMALL_STORAGE_DIR), {});
    const exact = randomBytes(SMALL_MAX_CHUNK_BYTES);
    assertAck(await call(socket, "audio-chunk", chunk(id, 0, exact)), { sessionId: id, sequence: 0 });
    assert.deepEqual(disconnects, []);
    assert.equal(socket.connected, true);
    assert.deepEqual(await storedFiles(id, SMALL_STORAGE_DIR), { [fileName(id, 0)]: sha256(exact) });
  });
}

// The hard limit: a chunk of up to 1.5 x MAX_CHUNK_BYTES is answered too_large on both transports (polling carries it
// as base64); a message over the Engine.IO limit closes the connection, and the client is told why before it closes.
const ANSWERED_MAX = Math.floor((MAX_CHUNK_BYTES * 3) / 2);
const MESSAGE_LIMIT = Math.floor((ANSWERED_MAX * 4) / 3) + MIB;

for (const transport of ["websocket", "polling"]) {
  test(`a chunk of 1.5 x MAX_CHUNK_BYTES over ${transport}: chunk-error too_large, still connected`, { timeout: 30_000 }, async () => {
    const socket = await connect({ transports: [transport] });
    const disconnects = [];
    socket.on("disconnect", (reason) => disconnects.push(reason));
    const id = sid(`hard-${transport}`);
    const reply = await call(socket, "audio-chunk", chunk(id, 0, Buffer.alloc(ANSWERED_MAX, 7)));
    assertChunkError(reply.error, "too_large", "Chunk too large", new RegExp(`exceeds MAX_CHUNK_BYTES \\(${MAX_CHUNK_BYTES}\\)`),
      { sessionId: id, sequence: 0 });
    assertAck(await call(socket, "audio-chunk", chunk(id, 0, randomBytes(100))), { sessionId: id, sequence: 0 });
    assert.deepEqual(disconnects, []);
    assert.equal(socket.io.engine.transport.name, transport);
  });

  test(`a message over the Engine.IO limit over ${transport}: protocol-error too_large, then the connection closes`, { timeout: 30_000 }, async () => {
    const socket = await connect({ transports: [transport] });
    const told = next(socket, "protocol-error", () => true, 20_000);
    const closed = new Promise((resolve) => socket.once("disconnect", (reason, details) => resolve({ reason, details })));
    const id = sid(`over-limit-${transport}`);
    socket.emit("audio-chunk", chunk(id, 0, Buffer.alloc(MESSAGE_LIMIT + 1, 7)));
    const body = await told;
    assert.equal(body.code, "too_large");
    assert.match(body.message, new RegExp(`over this server's limit of ${MESSAGE_LIMIT} bytes per message.* up to ${ANSWERED_MAX} bytes is answered chunk-error too_large`));
    const { reason, details } = await closed;
    if (transport === "websocket") {
      // the websocket's own close says it too (code 1009, "message too big")
      assert.equal(reason, "transport close");
      assert.equal(details?.context?.code, 1009);
      assert.equal(String(details?.context?.reason), `message over the server's limit of ${MESSAGE_LIMIT} bytes`);
    } else {
      assert.equal(reason, "io server disconnect");
    }
    assert.deepEqual(await storedFiles(id), {});
    // a new connection is served as usual
    const again = await connect({ transports: [transport] });
    assertAck(await call(again, "audio-chunk", chunk(id, 0, randomBytes(100))), { sessionId: id, sequence: 0 });
  });
}

// -- bad input ------------------------------------------------------------------

describe("every bad input is answered with code invalid and the client stays connected", () => {
  const id = sid("bad");
  const ok = (extra) => ({ sessionId: id, sequence: 0, timestamp: 1, audio: Buffer.from("abc"), ...extra });
  const omit = (key) => { const p = ok(); delete p[key]; return p; };
  // [name, event, args, message pattern]
  const cases = [
    ["a string payload", "audio-chunk", ["a string"], /object payload, got string/],
    ["a number payload", "audio-chunk", [42], /object payload, got number/],
    ["a null payload", "audio-chunk", [null], /object payload, got null/],
    ["an array payload", "audio-chunk", [[1, 2]], /object payload, got array/],
    ["a boolean payload", "audio-chunk", [true], /object payload, got boolean/],
    ["no payload at all", "audio-chunk", [], /object payload, got null/],
    ["an empty object", "audio-chunk", [{}], /sessionId/],
    ["missing sessionId", "audio-chunk", [omit("sessionId")], /sessionId must be 1-128 characters/],
    ["missing sequence", "audio-chunk", [omit("sequence")], /sequence is required/],
    ["missing audio", "audio-chunk", [omit("audio")], /audio is required/],
    ["negative sequence", "audio-chunk", [ok({ sequence: -1 })], /sequence must be an integer >= 0/],
    ["float sequence", "audio-chunk", [ok({ sequence: 1.5 })], /sequence must be an integer >= 0/],
    ["string sequence", "audio-chunk", [ok({ sequence: "3" })], /sequence must be an integer >= 0/],
    ["sequence beyond 2^53-1", "audio-chunk", [ok({ sequence: 2 ** 53 })], /sequence must be an integer >= 0/],
    ["sessionId with a path", "audio-chunk", [ok({ sessionId: "../etc" })], /sessionId must be 1-128 characters/],
    ["sessionId with a slash", "audio-chunk", [ok({ sessionId: "a/b" })], /sessionId must be 1-128 characters/],
    ["sessionId with a space", "audio-chunk", [ok({ sessionId: "a b" })], /sessionId must be 1-128 characters/],
    ["sessionId with a dot", "audio-chunk", [ok({ sessionId: "a.b" })], /sessionId must be 1-128 characters/],
    ["sessionId with unicode", "audio-chunk", [ok({ sessionId: "séance" })], /sessionId must be 1-128 characters/],
    ["empty sessionId", "audio-chunk", [ok({ sessionId: "" })], /sessionId must be 1-128 characters/],
    ["129-character sessionId", "audio-chunk", [ok({ sessionId: "x".repeat(129) })], /sessionId must be 1-128 characters/],
    ["numeric sessionId", "audio-chunk", [ok({ sessionId: 42 })], /sessionId must be 1-128 characters/],
    ["empty ArrayBuffer audio", "audio-chunk", [ok({ audio: new ArrayBuffer(0) })], /audio is empty/],
    ["empty Buffer audio", "audio-chunk", [ok({ audio: Buffer.alloc(0) })], /audio is empty/],
    ["empty Uint8Array audio", "audio-chunk", [ok({ audio: new Uint8Array(0) })], /audio is empty/],
    ["empty string audio", "audio-chunk", [ok({ audio: "" })], /audio is empty/],
    ["numeric audio", "audio-chunk", [ok({ audio: 12 })], /audio must be binary or a base64 string, got number/],
    ["audio as an array of numbers", "audio-chunk", [ok({ audio: [1, 2, 3] })], /audio must be binary or a base64 string, got array/],
    ["audio as an object", "audio-chunk", [ok({ audio: { 0: 1 } })], /audio must be binary or a base64 string, got object/],
    ["audio string that is not base64", "audio-chunk", [ok({ audio: "not base64!" })], /not valid base64/],
    ["size larger than the audio", "audio-chunk", [ok({ size: 4 })], /size 4 does not match the audio length 3/],
    ["size smaller than the audio", "audio-chunk", [ok({ size: 2 })], /size 2 does not match the audio length 3/],
    ["negative size", "audio-chunk", [ok({ size: -1 })], /size must be an integer >= 0/],
    ["string size", "audio-chunk", [ok({ size: "3" })], /size must be an integer >= 0/],
    ["video mimeType", "audio-chunk", [ok({ mimeType: "video/mp4" })], /mimeType must be one of/],
    ["text mimeType", "audio-chunk", [ok({ mimeType: "text/html" })], /mimeType must be one of/],
    ["unsupported audio mimeType", "audio-chunk", [ok({ mimeType: "audio/flac" })], /mimeType must be one of/],
    ["numeric mimeType", "audio-chunk", [ok({ mimeType: 42 })], /mimeType must be a string/],
    ["negative timestamp", "audio-chunk", [ok({ timestamp: -5 })], /timestamp must be a number >= 0/],
    ["string timestamp", "audio-chunk", [ok({ timestamp: "now" })], /timestamp must be a number >= 0/],
    ["zero durationMs", "audio-chunk", [ok({ durationMs: 0 })], /durationMs must be in/],
    ["checksum that does not match", "audio-chunk", [ok({ checksum: "0".repeat(64) })], /checksum does not match/],
    ["checksum that is not hex", "audio-chunk", [ok({ checksum: "xyz" })], /checksum must be 64 hex characters/],
    ["seed 004 form with a non-base64 string", "audioChunk", [{ sessionId: id, seq: 0 }, "not base64!"], /not valid base64/],
    ["seed 004 form with a numeric audio", "audioChunk", [{ sessionId: id, seq: 0 }, 5], /audio must be binary/],
    ["seed 004 form with an empty buffer", "audioChunk", [{ sessionId: id, seq: 0 }, new ArrayBuffer(0)], /audio is empty/],
    ["three arguments", "audio-chunk", [{ sessionId: id, sequence: 0 }, Buffer.from("a"), "extra"], /got 3 arguments/],
  ];

  let socket; // one connection for all the cases: each one must leave it connected
  before(async () => { socket = await connect({ transports: ["websocket"], keep: true }); });
  after(() => socket.disconnect());

  for (const [name, event, args, pattern] of cases) {
    test(name, { timeout: 10_000 }, async () => {
      const errorEvent = next(socket, "chunk-error");
      const reply = await call(socket, event, ...args);
      assert.deepEqual(Object.keys(reply), ["error"]);
      assertChunkError(reply.error, "invalid", "Invalid chunk data", pattern, errorContext(args[0]));
      assert.deepEqual(await errorEvent, reply.error);
      assert.equal(socket.connected, true);
    });
  }

  for (const [event, payload, pattern] of [
    ["joinSession", "a string", /joinSession expects an object payload, got string/],
    ["joinSession", { sessionId: "../x" }, /sessionId must be 1-128 characters/],
    ["joinSession", { sessionId: id, lastSeq: -2 }, /lastSeq must be an integer >= -1/],
    ["stopSession", { sessionId: id, lastSeq: 1.5 }, /lastSeq must be an integer >= 0/],
    ["start-session", [1], /start-session expects an object payload, got array/],
    ["join", 42, /expected a room name/],
  ]) {
    test(`${event} with ${JSON.stringify(payload)}: session-error invalid`, { timeout: 10_000 }, async () => {
      const errorEvent = next(socket, "session-error");
      const reply = await call(socket, event, payload);
      assert.equal(reply.error.code, "invalid");
      assert.match(reply.error.message, pattern);
      assert.deepEqual(await errorEvent, reply.error);
      assert.equal(socket.connected, true);
    });
  }

  test("afterwards: nothing was stored, the session does not exist, the socket still stores chunks", { timeout: 10_000 }, async () => {
    assert.deepEqual(await storedFiles(id), {});
    const res = await rest(`/api/sessions/${id}`);
    assert.equal(res.status, 404);
    assert.deepEqual(res.body, { error: { code: "not_found", message: res.body.error.message } });
    const good = sid("after-bad");
    const audio = randomBytes(100);
    assertAck(await call(socket, "audio-chunk", chunk(good, 0, audio)), { sessionId: good, sequence: 0 });
    assert.deepEqual(await storedFiles(good), { [fileName(good, 0)]: sha256(audio) });
  });
});

// -- authentication and ownership -------------------------------------------------

describe("unauthorized connections are refused with connect_error data.code unauthorized", () => {
  const tamperedBob = (() => {
    const [header, , signature] = ALICE.split(".");
    return `${header}.${Buffer.from(JSON.stringify({ sub: "bob" })).toString("base64url")}.${signature}`;
  })();
  const cases = [
    ["no token", null, /token is required/],
    ["an empty token", "", /token is required/],
    ["a token that is not a JWT", "not-a-jwt", /invalid token/],
    ["a token signed with another secret", jwt({ sub: "alice" }, "some-other-secret"), /invalid token/],
    ["alice's signature on a payload claiming bob", tamperedBob, /invalid token/],
    ["an unsigned alg:none token", `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from('{"sub":"alice"}').toString("base64url")}.`, /invalid token/],
    ["an expired token", EXPIRED, /token expired/],
  ];
  for (const [name, token, pattern] of cases) {
    for (const [namespace, transport] of [["/", "websocket"], ["/record", "polling"]]) {
      test(`${name} on ${namespace} over ${transport}`, { timeout: 10_000 }, async () => {
        const socket = open({ namespace, token, transports: [transport] });
        const err = await refusal(socket);
        assert.ok(err instanceof Error);
        assert.deepEqual(err.data, { code: "unauthorized", message: err.message });
        assert.match(err.message, pattern);
        assert.equal(socket.connected, false);
        assert.equal(socket.active, false); // refused: the client does not retry by itself
      });
    }
  }

  test("REST without a token or with a bad one: 401 unauthorized", { timeout: 10_000 }, async () => {
    const none = await fetch(`${URL}/api/sessions`);
    assert.equal(none.status, 401);
    assert.equal((await none.json()).error.code, "unauthorized");
    const bad = await rest("/api/sessions", "not-a-jwt");
    assert.equal(bad.status, 401);
    assert.equal(bad.body.error.code, "unauthorized");
  });
});

test("the token is accepted from auth.token, ?token=, Authorization: Bearer and the scribeai_token cookie, on both transports", { timeout: 15_000 }, async () => {
  const id = sid("carriers");
  // Fresh option objects for every socket: with withCredentials, engine.io-client writes into `extraHeaders`.
  const carriers = [
    ["auth.token", () => ({ token: ALICE })],
    ["query", () => ({ token: null, query: { token: ALICE } })],
    ["bearer header", () => ({ token: null, extraHeaders: { Authorization: `Bearer ${ALICE}` } })],
    ["cookie header", () => ({ token: null, extraHeaders: { Cookie: `scribeai_token=${ALICE}` } })],
    // engine.io-client 6.6.8 in Node, with withCredentials (its cookie jar), adds `cookie` (lower case, the jar's
    // cookies, none here) to the extraHeaders object itself when it opens a websocket; that empty header replaces a
    // capitalised `Cookie` on that request and on later polling requests: only the lower-case key always works.
    ["cookie header + withCredentials", () => ({ token: null, withCredentials: true, extraHeaders: { cookie: `scribeai_token=${ALICE}` } })],
  ];
  let seq = 0;
  const expected = {};
  for (const [name, options] of carriers) {
    for (const transport of ["websocket", "polling"]) {
      const socket = await connect({ ...options(), transports: [transport] });
      const audio = randomBytes(256);
      // a chunk of alice's session is accepted only from alice
      const ack = await call(socket, "audio-chunk", chunk(id, seq, audio));
      assert.equal(ack.error, undefined, `${name} over ${transport}: ${JSON.stringify(ack)}`);
      assertAck(ack, { sessionId: id, sequence: seq });
      expected[fileName(id, seq)] = sha256(audio);
      seq += 1;
      socket.disconnect();
    }
  }
  // the cookie carries bob just as well: bob is not alice
  const bob = await connect({ token: null, transports: ["websocket"], extraHeaders: { Cookie: `other=1; scribeai_token=${BOB}` } });
  assert.equal((await call(bob, "audio-chunk", chunk(id, seq, randomBytes(10)))).error.code, "forbidden");
  assert.deepEqual(await storedFiles(id), expected);
});

test("bob can neither write to, join, stop, pause nor read alice's session (forbidden / 404)", { timeout: 15_000 }, async () => {
  const alice = await connect({ transports: ["websocket"] });
  const bob = await connect({ token: BOB, transports: ["websocket"] });
  const id = sid("private");
  const audio = randomBytes(1024);
  assertAck(await call(alice, "audio-chunk", chunk(id, 0, audio)), { sessionId: id, sequence: 0 });

  const chunkError = next(bob, "chunk-error");
  const write = await call(bob, "audio-chunk", chunk(id, 1, randomBytes(1024)));
  assertChunkError(write.error, "forbidden", "Forbidden", /^this session belongs to another user$/, { sessionId: id, sequence: 1 });
  assert.deepEqual(await chunkError, write.error);
  const overwrite = await call(bob, "audio-chunk", chunk(id, 0, audio)); // even the identical bytes
  assert.equal(overwrite.error.code, "forbidden");

  for (const [event, payload] of [
    ["joinSession", { sessionId: id }],
    ["joinSession", { sessionId: id, lastSeq: 0 }],
    ["stopSession", { sessionId: id }],
    ["stop-session", { sessionId: id }],
    ["start-session", { sessionId: id }],
    ["pause-session", { sessionId: id, pausedAt: 1 }],
    ["resume-session", { sessionId: id, resumedAt: 1 }],
    ["join", `session:${id}`],
  ]) {
    const sessionError = next(bob, "session-error");
    const reply = await call(bob, event, payload);
    assert.equal(reply.error?.code, "forbidden", `${event}: ${JSON.stringify(reply)}`);
    assert.equal(reply.error.error, "Forbidden");
    assert.deepEqual(await sessionError, reply.error);
  }
  // alice writing with bob's userId is refused too
  const spoofed = await call(alice, "audio-chunk", chunk(id, 1, audio, { userId: "bob" }));
  assertChunkError(spoofed.error, "forbidden", "Forbidden", /^userId does not match the token's user$/, { sessionId: id, sequence: 1 });

  assert.equal(bob.connected, true);
  for (const pathname of [`/api/sessions/${id}`, `/api/sessions/${id}/missing-chunks`, `/api/sessions/${id}/transcript`]) {
    const res = await rest(pathname, BOB);
    assert.equal(res.status, 404, pathname);
    assert.equal(res.body.error.code, "not_found");
  }
  const mine = await rest(`/api/sessions/${id}`);
  assert.equal(mine.status, 200);
  assert.equal(mine.body.status, "recording");
  assert.equal(mine.body.totalChunks, 1);
  assert.deepEqual(await storedFiles(id), { [fileName(id, 0)]: sha256(audio) });
});

// -- reconnect and resume -----------------------------------------------------------

test("reconnect and resume: lost chunks 3 and 7 are reported, resent, and stop with lastSeq reports the tail gaps", { timeout: 15_000 }, async () => {
  const id = sid("resume");
  const audios = Array.from({ length: 12 }, (_, seq) => randomBytes(1000 + seq));
  const first = await connect({ transports: ["websocket"] });
  const firstId = first.id;
  for (const seq of [0, 1, 2, 4, 5, 6, 8, 9]) {
    assertAck(await call(first, "audio-chunk", chunk(id, seq, audios[seq])), { sessionId: id, sequence: seq });
  }
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks`)).body, { missing: [3, 7], maxSeq: 9, totalChunks: 8 });

  // the network goes away under the recorder: the TCP connection is torn down, no goodbye
  const gone = new Promise((resolve) => first.once("disconnect", resolve));
  first.io.engine.transport.ws.terminate();
  assert.equal(await gone, "transport close");

  const second = await connect({ transports: ["websocket"] });
  assert.notEqual(second.id, firstId);
  const joinedEvent = next(second, "session-joined");
  const joined = await call(second, "joinSession", { sessionId: id, lastSeq: 9 });
  assert.deepEqual(joined, { sessionId: id, status: "recording", maxSeq: 9, totalChunks: 8, missing: [3, 7] });
  assert.deepEqual(await joinedEvent, joined);

  for (const seq of joined.missing) {
    assertAck(await call(second, "audio-chunk", chunk(id, seq, audios[seq])), { sessionId: id, sequence: seq });
  }
  // the last chunk acked before the drop is a duplicate when resent
  assertAck(await call(second, "audio-chunk", chunk(id, 9, audios[9])), { sessionId: id, sequence: 9, duplicate: true });
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks`)).body, { missing: [], maxSeq: 9, totalChunks: 10 });

  const stoppedEvent = next(second, "session-stopped");
  const stopped = await call(second, "stopSession", { sessionId: id, lastSeq: 11 });
  assert.deepEqual(stopped, { sessionId: id, status: "stopped", stoppedAt: stopped.stoppedAt, maxSeq: 9, totalChunks: 10, missing: [10, 11] });
  assert.ok(Math.abs(Date.parse(stopped.stoppedAt) - Date.now()) < 60_000, stopped.stoppedAt);
  assert.deepEqual(await stoppedEvent, stopped);
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks?lastSeq=11`)).body, { missing: [10, 11], maxSeq: 9, totalChunks: 10 });
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks`)).body, { missing: [], maxSeq: 9, totalChunks: 10 });

  // late resends after the stop are still accepted
  for (const seq of stopped.missing) {
    assertAck(await call(second, "audio-chunk", chunk(id, seq, audios[seq])), { sessionId: id, sequence: seq });
  }
  assert.deepEqual((await rest(`/api/sessions/${id}/missing-chunks?lastSeq=11`)).body, { missing: [], maxSeq: 11, totalChunks: 12 });
  assert.equal((await rest(`/api/sessions/${id}`)).body.status, "stopped");
  assert.deepEqual(await storedFiles(id), Object.fromEntries(audios.map((a, seq) => [fileName(id, seq), sha256(a)])));
});

test("the client's own reconnection: new sid, a chunk emitted while offline is delivered and acked after", { timeout: 15_000 }, async () => {
  const id = sid("auto");
  const socket = await connect({ transports: ["websocket"], reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 100, randomizationFactor: 0 });
  const audios = Array.from({ length: 3 }, () => randomBytes(500));
  assertAck(await call(socket, "audio-chunk", chunk(id, 0, audios[0])), { sessionId: id, sequence: 0 });
  assertAck(await call(socket, "audio-chunk", chunk(id, 1, audios[1])), { sessionId: id, sequence: 1 });
  const oldId = socket.id;
  const gone = new Promise((resolve) => socket.once("disconnect", resolve));
  const back = new Promise((resolve) => socket.io.once("reconnect", resolve));
  socket.io.engine.transport.ws.terminate();
  assert.equal(await gone, "transport close");
  assert.equal(socket.connected, false);
  const buffered = call(socket, "audio-chunk", chunk(id, 2, audios[2])); // queued by the client until it is back
  assert.equal(await back, 1);
  assert.notEqual(socket.id, oldId);
  assert.ok(!socket.recovered); // python-socketio has no connection state recovery
  assertAck(await buffered, { sessionId: id, sequence: 2 });
  const joined = await call(socket, "joinSession", { sessionId: id, lastSeq: 2 });
  assert.deepEqual(joined, { sessionId: id, status: "recording", maxSeq: 2, totalChunks: 3, missing: [] });
  assertAck(await call(socket, "audio-chunk", chunk(id, 1, audios[1])), { sessionId: id, sequence: 1, duplicate: true });
  assert.deepEqual(await storedFiles(id), Object.fromEntries(audios.map((a, seq) => [fileName(id, seq), sha256(a)])));
});

// -- the original web app ---------------------------------------------------------

test("original app flow with cookie auth: start, relative timestamps, pause, resume, join room, stop", { timeout: 15_000 }, async () => {
  // The app's own options. The Socket.IO connect (the only place the token is checked) travels on the polling
  // handshake, which carries the cookie; the upgrade request does not need it (see the token carriers test).
  const socket = open({ token: null, withCredentials: true, extraHeaders: { Cookie: `scribeai_token=${ALICE}` } });
  const upgraded = new Promise((resolve) => socket.io.engine.once("upgrade", (t) => resolve(t.name)));
  const names = [];
  socket.onAny((event) => names.push(event));
  await connected(socket);
  const id = sid("orig");

  const startedEvent = next(socket, "session-started");
  socket.emit("start-session", { sessionId: id, userId: "alice", title: "Standup", source: "microphone" });
  const started = await startedEvent;
  assert.deepEqual(started, { sessionId: id, status: "recording", startedAt: started.startedAt });
  assert.ok(Math.abs(Date.parse(started.startedAt) - Date.now()) < 60_000, started.startedAt);

  const audios = [randomBytes(3000), randomBytes(3001), randomBytes(3002)];
  for (const [seq, timestamp] of [0, 15000, 30000].entries()) {
    const acked = next(socket, "chunk-ack", (a) => a.sequence === seq);
    socket.emit("audio-chunk", { sessionId: id, userId: "alice", sequence: seq, timestamp, size: audios[seq].length,
      mimeType: "audio/webm;codecs=opus", audio: toArrayBuffer(audios[seq]) });
    assertAck(await acked, { sessionId: id, sequence: seq, timestamp });
  }

  const pausedEvent = next(socket, "session-paused");
  socket.emit("pause-session", { sessionId: id, pausedAt: Date.now() });
  const paused = await pausedEvent;
  assert.deepEqual(paused, { sessionId: id, status: "paused", pausedAt: paused.pausedAt });
  assert.equal((await rest(`/api/sessions/${id}`)).body.status, "paused");

  const resumedEvent = next(socket, "session-resumed");
  socket.emit("resume-session", { sessionId: id, resumedAt: Date.now() });
  const resumed = await resumedEvent;
  assert.deepEqual(resumed, { sessionId: id, status: "recording", resumedAt: resumed.resumedAt });
  assert.ok(Date.parse(resumed.resumedAt) >= Date.parse(paused.pausedAt));

  assert.deepEqual(await call(socket, "join", `session:${id}`), { room: `session:${id}`, joined: true });

  const stoppedEvent = next(socket, "session-stopped");
  socket.emit("stop-session", { sessionId: id });
  const stopped = await stoppedEvent;
  assert.deepEqual(stopped, { sessionId: id, status: "stopped", stoppedAt: stopped.stoppedAt, maxSeq: 2, totalChunks: 3, missing: [] });
  assert.equal((await rest(`/api/sessions/${id}`)).body.status, "stopped");

  const other = sid("orig-other");
  const refused = next(socket, "session-error");
  socket.emit("start-session", { sessionId: other, userId: "bob" });
  const error = await refused;
  assert.deepEqual(error, { sessionId: other, code: "forbidden", message: error.message, error: "Forbidden", details: error.details });

  assert.deepEqual(names.slice(0, names.indexOf("session-stopped") + 1), [
    "session-started", "chunk-ack", "chunk-ack", "chunk-ack", "session-paused", "session-resumed", "session-stopped",
  ]);
  assert.equal(await upgraded, "websocket");
  assert.equal(socket.io.engine.transport.name, "websocket");
  assert.deepEqual(await storedFiles(id), Object.fromEntries(audios.map((a, seq) => [fileName(id, seq), sha256(a)])));
  assert.deepEqual(await storedFiles(other), {});
});

// -- load -------------------------------------------------------------------------

test("20 concurrent recorders x 30 chunks: every chunk acked once, on disk, and no gaps over REST", { timeout: 50_000 }, async () => {
  const RECORDERS = 20;
  const CHUNKS = 30;
  const recorders = Array.from({ length: RECORDERS }, (_, i) => ({
    id: sid(`load${i}`),
    token: i % 2 ? BOB : ALICE,
    namespace: i % 4 < 2 ? "/" : "/record",
    transport: i % 5 === 0 ? "polling" : "websocket",
    audios: Array.from({ length: CHUNKS }, () => randomBytes(4096)),
  }));
  const results = await Promise.all(recorders.map(async (r) => {
    const socket = await connect({ token: r.token, namespace: r.namespace, transports: [r.transport] });
    const acks = [];
    // a recorder sends its next chunk when the previous one is acked
    for (let seq = 0; seq < CHUNKS; seq++) acks.push(await call(socket, "audio-chunk", chunk(r.id, seq, r.audios[seq])));
    return acks;
  }));
  for (const [i, r] of recorders.entries()) {
    assert.deepEqual(results[i].map((a) => [a.sessionId, a.sequence, a.duplicate]),
      r.audios.map((_, seq) => [r.id, seq, false]), r.id);
    for (const ack of results[i]) assertAck(ack, { sessionId: r.id, sequence: ack.sequence, credits: null });
    assert.deepEqual(await storedFiles(r.id), Object.fromEntries(r.audios.map((a, seq) => [fileName(r.id, seq), sha256(a)])));
    assert.deepEqual(await rest(`/api/sessions/${r.id}/missing-chunks`, r.token),
      { status: 200, body: { missing: [], maxSeq: CHUNKS - 1, totalChunks: CHUNKS } });
  }
});
