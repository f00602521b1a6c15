// Browser side of the permessage-deflate interop tests (test_interop_deflate.py);
// served after deflate_payloads.js by our tornado app and driven by Playwright
// through window.deflateInterop. Every wait is bounded.
"use strict";

(function () {
  const P = window.deflatePayloads;
  const STEP_MS = 20000;

  function randomBytes(size) {
    const out = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function describe(data) {
    if (typeof data === "string") return "text[" + data.length + "]";
    return "binary[" + data.byteLength + "]";
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

  function sameBytes(data, bytes) {
    return data instanceof ArrayBuffer && equalBytes(new Uint8Array(data), bytes);
  }

  async function exchange(url) {
    const report = {};
    const conn = open(url);
    await expect(conn, "open", "the open event");
    // WebSocket.extensions: the Sec-WebSocket-Extensions the server answered.
    report.extensions = conn.ws.extensions;

    conn.ws.send(P.TEXT);
    let data = (await expect(conn, "message", "the text echo")).data;
    report.text_ok = data === P.TEXT;
    report.text_got = describe(data);

    const bin = P.binary();
    conn.ws.send(bin);
    data = (await expect(conn, "message", "the binary echo")).data;
    report.binary_ok = sameBytes(data, bin);
    report.binary_got = describe(data);

    const json = P.bigJson();
    conn.ws.send(json);
    data = (await expect(conn, "message", "the 1 MiB JSON echo")).data;
    report.big_json_ok = data === json;
    report.big_json_got = describe(data);

    const random = randomBytes(P.BIG_SIZE);
    conn.ws.send(random);
    data = (await expect(conn, "message", "the 1 MiB random echo")).data;
    report.big_random_ok = sameBytes(data, random);
    report.big_random_got = describe(data);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", random));
    report.big_random_sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");

    const probe = P.windowProbe();
    conn.ws.send(probe);
    data = (await expect(conn, "message", "the window probe echo")).data;
    report.window_probe_ok = sameBytes(data, probe);
    report.window_probe_got = describe(data);

    // The conversation: all messages sent first, then every echo, in order.
    const sent = [];
    for (let i = 0; i < P.CONVERSATION; i++) {
      sent.push(P.chat(i, "client"));
      conn.ws.send(sent[i]);
    }
    report.conversation_ok = true;
    report.conversation_detail = "";
    for (let i = 0; i < P.CONVERSATION; i++) {
      data = (await expect(conn, "message", "conversation echo " + i)).data;
      if (report.conversation_ok && data !== sent[i]) {
        report.conversation_ok = false;
        report.conversation_detail =
          "echo " + i + " differs: " + (typeof data === "string" ? data.slice(0, 200) : describe(data));
      }
    }

    conn.ws.close(P.CLOSE_CODE, P.CLIENT_REASON);
    const closed = await expect(conn, "close", "the close event");
    report.close = { code: closed.code, reason: closed.reason, wasClean: closed.wasClean };
    return report;
  }

  async function serverClose(url) {
    const report = {};
    const conn = open(url);
    await expect(conn, "open", "the open event");
    report.extensions = conn.ws.extensions;
    const first = P.chat(0, "client");
    conn.ws.send(first);
    report.echo_ok = (await expect(conn, "message", "the echo before cmd:close")).data === first;
    conn.ws.send(P.CMD_CLOSE);
    const closed = await expect(conn, "close", "the close event");
    report.close = { code: closed.code, reason: closed.reason, wasClean: closed.wasClean };
    return report;
  }

  window.deflateInterop = { exchange, serverClose };
  document.title = "deflate interop ready";
})();
