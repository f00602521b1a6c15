// Node `ws` client for the interop matrix: node client.js URL exchange|server-close
// Runs the script of interop_util.py against our server and prints one JSON
// report on stdout. Every wait is bounded; the whole run too.
"use strict";

const crypto = require("crypto");
const WebSocket = require("ws");

const STEP_MS = 20000;
const TOTAL_MS = 45000;
const MAX_SIZE = 16 * 1024 * 1024;
const BIG_SIZE = 4 * 1024 * 1024;
const TEXT = "hello, wörld ✓ — interop 🚀";
const CLIENT_REASON = "client says goodbye ✓";

const [url, mode] = process.argv.slice(2);

function fail(message) {
  process.stdout.write(JSON.stringify({ error: String(message) }) + "\n");
  process.exit(2);
}
setTimeout(() => fail("node client: whole run timed out"), TOTAL_MS).unref();

function binary() {
  const out = Buffer.alloc(256 * 4 + 2);
  for (let i = 0; i < 256 * 4; i++) out[i] = i % 256;
  out[1024] = 0x00;
  out[1025] = 0xff;
  return out;
}

function describe(data, isBinary) {
  return (isBinary ? "binary[" : "text[") + data.length + "]";
}

// "Await the next event" over a ws WebSocket, each wait bounded.
function open(target) {
  const ws = new WebSocket(target, { maxPayload: MAX_SIZE });
  const queue = [];
  const waiters = [];
  function push(event) {
    if (waiters.length) waiters.shift()(event);
    else queue.push(event);
  }
  ws.on("open", () => push({ type: "open" }));
  ws.on("message", (data, isBinary) => push({ type: "message", data, isBinary }));
  ws.on("pong", (data) => push({ type: "pong", data }));
  ws.on("ping", (data) => push({ type: "ping", data })); // ws answers it by itself
  ws.on("error", (err) => push({ type: "error", message: String(err) }));
  ws.on("close", (code, reason) => push({ type: "close", code, reason: reason.toString("utf8") }));
  function next(what) {
    if (queue.length) return Promise.resolve(queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out waiting for " + what)), STEP_MS);
      waiters.push((event) => {
        clearTimeout(timer);
        resolve(event);
      });
    });
  }
  return { ws, next };
}

async function expect(conn, type, what) {
  for (;;) {
    const event = await conn.next(what);
    if (event.type === "ping" && type !== "ping") continue;
    if (event.type !== type) throw new Error("waiting for " + what + ", got " + JSON.stringify(event));
    return event;
  }
}

async function exchange() {
  const report = {};
  const conn = open(url);
  await expect(conn, "open", "the open event");

  conn.ws.send(TEXT);
  let m = await expect(conn, "message", "the text echo");
  report.text = m.isBinary ? describe(m.data, true) : m.data.toString("utf8");

  const bin = binary();
  conn.ws.send(bin);
  m = await expect(conn, "message", "the binary echo");
  report.binary_ok = m.isBinary && Buffer.compare(m.data, bin) === 0;

  const big = crypto.randomBytes(BIG_SIZE);
  conn.ws.send(big);
  m = await expect(conn, "message", "the 4 MiB binary echo");
  report.big_binary_ok = m.isBinary && Buffer.compare(m.data, big) === 0;
  report.big_binary_got = describe(m.data, m.isBinary);
  report.big_binary_sha256 = crypto.createHash("sha256").update(big).digest("hex");

  const bigText = "aé✓😀".repeat(Math.floor(BIG_SIZE / 10)) + "😀";
  conn.ws.send(bigText);
  m = await expect(conn, "message", "the 4 MiB text echo");
  report.big_text_ok = !m.isBinary && m.data.toString("utf8") === bigText;
  report.big_text_got = describe(m.data, m.isBinary);

  conn.ws.ping(Buffer.from("client-ping"));
  m = await expect(conn, "pong", "the pong");
  report.pong = m.data.toString("utf8");

  conn.ws.send("cmd:ping");
  m = await expect(conn, "message", "the answer to cmd:ping");
  report.server_ping = m.data.toString("utf8");

  conn.ws.close(4000, CLIENT_REASON);
  m = await expect(conn, "close", "the close event");
  report.close = { code: m.code, reason: m.reason };
  return report;
}

async function serverClose() {
  const conn = open(url);
  await expect(conn, "open", "the open event");
  conn.ws.send("cmd:close");
  const m = await expect(conn, "close", "the close event");
  return { code: m.code, reason: m.reason };
}

const modes = { exchange, "server-close": serverClose };
if (!url || !modes[mode]) fail("usage: node client.js URL exchange|server-close");
modes[mode]().then(
  (report) => {
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(0);
  },
  (err) => fail(err && err.stack ? err.stack : err)
);
