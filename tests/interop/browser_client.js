// Browser side of the interop scenarios: our tornado app serves it after
// payloads.js and interop_client.js (which hold the scenarios), and
// Playwright (Chromium) or puppeteer-core over WebDriver BiDi (Firefox, firefox/run.js)
// drives it through window.interop.<scenario>(url).
"use strict";

(function () {
  const C = window.interopClient;

  // A page's WebSocket as the scenarios' connection (see interop_client.js); it cannot ping.
  function connect(url) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const events = C.eventQueue();
    ws.onopen = () => events.push({ type: "open" });
    ws.onmessage = (e) =>
      events.push({ type: "message", data: typeof e.data === "string" ? e.data : new Uint8Array(e.data) });
    ws.onerror = () => events.push({ type: "error" });
    ws.onclose = (e) => events.push({ type: "close", code: e.code, reason: e.reason, wasClean: e.wasClean });
    return {
      next: events.next,
      send: (data) => ws.send(data),
      close: (code, reason) => ws.close(code, reason),
      // WebSocket.extensions: the Sec-WebSocket-Extensions the server answered.
      view: () => ({ extensions: ws.extensions }),
    };
  }

  // Chromium and Firefox offer permessage-deflate on every connection: the scenarios' deflate flag changes
  // nothing in the page.
  window.interop = {};
  for (const [name, scenario] of Object.entries(C.SCENARIOS)) {
    window.interop[name] = (url) => scenario.run(connect(url));
  }
  document.title = "interop ready";
})();
