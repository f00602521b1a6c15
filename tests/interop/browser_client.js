// Browser side of the interop script (see interop_util.py); loaded by the page
// our tornado app serves, driven by Playwright through window.interop.
"use strict";

(function () {
  const STEP_MS = 20000;
  const TEXT = "hello, wörld ✓ — interop 🚀";
  const CLIENT_REASON = "client says goodbye ✓";
  const BIG_SIZE = 4 * 1024 * 1024;

  function binary() {
    const out = new Uint8Array(256 * 4 + 2);
    for (let i = 0; i < 256 * 4; i++) out[i] = i % 256;
    out[1024] = 0x00;
    out[1025] = 0xff;
    return out;
  }

  function bigBinary() {
    const out = new Uint8Array(BIG_SIZE);
    for (let i = 0; i < BIG_SIZE; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
    return out;
  }

  function bigText() {
    return "aé✓😀".repeat(Math.floor(BIG_SIZE / 10)) + "😀";
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  // Wraps a WebSocket into "await the next event" calls, each bounded.
  function open(url) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const queue = [];
    const waiters = [];
    function push(event) {
      if (waiters.length) waiters.shift()(event);
      else queue.push(event);
    }
    ws.onopen = () => push({ type: "open" });
    ws.onmessage = (e) => push({ type: "message", data: e.data });
    ws.onerror = () => push({ type: "error" });
    ws.onclose = (e) => push({ type: "close", code: e.code, reason: e.reason, wasClean: e.wasClean });
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
    const event = await conn.next(what);
    if (event.type !== type) throw new Error("waiting for " + what + ", got " + JSON.stringify(event));
    return event;
  }

  function describe(data) {
    if (typeof data === "string") return "text[" + data.length + "]";
    return "binary[" + data.byteLength + "]";
  }

  async function exchange(url) {
    const report = {};
    const conn = open(url);
    await expect(conn, "open", "the open event");

    conn.ws.send(TEXT);
    const text = (await expect(conn, "message", "the text echo")).data;
    report.text = typeof text === "string" ? text : describe(text);

    const bin = binary();
    conn.ws.send(bin);
    const binEcho = (await expect(conn, "message", "the binary echo")).data;
    report.binary_ok = binEcho instanceof ArrayBuffer && equalBytes(new Uint8Array(binEcho), bin);

    const big = bigBinary();
    conn.ws.send(big);
    const bigEcho = (await expect(conn, "message", "the 4 MiB binary echo")).data;
    report.big_binary_ok = bigEcho instanceof ArrayBuffer && equalBytes(new Uint8Array(bigEcho), big);
    report.big_binary_got = describe(bigEcho);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", big));
    report.big_binary_sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");

    const bigStr = bigText();
    conn.ws.send(bigStr);
    const bigStrEcho = (await expect(conn, "message", "the 4 MiB text echo")).data;
    report.big_text_ok = bigStrEcho === bigStr;
    report.big_text_got = describe(bigStrEcho);

    // A page cannot send pings; the browser answers the server's ping by itself.
    conn.ws.send("cmd:ping");
    report.server_ping = (await expect(conn, "message", "the answer to cmd:ping")).data;

    conn.ws.close(4000, CLIENT_REASON);
    const closed = await expect(conn, "close", "the close event");
    report.close = { code: closed.code, reason: closed.reason, wasClean: closed.wasClean };
    return report;
  }

  async function serverClose(url) {
    const conn = open(url);
    await expect(conn, "open", "the open event");
    conn.ws.send("cmd:close");
    const closed = await expect(conn, "close", "the close event");
    return { code: closed.code, reason: closed.reason, wasClean: closed.wasClean };
  }

  window.interop = { exchange, serverClose };
  document.title = "interop ready";
})();
