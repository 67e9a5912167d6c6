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
 * on requestData(), all that are left on stop() (then "stop"). Events are async, as in a browser.
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

  _give(blob) {
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
