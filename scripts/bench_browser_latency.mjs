// The browser half of scripts/bench_browser_latency.py: opens the demo page (served by the server under test) in
// Debian's Chromium through puppeteer-core (from tests/js/node_modules), the fake microphone playing --wav, signs
// in, presses Record (the page's default timeslice) and notes, in the page, when each transcript line changed and
// when the frame that shows it began; then waits for the last sentence's final, presses Stop, waits for the whole
// transcript and prints one JSON line.
//
//   node scripts/bench_browser_latency.mjs --url URL --token JWT --wav speech.wav --out DIR
//     --speech-seconds S --last-end-ms MS [--tail-seconds 30] [--screenshot-at S]
//
// --speech-seconds: how long the speech lasts in the WAV (the WAV goes on with silence: Chromium's fake
// microphone loops its file, and the recording must end before it starts again). --last-end-ms: where the
// last sentence ends in the WAV; once a final reaching 1.5 s before it shows (the recording starts a little
// after the WAV does), the driver waits 3 s more and stops; at most --tail-seconds after the speech.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(HERE, "..", "tests", "js", "package.json"));
const puppeteer = require("puppeteer-core");

const CHROMIUM = process.env.SCRIBEAI_CHROMIUM || "/usr/bin/chromium";
const POLL_MS = 50;

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    wav: { type: "string" },
    out: { type: "string" },
    "speech-seconds": { type: "string" },
    "last-end-ms": { type: "string" },
    "tail-seconds": { type: "string", default: "30" },
    "screenshot-at": { type: "string" },
  },
});
for (const name of ["url", "token", "wav", "out", "speech-seconds", "last-end-ms"]) {
  if (!opts[name]) {
    console.error(`--${name} is required`);
    process.exit(2);
  }
}
const OUT = path.resolve(opts.out);
mkdirSync(OUT, { recursive: true });
const SPEECH_MS = Number(opts["speech-seconds"]) * 1000;
const LAST_END_MS = Number(opts["last-end-ms"]);
const TAIL_MS = Number(opts["tail-seconds"]) * 1000;
const SHOT_AT_MS = Number(opts["screenshot-at"] ?? SPEECH_MS / 2000) * 1000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const t0 = performance.now();
const log = (...args) => console.error(`[browser +${((performance.now() - t0) / 1000).toFixed(1)}s]`, ...args);

// -- in the page, before its scripts ------------------------------------------------------
// getUserMedia's answer, MediaRecorder's start() call and start event, every blob (Date.now(), epoch ms); and every
// change of a #transcript line (its text as shown, its span from the page's LiveTranscript) with `t`, when the DOM
// changed (a MutationObserver), and `frame`, when the next animation frame began (the frame that paints it).

function instrument() {
  const bench = { gum: null, startCall: null, startReturn: null, startEvent: null, blobs: [], shown: [], last: new Map() };
  window.__bench = bench;
  const devices = navigator.mediaDevices;
  if (devices?.getUserMedia) {
    const native = devices.getUserMedia.bind(devices);
    devices.getUserMedia = async (constraints) => {
      const stream = await native(constraints);
      bench.gum = Date.now();
      return stream;
    };
  }
  const Native = window.MediaRecorder;
  if (Native) {
    window.MediaRecorder = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener("start", () => { bench.startEvent = Date.now(); });
        this.addEventListener("dataavailable", (event) => bench.blobs.push({ at: Date.now(), size: event.data?.size ?? 0 }));
      }

      start(...args) {
        bench.startCall = Date.now();
        const result = super.start(...args);
        bench.startReturn = Date.now();
        return result;
      }
    };
  }
  const spans = () => {
    // key -> endMs, from the recorder's LiveTranscript (what the page draws its lines from)
    const live = window.demo?.recorder?.live;
    const ends = new Map();
    if (!live) return ends;
    for (const line of live.lines()) {
      if (line.kind === "final") ends.set(line.key, line.segment.endMs);
      else ends.set(line.key, live._captions?.get(line.startMs)?.endMs ?? null);
    }
    return ends;
  };
  const sample = () => {
    const t = Date.now();
    let ends = null;
    const changed = [];
    for (const li of document.querySelectorAll("#transcript li")) {
      const key = li.dataset.key;
      const caption = li.classList.contains("caption");
      const text = caption
        ? `${li.querySelector(".confirmed")?.textContent ?? ""}${li.querySelector(".tentative")?.textContent ?? ""}`
        : li.querySelector(".text")?.textContent ?? "";
      const confirmed = caption ? li.querySelector(".confirmed")?.textContent ?? "" : text;
      const before = bench.last.get(key);
      if (before && before.text === text && before.confirmed === confirmed) continue;
      ends ??= spans();
      const entry = { key, kind: caption ? "caption" : "final", startMs: Number(li.dataset.start), endMs: ends.get(key) ?? null,
        text, confirmed, t, frame: null };
      bench.last.set(key, { text, confirmed });
      bench.shown.push(entry);
      changed.push(entry);
    }
    if (changed.length) requestAnimationFrame(() => { const at = Date.now(); for (const e of changed) e.frame = at; });
  };
  document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver(sample).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}

async function waitFor(page, predicate, timeoutMs, what, arg) {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await page.evaluate(predicate, arg)) return;
    await sleep(POLL_MS);
  }
  throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
}

async function click(page, selector) {
  const found = await page.evaluate((sel) => {
    const target = document.querySelector(sel);
    if (!target || target.disabled) return false;
    target.click();
    return true;
  }, selector);
  if (!found) throw new Error(`nothing enabled to click at ${selector}`);
}

async function main() {
  const profile = mkdtempSync(path.join(tmpdir(), "bench-browser-latency-profile-"));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      `--use-file-for-fake-audio-capture=${path.resolve(opts.wav)}`, "--autoplay-policy=no-user-gesture-required",
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
    ],
    protocolTimeout: 60_000,
  });
  const result = { chromium: await browser.version(), screenshots: [] };
  try {
    const page = await browser.newPage();
    page.on("console", (msg) => { if (msg.type() === "error") log("console:", msg.text()); });
    page.on("pageerror", (err) => log("page error:", err.message));
    page.on("dialog", (dialog) => dialog.accept());
    await page.setViewport({ width: 900, height: 1000 });
    await page.evaluateOnNewDocument(instrument);
    await page.goto(`${opts.url}/?outbox=bench-browser-latency`);
    await waitFor(page, () => !document.getElementById("signin").hidden || !document.getElementById("recorder").hidden,
      15_000, "the page's first view");
    if (await page.$eval("#signin", (el) => !el.hidden)) {
      await page.$eval("#token", (input, token) => { input.value = token; }, opts.token);
      await click(page, "#signin-button");
    }
    await waitFor(page, () => window.demo?.ready === true, 15_000, "sign-in");
    await page.bringToFront();
    const clickedAt = Date.now();
    await click(page, "#record");
    await waitFor(page, () => ["recording", "error"].includes(document.getElementById("state").dataset.state), 15_000, "recording");
    if (await page.$eval("#state", (el) => el.dataset.state) !== "recording") {
      throw new Error(`not recording: ${await page.$eval("#errors", (el) => el.textContent)}`);
    }
    Object.assign(result, { clickedAt }, await page.evaluate(() => ({ sessionId: window.demo.recorder.sessionId,
      timesliceMs: window.demo.recorder.options.timesliceMs, mimeType: window.demo.recorder.mimeType })));
    log(`recording ${result.sessionId} at ${result.timesliceMs} ms blobs, ${result.mimeType}`);
    const startCall = await page.evaluate(() => window.__bench.startCall);
    // mid-speech, the moment a caption of a few words shows (the page as a user sees it then)
    await sleep(Math.max(0, startCall + SHOT_AT_MS - Date.now()));
    await waitFor(page, () => [...document.querySelectorAll("#transcript li.caption .text")].some((el) => el.textContent.split(" ").length >= 4),
      15_000, "a caption of four words").catch((err) => log(err.message));
    const shot = path.join(OUT, "mid-recording.png");
    result.screenshotAt = Date.now();
    await page.screenshot({ path: shot, fullPage: true });
    result.screenshots.push(shot);
    result.screenshotShowed = await page.evaluate(() => Array.from(document.querySelectorAll("#transcript li"),
      (li) => `${li.classList.contains("caption") ? "caption" : "final"}: ${li.querySelector(".text")?.textContent}`).slice(-3));
    log(`screenshot ${shot}`);
    const speechEnd = startCall + SPEECH_MS;
    await sleep(Math.max(0, speechEnd - Date.now()));
    log("speech over: waiting for the last final");
    const lastFinal = await waitFor(page, (ms) => window.__bench.shown.some((e) => e.kind === "final" && e.endMs >= ms),
      TAIL_MS, "the last sentence's final", LAST_END_MS - 1500).then(() => true, (err) => { log(err.message); return false; });
    result.lastFinalSeen = lastFinal;
    await sleep(3000);
    result.stopClickedAt = Date.now();
    await click(page, "#stop");
    await waitFor(page, () => window.demo.completed === true, 120_000, "session-completed");
    await sleep(500);
    Object.assign(result, await page.evaluate(() => {
      const b = window.__bench;
      return { gum: b.gum, startCall: b.startCall, startReturn: b.startReturn, startEvent: b.startEvent, blobs: b.blobs,
        shown: b.shown, finals: Array.from(document.querySelectorAll("#transcript li.final .text"), (el) => el.textContent),
        errors: window.demo.errors,
        // what the server sent, as it reached the page (the page's own list): to tell the wire from the paint
        events: window.demo.liveEvents.filter((e) => e.body?.sessionId === window.demo.recorder.sessionId)
          .map((e) => ({ event: e.event, at: e.at, startMs: e.body.startMs, endMs: e.body.endMs, text: e.body.text })) };
    }));
    const done = path.join(OUT, "done.png");
    await page.screenshot({ path: done, fullPage: true });
    result.screenshots.push(done);
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
  console.log(JSON.stringify(result));
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
