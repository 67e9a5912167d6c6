// Test doubles for what only a browser has: MediaRecorder (fed real recorded blobs) and a storage estimate.

import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { IDBFactory, IDBKeyRange } from "fake-indexeddb";

export const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../tests/fixtures/audio");

/** The four consecutive Chromium timeslice blobs of one recording (one WebM stream cut by MediaRecorder). */
export async function timesliceBlobs() {
  const blobs = [];
  for (let i = 0; i < 4; i++) {
    const bytes = await readFile(path.join(FIXTURES, `timeslice_${String(i).padStart(4, "0")}.webm`));
    blobs.push(new Blob([bytes], { type: "audio/webm;codecs=opus" }));
  }
  return blobs;
}

/** A fresh IndexedDB (fake-indexeddb) per test: the options a Recorder or Outbox takes. */
export function freshDB() {
  return { indexedDB: new IDBFactory(), IDBKeyRange };
}

/**
 * A MediaRecorder that gives the blobs it was handed: one per tick() (a timeslice elapsing), the next one
 * on requestData(), all that are left on stop() (then "stop"). Events are async, as in a browser; hold() keeps
 * tick() and requestData() blobs back until release().
 */
export class FakeMediaRecorder extends EventTarget {
  static blobs = [];
  static instances = [];
  static isTypeSupported(type) {
    return type === "audio/webm;codecs=opus" || type === "audio/webm";
  }

  constructor(stream, options = {}) {
    super();
    this.stream = stream;
    this.mimeType = options.mimeType ?? "";
    this.state = "inactive";
    this.timeslice = null;
    this.queue = [...FakeMediaRecorder.blobs];
    this.held = null;
    FakeMediaRecorder.instances.push(this);
  }

  start(timeslice) {
    this.state = "recording";
    this.timeslice = timeslice;
  }

  pause() { this.state = "paused"; }
  resume() { this.state = "recording"; }

  tick() {
    if (this.queue.length === 0) return false;
    this._give(this.queue.shift());
    return true;
  }

  requestData() {
    if (this.state === "inactive") throw new DOMException("inactive", "InvalidStateError");
    if (this.queue.length > 0) this._give(this.queue.shift());
  }

  stop() {
    if (this.state === "inactive") throw new DOMException("inactive", "InvalidStateError");
    this.state = "inactive";
    const rest = this.queue.splice(0);
    setTimeout(() => {
      for (const blob of rest) this.dispatchEvent(Object.assign(new Event("dataavailable"), { data: blob }));
      this.dispatchEvent(new Event("stop"));
    }, 1);
  }

  /** The browser stops on its own (the microphone went away): the last blob, then "stop". */
  fail() {
    this.state = "inactive";
    const rest = this.queue.splice(0, 1);
    setTimeout(() => {
      for (const blob of rest) this.dispatchEvent(Object.assign(new Event("dataavailable"), { data: blob }));
      this.dispatchEvent(new Event("stop"));
    }, 1);
  }

  /** The page goes before the browser hands over what it was asked for: blobs wait until release() (or forever). */
  hold() {
    this.held ??= [];
  }

  release() {
    const held = this.held ?? [];
    this.held = null;
    for (const blob of held) this._give(blob);
  }

  _give(blob) {
    if (this.held) {
      this.held.push(blob);
      return;
    }
    setTimeout(() => this.dispatchEvent(Object.assign(new Event("dataavailable"), { data: blob })), 1);
  }
}

/** A media stream whose tracks record whether they were stopped. */
export function fakeStream() {
  const track = { stopped: false, stop() { this.stopped = true; } };
  return { track, getTracks: () => [track] };
}

/** Resolve with the first `type` event's detail that satisfies `match`. */
export function nextEvent(target, type, match = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { target.removeEventListener(type, listener); reject(new Error(`no ${type} event within ${ms} ms`)); }, ms);
    function listener(event) {
      if (!match(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, listener);
      resolve(event.detail);
    }
    target.addEventListener(type, listener);
  });
}

/** Every `type` event's detail, collected in order. */
export function collect(target, type) {
  const seen = [];
  target.addEventListener(type, (event) => seen.push(event.detail));
  return seen;
}

/** on/once/off as socket.io-client's emitters have them; `push(event, ...args)` calls the listeners; `events()` counts them. */
class FakeEmitter {
  constructor() {
    this.listeners = new Map();
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
    return this;
  }

  once(event, fn) {
    const listener = (...args) => {
      this.off(event, listener);
      fn(...args);
    };
    listener.fn = fn;  // off(event, fn) finds it, as in socket.io-client's emitter
    return this.on(event, listener);
  }

  off(event, fn) {
    const left = (this.listeners.get(event) ?? []).filter((listener) => listener !== fn && listener.fn !== fn);
    if (left.length > 0) this.listeners.set(event, left);
    else this.listeners.delete(event);
    return this;
  }

  push(event, ...args) {
    for (const fn of [...this.listeners.get(event) ?? []]) fn(...args);
  }

  /** `{event: number of listeners}` of the events listened to. */
  events() {
    return Object.fromEntries([...this.listeners].map(([event, fns]) => [event, fns.length]));
  }
}

/**
 * A stand-in for socket.io-client's Socket (Recorder option `io`), driven by `handler(event, payload)`,
 * which returns the ack body (or a promise of it). Connects when the Recorder calls io(), asynchronously, like io().
 * `push(event, body)` is a server-sent event; `drop(reason, details)` cuts the connection (pending acks fail as in 4.8,
 * after the disconnect event).
 */
export class FakeSocket extends FakeEmitter {
  constructor(handler, { autoConnect = true } = {}) {
    super();
    this.handler = handler;
    this.connected = false;
    this.sent = [];          // every [event, payload] emitted
    this.pending = new Set();
    this.auth = {};
    // its Manager (which a page's other sockets may share) and the Manager's engine
    this.io = Object.assign(new FakeEmitter(), { engine: Object.assign(new FakeEmitter(), { transport: { name: "websocket" } }) });
    this.autoConnect = autoConnect;
  }

  /** The `io` option: records the url and options it was called with, gives this socket. */
  factory() {
    return (url, options) => {
      this.url = url;
      this.options = options;
      if (this.autoConnect) setTimeout(() => this.connect(), 1);  // as io() does, once the caller added its listeners
      return this;
    };
  }

  connect() {
    if (this.connected) return;
    this.connected = true;
    this.push("connect");
  }

  disconnect() {
    if (!this.connected) return;
    this.connected = false;
    this._failPending();
    this.push("disconnect", "io client disconnect");
  }

  drop(reason = "transport close", details = undefined) {
    this.connected = false;
    this.push("disconnect", reason, details);
    this._failPending();
  }

  timeout(ms) {
    return {
      emitWithAck: (event, payload) => {
        this.sent.push([event, payload]);
        return new Promise((resolve, reject) => {
          const entry = { reject };
          this.pending.add(entry);
          const timer = setTimeout(() => { this.pending.delete(entry); reject(new Error("operation has timed out")); }, ms);
          Promise.resolve(this.handler(event, payload)).then((reply) => {
            if (!this.pending.has(entry) || reply === NO_ANSWER) return;  // no answer: the timeout or a drop ends it
            this.pending.delete(entry);
            clearTimeout(timer);
            resolve(reply);
          });
          entry.timer = timer;
        });
      },
    };
  }

  _failPending() {
    for (const entry of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new Error("socket has been disconnected"));
    }
    this.pending.clear();
  }

  /** The sequences of the audio-chunk emits, in order. */
  chunkSequences() {
    return this.sent.filter(([event]) => event === "audio-chunk").map(([, payload]) => payload.sequence);
  }
}

/** A handler's answer meaning "never answer" (the ack times out or the connection drops first). */
export const NO_ANSWER = Symbol("no answer");

/** A plain server for FakeSocket: stores chunks, answers joinSession from what it holds. */
export function fakeServer({ credits = 5, stored = new Map(), onChunk } = {}) {
  const server = {
    stored,
    joins: [],
    handler(event, payload) {
      if (event === "joinSession") {
        server.joins.push(payload);
        const seqs = [...stored.keys()];
        const maxSeq = seqs.length ? Math.max(...seqs) : -1;
        const missing = [];
        for (let s = 0; s < maxSeq; s++) if (!stored.has(s)) missing.push(s);
        return { sessionId: payload.sessionId, status: "recording", maxSeq, totalChunks: seqs.length, missing };
      }
      if (event === "audio-chunk") {
        const custom = onChunk?.(payload);
        if (custom !== undefined) return custom;
        const duplicate = stored.has(payload.sequence);
        stored.set(payload.sequence, payload);
        return { sessionId: payload.sessionId, sequence: payload.sequence, chunkId: `c${payload.sequence}`, duplicate,
          canAccept: true, ...(duplicate ? {} : { credits }) };
      }
      if (event === "stopSession") {
        const seqs = [...stored.keys()];
        return { sessionId: payload.sessionId, status: "stopped", maxSeq: seqs.length ? Math.max(...seqs) : -1,
          totalChunks: seqs.length, missing: [] };
      }
      return { sessionId: payload?.sessionId, status: event === "pause-session" ? "paused" : "recording" };
    },
  };
  return server;
}

/** Wait until `check()` is true (polling every 5 ms), or fail after `ms`. */
export async function until(check, ms = 5000, what = "the condition") {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** localStorage in memory (the Storage interface the Recorder uses: getItem, setItem, removeItem, key, length). */
export class MemoryStorage {
  constructor() { this.items = new Map(); }
  get length() { return this.items.size; }
  key(i) { return [...this.items.keys()][i] ?? null; }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
  removeItem(key) { this.items.delete(key); }
}

/** What a page gives the Recorder (its `window`, `document` and `localStorage` options): fire() sends their events. */
export function fakePage() {
  const window = new EventTarget();
  const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
  return {
    window, document, localStorage: new MemoryStorage(),
    fire(type) {
      if (type === "visibilitychange") document.dispatchEvent(new Event(type));
      else window.dispatchEvent(new Event(type));
    },
    hide() { document.visibilityState = "hidden"; this.fire("visibilitychange"); },
    show() { document.visibilityState = "visible"; this.fire("visibilitychange"); },
  };
}
