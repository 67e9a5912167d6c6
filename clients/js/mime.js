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
 * The mimeType sent with a chunk: the blob's own type, else the recorder's, else audio/webm.
 * Some browsers label audio-only recordings video/webm or video/mp4; the bytes are the same container,
 * and the server accepts only audio/* types, so the top-level type is rewritten to audio.
 */
export function chunkMimeType(blobType, recorderType) {
  const type = (blobType || recorderType || "audio/webm").trim();
  return type.replace(/^video\//i, "audio/");
}
