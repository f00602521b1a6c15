// The chat page: one WebSocket to /ws?room=NAME speaking the JSON protocol of chat.py.
// Everything the server or other users send is shown with textContent, never as HTML.
"use strict";

(() => {
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const MAX_RENDERED = 500; // messages kept on the page
  const NICK_KEY = "chat.nick";

  const $ = (id) => document.getElementById(id);
  const ui = {
    room: $("room"),
    status: $("status"),
    messages: $("messages"),
    notice: $("notice"),
    composer: $("composer"),
    text: $("text"),
    send: $("send"),
    nickForm: $("nick-form"),
    nick: $("nick"),
    users: $("users"),
    userCount: $("user-count"),
  };

  const room = new URLSearchParams(location.search).get("room") || "lobby";
  ui.room.textContent = "#" + room;

  let socket = null; // the current WebSocket, or null between attempts
  let attempt = 0; // failed attempts since the last successful hello
  let myNick = null;
  let historyLoaded = false; // live messages wait in `early` until the history is shown
  let early = [];
  let presenceRev = -1; // per connection: a presence older than this one is stale
  let noticeTimer = null;
  const seen = new Set(); // message ids on the page

  function storedNick() {
    try { return localStorage.getItem(NICK_KEY) || ""; } catch { return ""; }
  }

  function storeNick(nick) {
    try { localStorage.setItem(NICK_KEY, nick); } catch { /* private mode: not remembered */ }
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    ui.send.disabled = state !== "open";
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, 6000);
  }

  function nickColor(nick) {
    let hash = 0;
    for (const ch of nick) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360}, 55%, 38%)`;
  }

  function isScrolledDown() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function trim() {
    while (ui.messages.children.length > MAX_RENDERED) {
      const first = ui.messages.firstElementChild;
      if (first.dataset.id) seen.delete(first.dataset.id);
      first.remove();
    }
  }

  function append(li) {
    const stick = isScrolledDown();
    ui.messages.appendChild(li);
    trim();
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function addMessage(m) {
    if (!m || typeof m.id !== "string" || seen.has(m.id)) return;
    seen.add(m.id);
    const li = document.createElement("li");
    li.dataset.id = m.id;
    if (m.nick === myNick) li.classList.add("mine");
    const time = document.createElement("time");
    time.className = "time";
    const date = new Date(m.ts);
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const nick = document.createElement("span");
    nick.className = "nick";
    nick.textContent = String(m.nick);
    nick.style.color = nickColor(String(m.nick));
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = String(m.text);
    li.append(time, nick, text);
    append(li);
  }

  function addSystem(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    append(li);
  }

  function renderUsers(users) {
    ui.users.replaceChildren(...users.map((nick) => {
      const li = document.createElement("li");
      li.textContent = nick;
      if (nick === myNick) li.classList.add("me");
      return li;
    }));
    ui.userCount.textContent = String(users.length);
  }

  function send(obj) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function handle(data) {
    switch (data.type) {
      case "hello": {
        const wanted = storedNick();
        myNick = data.nick;
        ui.nick.value = data.nick;
        if (data.limits && data.limits.max_length) ui.text.maxLength = data.limits.max_length;
        if (wanted && wanted !== data.nick) showNotice(`“${wanted}” is taken here; you are “${data.nick}”.`);
        attempt = 0;
        setStatus("open", `Connected as ${data.nick}`);
        break;
      }
      case "history":
        for (const m of data.messages || []) addMessage(m);
        for (const m of early) addMessage(m);
        early = [];
        historyLoaded = true;
        break;
      case "message":
        if (historyLoaded) addMessage(data); else early.push(data);
        break;
      case "presence":
        if (typeof data.rev === "number" && data.rev <= presenceRev) break;
        presenceRev = data.rev;
        renderUsers(Array.isArray(data.users) ? data.users : []);
        break;
      case "nick": {
        const wanted = storedNick();
        myNick = data.nick;
        ui.nick.value = data.nick;
        if (wanted && wanted !== data.nick) showNotice(`“${wanted}” is taken here; you are “${data.nick}”.`);
        setStatus("open", `Connected as ${data.nick}`);
        break;
      }
      case "error":
        showNotice(String(data.message || data.code));
        break;
      default:
        break;
    }
  }

  function connect() {
    setStatus("connecting", attempt ? `Reconnecting (attempt ${attempt + 1})…` : "Connecting…");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(`${scheme}${location.host}/ws?room=${encodeURIComponent(room)}`);
    socket = ws;
    historyLoaded = false;
    early = [];
    presenceRev = -1;
    ws.onopen = () => {
      // Ask for the name the user chose (the server may grant "name-2" if it is taken).
      ws.send(JSON.stringify({ type: "hello", nick: storedNick() || ui.nick.value.trim() }));
    };
    ws.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      if (data && typeof data.type === "string") handle(data);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      const wasJoined = myNick !== null && ui.status.dataset.state === "open";
      if (wasJoined) addSystem(`Disconnected${event.reason ? ": " + event.reason : ""} (${event.code})`);
      scheduleReconnect(event);
    };
  }

  // Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to 10 s between attempts.
  function scheduleReconnect(event) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    attempt += 1;
    const why = event.code === 1006 ? "Connection lost" : `Disconnected (${event.code})`;
    setStatus("closed", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    setTimeout(connect, delay);
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value;
    if (!text.trim()) return;
    if (send({ type: "message", text })) {
      ui.text.value = "";
    } else {
      showNotice("Not connected; the message was not sent.");
    }
    ui.text.focus();
  });

  ui.nickForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = ui.nick.value.trim();
    if (!nick) return;
    storeNick(nick);
    send({ type: "nick", nick });
    ui.text.focus();
  });

  ui.nick.value = storedNick();
  connect();
})();
