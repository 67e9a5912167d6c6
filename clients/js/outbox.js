// The outbox: a tiny wrapper over IndexedDB that holds every chunk until the server acks it.
// Stores: `chunks` and `rejected` keyed [sessionId, sequence] (so a session's chunks come out in
// sequence order), `sessions` keyed sessionId with the next sequence to allocate and the end of the
// newest audio stored (`storedUntil`). No browser API other than an IndexedDB factory, which tests
// pass in (fake-indexeddb).

export const DB_VERSION = 1;
const CHUNKS = "chunks";
const SESSIONS = "sessions";
const REJECTED = "rejected";

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new DOMException("transaction aborted", "AbortError"));
    tx.onerror = () => {};  // the abort that follows carries the error
  });
}

function upgrade(db) {
  if (!db.objectStoreNames.contains(CHUNKS)) db.createObjectStore(CHUNKS, { keyPath: ["sessionId", "sequence"] });
  if (!db.objectStoreNames.contains(SESSIONS)) db.createObjectStore(SESSIONS, { keyPath: "sessionId" });
  if (!db.objectStoreNames.contains(REJECTED)) db.createObjectStore(REJECTED, { keyPath: ["sessionId", "sequence"] });
}

/** True for the error IndexedDB raises when the origin's storage quota is used up. */
export function isQuotaError(err) {
  return Boolean(err) && (err.name === "QuotaExceededError" || err.code === 22 ||
    /quota/i.test(String(err.message ?? "")));
}

export class Outbox {
  /** Open (and create on first use) the database `dbName`. */
  static async open(dbName = "scribeai-recorder", { indexedDB = globalThis.indexedDB, IDBKeyRange } = {}) {
    if (!indexedDB) throw new Error("IndexedDB is not available here: pass options.indexedDB (e.g. fake-indexeddb)");
    const keyRange = IDBKeyRange ?? globalThis.IDBKeyRange;
    if (!keyRange) throw new Error("IDBKeyRange is not available here: pass options.IDBKeyRange with options.indexedDB");
    const req = indexedDB.open(dbName, DB_VERSION);
    req.onupgradeneeded = () => upgrade(req.result);
    const db = await new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error(`IndexedDB ${dbName} is blocked by another tab's older version`));
    });
    // another tab upgrading the schema: let it, this connection is closed and reopened on next use
    db.onversionchange = () => db.close();
    return new Outbox(db, dbName, keyRange);
  }

  constructor(db, name, keyRange) {
    this.db = db;
    this.name = name;
    this.keyRange = keyRange;  // the IDBKeyRange of the factory in use (the browser's, or fake-indexeddb's)
  }

  _range(sessionId) {
    return this.keyRange.bound([sessionId, -Infinity], [sessionId, Infinity]);
  }

  toString() {
    return `Outbox(${this.name})`;
  }

  /**
   * Store a chunk and allocate its sequence in one transaction: max(the session's stored nextSeq, minSeq);
   * with `fields.timestamp` and `fields.durationMs`, the session's `storedUntil` becomes at least their sum.
   * Resolves with the stored record; rejects (QuotaExceededError included) with nothing written.
   */
  async append(sessionId, fields, minSeq = 0) {
    const tx = this.db.transaction([CHUNKS, SESSIONS], "readwrite");
    const finished = done(tx);
    const sessions = tx.objectStore(SESSIONS);
    const now = Date.now();
    const meta = await request(sessions.get(sessionId));
    const sequence = Math.max(meta?.nextSeq ?? 0, minSeq);
    const record = { ...fields, sessionId, sequence, size: fields.bytes.byteLength, createdAt: now };
    tx.objectStore(CHUNKS).put(record);
    const next = { createdAt: now, ...meta, sessionId, nextSeq: sequence + 1, updatedAt: now };
    // the end of the newest audio stored for the session (kept after the chunk's ack deletes it)
    const end = (fields.timestamp ?? NaN) + (fields.durationMs ?? NaN);
    if (Number.isFinite(end)) next.storedUntil = Math.max(meta?.storedUntil ?? -Infinity, end);
    sessions.put(next);
    await finished;
    return record;
  }

  /** Store a chunk under its own sequence (e.g. a rejected chunk given another chance); nextSeq moves past it. */
  async put(record) {
    const tx = this.db.transaction([CHUNKS, SESSIONS], "readwrite");
    const finished = done(tx);
    const sessions = tx.objectStore(SESSIONS);
    const now = Date.now();
    const meta = await request(sessions.get(record.sessionId));
    const stored = { createdAt: now, ...record, size: record.bytes.byteLength };
    delete stored.error;
    delete stored.rejectedAt;
    tx.objectStore(CHUNKS).put(stored);
    sessions.put({ createdAt: now, ...meta, sessionId: record.sessionId,
      nextSeq: Math.max(meta?.nextSeq ?? 0, record.sequence + 1), updatedAt: now });
    await finished;
    return stored;
  }

  /** The session's bookkeeping: `{sessionId, nextSeq, createdAt, updatedAt, ...}` or null. */
  async meta(sessionId) {
    const tx = this.db.transaction(SESSIONS, "readonly");
    return (await request(tx.objectStore(SESSIONS).get(sessionId))) ?? null;
  }

  /** Merge `patch` into the session's bookkeeping (nextSeq never goes down). */
  async updateMeta(sessionId, patch) {
    const tx = this.db.transaction(SESSIONS, "readwrite");
    const finished = done(tx);
    const store = tx.objectStore(SESSIONS);
    const meta = (await request(store.get(sessionId))) ?? { sessionId, nextSeq: 0, createdAt: Date.now() };
    const next = { ...meta, ...patch, sessionId, updatedAt: Date.now() };
    next.nextSeq = Math.max(meta.nextSeq ?? 0, patch.nextSeq ?? 0);
    store.put(next);
    await finished;
    return next;
  }

  /** One chunk with its bytes, or null. */
  async get(sessionId, sequence) {
    const tx = this.db.transaction(CHUNKS, "readonly");
    return (await request(tx.objectStore(CHUNKS).get([sessionId, sequence]))) ?? null;
  }

  /** Forget an acked chunk. */
  async delete(sessionId, sequence) {
    const tx = this.db.transaction(CHUNKS, "readwrite");
    const finished = done(tx);
    tx.objectStore(CHUNKS).delete([sessionId, sequence]);
    await finished;
  }

  /** `[{sequence, size}]` of the session's waiting chunks, in sequence order (bytes are not kept in memory). */
  async list(sessionId) {
    return this._scan(CHUNKS, this._range(sessionId), (value) => ({ sequence: value.sequence, size: value.size }));
  }

  /** Move a chunk the server refused for good to the `rejected` store, with the error. */
  async reject(sessionId, sequence, error) {
    const tx = this.db.transaction([CHUNKS, REJECTED], "readwrite");
    const finished = done(tx);
    const chunks = tx.objectStore(CHUNKS);
    const record = await request(chunks.get([sessionId, sequence]));
    if (record) {
      tx.objectStore(REJECTED).put({ ...record, error, rejectedAt: Date.now() });
      chunks.delete([sessionId, sequence]);
    }
    await finished;
    return record ?? null;
  }

  /** The session's rejected chunks with their bytes and errors, in sequence order. */
  async rejected(sessionId) {
    return this._scan(REJECTED, this._range(sessionId), (value) => value);
  }

  /** Delete the session's rejected chunks (after the application saved or gave up on them). */
  async clearRejected(sessionId) {
    const tx = this.db.transaction(REJECTED, "readwrite");
    const finished = done(tx);
    tx.objectStore(REJECTED).delete(this._range(sessionId));
    await finished;
  }

  /** Every session with chunks waiting or rejected, or a stop to send: `[{sessionId, chunks, bytes, rejected, nextSeq, updatedAt, stopPending}]`. */
  async sessions() {
    const found = new Map();
    const entry = (sessionId) => {
      if (!found.has(sessionId)) found.set(sessionId, { sessionId, chunks: 0, bytes: 0, rejected: 0 });
      return found.get(sessionId);
    };
    await this._scan(CHUNKS, null, (value) => {
      const e = entry(value.sessionId);
      e.chunks += 1;
      e.bytes += value.size;
    });
    await this._scan(REJECTED, null, (value) => { entry(value.sessionId).rejected += 1; });
    const metas = new Map();
    await this._scan(SESSIONS, null, (meta) => {
      metas.set(meta.sessionId, meta);
      if (meta.stopPending) entry(meta.sessionId);
    });
    const result = [];
    for (const e of found.values()) {
      const meta = metas.get(e.sessionId);
      result.push({ ...e, nextSeq: meta?.nextSeq ?? 0, updatedAt: meta?.updatedAt ?? null, stopPending: Boolean(meta?.stopPending) });
    }
    return result.sort((a, b) => (b.updatedAt ?? 0) - (a.updatedAt ?? 0) || a.sessionId.localeCompare(b.sessionId));
  }

  close() {
    this.db.close();
  }

  async _scan(storeName, range, visit) {
    const tx = this.db.transaction(storeName, "readonly");
    const req = tx.objectStore(storeName).openCursor(range);
    const out = [];
    await new Promise((resolve, reject) => {
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor) return resolve();
        const item = visit(cursor.value);
        if (item !== undefined) out.push(item);
        cursor.continue();
      };
      req.onerror = () => reject(req.error);
    });
    return out;
  }
}
