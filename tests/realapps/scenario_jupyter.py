"""jupyter_server: a Python kernel, a terminal and a proxied WebSocket, over their channels.

The server side is jupyter_server's own ``KernelWebsocketHandler`` (with
``WebSocketMixin``'s keepalive and the ZMQ channel bridge) and
jupyter_server_terminals' ``TermSocket`` (terminado's handler). The client
is ``websocket_connect`` from the switched module, acting as JupyterLab does:
it runs ``print(6 * 7)`` in a real ipykernel (JSON text frames, then the
``v1.kernel.websocket.jupyter.org`` binary framing JupyterLab negotiates) and
``echo`` in a real shell.
Then jupyter-server-proxy's ``/proxy/<port>/`` relays a WebSocket to a backend
echo server: its handler (``WebSocketHandlerMixin``) connects onwards with its
own ``PingableWSClientConnection``, a subclass of ``WebSocketClientConnection``
it constructs directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from switch import install_from_argv  # noqa: E402  (must run before the application is imported)

websocket, args = install_from_argv()

HOME = tempfile.mkdtemp(prefix="realapps-jupyter-")
for variable in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
    os.environ[variable] = os.path.join(HOME, variable.lower())

from jupyter_server.base.websocket import WebSocketMixin  # noqa: E402
from jupyter_server.serverapp import ServerApp  # noqa: E402
from jupyter_server.services.kernels.connection.base import (  # noqa: E402
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from scenario import run  # noqa: E402
from tornado.escape import json_decode  # noqa: E402
from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.web import Application  # noqa: E402

TOKEN = "realapps-token"
HEADERS = {"Authorization": f"token {TOKEN}"}
PING_INTERVAL_MS = 100  # WebSocketMixin's own keepalive (milliseconds), 30000 by default

# Observe (not change) WebSocketMixin's keepalive: every send_ping's outcome and every pong.
keepalive: dict[str, list[str]] = {"send_ping": [], "pongs": []}
_send_ping, _on_pong = WebSocketMixin.send_ping, WebSocketMixin.on_pong


def observed_send_ping(self: Any) -> None:
    try:
        _send_ping(self)
    except Exception as exc:
        keepalive["send_ping"].append(f"{type(exc).__name__}: {exc}")
        raise
    keepalive["send_ping"].append("ok")


def observed_on_pong(self: Any, data: bytes) -> None:
    keepalive["pongs"].append(repr(data))
    _on_pong(self, data)


WebSocketMixin.send_ping = observed_send_ping  # type: ignore[method-assign]
WebSocketMixin.on_pong = observed_on_pong  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def read_json(conn: Any) -> Any:
    message = await conn.read_message()
    if message is None:
        raise ConnectionError(f"the server closed the WebSocket (close code {conn.close_code})")
    return json.loads(message)


V1 = "v1.kernel.websocket.jupyter.org"  # JupyterLab's binary framing; without it, JSON text


def encode_kernel_message(msg: dict[str, Any], protocol: Any) -> Any:
    if protocol == V1:
        return serialize_msg_to_ws_v1(msg, msg["channel"], pack=lambda part: json.dumps(part).encode())
    return json.dumps(msg)


async def read_kernel_message(conn: Any, protocol: Any) -> dict[str, Any]:
    if protocol != V1:
        return dict(await read_json(conn))
    message = await conn.read_message()
    if message is None:
        raise ConnectionError(f"the server closed the WebSocket (close code {conn.close_code})")
    channel, parts = deserialize_msg_from_ws_v1(message)
    header, parent, metadata, content = (json.loads(part) for part in parts[:4])
    return {
        "channel": channel,
        "header": header,
        "msg_type": header["msg_type"],
        "parent_header": parent,
        "metadata": metadata,
        "content": content,
    }


async def run_code(base: str, kernel_id: str, subprotocols: Any) -> dict[str, Any]:
    session = uuid.uuid4().hex
    url = f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels?session_id={session}"
    conn = await websocket.websocket_connect(HTTPRequest(url, headers=HEADERS), subprotocols=subprotocols)
    protocol = conn.selected_subprotocol
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "username": "realapps",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": "print(6 * 7)", "silent": False, "store_history": False, "allow_stdin": False},
        "channel": "shell",
        "buffers": [],
    }
    await conn.write_message(encode_kernel_message(request, protocol), binary=protocol == V1)
    # Done when the shell reply and the iopub "idle" for this request both arrived (in either order).
    stdout, reply_status, idle, seen = "", None, False, []
    while reply_status is None or not idle:
        msg = await read_kernel_message(conn, protocol)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        seen.append(msg["msg_type"])
        if msg["msg_type"] == "stream":
            stdout += msg["content"]["text"]
        elif msg["msg_type"] == "execute_reply":
            reply_status = msg["content"]["status"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    # Keep the channel open for three of WebSocketMixin's keepalive rounds.
    while len(keepalive["send_ping"]) < 3:
        await asyncio.sleep(PING_INTERVAL_MS / 1000)
    conn.close()
    return {"stdout": stdout, "reply_status": reply_status, "msg_types": seen, "subprotocol": protocol}


async def run_terminal(base: str, http: AsyncHTTPClient) -> dict[str, Any]:
    response = await http.fetch(HTTPRequest(f"{base}/api/terminals", method="POST", body="{}", headers=HEADERS))
    name = json_decode(response.body)["name"]
    url = f"{base.replace('http', 'ws', 1)}/terminals/websocket/{name}"
    conn = await websocket.websocket_connect(HTTPRequest(url, headers=HEADERS))
    first = await read_json(conn)
    await conn.write_message(json.dumps(["stdin", "echo realapps-$((6 * 7))\r"]))
    output = ""
    while "realapps-42" not in output.replace("realapps-$((6 * 7))", ""):
        kind, *rest = await read_json(conn)
        if kind == "stdout":
            output += rest[0]
    conn.close()
    await http.fetch(HTTPRequest(f"{base}/api/terminals/{name}", method="DELETE", headers=HEADERS))
    return {"first_message": first, "echoed": "realapps-42" in output}


class Backend(websocket.WebSocketHandler):  # type: ignore[misc,name-defined]
    """The proxied application: echoes messages, records the subprotocols asked for and pings seen."""

    seen: dict[str, Any] = {"subprotocols": [], "pings": []}

    def select_subprotocol(self, subprotocols: list[str]) -> Any:
        self.seen["subprotocols"].append(subprotocols)
        return subprotocols[0] if subprotocols else None

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_ping(self, data: bytes) -> None:
        self.seen["pings"].append(data.decode())
        self.write_message(f"backend got ping {data.decode()}")


async def run_proxy(base: str) -> dict[str, Any]:
    backend = HTTPServer(Application([(r"/echo", Backend)]))
    backend_port = free_port()
    backend.listen(backend_port, "127.0.0.1")
    url = f"{base.replace('http', 'ws', 1)}/proxy/{backend_port}/echo"
    try:
        conn = await websocket.websocket_connect(HTTPRequest(url, headers=HEADERS), subprotocols=["first", "second"])
        await conn.write_message("through the proxy")
        echoed = after_ping = await conn.read_message()
        if echoed is not None:  # None: the proxy closed the connection
            conn.ping(b"relay")  # the proxy passes it on with its client's protocol.write_ping
            after_ping = await conn.read_message()
        close_code = conn.close_code
        conn.close()
    finally:
        backend.stop()
    return {
        "echoed": echoed,
        "after_ping": after_ping,
        "close_code": close_code,
        "backend_subprotocols": Backend.seen["subprotocols"],
        "backend_pings": Backend.seen["pings"],
    }


async def main() -> dict[str, Any]:
    port = free_port()
    app = ServerApp(
        tornado_settings={"ws_ping_interval": PING_INTERVAL_MS}, jpserver_extensions={"jupyter_server_proxy": True}
    )
    app.initialize(
        argv=[
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={HOME}",
            f"--IdentityProvider.token={TOKEN}",
        ]
    )
    app.start_app()
    await app._post_start()
    base = f"http://127.0.0.1:{port}"
    http = AsyncHTTPClient()
    try:
        response = await http.fetch(
            HTTPRequest(f"{base}/api/kernels", method="POST", body=json.dumps({"name": "python3"}), headers=HEADERS)
        )
        kernel_id = json_decode(response.body)["id"]
        kernel = await run_code(base, kernel_id, None)
        kernel_v1 = await run_code(base, kernel_id, [V1])
        terminal = await run_terminal(base, http)
        proxy = await run_proxy(base)
    finally:
        await app._cleanup()
        shutil.rmtree(HOME, ignore_errors=True)
    return {
        "websocket_module": websocket.__name__,
        "kernel": kernel,
        "kernel_v1": kernel_v1,
        "terminal": terminal,
        "keepalive": keepalive,
        "proxy": proxy,
    }


run(main, args.timeout)
