// @scribeai/recorder: the recorder and its pure parts.
export { Recorder, RECORDER_DEFAULTS } from "./recorder.js";
export { Outbox, isQuotaError } from "./outbox.js";
export { FlowControl, isRetryable, RETRYABLE_CODES } from "./flow.js";
export { resendPlan, nextToSend } from "./resend.js";
export { SegmentList } from "./segments.js";
export { LiveTranscript } from "./captions.js";
export { pickMimeType, chunkMimeType, sniffContainer, PREFERRED_MIME_TYPES } from "./mime.js";
