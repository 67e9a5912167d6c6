// The resend set after a joinSession answer (pure).

import { test } from "node:test";
import assert from "node:assert/strict";
import { nextToSend, resendPlan } from "../resend.js";

test("everything in the outbox is resent in sequence order, whatever the server holds", () => {
  const plan = resendPlan([7, 3, 5, 4], { maxSeq: 5, missing: [2, 4] }, 8);
  assert.deepEqual(plan.resend, [3, 4, 5, 7]);
  assert.deepEqual(plan.alreadyStored, [3, 5]);  // acked before the drop, ack lost: answered duplicate
  assert.deepEqual(plan.serverLacks, [4, 7]);
  assert.deepEqual(plan.lost, [2]);                // missing on the server and gone from here
  assert.equal(plan.maxSeq, 5);
});

test("a new session (maxSeq -1) lacks everything; nothing is lost", () => {
  const plan = resendPlan(new Set([0, 1, 2]).keys(), { maxSeq: -1, missing: [] }, 3);
  assert.deepEqual(plan.resend, [0, 1, 2]);
  assert.deepEqual(plan.serverLacks, [0, 1, 2]);
  assert.deepEqual(plan.alreadyStored, []);
  assert.deepEqual(plan.lost, []);
});

test("missing sequences this recorder never made (>= nextSeq) are not reported lost", () => {
  const plan = resendPlan([], { maxSeq: 9, missing: [4, 8] }, 5);
  assert.deepEqual(plan.lost, [4]);
  assert.deepEqual(plan.resend, []);
});

test("an empty or malformed answer still resends the outbox", () => {
  assert.deepEqual(resendPlan([2, 1, 2], {}, 3).resend, [1, 2]);
  assert.deepEqual(resendPlan([1], { maxSeq: "x", missing: null }, 2).serverLacks, [1]);
});

test("nextToSend picks the lowest sequence not in flight and not skipped", () => {
  assert.equal(nextToSend([5, 2, 9, 3]), 2);
  assert.equal(nextToSend([5, 2, 9, 3], new Set([2, 3])), 5);
  assert.equal(nextToSend(new Map([[5, 1], [2, 1]]).keys(), new Map([[2, 0]])), 5);
  assert.equal(nextToSend([5, 2], new Set([2]), new Set([5])), null);
  assert.equal(nextToSend([]), null);
});
