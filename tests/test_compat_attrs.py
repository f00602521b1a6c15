"""The attributes of ``tornado.websocket`` that real applications and their test suites touch.

Every test runs twice: against ``tornado.websocket`` (``[tornado]``), which
proves the expectation is Tornado's behaviour, and against
``tornado_websocket`` (``[ours]``). The list comes from docs/migration.md's
survey (notes: realapps.md); each test names the project that relies on the
attribute. Servers listen on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

import pytest
import pytest_asyncio
import tornado.httpserver
import tornado.testing
import tornado.web
import tornado.websocket
from tornado import gen, httpclient
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

import tornado_websocket

pytestmark = pytest.mark.asyncio

TIMEOUT = 5.0
IMPLEMENTATIONS = {"tornado": tornado.websocket, "ours": tornado_websocket}


async def bounded(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


async def until(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until ``predicate()`` is true, checking once per loop turn."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


class Probe:
    """Mixed in before the implementation's WebSocketHandler: reports open/close, echoes messages."""

    def initialize(self, env: Env) -> None:
        self.env = env
        self.pongs: list[bytes] = []
        self.pings: list[bytes] = []

    def open(self, *args: Any, **kwargs: Any) -> Any:
        self.env.opened.put_nowait(self)
        return None

    def on_message(self, message: Any) -> Any:
        self.write_message(message, binary=isinstance(message, bytes))
        return None

    def on_pong(self, data: bytes) -> None:
        self.pongs.append(data)

    def on_ping(self, data: bytes) -> None:
        self.pings.append(data)

    def on_close(self) -> None:
        self.env.closed.put_nowait(self)


class Env:
    """One implementation under test: serves handler classes built from it and connects its client."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mod: Any = IMPLEMENTATIONS[name]
        self.opened: asyncio.Queue[Any] = asyncio.Queue()
        self.closed: asyncio.Queue[Any] = asyncio.Queue()
        self.servers: list[tornado.httpserver.HTTPServer] = []
        self.clients: list[Any] = []
        self.port = 0

    def handler(self, *mixins: type) -> type:
        """A handler class: ``mixins``, then :class:`Probe`, then the implementation's WebSocketHandler."""
        return type("Handler", (*mixins, Probe, self.mod.WebSocketHandler), {})

    def serve(self, *mixins: type, path: str = r"/ws", **settings: Any) -> str:
        app = tornado.web.Application([(path, self.handler(*mixins), {"env": self})], **settings)
        sock, self.port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets([sock])
        self.servers.append(server)
        return self.url()

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def connect(self, url: Optional[Any] = None, **kwargs: Any) -> Any:
        conn = await bounded(self.mod.websocket_connect(url or self.url(), **kwargs))
        self.clients.append(conn)
        return conn

    async def open_pair(self, *mixins: type, **settings: Any) -> tuple[Any, Any]:
        """Serve, connect, and return (server-side handler, client connection)."""
        self.serve(*mixins, **settings)
        conn = await self.connect()
        handler = await bounded(self.opened.get())
        return handler, conn

    async def aclose(self) -> None:
        for conn in self.clients:
            if getattr(conn, "protocol", None) is not None:
                conn.close()
        for server in self.servers:
            server.stop()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.close_all_connections(), 2)
            except Exception:
                pass


@pytest_asyncio.fixture(params=sorted(IMPLEMENTATIONS))
async def env(request: Any) -> Any:
    e = Env(request.param)
    try:
        yield e
    finally:
        await e.aclose()


class StandIn:
    """What jupyter_server's and panel's tests assign to ``handler.ws_connection``."""

    def __init__(self, closing: bool = False) -> None:
        self.closing = closing
        self.calls: list[tuple[Any, ...]] = []

    def is_closing(self) -> bool:
        return self.closing

    def write_message(self, message: Any, binary: bool = False) -> asyncio.Future[None]:
        self.calls.append(("write_message", message, binary))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def write_ping(self, data: bytes) -> None:
        self.calls.append(("write_ping", data))

    def close(self, code: Optional[int] = None, reason: Optional[str] = None) -> None:
        self.calls.append(("close", code, reason))


# -- WebSocketHandler.ws_connection: read at every call, assignable ----------------


async def test_handler_ws_connection_is_set_while_open_and_none_after_close(env):
    handler, conn = await env.open_pair()
    assert handler.ws_connection is not None
    conn.close()
    assert await bounded(env.closed.get()) is handler
    assert handler.ws_connection is None


async def test_handler_write_message_raises_once_ws_connection_is_set_to_none(env):
    # jupyter_server tests/services/events/test_api.py: "simulate an abrupt teardown"
    handler, conn = await env.open_pair()
    handler.ws_connection = None
    with pytest.raises(env.mod.WebSocketClosedError):
        handler.write_message("hi")


async def test_handler_ping_raises_once_ws_connection_is_set_to_none(env):
    handler, conn = await env.open_pair()
    handler.ws_connection = None
    with pytest.raises(env.mod.WebSocketClosedError):
        handler.ping(b"x")


async def test_handler_write_message_goes_through_an_assigned_ws_connection(env):
    # jupyter_server tests/services/kernels/test_connection.py assigns a stand-in
    handler, conn = await env.open_pair()
    stand_in = StandIn()
    handler.ws_connection = stand_in
    handler.write_message("to the stand-in")
    handler.write_message({"a": 1})
    assert stand_in.calls == [("write_message", "to the stand-in", False), ("write_message", '{"a": 1}', False)]


async def test_handler_write_message_raises_when_the_assigned_ws_connection_is_closing(env):
    # panel tests/io/test_document.py: ws_connection whose is_closing() is True
    handler, conn = await env.open_pair()
    handler.ws_connection = StandIn(closing=True)
    with pytest.raises(env.mod.WebSocketClosedError):
        handler.write_message("x")


async def test_handler_close_goes_through_an_assigned_ws_connection(env):
    handler, conn = await env.open_pair()
    real = handler.ws_connection
    stand_in = StandIn()
    handler.ws_connection = stand_in
    handler.close(4001, "bye")
    assert stand_in.calls == [("close", 4001, "bye")]
    assert handler.ws_connection is None
    real.close()  # the real connection was not told; end it for the cleanup


async def test_unopened_handler_writes_through_an_assigned_ws_connection(env):
    # jupyter_server tests: a handler built directly (no socket), ws_connection assigned
    class NoConnection:
        def set_close_callback(self, callback: Any) -> None:
            pass

    request = HTTPServerRequest(
        start_line=RequestStartLine("GET", "/ws", "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "foo"}),
        connection=NoConnection(),
    )
    handler = env.handler()(tornado.web.Application(), request, env=env)
    stand_in = StandIn()
    handler.ws_connection = stand_in
    handler.write_message("hello")
    assert stand_in.calls == [("write_message", "hello", False)]


# -- WebSocketProtocol13 (handler.ws_connection): what apps read on it ------------------


async def test_ws_connection_client_terminated_and_server_terminated(env):
    # jupyter_server base/websocket.py send_ping: "if self.ws_connection.client_terminated"
    handler, conn = await env.open_pair()
    ws = handler.ws_connection
    assert ws.client_terminated is False
    assert ws.server_terminated is False
    conn.close(1000)
    await bounded(env.closed.get())
    assert ws.client_terminated is True
    assert ws.server_terminated is True


async def test_ws_connection_server_terminated_once_the_handler_closes(env):
    handler, conn = await env.open_pair()
    ws = handler.ws_connection
    handler.close()
    assert ws.server_terminated is True
    assert ws.is_closing() is True


async def test_ws_connection_is_closing(env):
    # panel io/document.py: "if not ws_conn or ws_conn.is_closing()"
    handler, conn = await env.open_pair()
    assert handler.ws_connection.is_closing() is False


async def test_ws_connection_stream_socket_while_open_and_none_after_close(env):
    # the broadcast idiom: "if not ws.ws_connection or not ws.ws_connection.stream.socket"
    handler, conn = await env.open_pair()
    ws = handler.ws_connection
    assert ws.stream.socket is not None
    assert ws.stream.socket.getpeername()[0] == "127.0.0.1"
    assert ws.stream.closed() is False
    conn.close()
    await bounded(env.closed.get())
    assert ws.stream.closed() is True
    assert ws.stream.socket is None


async def test_ws_connection_selected_subprotocol(env):
    class Picks:
        def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
            return subprotocols[-1]

    env.serve(Picks)
    await env.connect(subprotocols=["one", "two"])
    handler = await bounded(env.opened.get())
    assert handler.ws_connection.selected_subprotocol == "two"
    assert handler.selected_subprotocol == "two"


async def test_ws_connection_write_message(env):
    handler, conn = await env.open_pair()
    await bounded(handler.ws_connection.write_message("direct"))
    assert await bounded(conn.read_message()) == "direct"


async def test_ws_connection_write_ping(env):
    # jupyter-server-proxy handlers.py relays pings with ws.protocol.write_ping(data)
    handler, conn = await env.open_pair()
    handler.ws_connection.write_ping(b"relayed")
    await until(lambda: handler.pongs)
    assert handler.pongs == [b"relayed"]


async def test_ws_connection_close_without_arguments(env):
    # panel tests/ui/io/test_notifications.py: "._socket.ws_connection.close()"
    handler, conn = await env.open_pair()
    handler.ws_connection.close()
    assert await bounded(conn.read_message()) is None
    await bounded(env.closed.get())


async def test_ws_connection_is_an_instance_of_WebSocketProtocol13(env):
    # isinstance(self.ws_connection, tornado.websocket.WebSocketProtocol13) in apps' ping code
    handler, conn = await env.open_pair()
    assert isinstance(handler.ws_connection, env.mod.WebSocketProtocol13)
    assert isinstance(handler.ws_connection, env.mod.WebSocketProtocol)


async def test_WebSocketProtocol13_compute_accept_value(env):
    # RFC 6455 section 1.3's example key and answer
    accept = env.mod.WebSocketProtocol13.compute_accept_value("dGhlIHNhbXBsZSBub25jZQ==")
    assert accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_ws_connection_message_byte_counters(env):
    handler, conn = await env.open_pair()
    conn.write_message("hello")
    assert await bounded(conn.read_message()) == "hello"
    assert handler.ws_connection._message_bytes_in == 5
    assert handler.ws_connection._message_bytes_out == 5


# -- the handler's request after the upgrade -------------------------------------------


async def test_request_connection_stream_is_none_after_the_upgrade(env):
    # distributed comm/ws.py WSHandlerComm.closed():
    #   handler.request.connection.stream and handler.request.connection.stream.closed
    handler, conn = await env.open_pair()
    assert handler.request.connection is not None
    assert handler.request.connection.stream is None
    dead = handler.request.connection.stream and handler.request.connection.stream.closed
    assert not dead


# -- handler API that works the same (kept here so it stays so) -------------------------


async def test_handler_close_code_and_reason(env):
    handler, conn = await env.open_pair()
    conn.close(4002, "done")
    await bounded(env.closed.get())
    assert (handler.close_code, handler.close_reason) == (4002, "done")


async def test_handler_set_nodelay_in_open(env):
    # distributed WSHandler.open: self.set_nodelay(True)
    class NoDelay:
        def open(self, *args: Any, **kwargs: Any) -> Any:
            self.set_nodelay(True)
            return super().open(*args, **kwargs)

    handler, conn = await env.open_pair(NoDelay)
    conn.write_message("still works")
    assert await bounded(conn.read_message()) == "still works"


async def test_handler_open_gets_the_path_arguments(env):
    # terminado TermSocket.open(url_component) calls super().open(url_component)
    env.serve(path=r"/term/(\w+)")
    await env.connect(env.url("/term/tty1"))
    handler = await bounded(env.opened.get())
    assert handler.open_args == ("tty1",)


async def test_handler_gen_coroutine_on_message(env):
    # terminado TermSocket.on_message is a @gen.coroutine
    class GenCoroutine:
        @gen.coroutine
        def on_message(self, message: Any) -> Any:
            yield gen.moment
            self.write_message("gen:" + message)

    handler, conn = await env.open_pair(GenCoroutine)
    conn.write_message("a")
    conn.write_message("b")
    assert [await bounded(conn.read_message()) for _ in range(2)] == ["gen:a", "gen:b"]


async def test_handler_async_write_message_override(env):
    # bokeh server/views/ws.py overrides write_message with an async def that awaits super()
    class LockedWrite:
        async def write_message(self, message: Any, binary: bool = False, locked: bool = True) -> None:
            await super().write_message(message, binary)

        def on_message(self, message: Any) -> Any:
            return self.write_message("locked:" + message)

    handler, conn = await env.open_pair(LockedWrite)
    conn.write_message("x")
    assert await bounded(conn.read_message()) == "locked:x"


async def test_handler_max_message_size_property_override(env):
    # distributed WSHandler overrides the max_message_size property
    class Small:
        @property
        def max_message_size(self) -> int:
            return 10

    handler, conn = await env.open_pair(Small)
    conn.write_message("x" * 11)
    assert await bounded(conn.read_message()) is None
    assert conn.close_code == 1009


async def test_handler_get_compression_options(env):
    # jupyter_server kernels/websocket.py returns settings["websocket_compression_options"]
    class Compressing:
        def get_compression_options(self) -> dict[str, Any]:
            return {}

    env.serve(Compressing)
    conn = await env.connect(compression_options={})
    assert "permessage-deflate" in conn.headers.get("Sec-WebSocket-Extensions", "")
    conn.write_message("z" * 1000)
    assert await bounded(conn.read_message()) == "z" * 1000


async def test_handler_ping_data_comes_back_to_on_pong(env):
    # bokeh ServerConnection.send_ping: the pong's data is an integer it parses
    handler, conn = await env.open_pair()
    handler.ping(b"17")
    await until(lambda: handler.pongs)
    assert handler.pongs == [b"17"]


async def test_handler_close_with_a_code_out_of_range_does_not_raise(env):
    # bokeh WSHandler._internal_error: self.close(10000, message), inside an except block
    handler, conn = await env.open_pair()
    handler.close(10000, "server failed to handle a message")
    assert await bounded(conn.read_message()) is None
    await bounded(env.closed.get())


async def test_ping_timeout_longer_than_the_interval_warns_at_most_once(env, caplog):
    # jupyter_server (30000 / 90000) and streamlit (1 / 30) both set a timeout above the
    # interval; Tornado warns once per process (functools.lru_cache), not per connection.
    caplog.set_level(logging.WARNING)
    env.serve(websocket_ping_interval=3600, websocket_ping_timeout=7200)
    conns = [await env.connect() for _ in range(3)]
    for conn in conns:
        conn.write_message("ping-config")
        assert await bounded(conn.read_message()) == "ping-config"
    await asyncio.sleep(0)  # Tornado reads ping_timeout in a task started at the upgrade
    warnings = [r for r in caplog.records if "ping" in r.getMessage().lower() and r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]


async def test_module_default_max_message_size(env):
    # jupyter-server-proxy websocket.py: getattr(websocket, "_default_max_message_size", ...)
    assert env.mod._default_max_message_size == 10 * 1024 * 1024


# -- WebSocketClientConnection ------------------------------------------------------


async def test_client_parsed_netloc(env):
    # distributed comm/ws.py WS.__init__: f"ws://{self.sock.parsed.netloc}"
    env.serve()
    conn = await env.connect()
    assert conn.parsed.netloc == f"127.0.0.1:{env.port}"
    assert conn.parsed.path == "/ws"


async def test_client_code_is_none_after_the_101(env):
    env.serve()
    conn = await env.connect()
    assert conn.code is None


async def test_client_read_queue_get(env):
    # bokeh tests/unit/bokeh/server/test_server__server.py: await ws.read_queue.get()
    class Greets:
        def open(self, *args: Any, **kwargs: Any) -> Any:
            self.write_message("ACK")
            return super().open(*args, **kwargs)

    handler, conn = await env.open_pair(Greets)
    assert await bounded(conn.read_queue.get()) == "ACK"
    handler.close()
    assert await bounded(conn.read_queue.get()) is None


async def test_client_on_message_injects_a_message(env):
    env.serve()
    conn = await env.connect()
    conn.on_message("injected")
    assert await bounded(conn.read_message()) == "injected"


async def test_client_stream_socket_closed_and_error(env):
    # distributed WSConnector.connect: "if sock.stream.closed() and sock.stream.error"
    # and WSS._read_extra: sock = self.sock.stream.socket
    env.serve()
    conn = await env.connect()
    assert conn.stream.socket is not None
    assert conn.stream.socket.getpeername()[1] == env.port
    assert conn.stream.closed() is False
    assert conn.stream.error is None


async def test_client_stream_after_the_server_closed(env):
    handler, conn = await env.open_pair()
    handler.close(1000)
    assert await bounded(conn.read_message()) is None
    await until(lambda: conn.stream.closed())
    assert conn.stream.socket is None


async def test_client_protocol_is_none_right_after_close(env):
    env.serve()
    conn = await env.connect()
    assert conn.protocol is not None
    conn.close()
    assert conn.protocol is None


async def test_client_protocol_write_ping(env):
    # jupyter-server-proxy handlers.py on_ping: self.ws.protocol.write_ping(data)
    handler, conn = await env.open_pair()
    conn.protocol.write_ping(b"from-client")
    await until(lambda: handler.pings)
    assert handler.pings == [b"from-client"]


async def test_client_protocol_message_byte_counters(env):
    # tornado's own websocket_test.py test_message_sizes
    env.serve()
    conn = await env.connect()
    conn.write_message("hello")
    assert await bounded(conn.read_message()) == "hello"
    assert conn.protocol._message_bytes_out == 5
    assert conn.protocol._message_bytes_in == 5


async def test_client_close_code_and_reason_after_the_server_closed(env):
    handler, conn = await env.open_pair()
    assert not conn.close_code
    handler.close(4003, "server says bye")
    assert await bounded(conn.read_message()) is None
    assert (conn.close_code, conn.close_reason) == (4003, "server says bye")


async def test_client_selected_subprotocol_and_headers(env):
    class Picks:
        def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
            return subprotocols[0]

    env.serve(Picks)
    conn = await env.connect(subprotocols=["bokeh", "token.part-2_x"])
    assert conn.selected_subprotocol == "bokeh"
    assert conn.headers["Sec-WebSocket-Protocol"] == "bokeh"


async def test_client_request_headers_hold_the_handshake_headers(env):
    # jupyter-server-proxy tests/test_proxies.py: "Sec-Websocket-Protocol" in conn.request.headers
    env.serve()
    conn = await env.connect(subprotocols=["first"])
    assert conn.request.headers["Sec-WebSocket-Protocol"] == "first"
    assert conn.request.headers["Upgrade"] == "websocket"
    assert "Sec-WebSocket-Key" in conn.request.headers


async def test_client_accepts_an_HTTPRequest_with_dict_headers(env):
    # distributed WSSConnector passes headers={"Host": ...} through HTTPRequest
    class Headers:
        def open(self, *args: Any, **kwargs: Any) -> Any:
            self.write_message(self.request.headers.get("X-App", ""))
            return super().open(*args, **kwargs)

    env.serve(Headers)
    conn = await env.connect(HTTPRequest(env.url(), headers={"X-App": "dask"}))
    assert await bounded(conn.read_message()) == "dask"


async def test_refused_handshake_is_an_HTTPClientError_with_tornado_text(env):
    # jupyter-server-proxy tests: pytest.raises(HTTPClientError, match=r".*HTTP 403: Forbidden.*")
    class Refuses:
        def prepare(self) -> None:
            raise tornado.web.HTTPError(403)

    env.serve(Refuses)
    with pytest.raises(HTTPClientError) as info:
        await env.connect()
    assert info.value.code == 403
    assert "HTTP 403: Forbidden" in str(info.value)


async def test_client_connection_built_directly_with_an_on_ping_override(env):
    # jupyter-server-proxy websocket.py: PingableWSClientConnection(request=..., ...)
    # overrides on_ping and awaits conn.connect_future
    pings: list[bytes] = []
    messages: list[Any] = []

    class Pingable(env.mod.WebSocketClientConnection):  # type: ignore[name-defined,misc]
        def on_ping(self, data: bytes) -> None:
            pings.append(data)

    class PingsOnOpen:
        def open(self, *args: Any, **kwargs: Any) -> Any:
            self.ping(b"are you there")
            self.write_message("after the ping")
            return super().open(*args, **kwargs)

    env.serve(PingsOnOpen)
    request = HTTPRequest(env.url())
    request.headers = HTTPHeaders(request.headers)
    request = httpclient._RequestProxy(request, HTTPRequest._DEFAULTS)  # type: ignore[assignment]
    conn = Pingable(
        request=request,
        compression_options={},
        on_message_callback=messages.append,
        max_message_size=getattr(env.mod, "_default_max_message_size", 10 * 1024 * 1024),
        subprotocols=None,
    )
    connected = await bounded(conn.connect_future)
    env.clients.append(connected)
    assert connected is conn
    await until(lambda: messages)
    assert pings == [b"are you there"]
    assert messages == ["after the ping"]
