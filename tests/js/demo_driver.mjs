// Drives the demo page (scribeai/demo/, served by the server under test) in real Chromium: Debian's
// /usr/bin/chromium through puppeteer-core, a fake microphone playing a WAV. Scenarios run as pages side
// by side in one browser; run by tests/test_demo.py. Prints one JSON line with what each page produced
// (every MediaRecorder blob's size and sha256, seen through a wrapper installed before the page's
// scripts), what it showed, and its screenshots (in --out).
//
//   node demo_driver.mjs --wav speech.wav --out DIR --token JWT
//     [--main URL] [--crash URL] [--overload URL] [--record-seconds 60] [--short-seconds 30]
//     [--loss URL [--reloads 10] [--seed N] [--loss-timeslice MS] [--exit reload|close]] [--dialog-ms 0]
//     [--captions URL [--captions-mime TYPE ...] [--speech-seconds S]] [--browser chromium|firefox]
//     [--summary URL] [--markup URL] [--summary-spec JSON]
//
// --main (a jwt server) gets three pages: "record" (records --record-seconds, waits for the whole
// transcript, lists the sessions, downloads txt/srt/vtt), "offline" (network cut for 10 s mid-recording)
// "reload" (offline for a few seconds so chunks pile up in the outbox, then reloaded: the page
// sends the outbox by itself) and "restart" (the same with the whole browser closed and started again). --crash (SCRIBEAI_AUTH=none; the test SIGKILLs
// and restarts it) and --overload (a tiny MAX_QUEUE_SIZE) get one page each. A scenario whose server
// is not given does not run. --loss gets one page ("loss", the page's default timeslice unless --loss-timeslice)
// that records and reloads --reloads times, each at a random point of a blob, and reports for each reload when
// MediaRecorder started, when the page went (beforeunload, pagehide), the blobs of that life and what the page
// said was lost when it came back. A page's leave-page prompt is accepted after --dialog-ms (a user reading it).
// --captions gets one page per --captions-mime ("" for the library's choice), recording side by side at the page's
// default timeslice while the speech plays once (--speech-seconds long), then stopped; each reports what its transcript
// showed over time (captions and finals), the server's transcript events as they came, and its blobs' first bytes.
// --browser firefox runs only --captions, in Debian's firefox-esr over WebDriver BiDi: its fake microphone is a
// tone, so the driver starts a PulseAudio server of its own with a null sink, points Firefox's microphone at the
// sink's monitor (media.audio_loopback_dev) and plays the WAV into the sink (paplay) once every page records.
// --summary and --markup record nothing (their servers hold sessions the test stored): "summary" opens a session from
// the list, stops it and shows its summary, follows an action item to its moment, downloads the Markdown, searches and
// opens a result; "markup" shows a model's summary written in HTML, and a transcript with HTML in it, as text.
// --summary-spec (JSON) names what they open, click and search for.

import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const CHROMIUM = process.env.SCRIBEAI_CHROMIUM || "/usr/bin/chromium";
const FIREFOX = process.env.SCRIBEAI_FIREFOX || "/usr/bin/firefox-esr";
const POLL_MS = 200;
const DESKTOP = { width: 900, height: 1000 };
const MOBILE = { width: 375, height: 812 };  // isMobile would make puppeteer reload the page

const { values: opts } = parseArgs({
  options: {
    wav: { type: "string" },
    out: { type: "string" },
    token: { type: "string" },
    main: { type: "string" },
    crash: { type: "string" },
    overload: { type: "string" },
    "record-seconds": { type: "string", default: "60" },
    "short-seconds": { type: "string", default: "30" },
    "transcript-timeout": { type: "string", default: "90" },
    loss: { type: "string" },
    reloads: { type: "string", default: "10" },
    seed: { type: "string" },
    "loss-timeslice": { type: "string" },
    "dialog-ms": { type: "string", default: "0" },
    exit: { type: "string", default: "reload" },
    browser: { type: "string", default: "chromium" },
    captions: { type: "string" },
    "captions-mime": { type: "string", multiple: true, default: [""] },
    "speech-seconds": { type: "string", default: "10" },
    summary: { type: "string" },
    markup: { type: "string" },
    "summary-spec": { type: "string", default: "{}" },
  },
});
for (const name of ["wav", "out", "token"]) {
  if (!opts[name]) {
    console.error(`--${name} is required`);
    process.exit(2);
  }
}
const RECORD_S = Number(opts["record-seconds"]);
const SHORT_S = Number(opts["short-seconds"]);
const TRANSCRIPT_TIMEOUT_MS = Number(opts["transcript-timeout"]) * 1000;
const OUT = path.resolve(opts.out);
mkdirSync(OUT, { recursive: true });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const started = performance.now();
const log = (...args) => console.error(`[demo +${((performance.now() - started) / 1000).toFixed(1)}s]`, ...args);

// -- what the test sees of a page, installed before its scripts ------------------------
// Every MediaRecorder blob (size, sha256, when) in order, kept in sessionStorage so a reload adds to the list; a
// blob given after the page began to go (beforeunload) is marked `unloading`: it may not have reached the outbox,
// and its sha256 may never be computed. And a timeline of what the page shows (state, server line, connection,
// outbox), one entry per change. Moments (a MediaRecorder's start, each blob, beforeunload) also go to the driver
// at once as console.debug lines (`[scribeai-test] {...}`), which a closed tab cannot take back; a console line
// sent at pagehide does not arrive, so its time goes to localStorage (`scribeai-test-pagehide:<load>`), for the
// next page load of the origin to read.

function instrument() {
  const KEY = "scribeai-demo-test";
  const saved = JSON.parse(sessionStorage.getItem(KEY) || '{"lives": 0, "blobs": []}');
  const test = { life: saved.lives + 1, load: crypto.randomUUID(), blobs: saved.blobs, hashing: [], timeline: [],
    unloadingSince: null, shown: [], shownLast: new Map(), heads: [] };
  const save = () => sessionStorage.setItem(KEY, JSON.stringify({ lives: test.life, blobs: test.blobs }));
  save();
  window.__test = test;
  const report = (kind, fields = {}) => console.debug("[scribeai-test]",
    JSON.stringify({ kind, life: test.life, load: test.load, at: Date.now(), ...fields }));
  // added before the page's own listeners: these run first
  window.addEventListener("beforeunload", () => {
    test.unloadingSince ??= Date.now();
    report("beforeunload");
  });
  window.addEventListener("pagehide", () => localStorage.setItem(`scribeai-test-pagehide:${test.load}`, String(Date.now())));
  const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  const Native = window.MediaRecorder;
  if (!Native) return;
  window.MediaRecorder = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("start", () => report("start"));
      // added in the constructor: it runs before the page's own listener
      this.addEventListener("dataavailable", (event) => {
        if (!event.data || event.data.size === 0) return;
        const entry = { life: test.life, size: event.data.size, sha256: null, at: Date.now(), unloading: test.unloadingSince !== null };
        report("blob", { size: entry.size, unloading: entry.unloading });
        test.blobs.push(entry);
        save();
        test.hashing.push(event.data.arrayBuffer().then((buffer) => {
          entry.head = hex(buffer.slice(0, 4));
          return crypto.subtle.digest("SHA-256", buffer);
        }).then((digest) => { entry.sha256 = hex(digest); save(); }));
      });
    }
  };
  const sample = () => {
    const at = Date.now();  // one time per sample: what changed in one paint shares it
    const text = (id) => document.getElementById(id)?.textContent ?? null;
    const data = (id, key) => document.getElementById(id)?.dataset[key] ?? null;
    const now = { state: data("state", "state"), server: data("backpressure", "level"), connected: data("connection", "connected"),
      outbox: Number(text("outbox-chunks") ?? 0) };
    const last = test.timeline.at(-1);
    if (!last || Object.keys(now).some((k) => now[k] !== last[k])) test.timeline.push({ ...now, t: at });
    // the transcript as shown: each caption's text whenever it changes, each final when it first shows
    for (const li of document.querySelectorAll("#transcript li")) {
      const key = li.dataset.key;
      const shown = li.classList.contains("caption")
        ? { kind: "caption", confirmed: li.querySelector(".confirmed")?.textContent ?? "", tentative: li.querySelector(".tentative")?.textContent ?? "" }
        : { kind: "final", text: li.querySelector(".text")?.textContent ?? "" };
      const before = test.shownLast.get(key);
      if (before && before.confirmed === shown.confirmed && before.tentative === shown.tentative && before.text === shown.text) continue;
      test.shownLast.set(key, shown);
      test.shown.push({ key, start: Number(li.dataset.start), t: at, ...shown });
    }
    for (const key of test.shownLast.keys()) {
      if (!document.querySelector(`#transcript li[data-key="${CSS.escape(key)}"]`)) {
        test.shownLast.delete(key);
        test.shown.push({ key, t: at, kind: "gone" });
      }
    }
  };
  document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver(sample).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    sample();
  });
}

// -- the browser --------------------------------------------------------------------

function launch(wav, userDataDir) {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir,
    args: [
      "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`, "--autoplay-policy=no-user-gesture-required",
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
    ],
    protocolTimeout: 60_000,
  });
}

/**
 * A PulseAudio server of the driver's own (its folder, its socket; nothing of the machine's): a null sink whose
 * monitor is Firefox's microphone. What paplay plays into the sink is what the page records.
 */
async function startPulse(dir) {
  const socket = path.join(dir, "native");
  const env = { ...process.env, XDG_RUNTIME_DIR: dir, HOME: dir };
  const proc = spawn("pulseaudio", ["-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes", "--use-pid-file=no",
    "--log-target=stderr", "-L", "module-null-sink sink_name=scribeai_speech sink_properties=device.description=ScribeAI-speech",
    "-L", `module-native-protocol-unix auth-anonymous=1 socket=${socket}`], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (data) => { stderr += data; });
  const server = `unix:${socket}`;
  const deadline = performance.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`pulseaudio exited (${proc.exitCode}): ${stderr}`);
    try {
      execFileSync("pactl", ["--server", server, "info"], { stdio: "ignore", env });
      break;
    } catch {
      if (performance.now() > deadline) throw new Error(`pulseaudio did not answer within 15 s: ${stderr}`);
      await sleep(100);
    }
  }
  const stop = () => {
    proc.kill();
    rmSync(dir, { recursive: true, force: true });
  };
  return { server, env, sink: "scribeai_speech", monitor: "Monitor of ScribeAI-speech", stop };
}

/** Play the WAV into the pulse sink once; resolves when it has played. */
function playInto(pulse, wav) {
  return new Promise((resolve, reject) => {
    const proc = spawn("paplay", ["--server", pulse.server, "-d", pulse.sink, wav], { env: pulse.env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr.on("data", (data) => { stderr += data; });
    proc.on("error", reject);
    proc.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`paplay exited ${code}: ${stderr}`))));
  });
}

function launchFirefox(pulse, userDataDir) {
  return puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    userDataDir,
    env: { ...process.env, PULSE_SERVER: pulse.server },
    extraPrefsFirefox: {
      "media.navigator.permission.disabled": true,
      "media.navigator.streams.fake": false,         // not the fake tone: the real (pulse) devices
      "media.audio_loopback_dev": pulse.monitor,     // the microphone is the sink's monitor
      "media.autoplay.default": 0,
    },
    protocolTimeout: 60_000,
  });
}

async function waitFor(page, predicate, timeoutMs, what, arg) {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await page.evaluate(predicate, arg)) return;
    await sleep(POLL_MS);
  }
  throw new Error(`${page.scenario}: ${what} did not happen within ${timeoutMs / 1000} s`);
}

let screenshots = Promise.resolve();

/** One at a time, each page in front first: a background tab paints no frame to capture. */
function screenshot(page, name, result) {
  const file = path.join(OUT, `${name}.png`);
  const taken = screenshots.then(async () => {
    await page.bringToFront();
    await page.screenshot({ path: file, fullPage: true });
  });
  screenshots = taken.catch(() => {});
  result.screenshots.push(file);
  return taken;
}

async function openPage(browser, server, scenario, query) {
  const page = await browser.newPage();  // a Browser or one of its BrowserContexts
  page.scenario = scenario;
  // the page asks before a reload while it records (beforeunload): say yes, as a user who means it would
  page.dialogs = [];
  page.on("dialog", (dialog) => {
    page.dialogs.push(dialog.type());
    sleep(Number(opts["dialog-ms"])).then(() => dialog.accept())
      .catch((err) => log(`${scenario}: the ${dialog.type()} dialog: ${err.message}`));
  });
  page.moments = [];  // the instrument's console.debug lines: {kind, life, at, ...}
  page.on("console", (msg) => {
    if (msg.type() === "error") log(`${scenario} console:`, msg.text());
    if (msg.text().startsWith("[scribeai-test] ")) page.moments.push(JSON.parse(msg.text().slice("[scribeai-test] ".length)));
  });
  page.on("pageerror", (err) => log(`${scenario} page error:`, err.message));
  await page.setViewport(DESKTOP);
  await page.evaluateOnNewDocument(instrument);
  // "/" redirects to the demo page and keeps the query
  await page.goto(`${server}/?${new URLSearchParams(query)}`);
  return page;
}

/** Signed in through the form (or none needed): the recorder card shows. A `wrongToken` is tried first. */
async function signIn(page, { screenshotAs, result, wrongToken } = {}) {
  await waitFor(page, () => !document.getElementById("signin").hidden || !document.getElementById("recorder").hidden ||
    !document.getElementById("notice").hidden, 15_000, "the page's first view");
  const notice = await page.$eval("#notice", (el) => (el.hidden ? null : el.textContent));
  if (notice) throw new Error(`${page.scenario}: the page says: ${notice}`);
  const needsToken = await page.$eval("#signin", (el) => !el.hidden);
  if (needsToken) {
    if (screenshotAs) await screenshot(page, screenshotAs, result);
    if (wrongToken) {
      await page.$eval("#token", (input, token) => { input.value = token; }, wrongToken);
      await click(page, "#signin-button");
      await waitFor(page, () => !document.getElementById("signin-error").hidden, 10_000, "the refusal of a wrong token");
      result.wrongTokenMessage = await page.$eval("#signin-error", (el) => el.textContent);
    }
    await page.$eval("#token", (input, token) => { input.value = token; }, opts.token);
    await click(page, "#signin-button");
  }
  await waitFor(page, () => window.demo?.ready === true, 15_000, "sign-in");
  return needsToken;
}

async function clickRecord(page) {
  await click(page, "#record");
  await waitFor(page, () => ["recording", "error"].includes(document.getElementById("state").dataset.state), 15_000, "recording");
  const state = await page.$eval("#state", (el) => el.dataset.state);
  if (state !== "recording") throw new Error(`${page.scenario}: ${await page.$eval("#errors", (el) => el.textContent)}`);
}

/** Stop, then wait until the outbox is empty and the stop was answered. */
async function clickStop(page, timeoutMs = 60_000) {
  await click(page, "#stop");
  await waitFor(page, () => window.demo.stopResult !== null && window.demo.recorder.state === "stopped", timeoutMs, "stop");
}

async function outboxEmpty(page, timeoutMs) {
  await waitFor(page, () => document.getElementById("outbox").dataset.chunks === "0", timeoutMs, "an empty outbox");
}

async function blobsHashed(page) {
  await page.evaluate(async () => {
    let count;
    do {
      count = window.__test.hashing.length;
      await Promise.all(window.__test.hashing);
    } while (count !== window.__test.hashing.length);
  });
}

/** Everything the test checks about a page, read at the end. */
async function snapshot(page) {
  await blobsHashed(page);
  return page.evaluate(() => ({
    sessionId: window.demo.recorder?.sessionId ?? null,
    blobs: window.__test.blobs,
    lives: window.__test.life,
    cuts: window.demo.cuts,
    timeline: window.__test.timeline,
    stop: window.demo.stopResult,
    completed: window.demo.completed === true,
    errors: window.demo.errors,
    acks: window.demo.acks,
    transcript: Array.from(document.querySelectorAll("#transcript li.final"), (li) =>
      ({ id: li.dataset.id, seq: Number(li.dataset.seq), text: li.querySelector(".text").textContent })),
    sessions: Array.from(document.querySelectorAll("#sessions li"), (li) => ({ id: li.dataset.session, status: li.dataset.status })),
    state: document.getElementById("state").textContent,
    elapsed: document.getElementById("elapsed").textContent,
    stored: Number(document.getElementById("stored").dataset.chunks),
    downloads: window.demo.downloads,
  })).then((seen) => ({ ...seen, dialogs: [...page.dialogs] }));
}

/**
 * Click as the page's own script would: puppeteer's mouse click waits for the element to scroll into
 * view, which needs a rendered frame, and a background tab (all but one of the pages) renders none.
 */
async function click(page, selector) {
  const found = await page.evaluate((sel) => {
    const target = document.querySelector(sel);
    if (!target || target.disabled) return false;
    target.click();
    return true;
  }, selector);
  if (!found) throw new Error(`${page.scenario}: nothing enabled to click at ${selector}`);
}

// -- the scenarios ------------------------------------------------------------------------

/** (a) Record, wait for the whole transcript on the page, list the sessions, download the three formats. */
async function recordScenario(browser, server, result) {
  // Its own browser context: the other pages on this server keep their token in localStorage, and one that signed
  // in first must not spare this page the sign-in form (and the wrong token) it is here to show.
  const context = await browser.createBrowserContext();
  const page = await openPage(context, server, "record", { timeslice: "5000", outbox: "record" });
  result.signedInWithToken = await signIn(page, { screenshotAs: "signin", result, wrongToken: `${opts.token}x` });
  await screenshot(page, "idle", result);
  await clickRecord(page);
  await sleep(Math.min(20, RECORD_S / 2) * 1000);
  await screenshot(page, "recording", result);
  // the session list follows the recording (its chunk count), not only the first chunk
  result.listedWhileRecording = await page.evaluate(() =>
    Number(document.querySelector(`#sessions li[data-session="${window.demo.recorder.sessionId}"]`)?.dataset.chunks ?? -1));
  await sleep((RECORD_S - Math.min(20, RECORD_S / 2)) * 1000);
  log("record: stopping");
  await clickStop(page);
  await waitFor(page, () => window.demo.completed === true, TRANSCRIPT_TIMEOUT_MS, "session-completed");
  log("record: transcript complete");
  // its summary follows on the recorder's socket (session-summary) and shows below the transcript
  await waitFor(page, () => window.demo.viewer.sessionId === window.demo.recorder.sessionId &&
    document.getElementById("summary").dataset.status === "ready", 30_000, "the recording's summary").catch((err) => log(err.message));
  result.summary = await shownSummary(page);
  // the session list follows the session-completed; wait for this session's row to say stopped
  await click(page, "#refresh-sessions");
  await waitFor(page, (sid) => document.querySelector(`#sessions li[data-session="${sid}"]`)?.dataset.status === "stopped",
    10_000, "the session listed as stopped", await page.evaluate(() => window.demo.recorder.sessionId));
  const downloads = mkdtempSync(path.join(OUT, "downloads-"));
  const cdp = await browser.target().createCDPSession();
  await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: downloads, browserContextId: context.id });
  const sessionId = await page.evaluate(() => window.demo.recorder.sessionId);
  for (const format of ["txt", "srt", "vtt"]) {
    await click(page, `#sessions li[data-session="${sessionId}"] button.download[data-format="${format}"]`);
  }
  const deadline = performance.now() + 15_000;
  while (readdirSync(downloads).filter((name) => !name.endsWith(".crdownload")).length < 3 && performance.now() < deadline) {
    await sleep(POLL_MS);
  }
  result.files = Object.fromEntries(readdirSync(downloads).map((name) => [name, readFileSync(path.join(downloads, name), "utf8")]));
  await screenshot(page, "stopped", result);
  Object.assign(result, await snapshot(page));
  await page.setViewport(MOBILE);
  await screenshot(page, "mobile", result);
  result.mobileOverflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await page.setViewport(DESKTOP);
}

/** (b) The network cut for 10 s mid-recording, then back; stop once everything is sent. At the page's default 1 s blobs. */
async function offlineScenario(browser, server, result) {
  const page = await openPage(browser, server, "offline", { outbox: "offline" });
  await signIn(page);
  await clickRecord(page);
  await sleep(3000);
  // the pause button on the way: paused, then recording again
  await click(page, "#pause");
  await waitFor(page, () => document.getElementById("state").dataset.state === "paused", 5000, "paused");
  await sleep(2000);
  await click(page, "#pause");
  await waitFor(page, () => document.getElementById("state").dataset.state === "recording", 5000, "recording again");
  await sleep(3000);
  log("offline: network off");
  await page.setOfflineMode(true);
  await waitFor(page, () => document.getElementById("backpressure").dataset.level === "offline", 10_000, "the offline state");
  await sleep(7000);
  await screenshot(page, "offline", result);
  result.outboxWhileOffline = await page.$eval("#outbox", (el) => Number(el.dataset.chunks));
  await sleep(3000);
  await page.setOfflineMode(false);
  log("offline: network on");
  await sleep(Math.max(SHORT_S - 18, 5) * 1000);
  await clickStop(page);
  await outboxEmpty(page, 10_000);
  Object.assign(result, await snapshot(page));
}

/** (c) The server is SIGKILLed and restarted by the test while this page records (no sign-in: auth none). */
async function crashScenario(browser, server, result) {
  const page = await openPage(browser, server, "crash", { timeslice: "3000" });
  result.signedInWithToken = await signIn(page);
  await clickRecord(page);
  const recordUntil = performance.now() + SHORT_S * 1000;
  // the test kills the server once it has a few chunks: show the page while it is gone
  try {
    await waitFor(page, () => document.getElementById("connection").dataset.connected === "false", SHORT_S * 1000, "the crash");
    await sleep(1000);
    await screenshot(page, "server-killed", result);
  } catch (err) {
    log(err.message);  // the test's own checks say what is wrong
  }
  await sleep(Math.max(recordUntil - performance.now(), 0));
  await clickStop(page);
  await outboxEmpty(page, 10_000);
  Object.assign(result, await snapshot(page));
}

/**
 * (d) Chunks wait in the outbox (the network is off), the tab is reloaded: the page sends them by itself,
 * Record more records into the same session.
 */
async function reloadScenario(browser, server, result) {
  const page = await openPage(browser, server, "reload", { timeslice: "3000", outbox: "reload" });
  await signIn(page);
  await clickRecord(page);
  await sleep(6000);
  await page.setOfflineMode(true);
  log("reload: network off");
  await waitFor(page, () => Number(document.getElementById("outbox").dataset.chunks) >= 2, 20_000, "two chunks waiting");
  // reload just after a timeslice blob, so that none is due while the page's state is read
  const blobs = await page.evaluate(() => window.__test.blobs.length);
  await waitFor(page, (n) => window.__test.blobs.length > n, 10_000, "the next blob", blobs);
  result.beforeReload = await snapshot(page);
  // back online and reloaded at once: socket.io-client's reconnection waits about a second, the reload does not
  await page.setOfflineMode(false);
  await page.reload();
  log("reload: reloaded");
  await signIn(page);
  // the page sends the earlier outbox by itself
  await waitFor(page, () => window.demo.autoSent.length > 0, 10_000, "the outbox resent by itself");
  result.offered = await page.evaluate(() => window.demo.autoSent.map((p) => ({ sessionId: p.sessionId,
    text: `${p.chunks} chunks, ${p.bytes} bytes` })));
  await screenshot(page, "reloaded-outbox", result);
  const offered = result.beforeReload.blobs.length - result.beforeReload.acks;
  await waitFor(page, (n) => window.demo.acks >= n && document.getElementById("outbox").dataset.chunks === "0", 20_000,
    "the outbox resent", offered);
  result.pendingAfterSend = await page.evaluate(() => window.demo.Recorder.pending({ dbName: "reload" }));
  // the session's time so far is the server's figure, asked for at the join
  await waitFor(page, () => document.getElementById("elapsed").textContent.includes(":") && document.getElementById("elapsed").textContent !== "0:00", 5000, "the session's time").catch((err) => log(err.message));
  result.afterSend = await page.evaluate(() => ({ state: document.getElementById("state").textContent,
    stored: Number(document.getElementById("stored").dataset.chunks), elapsed: document.getElementById("elapsed").textContent }));
  // then record more into the same session (a second MediaRecorder: a new WebM header mid-session), and stop
  result.recordLabel = await page.$eval("#record", (el) => el.textContent);
  await clickRecord(page);
  await sleep(7000);
  await clickStop(page);
  Object.assign(result, await snapshot(page));
}

/**
 * (f) The whole browser closed with chunks in the outbox, then started again on the same profile: the
 * page sends them by itself and the stop finishes the session. (sessionStorage, where the blob list lives,
 * does not survive a browser restart: the blobs are those recorded before it.)
 */
async function restartScenario(_browser, server, result) {
  const profile = mkdtempSync(path.join(tmpdir(), "scribeai-demo-restart-"));
  try {
    let browser = await launch(path.resolve(opts.wav), profile);
    let page = await openPage(browser, server, "restart", { timeslice: "3000", outbox: "restart" });
    await signIn(page);
    await clickRecord(page);
    await sleep(6000);
    await page.setOfflineMode(true);
    log("restart: network off");
    await waitFor(page, () => Number(document.getElementById("outbox").dataset.chunks) >= 2, 20_000, "two chunks waiting");
    const blobs = await page.evaluate(() => window.__test.blobs.length);
    await waitFor(page, (n) => window.__test.blobs.length > n, 10_000, "the next blob", blobs);
    result.beforeRestart = await snapshot(page);
    await browser.close();
    log("restart: browser closed");
    browser = await launch(path.resolve(opts.wav), profile);
    try {
      page = await openPage(browser, server, "restart", { timeslice: "3000", outbox: "restart" });
      result.signedInAgain = await signIn(page);  // false: the token was kept in the browser's localStorage
      await waitFor(page, () => window.demo.autoSent.length > 0, 10_000, "the outbox resent by itself");
      result.offered = await page.evaluate(() => window.demo.autoSent);
      await outboxEmpty(page, 20_000);
      await clickStop(page);
      const after = await snapshot(page);
      Object.assign(result, after, { blobs: result.beforeRestart.blobs, lives: after.lives });
    } finally {
      await browser.close();
    }
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

/** (e) A server with a tiny queue: buffering, then overloaded; the page holds the chunks and sends them later. */
async function overloadScenario(browser, server, result) {
  const page = await openPage(browser, server, "overload", { timeslice: "2000", outbox: "overload" });
  await signIn(page);
  await clickRecord(page);
  // recording on until the server has refused a chunk as overloaded (or for long enough that it should have)
  try {
    await waitFor(page, () => document.getElementById("backpressure").dataset.level === "overloaded", (SHORT_S + 20) * 1000,
      "overloaded");
    await screenshot(page, "overloaded", result);
  } catch (err) {
    log(err.message);
  }
  await sleep(Math.max(SHORT_S * 1000 - (performance.now() - result.startedAt), 0));
  await clickStop(page, 120_000);
  await outboxEmpty(page, 10_000);
  Object.assign(result, await snapshot(page));
}

/** A small seeded random generator (mulberry32): a run is repeatable with its --seed. */
function randomFrom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * (g) Reloads at random points of a blob: record a few seconds, wait for a blob, wait a random part of a timeslice,
 * reload (the leave-page prompt accepted) or, with --exit close, close the tab and open the page in a new one; the
 * page comes back, sends the outbox, says what was lost; stop that session (the next reload records a new one).
 * One entry per reload in result.reloads, from the instrument's moments (start, blobs, beforeunload, pagehide).
 */
async function lossScenario(browser, server, result) {
  const seed = Number(opts.seed ?? Date.now() % 1_000_000);
  const random = randomFrom(seed);
  const closing = opts.exit === "close";
  const query = { outbox: "loss", ...(opts["loss-timeslice"] ? { timeslice: opts["loss-timeslice"] } : {}) };
  const context = closing ? await browser.createBrowserContext() : browser;  // a new tab shares the origin's storage
  let page = await openPage(context, server, "loss", query);
  Object.assign(result, { seed, exit: closing ? "close" : "reload", reloads: [] });
  await signIn(page);
  for (let i = 0; i < Number(opts.reloads); i++) {
    if (i > 0) {
      // the earlier recording, resumed by the page: once its outbox is sent, stop it; Record then starts a new session
      await waitFor(page, () => window.demo.resumed && window.demo.recorder?.lastJoin &&
        document.getElementById("outbox").dataset.chunks === "0", 20_000, "the cut recording resent");
      await clickStop(page);
    }
    await clickRecord(page);
    const { sessionId, timesliceMs, life } = await page.evaluate(() => ({ sessionId: window.demo.recorder.sessionId,
      timesliceMs: window.demo.recorder.options.timesliceMs, life: window.__test.life }));
    await sleep(2000 + random() * 2000);
    const blobs = await page.evaluate(() => window.__test.blobs.length);
    await waitFor(page, (n) => window.__test.blobs.length > n, timesliceMs + 5000, "the next blob", blobs);
    const offsetMs = Math.round(random() * timesliceMs);
    await sleep(offsetMs);
    const gone = page;
    const dialogs = gone.dialogs.length;
    const exitAt = Date.now();
    if (closing) {
      const closed = new Promise((resolve) => gone.once("close", resolve));
      await gone.close({ runBeforeUnload: true });
      await closed;
      page = await openPage(context, server, "loss", query);
    } else {
      await gone.reload();
    }
    await signIn(page);
    await waitFor(page, (sid) => window.demo.cuts.some((c) => c.sessionId === sid), 10_000, "what the reload lost, said", sessionId);
    const moments = gone.moments.filter((m) => m.life === life);
    const at = (kind) => moments.find((m) => m.kind === kind)?.at ?? null;
    const seen = await page.evaluate((sid, load) => ({
      pagehideAt: Number(localStorage.getItem(`scribeai-test-pagehide:${load}`)) || null,
      cut: window.demo.cuts.find((c) => c.sessionId === sid),
      shown: document.querySelector(`#cut [data-session="${CSS.escape(sid)}"]`)?.textContent ?? null,
      shownHidden: document.getElementById("cut").hidden,
      resumed: window.demo.resumed ? window.demo.recorder.sessionId : null,
    }), sessionId, moments[0]?.load);
    result.reloads.push({ sessionId, timesliceMs, offsetMs, exitAt, dialogs: gone.dialogs.slice(dialogs),
      start: at("start") === null ? null : { at: at("start") },
      exit: { beforeunloadAt: at("beforeunload"), pagehideAt: seen.pagehideAt },
      blobs: moments.filter((m) => m.kind === "blob").map(({ size, at: when, unloading }) => ({ size, at: when, unloading })),
      ...seen });
    log(`loss: reload ${i + 1} at +${offsetMs} ms into a blob: ${seen.cut?.text}`);
  }
  await waitFor(page, () => window.demo.resumed && document.getElementById("outbox").dataset.chunks === "0", 20_000,
    "the cut recording resent");
  await screenshot(page, "reload-cut", result);
  await clickStop(page);
  Object.assign(result, await snapshot(page));
}

/**
 * (h) Live captions: pages record side by side (one per --captions-mime) while the speech plays once, then stop and
 * wait for the whole transcript. What each page showed over time is the instrument's `shown` list.
 */
async function captionsScenario(browser, server, result) {
  const pages = [];
  for (const [i, mime] of opts["captions-mime"].entries()) {
    const page = await openPage(browser, server, `captions${i}`, { outbox: `captions-${i}`, ...(mime ? { mime } : {}) });
    await signIn(page);
    pages.push(page);
  }
  for (const page of pages) await clickRecord(page);
  const speechMs = Number(opts["speech-seconds"]) * 1000;
  const playing = browser.pulse ? playInto(browser.pulse, path.resolve(opts.wav)) : sleep(speechMs);
  result.playStartedAt = Date.now();
  // a screenshot while captions show, if any come before the speech ends
  const shot = waitFor(pages[0], () => document.querySelector("#transcript li.caption .confirmed, #transcript li.caption .tentative")
    ?.textContent.length > 0 && document.querySelectorAll("#transcript li.final").length > 0, speechMs, "a caption after a final")
    .then(() => screenshot(pages[0], `captions-${opts.browser}`, result), (err) => log(err.message));
  await playing;
  await shot;
  await sleep(1500);  // the end of the last word reaches a blob
  result.pages = [];
  for (const page of pages) await clickStop(page);
  for (const page of pages) {
    // a refused chunk will never be transcribed: say so at once, with the server's reason
    await waitFor(page, () => window.demo.completed === true || window.demo.errors.length > 0, TRANSCRIPT_TIMEOUT_MS,
      "session-completed");
    const errors = await page.evaluate(() => window.demo.errors);
    if (errors.length > 0) throw new Error(`${page.scenario}: the page reported ${JSON.stringify(errors.slice(0, 3))}`);
    await sleep(500);  // the last final's paint reaches the instrument
    const seen = await snapshot(page);
    const extra = await page.evaluate(() => ({ mimeType: window.demo.recorder.mimeType, shown: window.__test.shown,
      completedAt: window.demo.completedAt,
      liveEvents: window.demo.liveEvents.filter((e) => e.body?.sessionId === window.demo.recorder.sessionId),
      captionsLeft: document.querySelectorAll("#transcript li.caption").length }));
    const recordStartAt = page.moments.find((m) => m.kind === "start")?.at ?? null;  // MediaRecorder's start (page clock)
    result.pages.push({ name: page.scenario, mime: opts["captions-mime"][pages.indexOf(page)], recordStartAt, ...seen, ...extra });
  }
  await screenshot(pages[0], `captions-${opts.browser}-done`, result);
}

/** What the opened session's summary shows: status, text, each item's text and whether (and where) it links. */
async function shownSummary(page) {
  return page.evaluate(() => {
    const items = (id) => Array.from(document.querySelectorAll(`#${id} li`), (li) => {
      const link = li.querySelector("a.seek");
      return { text: li.querySelector(".text")?.textContent ?? "", link: link !== null,
        startMs: link ? Number(link.dataset.startMs) : null, time: link?.querySelector(".time").textContent ?? null };
    });
    const viewer = document.getElementById("viewer");
    return {
      sessionId: window.demo.viewer.sessionId,
      status: document.getElementById("summary").dataset.status,
      statusText: document.getElementById("summary-status").textContent,
      text: document.getElementById("summary-text").textContent,
      textHidden: document.getElementById("summary-text").hidden,
      points: items("summary-points"),
      actions: items("summary-actions"),
      keywords: Array.from(document.querySelectorAll("#summary-keywords li"), (li) => li.textContent),
      reason: document.getElementById("summary-reason").hidden ? null : document.getElementById("summary-reason").textContent,
      via: window.demo.viewer.summaries,
      // markup written by a model or spoken into a transcript stays text: no element of it in the page
      elements: Array.from(viewer.querySelectorAll("img, script, iframe, svg, b, strong, em, i")).map((el) => el.tagName),
      xss: window.__xss ?? null,
    };
  });
}

/** The highlighted segment of the opened session's transcript, and whether it is in view (its list's and the window's). */
async function highlighted(page) {
  return page.evaluate(() => {
    const li = document.querySelector("#viewer-transcript li.highlight");
    if (!li) return null;
    const box = li.getBoundingClientRect();
    const list = document.getElementById("viewer-transcript").getBoundingClientRect();
    return { sessionId: window.demo.viewer.sessionId, id: li.dataset.id, startMs: Number(li.dataset.start),
      endMs: Number(li.dataset.end), text: li.querySelector(".text").textContent,
      inView: box.top >= list.top - 1 && box.bottom <= list.bottom + 1 && box.top >= 0 && box.bottom <= window.innerHeight,
      highlightedCount: document.querySelectorAll("#viewer-transcript li.highlight").length };
  });
}

/** The search results shown: title, time, the snippet as text and as markup (only <mark> elements in it). */
async function shownResults(page) {
  return page.evaluate(() => ({
    results: Array.from(document.querySelectorAll("#search-results li"), (li) => ({
      sessionId: li.dataset.session, kind: li.dataset.kind, segmentId: li.dataset.segment, start: li.dataset.start, parts: li.dataset.parts,
      title: li.querySelector(".result-title").textContent, time: li.querySelector(".time").textContent,
      snippet: li.querySelector(".snippet").textContent,
      marks: Array.from(li.querySelectorAll(".snippet mark"), (m) => m.textContent),
      tags: Array.from(li.querySelectorAll(".snippet *"), (el) => el.tagName) })),
    more: !document.getElementById("search-more").hidden,
    status: document.getElementById("search-status").hidden ? null : document.getElementById("search-status").textContent,
    error: document.getElementById("search-error").hidden ? null : document.getElementById("search-error").textContent,
  }));
}

/** Type a query in the search box and submit it; wait for its answer (results or an error). */
async function searchFor(page, query) {
  await page.$eval("#search-q", (input, q) => { input.value = q; }, query);
  await click(page, "#search-button");  // the submit starts the search at once: its page count is back to 0
  await waitFor(page, () => window.demo.search.pages > 0 || (window.demo.search.error !== null && !document.getElementById("search-button").disabled),
    15_000, `the search for ${query}`);
  return shownResults(page);
}

async function openFromList(page, sessionId) {
  await waitFor(page, (sid) => document.querySelector(`#sessions li[data-session="${sid}"]`) !== null, 10_000,
    `${sessionId} in the session list`, sessionId);
  await click(page, `#sessions li[data-session="${sessionId}"] button.session-name`);
  await waitFor(page, (sid) => window.demo.viewer.sessionId === sid && window.demo.viewer.session !== null &&
    window.demo.viewer.summaries.some((s) => s.sessionId === sid), 15_000, `${sessionId} opened with its summary`, sessionId);
}

/**
 * (i) After the meeting: a session opened from the list while it still records shows its summary as pending; stopped
 * (through REST, as another device would), its summary comes over the socket and shows; an action item's link
 * highlights its moment in the transcript; the Markdown download; a search, its next page, a result opened at its
 * segment in another session; a query the server refuses, said in words. --summary-spec (JSON) names the sessions.
 */
async function summaryScenario(browser, server, result) {
  const spec = JSON.parse(opts["summary-spec"]);
  const context = await browser.createBrowserContext();  // its downloads go to a folder of its own
  const page = await openPage(context, server, "summary", { outbox: "summary", searchlimit: String(spec.searchLimit) });
  await signIn(page);
  await openFromList(page, spec.session);
  result.before = await shownSummary(page);
  await page.evaluate((sid) => fetch(`/api/sessions/${encodeURIComponent(sid)}/stop`, { method: "POST",
    headers: { Authorization: `Bearer ${window.demo.token}`, "Content-Type": "application/json" }, body: "{}" }), spec.session);
  await waitFor(page, () => document.getElementById("summary").dataset.status === "ready", 30_000, "the summary ready");
  result.summary = await shownSummary(page);
  // the action item's link: its moment in the transcript
  const clicked = await page.evaluate((text) => {
    const link = Array.from(document.querySelectorAll("#summary-actions a.seek")).find((a) => a.querySelector(".text").textContent === text);
    link?.click();
    return link ? Number(link.dataset.startMs) : null;
  }, spec.action);
  if (clicked === null) throw new Error(`summary: no link for the action item ${spec.action}`);
  await waitFor(page, (ms) => window.demo.viewer.seeks.at(-1)?.atMs === ms, 5000, "the seek", clicked);
  result.seek = { atMs: clicked, shown: await highlighted(page), hash: await page.evaluate(() => location.hash) };
  await screenshot(page, "summary", result);
  // the link's address, opened in a tab of its own (signed in by the token this browser keeps): the same moment
  const address = await page.evaluate((text) => Array.from(document.querySelectorAll("#summary-actions a.seek"))
    .find((a) => a.querySelector(".text").textContent === text).getAttribute("href"), spec.action);
  const linked = await context.newPage();
  linked.scenario = "summary (its link in a new tab)";
  await linked.goto(`${server}/demo/${address}`);
  await waitFor(linked, () => window.demo?.viewer.seeks.length > 0 && document.querySelector("#viewer-transcript li.highlight") !== null,
    15_000, "the linked moment");
  result.linked = { address, shown: await highlighted(linked) };
  await linked.close();
  // the transcript with its summary, as Markdown
  const downloads = mkdtempSync(path.join(OUT, "summary-downloads-"));
  const cdp = await browser.target().createCDPSession();
  await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: downloads, browserContextId: context.id });
  await click(page, "#viewer-download");
  const deadline = performance.now() + 15_000;
  while (readdirSync(downloads).filter((name) => !name.endsWith(".crdownload")).length < 1 && performance.now() < deadline) {
    await sleep(POLL_MS);
  }
  result.files = Object.fromEntries(readdirSync(downloads).map((name) => [name, readFileSync(path.join(downloads, name), "utf8")]));
  // search: a first page, then the next ones with the "more" button (segments and summaries' parts)
  result.search = { first: await searchFor(page, spec.search) };
  for (let more = 0; more < 20 && (await shownResults(page)).more; more += 1) {
    const pages = await page.evaluate(() => window.demo.search.pages);
    await click(page, "#search-more");
    await waitFor(page, (n) => window.demo.search.pages > n, 15_000, "the next page of results", pages);
    result.search.second = await shownResults(page);
  }
  // a segment of another session: opened at its segment
  const target = await page.evaluate((sid) => {
    const li = document.querySelector(`#search-results li[data-session="${sid}"][data-kind="segment"]`);
    li?.querySelector("button.result").click();
    return li ? { sessionId: li.dataset.session, segmentId: li.dataset.segment, startMs: Number(li.dataset.start) } : null;
  }, spec.openSession);
  if (target === null) throw new Error(`summary: no result of ${spec.openSession} to open`);
  await waitFor(page, (t) => window.demo.viewer.sessionId === t.sessionId && window.demo.viewer.seeks.at(-1)?.segmentId === t.segmentId &&
    document.querySelector("#viewer-transcript li.highlight") !== null && window.demo.viewer.summaries.some((s) => s.sessionId === t.sessionId),
  15_000, "the result opened", target);
  result.opened = { target, shown: await highlighted(page), summary: await shownSummary(page) };
  await sleep(300);  // the summary's paint
  await screenshot(page, "search", result);
  // a segment that the summary lists as an action item: found, said so, opened at the moment it was said
  result.summarySearch = await searchFor(page, spec.summarySearch);
  const item = await page.evaluate(() => {
    const li = document.querySelector('#search-results li[data-parts~="actionItem"]');
    li?.querySelector("button.result").click();
    return li ? { sessionId: li.dataset.session, startMs: Number(li.dataset.start), time: li.querySelector(".time").textContent } : null;
  });
  if (item === null) throw new Error(`summary: no action item among the results for ${spec.summarySearch}`);
  await waitFor(page, (t) => window.demo.viewer.sessionId === t.sessionId && window.demo.viewer.seeks.at(-1)?.atMs === t.startMs &&
    document.querySelector("#viewer-transcript li.highlight") !== null, 15_000, "the action item opened", item);
  result.summaryOpened = { item, shown: await highlighted(page) };
  await sleep(300);
  await screenshot(page, "search-summary", result);
  // queries the server refuses: said in words
  result.refused = {};
  for (const query of spec.badQueries) result.refused[query] = (await searchFor(page, query)).error;
  await page.setViewport(MOBILE);
  await searchFor(page, spec.search);
  await screenshot(page, "summary-mobile", result);
  result.mobileOverflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  result.dialogs = [...page.dialogs];
  await context.close();
}

/**
 * (j) A summary written by a model that answers in markup (--markup, a server whose summaries come from a fake model),
 * and a transcript with markup in it: all shown as text, nothing of it run; items without a time have no link.
 */
async function markupScenario(browser, server, result) {
  const spec = JSON.parse(opts["summary-spec"]);
  const page = await openPage(browser, server, "markup", { outbox: "markup" });
  await signIn(page);
  await openFromList(page, spec.markupSession);
  await waitFor(page, () => document.getElementById("summary").dataset.status === "ready", 15_000, "the summary ready");
  result.summary = await shownSummary(page);
  result.transcript = await page.evaluate(() => Array.from(document.querySelectorAll("#viewer-transcript li .text"), (el) => el.textContent));
  result.search = await searchFor(page, spec.markupSearch);
  await sleep(500);  // an <img onerror> would have fired by now
  result.xss = await page.evaluate(() => ({ value: window.__xss ?? null,
    images: document.querySelectorAll("img, svg, iframe").length,
    scripts: Array.from(document.scripts, (s) => `${s.type} ${s.src ? new URL(s.src).pathname : "inline"}`) }));
  await screenshot(page, "summary-markup", result);
  result.dialogs = [...page.dialogs];
}

const SCENARIOS = [
  ["record", "main", recordScenario],
  ["offline", "main", offlineScenario],
  ["reload", "main", reloadScenario],
  ["crash", "crash", crashScenario],
  ["overload", "overload", overloadScenario],
  ["restart", "main", restartScenario],
  ["loss", "loss", lossScenario],
  ["captions", "captions", captionsScenario],
  ["summary", "summary", summaryScenario],
  ["markup", "markup", markupScenario],
];

async function run(browser, name, server, fn) {
  const result = { name, server, screenshots: [], startedAt: performance.now() };
  try {
    await fn(browser, server, result);
  } catch (err) {
    result.failure = err.stack || String(err);
    log(`${name} FAILED: ${err.message}`);
  }
  result.seconds = Math.round((performance.now() - result.startedAt) / 1000);
  log(`${name}: done in ${result.seconds} s`);
  return result;
}

async function main() {
  const profile = mkdtempSync(path.join(tmpdir(), `scribeai-demo-${opts.browser}-`));
  const firefox = opts.browser === "firefox";
  const pulse = firefox ? await startPulse(mkdtempSync(path.join(tmpdir(), "scribeai-pulse-"))) : null;
  const browser = firefox ? await launchFirefox(pulse, profile) : await launch(path.resolve(opts.wav), profile);
  browser.pulse = pulse;
  try {
    const version = await browser.version();
    // Firefox has no CDP (offline mode, downloads): only the captions and loss scenarios run there
    const chosen = SCENARIOS.filter(([name, server]) => opts[server] && (!firefox || ["captions", "loss"].includes(name)));
    log(`${version}: ${chosen.map(([name]) => name).join(", ")}`);
    const results = await Promise.all(chosen.map(([name, server, fn]) => run(browser, name, opts[server], fn)));
    console.log(JSON.stringify({ chromium: version, browser: version, out: OUT,
      scenarios: Object.fromEntries(results.map((r) => [r.name, r])) }));
  } finally {
    await browser.close();
    pulse?.stop();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
