// A minimal socket.io 4.8 recording server: the yardstick for ScribeAI's ingest path.
//
//   node server.mjs --port 3101 --storage /tmp/node-chunks --secret "$SCRIBEAI_SECRET" [--fsync-dir]
//
// It does the same durable work per chunk as ScribeAI, and no more: check the token at connect
// (JWT HS256), validate the audio-chunk payload, sha256 the audio, write it to a temporary file,
// fsync, rename into <storage>/<session>/<session>_<seq>.webm, append one JSON line to
// <storage>/index.jsonl and fsync it, then ack. Exactly once by (sessionId, sequence): a repeat with
// the same bytes is answered `duplicate: true`, with other bytes `conflict`. With --fsync-dir the
// session directory is fsync'd after the rename too (ScribeAI does this).
// Prints `listening <port>` on stdout once it accepts connections; GET /healthz answers 200.

import { createHash, createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { createServer } from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: opts } = parseArgs({
  options: {
    port: { type: "string", default: "3101" },
    host: { type: "string", default: "127.0.0.1" },
    storage: { type: "string" },
    secret: { type: "string", default: process.env.SCRIBEAI_SECRET ?? "" },
    "fsync-dir": { type: "boolean", default: false },
    "max-chunk-bytes": { type: "string", default: String(10 * 1024 * 1024) },
  },
});
if (!opts.storage || !opts.secret) {
  console.error("usage: node server.mjs --storage DIR --secret SECRET [--port N] [--fsync-dir]");
  process.exit(2);
}
const STORAGE = path.resolve(opts.storage);
const MAX_CHUNK_BYTES = Number(opts["max-chunk-bytes"]);
const SESSION_ID = /^[A-Za-z0-9_-]{1,128}$/;

// -- tokens ---------------------------------------------------------------------

function userOf(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const expected = createHmac("sha256", opts.secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    return null;
  }
  if (header.alg !== "HS256" || typeof claims.sub !== "string" || !claims.sub) return null;
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) return null;
  return claims.sub;
}

// -- storage ----------------------------------------------------------------------

const known = new Map();       // "session/seq" -> { sha256, chunkId, owner }
const inFlight = new Map();    // "session/seq" -> promise of the first store of that key
const sessionDirs = new Map(); // session -> promise of its directory
const sessionOwner = new Map();
await mkdir(STORAGE, { recursive: true });
const index = await open(path.join(STORAGE, "index.jsonl"), "a");

function sessionDir(sessionId) {
  let made = sessionDirs.get(sessionId);
  if (!made) {
    const dir = path.join(STORAGE, sessionId);
    made = mkdir(dir, { recursive: true }).then(() => dir);
    sessionDirs.set(sessionId, made);
  }
  return made;
}

async function fsyncPath(p) {
  const fh = await open(p, "r");
  try { await fh.sync(); } finally { await fh.close(); }
}

async function writeDurably(sessionId, seq, audio, sha256) {
  const dir = await sessionDir(sessionId);
  const name = `${sessionId}_${String(seq).padStart(4, "0")}.webm`;
  const temp = path.join(dir, `.${name}.${randomUUID()}.tmp`);
  const fh = await open(temp, "wx");
  try {
    await fh.writeFile(audio);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(temp).catch(() => {});
    throw err;
  }
  await fh.close();
  await rename(temp, path.join(dir, name));
  if (opts["fsync-dir"]) await fsyncPath(dir);
  const chunkId = randomUUID();
  await index.write(JSON.stringify({ chunkId, sessionId, seq, size: audio.length, sha256, file: `${sessionId}/${name}` }) + "\n");
  await index.sync();
  return chunkId;
}

async function storeOnce(sessionId, seq, audio, sha256) {
  const key = `${sessionId}/${seq}`;
  const pending = inFlight.get(key);
  if (pending) await pending.catch(() => {});
  const stored = known.get(key);
  if (stored) return stored.sha256 === sha256 ? { chunkId: stored.chunkId, duplicate: true } : { conflict: stored.sha256 };
  const first = writeDurably(sessionId, seq, audio, sha256);
  inFlight.set(key, first);
  try {
    const chunkId = await first;
    known.set(key, { sha256, chunkId });
    return { chunkId, duplicate: false };
  } finally {
    inFlight.delete(key);
  }
}

// -- the wire -----------------------------------------------------------------------

function invalid(message, context) {
  return { ...context, code: "invalid", message, error: "Invalid chunk data", details: {} };
}

async function onAudioChunk(socket, payload) {
  const context = {};
  if (payload === null || typeof payload !== "object") return { error: invalid("audio-chunk expects an object", context) };
  const { sessionId, timestamp, mimeType, size, audio } = payload;
  const seq = payload.sequence ?? payload.seq;
  if (typeof sessionId !== "string" || !SESSION_ID.test(sessionId)) return { error: invalid("bad sessionId", context) };
  context.sessionId = sessionId;
  if (!Number.isSafeInteger(seq) || seq < 0) return { error: invalid("bad sequence", context) };
  context.sequence = seq;
  if (!Buffer.isBuffer(audio) || audio.length === 0) return { error: invalid("audio must be binary and not empty", context) };
  if (audio.length > MAX_CHUNK_BYTES) return { error: { ...context, code: "too_large", message: "audio too large", error: "Chunk too large", details: {} } };
  if (size !== undefined && size !== audio.length) return { error: invalid("size does not match", context) };
  if (mimeType !== undefined && typeof mimeType !== "string") return { error: invalid("bad mimeType", context) };
  const owner = sessionOwner.get(sessionId);
  if (owner === undefined) sessionOwner.set(sessionId, socket.data.userId);
  else if (owner !== socket.data.userId) return { error: { ...context, code: "forbidden", message: "another user's session", error: "Forbidden", details: {} } };
  const sha256 = createHash("sha256").update(audio).digest("hex");
  const result = await storeOnce(sessionId, seq, audio, sha256);
  if (result.conflict) {
    return { error: { ...context, code: "conflict", message: "different audio under this sequence", error: "Conflict",
                      details: { storedSha256: result.conflict, receivedSha256: sha256 } } };
  }
  const ack = { sessionId, sequence: seq, timestamp: typeof timestamp === "number" ? timestamp : Date.now(),
                chunkId: result.chunkId, duplicate: result.duplicate, canAccept: true };
  if (!result.duplicate) ack.credits = 8;
  socket.emit("chunk-ack", ack);
  return ack;
}

const http = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
  } else {
    res.writeHead(404).end();
  }
});
const io = new Server(http, {
  maxHttpBufferSize: Math.ceil(MAX_CHUNK_BYTES * 1.4) + 1024 * 1024,
  perMessageDeflate: false,
  cors: { origin: "*", credentials: true },
});
io.use((socket, next) => {
  const userId = userOf(socket.handshake.auth?.token);
  if (!userId) {
    const err = new Error("invalid token");
    err.data = { code: "unauthorized", message: "invalid token" };
    return next(err);
  }
  socket.data.userId = userId;
  next();
});
io.on("connection", (socket) => {
  socket.on("audio-chunk", async (payload, ack) => {
    let reply;
    try {
      reply = await onAudioChunk(socket, payload);
    } catch (err) {
      console.error("audio-chunk failed:", err);
      reply = { error: { code: "internal", message: String(err), error: "Internal error", details: {} } };
    }
    if (reply.error) socket.emit("chunk-error", reply.error);
    if (typeof ack === "function") ack(reply);
  });
});

async function stop() {
  io.close();
  await index.close().catch(() => {});
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

http.listen(Number(opts.port), opts.host);
await once(http, "listening");
console.log(`listening ${http.address().port}`);
