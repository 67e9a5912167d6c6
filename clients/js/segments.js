// The live transcript (pure): transcriptSegment payloads de-duplicated and kept in order.
// The server may send a segment twice (live and in a joinSession replay); segments carry `id`,
// and several may share a `seq`, so the key is `id` (or seq+fromSeq+startMs for a segment without one).

function keyOf(segment) {
  if (segment.id !== undefined && segment.id !== null) return `id:${segment.id}`;
  return `seq:${segment.seq}:${segment.fromSeq ?? ""}:${segment.startMs ?? ""}`;
}

function order(a, b) {
  return (a.seq - b.seq) || ((a.startMs ?? 0) - (b.startMs ?? 0)) || ((a.endMs ?? 0) - (b.endMs ?? 0));
}

export class SegmentList {
  constructor() {
    this._byKey = new Map();
    this.items = [];       // sorted by seq, then startMs
    this.lastSeq = -1;     // the highest seq seen: joinSession's lastSeq
  }

  /** Add a segment; true when it is new (false for a duplicate or a payload without a numeric seq). */
  add(segment) {
    if (!segment || typeof segment !== "object" || !Number.isInteger(segment.seq)) return false;
    const key = keyOf(segment);
    if (this._byKey.has(key)) return false;
    this._byKey.set(key, segment);
    let at = this.items.length;
    while (at > 0 && order(this.items[at - 1], segment) > 0) at -= 1;
    this.items.splice(at, 0, segment);
    if (segment.seq > this.lastSeq) this.lastSeq = segment.seq;
    return true;
  }

  get length() {
    return this.items.length;
  }

  /** The transcript as text, one segment a line. */
  text() {
    return this.items.map((s) => s.text).join("\n");
  }
}
