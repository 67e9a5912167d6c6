// The server's limit on one Engine.IO message, against a chunk's size on the wire (pure, no I/O).
// A message over it is not answered: the server closes the connection (protocol-error too_large first, and on a
// websocket a close with code 1009). Resending that chunk would close every connection after it.

// Room for what may share a polling POST with the chunk's bytes: its event's JSON and the packet separators.
export const POLLING_ENVELOPE_BYTES = 1024;

/** The bytes a chunk of `size` bytes takes in one message: as is on a websocket, base64 on polling (or unknown). */
export function messageBytes(size, transport) {
  if (transport === "websocket" || transport === "webtransport") return size;
  return 4 * Math.ceil(size / 3) + POLLING_ENVELOPE_BYTES;
}

/** A usable limit (a positive integer), or null. */
export function messageLimit(value) {
  return Number.isInteger(value) && value > 0 ? value : null;
}

/** The limit a websocket close with code 1009 names (docs/protocol.md: "message over the server's limit of N bytes"). */
export function limitOfClose(context) {
  if (context?.code !== 1009) return null;
  const found = /limit of (\d+) bytes/.exec(String(context.reason ?? ""));
  return found ? messageLimit(Number(found[1])) : null;
}

/**
 * The chunks in flight (`Map` sequence -> size) a close for a message over `limit` is laid to: each whose message alone
 * is over it. With the limit unknown, the largest: the message that was too big was no larger than it.
 */
export function overLimit(inFlight, limit, transport) {
  const chunks = [...inFlight];
  if (limit === null) {
    const largest = chunks.reduce((best, chunk) => (best === null || chunk[1] > best[1] ? chunk : best), null);
    return largest === null ? [] : [largest[0]];
  }
  return chunks.filter(([, size]) => messageBytes(size, transport) > limit).map(([seq]) => seq).sort((a, b) => a - b);
}
