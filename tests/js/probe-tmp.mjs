import { io } from "socket.io-client";
const ALICE = process.env.SCRIBEAI_TOKEN_ALICE;
const carriers = [
    ["bearer header", { extraHeaders: { Authorization: `Bearer ${ALICE}` } }],
    ["cookie", { withCredentials: true, extraHeaders: { Cookie: `scribeai_token=${ALICE}` } }],
    ["cookie nocred", { extraHeaders: { Cookie: `scribeai_token=${ALICE}` } }],
  ];
for (const [name, o] of carriers) for (const transports of [["websocket"], ["polling"]]) {
  const s = io(process.env.SCRIBEAI_URL, { ...o, transports, forceNew: true, reconnection: false });
  await new Promise((res) => { s.on("connect", () => { console.log(name, transports, "ok"); res(); }); s.on("connect_error", (e) => { console.log(name, transports, "err", e.message); res(); }); });
  s.disconnect();
}
