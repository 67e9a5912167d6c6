// The container choice and the mimeType sent with a chunk (pure).

import { test } from "node:test";
import assert from "node:assert/strict";
import { chunkMimeType, pickMimeType } from "../mime.js";

test("the first supported of webm/opus, webm, ogg/opus, mp4", () => {
  assert.equal(pickMimeType(() => true), "audio/webm;codecs=opus");
  assert.equal(pickMimeType((t) => t === "audio/webm" || t === "audio/mp4"), "audio/webm");
  assert.equal(pickMimeType((t) => t.startsWith("audio/ogg")), "audio/ogg;codecs=opus");
  assert.equal(pickMimeType((t) => t === "audio/mp4"), "audio/mp4");  // Safari
});

test("a supported preference wins; an unsupported one falls back; nothing supported: the browser's default", () => {
  assert.equal(pickMimeType(() => true, "audio/ogg;codecs=opus"), "audio/ogg;codecs=opus");
  assert.equal(pickMimeType((t) => t === "audio/webm", "audio/x-nope"), "audio/webm");
  assert.equal(pickMimeType(() => false), "");
  assert.equal(pickMimeType(undefined), "");
  assert.equal(pickMimeType(() => { throw new Error("odd"); }), "");
});

test("the chunk's mimeType is the blob's own type, else the recorder's, audio/* always", () => {
  assert.equal(chunkMimeType("audio/mp4", "audio/webm"), "audio/mp4");
  assert.equal(chunkMimeType("", "audio/ogg;codecs=opus"), "audio/ogg;codecs=opus");
  assert.equal(chunkMimeType("", ""), "audio/webm");
  assert.equal(chunkMimeType("video/webm;codecs=opus", null), "audio/webm;codecs=opus");
});
