// Credit accounting and flow-control decisions (pure; the clock is passed in).

import { test } from "node:test";
import assert from "node:assert/strict";
import { FlowControl, isRetryable } from "../flow.js";

/** Send as many as allowed at `now`; how many went. */
function sendAll(flow, now, limit = 100) {
  let sent = 0;
  while (sent < limit && flow.canSend(now)) {
    flow.sent(now);
    sent += 1;
  }
  return sent;
}

test("before any ack one chunk at a time; then never more in flight than the last credits", () => {
  const flow = new FlowControl();
  assert.equal(sendAll(flow, 0), 1);
  flow.acked({ canAccept: true, credits: 3 }, 1);
  assert.equal(sendAll(flow, 1), 3);
  assert.equal(flow.inFlight, 3);
  assert.equal(flow.canSend(2), false);
  flow.acked({ canAccept: true, credits: 2 }, 3);  // 2 in flight, 2 allowed: full
  assert.equal(sendAll(flow, 3), 0);
  flow.acked({ canAccept: true, credits: 2 }, 4);
  assert.equal(sendAll(flow, 4), 1);
});

test("a duplicate ack (no credits) keeps the last credits", () => {
  const flow = new FlowControl();
  flow.sent(0);
  flow.acked({ canAccept: true, credits: 4 }, 0);
  flow.sent(1);
  flow.acked({ canAccept: true, duplicate: true }, 2);
  assert.equal(flow.credits, 4);
  assert.equal(sendAll(flow, 2), 4);
});

test("credits 0 and canAccept false hold everything; one probe after probeMs; a backpressure ok resumes at once", () => {
  const flow = new FlowControl({ probeMs: 1000 });
  flow.sent(0);
  flow.acked({ canAccept: false, credits: 0 }, 100);
  assert.equal(flow.canSend(100), false);
  assert.equal(flow.canSend(1099), false);
  assert.equal(flow.wakeAt(100), 1100);
  assert.equal(sendAll(flow, 1100), 1);  // the probe: stored even while buffering, its ack says more
  assert.equal(flow.wakeAt(1100), Infinity);
  flow.acked({ canAccept: false, credits: 0 }, 1200);
  assert.equal(flow.wakeAt(1200), 2200);    // the probe clock restarts
  flow.backpressure({ canAccept: true, state: "ok" }, 1300);
  assert.equal(sendAll(flow, 1300), 1);     // credits are at least 1 while canAccept
  assert.deepEqual(flow.snapshot(1300), { level: "ok", canAccept: true, overloaded: false, retryAfterMs: null, slowDown: false });
});

test("overloaded: hold until retryAfterMs, then one chunk, whose ack restores the credits", () => {
  const flow = new FlowControl();
  flow.sent(0);
  flow.acked({ canAccept: true, credits: 5 }, 0);
  assert.equal(sendAll(flow, 0), 5);
  flow.failed({ code: "overloaded", retryAfterMs: 2000 }, 10);
  assert.deepEqual(flow.snapshot(10), { level: "overloaded", canAccept: true, overloaded: true, retryAfterMs: 2000, slowDown: false });
  // the other four come back overloaded too, the hold does not grow past the latest answer's
  for (let i = 0; i < 4; i++) flow.failed({ code: "overloaded", retryAfterMs: 2000 }, 20);
  assert.equal(flow.inFlight, 0);
  assert.equal(flow.canSend(2019), false);
  assert.equal(flow.wakeAt(100), 2020);
  assert.equal(sendAll(flow, 2020), 1);
  flow.acked({ canAccept: true, credits: 3 }, 2100);
  assert.equal(flow.snapshot(2100).level, "ok");
  assert.equal(sendAll(flow, 2100), 3);
});

test("the server's backpressure event: overloaded holds, buffering waits, ok ends a hold early", () => {
  const flow = new FlowControl({ probeMs: 500 });
  flow.backpressure({ canAccept: false, state: "overloaded", retryAfterMs: 3000 }, 0);
  assert.equal(flow.snapshot(0).level, "overloaded");
  assert.equal(flow.canSend(2999), false);
  flow.backpressure({ canAccept: false, state: "buffering" }, 1000);
  assert.equal(flow.snapshot(1000).level, "buffering");
  flow.backpressure({ canAccept: true, state: "ok" }, 1500);
  assert.equal(flow.canSend(1500), true);
});

test("timeouts and internal errors back off exponentially up to maxRetryMs; permanent errors do not hold", () => {
  const flow = new FlowControl({ retryMs: 100, maxRetryMs: 500 });
  const holds = [];
  for (let i = 0; i < 5; i++) {
    flow.sent(0);
    flow.failed({ code: i % 2 ? "internal" : "timeout" }, 0);
    holds.push(flow.holdUntil);
  }
  assert.deepEqual(holds, [100, 200, 400, 500, 500]);
  flow.sent(600);
  flow.acked({ canAccept: true, credits: 2 }, 600);
  assert.equal(flow.failures, 0);
  const before = flow.holdUntil;
  flow.sent(700);
  flow.failed({ code: "invalid" }, 700);
  assert.equal(flow.holdUntil, before);
  assert.equal(flow.inFlight, 0);
});

test("unavailable with retryAfterMs (storage_full on the server) holds exactly that long", () => {
  const flow = new FlowControl();
  flow.sent(0);
  flow.failed({ code: "unavailable", retryAfterMs: 750, reason: "storage_full" }, 1000);
  assert.equal(flow.canSend(1749), false);
  assert.equal(flow.canSend(1750), true);
});

test("slowDown: one chunk in flight and a gap between sends, for slowDownMs", () => {
  const flow = new FlowControl({ slowDownMs: 5000, slowDownGapMs: 400 });
  flow.sent(-1000);
  flow.acked({ canAccept: true, credits: 6 }, -900);
  flow.slowDown(0);
  assert.equal(flow.snapshot(0).level, "slowDown");
  assert.equal(sendAll(flow, 0), 1);
  flow.acked({ canAccept: true, credits: 6 }, 100);
  assert.equal(flow.canSend(100), false);  // the gap since the last send
  assert.equal(sendAll(flow, 400), 1);
  flow.acked({ canAccept: true, credits: 6 }, 5000);
  assert.equal(sendAll(flow, 5000), 6);    // the episode is over
});

test("a reconnect forgets what was in flight and starts again at one chunk", () => {
  const flow = new FlowControl();
  flow.sent(0);
  flow.acked({ canAccept: false, credits: 0 }, 0);
  flow.reset();
  assert.equal(flow.inFlight, 0);
  assert.equal(sendAll(flow, 1), 1);
});

test("retryable codes: overloaded, unavailable, internal, timeout, disconnected; permanent: the rest", () => {
  assert.deepEqual(["overloaded", "unavailable", "internal", "timeout", "disconnected"].map(isRetryable), [true, true, true, true, true]);
  assert.deepEqual(["invalid", "too_large", "forbidden", "conflict", "unauthorized"].map(isRetryable), [false, false, false, false, false]);
});
