// Ingest load generator on socket.io-client 4.8: N recorders x C chunks x B bytes, W chunks in flight each.
//
//   node loadgen.mjs --url http://127.0.0.1:3001 --secret "$SCRIBEAI_SECRET" \
//       --recorders 20 --chunks 50 --bytes 250000 --window 1 [--transport websocket] [--json-out FILE]
//
// Each recorder is its own connection (forceNew) on its own session, sending
// `audio-chunk { sessionId, sequence, timestamp, mimeType, size, audio: <Buffer> }` with an ack, as the
// ScribeAI web client does. Ack latency runs from just before the emit to the ack. A chunk refused with
// `overloaded` is resent after its retryAfterMs; every other error is counted by its code.
// The report is one JSON line on stdout (and in --json-out); a short summary goes to stderr.
// Exit status 1 when any chunk ended without an ack.

import { createHmac, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:3001" },
    token: { type: "string" },
    secret: { type: "string", default: process.env.SCRIBEAI_SECRET ?? "" },
    user: { type: "string", default: "bench" },
    recorders: { type: "string", default: "20" },
    chunks: { type: "string", default: "50" },
    bytes: { type: "string", default: "250000" },
    window: { type: "string", default: "1" },
    transport: { type: "string", default: "websocket" },
    namespace: { type: "string", default: "/" },
    "ack-timeout": { type: "string", default: "30000" },
    "connect-timeout": { type: "string", default: "10000" },
    "max-resends": { type: "string", default: "20" },
    "session-prefix": { type: "string", default: "nbench" },
    "json-out": { type: "string" },
  },
});

const N = Number(opts.recorders), C = Number(opts.chunks), B = Number(opts.bytes), W = Number(opts.window);
const ACK_TIMEOUT = Number(opts["ack-timeout"]), CONNECT_TIMEOUT = Number(opts["connect-timeout"]);
const MAX_RESENDS = Number(opts["max-resends"]);
if (![N, C, B, W].every((v) => Number.isInteger(v) && v >= 1)) {
  console.error("--recorders, --chunks, --bytes and --window must be integers >= 1");
  process.exit(2);
}
if (!["websocket", "polling"].includes(opts.transport)) {
  console.error("--transport must be websocket or polling");
  process.exit(2);
}

function mintToken(secret, sub) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iat: Math.floor(Date.now() / 1000) })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

const token = opts.token ?? (opts.secret ? mintToken(opts.secret, opts.user) : null);
if (!token) {
  console.error("give --token, or --secret (or $SCRIBEAI_SECRET) to mint one");
  process.exit(2);
}

/** Nearest-rank percentile of a sorted array. */
function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1];
}
const round = (v, digits = 2) => (v === null || v === undefined ? null : Number(v.toFixed(digits)));

const runId = randomBytes(6).toString("hex");
const base = randomBytes(B);
const errors = {};
const count = (code, n = 1) => { errors[code] = (errors[code] ?? 0) + n; };

class Recorder {
  constructor(index) {
    this.index = index;
    this.sessionId = `${opts["session-prefix"]}-${runId}-${String(index).padStart(3, "0")}`;
    this.latencies = [];
    this.first = []; // each session's first chunk (seq 0), which also creates the session on the server
    this.steady = []; // without the session's first chunk, which also creates the session
    this.acked = 0;
    this.duplicates = 0;
    this.unacked = 0;
    this.resends = 0;
    this.socket = io(opts.url + (opts.namespace === "/" ? "" : opts.namespace), {
      auth: { token }, forceNew: true, reconnection: false, transports: [opts.transport],
      timeout: CONNECT_TIMEOUT, autoConnect: false,
    });
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("connect_error", reject);
      this.socket.connect();
    });
  }

  payload(seq) {
    const audio = Buffer.allocUnsafe(B);
    base.copy(audio);
    audio.writeUInt32BE(this.index, 0); // distinct bytes per chunk
    if (B >= 8) audio.writeUInt32BE(seq, 4);
    return { sessionId: this.sessionId, sequence: seq, timestamp: 1_700_000_000_000 + seq * 1000,
             mimeType: "audio/webm;codecs=opus", size: B, audio };
  }

  async send(seq) {
    const payload = this.payload(seq);
    for (let attempt = 0; ; attempt++) {
      if (!this.socket.connected) { count("disconnected"); this.unacked++; return; }
      const t0 = performance.now();
      let reply;
      try {
        reply = await this.socket.timeout(ACK_TIMEOUT).emitWithAck("audio-chunk", payload);
      } catch {
        count("timeout"); this.unacked++; return;
      }
      const ms = performance.now() - t0;
      if (reply && reply.error) {
        const code = String(reply.error.code ?? "?");
        count(code);
        if (code === "overloaded" && attempt < MAX_RESENDS) {
          this.resends++;
          await new Promise((r) => setTimeout(r, Number(reply.error.retryAfterMs ?? 1000)));
          continue;
        }
        this.unacked++;
        return;
      }
      if (!reply || reply.sequence !== seq || reply.sessionId !== this.sessionId) { count("bad_ack"); this.unacked++; return; }
      this.acked++;
      if (reply.duplicate) this.duplicates++;
      this.latencies.push(ms);
      if (seq > 0) this.steady.push(ms);
      else this.first.push(ms);
      return;
    }
  }

  async run() {
    let next = 0;
    const lane = async () => {
      while (next < C) await this.send(next++);
    };
    await Promise.all(Array.from({ length: Math.min(W, C) }, lane));
  }
}

function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: round(percentile(sorted, 50)), p95: round(percentile(sorted, 95)), p99: round(percentile(sorted, 99)),
           max: round(sorted.at(-1) ?? null), mean: sorted.length ? round(sorted.reduce((a, b) => a + b, 0) / sorted.length) : null };
}

const recorders = Array.from({ length: N }, (_, i) => new Recorder(i));
const connected = await Promise.allSettled(recorders.map((r) => r.connect()));
const live = [];
connected.forEach((outcome, i) => {
  if (outcome.status === "rejected") {
    count(`connect:${outcome.reason?.message ?? "error"}`);
    recorders[i].unacked = C;
  } else {
    live.push(recorders[i]);
  }
});

const cpu0 = process.cpuUsage();
const t0 = performance.now();
await Promise.all(live.map((r) => r.run()));
const wallS = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
for (const r of recorders) r.socket.disconnect();

const acked = recorders.reduce((a, r) => a + r.acked, 0);
const report = {
  runId,
  url: opts.url,
  transport: opts.transport,
  recorders: N,
  chunksPerRecorder: C,
  bytesPerChunk: B,
  window: W,
  sessionIds: recorders.map((r) => r.sessionId),
  chunksSent: N * C,
  chunksAcked: acked,
  duplicates: recorders.reduce((a, r) => a + r.duplicates, 0),
  unacked: recorders.reduce((a, r) => a + r.unacked, 0),
  resends: recorders.reduce((a, r) => a + r.resends, 0),
  wallS: round(wallS, 3),
  chunksPerS: wallS > 0 ? round(acked / wallS, 1) : null,
  mbPerS: wallS > 0 ? round((acked * B) / 1e6 / wallS, 2) : null,
  ackMs: summary(recorders.flatMap((r) => r.latencies)),
  ackMsAfterFirstChunk: summary(recorders.flatMap((r) => r.steady)),
  ackMsFirstChunk: summary(recorders.flatMap((r) => r.first)),
  errors,
  clientCpuS: round((cpu.user + cpu.system) / 1e6, 2),
};
const line = JSON.stringify(report);
if (opts["json-out"]) writeFileSync(opts["json-out"], line + "\n");
console.log(line);
const a = report.ackMs;
console.error(`${acked}/${N * C} acked in ${report.wallS} s: ${report.chunksPerS} chunks/s, ${report.mbPerS} MB/s; ` +
              `ack ms p50 ${a.p50} p95 ${a.p95} p99 ${a.p99} max ${a.max}; errors ${JSON.stringify(errors)}`);
process.exit(report.unacked === 0 ? 0 : 1);
