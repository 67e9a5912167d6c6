// Where a recording was cut (no I/O but a Storage object passed in): while a page records, it keeps one small
// marker per session in localStorage, written synchronously (so a reload cannot outrun it as it can an IndexedDB
// write): when it started, when it last stored a chunk, when the page began to go (beforeunload), and when and how
// it was cut (pagehide, hidden, paused).
// The next page compares the cut with the end of the last chunk the outbox stored: that difference is what was lost.

const PREFIX = "scribeai-recorder:";

function keyPrefix(dbName) {
  return `${PREFIX}${dbName}:recording:`;
}

/** How a cut came: `pagehide` (a reload, a closed tab, a navigation), `hidden` (the page was hidden and then
 * never came back: killed in the background), `paused` (paused, then the page went), null (no notice: a crash). */
export const CUT_KINDS = Object.freeze(["pagehide", "hidden", "paused"]);

/** One session's marker in `storage` (localStorage, or anything with getItem/setItem/removeItem); no-ops without one. */
export class CutMarker {
  constructor(storage, dbName, sessionId) {
    this.storage = storage ?? null;
    this.key = `${keyPrefix(dbName)}${sessionId}`;
  }

  /** A new recording life: started now, not cut. */
  begin(now, timesliceMs) {
    this._write({ startedAt: now, aliveAt: now, timesliceMs, cutAt: null, how: null });
  }

  /** Merge `patch` ({aliveAt}, {leavingAt}, {cutAt, how}) into the marker, if there is one. */
  update(patch) {
    const marker = this.read();
    if (marker) this._write({ ...marker, ...patch });
  }

  read() {
    return parse(this._get());
  }

  /** The recording ended in order (stopped, closed, flushed): nothing to report. */
  clear() {
    try {
      this.storage?.removeItem(this.key);
    } catch {
      // storage refused (private mode): there is nothing to clear either
    }
  }

  _get() {
    try {
      return this.storage?.getItem(this.key) ?? null;
    } catch {
      return null;
    }
  }

  _write(marker) {
    try {
      this.storage?.setItem(this.key, JSON.stringify(marker));
    } catch {
      // full or refused: the next page cannot say what a cut lost, recording goes on
    }
  }
}

function parse(text) {
  if (!text) return null;
  try {
    const marker = JSON.parse(text);
    return marker && typeof marker === "object" && Number.isFinite(marker.startedAt) ? marker : null;
  } catch {
    return null;
  }
}

/** Every session's marker for the outbox `dbName`: `[{sessionId, startedAt, aliveAt, timesliceMs, cutAt, how}]`. */
export function readMarkers(storage, dbName) {
  const prefix = keyPrefix(dbName);
  const found = [];
  try {
    for (let i = 0; i < (storage?.length ?? 0); i++) {
      const key = storage.key(i);
      if (!key?.startsWith(prefix)) continue;
      const marker = parse(storage.getItem(key));
      if (marker) found.push({ ...marker, sessionId: key.slice(prefix.length) });
    }
  } catch {
    return [];
  }
  return found;
}

/**
 * What a cut lost, from its marker and the end of the last chunk the outbox stored (`storedUntil`, epoch ms, or
 * null): `{startedAt, cutAt, how, storedUntil, lostMs}`; lostMs is null when the cut's time is unknown (no notice,
 * or hidden and killed later). Null when the marker may be a recording still going on (in another tab): no cut
 * was noted and it stored a chunk within the last three timeslices (at least 5 s).
 * A pagehide's loss counts from the beforeunload before it at the latest: a blob stored after that (the flush it
 * asked for) holds no audio of the time between, however late it came (a leave-page prompt blocks the page).
 */
export function lossOf(marker, storedUntil, now) {
  let kept = Math.max(storedUntil ?? -Infinity, marker.startedAt);  // a chunk before startedAt is an earlier life's
  const cutAt = Number.isFinite(marker.cutAt) ? marker.cutAt : null;
  const how = CUT_KINDS.includes(marker.how) ? marker.how : null;
  if (how === null && now - (marker.aliveAt ?? marker.startedAt) < Math.max(3 * (marker.timesliceMs ?? 0), 5000)) return null;
  const known = cutAt !== null && how !== "hidden";
  if (how === "pagehide" && Number.isFinite(marker.leavingAt) && marker.leavingAt <= cutAt) kept = Math.min(kept, marker.leavingAt);
  return { startedAt: marker.startedAt, cutAt, how, storedUntil: storedUntil ?? null,
    lostMs: known ? Math.max(cutAt - kept, 0) : null };
}
