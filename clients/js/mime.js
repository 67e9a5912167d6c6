// Which container MediaRecorder should write (pure: the support check is passed in).

export const PREFERRED_MIME_TYPES = Object.freeze([
  "audio/webm;codecs=opus",
  "audio/webm",
  "audio/ogg;codecs=opus",
  "audio/mp4",  // Safari: fragmented MP4 with AAC
]);

/** The first supported of `preference` then PREFERRED_MIME_TYPES; "" lets the browser choose. */
export function pickMimeType(isTypeSupported, preference) {
  const candidates = preference ? [preference, ...PREFERRED_MIME_TYPES] : PREFERRED_MIME_TYPES;
  if (typeof isTypeSupported !== "function") return "";
  for (const type of candidates) {
    try {
      if (isTypeSupported(type)) return type;
    } catch {
      // an exotic string some browser throws on: try the next one
    }
  }
  return "";
}

/**
 * The mimeType sent with a chunk: the blob's own type, else the recorder's, else the container its bytes (or the
 * recording's first blob) start with, else audio/webm.
 * Some browsers label audio-only recordings video/webm or video/mp4; the bytes are the same container,
 * and the server accepts only audio/* types, so the top-level type is rewritten to audio.
 */
export function chunkMimeType(blobType, recorderType, sniffedType) {
  const type = (blobType || recorderType || sniffedType || "audio/webm").trim();
  return type.replace(/^video\//i, "audio/");
}

/**
 * The container the bytes start with, or null: Ogg pages begin "OggS", WebM with the EBML magic, MP4 with an
 * `ftyp` box. For a browser that reports no type at all (Firefox's default recorder gives mimeType ""): a blob
 * that continues a WebM stream starts mid-element and says nothing, an Ogg blob always starts a page.
 */
export function sniffContainer(head) {
  const b = head instanceof Uint8Array ? head : new Uint8Array(head ?? []);
  if (b.length >= 4 && b[0] === 0x4f && b[1] === 0x67 && b[2] === 0x67 && b[3] === 0x53) return "audio/ogg";
  if (b.length >= 4 && b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) return "audio/webm";
  if (b.length >= 8 && b[4] === 0x66 && b[5] === 0x74 && b[6] === 0x79 && b[7] === 0x70) return "audio/mp4";
  return null;
}
