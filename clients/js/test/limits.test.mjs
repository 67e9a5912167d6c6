import { test } from "node:test";
import assert from "node:assert/strict";
import { POLLING_ENVELOPE_BYTES, limitOfClose, messageBytes, messageLimit, overLimit } from "../limits.js";

test("a chunk's message: its bytes on a websocket, base64 with room for its envelope on polling or an unknown transport", () => {
  assert.deepEqual([messageBytes(3000, "websocket"), messageBytes(3000, "webtransport")], [3000, 3000]);
  assert.equal(messageBytes(3000, "polling"), 4000 + POLLING_ENVELOPE_BYTES);
  assert.equal(messageBytes(3001, "polling"), 4004 + POLLING_ENVELOPE_BYTES);
  assert.equal(messageBytes(3001, null), 4004 + POLLING_ENVELOPE_BYTES);
});

test("a usable limit is a positive integer", () => {
  assert.deepEqual([22020096, 0, -1, 1.5, "22020096", undefined, null].map(messageLimit), [22020096, null, null, null, null, null, null]);
});

test("the limit a websocket close 1009 names; none for another code or reason", () => {
  assert.equal(limitOfClose({ code: 1009, reason: "message over the server's limit of 22020096 bytes" }), 22020096);
  assert.equal(limitOfClose({ code: 1009, reason: "" }), null);
  assert.equal(limitOfClose({ code: 1006, reason: "message over the server's limit of 22020096 bytes" }), null);
  assert.equal(limitOfClose(undefined), null);
});

test("a close over a message too large is laid to each chunk in flight over the limit, or to the largest when it is unknown", () => {
  const inFlight = new Map([[4, 900], [2, 1200], [3, 1001], [5, 10]]);
  assert.deepEqual(overLimit(inFlight, 1000, "websocket"), [2, 3]);
  // 1200 bytes are 1600 as base64, 2624 with the envelope's room: over 2500 on polling, not on a websocket
  assert.deepEqual(overLimit(inFlight, 2500, "polling"), [2]);
  assert.deepEqual(overLimit(inFlight, 2500, "websocket"), []);
  assert.deepEqual(overLimit(inFlight, null, "websocket"), [2]);
  assert.deepEqual(overLimit(new Map(), null, "websocket"), []);
});
