// Node `ws` server for the interop matrix: node server.js [deflate]
// Listens on 127.0.0.1 on a free port and prints JSON lines on stdout:
// {"event":"listening","port":N} first, then "connection" (with the offered
// and the accepted Sec-WebSocket-Extensions), "ping", "pong", "close" and
// "error" events as they happen. It echoes messages and obeys cmd:ping /
// cmd:close (see interop_util.py). With "deflate" it turns permessage-deflate
// on. It exits when stdin closes, or after a bounded time.
"use strict";

const { WebSocketServer } = require("ws");

const MAX_SIZE = 16 * 1024 * 1024;
const LIFETIME_MS = 110000;
const SERVER_REASON = "server says goodbye ✓";

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

const options = { host: "127.0.0.1", port: 0, maxPayload: MAX_SIZE };
// threshold 0 so that the short conversation messages are compressed too
// (ws's default threshold is 1024 bytes).
if (process.argv[2] === "deflate") options.perMessageDeflate = { threshold: 0 };
const wss = new WebSocketServer(options);

wss.on("listening", () => emit({ event: "listening", port: wss.address().port }));
wss.on("error", (err) => {
  emit({ event: "error", message: String(err) });
  process.exit(2);
});

// The 101 response's headers, just before they are written.
wss.on("headers", (headers, req) => {
  const line = headers.find((h) => h.toLowerCase().startsWith("sec-websocket-extensions:"));
  req.acceptedExtensions = line ? line.slice(line.indexOf(":") + 1).trim() : null;
});

wss.on("connection", (ws, req) => {
  emit({
    event: "connection",
    offered: req.headers["sec-websocket-extensions"] || null,
    accepted: req.acceptedExtensions || null,
    negotiated: ws.extensions,
  });
  let waitingPong = false;
  ws.on("message", (data, isBinary) => {
    const text = isBinary ? null : data.toString("utf8");
    if (text === "cmd:ping") {
      waitingPong = true;
      ws.ping(Buffer.from("server-ping"));
    } else if (text === "cmd:close") {
      ws.close(4000, SERVER_REASON);
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on("ping", (data) => emit({ event: "ping", data: data.toString("utf8") }));
  ws.on("pong", (data) => {
    const payload = data.toString("utf8");
    emit({ event: "pong", data: payload });
    if (waitingPong && payload === "server-ping") {
      waitingPong = false;
      ws.send("pong:server-ping");
    }
  });
  ws.on("error", (err) => emit({ event: "error", message: String(err) }));
  ws.on("close", (code, reason) => emit({ event: "close", code, reason: reason.toString("utf8") }));
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
setTimeout(() => process.exit(3), LIFETIME_MS).unref();
