// Payloads of the interop scenarios, for the JavaScript clients (shared by
// the browser page and the Node client, through interop_client.js). They
// mirror interop_util.py (the plain scenario) and test_interop_deflate.py
// (the permessage-deflate one): our server compares what it receives with
// the Python copies, so any change here must be made there too.
"use strict";

(function (root) {
  const CLOSE_CODE = 4000;
  const CLIENT_REASON = "client says goodbye ✓";
  const CLIENT_PING = "client-ping";
  const CMD_PING = "cmd:ping";
  const CMD_CLOSE = "cmd:close";
  const encoder = new TextEncoder();

  function utf8Length(s) {
    return encoder.encode(s).length;
  }

  // bytes(range(256)) * 4 + b"\x00\xff"
  function binary() {
    const out = new Uint8Array(256 * 4 + 2);
    for (let i = 0; i < 256 * 4; i++) out[i] = i % 256;
    out[1024] = 0x00;
    out[1025] = 0xff;
    return out;
  }

  // -- the plain scenario (interop_util.py) --

  const TEXT = "hello, wörld ✓ — interop 🚀";
  const BIG_SIZE = 4 * 1024 * 1024;

  // Exactly 4 MiB of UTF-8 mixing 1-, 2-, 3- and 4-byte sequences.
  function bigText() {
    return "aé✓😀".repeat(Math.floor(BIG_SIZE / 10)) + "😀";
  }

  // -- the permessage-deflate scenario (test_interop_deflate.py) --

  const DEFLATE_TEXT = "hello, wörld ✓ — deflate interop 🚀";
  const DEFLATE_BIG_SIZE = 1024 * 1024;
  const CONVERSATION = 100;
  const PROBE_BLOCK = 16 * 1024;
  const PROBE_REPEAT = 8;

  // One record of the big JSON document: same keys, similar values.
  function record(i) {
    return JSON.stringify({
      seq: i,
      user: "user-" + (i % 16),
      room: "interop",
      text: "the quick brown fox ✓ jumps over the lazy dog",
      ok: i % 3 === 0,
    });
  }

  // Exactly DEFLATE_BIG_SIZE bytes of UTF-8: {"records":[...],"pad":"xx..."}.
  function bigJson() {
    const head = '{"records":[';
    const tail0 = '],"pad":"';
    const tail1 = '"}';
    let size = utf8Length(head + tail0 + tail1);
    const parts = [];
    for (let i = 0; ; i++) {
      const rec = record(i);
      const add = utf8Length(rec) + (parts.length ? 1 : 0);
      if (size + add > DEFLATE_BIG_SIZE) break;
      parts.push(rec);
      size += add;
    }
    return head + parts.join(",") + tail0 + "x".repeat(DEFLATE_BIG_SIZE - size) + tail1;
  }

  // The window probe: a 16 KiB pseudo-random block (xorshift32) repeated 8
  // times. Its only redundancy is 16 KiB back, beyond the 4-8 KiB windows
  // negotiated here: a sender that compresses with a larger window than
  // agreed makes back-references the receiver's inflater must reject.
  function windowProbe() {
    const block = new Uint8Array(PROBE_BLOCK);
    let x = 2463534242;
    for (let i = 0; i < PROBE_BLOCK; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      block[i] = x & 0xff;
    }
    const out = new Uint8Array(PROBE_BLOCK * PROBE_REPEAT);
    for (let r = 0; r < PROBE_REPEAT; r++) out.set(block, r * PROBE_BLOCK);
    return out;
  }

  // One message of the context-takeover conversation: the keys and most of
  // the text repeat from message to message.
  function chat(i, sender) {
    return JSON.stringify({
      type: "chat",
      room: "interop",
      from: sender,
      seq: i,
      text: "message " + i + " from " + sender + ": hello, wörld ✓",
      tags: ["deflate", "context-takeover"],
    });
  }

  const api = {
    CLOSE_CODE,
    CLIENT_REASON,
    CLIENT_PING,
    CMD_PING,
    CMD_CLOSE,
    binary,
    TEXT,
    BIG_SIZE,
    bigText,
    DEFLATE_TEXT,
    DEFLATE_BIG_SIZE,
    CONVERSATION,
    bigJson,
    windowProbe,
    chat,
  };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.interopPayloads = api;
})(typeof window !== "undefined" ? window : globalThis);
