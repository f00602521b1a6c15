// The client side of the interop scenarios, written once for both
// JavaScript clients: the browser page (browser_client.js, served after
// payloads.js and this file) and the Node ws client (node/client.js, through
// require). Each scenario drives a connection that the caller has opened;
// the connection is a small adapter over the runtime's WebSocket:
//
//   next(what)          the next event, waiting at most STEP_MS (see eventQueue)
//   send(data)          a string is sent as text, a Uint8Array as binary
//   close(code, reason)
//   ping(data)          optional: a page's WebSocket cannot send pings
//   view()              what the client knows of the negotiated extensions
//
// and its events are {type: "open"}, {type: "message", data} (a string for
// text, a Uint8Array for binary), {type: "pong", data} (a string),
// {type: "error", ...} and {type: "close", code, reason, wasClean?}.
//
// Every scenario resolves to a JSON-able report, checked by the Python test:
//   exchange, serverClose: test_interop_our_server.py (script: interop_util.py)
//   deflateExchange, deflateServerClose: test_interop_deflate.py
"use strict";

(function (root) {
  const P = typeof module !== "undefined" && module.exports ? require("./payloads.js") : root.interopPayloads;
  // The Web Crypto API: the browser's, or Node's (global from Node 19 on).
  const webCrypto = root.crypto && root.crypto.subtle ? root.crypto : require("crypto").webcrypto;
  const STEP_MS = 20000;

  // Events in arrival order, turned into "await the next event" calls, each bounded.
  function eventQueue() {
    const queue = [];
    const waiters = [];
    function push(event) {
      if (waiters.length) waiters.shift()(event);
      else queue.push(event);
    }
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
    return { push, next };
  }

  async function expect(conn, type, what) {
    const event = await conn.next(what);
    if (event.type !== type) throw new Error("waiting for " + what + ", got " + JSON.stringify(event));
    return event;
  }

  async function message(conn, what) {
    return (await expect(conn, "message", what)).data;
  }

  function describe(data) {
    if (typeof data === "string") return "text[" + data.length + "]";
    return "binary[" + data.byteLength + "]";
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  // Did ``data`` come back as ``sent`` was sent: the same type, the same content?
  function same(data, sent) {
    if (typeof sent === "string") return data === sent;
    return data instanceof Uint8Array && equalBytes(data, sent);
  }

  function randomBytes(size) {
    const out = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) webCrypto.getRandomValues(out.subarray(i, i + 65536));
    return out;
  }

  async function sha256(bytes) {
    const digest = new Uint8Array(await webCrypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Send one message, await its echo, and record report[key + "_ok"] and report[key + "_got"].
  async function echo(conn, report, key, sent, what) {
    conn.send(sent);
    const data = await message(conn, "the " + what + " echo");
    report[key + "_ok"] = same(data, sent);
    report[key + "_got"] = describe(data);
    return data;
  }

  function closeReport(event) {
    const close = { code: event.code, reason: event.reason };
    if (event.wasClean !== undefined) close.wasClean = event.wasClean;
    return close;
  }

  async function open(conn) {
    await expect(conn, "open", "the open event");
    return conn;
  }

  // -- the plain scenario --

  async function exchange(conn) {
    const report = {};
    await open(conn);

    conn.send(P.TEXT);
    const text = await message(conn, "the text echo");
    report.text = typeof text === "string" ? text : describe(text);

    await echo(conn, report, "binary", P.binary(), "binary");
    const big = randomBytes(P.BIG_SIZE);
    await echo(conn, report, "big_binary", big, "4 MiB binary");
    report.big_binary_sha256 = await sha256(big);
    await echo(conn, report, "big_text", P.bigText(), "4 MiB text");

    if (conn.ping) {
      conn.ping(P.CLIENT_PING);
      report.pong = (await expect(conn, "pong", "the pong")).data;
    } // else a page, which cannot send pings; the browser answers the server's ping by itself.

    conn.send(P.CMD_PING);
    report.server_ping = await message(conn, "the answer to cmd:ping");

    conn.close(P.CLOSE_CODE, P.CLIENT_REASON);
    report.close = closeReport(await expect(conn, "close", "the close event"));
    return report;
  }

  async function serverClose(conn) {
    await open(conn);
    conn.send(P.CMD_CLOSE);
    return closeReport(await expect(conn, "close", "the close event"));
  }

  // -- the permessage-deflate scenario --

  async function deflateExchange(conn) {
    await open(conn);
    const report = conn.view();

    await echo(conn, report, "text", P.DEFLATE_TEXT, "text");
    await echo(conn, report, "binary", P.binary(), "binary");
    await echo(conn, report, "big_json", P.bigJson(), "1 MiB JSON");
    const random = randomBytes(P.DEFLATE_BIG_SIZE);
    await echo(conn, report, "big_random", random, "1 MiB random");
    report.big_random_sha256 = await sha256(random);
    await echo(conn, report, "window_probe", P.windowProbe(), "window probe");

    // The conversation: all messages sent first, then every echo, in order.
    const sent = [];
    for (let i = 0; i < P.CONVERSATION; i++) {
      sent.push(P.chat(i, "client"));
      conn.send(sent[i]);
    }
    report.conversation_ok = true;
    report.conversation_detail = "";
    for (let i = 0; i < P.CONVERSATION; i++) {
      const data = await message(conn, "conversation echo " + i);
      if (report.conversation_ok && data !== sent[i]) {
        report.conversation_ok = false;
        report.conversation_detail =
          "echo " + i + " differs: " + (typeof data === "string" ? data.slice(0, 200) : describe(data));
      }
    }

    conn.close(P.CLOSE_CODE, P.CLIENT_REASON);
    report.close = closeReport(await expect(conn, "close", "the close event"));
    return report;
  }

  async function deflateServerClose(conn) {
    await open(conn);
    const report = conn.view();
    const first = P.chat(0, "client");
    conn.send(first);
    report.echo_ok = (await message(conn, "the echo before cmd:close")) === first;
    conn.send(P.CMD_CLOSE);
    report.close = closeReport(await expect(conn, "close", "the close event"));
    return report;
  }

  // name -> (the scenario, does the client turn permessage-deflate on for it?)
  const SCENARIOS = {
    exchange: { run: exchange, deflate: false },
    serverClose: { run: serverClose, deflate: false },
    deflateExchange: { run: deflateExchange, deflate: true },
    deflateServerClose: { run: deflateServerClose, deflate: true },
  };

  const api = { eventQueue, SCENARIOS };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.interopClient = api;
})(typeof window !== "undefined" ? window : globalThis);
