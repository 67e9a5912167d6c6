// A recorder on the real socket.io-client for tests/test_topology.py: sends --chunks copies of --file as one
// session through the load balancer, one chunk in flight, and never gives a chunk up: a timeout, a disconnect or a
// retryable error (overloaded, unavailable) sends it again once connected; socket.io-client reconnects by itself
// (to whichever node the balancer picks). Prints one JSON line: the acks by sequence, the reconnects, the errors.
//
//   node topology_recorder.mjs --url URL --token JWT --session ID --file F --chunks N [--transport websocket|polling]
//     [--interval-ms 200] [--mime audio/wav]

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    session: { type: "string" },
    file: { type: "string" },
    chunks: { type: "string", default: "10" },
    transport: { type: "string", default: "websocket" },
    "interval-ms": { type: "string", default: "200" },
    mime: { type: "string", default: "audio/wav" },
  },
});
for (const name of ["url", "token", "session", "file"]) {
  if (!opts[name]) {
    console.error(`--${name} is required`);
    process.exit(2);
  }
}

const audio = readFileSync(opts.file);
const RETRYABLE = new Set(["overloaded", "unavailable"]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const socket = io(opts.url, {
  auth: { token: opts.token },
  transports: [opts.transport],
  reconnectionDelay: 200,
  reconnectionDelayMax: 1000,
  timeout: 5000,
});
let connects = 0;
socket.on("connect", () => {
  connects += 1;
  socket.emit("joinSession", { sessionId: opts.session, lastSeq: -1 });
});

function connected() {
  return socket.connected ? Promise.resolve() : new Promise((resolve) => socket.once("connect", resolve));
}

const acks = {};
const errors = [];
for (let seq = 0; seq < Number(opts.chunks); seq += 1) {
  for (;;) {
    await connected();
    let ack;
    try {
      ack = await socket.timeout(5000).emitWithAck("audio-chunk", {
        sessionId: opts.session, sequence: seq, mimeType: opts.mime, timestamp: 1_732_350_000_000 + seq * 15000, audio,
      });
    } catch (err) {
      errors.push({ seq, error: String(err.message ?? err) });  // no ack (a node died under it): send again
      continue;
    }
    if (ack.error) {
      errors.push({ seq, code: ack.error.code });
      if (!RETRYABLE.has(ack.error.code)) break;
      await sleep(ack.error.retryAfterMs ?? 500);
      continue;
    }
    acks[seq] = { duplicate: ack.duplicate, chunkId: ack.chunkId };
    break;
  }
  await sleep(Number(opts["interval-ms"]));
}
socket.disconnect();
console.log(JSON.stringify({ acks, connects, errors }));
