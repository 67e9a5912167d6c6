// The demo page: sign in, record with the recorder library (clients/js), show what it reports.
// Query string (optional): timeslice=MS (default 1000), outbox=NAME (the IndexedDB database; pages
// side by side in one browser keep apart with different names), mime=TYPE (the container to record, e.g.
// audio/ogg;codecs=opus, when the browser supports it; the library's choice otherwise), searchlimit=N (search
// results a page, 1 to 100; default 20).
// `window.demo` holds the page's state for tests and the curious; the DOM ids are stable.

const TOKEN_KEY = "scribeai-token";
const params = new URLSearchParams(location.search);
const TIMESLICE_MS = Number(params.get("timeslice")) || 1000;
const DB_NAME = params.get("outbox") || "scribeai-recorder";
const MIME_TYPE = params.get("mime") || undefined;
const LIVE_EVENTS_KEPT = 5000;
const SESSIONS_SHOWN = 20;
const SESSIONS_REFRESH_MS = 5000;  // while recording, the session list follows the stored chunks this often
const PROBE_MS = 3000;             // while disconnected: does the server answer at all (a network cut, or it is down)
const FORMATS = ["txt", "srt", "vtt", "md"];
const SEARCH_LIMIT = Math.min(100, Math.max(1, Number(params.get("searchlimit")) || 20));
const JOIN_TIMEOUT_MS = 5000;      // a session opened: its room joined (for its summary) before its summary is asked for

const $ = (id) => document.getElementById(id);
const demo = {
  config: null,
  token: null,            // null: not signed in, or SCRIBEAI_AUTH=none
  recorder: null,         // the page's current Recorder
  Recorder: null,         // the class, once the library loaded
  resumed: false,         // the current recorder sends an earlier page's outbox (Recorder.resume)
  stopResult: null,       // what the current recorder's stop() resolved
  completed: false,       // session-completed for the current recorder's session
  completedAt: null,      // when it came (Date.now())
  acks: 0,                // chunk-acks this page received for the current recorder
  stored: null,           // chunks the server holds for the current session (its figure at the join, plus new acks)
  errors: [],             // the library's "error" events, newest last
  downloads: [],          // { sessionId, format, status, bytes, name }
  pending: [],            // what Recorder.pending() found at sign-in
  autoSent: [],           // earlier outboxes this page started sending by itself: {sessionId, chunks, bytes}
  cuts: [],               // recordings an earlier page load left cut (reload, closed tab): Recorder.pending()'s interrupted + text
  ready: false,           // signed in and the library loaded
  liveEvents: [],         // the transcriptInterim and transcriptSegment bodies as they came, in order (the last 5000)
  viewer: {               // the session opened below the recorder: its summary and transcript
    sessionId: null,
    openedBy: null,       // "user" (the list, a search result) or "recording" (its summary came)
    session: null,        // GET /api/sessions/{id}
    segments: [],         // its transcript's segments, by startMs
    summary: null,        // the summary body shown
    summaries: [],        // every summary body shown: { via: "get"|"event"|"recorder", sessionId, status, generatedAt }
    seeks: [],            // every seek: { atMs, segmentId, found (the highlighted segment's id) }
  },
  search: { query: null, results: [], next: null, error: null, pages: 0 },
};
window.demo = demo;

// -- small helpers -------------------------------------------------------------

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function timeOfDay(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function clock(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = false;
}

async function api(path, options = {}) {
  const headers = demo.token ? { Authorization: `Bearer ${demo.token}` } : {};
  return fetch(path, { ...options, headers: { ...headers, ...options.headers } });
}

async function apiError(response) {
  const body = await response.json().catch(() => null);
  return body?.error?.message ?? `HTTP ${response.status}`;
}

/** A refused token, said for a person (the server's reason, e.g. "Invalid crypto padding", means nothing to most). */
function tokenProblem(status, reason) {
  if (status !== 401) return `the server answered ${status} (${reason})`;
  if (/expired/i.test(reason)) return "this token has expired: make a new one with scribeai token create";
  if (/required/i.test(reason)) return "paste a token first";
  return "this server does not accept this token. It may be mistyped or cut short, or made for another server " +
    "(a token only works with the secret of the server that signed it): make a new one with scribeai token create";
}

// -- signing in ----------------------------------------------------------------

/** Why the server refuses this token, or null (also when it cannot be asked: recording works offline). */
async function checkToken(token) {
  const response = await fetch(`/api/sessions?limit=1`, { headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
  return response === null || response.ok ? null : tokenProblem(response.status, await apiError(response));
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("signin-error").hidden = true;
  const problem = token ? await checkToken(token) : "paste a token first";
  if (problem) {
    $("signin-error").textContent = `Not signed in: ${problem}`;
    $("signin-error").hidden = false;
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  await enter(token);
}

function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  location.reload();
}

function userOf(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}

/** Signed in (or no sign-in needed): show the recorder, the sessions and any outbox left behind. */
async function enter(token) {
  demo.token = token;
  $("signin").hidden = true;
  $("account").hidden = false;
  $("signout").hidden = token === null;
  $("user").textContent = token === null ? "No sign-in needed (SCRIBEAI_AUTH=none)" : `Signed in as ${userOf(token) ?? "?"}`;
  $("recorder").hidden = false;
  $("transcript-section").hidden = false;
  $("no-transcriber").hidden = demo.config.transcriber !== "none";
  $("transcript-empty").hidden = demo.config.transcriber === "none";
  $("sessions-section").hidden = false;
  $("search-section").hidden = false;
  const linked = new URLSearchParams(location.hash.slice(1));  // #session=ID&t=MS: a summary item's link
  if (linked.get("session")) {
    const atMs = Number(linked.get("t"));
    openSession(linked.get("session"), { atMs: linked.has("t") && Number.isFinite(atMs) ? atMs : null });
  }
  await refreshSessions();
  await showPending();
  demo.ready = true;
}

// -- the recorder --------------------------------------------------------------

let elapsedMs = 0;
let tickFrom = null;
let ticker = null;

function tick() {
  const now = performance.now();
  if (tickFrom !== null) elapsedMs += now - tickFrom;
  tickFrom = now;
  $("elapsed").textContent = clock(elapsedMs);
}

function setTicking(on) {
  if (on && ticker === null) {
    tickFrom = performance.now();
    ticker = setInterval(tick, 500);
  } else if (!on && ticker !== null) {
    tick();
    clearInterval(ticker);
    ticker = null;
    tickFrom = null;
  }
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The state line: the recorder's state, and once stopped what the server said about the session. */
function stateText(state) {
  if (demo.resumed && state === "idle") {
    const recorder = demo.recorder;
    if (recorder?.lastJoin && recorder.queue.chunks === 0) {
      return `sent: the earlier recording is stored (${plural(demo.stored ?? 0, "chunk")}); Record more goes on with it`;
    }
    return "sending an earlier recording…";
  }
  if (state !== "stopped") return state;
  const reply = demo.stopResult?.reply;
  const parts = ["stopped"];
  if (reply) parts.push(`${plural(reply.totalChunks, "chunk")} stored, ${reply.missing.length ? `missing ${reply.missing.join(", ")}` : "none missing"}`);
  if (demo.completed) parts.push("transcript complete");
  else if (reply) parts.push("transcribing the rest…");
  return parts.join(" · ");
}

function showState(state) {
  const resumed = demo.resumed && state === "idle";  // an earlier outbox being sent: Stop finishes that session
  $("state").textContent = stateText(state);
  $("state").dataset.state = state;
  const active = ["connecting", "recording", "paused"].includes(state);
  $("record").disabled = active || state === "stopping";
  $("record").textContent = resumed ? "● Record more" : "● Record";
  $("pause").disabled = !["recording", "paused"].includes(state);
  $("pause").textContent = state === "paused" ? "Resume" : "Pause";
  $("stop").disabled = !active && !resumed;
  $("signout").disabled = active || state === "stopping";  // signing out reloads the page: not mid-recording
  setTicking(state === "recording");
}

function showCompleted() {
  demo.completed = true;
  demo.completedAt = Date.now();
  showTranscript();  // the recorder dropped any caption no final replaced
  $("state").textContent = stateText(demo.recorder?.state);
  refreshSessions();
}

const link = { connected: false, backpressure: { level: "ok" }, overloadedUntil: 0, reach: null, probe: null };
const OVERLOADED_SHOWN_MS = 4000;  // the server's hold is about 2 s: long enough to read

function showConnection({ connected, transport }) {
  const badge = $("connection");
  badge.dataset.connected = String(connected);
  badge.classList.toggle("active", demo.recorder !== null);
  link.connected = connected;
  if (connected) {
    link.reach = null;
    clearInterval(link.probe);
    link.probe = null;
  } else if (demo.recorder && link.probe === null) {
    probe();
    link.probe = setInterval(probe, PROBE_MS);
  }
  showBadge(transport);
  showServer();
}

function showBadge(transport) {
  const badge = $("connection");
  const down = { offline: "offline: no network", down: "server not answering", up: "reconnecting" }[link.reach] ?? "not connected";
  badge.textContent = link.connected ? `connected${transport ? ` · ${transport}` : ""}` : down;
}

/**
 * Disconnected: is this device offline (a network cut), or does the server not answer while the network is up
 * (it is down or restarting), or does it answer (the connection comes back by itself)?
 */
async function probe() {
  let reach;
  if (navigator.onLine === false) {
    reach = "offline";
  } else {
    const answer = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(PROBE_MS - 500) }).catch(() => null);
    reach = answer?.ok ? "up" : navigator.onLine === false ? "offline" : "down";
  }
  if (link.connected) return;
  link.reach = reach;
  showBadge(null);
  showServer();
}
addEventListener("offline", () => { if (!link.connected && demo.recorder) probe(); });
addEventListener("online", () => { if (!link.connected && demo.recorder) probe(); });

function showBackpressure(snapshot) {
  link.backpressure = snapshot;
  if (snapshot.level === "overloaded") {
    link.overloadedUntil = Date.now() + Math.max(snapshot.retryAfterMs ?? 0, OVERLOADED_SHOWN_MS);
    setTimeout(showServer, link.overloadedUntil - Date.now() + 50);
  }
  showServer();
}

/** The server line: unreachable wins over what the server last said about its load. */
function showServer() {
  const { retryAfterMs } = link.backpressure;
  const level = Date.now() < link.overloadedUntil ? "overloaded" : link.backpressure.level;
  const away = { offline: "offline", down: "down", up: "reconnecting" }[link.reach] ?? "unreachable";
  const shown = !demo.recorder ? "none" : !link.connected ? away : level;
  const text = {
    none: "–",
    ok: "ok",
    unreachable: "unreachable: chunks wait in the outbox",
    offline: "no network on this device: chunks wait in the outbox, and go when it is back",
    down: "the server does not answer (stopped or restarting): chunks wait in the outbox",
    reconnecting: "the server answers again: reconnecting…",
    buffering: "busy: holding chunks until it catches up",
    overloaded: `overloaded: holding chunks, sending again ${retryAfterMs ? `in ${(retryAfterMs / 1000).toFixed(1)} s` : "soon"}`,
    slowDown: "asked to slow down: one chunk at a time",
  }[shown] ?? shown;
  $("backpressure").textContent = text;
  $("backpressure").dataset.level = shown;
}

function showQueue({ chunks, bytes: size }) {
  $("outbox-chunks").textContent = String(chunks);
  $("outbox-unit").textContent = chunks === 1 ? "chunk" : "chunks";
  $("outbox-bytes").textContent = bytes(size);
  $("outbox").dataset.waiting = String(chunks > 0);
  $("outbox").dataset.chunks = String(chunks);
}

function showError({ code, message: said, sequence }) {
  // the library's words are for a developer ("call setToken()"); a person needs what to do
  const message = code === "unauthorized"
    ? "the server no longer accepts this page's token (it expired, or the server's secret changed): the audio waits " +
      "in this browser's outbox; sign out and sign in with a new token to send it"
    : said;
  demo.errors.push({ code, message, sequence });
  const line = `${code}${sequence !== undefined ? ` (chunk ${sequence})` : ""}: ${message}`;
  const lines = [...$("errors").textContent.split("\n").filter(Boolean).slice(-2), line];
  $("errors").textContent = lines.join("\n");
  $("errors").hidden = false;
}

/**
 * The transcript as the recorder's LiveTranscript has it: finals, and the captions of the audio not final yet (the
 * confirmed words plain, the rest grey). Lines are kept by key and updated in place, so a caption's confirmed words
 * never blink, and its final takes its place in the list.
 */
function showTranscript() {
  const recorder = demo.recorder;
  if (!recorder) return;
  const list = $("transcript");
  const lines = recorder.live.lines();
  const existing = new Map(Array.from(list.children, (li) => [li.dataset.key, li]));
  let previous = null;
  for (const line of lines) {
    let item = existing.get(line.key);
    existing.delete(line.key);
    if (!item) item = line.kind === "final" ? finalItem(line) : captionItem(line);
    if (line.kind === "caption") updateCaption(item, line);
    const wanted = previous ? previous.nextSibling : list.firstChild;
    if (wanted !== item) list.insertBefore(item, wanted);
    previous = item;
  }
  for (const item of existing.values()) item.remove();
  $("transcript-empty").hidden = lines.length > 0 || demo.config.transcriber === "none";
}

function finalItem({ key, startMs, text, segment }) {
  return element("li", { className: "final", dataset: { key, id: String(segment.id ?? key), seq: String(segment.seq),
    start: String(startMs) } }, element("span", { className: "time" }, clock(startMs)), element("span", { className: "text" }, text));
}

function captionItem({ key, startMs }) {
  return element("li", { className: "caption", dataset: { key, start: String(startMs) } },
    element("span", { className: "time" }, clock(startMs)),
    element("span", { className: "text" }, element("span", { className: "confirmed" }), element("span", { className: "tentative" })));
}

function updateCaption(item, { confirmed, tentative, revision }) {
  const [shownConfirmed, shownTentative] = item.querySelectorAll(".text > span");
  // trimmed at the start only: the confirmed words keep the space before the grey ones
  const plain = confirmed.trimStart();
  const grey = plain ? tentative : tentative.trimStart();
  if (shownConfirmed.textContent !== plain) shownConfirmed.textContent = plain;
  if (shownTentative.textContent !== grey) shownTentative.textContent = grey;
  item.dataset.revision = String(revision);
}

function showStored(lastSequence) {
  const count = demo.stored;  // null until the server said (its join answer): "0" would be a guess
  $("stored").textContent = count === null ? "–" : `${plural(count, "chunk")}${lastSequence === null ? "" : ` (last #${lastSequence})`}`;
  $("stored").dataset.chunks = count === null ? "" : String(count);
}

/** The session list again at most every SESSIONS_REFRESH_MS while chunks are being stored: its counts follow. */
let sessionsTimer = null;
function refreshSessionsSoon() {
  if (sessionsTimer !== null) return;
  sessionsTimer = setTimeout(() => {
    sessionsTimer = null;
    refreshSessions();
  }, SESSIONS_REFRESH_MS);
}

/** The recording time of a session the server already holds chunks of (Record more, an earlier page's recording). */
async function sessionTime(sessionId) {
  const response = await api(`/api/sessions/${encodeURIComponent(sessionId)}`).catch(() => null);
  if (!response?.ok) return null;
  const session = await response.json();
  return session.durationMs || 0;
}

function clearTranscript() {
  demo.completed = false;
  $("transcript").replaceChildren();
  $("transcript-section").classList.remove("has-captions");
  $("transcript-empty").hidden = demo.config.transcriber === "none";
  $("errors").textContent = "";
  $("errors").hidden = true;
}

/** Wire a recorder's events to the page; it becomes the page's current recorder. */
function attach(recorder, { resumed = false } = {}) {
  demo.recorder = recorder;
  demo.resumed = resumed;
  demo.completed = false;
  demo.stopResult = null;
  demo.acks = 0;
  demo.stored = null;
  showStored(null);
  $("session-id").textContent = recorder.sessionId ?? "–";
  const on = (name, handler) => recorder.addEventListener(name, (event) => handler(event.detail ?? {}));
  on("state", ({ state }) => {
    $("session-id").textContent = recorder.sessionId ?? "–";
    showState(state);
  });
  on("connection", showConnection);
  on("queue", showQueue);
  // A resumed session's time so far is the session's as the server has it (the sum of its chunks' durationMs), not
  // this page's: asked once the server holds everything this outbox had
  let timed = !resumed;
  const timeFromServer = () => {
    if (timed || !recorder.lastJoin || recorder.queue.chunks > 0) return;
    timed = true;
    sessionTime(recorder.sessionId).then((ms) => {
      if (ms === null || ticker !== null || demo.recorder !== recorder) return;
      elapsedMs = ms;
      $("elapsed").textContent = clock(elapsedMs);
    });
  };
  on("joined", ({ reply }) => {
    // the server's count for the session: an earlier page's chunks included
    demo.stored = reply.totalChunks;
    timeFromServer();
    showStored(reply.maxSeq >= 0 ? reply.maxSeq : null);
    showState(recorder.state);
    if (resumed) refreshSessions();  // marks this recording in the list
  });
  on("ack", ({ sequence, status }) => {
    demo.acks += 1;
    if (status === "stored" && demo.stored !== null) demo.stored += 1;
    showStored(sequence);
    if (demo.acks === 1) refreshSessions();  // the session exists on the server now
    else refreshSessionsSoon();
  });
  on("queue", () => {
    if (demo.resumed) showState(recorder.state);
    timeFromServer();
  });
  on("backpressure", showBackpressure);
  // what the server sent, as it came (repeats included), for tests and the curious
  const hooked = new WeakSet();
  on("connection", () => {
    const socket = recorder.socket;
    if (!socket || hooked.has(socket)) return;
    hooked.add(socket);
    for (const event of ["transcriptInterim", "transcriptSegment"]) {
      socket.on(event, (body) => {
        if (demo.recorder !== recorder || body?.sessionId !== recorder.sessionId) return;
        demo.liveEvents.push({ event, at: Date.now(), body });
        if (demo.liveEvents.length > LIVE_EVENTS_KEPT) demo.liveEvents.shift();
      });
    }
    // once the recording is stopped and transcribed, its summary comes (pending, then ready): shown below
    socket.on("session-summary", (body) => {
      if (demo.recorder === recorder && body?.sessionId === recorder.sessionId) recordingSummary(body);
    });
  });
  on("segment", showTranscript);
  on("interim", () => {
    $("transcript-section").classList.add("has-captions");
    showTranscript();
  });
  on("completed", showCompleted);
  on("sessionStopped", () => refreshSessions());
  on("error", showError);
  for (const segment of recorder.segments ?? []) showSegment(segment);
  if (recorder.queue) showQueue(recorder.queue);
  showState(recorder.state ?? "idle");
}

async function retire() {
  const old = demo.recorder;
  if (old && !["stopped", "idle", "error"].includes(old.state)) return false;
  if (old) await old.close().catch(() => {});
  demo.recorder = null;
  return true;
}

function options(extra = {}) {
  return { url: location.origin, token: demo.token, timesliceMs: TIMESLICE_MS, dbName: DB_NAME, mimeType: MIME_TYPE,
    interim: demo.config.transcriber !== "none", ...extra };
}

async function record() {
  $("cut").hidden = true;  // a new recording: what an earlier one lost is old news
  // a resumed outbox records on into its own session; otherwise a new session
  const recorder = demo.resumed && demo.recorder?.state === "idle" ? demo.recorder : null;
  if (!recorder) {
    if (!await retire()) return;
    clearTranscript();
    elapsedMs = 0;
    $("elapsed").textContent = clock(0);
    attach(new demo.Recorder(options()));
    await nameSession(demo.recorder.sessionId);
  }
  demo.resumed = false;
  try {
    await demo.recorder.start();
  } catch (err) {
    showError({ code: err.code ?? "start", message: err.message ?? String(err) });
    showState("error");
  }
}

/**
 * Create the session with a title before the recorder's joinSession does (which would create it untitled).
 * Offline, the recording starts anyway, untitled.
 */
async function nameSession(sessionId) {
  const title = `Recording of ${new Date().toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}`;
  await api("/api/sessions", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: sessionId, title }) }).catch(() => null);
}

function pauseOrResume() {
  const recorder = demo.recorder;
  if (!recorder) return;
  if (recorder.state === "paused") recorder.resume();
  else recorder.pause();
}

async function stop() {
  const recorder = demo.recorder;
  if (!recorder) return;
  $("stop").disabled = true;
  demo.resumed = false;
  try {
    demo.stopResult = await recorder.stop();
  } catch (err) {
    showError({ code: err.code ?? "stop", message: err.message ?? String(err) });
  }
  $("state").textContent = stateText(recorder.state);
  await refreshSessions();
  await showPending();
}

// -- an outbox left by an earlier page load ---------------------------------------

/** What a reload or a closed tab cost an earlier recording, in one sentence: never "nothing" when something was lost. */
function cutText({ interrupted: cut }) {
  if (cut.lostMs === null) {
    const why = cut.how === "hidden" ? "the page was hidden, then closed" : "the page ended without notice";
    return `A recording was cut (${why}): what was said after ${timeOfDay(cut.storedUntil ?? cut.startedAt)} ` +
      "was not recorded; everything before is kept.";
  }
  if (cut.how === "paused" && cut.lostMs === 0) return "A paused recording was left by an earlier page: nothing it recorded was lost.";
  const lost = cut.lostMs < 100 ? "less than the last 0.1 s before it was" : `the last ${(Math.round(cut.lostMs / 100) / 10).toFixed(1)} s before it were`;
  const by = cut.how === "paused" ? "the page closing after a pause" : "a reload or a closed tab";
  return `A recording was cut at ${timeOfDay(cut.cutAt)} by ${by}: ${lost} not recorded; everything before is kept.`;
}

function showCuts(pending) {
  const cuts = pending.filter((p) => p.interrupted).map((p) => ({ sessionId: p.sessionId, ...p.interrupted, text: cutText(p) }));
  if (cuts.length === 0) return;
  demo.cuts = cuts;
  $("cut").replaceChildren(...cuts.map((cut) => element("span", { dataset: { session: cut.sessionId,
    lostMs: String(cut.lostMs ?? "") } }, cut.text)));
  $("cut").hidden = false;
}

async function showPending() {
  if (demo.recorder && ["recording", "paused", "connecting"].includes(demo.recorder.state)) return;
  const current = demo.recorder?.sessionId;
  const found = await demo.Recorder.pending({ dbName: DB_NAME }).catch((err) => {
    showError({ code: "outbox", message: `cannot read the outbox: ${err.message ?? err}` });
    return [];
  });
  demo.pending = found.filter((p) => p.sessionId !== current && (p.chunks > 0 || p.stopPending || p.interrupted));
  showCuts(demo.pending);
  $("pending").replaceChildren(...demo.pending.map((p) => element("li", { dataset: { session: p.sessionId } },
    element("span", { className: "session-name mono" }, p.sessionId),
    element("button", { type: "button", className: "primary", onclick: () => resumePending(p.sessionId) }, "Send"),
    element("span", { className: "session-meta" }, p.chunks > 0 ? `${plural(p.chunks, "chunk")}, ${bytes(p.bytes)} not sent yet`
      : p.stopPending ? "all audio sent; the server was not told it stopped" : "cut by a reload; all its stored audio was sent"))));
  $("pending-section").hidden = demo.pending.length === 0;
  // An earlier visit's unsent audio goes out by itself (closing this tab too must not lose it): one session at a
  // time, each its own Recorder; any others keep their Send button.
  const idle = !demo.recorder || ["stopped", "idle", "error"].includes(demo.recorder.state);
  const first = demo.pending[0];
  if (first && idle && !demo.resumed) {
    demo.autoSent.push({ sessionId: first.sessionId, chunks: first.chunks, bytes: first.bytes });
    await resumePending(first.sessionId);
  }
}

async function resumePending(sessionId) {
  if (!await retire()) {
    showError({ code: "busy", message: "stop the current recording first" });
    return;
  }
  clearTranscript();
  const recorder = demo.Recorder.resume(options({ sessionId }));
  attach(recorder, { resumed: true });
  elapsedMs = 0;
  $("elapsed").textContent = "–";  // the session's time so far comes with the server's answer to the join
  $("pending").querySelector(`li[data-session="${CSS.escape(sessionId)}"]`)?.remove();
  $("pending-section").hidden = $("pending").children.length === 0;
}

// -- the user's sessions -------------------------------------------------------

function sessionItem(session) {
  const started = session.startedAt ?? session.createdAt;
  const when = started ? new Date(started).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "";
  // a titled session says its date in the title; an untitled one is named by its id
  const meta = [session.title ? null : when, plural(session.totalChunks, "chunk"),
    session.durationMs ? clock(session.durationMs) : null].filter(Boolean).join(" · ");
  const current = session.id === demo.recorder?.sessionId;
  return element("li", { className: current ? "current" : "", dataset: { session: session.id, status: session.status,
    chunks: String(session.totalChunks) } },
    element("button", { type: "button", className: session.title ? "link session-name" : "link session-name mono",
      title: `Open ${session.id}: its summary and transcript`, onclick: () => openSession(session.id) },
    session.title || session.id),
    element("span", { className: "session-status", dataset: { status: session.status } }, session.status),
    element("span", { className: "session-meta" }, meta),
    element("span", { className: "downloads" }, ...FORMATS.map((format) => element("button", {
      type: "button", className: "download", dataset: { format },
      title: format === "md" ? "Download the summary and the transcript as Markdown" : `Download the transcript as .${format}`,
      onclick: () => download(session.id, format),
    }, format))));
}

async function refreshSessions() {
  const response = await api(`/api/sessions?limit=${SESSIONS_SHOWN}`).catch((err) => err);
  if (!(response instanceof Response) || !response.ok) {
    const why = response instanceof Response ? await apiError(response)
      : navigator.onLine === false ? "this device has no network" : "the server does not answer";
    $("sessions-error").textContent = `Cannot list sessions: ${why}`;
    $("sessions-error").hidden = false;
    return;
  }
  $("sessions-error").hidden = true;
  const { sessions } = await response.json();
  $("sessions").replaceChildren(...sessions.map(sessionItem));
  $("sessions-empty").hidden = sessions.length > 0;
}

async function download(sessionId, format, onError = showError) {
  const record = { sessionId, format, status: null, bytes: 0, name: `${sessionId}.${format}` };
  const response = await api(`/api/sessions/${encodeURIComponent(sessionId)}/transcript?format=${format}`).catch(() => null);
  record.status = response?.status ?? 0;
  if (!response?.ok) {
    demo.downloads.push(record);
    onError({ code: "download", message: response ? await apiError(response) : "the server is unreachable" });
    return;
  }
  // an <a href> cannot carry the Authorization header: fetch, then save the body from a blob URL
  const blob = await response.blob();
  record.bytes = blob.size;
  demo.downloads.push(record);
  const link = element("a", { href: URL.createObjectURL(blob), download: record.name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// -- a session: its summary and transcript ---------------------------------------
// Opened from the session list or a search result, or by itself when the current recording's summary comes. Its room
// is joined on a socket of the page's own, so a summary made later (a session still recording, or made again) shows
// when it is ready. Everything the server sends is shown as text (textContent), never parsed as HTML: a model may
// write anything.

let viewerSocket = null;   // the page's own socket for the opened session's room (the recorder's is its recording's)
let viewerRoom = null;     // the room it joined
let viewerOpening = 0;     // each open counts up: a slow answer for a session no longer shown is dropped
let summaryEvents = 0;     // summary events for the shown session: a GET sent before one of them answers older news
let pendingSeek = null;    // a moment asked for while the session's transcript was still loading

function viewerError(problem) {
  const message = typeof problem === "string" ? problem : problem.message;
  $("viewer-error").textContent = message;
  $("viewer-error").hidden = !message;
}

/** The page's socket for summaries of the opened session; it joins that session's room again after a reconnect. */
async function ensureViewerSocket() {
  if (viewerSocket) return viewerSocket;
  const { io } = await import("socket.io-client");
  viewerSocket = io(location.origin, { auth: demo.token ? { token: demo.token } : {} });
  viewerSocket.on("session-summary", (body) => {
    if (body?.sessionId === demo.viewer.sessionId) showSummary(body, "event");
  });
  viewerSocket.on("transcriptSegment", (segment) => {
    if (segment?.sessionId === demo.viewer.sessionId) addViewerSegment(segment);
  });
  viewerSocket.on("connect", () => {
    if (viewerRoom) viewerSocket.emit("join", viewerRoom);
  });
  return viewerSocket;
}

/** Join the session's room (leaving the one before); resolves once joined, or after JOIN_TIMEOUT_MS without it. */
async function joinViewerRoom(sessionId) {
  const socket = await ensureViewerSocket().catch(() => null);
  if (!socket) return;
  const room = `session:${sessionId}`;
  if (viewerRoom && viewerRoom !== room) socket.emit("leave", viewerRoom);
  viewerRoom = room;
  await socket.timeout(JOIN_TIMEOUT_MS).emitWithAck("join", room).catch(() => null);
}

function closeViewer() {
  viewerOpening += 1;
  if (viewerSocket && viewerRoom) viewerSocket.emit("leave", viewerRoom);
  viewerRoom = null;
  Object.assign(demo.viewer, { sessionId: null, session: null, segments: [], summary: null, openedBy: null });
  $("viewer").hidden = true;
}

/**
 * Show a session: its title, summary and transcript; with `atMs`, the transcript at that moment (the segment whose
 * span holds it highlighted; `segmentId` names the segment when known). A `summary` body already in hand (the
 * recording's event) is shown at once. `by`: "user", or "recording" (opened by the recording's summary, which the
 * next recording's replaces).
 */
async function openSession(sessionId, { atMs = null, segmentId = null, summary = null, by = "user" } = {}) {
  const viewer = demo.viewer;
  $("viewer").hidden = false;
  if (by === "user") viewer.openedBy = "user";
  if (viewer.sessionId === sessionId) {  // shown, or loading
    if (summary) showSummary(summary, "recorder");
    if (atMs !== null && viewer.session) seek(atMs, segmentId);
    else if (atMs !== null) pendingSeek = { atMs, segmentId };
    return;
  }
  const opening = ++viewerOpening;
  Object.assign(viewer, { sessionId, session: null, segments: [], summary: null, openedBy: by });
  summaryEvents = 0;
  pendingSeek = atMs === null ? null : { atMs, segmentId };
  viewerError("");
  $("viewer-title").textContent = "Session";
  $("viewer-meta").textContent = sessionId;
  $("viewer-transcript").replaceChildren();
  $("viewer-empty").hidden = true;
  clearSummary("Loading the summary…");
  if (summary) showSummary(summary, "recorder");
  if (atMs === null) $("viewer").scrollIntoView({ block: "start" });
  const path = `/api/sessions/${encodeURIComponent(sessionId)}`;
  const [session, transcript] = await Promise.all([getJson(path), getJson(`${path}/transcript`)]);
  if (opening !== viewerOpening) return;
  if (session.error || transcript.error) {
    viewerError(`Cannot open this session: ${session.error ?? transcript.error}`);
    clearSummary("");
    viewer.sessionId = null;  // opening it again tries again
    return;
  }
  viewer.session = session.body;
  showSessionHeading(session.body);
  showViewerTranscript(transcript.body.segments);
  const sought = pendingSeek !== null;
  if (sought) seek(pendingSeek.atMs, pendingSeek.segmentId);
  pendingSeek = null;
  // the room first, then the summary: one made between the two arrives as an event, never missed
  await joinViewerRoom(sessionId);
  if (opening !== viewerOpening) return;
  const before = summaryEvents;
  const answer = await getJson(`${path}/summary`);
  if (opening !== viewerOpening) return;
  if (summaryEvents !== before) {
    // an event told something newer meanwhile: it is shown
  } else if (answer.error) {
    clearSummary(`The summary cannot be read: ${answer.error}`);
  } else {
    showSummary(answer.body, "get");
  }
  // the summary above the transcript moved the moment sought: back into view
  if (sought) document.querySelector("#viewer-transcript li.highlight")?.scrollIntoView({ block: "center" });
}

/** GET a JSON route: { body } or { error } in words. */
async function getJson(path) {
  const response = await api(path).catch(() => null);
  if (!response) return { error: navigator.onLine === false ? "this device has no network" : "the server does not answer" };
  if (!response.ok) return { error: await apiError(response), status: response.status };
  return { body: await response.json().catch(() => null) };  // null: cut short
}

function showSessionHeading(session) {
  $("viewer-title").textContent = session.title || "Untitled session";
  const started = session.startedAt ?? session.createdAt;
  const when = started ? new Date(started).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : null;
  $("viewer-meta").textContent = [when, session.status, session.durationMs ? clock(session.durationMs) : null]
    .filter(Boolean).join(" · ");
}

function showViewerTranscript(segments) {
  demo.viewer.segments = [...segments].sort((a, b) => a.startMs - b.startMs || a.seq - b.seq);
  $("viewer-transcript").replaceChildren(...demo.viewer.segments.map(viewerSegmentItem));
  $("viewer-empty").hidden = segments.length > 0;
}

function viewerSegmentItem(segment) {
  return element("li", { dataset: { id: String(segment.id), start: String(segment.startMs), end: String(segment.endMs) } },
    element("span", { className: "time" }, clock(segment.startMs)), element("span", { className: "text" }, segment.text));
}

/** A segment of the opened session transcribed while it is shown: in its place by time (once per id). */
function addViewerSegment(segment) {
  const segments = demo.viewer.segments;
  if (!demo.viewer.session || segments.some((s) => s.id === segment.id)) return;
  const at = segments.findIndex((s) => s.startMs > segment.startMs);
  const item = viewerSegmentItem(segment);
  if (at === -1) {
    segments.push(segment);
    $("viewer-transcript").append(item);
  } else {
    segments.splice(at, 0, segment);
    $("viewer-transcript").children[at].before(item);
  }
  $("viewer-empty").hidden = true;
}

/** The transcript at `atMs`: the segment whose span holds it (else the last one begun by then) scrolled to, highlighted. */
function seek(atMs, segmentId = null) {
  const items = Array.from($("viewer-transcript").children);
  const span = (li) => [Number(li.dataset.start), Number(li.dataset.end)];
  const target = (segmentId && items.find((li) => li.dataset.id === segmentId))
    ?? items.find((li) => span(li)[0] <= atMs && atMs < span(li)[1])
    ?? items.find((li) => span(li)[0] <= atMs && atMs <= span(li)[1])
    ?? items.findLast((li) => span(li)[0] <= atMs)
    ?? items[0];
  for (const li of items) li.classList.toggle("highlight", li === target);
  demo.viewer.seeks.push({ atMs, segmentId, found: target?.dataset.id ?? null });
  if (!target) return;
  target.classList.remove("flash");
  void target.offsetWidth;  // restart the animation when the same segment is sought again
  target.classList.add("flash");
  target.scrollIntoView({ block: "center" });
}

function clearSummary(status) {
  $("summary").dataset.status = "";
  $("summary-status").textContent = status;
  $("summary-status").hidden = !status;
  for (const id of ["summary-text", "summary-points-part", "summary-actions-part", "summary-keywords-part", "summary-reason"]) {
    $(id).hidden = true;
  }
}

/**
 * A key point or action item: a link to its moment when it has one; its text as text either way. The link's address
 * (#session=ID&t=MS) opens the page at that moment too (a new tab, a bookmark).
 */
function summaryItem(item, sessionId) {
  const text = String(item?.text ?? "");
  if (typeof item?.startMs !== "number") return element("li", { className: "untimed" }, element("span", { className: "text" }, text));
  const address = `#${new URLSearchParams({ session: sessionId, t: String(item.startMs) })}`;
  return element("li", {}, element("a", { className: "seek", href: address, title: "Show this moment in the transcript",
    dataset: { startMs: String(item.startMs) }, onclick: (event) => {
      event.preventDefault();
      seek(item.startMs);
    } }, element("span", { className: "time" }, clock(item.startMs)), element("span", { className: "text" }, text)));
}

function summaryStatus(body, via) {
  const session = demo.viewer.session;
  if (body.status === "failed") return "The summary could not be made.";
  if (body.status === "pending") {
    if (body.generatedAt) return "Making the summary again… (this is the last one made)";
    // an event says it is being made; a GET of a session still recording, that it will be
    if (via === "get" && session && session.status !== "stopped") return "The summary is made once the session is stopped and transcribed.";
    return "Making the summary…";
  }
  const how = body.method === "llm" ? `Written by the model ${body.model ?? ""}`.trim() : "Key sentences picked from the transcript";
  const words = typeof body.words === "number" ? `${body.words.toLocaleString()} words` : null;
  const made = body.generatedAt ? `made ${new Date(body.generatedAt).toLocaleString([], { dateStyle: "short", timeStyle: "short" })}` : null;
  return [how, words, made].filter(Boolean).join(" · ");
}

/** Show a summary body (GET's or session-summary's): every field as text. */
function showSummary(body, via) {
  if (!body || body.sessionId !== demo.viewer.sessionId) return;
  if (via !== "get") {
    summaryEvents += 1;
    // summaries are made of stopped sessions only: one shown as still recording was stopped elsewhere
    const session = demo.viewer.session;
    if (session && session.status !== "stopped") {
      session.status = "stopped";
      showSessionHeading(session);
    }
    if (body.status === "ready") refreshSessions();  // its row says stopped too
  }
  demo.viewer.summary = body;
  demo.viewer.summaries.push({ via, sessionId: body.sessionId, status: body.status, generatedAt: body.generatedAt ?? null });
  $("summary").dataset.status = String(body.status);
  $("summary-status").textContent = summaryStatus(body, via);
  $("summary-status").hidden = false;
  const list = (value) => (Array.isArray(value) ? value : []);
  const text = typeof body.text === "string" ? body.text : "";
  $("summary-text").textContent = text;
  $("summary-text").hidden = !text;
  const parts = [["summary-points", list(body.keyPoints)], ["summary-actions", list(body.actionItems)]];
  for (const [id, items] of parts) {
    $(id).replaceChildren(...items.map((item) => summaryItem(item, body.sessionId)));
    $(`${id}-part`).hidden = items.length === 0;
  }
  const keywords = list(body.keywords).map(String);
  $("summary-keywords").replaceChildren(...keywords.map((word) => element("li", {}, word)));
  $("summary-keywords-part").hidden = keywords.length === 0;
  const reason = typeof body.reason === "string" ? body.reason : "";
  $("summary-reason").textContent = reason ? `Note: ${reason}` : "";
  $("summary-reason").hidden = !reason;
}

/** The current recording's summary event: shown below, unless the user opened another session there. */
function recordingSummary(body) {
  const viewer = demo.viewer;
  if (viewer.sessionId === null || viewer.sessionId === body.sessionId || viewer.openedBy === "recording") {
    openSession(body.sessionId, { summary: body, by: "recording" });
  }
}

// -- search --------------------------------------------------------------------

/** The server's snippet (HTML-escaped text, matches in <mark>): rebuilt as text nodes and <mark> elements only. */
function snippetNodes(snippet) {
  const nodes = [];
  let marked = false;
  for (const part of String(snippet ?? "").split(/(<mark>|<\/mark>)/)) {
    if (part === "<mark>" || part === "</mark>") {
      marked = part === "<mark>";
    } else if (part) {
      const text = unescapeHtml(part);
      nodes.push(marked ? element("mark", {}, text) : document.createTextNode(text));
    }
  }
  return nodes;
}

const NAMED_ENTITIES = { amp: "&", lt: "<", gt: ">", quot: "\"", apos: "'" };

function unescapeHtml(text) {
  return text.replace(/&(?:#(\d+)|#x([0-9a-f]+)|([a-z]+));/gi, (whole, decimal, hex, name) => {
    if (name) return NAMED_ENTITIES[name.toLowerCase()] ?? whole;
    const code = decimal ? Number(decimal) : parseInt(hex, 16);
    return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  });
}

/** A search the server refused, said for a person (its message names the query parameter). */
function searchProblem(status, message) {
  if (status === 401) return `Cannot search: ${tokenProblem(status, message)}.`;
  if (status !== 400) return `Cannot search: the server answered ${status} (${message}).`;
  if (/is required/.test(message)) return "Type a word to search for.";
  if (/no words/.test(message)) return "Search for words or numbers: punctuation and symbols alone find nothing.";
  if (/too common/.test(message)) return "Add a word that says more: words as common as the, and or we are not searched for alone.";
  const long = /longer than (\d+)/.exec(message);
  if (long) return `That search is too long: at most ${long[1]} characters.`;
  const many = /more than (\d+) words/.exec(message);
  if (many) return `That search has too many words: at most ${many[1]}.`;
  if (/cursor/.test(message)) return "These results are out of date: search again.";
  return `Cannot search: ${message}.`;
}

let searchGeneration = 0;  // each new search counts up: an answer to an earlier one is dropped

async function search(query) {
  const state = demo.search;
  searchGeneration += 1;
  Object.assign(state, { query, results: [], next: null, error: null, pages: 0 });
  $("search-results").replaceChildren();
  await searchPage(null);
}

function searchMore() {
  if (demo.search.next) searchPage(demo.search.next);
}

async function searchPage(cursor) {
  const state = demo.search;
  const query = state.query;
  const generation = searchGeneration;
  const url = `/api/search?${new URLSearchParams({ q: query, limit: String(SEARCH_LIMIT), ...(cursor ? { cursor } : {}) })}`;
  $("search-more").disabled = true;
  $("search-button").disabled = true;
  const { body, error: problem, status } = await getJson(url);
  let error = null;
  if (status) error = searchProblem(status, problem);
  else if (problem) error = `Cannot search: ${problem}.`;
  else if (!Array.isArray(body?.results)) error = "Cannot search: the server's answer was cut short; search again.";
  if (generation !== searchGeneration) return;  // a newer search went out meanwhile: its answer is the one shown
  $("search-button").disabled = false;
  $("search-more").disabled = false;
  state.error = error;
  $("search-error").textContent = error ?? "";
  $("search-error").hidden = error === null;
  if (error) {
    $("search-status").hidden = true;
    $("search-more").hidden = true;
    return;
  }
  state.pages += 1;
  state.results.push(...body.results);
  state.next = body.next ?? null;
  $("search-results").append(...body.results.map(searchItem));
  const count = state.results.length;
  $("search-status").textContent = count === 0 ? "Nothing found." : `${plural(count, "result")}${state.next ? ", more below" : ""}`;
  $("search-status").hidden = false;
  $("search-more").hidden = state.next === null;
}

// A result that is a model's words in a summary, or a segment that the summary counts as one of its parts.
const SUMMARY_PARTS = { summary: "in the summary", keyPoint: "key point", actionItem: "action item" };

/**
 * A result: a segment opens its session there; a model's summary part at its moment, or at the summary when it has
 * none. Its line says which it is: "key point, at 0:06" (the model's words), "at 0:27 · action item" (a segment the
 * summary lists).
 */
function searchItem(result) {
  const part = SUMMARY_PARTS[result.kind] ?? null;
  const timed = typeof result.startMs === "number";
  const segmentId = result.segmentId === null || result.segmentId === undefined ? null : String(result.segmentId);
  const listed = (Array.isArray(result.summaryParts) ? result.summaryParts : []).map((p) => SUMMARY_PARTS[p]).filter(Boolean);
  const when = [[part, timed ? `at ${clock(result.startMs)}` : null].filter(Boolean).join(", "), ...listed].join(" · ");
  return element("li", { className: part ? "summary-part" : "", dataset: { session: result.sessionId, kind: String(result.kind ?? "segment"),
    segment: String(segmentId), start: String(timed ? result.startMs : ""), parts: listed.length ? result.summaryParts.join(" ") : "" } },
    element("button", { type: "button", className: "result", title: timed ? "Open the session at this moment" : "Open the session's summary",
      onclick: () => {
        if (timed) openSession(result.sessionId, { atMs: result.startMs, segmentId });
        else openSession(result.sessionId).then(() => $("summary").scrollIntoView({ block: "start" }));
      } },
    element("span", { className: "result-title" }, String(result.title || result.sessionId)),
    element("span", { className: "time" }, when),
    element("span", { className: "snippet" }, ...snippetNodes(result.snippet))));
}

// -- start ---------------------------------------------------------------------

// While recording, leaving the page (reload, close, another address) loses the audio since the last chunk, and ends
// the recording: the browser's own prompt asks first. (The library still saves what it can if the user leaves.)
window.addEventListener("beforeunload", (event) => {
  if (demo.recorder?.state !== "recording") return;
  event.preventDefault();
  event.returnValue = "";  // older browsers prompt only with a returnValue
});

async function main() {
  const config = await fetch("/demo/config.json").then((r) => r.json()).catch(() => null);
  demo.config = config;
  if (!config) {
    showNotice("The ScribeAI server does not answer /demo/config.json: is it running?");
    return;
  }
  if (config.problems.length) {
    showNotice(`This page cannot record yet: ${config.problems.join("; ")}.`);
    return;
  }
  try {
    ({ Recorder: demo.Recorder } = await import("/demo/lib/recorder.js"));
  } catch (err) {
    showNotice(`The recorder library did not load: ${err.message ?? err}`);
    return;
  }
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("record").addEventListener("click", record);
  $("pause").addEventListener("click", pauseOrResume);
  $("stop").addEventListener("click", stop);
  $("refresh-sessions").addEventListener("click", refreshSessions);
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer-download").addEventListener("click", () => {
    if (demo.viewer.sessionId) download(demo.viewer.sessionId, "md", viewerError);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("search-q").value);
  });
  $("search-more").addEventListener("click", searchMore);
  if (config.auth === "none") {
    await enter(null);
    return;
  }
  const saved = localStorage.getItem(TOKEN_KEY);
  const problem = saved ? await checkToken(saved) : "no token";
  if (saved && !problem) {
    await enter(saved);
    return;
  }
  $("signin").hidden = false;
  if (saved) {
    $("signin-error").textContent = `Your saved token no longer works (${problem}): sign in again.`;
    $("signin-error").hidden = false;
  }
}

main();
