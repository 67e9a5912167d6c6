import { io } from "socket.io-client";
const s = io("http://127.0.0.1:45998", { withCredentials: true, extraHeaders: { Cookie: "scribeai_token=" + process.env.SCRIBEAI_TOKEN_ALICE }, transports: ["polling"], forceNew: true, reconnection: false });
await new Promise((res) => { s.on("connect", () => { console.log("ok"); res(); }); s.on("connect_error", (e) => { console.log("err", e.message); res(); }); });
s.disconnect();
