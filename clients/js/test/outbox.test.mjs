// The IndexedDB outbox (on fake-indexeddb): order, persistence across instances, rejected chunks.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Outbox, isQuotaError } from "../outbox.js";
import { freshDB } from "./support.mjs";

const bytes = (n, fill = 1) => new Uint8Array(n).fill(fill).buffer;

test("append allocates consecutive sequences and list gives them in numeric order", async () => {
  const outbox = await Outbox.open("t", freshDB());
  const got = [];
  for (let i = 0; i < 12; i++) got.push((await outbox.append("s", { bytes: bytes(i + 1), mimeType: "audio/webm" })).sequence);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  // 10 and 11 after 9 (numbers, not strings); sizes are the byte lengths
  assert.deepEqual(await outbox.list("s"), got.map((sequence) => ({ sequence, size: sequence + 1 })));
  outbox.close();
});

test("chunks put out of order come out in sequence order, per session", async () => {
  const outbox = await Outbox.open("t", freshDB());
  for (const [sessionId, sequence] of [["b", 3], ["a", 20], ["a", 2], ["b", 1], ["a", 100], ["a", 9]]) {
    await outbox.put({ sessionId, sequence, bytes: bytes(2) });
  }
  assert.deepEqual((await outbox.list("a")).map((c) => c.sequence), [2, 9, 20, 100]);
  assert.deepEqual((await outbox.list("b")).map((c) => c.sequence), [1, 3]);
  assert.equal((await outbox.meta("a")).nextSeq, 101);
  outbox.close();
});

test("the outbox and the next sequence survive a new Outbox on the same database (a reload)", async () => {
  const db = freshDB();
  const first = await Outbox.open("persist", db);
  await first.append("s", { bytes: bytes(3, 7), mimeType: "audio/webm;codecs=opus", timestamp: 1234 });
  await first.append("s", { bytes: bytes(4, 8), mimeType: "audio/webm;codecs=opus", timestamp: 5678 });
  await first.delete("s", 0);  // acked
  first.close();

  const second = await Outbox.open("persist", db);
  assert.deepEqual(await second.list("s"), [{ sequence: 1, size: 4 }]);
  const chunk = await second.get("s", 1);
  assert.deepEqual([...new Uint8Array(chunk.bytes)], [8, 8, 8, 8]);
  assert.equal(chunk.mimeType, "audio/webm;codecs=opus");
  assert.equal(chunk.timestamp, 5678);
  // the acked sequence 0 is not given out again: the next chunk is 2
  assert.equal((await second.append("s", { bytes: bytes(1) })).sequence, 2);
  // another database name is another outbox
  const other = await Outbox.open("other", db);
  assert.deepEqual(await other.list("s"), []);
  second.close();
  other.close();
});

test("append never goes below minSeq (sequences handed out while storage was full)", async () => {
  const outbox = await Outbox.open("t", freshDB());
  assert.equal((await outbox.append("s", { bytes: bytes(1) }, 5)).sequence, 5);
  assert.equal((await outbox.append("s", { bytes: bytes(1) }, 0)).sequence, 6);
  await outbox.updateMeta("s", { nextSeq: 3 });  // never backwards
  assert.equal((await outbox.meta("s")).nextSeq, 7);
  outbox.close();
});

test("sessions() sums chunks and bytes per session and counts rejected ones", async () => {
  const outbox = await Outbox.open("t", freshDB());
  await outbox.append("a", { bytes: bytes(10) });
  await outbox.append("a", { bytes: bytes(5) });
  await outbox.append("b", { bytes: bytes(7) });
  await outbox.reject("b", 0, { code: "invalid", message: "bad" });
  const rows = (await outbox.sessions()).map(({ sessionId, chunks, bytes: n, rejected, nextSeq }) => ({ sessionId, chunks, bytes: n, rejected, nextSeq }));
  await outbox.updateMeta("c", { nextSeq: 4, stopPending: { at: 1 } });  // everything sent, the stop not yet
  await outbox.updateMeta("d", { nextSeq: 9 });                         // finished: not listed
  rows.sort((x, y) => x.sessionId.localeCompare(y.sessionId));
  assert.deepEqual(rows, [
    { sessionId: "a", chunks: 2, bytes: 15, rejected: 0, nextSeq: 2 },
    { sessionId: "b", chunks: 0, bytes: 0, rejected: 1, nextSeq: 1 },
  ]);
  const all = (await outbox.sessions()).map(({ sessionId, chunks, stopPending }) => [sessionId, chunks, stopPending]);
  assert.deepEqual(all.sort((x, y) => x[0].localeCompare(y[0])), [["a", 2, false], ["b", 0, false], ["c", 0, true]]);
  outbox.close();
});

test("reject moves a chunk aside with its bytes and error; clearRejected forgets it", async () => {
  const outbox = await Outbox.open("t", freshDB());
  await outbox.append("s", { bytes: bytes(3, 9) });
  await outbox.append("s", { bytes: bytes(2) });
  await outbox.reject("s", 0, { code: "too_large", message: "over the limit" });
  assert.deepEqual((await outbox.list("s")).map((c) => c.sequence), [1]);
  const [rejected] = await outbox.rejected("s");
  assert.equal(rejected.sequence, 0);
  assert.deepEqual(rejected.error, { code: "too_large", message: "over the limit" });
  assert.deepEqual([...new Uint8Array(rejected.bytes)], [9, 9, 9]);
  assert.equal(await outbox.reject("s", 42, { code: "invalid" }), null);  // nothing there: nothing moved
  await outbox.clearRejected("s");
  assert.deepEqual(await outbox.rejected("s"), []);
  outbox.close();
});

test("isQuotaError recognizes QuotaExceededError and nothing else", () => {
  assert.equal(isQuotaError(new DOMException("full", "QuotaExceededError")), true);
  assert.equal(isQuotaError(new DOMException("abort", "AbortError")), false);
  assert.equal(isQuotaError(new Error("network")), false);
  assert.equal(isQuotaError(null), false);
});
