// channels.js: the browser client of tornado_websocket.channels.ChannelsHandler (see docs/channels.md).
//
// No dependencies, no build step. It keeps one WebSocket open, reconnects with
// exponential backoff and jitter, and resubscribes every channel from the last
// offset it delivered, so a page sees each message once, in order, across
// reconnects. When the server cannot replay what was missed (its history was
// lost: a new epoch, or `recovered: false`), the subscription's onGap callback
// says so instead of leaving a silent hole.
//
//   const client = new TornadoChannels.Client("/channels");
//   const sub = client.subscribe("room:lobby", {
//     since: 0,                              // first subscribe: replay the retained history
//     onMessage(data, meta) { ... },         // meta: {channel, offset, epoch}
//     onSubscribed(info) { ... },            // info: {offset, epoch, recovered, resumed}
//     onGap(info) { ... },                   // recovery failed: {reason, epoch, previousEpoch}
//     presence: true, info: {nick: "ann"},   // be listed in the channel's presence, with this info
//     onPresence(event) { ... },             // {op: "presence", members: [{id, info}]} | {op: "join"|"leave", member}
//     onError(error) { ... },                // {code, reason} refusals about this channel
//   });
//   client.publish("room:lobby", {text: "hi"});
//   client.on("state", (state, detail) => ...);  // "connecting" | "open" | "closed"
//
// Offsets are opaque to the protocol; to drop repeats this client compares them
// within an epoch: numbers numerically, strings of digits (optionally "ms-seq",
// as Redis stream ids) part by part, anything else as text.
"use strict";

(function (root, factory) {
  const api = factory();
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.TornadoChannels = api;
})(typeof self !== "undefined" ? self : this, function () {
  const DIGITS = /^\d+(?:-\d+)*$/;

  /** Compare two offsets of one epoch: negative, zero or positive. */
  function compareOffsets(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    const x = String(a);
    const y = String(b);
    if (DIGITS.test(x) && DIGITS.test(y)) {
      const xs = x.split("-");
      const ys = y.split("-");
      for (let i = 0; i < Math.max(xs.length, ys.length); i++) {
        const p = (xs[i] || "0").replace(/^0+(?=\d)/, "");
        const q = (ys[i] || "0").replace(/^0+(?=\d)/, "");
        if (p.length !== q.length) return p.length - q.length;
        if (p !== q) return p < q ? -1 : 1;
      }
      return 0;
    }
    return x < y ? -1 : x > y ? 1 : 0;
  }

  /** Resolve "/channels" or "channels" against the page: ws(s)://host/channels. */
  function absoluteUrl(url) {
    if (/^wss?:\/\//i.test(url)) return url;
    const loc = typeof location !== "undefined" ? location : null;
    if (!loc) return url;
    const base = new URL(url, loc.href);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    return base.href;
  }

  function call(fn, ...args) {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      // A failing page callback must not break the client; report it like an uncaught error.
      setTimeout(() => { throw err; }, 0);
    }
  }

  /** One channel of a Client: where its stream stands, and the page's callbacks. */
  class Subscription {
    constructor(client, channel, options) {
      this.client = client;
      this.channel = channel;
      this.options = options;
      this.epoch = null; // the epoch of `offset`
      this.offset = null; // the last offset delivered (or skipped to): resume from here
      this.since = options.since === undefined ? null : options.since; // the first subscribe's start
      this.active = true;
      this.subscribed = false;
      this.requested = false; // a subscribe was sent on the current connection
      this.sentSince = null;
      this.resuming = false;
      this.delivered = 0; // messages handed to onMessage
      this.dropped = 0; // repeats dropped (offset <= the last one delivered)
      this.gaps = 0; // recoveries that failed
    }

    /** Stop receiving this channel (also tells the server). */
    unsubscribe() {
      this.client.unsubscribe(this.channel);
    }

    _request() {
      const msg = { op: "subscribe", channel: this.channel };
      this.resuming = this.offset !== null; // from where this client stands, not from options.since
      const since = this.resuming ? this.offset : this.since;
      if (since !== null) msg.since = since;
      const epoch = this.resuming ? this.epoch : this.options.epoch;
      if (since !== null && epoch !== null && epoch !== undefined) msg.epoch = epoch;
      if (this.options.presence) {
        msg.presence = true;
        if (this.options.info !== undefined) msg.info = this.options.info;
      }
      this.sentSince = since;
      this.requested = true;
      this.subscribed = false;
      return msg;
    }

    /** Change options (e.g. the presence info) and subscribe again from where this stands. */
    update(options) {
      Object.assign(this.options, options);
      if (this.client.state !== "open" || !this.active) return;
      this.client._send({ op: "unsubscribe", channel: this.channel });
      this.client._send(this._request());
    }

    /** Ask the server for the channel's members (answered through onPresence). */
    presence() {
      return this.client._send({ op: "presence", channel: this.channel });
    }

    _gap(reason, epoch) {
      this.gaps += 1;
      call(this.options.onGap, { channel: this.channel, reason, epoch, previousEpoch: this.epoch });
    }

    _onSubscribed(msg) {
      const resumed = this.resuming;
      const newEpoch = this.epoch !== null && msg.epoch !== this.epoch;
      // options.since asks for whatever history is left: only a resume can have a gap.
      if (newEpoch || (resumed && msg.recovered === false)) {
        this._gap(newEpoch ? "epoch" : "not_recovered", msg.epoch);
      }
      this.epoch = msg.epoch;
      if (newEpoch) {
        this.offset = null; // offsets of another epoch do not compare; its history (if any) follows
      } else if (this.sentSince === null) {
        this.offset = msg.offset; // nothing is replayed: resume from the latest
      } else if (this.offset !== null && compareOffsets(msg.offset, this.offset) < 0) {
        this.offset = msg.offset; // the channel's offsets went back: follow them
      }
      this.subscribed = true;
      call(this.options.onSubscribed, {
        channel: this.channel,
        offset: msg.offset,
        epoch: msg.epoch,
        recovered: msg.recovered !== false,
        resumed: resumed,
      });
    }

    _onMessage(msg) {
      if (this.epoch !== null && msg.epoch !== undefined && msg.epoch !== this.epoch) {
        // History was lost while we were connected: say so, then follow the new epoch.
        this._gap("epoch", msg.epoch);
        this.epoch = msg.epoch;
        this.offset = null;
      }
      if (this.offset !== null && compareOffsets(msg.offset, this.offset) <= 0) {
        this.dropped += 1;
        return;
      }
      this.offset = msg.offset;
      if (this.epoch === null && msg.epoch !== undefined) this.epoch = msg.epoch;
      this.delivered += 1;
      call(this.options.onMessage, msg.data, { channel: this.channel, offset: msg.offset, epoch: msg.epoch });
    }
  }

  /**
   * A connection to a ChannelsHandler that survives disconnects.
   *
   * options: minDelay (ms, default 500), maxDelay (ms, default 10000), jitter
   * (0..1, default 0.5: each delay is drawn from [d * (1 - jitter), d]),
   * batch (default true: connect with ?batch=1, so envelopes that leave the
   * server together share one frame, one per line), WebSocket (a
   * constructor, default the global one), connect (default true).
   */
  class Client {
    constructor(url, options = {}) {
      this.url = url;
      this.options = options;
      this.minDelay = options.minDelay ?? 500;
      this.maxDelay = options.maxDelay ?? 10000;
      this.jitter = options.jitter ?? 0.5;
      this.batch = options.batch ?? true; // ask the server to join envelopes that leave together
      this.state = "closed";
      this.attempt = 0; // failed attempts since the server last said something
      this.connections = 0; // WebSockets opened so far
      this.subs = new Map();
      this.listeners = new Map();
      this.ws = null;
      this.timer = null;
      this.closed = false;
      this._online = () => { if (this.state === "closed" && !this.closed) this.reconnectNow(); };
      if (typeof addEventListener === "function") addEventListener("online", this._online);
      if (options.connect !== false) this._connect();
    }

    /** Listen to "state" (state, detail), "error" ({code, reason, channel?}), "event" (any server message). */
    on(event, fn) {
      if (!this.listeners.has(event)) this.listeners.set(event, new Set());
      this.listeners.get(event).add(fn);
      return () => this.listeners.get(event).delete(fn);
    }

    _emit(event, ...args) {
      for (const fn of this.listeners.get(event) || []) call(fn, ...args);
    }

    _setState(state, detail) {
      this.state = state;
      this._emit("state", state, detail || {});
    }

    /** Subscribe to a channel (see the options at the top of this file); returns its Subscription. */
    subscribe(channel, options = {}) {
      const existing = this.subs.get(channel);
      if (existing) {
        existing.options = options;
        return existing;
      }
      const sub = new Subscription(this, channel, options);
      this.subs.set(channel, sub);
      if (this.state === "open") this._send(sub._request());
      return sub;
    }

    unsubscribe(channel) {
      const sub = this.subs.get(channel);
      if (!sub) return;
      sub.active = false;
      this.subs.delete(channel);
      if (this.state === "open") this._send({ op: "unsubscribe", channel });
    }

    /** Publish to a channel; false (nothing sent) while disconnected. */
    publish(channel, data) {
      return this._send({ op: "publish", channel, data });
    }

    /** Send any protocol message (an object) now; false while disconnected. */
    send(message) {
      return this._send(message);
    }

    _send(obj) {
      if (!this.ws || this.state !== "open") return false;
      this.ws.send(JSON.stringify(obj));
      return true;
    }

    /** Drop the current connection (if any) and connect again at once. */
    reconnectNow() {
      if (this.closed) return;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.ws) {
        const ws = this.ws;
        this._detach();
        try { ws.close(4000, "reconnect"); } catch { /* already closing */ }
      }
      this._connect();
    }

    /** Close for good: no more reconnects. */
    close() {
      this.closed = true;
      clearTimeout(this.timer);
      if (typeof removeEventListener === "function") removeEventListener("online", this._online);
      if (this.ws) {
        const ws = this.ws;
        this._detach();
        ws.close(1000, "bye");
      }
      this._setState("closed", { final: true });
    }

    _detach() {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }

    _connect() {
      const Socket = this.options.WebSocket || WebSocket;
      const url = typeof this.url === "function" ? this.url(this.attempt) : this.url;
      this._setState("connecting", { attempt: this.attempt + 1 });
      let ws;
      try {
        let href = absoluteUrl(url);
        if (this.batch) {
          const u = new URL(href);
          u.searchParams.set("batch", "1");
          href = u.href;
        }
        ws = new Socket(href);
      } catch (err) {
        this._scheduleReconnect({ code: 1006, reason: String(err) });
        return;
      }
      this.ws = ws;
      this.connections += 1;
      for (const sub of this.subs.values()) sub.requested = false;
      ws.onopen = () => {
        this._setState("open", { connections: this.connections });
        for (const sub of this.subs.values()) this._send(sub._request());
      };
      ws.onmessage = (event) => this._onFrame(event.data);
      ws.onclose = (event) => {
        this._detach();
        this._scheduleReconnect({ code: event.code, reason: event.reason });
      };
    }

    _delay() {
      const base = Math.min(this.maxDelay, this.minDelay * 2 ** Math.min(this.attempt, 30));
      return Math.round(base * (1 - this.jitter * Math.random()));
    }

    _scheduleReconnect(why) {
      for (const sub of this.subs.values()) sub.subscribed = false;
      if (this.closed) return;
      const delay = this._delay();
      this.attempt += 1;
      this._setState("closed", { code: why.code, reason: why.reason, retryIn: delay });
      this.timer = setTimeout(() => { this.timer = null; this._connect(); }, delay);
    }

    _retrySubscribe(sub) {
      const ws = this.ws;
      setTimeout(() => {
        if (this.ws === ws && this.state === "open" && sub.active && !sub.subscribed) this._send(sub._request());
      }, this._delay());
    }

    _onFrame(text) {
      if (typeof text !== "string") return;
      // With ?batch=1 one frame may carry several envelopes, one per line (JSON text has no raw newline).
      for (const line of text.split("\n")) if (line) this._onEnvelope(line);
    }

    _onEnvelope(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        return;
      }
      if (!msg || typeof msg !== "object") return;
      this.attempt = 0; // the server answered: the next failure starts the backoff again
      this._emit("event", msg);
      const sub = typeof msg.channel === "string" ? this.subs.get(msg.channel) : undefined;
      switch (msg.op) {
        case "message":
          if (sub && sub.active) sub._onMessage(msg);
          break;
        case "subscribed":
          if (sub && sub.active) sub._onSubscribed(msg);
          break;
        case "error":
          if (sub && sub.active && sub.requested && !sub.subscribed && msg.code === "unavailable") {
            this._retrySubscribe(sub); // the server could not read history (its backend is down): try again
          }
          if (sub) call(sub.options.onError, msg);
          this._emit("error", msg);
          break;
        case "presence": // {members: [{id, info}]}, after subscribed and when asked
        case "join": // {member: {id, info}}
        case "leave":
          if (sub && sub.active) call(sub.options.onPresence, msg);
          break;
        default:
          break;
      }
    }
  }

  return { Client, Subscription, compareOffsets, version: "1" };
});
