"""tornado_websocket: RFC 6455 WebSocket (with RFC 7692 permessage-deflate) for Tornado.

A drop-in replacement for :mod:`tornado.websocket`: change the import and
keep the handler. See README.md and docs/.
"""

from tornado_websocket.broadcast import broadcast
from tornado_websocket.channels import ChannelsHandler
from tornado_websocket.channels_client import ChannelsClient
from tornado_websocket.client import WebSocketClientConnection, websocket_connect
from tornado_websocket.connection import WebSocketConnection, WebSocketProtocol, WebSocketProtocol13
from tornado_websocket.errors import (
    ProtocolError,
    WebSocketClosedError,
    WebSocketConnectError,
    WebSocketError,
    WebSocketHandshakeError,
    WebSocketTimeoutError,
)
from tornado_websocket.frames import CloseCode, Opcode
from tornado_websocket.handler import WebSocketHandler
from tornado_websocket.health import HealthHandler
from tornado_websocket.hub import Hub
from tornado_websocket.metrics import MetricsHandler, stats
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE
from tornado_websocket.serve import serve
from tornado_websocket.shutdown import shutdown, shutdown_on_signal

__version__ = "0.2.0"

#: Tornado's module constant (10 MiB), which some applications read.
_default_max_message_size = DEFAULT_MAX_MESSAGE_SIZE

__all__ = [
    "ChannelsClient",
    "ChannelsHandler",
    "Hub",
    "CloseCode",
    "Opcode",
    "ProtocolError",
    "WebSocketClientConnection",
    "WebSocketClosedError",
    "WebSocketConnection",
    "WebSocketConnectError",
    "WebSocketError",
    "HealthHandler",
    "MetricsHandler",
    "WebSocketHandler",
    "WebSocketHandshakeError",
    "WebSocketProtocol",
    "WebSocketProtocol13",
    "WebSocketTimeoutError",
    "websocket_connect",
    "__version__",
    "broadcast",
    "serve",
    "shutdown",
    "shutdown_on_signal",
    "stats",
]
