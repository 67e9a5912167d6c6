// A page with other sockets on the Recorder's origin, against a REAL ScribeAI server (SCRIBEAI_RECORDER_URL and
// SCRIBEAI_RECORDER_TOKEN from tests/test_recorder_lib.py; skipped without). socket.io-client's io() caches one
// Manager per origin and gives it to every socket of a namespace not yet open on it, so the Recorder's socket and
// the page's share one: the Recorder must leave the page's listeners on it alone. Its own file: a fresh io() cache.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { io } from "socket.io-client";
import { Recorder } from "../index.js";
import { FakeMediaRecorder, fakeStream, freshDB, timesliceBlobs, until } from "./support.mjs";

const URL = process.env.SCRIBEAI_RECORDER_URL;
const TOKEN = process.env.SCRIBEAI_RECORDER_TOKEN;
const skip = URL ? false : "SCRIBEAI_RECORDER_URL is not set: run through tests/test_recorder_lib.py";
const SOCKET_OPTIONS = { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 };

/** How many listeners `emitter` has for each of `events`. */
function listenerCounts(emitter, events) {
  return Object.fromEntries(events.map((event) => [event, emitter.listeners(event).length]));
}

const MANAGER_EVENTS = ["open", "packet", "error", "close", "reconnect_attempt", "reconnect", "reconnect_failed"];
const ENGINE_EVENTS = ["handshake", "upgrade", "close"];

test("close() leaves the page's socket on the same Manager working: it removes its own listeners and no others", { skip, timeout: 30000 }, async () => {
  // the page's own socket (a viewer on /record), opened first: io() caches its Manager for the origin
  const viewer = io(`${URL}/record`, { ...SOCKET_OPTIONS, auth: { token: TOKEN } });
  const reconnects = [];
  viewer.io.on("reconnect", (attempt) => reconnects.push(attempt));
  try {
    await new Promise((resolve, reject) => { viewer.once("connect", resolve); viewer.once("connect_error", reject); });
    const manager = viewer.io;
    const engine = manager.engine;
    const before = { manager: listenerCounts(manager, MANAGER_EVENTS), engine: listenerCounts(engine, ENGINE_EVENTS) };

    FakeMediaRecorder.blobs = await timesliceBlobs();
    const rec = new Recorder({ url: URL, token: TOKEN, sessionId: `page-${randomUUID()}`, MediaRecorder: FakeMediaRecorder,
      ...freshDB(), socketOptions: SOCKET_OPTIONS });
    try {
      await rec.start(fakeStream());
      assert.equal(rec.socket.io, manager, "the recorder's socket (namespace /) shares the page's Manager");
      FakeMediaRecorder.instances.at(-1).tick();
      const { drained, reply } = await rec.stop({ timeoutMs: 10000 });
      assert.deepEqual([drained, reply?.totalChunks], [true, 4]);
    } finally {
      await rec.close();
    }

    assert.equal(manager.engine, engine, "the connection the recorder shared is still the same one");
    assert.equal(viewer.connected, true);
    // the page's socket still hears the server (its packets come through a listener on the Manager) ...
    const joined = await viewer.timeout(5000).emitWithAck("joinSession", { sessionId: rec.sessionId })
      .catch((err) => assert.fail(`the page's socket no longer hears the server: ${err.message}`));
    assert.deepEqual([joined.sessionId, joined.status, joined.totalChunks], [rec.sessionId, "stopped", 4]);
    // ... the recorder left none of its listeners behind and took none of the page's ...
    assert.deepEqual({ manager: listenerCounts(manager, MANAGER_EVENTS), engine: listenerCounts(engine, ENGINE_EVENTS) },
      before);
    // ... and the Manager still reconnects it, and tells the page, when the connection dies
    engine.close();
    await until(() => reconnects.length === 1 && viewer.connected, 5000, "the page's socket reconnected");
    const again = await viewer.timeout(5000).emitWithAck("joinSession", { sessionId: rec.sessionId });
    assert.equal(again.sessionId, rec.sessionId);
  } finally {
    viewer.disconnect();
  }
});
