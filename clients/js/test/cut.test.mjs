// What a reload or a closed tab lost: the page's cut marker (localStorage) against the end of the audio the outbox
// stored; the Recorder's flushes as the page goes (beforeunload, pagehide, visibilitychange) with a fake page.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { Recorder } from "../index.js";
import { CutMarker, lossOf, readMarkers } from "../cut.js";
import { Outbox } from "../outbox.js";
import { FakeMediaRecorder, FakeSocket, MemoryStorage, NO_ANSWER, fakePage, fakeServer, fakeStream, freshDB, until } from "./support.mjs";

const blob = (n, fill) => new Blob([new Uint8Array(n).fill(fill)], { type: "audio/webm;codecs=opus" });
const BLOBS = [blob(100, 1), blob(200, 2), blob(300, 3), blob(400, 4)];
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const open = [];
afterEach(async () => {
  for (const rec of open.splice(0)) await rec.close();
  FakeMediaRecorder.instances.length = 0;
});

function make(page, db, socket = new FakeSocket(fakeServer().handler)) {
  const rec = new Recorder({ url: "http://scribe.test", sessionId: "sess-1", MediaRecorder: FakeMediaRecorder,
    io: socket.factory(), ...db, window: page.window, document: page.document, localStorage: page.localStorage });
  open.push(rec);
  return rec;
}

/** Start recording and let `ticks` timeslices pass; resolves when their chunks are in the outbox. */
async function recordFor(rec, ticks) {
  FakeMediaRecorder.blobs = BLOBS;
  await rec.start(fakeStream());
  const first = rec.nextSequence;
  const mediaRecorder = FakeMediaRecorder.instances.at(-1);
  for (let i = 0; i < ticks; i++) {
    mediaRecorder.tick();
    await pause(5);
  }
  await until(() => rec.nextSequence === first + ticks, 2000, `${ticks} chunks in the outbox`);
  return mediaRecorder;
}

async function storedUntil(db) {
  const outbox = await Outbox.open("scribeai-recorder", db);
  try {
    return (await outbox.meta("sess-1"))?.storedUntil ?? null;
  } finally {
    outbox.close();
  }
}

test("lossOf: the cut less the end of the stored audio; unknown without a cut time; a live recording is no cut", () => {
  const marker = { startedAt: 1000, aliveAt: 5000, timesliceMs: 1000, cutAt: 6300, how: "pagehide" };
  assert.deepEqual(lossOf(marker, 5500, 7000), { startedAt: 1000, cutAt: 6300, how: "pagehide", storedUntil: 5500, lostMs: 800 });
  // nothing stored in this life (a chunk before startedAt is an earlier life's): everything since the start
  assert.equal(lossOf(marker, 500, 7000).lostMs, 5300);
  assert.equal(lossOf(marker, null, 7000).lostMs, 5300);
  // a leave-page prompt held the page 1.5 s: what was stored after the beforeunload ends there, the rest is lost
  assert.equal(lossOf({ ...marker, leavingAt: 4800, cutAt: 6300 }, 6280, 7000).lostMs, 1500);
  assert.equal(lossOf({ ...marker, leavingAt: 4800, cutAt: 6300 }, 4500, 7000).lostMs, 1800);  // the flush did not make it
  // paused, and the pause's flush stored after it: nothing lost
  assert.equal(lossOf({ ...marker, how: "paused" }, 6310, 7000).lostMs, 0);
  // hidden, then killed at some later time: what came after is unknown
  assert.equal(lossOf({ ...marker, how: "hidden" }, 5500, 7000).lostMs, null);
  // no notice at all: a recording alive 2 s ago may go on in another tab; 10 s ago it is a crash
  assert.equal(lossOf({ ...marker, cutAt: null, how: null }, 5500, 7000), null);
  assert.deepEqual(lossOf({ ...marker, cutAt: null, how: null }, 5500, 15000),
    { startedAt: 1000, cutAt: null, how: null, storedUntil: 5500, lostMs: null });
});

test("markers are per outbox database and session; clear() forgets one; unreadable ones are skipped", () => {
  const storage = new MemoryStorage();
  new CutMarker(storage, "db-a", "s1").begin(1000, 1000);
  new CutMarker(storage, "db-a", "s2").begin(2000, 1000);
  new CutMarker(storage, "db-b", "s1").begin(3000, 1000);
  storage.setItem("scribeai-recorder:db-a:recording:broken", "{");
  assert.deepEqual(readMarkers(storage, "db-a").map((m) => [m.sessionId, m.startedAt]), [["s1", 1000], ["s2", 2000]]);
  new CutMarker(storage, "db-a", "s1").clear();
  assert.deepEqual(readMarkers(storage, "db-a").map((m) => m.sessionId), ["s2"]);
  assert.deepEqual(readMarkers(null, "db-a"), []);
  new CutMarker(null, "db-a", "s3").begin(1, 1);  // no storage (a sandboxed frame): nothing, no error
});

test("a reload: beforeunload flushes the pending audio, pagehide notes the cut; the next page says what was lost", async () => {
  const page = fakePage();
  const db = freshDB();
  const server = fakeServer();
  const rec = make(page, db, new FakeSocket(server.handler));
  const mediaRecorder = await recordFor(rec, 2);
  const leaveFrom = Date.now();
  page.fire("beforeunload");
  const leaveTo = Date.now();
  await until(() => rec.nextSequence === 3, 2000, "the flushed blob in the outbox");
  const flushed = await storedUntil(db);
  // stored in haste (no hash, no storage estimate), its sha256 computed when it is sent
  await until(() => server.stored.has(2), 2000, "the flushed blob sent");
  assert.match(server.stored.get(2).checksum, /^[0-9a-f]{64}$/);
  await pause(20);
  // after pagehide a browser may run nothing more: here the page is gone before it hands over the pagehide's blob
  mediaRecorder.hold();
  const hideFrom = Date.now();
  page.fire("pagehide");
  page.hide();  // a reload hides the page after pagehide: the cut stays the pagehide's
  const hideTo = Date.now();
  assert.equal(mediaRecorder.queue.length, 0, "pagehide asked for the rest too");
  const marker = readMarkers(page.localStorage, "scribeai-recorder")[0];
  assert.equal(marker.how, "pagehide");
  assert.ok(leaveFrom <= marker.leavingAt && marker.leavingAt <= leaveTo, `leavingAt ${marker.leavingAt}`);
  assert.ok(hideFrom <= marker.cutAt && marker.cutAt <= hideTo, `cutAt ${marker.cutAt}`);
  assert.ok(marker.leavingAt <= flushed && flushed <= hideFrom, `the flush ends after the beforeunload: ${flushed}`);
  // lost: from the beforeunload (the flush holds the audio until then, nothing after) to the pagehide
  const lostMs = marker.cutAt - marker.leavingAt;
  assert.ok(hideFrom - leaveTo <= lostMs && lostMs <= hideTo - leaveFrom, `lostMs ${lostMs}`);
  const interrupted = { startedAt: marker.startedAt, cutAt: marker.cutAt, how: "pagehide", lostMs };
  // the next page finds the outbox as the flush left it
  const [found] = await Recorder.pending({ ...db, localStorage: page.localStorage });
  assert.equal(found.sessionId, "sess-1");
  assert.deepEqual(found.interrupted, { ...interrupted, storedUntil: flushed });
  // or the pagehide's blob reached the outbox before the next page looked: the same loss (what a blob stored after
  // the beforeunload holds of the time since is not counted: a leave-page prompt records nothing)
  mediaRecorder.release();
  await until(() => rec.nextSequence === 4, 2000, "the pagehide's blob in the outbox");
  const end = await storedUntil(db);
  assert.ok(end >= hideTo, `storedUntil ${end}`);
  const [later] = await Recorder.pending({ ...db, localStorage: page.localStorage });
  assert.deepEqual(later.interrupted, { ...interrupted, storedUntil: end });
});

test("stop() and close() end a recording in order: no marker is left, nothing is reported as cut", async () => {
  const page = fakePage();
  const db = freshDB();
  const stopped = make(page, db);
  await recordFor(stopped, 1);
  assert.equal(readMarkers(page.localStorage, "scribeai-recorder").length, 1);
  await stopped.stop({ timeoutMs: 2000 });
  assert.deepEqual(readMarkers(page.localStorage, "scribeai-recorder"), []);

  const closed = make(page, db, new FakeSocket(() => NO_ANSWER, { autoConnect: false }));
  await recordFor(closed, 1);
  await closed.close();
  assert.deepEqual(readMarkers(page.localStorage, "scribeai-recorder"), []);
  // the closed recorder's chunks wait in the outbox: pending, but not interrupted
  assert.deepEqual((await Recorder.pending({ ...db, localStorage: page.localStorage })).map((p) => [p.chunks, p.interrupted]),
    [[4, null]]);
});

test("a tab switch is no cut: hidden flushes and notes it, visible again takes it back", async () => {
  const page = fakePage();
  const db = freshDB();
  const rec = make(page, db);
  await recordFor(rec, 1);
  page.hide();
  await until(() => rec.nextSequence === 2, 2000, "the blob flushed on hide");
  assert.equal(readMarkers(page.localStorage, "scribeai-recorder")[0].how, "hidden");
  page.show();
  const marker = readMarkers(page.localStorage, "scribeai-recorder")[0];
  assert.deepEqual([marker.cutAt, marker.how], [null, null]);
  assert.ok(marker.aliveAt >= marker.startedAt);
});

test("paused, then the page goes: the pause's flush is stored, nothing was lost", async () => {
  const page = fakePage();
  const db = freshDB();
  const rec = make(page, db);
  await recordFor(rec, 1);
  rec.pause();
  await until(() => rec.nextSequence === 2, 2000, "the pause's flush");
  await rec._settleWrites();
  page.fire("pagehide");  // not recording: the pause stays the cut
  const [found] = await Recorder.pending({ ...db, localStorage: page.localStorage });
  assert.equal(found.interrupted.how, "paused");
  assert.equal(found.interrupted.lostMs, 0);
});

test("the outbox keeps the end of the newest stored audio after the chunks are acked and deleted", async () => {
  const db = freshDB();
  const outbox = await Outbox.open("t", db);
  await outbox.append("s", { bytes: new ArrayBuffer(1), timestamp: 1000, durationMs: 1000 });
  await outbox.append("s", { bytes: new ArrayBuffer(1), timestamp: 2000, durationMs: 950 });
  await outbox.append("s", { bytes: new ArrayBuffer(1) });  // no times: storedUntil stays
  await outbox.delete("s", 0);
  await outbox.delete("s", 1);
  assert.equal((await outbox.meta("s")).storedUntil, 2950);
  outbox.close();
});
