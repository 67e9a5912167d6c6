// The container choice and the mimeType sent with a chunk (pure).

import { test } from "node:test";
import assert from "node:assert/strict";
import { chunkMimeType, pickMimeType, sniffContainer } from "../mime.js";

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

test("a browser that names no type (Firefox's default recorder): the container is read from the bytes", () => {
  const bytes = (...b) => new Uint8Array(b);
  assert.equal(sniffContainer(bytes(0x4f, 0x67, 0x67, 0x53, 0x00, 0x02)), "audio/ogg");
  assert.equal(sniffContainer(bytes(0x1a, 0x45, 0xdf, 0xa3, 0x9f)), "audio/webm");
  assert.equal(sniffContainer(bytes(0, 0, 0, 0x1c, 0x66, 0x74, 0x79, 0x70)), "audio/mp4");
  assert.equal(sniffContainer(bytes(0x43, 0xb6, 0x75, 0x01)), null);  // a WebM blob that continues a stream
  assert.equal(sniffContainer(bytes(0x4f, 0x67)), null);
  assert.equal(chunkMimeType("", "", "audio/ogg"), "audio/ogg");
  assert.equal(chunkMimeType("", "audio/webm;codecs=opus", "audio/ogg"), "audio/webm;codecs=opus");
  assert.equal(chunkMimeType("", "", null), "audio/webm");
});
