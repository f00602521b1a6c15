// The chat page: the channel "room:NAME" of /channels through the package's channels.js.
// channels.js reconnects, resumes from the last offset shown and hands each message over once, in
// order; this file renders. Everything users send is shown with textContent, never as HTML.
"use strict";

(() => {
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
  const channel = "room:" + room;
  ui.room.textContent = "#" + room;
  const members = new Map(); // member id -> {nick, process}
  let noticeTimer = null;
  let wasOpen = false;

  function storedNick() {
    try { return localStorage.getItem(NICK_KEY) || ""; } catch { return ""; }
  }

  function storeNick(nick) {
    try { localStorage.setItem(NICK_KEY, nick); } catch { /* private mode: not remembered */ }
  }

  function myNick() {
    return ui.nick.value.trim() || storedNick() || "guest";
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

  function append(li) {
    const m = ui.messages;
    const stick = m.scrollHeight - m.scrollTop - m.clientHeight < 40;
    m.appendChild(li);
    while (m.children.length > MAX_RENDERED) m.firstElementChild.remove();
    if (stick) m.scrollTop = m.scrollHeight;
  }

  function addMessage(data, meta) {
    if (!data || typeof data !== "object") return;
    const li = document.createElement("li");
    li.dataset.offset = String(meta.offset);
    if (data.nick === myNick()) li.classList.add("mine");
    const time = document.createElement("time");
    time.className = "time";
    const date = new Date(Number(data.ts) || 0);
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const nick = document.createElement("span");
    nick.className = "nick";
    nick.textContent = String(data.nick);
    nick.style.color = nickColor(String(data.nick));
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = String(data.text);
    li.append(time, nick, text);
    append(li);
  }

  function addSystem(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    append(li);
  }

  function renderUsers() {
    const byNick = new Map(); // nickname -> the processes serving it
    for (const { nick, process } of members.values()) {
      if (!byNick.has(nick)) byNick.set(nick, new Set());
      if (process !== undefined) byNick.get(nick).add(String(process));
    }
    const nicks = [...byNick.keys()].sort((a, b) => a.localeCompare(b));
    ui.users.replaceChildren(...nicks.map((nick) => {
      const li = document.createElement("li");
      li.textContent = nick;
      li.title = "served by process " + [...byNick.get(nick)].join(", ");
      li.dataset.process = [...byNick.get(nick)].join(" ");
      if (nick === myNick()) li.classList.add("me");
      return li;
    }));
    ui.userCount.textContent = String(nicks.length);
  }

  function onPresence(event) {
    const entry = (member) => {
      const info = (member && member.info) || {};
      return { nick: String(info.nick || "guest"), process: info.process };
    };
    if (event.op === "presence") {
      members.clear();
      for (const member of event.members || []) members.set(member.id, entry(member));
    } else if (event.op === "join" && event.member) {
      members.set(event.member.id, entry(event.member));
    } else if (event.op === "leave" && event.member) {
      members.delete(event.member.id);
    }
    renderUsers();
  }

  const client = new TornadoChannels.Client("/channels");
  window.chatClient = client; // for the browser tests and the curious

  const sub = client.subscribe(channel, {
    since: 0, // the first time: the room's recent history
    presence: true,
    info: { nick: myNick() },
    onMessage: addMessage,
    onPresence,
    onSubscribed(info) {
      setStatus("open", `Connected as ${myNick()}`);
      if (info.resumed && info.recovered) ui.notice.hidden = true;
    },
    onGap(info) {
      const why = info.reason === "epoch" ? "the room's history was reset" : "they are no longer kept";
      addSystem(`Some messages sent while you were away could not be recovered (${why}).`);
      showNotice("Reconnected, but some messages were lost.");
    },
    onError(error) {
      showNotice(String(error.reason || error.code));
    },
  });

  client.on("state", (state, detail) => {
    if (state === "open") {
      members.clear(); // a fresh listing follows the subscription
      renderUsers();
      wasOpen = true;
      return;
    }
    if (state === "connecting") {
      setStatus("connecting", detail.attempt > 1 ? `Reconnecting (attempt ${detail.attempt})…` : "Connecting…");
    } else if (state === "closed" && !detail.final) {
      const why = detail.code === 1006 ? "Connection lost" : `Disconnected (${detail.code})`;
      if (wasOpen) addSystem(`${why}; reconnecting…`);
      wasOpen = false;
      setStatus("closed", `${why}; reconnecting in ${(detail.retryIn / 1000).toFixed(1)} s…`);
    }
  });
  client.on("error", (error) => {
    if (!error.channel) showNotice(String(error.reason || error.code));
  });

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value;
    if (!text.trim()) return;
    if (client.publish(channel, { text })) {
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
    sub.update({ info: { nick } }); // subscribe again (from where we are) with the new name
    ui.text.focus();
  });

  ui.nick.value = storedNick();
})();
