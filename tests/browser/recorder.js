// A plain MediaRecorder page as a browser recorder would be written: timeslice blobs go out one at a
// time, in order, each resent until the server acks it; transcript segments are shown as they come.
// Query string: server, token, sessionId, timeslice (ms), keepBlobs=1 (keep every blob for the driver).
// State for the test driver is on `window.recorder`; `window.stopRecording()` flushes and stops.
// A reload keeps the next sequence and the last seen segment seq in sessionStorage and re-joins with them.

import { io } from "/vendor/socket.io.esm.min.js";

const params = new URLSearchParams(location.search);
const SERVER = params.get("server");
const TOKEN = params.get("token");
const SESSION_ID = params.get("sessionId");
const TIMESLICE = Number(params.get("timeslice") || 5000);
const KEEP_BLOBS = params.get("keepBlobs") === "1";
const MIME_TYPE = "audio/webm;codecs=opus";
const ACK_TIMEOUT_MS = 10_000;
const RETRY_MS = 1000;
const MAX_TRIES = 20;
const HEAD_BYTES = 8;
const PERMANENT = new Set(["invalid", "too_large", "forbidden", "conflict"]);
const STORE_KEY = `scribeai-recorder:${SESSION_ID}`;

const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
const state = {
  sessionId: SESSION_ID,
  timeslice: TIMESLICE,
  status: "starting",
  loads: (saved?.loads ?? 0) + 1,       // 2 after one reload
  firstSeq: saved?.nextSeq ?? 0,        // the first sequence this page life sends
  nextSeq: saved?.nextSeq ?? 0,
  lastSeq: saved?.lastSeq ?? null,      // the highest segment seq seen, in this life or an earlier one
  joinedWithLastSeq: saved?.lastSeq ?? null,
  blobs: [],                            // { seq, size, head, base64? } in the order MediaRecorder gave them
  acks: [],                             // the successful ack bodies, in send order
  errors: [],                           // { seq, error } for every failed try (error ack, timeout, disconnect)
  segments: [],                         // de-duplicated by id, in arrival order
  segmentEvents: 0,                     // transcriptSegment events received, duplicates included
  joins: [],                            // joinSession replies
  stopReply: null,
  completed: false,
  recorderError: null,
  mimeType: null,
};
window.recorder = state;

const $ = (id) => document.getElementById(id);
$("session").textContent = SESSION_ID;
$("timeslice").textContent = `${TIMESLICE} ms`;
$("load").textContent = state.loads === 1 ? "first load" : `reload ${state.loads - 1}: re-joined after segment ${state.lastSeq}`;

function persist() {
  sessionStorage.setItem(STORE_KEY, JSON.stringify({ nextSeq: state.nextSeq, lastSeq: state.lastSeq, loads: state.loads }));
}

function show() {
  $("state").textContent = state.status + (state.completed ? ", transcript complete" : "");
  $("chunks").textContent = `${state.nextSeq - state.firstSeq} sent, ${state.acks.length} acked, ` +
    `${state.errors.length} failed tries (sequences ${state.firstSeq}..${state.nextSeq - 1})`;
  $("errors").textContent = state.errors.map((e) => `#${e.seq}: ${e.error}`).join("\n");
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// -- the connection and the transcript ---------------------------------------

const socket = io(SERVER, { auth: { token: TOKEN } });
window.recorderSocket = socket;

socket.on("connect", async () => {
  // every (re)connect is a new server-side connection with no rooms: join again, asking only for what is new
  const reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("joinSession",
    state.lastSeq === null ? { sessionId: SESSION_ID } : { sessionId: SESSION_ID, lastSeq: state.lastSeq })
    .catch((err) => ({ error: String(err) }));
  state.joins.push(reply);
});

socket.on("transcriptSegment", (segment) => {
  state.segmentEvents += 1;
  if (segment.sessionId !== SESSION_ID || state.segments.some((s) => s.id === segment.id)) return;
  state.segments.push(segment);
  if (state.lastSeq === null || segment.seq > state.lastSeq) state.lastSeq = segment.seq;
  persist();
  const item = document.createElement("li");
  item.dataset.id = segment.id;
  item.dataset.seq = String(segment.seq);
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${segment.seq} ${(segment.startMs / 1000).toFixed(1)}s`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = segment.text;
  item.append(seq, text);
  const after = Array.from($("segments").children).find((li) => Number(li.dataset.seq) > segment.seq);
  $("segments").insertBefore(item, after ?? null);
});

socket.on("session-completed", (body) => {
  if (body.sessionId === SESSION_ID) state.completed = true;
  show();
});

// -- sending, one blob at a time ---------------------------------------------

let sending = Promise.resolve();

async function sendOnce(payload) {
  try {
    const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("audio-chunk", payload);
    if (ack && ack.error) return { error: ack.error };
    return { ack };
  } catch (err) {
    return { error: { code: "timeout", message: String(err) } };
  }
}

async function send(seq, blob) {
  const payload = { sessionId: SESSION_ID, sequence: seq, timestamp: Date.now(), mimeType: state.mimeType,
    audio: await blob.arrayBuffer() };
  for (let tries = 1; tries <= MAX_TRIES; tries++) {
    const { ack, error } = await sendOnce(payload);
    if (ack) {
      state.acks.push(ack);
      show();
      return;
    }
    state.errors.push({ seq, error: `${error.code}: ${error.message}` });
    show();
    if (PERMANENT.has(error.code)) return;
    await new Promise((resolve) => setTimeout(resolve, error.retryAfterMs ?? RETRY_MS));
  }
}

function enqueue(blob) {
  const seq = state.nextSeq++;
  persist();  // a reload after this point must not reuse the sequence
  const ready = blob.arrayBuffer().then(async (buffer) => {
    const bytes = new Uint8Array(buffer);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
    state.blobs.push({ seq, size: bytes.length, head: hex(bytes.subarray(0, HEAD_BYTES)), sha256: hex(digest).replaceAll(" ", ""),
      ...(KEEP_BLOBS ? { base64: base64(bytes) } : {}) });
  });
  sending = sending.then(() => ready).then(() => send(seq, blob));
  show();
}

// -- recording ----------------------------------------------------------------

let mediaRecorder = null;

async function start() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  mediaRecorder = new MediaRecorder(stream, { mimeType: MIME_TYPE });
  state.mimeType = mediaRecorder.mimeType || MIME_TYPE;
  mediaRecorder.addEventListener("dataavailable", (event) => {
    if (event.data && event.data.size > 0) enqueue(event.data);
  });
  mediaRecorder.addEventListener("error", (event) => { state.recorderError = String(event.error || event); });
  mediaRecorder.start(TIMESLICE);
  state.status = "recording";
  show();
}

/** Flush the last blob, stop, wait until every blob is acked, then stopSession; resolves with the state. */
window.stopRecording = async function stopRecording() {
  state.status = "stopping";
  show();
  if (mediaRecorder && mediaRecorder.state !== "inactive") {
    const stopped = new Promise((resolve) => mediaRecorder.addEventListener("stop", resolve, { once: true }));
    mediaRecorder.requestData();
    mediaRecorder.stop();
    await stopped;
    mediaRecorder.stream.getTracks().forEach((track) => track.stop());
  }
  // the final dataavailable fires before "stop"; wait for the queue it joined
  let tail;
  do {
    tail = sending;
    await tail;
  } while (tail !== sending);
  state.status = "stopped";
  show();
  return state;
};

/** After stopRecording: tell the server the session ended (its reply lists any gaps). */
window.stopSession = async function stopSession() {
  state.stopReply = await socket.timeout(ACK_TIMEOUT_MS)
    .emitWithAck("stopSession", { sessionId: SESSION_ID, lastSeq: state.nextSeq - 1 })
    .catch((err) => ({ error: String(err) }));
  show();
  return state.stopReply;
};

start().catch((err) => {
  state.status = "failed";
  state.recorderError = String(err);
  show();
});
