// Types of @scribeai/recorder (the library itself is plain ES modules, no build step).

export type RecorderState = "idle" | "connecting" | "recording" | "paused" | "stopping" | "stopped" | "error";

/** A transcriptSegment as the server sends it. */
export interface TranscriptSegment {
  id: string;
  sessionId: string;
  seq: number;
  fromSeq: number;
  toSeq: number;
  startMs: number;
  endMs: number;
  text: string;
  speaker?: string | null;
  confidence?: number | null;
  isFinal?: boolean;
}

/** A live caption (transcriptInterim): the current hypothesis for a window of audio that is still open. */
export interface TranscriptInterim {
  sessionId: string;
  startMs: number;
  endMs: number;
  fromSeq: number;
  toSeq: number;
  text: string;
  /** The first `stable` characters of `text` are confirmed: never taken back until the final segment replaces them. */
  stable: number;
  /** Grows with every update of the same window (same startMs). */
  revision: number;
}

/** A caption as it should be shown: `confirmed` plain (it only grows), `tentative` greyed (it may still change). */
export interface Caption {
  startMs: number;
  endMs: number;
  fromSeq: number | null;
  toSeq: number | null;
  confirmed: string;
  tentative: string;
  revision: number;
}

export type TranscriptLine =
  | { kind: "final"; key: string; startMs: number; text: string; segment: TranscriptSegment }
  | { kind: "caption"; key: string; startMs: number; confirmed: string; tentative: string; revision: number };

/** The server's session-joined / session-stopped reply. */
export interface SessionGapReply {
  sessionId: string;
  status: string;
  maxSeq: number;
  totalChunks: number;
  missing: number[];
  stoppedAt?: string;
}

export interface FlowOptions {
  /** While canAccept is false and no `backpressure` event says otherwise, send one probe chunk this often (5000). */
  probeMs?: number;
  /** First wait after a failure without retryAfterMs (timeouts, internal), doubled up to maxRetryMs (1000). */
  retryMs?: number;
  maxRetryMs?: number;
  /** How long a slowDown keeps one chunk in flight (10000), and the gap between sends meanwhile (1000). */
  slowDownMs?: number;
  slowDownGapMs?: number;
}

export interface RecorderOptions {
  /** The server's origin, e.g. location.origin. */
  url: string;
  /** A JWT, or null/undefined when the server runs SCRIBEAI_AUTH=none. */
  token?: string | null;
  /** The session to record into; crypto.randomUUID() when absent. */
  sessionId?: string;
  /** MediaRecorder timeslice: one chunk per slice (1000). A reload or a closed tab loses at most about this much. */
  timesliceMs?: number;
  /** A preferred container; falls back to webm/opus, webm, ogg/opus, mp4, then the browser's default. */
  mimeType?: string;
  /** The IndexedDB database of the outbox ("scribeai-recorder"). */
  dbName?: string;
  /** Merged into io() options (e.g. { transports: ["websocket"] }). */
  socketOptions?: Record<string, unknown>;
  /** An unanswered chunk counts as failed and is resent after this (20000). */
  ackTimeoutMs?: number;
  /** stop() waits this long for the outbox to empty (60000). */
  stopTimeoutMs?: number;
  /** Retry a refused-for-now joinSession after this (2000). */
  joinRetryMs?: number;
  /** Reconnect this long after the server closed the connection itself (1000). */
  reconnectMs?: number;
  /** Storage counts as full when less than a chunk plus this many bytes is left of the quota (1 MiB). */
  storageReserveBytes?: number;
  /** Send each chunk's sha256 for the server to verify (true; needs crypto.subtle, i.e. a secure context). */
  checksum?: boolean;
  /** requestData() when the page goes or hides (beforeunload, pagehide, visibilitychange), so a reload or a closed
   * tab keeps the audio so far if the browser still delivers it; the time of the cut is noted in localStorage (true). */
  flushOnHide?: boolean;
  /** Ask for live captions (joinSession { interim: true }): `interim` events before each final segment (false). */
  interim?: boolean;
  /** The session's title, sent once with start-session when recording starts. */
  title?: string;
  flow?: FlowOptions;
  // Injection points, for tests or unusual hosts:
  indexedDB?: IDBFactory;
  IDBKeyRange?: typeof IDBKeyRange;
  MediaRecorder?: typeof MediaRecorder;
  getUserMedia?: (constraints: MediaStreamConstraints) => Promise<MediaStream>;
  storage?: { estimate(): Promise<{ usage?: number; quota?: number }> };
  /** Where the cut marker lives (globalThis.localStorage; null: nowhere, the next page cannot say what a cut lost). */
  localStorage?: Pick<Storage, "getItem" | "setItem" | "removeItem" | "key" | "length"> | null;
  /** The page's window (beforeunload, pagehide, pageshow) and document (visibilitychange); globalThis's by default. */
  window?: EventTarget | null;
  document?: (EventTarget & { visibilityState: string }) | null;
  /** Replaces socket.io-client's io(). */
  io?: (url: string, options: Record<string, unknown>) => unknown;
}

export interface QueueDetail { chunks: number; bytes: number }
export interface StateDetail { state: RecorderState }
export interface ConnectionDetail { connected: boolean; transport: "websocket" | "polling" | null }
export interface AckDetail {
  sequence: number;
  status: "stored" | "duplicate";
  /** The ack's credits; a duplicate carries none: the credits in force. */
  credits: number;
  canAccept: boolean;
  chunkId: string;
}
export interface BackpressureDetail {
  level: "ok" | "buffering" | "overloaded" | "slowDown";
  canAccept: boolean;
  overloaded: boolean;
  retryAfterMs: number | null;
  slowDown: boolean;
}
export interface SegmentDetail {
  segment: TranscriptSegment;
  /** The captions this final segment replaces (those that start before its end): show it in their place. */
  replaced: Caption[];
}
export interface InterimDetail { interim: TranscriptInterim; caption: Caption }
export interface ErrorDetail {
  /** A server code (invalid, too_large, forbidden, conflict, not_found, unauthorized, ...) or a local one:
   * storage_full, storage, chunks_lost, stop_incomplete, microphone_denied, start_failed, recorder, timeout, protocol.
   * too_large with a `sequence` is also a chunk over the server's message limit: not sent, or the connection closed over it. */
  code: string;
  message: string;
  sequence?: number;
}
export interface RetryDetail { sequence: number; code: string; message: string; retryAfterMs: number | null }
export interface ResendPlan { resend: number[]; lost: number[]; alreadyStored: number[]; serverLacks: number[]; maxSeq: number }
export interface JoinedDetail { reply: SessionGapReply; plan: ResendPlan }

export interface RecorderEventMap {
  state: CustomEvent<StateDetail>;
  connection: CustomEvent<ConnectionDetail>;
  queue: CustomEvent<QueueDetail>;
  ack: CustomEvent<AckDetail>;
  backpressure: CustomEvent<BackpressureDetail>;
  segment: CustomEvent<SegmentDetail>;
  /** A live caption changed (only with the `interim` option); a repeat or an outdated one gives no event. */
  interim: CustomEvent<InterimDetail>;
  error: CustomEvent<ErrorDetail>;
  /** A chunk failed for now (overloaded, unavailable, timeout, disconnected, internal) and stays queued. */
  retry: CustomEvent<RetryDetail>;
  /** stopSession answered (by stop(), or later for a stop that could not reach the server). */
  sessionStopped: CustomEvent<{ reply: SessionGapReply }>;
  /** joinSession answered (each connect). */
  joined: CustomEvent<JoinedDetail>;
  /** session-completed: every chunk of the stopped session is transcribed. */
  completed: CustomEvent<{ sessionId: string; dropped: Caption[] }>;
}

/** A recording that an earlier page load left cut (a reload, a closed tab, a crash), and what that lost. */
export interface Interruption {
  /** When that page's MediaRecorder started (epoch ms). */
  startedAt: number;
  /** When the recording was cut (pagehide, or the pause before it), or null when unknown. */
  cutAt: number | null;
  /** "pagehide": a reload, a closed tab, a navigation; "paused": paused, then the page went; "hidden": hidden, then
   * killed at some later time; null: no notice (a crash). */
  how: "pagehide" | "paused" | "hidden" | null;
  /** The end of the newest audio the outbox stored for the session (epoch ms), or null. */
  storedUntil: number | null;
  /** Audio recorded but not stored: cutAt less storedUntil (at least 0); null when cutAt is unknown. */
  lostMs: number | null;
}

export interface PendingSession {
  sessionId: string;
  chunks: number;
  bytes: number;
  rejected: number;
  nextSeq: number;
  updatedAt: number | null;
  /** stop() could not reach the server: Recorder.resume() sends stopSession once the outbox is empty. */
  stopPending: boolean;
  /** The recording was cut by a reload or a closed tab (until a Recorder starts or stops that session again). */
  interrupted: Interruption | null;
}

export interface StoredChunk {
  sessionId: string;
  sequence: number;
  bytes: ArrayBuffer;
  size: number;
  mimeType: string;
  timestamp: number;
  /** Wall time the chunk covers (kept in the outbox, not sent: the server measures the audio). */
  durationMs?: number;
  createdAt: number;
  checksum?: string;
}

export interface RejectedChunk extends StoredChunk {
  error: { code: string; message: string };
  rejectedAt: number;
}

export interface StopResult {
  /** The outbox emptied before the timeout. */
  drained: boolean;
  /** session-stopped, or null when the server could not be told. */
  reply: SessionGapReply | null;
  queue: QueueDetail;
}

export interface DbOptions { dbName?: string; indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange }

export declare const RECORDER_DEFAULTS: Readonly<Required<Pick<RecorderOptions,
  "timesliceMs" | "dbName" | "ackTimeoutMs" | "stopTimeoutMs" | "joinRetryMs" | "reconnectMs" | "storageReserveBytes" |
  "checksum" | "flushOnHide">>>;

export declare class Recorder extends EventTarget {
  constructor(options: RecorderOptions);
  /** Sessions with chunks waiting, a stop not yet sent, or a recording cut by a reload, left by earlier page loads
   * or other recorders on this origin. */
  static pending(options?: DbOptions & { localStorage?: RecorderOptions["localStorage"] }): Promise<PendingSession[]>;
  /** A session's chunks the server refused for good, with their bytes and errors. */
  static rejected(options: DbOptions & { sessionId: string }): Promise<RejectedChunk[]>;
  /** Reconnect and resend that session's outbox now; start() records more into the same session. */
  static resume(options: RecorderOptions & { sessionId: string }): Recorder;

  readonly sessionId: string;
  readonly state: RecorderState;
  /** The container MediaRecorder writes (after start()). */
  readonly mimeType: string | null;
  readonly connected: boolean;
  readonly transport: "websocket" | "polling" | null;
  /** The last session-joined reply. */
  readonly lastJoin: SessionGapReply | null;
  /** session-completed arrived. */
  readonly completed: boolean;
  /** The transcript: de-duplicated segments sorted by seq. */
  readonly segments: readonly TranscriptSegment[];
  /** Finals and live captions merged as a viewer sees them. */
  readonly live: LiveTranscript;
  /** What waits in this session's outbox (chunks in flight included). */
  readonly queue: QueueDetail;
  /** The sequence the next chunk gets (persisted per session: continues after a reload). */
  readonly nextSequence: number;
  readonly backpressure: BackpressureDetail;
  /** The socket.io-client Socket (null before the first connect and after close()), for diagnostics and tests. */
  readonly socket: unknown;

  /** getUserMedia({audio: true}) when no stream is given; connects; starts MediaRecorder. */
  start(mediaStream?: MediaStream): Promise<void>;
  pause(): void;
  resume(): void;
  /** Flush the last blob, wait for the outbox to empty (or timeoutMs), then stopSession {sessionId, lastSeq}. */
  stop(options?: { timeoutMs?: number }): Promise<StopResult>;
  /** Wait until this session's outbox is empty: true, or false after timeoutMs. */
  flush(options?: { timeoutMs?: number }): Promise<boolean>;
  /** Disconnect without stopping the session (a recording in progress is flushed to the outbox first); takes off
   * only its own listeners (the page's other sockets may share its socket.io-client Manager). */
  close(): Promise<void>;
  /** Use a new token (after an `unauthorized` error) and reconnect. */
  setToken(token: string | null): void;

  addEventListener<K extends keyof RecorderEventMap>(type: K, listener: (event: RecorderEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof RecorderEventMap>(type: K, listener: (event: RecorderEventMap[K]) => void,
    options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export declare class Outbox {
  static open(dbName?: string, options?: { indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange }): Promise<Outbox>;
  readonly name: string;
  append(sessionId: string, fields: { bytes: ArrayBuffer; mimeType?: string; timestamp?: number; durationMs?: number; checksum?: string },
    minSeq?: number): Promise<StoredChunk>;
  put(record: Omit<StoredChunk, "size" | "createdAt"> & Partial<StoredChunk>): Promise<StoredChunk>;
  meta(sessionId: string): Promise<{ sessionId: string; nextSeq: number; createdAt: number; updatedAt: number; stoppedAt?: number;
    storedUntil?: number } | null>;
  updateMeta(sessionId: string, patch: Record<string, unknown>): Promise<unknown>;
  get(sessionId: string, sequence: number): Promise<StoredChunk | null>;
  delete(sessionId: string, sequence: number): Promise<void>;
  list(sessionId: string): Promise<{ sequence: number; size: number }[]>;
  reject(sessionId: string, sequence: number, error: { code: string; message: string }): Promise<StoredChunk | null>;
  rejected(sessionId: string): Promise<RejectedChunk[]>;
  clearRejected(sessionId: string): Promise<void>;
  sessions(): Promise<PendingSession[]>;
  close(): void;
}
export declare function isQuotaError(err: unknown): boolean;

export declare const RETRYABLE_CODES: ReadonlySet<string>;
export declare function isRetryable(code: string): boolean;
export declare class FlowControl {
  constructor(options?: FlowOptions);
  credits: number;
  canAccept: boolean;
  inFlight: number;
  holdUntil: number;
  overloaded: boolean;
  window(now: number): number;
  canSend(now: number): boolean;
  wakeAt(now: number): number;
  sent(now: number): void;
  acked(ack: { credits?: number; canAccept?: boolean }, now: number): void;
  failed(error: { code: string; retryAfterMs?: number }, now: number): void;
  backpressure(body: { canAccept?: boolean; state?: string; retryAfterMs?: number }, now: number): void;
  slowDown(now: number): void;
  reset(): void;
  snapshot(now: number): BackpressureDetail;
}

export declare function resendPlan(outboxSequences: Iterable<number>, joined?: Partial<SessionGapReply>, nextSeq?: number): ResendPlan;
export declare function nextToSend(pending: Iterable<number>, inFlight?: { has(seq: number): boolean },
  skip?: { has(seq: number): boolean }): number | null;

export declare class SegmentList {
  readonly items: TranscriptSegment[];
  readonly lastSeq: number;
  readonly length: number;
  add(segment: unknown): boolean;
  text(): string;
}

/** Final segments and live captions merged: a final replaces every caption that starts before its end. */
export declare class LiveTranscript {
  readonly segments: SegmentList;
  /** The highest endMs of a final segment: a caption that starts before it is dropped. */
  readonly finalUntilMs: number;
  /** The captions it replaced, or null for a duplicate or a malformed segment. */
  addSegment(segment: unknown): Caption[] | null;
  /** The caption as shown now, or null when nothing changed (repeat, older revision, covered by a final, malformed). */
  addInterim(interim: unknown): Caption | null;
  /** Drop every caption (the session is completely transcribed: none will be replaced); returns them. */
  dropCaptions(): Caption[];
  /** The open windows' captions in recording order. */
  readonly captions: Caption[];
  /** Finals and captions in recording order, each with a key that stays the same across updates. */
  lines(): TranscriptLine[];
  text(): string;
}

export declare const PREFERRED_MIME_TYPES: readonly string[];
export declare function pickMimeType(isTypeSupported: ((type: string) => boolean) | undefined, preference?: string): string;
export declare function chunkMimeType(blobType: string | undefined, recorderType: string | null | undefined,
  sniffedType?: string | null): string;
/** "audio/ogg", "audio/webm" or "audio/mp4" from a blob's first bytes (OggS, the EBML magic, an ftyp box), else null. */
export declare function sniffContainer(head: Uint8Array | ArrayBuffer): string | null;
