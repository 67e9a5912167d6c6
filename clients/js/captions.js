// The live transcript with captions (pure): final transcriptSegment payloads and the transcriptInterim
// captions of the windows still open, merged as a viewer sees them.
// A caption is the server's current hypothesis for an open window (identified by its startMs); its first
// `stable` characters are confirmed and never taken back, the rest may still change. A newer revision of
// the same window replaces it (the server's revisions grow with the audio a caption covers, so they go on
// growing when another server process carries on with the window); the final segment whose endMs passes a
// caption's startMs replaces it for good, and a caption that arrives after such a segment (late, reordered) is
// dropped.

import { SegmentList } from "./segments.js";

function isCaption(body) {
  return Boolean(body) && typeof body === "object" && Number.isFinite(body.startMs) && Number.isFinite(body.endMs) &&
    typeof body.text === "string" && Number.isInteger(body.revision) && Number.isInteger(body.stable) && body.stable >= 0;
}

/** The confirmed part of `text`: its first `stable` characters. */
function confirmedOf(text, stable) {
  return text.slice(0, Math.min(stable, text.length));
}

export class LiveTranscript {
  constructor() {
    this.segments = new SegmentList();
    this._captions = new Map();  // startMs -> { startMs, endMs, fromSeq, toSeq, confirmed, tentative, revision }
    this.finalUntilMs = -Infinity;  // the highest endMs of a final segment: captions before it are replaced
  }

  /** A transcriptSegment; returns the captions it replaced (an empty list for a duplicate, or none replaced). */
  addSegment(segment) {
    if (!this.segments.add(segment)) return null;
    const endMs = Number.isFinite(segment.endMs) ? segment.endMs : -Infinity;
    if (endMs > this.finalUntilMs) this.finalUntilMs = endMs;
    const replaced = [];
    for (const [startMs, caption] of this._captions) {
      if (startMs < endMs) {
        replaced.push(caption);
        this._captions.delete(startMs);
      }
    }
    return replaced;
  }

  /**
   * A transcriptInterim; the caption as shown now, or null when it changes nothing (a duplicate, an older
   * revision, a window a final segment already covers, a malformed body).
   * What was confirmed stays confirmed: a revision that says less keeps the confirmed words shown before.
   */
  addInterim(body) {
    if (!isCaption(body) || body.startMs < this.finalUntilMs) return null;
    const before = this._captions.get(body.startMs);
    if (before && body.revision <= before.revision) return null;
    let confirmed = confirmedOf(body.text, body.stable);
    let tentative = body.text.slice(confirmed.length);
    if (before && before.confirmed.length > confirmed.length) {
      if (body.text.startsWith(before.confirmed)) {
        confirmed = before.confirmed;
        tentative = body.text.slice(confirmed.length);
      } else {
        // a hypothesis that contradicts what was confirmed: keep the confirmed words, drop its tail
        confirmed = before.confirmed;
        tentative = "";
      }
    }
    const caption = { startMs: body.startMs, endMs: body.endMs, fromSeq: body.fromSeq ?? null, toSeq: body.toSeq ?? null,
      confirmed, tentative, revision: body.revision };
    this._captions.set(body.startMs, caption);
    return caption;
  }

  /**
   * Every caption, dropped: the session is completely transcribed (session-completed), so a caption no final
   * covered (audio that turned out to hold no words) will never be replaced. Returns the captions dropped.
   */
  dropCaptions() {
    const dropped = this.captions;
    this._captions.clear();
    return dropped;
  }

  /** The open windows' captions, in recording order. */
  get captions() {
    return [...this._captions.values()].sort((a, b) => a.startMs - b.startMs);
  }

  /**
   * Everything to show, in recording order: `{ kind: "final", key, startMs, text, segment }` and
   * `{ kind: "caption", key, startMs, confirmed, tentative, revision }` (key: stable across updates).
   */
  lines() {
    const finals = this.segments.items.map((segment) => ({ kind: "final", key: `final:${segment.id ?? `${segment.seq}:${segment.startMs}`}`,
      startMs: segment.startMs ?? 0, text: String(segment.text ?? "").trim(), segment }));
    const captions = this.captions.map((c) => ({ kind: "caption", key: `caption:${c.startMs}`, startMs: c.startMs,
      confirmed: c.confirmed, tentative: c.tentative, revision: c.revision }));
    return [...finals, ...captions].sort((a, b) => a.startMs - b.startMs || (a.kind === "final" ? -1 : 1));
  }

  /** The transcript as text: finals, then what the captions say now. */
  text() {
    return this.lines().map((l) => (l.kind === "final" ? l.text : `${l.confirmed}${l.tentative}`.trim())).join("\n");
  }
}
