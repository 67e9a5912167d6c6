// Drives real Chromium recorders (tests/browser/recorder.html) against a running ScribeAI server:
// Debian's /usr/bin/chromium through puppeteer-core, a fake microphone playing a WAV file, one page
// per requested timeslice, all recording side by side in one browser. Run by tests/test_browser.py
// and scripts/record_browser_fixtures.py; prints one JSON line with what every page sent and saw,
// and leaves a screenshot and the state of each page (NAME.png, NAME.json) in --out.
//
//   node browser_driver.mjs --server URL --token JWT --wav speech.wav --out DIR [--seconds 30]
//     [--page 1000] [--page 5000] [--page 5000:reload] [--session-prefix P] [--reload-after S]
//     [--transcript-timeout S] [--replay-timeout S] [--save-blobs] [--no-transcript]
//
// Each page records --seconds, then stops (requestData + stop, every blob acked), sends stopSession
// and, unless --no-transcript, waits for session-completed (all its chunks transcribed).
// A `:reload` page first records --reload-after seconds, flushes, drops its connection, waits until
// the server has a segment the page has not seen (so the re-join must replay it; or until nothing is
// left pending), reloads, and records --seconds more with a new MediaRecorder: a new WebM header
// mid-session. --save-blobs writes every blob to DIR/NAME/blob_NNNN.webm.

import { createServer } from "node:http";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGE_DIR = path.resolve(HERE, "..", "browser");
const VENDOR_DIR = path.join(HERE, "node_modules", "socket.io-client", "dist");
const CHROMIUM = process.env.SCRIBEAI_CHROMIUM || "/usr/bin/chromium";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };
const POLL_MS = 100;
const REPLAY_SETTLE_MS = 5000;

const { values: opts } = parseArgs({
  options: {
    server: { type: "string" },
    token: { type: "string" },
    wav: { type: "string" },
    seconds: { type: "string", default: "30" },
    out: { type: "string" },
    page: { type: "string", multiple: true, default: ["5000"] },
    "session-prefix": { type: "string", default: `browser-${Date.now().toString(36)}` },
    "reload-after": { type: "string" },
    "transcript-timeout": { type: "string", default: "120" },
    "replay-timeout": { type: "string", default: "60" },
    "save-blobs": { type: "boolean", default: false },
    "no-transcript": { type: "boolean", default: false },
  },
});
for (const name of ["server", "token", "wav", "out"]) {
  if (!opts[name]) {
    console.error(`--${name} is required`);
    process.exit(2);
  }
}
const SECONDS = Number(opts.seconds);
const RELOAD_AFTER = Number(opts["reload-after"] ?? SECONDS / 2);
const TRANSCRIPT_TIMEOUT_MS = Number(opts["transcript-timeout"]) * 1000;
const REPLAY_TIMEOUT_MS = Number(opts["replay-timeout"]) * 1000;
const OUT = path.resolve(opts.out);
mkdirSync(OUT, { recursive: true });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (...args) => console.error(`[driver +${(performance.now() / 1000).toFixed(1)}s]`, ...args);

// -- a static server for the page and socket.io-client's ESM build ------------

function serveStatic() {
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const [root, name] = url.pathname.startsWith("/vendor/")
      ? [VENDOR_DIR, url.pathname.slice("/vendor/".length)]
      : [PAGE_DIR, url.pathname.slice(1)];
    const file = path.resolve(root, name);
    if (!file.startsWith(root + path.sep)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = readFileSync(file);
      res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream", "Cache-Control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// -- the browser --------------------------------------------------------------

function launch(wav, userDataDir) {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,  // puppeteer's `true` is the new headless mode; the flag below says so explicitly
    userDataDir,
    args: [
      "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`, "--autoplay-policy=no-user-gesture-required",
      // pages recording side by side in the background must not be throttled
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
    ],
    protocolTimeout: 180_000,
  });
}

async function waitFor(page, predicate, timeoutMs, arg) {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await page.evaluate(predicate, arg)) return true;
    await sleep(POLL_MS);
  }
  return false;
}

async function transcript(sessionId) {
  const res = await fetch(`${opts.server}/api/sessions/${encodeURIComponent(sessionId)}/transcript`,
    { headers: { Authorization: `Bearer ${opts.token}` } });
  if (!res.ok) throw new Error(`GET transcript of ${sessionId}: HTTP ${res.status}`);
  return res.json();
}

/**
 * Segments of the session after `lastSeq`, once one exists, or once nothing is left to transcribe
 * (no chunk pending for REPLAY_SETTLE_MS, for a pipeline that finishes a chunk before its segment).
 */
async function awaitUnseen(sessionId, lastSeq) {
  const deadline = performance.now() + REPLAY_TIMEOUT_MS;
  let settledSince = null;
  while (performance.now() < deadline) {
    const body = await transcript(sessionId);
    const unseen = body.segments.filter((s) => lastSeq === null || s.seq > lastSeq);
    if (unseen.length) return unseen;
    settledSince = body.pending.length ? null : settledSince ?? performance.now();
    if (settledSince !== null && performance.now() - settledSince >= REPLAY_SETTLE_MS) return [];
    await sleep(POLL_MS * 5);
  }
  return [];
}

/** The page's state plus what its DOM shows; blobs sorted by sequence. */
async function snapshot(page) {
  const state = await page.evaluate(() => JSON.parse(JSON.stringify(window.recorder)));
  state.dom = await page.$$eval("#segments li", (items) =>
    items.map((li) => ({ id: li.dataset.id, seq: Number(li.dataset.seq), text: li.querySelector(".text").textContent })));
  state.blobs.sort((a, b) => a.seq - b.seq);
  return state;
}

let screenshots = Promise.resolve();

/** One at a time, each page in front first: a background tab paints no frame to capture. */
function screenshot(page, file) {
  const taken = screenshots.then(async () => {
    await page.bringToFront();
    await page.screenshot({ path: file, fullPage: true });
  });
  screenshots = taken.catch(() => {});
  return taken;
}

async function openRecorder(browser, base, spec) {
  const page = await browser.newPage();
  page.on("console", (msg) => { if (msg.type() === "error") log(`${spec.name} console:`, msg.text()); });
  page.on("pageerror", (err) => log(`${spec.name} page error:`, err.message));
  await page.setViewport({ width: 900, height: 600 });
  const query = new URLSearchParams({ server: opts.server, token: opts.token, sessionId: spec.sessionId,
    timeslice: String(spec.timeslice), ...(opts["save-blobs"] ? { keepBlobs: "1" } : {}) });
  await page.goto(`${base}/recorder.html?${query}`);
  return page;
}

async function waitRecording(page, spec) {
  if (!await waitFor(page, () => ["recording", "failed"].includes(window.recorder?.status), 15_000)) {
    throw new Error(`${spec.name}: the recorder did not start within 15 s`);
  }
  const status = await page.evaluate(() => window.recorder.status);
  if (status !== "recording") throw new Error(`${spec.name}: ${await page.evaluate(() => window.recorder.recorderError)}`);
}

/** Flush, drop the connection, wait for a segment the page has not seen, reload, record on. */
async function reloadMidSession(page, spec, result) {
  await page.evaluate(() => window.stopRecording());
  await page.evaluate(() => window.recorderSocket.disconnect());
  const before = await snapshot(page);
  result.beforeReload = before;
  const unseen = await awaitUnseen(spec.sessionId, before.lastSeq);
  result.replayExpected = unseen.map((s) => s.id);
  log(`${spec.name}: reloading (lastSeq ${before.lastSeq}, ${unseen.length} segment(s) to replay)`);
  await page.reload();
  await waitRecording(page, spec);
}

async function runPage(browser, base, spec) {
  const result = { name: spec.name, sessionId: spec.sessionId, timeslice: spec.timeslice, reload: spec.reload };
  const page = await openRecorder(browser, base, spec);
  await waitRecording(page, spec);
  if (spec.reload) {
    await sleep(RELOAD_AFTER * 1000);
    await reloadMidSession(page, spec, result);
  }
  await sleep(SECONDS * 1000);
  log(`${spec.name}: stopping`);
  await page.evaluate(() => window.stopRecording());
  await page.evaluate(() => window.stopSession());
  if (!opts["no-transcript"]) {
    result.completed = await waitFor(page, () => window.recorder.completed, TRANSCRIPT_TIMEOUT_MS);
  }
  log(`${spec.name}: stopped${opts["no-transcript"] ? "" : `, transcript ${result.completed ? "complete" : "NOT complete"}`}`);
  result.screenshot = path.join(OUT, `${spec.name}.png`);
  await screenshot(page, result.screenshot);
  log(`${spec.name}: screenshot taken`);
  const state = await snapshot(page);
  if (opts["save-blobs"]) saveBlobs(spec, [...(result.beforeReload?.blobs ?? []), ...state.blobs]);
  for (const blob of [...state.blobs, ...(result.beforeReload?.blobs ?? [])]) delete blob.base64;
  Object.assign(result, state);
  writeFileSync(path.join(OUT, `${spec.name}.json`), JSON.stringify(result, null, 2));
  return result;
}

function saveBlobs(spec, blobs) {
  const dir = path.join(OUT, spec.name);
  mkdirSync(dir, { recursive: true });
  for (const blob of blobs) {
    writeFileSync(path.join(dir, `blob_${String(blob.seq).padStart(4, "0")}.webm`), Buffer.from(blob.base64, "base64"));
  }
}

function pageSpecs() {
  return opts.page.map((text) => {
    const [slice, flag] = text.split(":");
    const timeslice = Number(slice);
    if (!Number.isInteger(timeslice) || timeslice <= 0 || (flag && flag !== "reload")) {
      throw new Error(`--page ${text}: expected MS or MS:reload`);
    }
    const name = `ts${timeslice}${flag ? "-reload" : ""}`;
    return { name, timeslice, reload: flag === "reload", sessionId: `${opts["session-prefix"]}-${name}` };
  });
}

async function main() {
  const specs = pageSpecs();
  const names = specs.map((s) => s.name);
  if (new Set(names).size !== names.length) throw new Error(`--page values repeat: ${names}`);
  const staticServer = await serveStatic();
  const base = `http://127.0.0.1:${staticServer.address().port}`;
  const profile = mkdtempSync(path.join(tmpdir(), "scribeai-chromium-"));  // a fresh profile every run
  const browser = await launch(path.resolve(opts.wav), profile);
  try {
    const version = await browser.version();
    log(`${version}: ${specs.length} page(s), ${SECONDS} s each, served from ${base}`);
    const pages = await Promise.all(specs.map((spec) => runPage(browser, base, spec)));
    console.log(JSON.stringify({ chromium: version, out: OUT, pages }));
    log("closing the browser");
  } finally {
    await browser.close();
    staticServer.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
