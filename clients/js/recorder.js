// A browser recorder for ScribeAI that never loses audio.
// MediaRecorder blobs are written to an IndexedDB outbox before they are sent and deleted only when the
// server acks them (stored or duplicate); sending obeys the server's credits, canAccept, overloaded and
// slowDown; every (re)connect joins the session and resends what the outbox still holds.

import { io } from "socket.io-client";
import { chunkMimeType, pickMimeType, sniffContainer } from "./mime.js";
import { CutMarker, lossOf, readMarkers } from "./cut.js";
import { FlowControl, isRetryable } from "./flow.js";
import { limitOfClose, messageBytes, messageLimit, overLimit } from "./limits.js";
import { Outbox, isQuotaError } from "./outbox.js";
import { nextToSend, resendPlan } from "./resend.js";
import { LiveTranscript } from "./captions.js";

export const RECORDER_DEFAULTS = Object.freeze({
  timesliceMs: 1000,           // one chunk a second: a reload loses at most about this much, the transcript waits no longer
  dbName: "scribeai-recorder",
  ackTimeoutMs: 20000,         // an unanswered chunk counts as failed (and is resent) after this
  stopTimeoutMs: 60000,        // stop() waits this long for the outbox to empty
  joinRetryMs: 2000,
  reconnectMs: 1000,           // after the server itself disconnected us (a restart): reconnect after this
  storageReserveBytes: 1 << 20, // "full" when less than a chunk plus this is left of the quota
  checksum: true,              // send each chunk's sha256 so the server verifies the bytes
  flushOnHide: true,           // the page unloads or hides (reload, close, tab switch): write the audio so far to the outbox
  interim: false,              // ask for live captions (transcriptInterim): "interim" events before each final segment
});

function browserStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;  // a sandboxed frame throws on access
  }
}

const ACTIVE = new Set(["connecting", "recording", "paused"]);
const MAX_DURATION_MS = 3_600_000;  // the largest durationMs the server takes

function sessionIdOf(options) {
  if (options.sessionId) return String(options.sessionId);
  return globalThis.crypto.randomUUID();
}

async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return undefined;  // not a secure context: the server checks sizes only
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function once(target, type) {
  return new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));
}

export class Recorder extends EventTarget {
  /**
   * What earlier page loads (or other recorders) left: sessions with chunks waiting, a stop not yet sent, or a
   * recording cut by a reload or a closed tab (`interrupted`: when, and how much audio was lost).
   * `[{sessionId, chunks, bytes, rejected, nextSeq, updatedAt, stopPending, interrupted}]`.
   */
  static async pending({ dbName = RECORDER_DEFAULTS.dbName, indexedDB, IDBKeyRange, localStorage = browserStorage() } = {}) {
    const outbox = await Outbox.open(dbName, { indexedDB, IDBKeyRange });
    try {
      const found = new Map((await outbox.sessions()).map((s) => [s.sessionId, { ...s, interrupted: null }]));
      const now = Date.now();
      for (const marker of readMarkers(localStorage, dbName)) {
        const meta = await outbox.meta(marker.sessionId);
        const interrupted = lossOf(marker, meta?.storedUntil ?? null, now);
        if (!interrupted) continue;
        const entry = found.get(marker.sessionId) ?? { sessionId: marker.sessionId, chunks: 0, bytes: 0, rejected: 0,
          nextSeq: meta?.nextSeq ?? 0, updatedAt: meta?.updatedAt ?? null, stopPending: Boolean(meta?.stopPending) };
        found.set(marker.sessionId, { ...entry, interrupted });
      }
      return [...found.values()].filter((s) => s.chunks > 0 || s.stopPending || s.interrupted)
        .sort((a, b) => (b.updatedAt ?? 0) - (a.updatedAt ?? 0) || a.sessionId.localeCompare(b.sessionId));
    } finally {
      outbox.close();
    }
  }

  /** The chunks of a session the server refused for good, with their bytes and errors (see README). */
  static async rejected({ dbName = RECORDER_DEFAULTS.dbName, indexedDB, IDBKeyRange, sessionId } = {}) {
    const outbox = await Outbox.open(dbName, { indexedDB, IDBKeyRange });
    try {
      return await outbox.rejected(sessionId);
    } finally {
      outbox.close();
    }
  }

  /** A recorder for an existing session's outbox: connects and resends it now; start() records more into it. */
  static resume(options) {
    if (!options || !options.sessionId) throw new TypeError("Recorder.resume needs options.sessionId");
    const recorder = new Recorder(options);
    recorder._open().then(() => recorder._connect(), (err) => recorder._emitError("storage", String(err)));
    return recorder;
  }

  constructor(options = {}) {
    super();
    if (!options.url) throw new TypeError("Recorder needs options.url (the server's origin)");
    this.options = { ...RECORDER_DEFAULTS, ...options };
    this.sessionId = sessionIdOf(options);
    this.state = "idle";
    this.mimeType = null;
    this.connected = false;
    this.transport = null;
    this.lastJoin = null;        // the last session-joined reply
    this.completed = false;      // session-completed arrived
    this._live = new LiveTranscript();
    this._segments = this._live.segments;
    this._flow = new FlowControl(options.flow);
    this._pending = new Map();   // sequence -> size: the outbox of this session (in flight included)
    this._volatile = new Map();  // sequence -> record: chunks IndexedDB could not take (storage full), memory only
    this._inFlight = new Map();  // sequence -> connection epoch it was sent on
    this._rejected = new Set();  // sequences refused for good (kept aside, not lost)
    this._settingAside = new Set();  // refused for good, on their way to the rejected store: not sent again meanwhile
    this._refusals = new Map();  // sequence -> the too_large error of a connection closed over it (its send's answer)
    this._messageLimit = null;   // the server's bytes per Engine.IO message (its handshake's maxPayload, or its too_large)
    this._tooLarge = null;       // {epoch, message}: a protocol-error too_large came; the close follows
    this._nextSeq = 0;
    this._epoch = 0;             // +1 per disconnect: answers from an older connection do not touch flow state
    this._joined = false;
    this._loaded = false;
    this._outbox = null;
    this._socket = null;
    // what this recorder listens to on its socket, its Manager (socket.io-client gives the page's other sockets on
    // this origin the same one) and the Manager's engine: close() takes off these and nothing else
    this._listeners = [];        // [target, event, fn]
    this._engine = null;         // the engine _engineListeners are on (a new one per connection attempt)
    this._engineListeners = new Map();  // event -> once-listener not yet called
    this._writes = Promise.resolve();
    this._wakeTimer = null;
    this._waiters = new Set();
    this._lastBackpressure = JSON.stringify(this._flow.snapshot(Date.now()));
    this._storageFullShown = false;
    this._closed = false;
    this._stopPending = undefined;  // a stop() the server has not heard of yet (kept in IndexedDB too)
    // when this page's recording was cut, for the next page (localStorage: a reload cannot outrun it)
    this._cut = new CutMarker(options.localStorage === undefined ? browserStorage() : options.localStorage,
      this.options.dbName, this.sessionId);
    this._unloading = false;     // pagehide came: the page is going
    this._leaving = false;       // beforeunload came (less than a second ago): store the next blob as fast as possible
  }

  /** The transcript so far: de-duplicated transcriptSegment payloads sorted by seq. */
  get segments() {
    return this._segments.items;
  }

  /** Finals and live captions merged as a viewer sees them (LiveTranscript: lines(), captions, text()). */
  get live() {
    return this._live;
  }

  /** What waits in the outbox for this session (chunks in flight included). */
  get queue() {
    let bytes = 0;
    for (const size of this._pending.values()) bytes += size;
    return { chunks: this._pending.size, bytes };
  }

  /** The next sequence this recorder will give a chunk (persisted: it continues after a reload). */
  get nextSequence() {
    return this._nextSeq;
  }

  /** The socket.io-client Socket (null before the first connect and after close()), for diagnostics and tests. */
  get socket() {
    return this._socket;
  }

  /** The normalized flow-control view (as in the `backpressure` event). */
  get backpressure() {
    return this._flow.snapshot(Date.now());
  }

  toString() {
    return `Recorder(${this.sessionId}, ${this.state}, queue=${this._pending.size})`;
  }

  // -- the user's verbs --------------------------------------------------------

  /** Record `mediaStream` (or the microphone) into the session; chunks go to the outbox, then the server. */
  async start(mediaStream) {
    if (ACTIVE.has(this.state)) throw new Error(`Recorder.start: already ${this.state}`);
    this._closed = false;
    this._setState("connecting");
    try {
      const outbox = await this._open();
      if (this._stopPending) await outbox.updateMeta(this.sessionId, { stopPending: null });
      this._stopPending = null;  // recording again: the session is not finished after all
      this._connect();
      let stream = mediaStream;
      this._ownStream = !stream;
      if (!stream) {
        const getUserMedia = this.options.getUserMedia ??
          ((constraints) => globalThis.navigator.mediaDevices.getUserMedia(constraints));
        stream = await getUserMedia({ audio: true });
      }
      this._stream = stream;
      this._startMediaRecorder(stream);
    } catch (err) {
      this._setState("error");
      this._emitError(err?.name === "NotAllowedError" ? "microphone_denied" : "start_failed", String(err?.message ?? err));
      throw err;
    }
    this._setState("recording");
    this._syncSessionStatus();
  }

  /** Pause recording: the audio so far is flushed to the outbox, the server is told (pause-session). */
  pause() {
    if (this.state !== "recording") return;
    this._mediaRecorder.requestData();
    this._mediaRecorder.pause();
    this._pausedAt = Date.now();
    this._cut.update({ cutAt: Date.now(), how: "paused" });
    this._setState("paused");
    this._sessionEvent("pause-session");
  }

  /** Resume after pause() (resume-session). Not to be confused with the static Recorder.resume(). */
  resume() {
    if (this.state !== "paused") return;
    this._mediaRecorder.resume();
    if (this._pausedAt !== null) this._pausedMs += Date.now() - this._pausedAt;  // no audio: not the chunk's length
    this._pausedAt = null;
    this._cut.update({ cutAt: null, how: null });
    this._setState("recording");
    this._sessionEvent("resume-session");
  }

  /**
   * Stop: flush the last blob, wait until the outbox of this session is empty (or `timeoutMs`), then
   * `stopSession {sessionId, lastSeq}`. Resolves `{drained, reply, queue}`; the socket stays open for
   * the transcript until close(). Chunks still waiting stay in the outbox (Recorder.pending()).
   */
  stop({ timeoutMs = this.options.stopTimeoutMs } = {}) {
    // a second stop() while one runs (a double click) waits for the same one
    this._stopping ??= this._stop(timeoutMs).finally(() => { this._stopping = null; });
    return this._stopping;
  }

  async _stop(timeoutMs) {
    this._setState("stopping");
    await this._stopMediaRecorder();
    await this._settleWrites();
    this._cut.clear();  // every blob is in the outbox: nothing was cut
    const outbox = await this._open();
    this._connect();
    const deadline = Date.now() + timeoutMs;
    const drained = await this._waitUntil(() => this._pending.size === 0, timeoutMs);
    let reply = null;
    if (await this._waitUntil(() => this._joined, Math.max(deadline - Date.now(), 0))) reply = await this._sendStop();
    if (!drained) {
      this._emitError("stop_incomplete",
        `${this._pending.size} chunk(s) still wait in the outbox; they are resent while this page is open, or by Recorder.resume()`);
    }
    // The server could not be told: tell it once the outbox is empty (this page, or a later one's Recorder.resume()).
    this._stopPending = reply ? null : { at: Date.now() };
    await outbox.updateMeta(this.sessionId, { stoppedAt: Date.now(), stopPending: this._stopPending }).catch(() => {});
    if (reply) this._emit("sessionStopped", { reply });
    this._setState("stopped");
    return { drained, reply, queue: this.queue };
  }

  /** stopSession {sessionId, lastSeq}: the reply, or null when it was not answered or refused. */
  async _sendStop() {
    const body = { sessionId: this.sessionId };
    if (this._nextSeq > 0) body.lastSeq = this._nextSeq - 1;
    let reply;
    try {
      reply = await this._socket.timeout(this.options.ackTimeoutMs).emitWithAck("stopSession", body);
    } catch (err) {
      this._emitError("timeout", `stopSession was not answered: ${err?.message ?? err}`);
      return null;
    }
    if (reply?.error) {
      this._emitError(reply.error.code, `stopSession refused: ${reply.error.message}`);
      return null;
    }
    return reply;
  }

  /** A stop() that could not reach the server: send its stopSession once everything is delivered. */
  async _finishDeferredStop() {
    if (!this._stopPending || this._stopSending || !this._joined || this._pending.size > 0) return;
    if (ACTIVE.has(this.state) || this.state === "stopping") return;
    this._stopSending = true;
    try {
      const reply = await this._sendStop();
      if (reply) {
        this._stopPending = null;
        await (await this._open()).updateMeta(this.sessionId, { stopPending: null }).catch(() => {});
        this._emit("sessionStopped", { reply });
      }
    } finally {
      this._stopSending = false;
    }
  }

  /** Wait until this session's outbox is empty; true when it is, false after `timeoutMs`. */
  async flush({ timeoutMs = this.options.stopTimeoutMs } = {}) {
    await this._settleWrites();
    await this._open();
    return this._waitUntil(() => this._pending.size === 0, timeoutMs);
  }

  /** Disconnect without stopping the session: a recording in progress is flushed to the outbox first. */
  async close() {
    this._closed = true;
    this._unwatchPage?.();
    this._unwatchPage = null;
    const recording = this._mediaRecorder !== null && this._mediaRecorder !== undefined;
    await this._stopMediaRecorder();
    await this._settleWrites();
    if (recording) this._cut.clear();
    clearTimeout(this._wakeTimer);
    if (this._socket) {
      for (const [target, event, fn] of this._listeners.splice(0)) target.off(event, fn);
      this._offEngine();
      this._socket.disconnect();
      this._socket = null;
    }
    this._setConnected(false);
    this._joined = false;
    if (this._outbox) (await this._outbox).close();
    this._outbox = null;
    this._loaded = false;
    if (ACTIVE.has(this.state) || this.state === "stopping") this._setState("idle");
    for (const waiter of this._waiters) waiter.resolve(false);
    this._waiters.clear();
  }

  /** A new token (e.g. after `unauthorized`): reconnects with it. */
  setToken(token) {
    this.options.token = token;
    if (!this._socket) return;
    this._socket.auth = token ? { token } : {};
    if (!this._socket.connected) {
      this._socket.connect();
      this._watchHandshake(this._socket);
    }
  }

  // -- recording -----------------------------------------------------------------

  _startMediaRecorder(stream) {
    const MediaRecorderClass = this.options.MediaRecorder ?? globalThis.MediaRecorder;
    if (!MediaRecorderClass) throw new Error("MediaRecorder is not available in this browser");
    const support = MediaRecorderClass.isTypeSupported?.bind(MediaRecorderClass);
    const mimeType = pickMimeType(support, this.options.mimeType);
    const mediaRecorder = new MediaRecorderClass(stream, mimeType ? { mimeType } : undefined);
    this.mimeType = mediaRecorder.mimeType || mimeType || null;
    mediaRecorder.addEventListener("dataavailable", (event) => this._enqueue(event.data));
    mediaRecorder.addEventListener("error", (event) => {
      this._emitError("recorder", String(event.error?.message ?? event.error ?? "MediaRecorder failed"));
    });
    // A stop we did not ask for (the microphone unplugged, a MediaRecorder error): what was recorded is queued
    // as usual, the recorder says so; start() records again.
    mediaRecorder.addEventListener("stop", () => {
      if (this._mediaRecorder !== mediaRecorder) return;
      this._mediaRecorder = null;
      this._emitError("recorder", "recording stopped by the browser (the microphone went away or MediaRecorder failed)");
      this._setState("error");
      this._settleWrites().then(() => this._cut.clear());  // its last blob is stored: it ended, it was not cut
    });
    this._sliceStart = Date.now();
    this._pausedMs = 0;
    this._pausedAt = null;
    mediaRecorder.start(this.options.timesliceMs);
    this._mediaRecorder = mediaRecorder;
    this._cut.begin(this._sliceStart, this.options.timesliceMs);
    this._watchPage();
  }

  /**
   * A reload or a closed tab loses what MediaRecorder holds since the last timeslice: ask for it (requestData) as the
   * page goes, and note when it went. `beforeunload` comes first, while the next page is still being fetched, so its
   * blob usually reaches IndexedDB; after `pagehide` a browser may run nothing more.
   */
  _watchPage() {
    const win = this.options.window === undefined ? globalThis.window : this.options.window;
    const doc = this.options.document === undefined ? globalThis.document : this.options.document;
    if (!this.options.flushOnHide || this._unwatchPage) return;
    const recording = () => this._mediaRecorder?.state === "recording";
    const flush = () => {
      if (!recording()) return;
      this._leaving = true;
      setTimeout(() => { this._leaving = false; }, 1000);  // still here a second later: the user stayed
      // What comes after this is not kept if the page goes: Chromium blocks the page while its leave-page prompt
      // shows, and the audio of that time never comes out of MediaRecorder (measured: lost = the prompt's time).
      this._cut.update({ leavingAt: Date.now() });
      this._mediaRecorder.requestData();
    };
    const onPageHide = () => {
      if (!recording()) return;
      this._unloading = true;
      this._cut.update({ cutAt: Date.now(), how: "pagehide" });
      this._mediaRecorder.requestData();
    };
    const onPageShow = () => {  // back from the back/forward cache: still recording
      this._unloading = false;
      if (recording()) this._cut.update({ cutAt: null, how: null });
    };
    const onVisibility = () => {
      if (this._unloading || !recording()) return;
      const hidden = doc.visibilityState === "hidden";
      if (hidden) this._mediaRecorder.requestData();
      this._cut.update(hidden ? { cutAt: Date.now(), how: "hidden" } : { cutAt: null, how: null });
    };
    win?.addEventListener("beforeunload", flush);
    win?.addEventListener("pagehide", onPageHide);
    win?.addEventListener("pageshow", onPageShow);
    doc?.addEventListener("visibilitychange", onVisibility);
    this._unwatchPage = () => {
      win?.removeEventListener("beforeunload", flush);
      win?.removeEventListener("pagehide", onPageHide);
      win?.removeEventListener("pageshow", onPageShow);
      doc?.removeEventListener("visibilitychange", onVisibility);
    };
  }

  async _stopMediaRecorder() {
    const mediaRecorder = this._mediaRecorder;
    this._mediaRecorder = null;
    if (mediaRecorder && mediaRecorder.state !== "inactive") {
      const stopped = once(mediaRecorder, "stop");
      mediaRecorder.requestData();
      mediaRecorder.stop();
      await stopped;  // the last dataavailable comes before "stop"
    }
    if (this._ownStream && this._stream) this._stream.getTracks().forEach((track) => track.stop());
    this._stream = null;
  }

  _enqueue(blob) {
    if (!blob || blob.size === 0) return;
    const now = Date.now();
    const timestamp = this._sliceStart ?? now;  // epoch ms of the chunk's start
    this._sliceStart = now;
    // the time it recorded: its wall time less any pause in it
    const paused = (this._pausedMs ?? 0) + (this._pausedAt ? now - this._pausedAt : 0);
    this._pausedMs = 0;
    if (this._pausedAt) this._pausedAt = now;
    const recordedMs = Math.max(0, now - timestamp - paused);
    this._writes = this._writes
      .then(() => this._store(blob, timestamp, now - timestamp, recordedMs))
      .catch((err) => this._emitError("storage", `a chunk could not be queued: ${err?.message ?? err}`));
  }

  async _store(blob, timestamp, durationMs, recordedMs = durationMs) {
    // The page is going (beforeunload): the browser gives it some tens of ms while it fetches the next page, so the
    // blob goes straight to IndexedDB; its sha256 is computed when it is sent, the storage estimate skipped.
    const leaving = this._leaving || this._unloading;
    const bytes = await blob.arrayBuffer();
    // durationMs is the wall time the blob covers, recordedMs the same less pauses (sent as the chunk's durationMs:
    // the session's length the server reports is their sum); timestamp + durationMs is
    // the outbox's storedUntil, which tells the next page what a reload lost
    // a browser that names no type: the container the recording's bytes start with (its first blob's, for WebM)
    this._sniffedType = sniffContainer(new Uint8Array(bytes, 0, Math.min(bytes.byteLength, 12))) ?? this._sniffedType ?? null;
    const fields = { bytes, mimeType: chunkMimeType(blob.type, this.mimeType, this._sniffedType), timestamp, durationMs,
      recordedMs };
    if (this.options.checksum && !leaving) fields.checksum = await sha256Hex(bytes);
    const outbox = await this._open();
    let record = null;
    let problem = null;
    if (!leaving && await this._storageFull(bytes.byteLength)) {
      problem = { code: "storage_full", reason: "the storage estimate leaves no room" };
    } else {
      try {
        record = await outbox.append(this.sessionId, fields, this._nextSeq);
        this._storageFullShown = false;
        if (!this._unloading) this._cut.update({ aliveAt: Date.now() });
      } catch (err) {
        problem = isQuotaError(err)
          ? { code: "storage_full", reason: `IndexedDB refused the write (${err.name})` }
          : { code: "storage", reason: `IndexedDB failed: ${err?.name ?? ""} ${err?.message ?? err}` };
      }
    }
    if (!record) record = await this._keepInMemory(outbox, fields, problem);
    this._nextSeq = record.sequence + 1;
    this._pending.set(record.sequence, record.size);
    this._emitQueue();
    this._pump();
  }

  /** IndexedDB cannot take the chunk: it is sent from memory (lost if the tab closes before its ack). */
  async _keepInMemory(outbox, fields, { code, reason }) {
    const record = { ...fields, sessionId: this.sessionId, sequence: this._nextSeq, size: fields.bytes.byteLength,
      createdAt: Date.now(), volatile: true };
    this._volatile.set(record.sequence, record);
    // the sequence must not be given out again after a reload, even if this chunk is lost
    await outbox.updateMeta(this.sessionId, { nextSeq: record.sequence + 1 }).catch(() => {});
    if (!this._storageFullShown) {
      this._storageFullShown = true;
      const what = code === "storage_full" ? `browser storage is full (${reason})` : `the outbox cannot store chunks (${reason})`;
      this._emitError(code, `${what}: new chunks are kept in memory until the server acks them; chunks already in the ` +
        "outbox are safe. Free some space (other sites' data) to restore durability.", record.sequence);
    }
    return record;
  }

  async _storageFull(size) {
    const storage = this.options.storage ?? globalThis.navigator?.storage;
    if (!storage?.estimate) return false;
    try {
      const { usage = 0, quota } = await storage.estimate();
      return typeof quota === "number" && quota - usage < size + this.options.storageReserveBytes;
    } catch {
      return false;  // no estimate: the write itself will tell
    }
  }

  async _settleWrites() {
    let tail;
    do {
      tail = this._writes;
      await tail;
    } while (tail !== this._writes);
  }

  // -- the outbox ----------------------------------------------------------------

  _open() {
    if (!this._outbox) {
      const { dbName, indexedDB, IDBKeyRange } = this.options;
      this._outbox = Outbox.open(dbName, { indexedDB, IDBKeyRange }).then(async (outbox) => {
        const meta = await outbox.meta(this.sessionId);
        this._nextSeq = Math.max(this._nextSeq, meta?.nextSeq ?? 0);
        if (meta?.stopPending && this._stopPending === undefined) this._stopPending = meta.stopPending;
        for (const { sequence, size } of await outbox.list(this.sessionId)) this._pending.set(sequence, size);
        for (const { sequence } of await outbox.rejected(this.sessionId)) this._rejected.add(sequence);
        this._loaded = true;
        this._emitQueue();
        this._changed();
        this._pump();
        return outbox;
      });
      this._outbox.catch(() => { this._outbox = null; });
    }
    return this._outbox;
  }

  // -- the connection --------------------------------------------------------------

  _connect() {
    if (this._socket || this._closed) return;
    const { url, token, socketOptions = {} } = this.options;
    const auth = { ...(token ? { token } : {}), ...(socketOptions.auth ?? {}) };
    const connect = this.options.io ?? io;  // tests pass a fake
    const socket = connect(url, { ...socketOptions, auth });
    this._socket = socket;
    this._watchHandshake(socket);
    const on = (event, fn) => this._listen(socket, event, fn);
    // socket.io-client makes a new engine for each reconnection attempt, right after this event
    this._listen(socket.io, "reconnect_attempt", () => queueMicrotask(() => this._watchHandshake(socket)));
    on("connect", () => {
      this._setConnected(true);
      this._onceOnEngine(socket.io?.engine, "upgrade", () => this._setConnected(true));
      this._join();
    });
    on("disconnect", (reason, details) => {
      this._closedOverLimit(details);
      this._epoch += 1;
      this._joined = false;
      this._inFlight.clear();
      this._flow.reset();
      this._setConnected(false);
      this._emitBackpressure();
      // The server closed the connection (a restart or a shutdown): socket.io-client would not retry.
      if (reason === "io server disconnect" && !this._closed) {
        setTimeout(() => {
          if (this._socket !== socket || socket.connected) return;
          socket.connect();
          this._watchHandshake(socket);
        }, this.options.reconnectMs);
      }
    });
    on("connect_error", (err) => {
      this._setConnected(false);
      if (err?.data?.code === "unauthorized") {
        this._emitError("unauthorized", `${err.data.message ?? err.message}: chunks wait in the outbox; call setToken()`);
      }
    });
    on("protocol-error", (body) => {
      if (body?.code === "too_large") {  // a message over the server's limit: the disconnect that follows says whose
        this._learnLimit(body.details?.limit);
        this._tooLarge = { epoch: this._epoch, message: String(body.message ?? "message too large") };
        return;
      }
      this._emitError("protocol", `the server closed the connection: ${body?.message ?? "undecodable packet"}`);
    });
    on("backpressure", (body) => {
      this._flow.backpressure(body ?? {}, Date.now());
      this._emitBackpressure();
      this._pump();
    });
    on("slowDown", () => {
      this._flow.slowDown(Date.now());
      this._emitBackpressure();
      this._pump();
    });
    on("transcriptSegment", (segment) => {
      if (segment?.sessionId !== this.sessionId) return;
      const replaced = this._live.addSegment(segment);
      if (replaced) this._emit("segment", { segment, replaced });
    });
    on("transcriptInterim", (interim) => {
      if (interim?.sessionId !== this.sessionId) return;
      const caption = this._live.addInterim(interim);
      if (caption) this._emit("interim", { interim, caption });
    });
    on("session-completed", (body) => {
      if (body?.sessionId !== this.sessionId) return;
      this.completed = true;
      const dropped = this._live.dropCaptions();  // every chunk is transcribed: no final will replace them
      this._emit("completed", { sessionId: this.sessionId, dropped });
    });
  }

  async _join() {
    const socket = this._socket;
    const epoch = this._epoch;
    let reply;
    try {
      reply = await socket.timeout(this.options.ackTimeoutMs)
        .emitWithAck("joinSession", { sessionId: this.sessionId, lastSeq: this._segments.lastSeq,
          ...(this.options.interim ? { interim: true } : {}) });
    } catch {
      reply = { error: { code: "timeout", message: "joinSession was not answered" } };
    }
    if (epoch !== this._epoch || socket !== this._socket) return;  // that connection is gone; its successor joins
    if (reply?.error) {
      const { code, message } = reply.error;
      if (isRetryable(code)) {
        setTimeout(() => { if (epoch === this._epoch && socket.connected) this._join(); }, this.options.joinRetryMs);
      } else {
        this._emitError(code, `joinSession refused: ${message}`);
      }
      return;
    }
    await this._open();
    if (epoch !== this._epoch || socket !== this._socket) return;
    this.lastJoin = reply;
    const plan = resendPlan(this._pending.keys(), reply, this._nextSeq);
    plan.lost = plan.lost.filter((seq) => !this._rejected.has(seq));
    this._joined = true;
    this._emit("joined", { reply, plan });
    if (plan.lost.length > 0) {
      this._emitError("chunks_lost", `the server lacks sequences ${plan.lost.join(", ")} and this outbox no longer holds them`);
    }
    this._syncSessionStatus(reply.status);
    this._changed();
    this._pump();
    this._finishDeferredStop();
  }

  _setConnected(connected) {
    const transport = connected ? (this._socket?.io.engine?.transport?.name ?? null) : null;
    if (connected === this.connected && transport === this.transport) return;
    this.connected = connected;
    this.transport = transport;
    this._emit("connection", { connected, transport });
    this._changed();
  }

  /** The Engine.IO handshake says the most bytes one message may carry (maxPayload): a chunk over it is not sent. */
  _watchHandshake(socket) {
    // an engine the page's other sockets opened already shook hands: not seen here
    this._onceOnEngine(socket.io?.engine, "handshake", (handshake) => this._learnLimit(handshake?.maxPayload));
  }

  /** `target.on(event, fn)` (the socket or its Manager), remembered for close(). */
  _listen(target, event, fn) {
    if (typeof target?.on !== "function") return;
    target.on(event, fn);
    this._listeners.push([target, event, fn]);
  }

  /** `fn` once on `engine`, unless already asked; what was still awaited on an earlier engine (closed) is taken off. */
  _onceOnEngine(engine, event, fn) {
    if (typeof engine?.once !== "function") return;
    if (engine !== this._engine) {
      this._offEngine();
      this._engine = engine;
    }
    if (this._engineListeners.has(event)) return;
    const listener = (...args) => {
      this._engineListeners.delete(event);
      fn(...args);
    };
    this._engineListeners.set(event, listener);
    engine.once(event, listener);
  }

  _offEngine() {
    for (const [event, listener] of this._engineListeners) this._engine.off?.(event, listener);
    this._engineListeners.clear();
    this._engine = null;
  }

  _learnLimit(value) {
    this._messageLimit = messageLimit(value) ?? this._messageLimit;
  }

  /**
   * The connection closes. When the server closed it over a message too large (protocol-error too_large, or a
   * websocket close 1009), the chunks in flight whose message is over its limit are refused for good: resent, each
   * would close every connection after this one, and the chunks after it would never go.
   */
  _closedOverLimit(details) {
    const told = this._tooLarge?.epoch === this._epoch ? this._tooLarge : null;
    this._tooLarge = null;
    const closeLimit = limitOfClose(details?.context);
    if (!told && details?.context?.code !== 1009) return;
    this._learnLimit(closeLimit);
    const message = told?.message ?? String(details.context.reason || "a message too big (websocket close 1009)");
    const inFlight = new Map([...this._inFlight.keys()].map((seq) => [seq, this._pending.get(seq) ?? 0]));
    const blamed = overLimit(inFlight, this._messageLimit, this.transport);
    if (blamed.length === 0) {
      this._emitError("protocol", `the server closed the connection: ${message}`);
      return;
    }
    for (const seq of blamed) {
      this._settingAside.add(seq);
      this._refusals.set(seq, { code: "too_large",
        message: `the server closed the connection over its ${inFlight.get(seq)} bytes: ${message}` });
    }
  }

  /** Make the server's session status follow ours (after a reconnect, a pause may not have reached it). */
  _syncSessionStatus(serverStatus = this.lastJoin?.status) {
    if (!this._joined) return;
    if (this.options.title && !this._titled && this.state === "recording") {
      this._titled = true;
      this._sessionEvent("start-session", { title: String(this.options.title) });
      return;  // start-session also resumes a paused session
    }
    if (this.state === "paused" && serverStatus !== "paused") this._sessionEvent("pause-session");
    if (this.state === "recording" && serverStatus === "paused") this._sessionEvent("resume-session");
  }

  _sessionEvent(name, extra = {}) {
    if (!this._joined) return;  // the next join syncs it
    this._socket.timeout(this.options.ackTimeoutMs).emitWithAck(name, { ...extra, sessionId: this.sessionId })
      .then((reply) => {
        if (reply?.error) this._emitError(reply.error.code, `${name}: ${reply.error.message}`);
        else if (this.lastJoin) this.lastJoin = { ...this.lastJoin, status: reply.status };
      }, () => {});  // unanswered: the next join syncs it
  }

  // -- sending ---------------------------------------------------------------------

  /** Send what flow control allows now; wake up again when a hold ends. */
  _pump() {
    clearTimeout(this._wakeTimer);
    this._wakeTimer = null;
    if (!this._joined || !this._loaded || !this._socket?.connected) return;
    const now = Date.now();
    while (this._flow.canSend(now)) {
      const seq = nextToSend(this._pending.keys(), this._inFlight, this._settingAside);
      if (seq === null) break;
      this._inFlight.set(seq, this._epoch);
      this._flow.sent(now);
      this._send(seq, this._epoch);
    }
    this._emitBackpressure();
    const wakeAt = this._flow.wakeAt(now);
    const hasWork = this._pending.size > this._inFlight.size + this._settingAside.size;
    if ((hasWork || this._flow.overloaded) && Number.isFinite(wakeAt) && wakeAt > now) {
      this._wakeTimer = setTimeout(() => this._pump(), wakeAt - now);
    }
  }

  async _send(seq, epoch) {
    let reply;
    try {
      reply = await this._deliver(seq, epoch);
    } catch (err) {
      // a local failure (the outbox could not be read): the chunk stays, and is tried again after a backoff
      reply = { error: { code: "internal", message: `chunk ${seq} could not be sent: ${err?.message ?? err}` } };
    }
    const refusal = this._refusals.get(seq);
    if (refusal) {  // the connection was closed over this chunk: that is its answer
      this._refusals.delete(seq);
      if (reply?.error) reply = { error: refusal };
      else this._settingAside.delete(seq);
    }
    const current = epoch === this._epoch && this._inFlight.get(seq) === epoch;
    if (current) this._inFlight.delete(seq);
    try {
      if (reply && !reply.error) await this._acked(seq, reply, current);
      else await this._failed(seq, reply?.error ?? { code: "invalid", message: "empty answer" }, current);
    } catch (err) {
      this._emitError("storage", `the outbox could not be updated for chunk ${seq}: ${err?.message ?? err}`, seq);
    }
    this._changed();
    this._pump();
  }

  /**
   * One try: the chunk's bytes from the outbox (or memory), emitted with an ack timeout; the answer. Chunks are read
   * (and hashed, when stored in haste) one after another, so they go out in the order _pump chose.
   */
  async _deliver(seq, epoch) {
    const socket = this._socket;
    const previous = this._preparing ?? Promise.resolve();
    const ready = previous.catch(() => {}).then(() => this._payload(seq));
    this._preparing = ready;
    const payload = await ready;
    if (payload.error) return payload;
    if (!socket || socket !== this._socket || epoch !== this._epoch || !socket.connected) {
      return { error: { code: "disconnected", message: `chunk ${seq}: the connection is gone` } };
    }
    const size = payload.audio.byteLength;
    const bytes = messageBytes(size, socket.io?.engine?.transport?.name);
    if (this._messageLimit !== null && bytes > this._messageLimit) {  // the server would close the connection over it
      const encoded = bytes === size ? "" : ` (about ${bytes} on polling, as base64)`;
      return { error: { code: "too_large",
        message: `not sent: its ${size} bytes${encoded} are over the server's limit of ${this._messageLimit} bytes per message` } };
    }
    try {
      return await socket.timeout(this.options.ackTimeoutMs).emitWithAck("audio-chunk", payload);
    } catch {
      const code = socket.connected && epoch === this._epoch ? "timeout" : "disconnected";
      return { error: { code, message: `no answer to chunk ${seq} (${code})` } };
    }
  }

  /** The audio-chunk payload of an outbox (or memory) record, or `{error}` when it is gone. */
  async _payload(seq) {
    const outbox = this._volatile.has(seq) ? null : await this._outbox;
    const record = this._volatile.get(seq) ?? await outbox?.get(this.sessionId, seq);
    if (!record) return { error: { code: "gone", message: "no longer in the outbox" } };
    const payload = { sessionId: this.sessionId, sequence: seq, timestamp: record.timestamp, size: record.size,
      mimeType: record.mimeType, audio: record.bytes };
    // every chunk says it (a session with one chunk that does not has its length measured, or assumed, instead);
    // at least 1 ms: the server refuses 0 (a blob given right after another, at a pause)
    const recorded = record.recordedMs ?? record.durationMs;
    if (Number.isFinite(recorded)) payload.durationMs = Math.min(Math.max(Math.round(recorded), 1), MAX_DURATION_MS);
    const checksum = record.checksum ?? (this.options.checksum ? await sha256Hex(record.bytes) : undefined);
    if (checksum) payload.checksum = checksum;
    return payload;
  }

  async _acked(seq, reply, current) {
    if (current) this._flow.acked(reply, Date.now());
    if (this._pending.has(seq)) {
      if (!this._volatile.delete(seq)) await (await this._outbox)?.delete(this.sessionId, seq);
      this._pending.delete(seq);
      this._emitQueue();
      if (this._pending.size === 0) this._finishDeferredStop();
    }
    this._emit("ack", {
      sequence: seq,
      status: reply.duplicate ? "duplicate" : "stored",
      credits: typeof reply.credits === "number" ? reply.credits : this._flow.credits,
      canAccept: reply.canAccept,
      chunkId: reply.chunkId,
    });
  }

  async _failed(seq, error, current) {
    if (current) this._flow.failed(error, Date.now());
    if (error.code === "gone") {
      this._pending.delete(seq);
      this._emitQueue();
      return;
    }
    if (isRetryable(error.code)) {
      this._emit("retry", { sequence: seq, code: error.code, message: error.message, retryAfterMs: error.retryAfterMs ?? null });
      return;
    }
    // Refused for good (invalid, too_large, forbidden, conflict, ...): set aside, never deleted silently.
    if (!this._pending.has(seq)) return;
    // not sent again while it moves (nor at all by this page, if the outbox cannot move it: the error says so)
    this._settingAside.add(seq);
    if (this._volatile.has(seq)) {
      this._rejectedInMemory = [...(this._rejectedInMemory ?? []), { ...this._volatile.get(seq), error }];
      this._volatile.delete(seq);
    } else {
      await (await this._outbox)?.reject(this.sessionId, seq, { code: error.code, message: error.message });
    }
    this._settingAside.delete(seq);
    this._pending.delete(seq);
    this._rejected.add(seq);
    this._emitQueue();
    this._emitError(error.code, `chunk ${seq} was refused: ${error.message}; it is kept aside (Recorder.rejected())`, seq);
  }

  // -- events ----------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(code, message, sequence) {
    this._emit("error", sequence === undefined ? { code, message } : { code, message, sequence });
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state });
    this._changed();
  }

  _emitQueue() {
    this._emit("queue", this.queue);
  }

  _emitBackpressure() {
    const snapshot = this._flow.snapshot(Date.now());
    const key = JSON.stringify(snapshot);
    if (key === this._lastBackpressure) return;
    this._lastBackpressure = key;
    this._emit("backpressure", snapshot);
  }

  /** Re-check everyone waiting in _waitUntil. */
  _changed() {
    for (const waiter of [...this._waiters]) {
      if (waiter.check()) {
        this._waiters.delete(waiter);
        clearTimeout(waiter.timer);
        waiter.resolve(true);
      }
    }
  }

  _waitUntil(check, timeoutMs) {
    if (check()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = { check, resolve };
      waiter.timer = setTimeout(() => { this._waiters.delete(waiter); resolve(check()); }, timeoutMs);
      this._waiters.add(waiter);
    });
  }
}
