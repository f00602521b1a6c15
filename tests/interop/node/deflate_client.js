// Node `ws` client with permessage-deflate, for test_interop_deflate.py:
//   node deflate_client.js URL exchange|server-close
// Runs the deflate script against our server and prints one JSON report on
// stdout. Every wait is bounded; the whole run too.
"use strict";

const crypto = require("crypto");
const path = require("path");
const WebSocket = require("ws");
const P = require(path.join(__dirname, "..", "deflate_payloads.js"));

const STEP_MS = 20000;
const TOTAL_MS = 45000;
const MAX_SIZE = 16 * 1024 * 1024;

const [url, mode] = process.argv.slice(2);

function fail(message) {
  process.stdout.write(JSON.stringify({ error: String(message) }) + "\n");
  process.exit(2);
}
setTimeout(() => fail("node deflate client: whole run timed out"), TOTAL_MS).unref();

function describe(data, isBinary) {
  return (isBinary ? "binary[" : "text[") + data.length + "]";
}

// "Await the next event" over a ws WebSocket, each wait bounded.
function open(target) {
  // perMessageDeflate on; threshold 0 so that the short conversation
  // messages are compressed too (ws's default threshold is 1024 bytes).
  const ws = new WebSocket(target, { maxPayload: MAX_SIZE, perMessageDeflate: { threshold: 0 } });
  const queue = [];
  const waiters = [];
  const state = { extensions: null };
  function push(event) {
    if (waiters.length) waiters.shift()(event);
    else queue.push(event);
  }
  ws.on("upgrade", (res) => {
    state.extensions = res.headers["sec-websocket-extensions"] || null;
  });
  ws.on("open", () => push({ type: "open" }));
  ws.on("message", (data, isBinary) => push({ type: "message", data, isBinary }));
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
  return { ws, next, state };
}

async function expect(conn, type, what) {
  const event = await conn.next(what);
  if (event.type !== type) throw new Error("waiting for " + what + ", got " + JSON.stringify(event));
  return event;
}

function sameText(m, text) {
  return !m.isBinary && m.data.toString("utf8") === text;
}

function sameBytes(m, bytes) {
  return m.isBinary && Buffer.compare(m.data, Buffer.from(bytes)) === 0;
}

async function exchange() {
  const report = {};
  const conn = open(url);
  await expect(conn, "open", "the open event");
  report.extensions = conn.state.extensions;
  report.negotiated = conn.ws.extensions;

  conn.ws.send(P.TEXT);
  let m = await expect(conn, "message", "the text echo");
  report.text_ok = sameText(m, P.TEXT);
  report.text_got = describe(m.data, m.isBinary);

  const bin = P.binary();
  conn.ws.send(bin);
  m = await expect(conn, "message", "the binary echo");
  report.binary_ok = sameBytes(m, bin);
  report.binary_got = describe(m.data, m.isBinary);

  const json = P.bigJson();
  conn.ws.send(json);
  m = await expect(conn, "message", "the 1 MiB JSON echo");
  report.big_json_ok = sameText(m, json);
  report.big_json_got = describe(m.data, m.isBinary);

  const random = crypto.randomBytes(P.BIG_SIZE);
  conn.ws.send(random);
  m = await expect(conn, "message", "the 1 MiB random echo");
  report.big_random_ok = sameBytes(m, random);
  report.big_random_got = describe(m.data, m.isBinary);
  report.big_random_sha256 = crypto.createHash("sha256").update(random).digest("hex");

  const probe = P.windowProbe();
  conn.ws.send(probe);
  m = await expect(conn, "message", "the window probe echo");
  report.window_probe_ok = sameBytes(m, probe);
  report.window_probe_got = describe(m.data, m.isBinary);

  // The conversation: all messages sent first, then every echo, in order.
  const sent = [];
  for (let i = 0; i < P.CONVERSATION; i++) {
    sent.push(P.chat(i, "client"));
    conn.ws.send(sent[i]);
  }
  report.conversation_ok = true;
  report.conversation_detail = "";
  for (let i = 0; i < P.CONVERSATION; i++) {
    m = await expect(conn, "message", "conversation echo " + i);
    if (report.conversation_ok && !sameText(m, sent[i])) {
      report.conversation_ok = false;
      report.conversation_detail =
        "echo " + i + " differs: " + (m.isBinary ? describe(m.data, true) : m.data.toString("utf8").slice(0, 200));
    }
  }

  conn.ws.close(P.CLOSE_CODE, P.CLIENT_REASON);
  m = await expect(conn, "close", "the close event");
  report.close = { code: m.code, reason: m.reason };
  return report;
}

async function serverClose() {
  const report = {};
  const conn = open(url);
  await expect(conn, "open", "the open event");
  report.extensions = conn.state.extensions;
  report.negotiated = conn.ws.extensions;
  const first = P.chat(0, "client");
  conn.ws.send(first);
  const m = await expect(conn, "message", "the echo before cmd:close");
  report.echo_ok = sameText(m, first);
  conn.ws.send(P.CMD_CLOSE);
  const closed = await expect(conn, "close", "the close event");
  report.close = { code: closed.code, reason: closed.reason };
  return report;
}

const modes = { exchange, "server-close": serverClose };
if (!url || !modes[mode]) fail("usage: node deflate_client.js URL exchange|server-close");
modes[mode]().then(
  (report) => {
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(0);
  },
  (err) => fail(err && err.stack ? err.stack : err)
);
