"""bokeh: a Bokeh server application and a Bokeh client session, talking over ``/ws``.

The server side is bokeh's ``WSHandler`` (subprotocol ``bokeh`` plus the
session token as a second subprotocol, pings with a counter, a write lock
around multi-part messages); the client side is bokeh's ``ClientConnection``
(``websocket_connect`` wrapped in ``WebSocketClientConnectionWrapper``). The
client pulls the document and changes a slider (the server's callback sees
the value); the server application changes a Div from a next-tick callback
(the client's document sees the text); the server's keepalive pings come
back as pongs carrying its counter; then the client closes and the server
sees it go. Last, a client that sends garbage is closed by bokeh's protocol
error path (``self.close(10001, reason)`` from inside ``on_message``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from switch import install_from_argv  # noqa: E402  (must run before the application is imported)

websocket, args = install_from_argv()

from bokeh.application import Application  # noqa: E402
from bokeh.application.handlers.function import FunctionHandler  # noqa: E402
from bokeh.client import pull_session  # noqa: E402
from bokeh.document import Document  # noqa: E402
from bokeh.models import Div, Slider  # noqa: E402
from bokeh.server.server import Server  # noqa: E402
from bokeh.server.views import ws as bokeh_ws  # noqa: E402
from bokeh.util.token import generate_jwt_token, generate_session_id  # noqa: E402
from scenario import run_blocking  # noqa: E402
from tornado.ioloop import IOLoop  # noqa: E402

STEP_TIMEOUT = 10.0
server_side: dict[str, Any] = {"documents": [], "values": []}


def make_document(doc: Document) -> None:
    slider = Slider(start=0, end=100, value=1, name="slider")
    div = Div(text="hello from the server", name="div")
    slider.on_change("value", lambda attr, old, new: server_side["values"].append(new))
    server_side["documents"].append(doc)
    doc.add_root(slider)
    doc.add_root(div)


def main() -> dict[str, Any]:
    loop = IOLoop()
    server = Server(
        {"/": Application(FunctionHandler(make_document))},
        io_loop=loop,
        port=0,
        address="127.0.0.1",
        allow_websocket_origin=["127.0.0.1"],
        keep_alive_milliseconds=50,  # the server pings every client with a counter; on_pong parses it
    )
    server.start()
    url = f"http://127.0.0.1:{server.port}/"
    session = pull_session(url=url, io_loop=loop)  # runs the loop until the document arrived over /ws
    doc = session.document
    slider, div = doc.get_model_by_name("slider"), doc.get_model_by_name("div")
    first_text = div.text

    async def client_to_server() -> Any:
        slider.value = 42  # the client session sends PATCH-DOC; the server's on_change sees it
        while not server_side["values"]:
            await asyncio.sleep(0.01)
        return server_side["values"][0]

    server_saw = loop.run_sync(client_to_server, timeout=STEP_TIMEOUT)

    # The server application changes the Div from a next-tick callback. The client session
    # applies server patches only in its message loop (what loop_until_closed runs); run that
    # loop until the change arrived (the whole scenario is bounded by SIGALRM).
    [server_doc] = server_side["documents"]
    div_on_server = server_doc.get_model_by_name("div")
    server_doc.add_next_tick_callback(lambda: setattr(div_on_server, "text", "pushed by the server"))
    session._connection._loop_until(lambda: div.text != first_text)
    client_saw = div.text
    [server_connection] = server._tornado._clients
    handler = server_connection._socket

    async def pongs_arrive() -> None:  # the client answers pings below bokeh's message loop
        while handler.latest_pong < 1:
            await asyncio.sleep(0.01)

    loop.run_sync(pongs_arrive, timeout=STEP_TIMEOUT)
    latest_pong = handler.latest_pong
    server_connections_open = len(server._tornado._clients)
    session.close()

    async def server_sees_close() -> int:
        while server._tornado._clients:
            await asyncio.sleep(0.01)
        return 0

    left = loop.run_sync(server_sees_close, timeout=STEP_TIMEOUT)

    async def malformed_client() -> dict[str, Any]:
        # A client that speaks WebSocket but not bokeh's protocol: WSHandler._protocol_error
        # answers with self.close(10001, ...) from inside on_message.
        token = generate_jwt_token(generate_session_id())
        url = f"ws://127.0.0.1:{server.port}/ws"
        conn = await websocket.websocket_connect(url, subprotocols=["bokeh", token])
        ack = [await conn.read_message() for _ in range(3)]  # header, metadata, content
        for part in ("not a header", "{}", "{}"):  # header, metadata, content
            await conn.write_message(part)
        after = await conn.read_message()
        return {"ack": '"ACK"' in (ack[0] or ""), "after": after, "close_code": conn.close_code}

    # Bokeh's keep-alive job calls client_lost() (detaching the session) for a connection whose ping
    # raises WebSocketClosedError, that is one closing; its on_close then fails on "assert self._session".
    # A race of bokeh's own, on tornado.websocket as on ours, when a ping falls in the closing handshake:
    # the pings were checked above, so they stop before the malformed client makes the server close.
    assert server._tornado._ping_job is not None
    server._tornado._ping_job.stop()
    malformed = loop.run_sync(malformed_client, timeout=STEP_TIMEOUT)
    server.stop()
    loop.close(all_fds=True)
    return {
        "websocket_module": websocket.__name__,
        "handler_module": bokeh_ws.WebSocketHandler.__module__,
        "first_text": first_text,
        "server_saw_value": server_saw,
        "client_saw_text": client_saw,
        "server_latest_pong": latest_pong,
        "server_connections_while_open": server_connections_open,
        "server_connections_after_close": left,
        "malformed_client": malformed,
    }


run_blocking(main, args.timeout)
