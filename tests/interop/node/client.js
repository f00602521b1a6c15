// Node `ws` client for the interop matrix:
//   node client.js URL exchange|serverClose|deflateExchange|deflateServerClose
// Runs one scenario of ../interop_client.js against our server and prints
// one JSON report on stdout. Every wait is bounded; the whole run too.
"use strict";

const path = require("path");
const WebSocket = require("ws");
const { eventQueue, SCENARIOS } = require(path.join(__dirname, "..", "interop_client.js"));

const TOTAL_MS = 45000;
const MAX_SIZE = 16 * 1024 * 1024;

const [url, name] = process.argv.slice(2);

function fail(message) {
  process.stdout.write(JSON.stringify({ error: String(message) }) + "\n");
  process.exit(2);
}
setTimeout(() => fail("node client: whole run timed out"), TOTAL_MS).unref();

// A ws WebSocket as the scenarios' connection (see interop_client.js).
function connect(target, deflate) {
  const options = { maxPayload: MAX_SIZE };
  // For the deflate scenarios, threshold 0 so that the short conversation
  // messages are compressed too (ws's default threshold is 1024 bytes); the
  // others keep ws's default offer, which our plain server declines.
  if (deflate) options.perMessageDeflate = { threshold: 0 };
  const ws = new WebSocket(target, options);
  const events = eventQueue();
  let extensions = null;
  ws.on("upgrade", (res) => {
    extensions = res.headers["sec-websocket-extensions"] || null;
  });
  ws.on("open", () => events.push({ type: "open" }));
  ws.on("message", (data, isBinary) => events.push({ type: "message", data: isBinary ? data : data.toString("utf8") }));
  ws.on("pong", (data) => events.push({ type: "pong", data: data.toString("utf8") }));
  ws.on("error", (err) => events.push({ type: "error", message: String(err) }));
  ws.on("close", (code, reason) => events.push({ type: "close", code, reason: reason.toString("utf8") }));
  return {
    next: events.next,
    send: (data) => ws.send(data),
    ping: (data) => ws.ping(Buffer.from(data)),
    close: (code, reason) => ws.close(code, reason),
    // The answer's Sec-WebSocket-Extensions, and ws's own idea of what was negotiated.
    view: () => ({ extensions, negotiated: ws.extensions }),
  };
}

const scenario = Object.prototype.hasOwnProperty.call(SCENARIOS, name || "") ? SCENARIOS[name] : null;
if (!url || !scenario) fail("usage: node client.js URL " + Object.keys(SCENARIOS).join("|"));
scenario.run(connect(url, scenario.deflate)).then(
  (report) => {
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(0);
  },
  (err) => fail(err && err.stack ? err.stack : err)
);
