// The live transcript: de-duplicated, sorted by seq, lastSeq for the replay (pure).

import { test } from "node:test";
import assert from "node:assert/strict";
import { SegmentList } from "../segments.js";

const seg = (id, seq, startMs, text = `t${id}`) => ({ id, sessionId: "s", seq, fromSeq: seq, toSeq: seq, startMs, endMs: startMs + 1000, text });

test("a segment sent twice (live and in the replay) is kept once", () => {
  const list = new SegmentList();
  assert.equal(list.add(seg("a", 1, 0)), true);
  assert.equal(list.add(seg("a", 1, 0)), false);
  assert.equal(list.add({ ...seg("a", 1, 0) }), false);
  assert.equal(list.length, 1);
});

test("segments sharing a seq are all kept, in time order; the list stays sorted by seq", () => {
  const list = new SegmentList();
  list.add(seg("c", 3, 20000));
  list.add(seg("b", 1, 5000));
  list.add(seg("a", 1, 0));
  list.add(seg("d", 2, 10000));
  assert.deepEqual(list.items.map((s) => s.id), ["a", "b", "d", "c"]);
  assert.equal(list.text(), "ta\ntb\ntd\ntc");
});

test("lastSeq is the highest seq seen, -1 before any", () => {
  const list = new SegmentList();
  assert.equal(list.lastSeq, -1);
  list.add(seg("x", 4, 0));
  list.add(seg("y", 2, 0));
  assert.equal(list.lastSeq, 4);
});

test("segments without an id are de-duplicated by seq, fromSeq and startMs", () => {
  const list = new SegmentList();
  const { id, ...noId } = seg("n", 5, 100);
  assert.equal(list.add(noId), true);
  assert.equal(list.add({ ...noId }), false);
  assert.equal(list.add({ ...noId, startMs: 200 }), true);
  assert.equal(list.length, 2);
});

test("payloads without an integer seq are ignored", () => {
  const list = new SegmentList();
  assert.equal(list.add(null), false);
  assert.equal(list.add({ id: "z", text: "no seq" }), false);
  assert.equal(list.add({ id: "z", seq: "3" }), false);
  assert.equal(list.length, 0);
});
