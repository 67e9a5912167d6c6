// Flow control (pure, no I/O): how many chunks may be in flight and when the next one may go.
// Fed by the server's chunk-acks, chunk errors, `backpressure` and `slowDown`; asked by the sender.
// Times are numbers (ms) passed in by the caller, so tests drive the clock.

/** Error codes after which the same chunk is sent again later; every other code is permanent for that chunk. */
export const RETRYABLE_CODES = new Set(["overloaded", "unavailable", "internal", "timeout", "disconnected"]);

export const DEFAULTS = Object.freeze({
  probeMs: 5000,          // while canAccept is false and no backpressure event says otherwise, send one chunk this often
  retryMs: 1000,          // first wait after a failure without retryAfterMs (timeouts, internal), doubled up to maxRetryMs
  maxRetryMs: 30000,
  slowDownMs: 10000,      // how long a slowDown keeps one chunk in flight and spaces sends
  slowDownGapMs: 1000,
});

/** True when a chunk refused with `code` should be kept and resent. */
export function isRetryable(code) {
  return RETRYABLE_CODES.has(code);
}

export class FlowControl {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.credits = 1;          // before the first ack: one chunk at a time
    this.canAccept = true;
    this.inFlight = 0;
    this.holdUntil = 0;        // nothing is sent before this time (overloaded, unavailable, retry backoff)
    this.retryAfterMs = null;  // the server's last retryAfterMs, while the hold lasts
    this.overloaded = false;
    this.serverState = "ok";   // the last `backpressure.state` the server sent
    this.slowUntil = 0;
    this.lastSentAt = -Infinity;
    this.waitingSince = null;  // when canAccept turned false (the probe clock)
    this.failures = 0;         // consecutive retryable failures, for the backoff
  }

  /** The most chunks allowed in flight now. */
  window(now) {
    if (now < this.slowUntil) return 1;
    return Math.max(this.credits, 1);
  }

  /** May one more chunk go now? */
  canSend(now) {
    return this.wakeAt(now) <= now && this.inFlight < this.window(now);
  }

  /** The earliest time a chunk may go (<= now: now); Infinity while only an answer in flight can open the window. */
  wakeAt(now) {
    if (this.inFlight >= this.window(now)) return Infinity;
    let at = this.holdUntil;
    if (now < this.slowUntil) at = Math.max(at, this.lastSentAt + this.options.slowDownGapMs);
    if (!this.canAccept) {
      // Hold back; one probe chunk after probeMs with nothing in flight (stored and acked even when buffering).
      if (this.inFlight > 0) return Infinity;
      at = Math.max(at, (this.waitingSince ?? now) + this.options.probeMs);
    }
    return at;
  }

  sent(now) {
    this.inFlight += 1;
    this.lastSentAt = now;
  }

  /** A chunk-ack (stored or duplicate). Duplicates carry no credits: the last ones stay. */
  acked(ack, now) {
    this.inFlight = Math.max(this.inFlight - 1, 0);
    this.failures = 0;
    this.overloaded = false;
    this.retryAfterMs = null;
    if (typeof ack.credits === "number") this.credits = Math.max(Math.floor(ack.credits), 0);
    if (typeof ack.canAccept === "boolean") this._setCanAccept(ack.canAccept, now);
  }

  /** A failed send: an error body `{code, retryAfterMs?}` or a local `timeout` / `disconnected`. */
  failed(error, now) {
    this.inFlight = Math.max(this.inFlight - 1, 0);
    if (!isRetryable(error.code)) return;
    this.failures += 1;
    let wait;
    if (typeof error.retryAfterMs === "number" && error.retryAfterMs >= 0) {
      wait = error.retryAfterMs;
      this.retryAfterMs = error.retryAfterMs;
    } else {
      wait = Math.min(this.options.retryMs * 2 ** (this.failures - 1), this.options.maxRetryMs);
    }
    if (error.code === "overloaded") {
      this.overloaded = true;
      this.credits = 1;  // after the hold: one probe, its ack gives the real credits
    }
    this.holdUntil = Math.max(this.holdUntil, now + wait);
  }

  /** The server's `backpressure { canAccept, state, retryAfterMs? }` event. */
  backpressure(body, now) {
    this.serverState = typeof body.state === "string" ? body.state : this.serverState;
    if (typeof body.canAccept === "boolean") this._setCanAccept(body.canAccept, now);
    if (body.state === "overloaded") {
      this.overloaded = true;
      const wait = typeof body.retryAfterMs === "number" ? body.retryAfterMs : this.options.retryMs;
      this.retryAfterMs = wait;
      this.holdUntil = Math.max(this.holdUntil, now + wait);
    } else {
      this.overloaded = false;
      if (body.canAccept === true) {
        this.credits = Math.max(this.credits, 1);
        this.holdUntil = Math.min(this.holdUntil, now);  // the server says go: end an overload hold early
        this.retryAfterMs = null;
      }
    }
  }

  /** The server's `slowDown`: one chunk in flight and a gap between sends for a while. */
  slowDown(now) {
    this.slowUntil = now + this.options.slowDownMs;
  }

  /** The connection dropped: every chunk in flight will be resent, the server's state is unknown again. */
  reset() {
    this.inFlight = 0;
    this.credits = 1;
    this.canAccept = true;
    this.waitingSince = null;
    this.overloaded = false;
    this.serverState = "ok";
  }

  /** The normalized view a UI shows (the recorder's `backpressure` event). */
  snapshot(now) {
    const slowDown = now < this.slowUntil;
    const overloaded = this.overloaded && now < this.holdUntil;
    let level = "ok";
    if (overloaded) level = "overloaded";
    else if (!this.canAccept) level = "buffering";
    else if (slowDown) level = "slowDown";
    return { level, canAccept: this.canAccept, overloaded, retryAfterMs: overloaded ? this.retryAfterMs : null, slowDown };
  }

  _setCanAccept(value, now) {
    // each "wait" (a new ack or event saying canAccept: false) restarts the probe clock
    this.waitingSince = value ? null : now;
    this.canAccept = value;
  }
}
