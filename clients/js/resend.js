// What to send after a (re)join (pure): the outbox decides, the server's joinSession answer explains.

function sortedUnique(sequences) {
  return [...new Set(sequences)].sort((a, b) => a - b);
}

/**
 * The resend plan after `session-joined { maxSeq, missing }`.
 * Everything still in the outbox is resent, in sequence order: a chunk the server already holds is
 * answered `duplicate` (then deleted here), so a lost ack never loses audio.
 * `lost` are sequences the server lacks that this outbox no longer holds (below `nextSeq`, so this
 * device made them): only a report, nothing can bring them back from here.
 * `alreadyStored` are outbox sequences the server reports stored (not in `missing`, at most `maxSeq`):
 * resent anyway, their duplicate acks empty the outbox.
 */
export function resendPlan(outboxSequences, joined = {}, nextSeq = 0) {
  const resend = sortedUnique(outboxSequences);
  const held = new Set(resend);
  const maxSeq = Number.isInteger(joined.maxSeq) ? joined.maxSeq : -1;
  const missing = new Set(Array.isArray(joined.missing) ? joined.missing : []);
  const lost = sortedUnique([...missing].filter((seq) => !held.has(seq) && seq < nextSeq));
  const alreadyStored = resend.filter((seq) => seq <= maxSeq && !missing.has(seq));
  const serverLacks = resend.filter((seq) => seq > maxSeq || missing.has(seq));
  return { resend, lost, alreadyStored, serverLacks, maxSeq };
}

/** The next sequence to send: the lowest in `pending` that is not in flight and not set aside; null when none. */
export function nextToSend(pending, inFlight = new Set(), skip = new Set()) {
  let best = null;
  for (const seq of pending) {
    if (inFlight.has(seq) || skip.has(seq)) continue;
    if (best === null || seq < best) best = seq;
  }
  return best;
}
